//! Per-core CPU time over a window, from /proc/stat: where each variant's
//! forwarding work lands.
use std::fs;

use serde::{Deserialize, Serialize};

/// USER_HZ: /proc/stat's unit.
const HZ: f64 = 100.0;

/// One core's share over a window, in cores (1.0 = the whole core).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Default)]
pub struct CoreCpu {
    /// user + nice
    pub user: f64,
    pub system: f64,
    /// softirq + irq
    pub softirq: f64,
    /// Time the hypervisor gave this vCPU's host core to something else while
    /// the vCPU had work: the VM's own noise, which no variant controls. Not
    /// part of [`busy`](Self::busy). Results saved before this field existed read 0.
    #[serde(default)]
    pub steal: f64,
}

impl CoreCpu {
    pub fn busy(&self) -> f64 {
        self.user + self.system + self.softirq
    }

    /// The core's busy seconds over a window of `seconds`, per one of `count`
    /// things done in it (connections, requests, frames); none counts as one.
    pub fn busy_per(&self, seconds: f64, count: f64) -> f64 {
        self.busy() * seconds / count.max(1.0)
    }
}

/// Every core's tick counters at one instant: user nice system idle iowait irq softirq steal.
pub struct CpuSample {
    at: std::time::Instant,
    cores: Vec<[u64; 8]>,
}

/// The `cpuN` lines of /proc/stat's text, in core order.
fn parse(text: &str) -> Vec<[u64; 8]> {
    text.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let mut v = [0u64; 8];
            for (slot, x) in v.iter_mut().zip(l.split_whitespace().skip(1)) {
                *slot = x.parse().unwrap_or(0);
            }
            v
        })
        .collect()
}

impl CpuSample {
    pub fn now() -> CpuSample {
        CpuSample {
            at: std::time::Instant::now(),
            cores: parse(&fs::read_to_string("/proc/stat").unwrap_or_default()),
        }
    }

    /// Each core's share since `before`.
    pub fn since(&self, before: &CpuSample) -> Vec<CoreCpu> {
        let secs = self.at.duration_since(before.at).as_secs_f64().max(1e-3);
        self.cores
            .iter()
            .zip(&before.cores)
            .map(|(a, b)| {
                let d = |i: usize| a[i].saturating_sub(b[i]) as f64 / HZ / secs;
                CoreCpu {
                    user: d(0) + d(1),
                    system: d(2),
                    softirq: d(5) + d(6),
                    steal: d(7),
                }
            })
            .collect()
    }

    pub fn seconds_since(&self, before: &CpuSample) -> f64 {
        self.at.duration_since(before.at).as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_each_core_not_the_total() {
        let text = "cpu  10 0 20 300 0 0 5 0 0 0\ncpu0 4 1 8 150 0 1 2 7 0 0\ncpu1 6 0 12 150 0 0 3 0 0 0\nintr 1 2\n";
        let p = parse(text);
        assert_eq!(
            p,
            vec![[4, 1, 8, 150, 0, 1, 2, 7], [6, 0, 12, 150, 0, 0, 3, 0]]
        );
        let t0 = std::time::Instant::now();
        let before = CpuSample { at: t0, cores: p };
        let after = CpuSample {
            at: t0 + std::time::Duration::from_secs(2),
            cores: vec![[104, 1, 58, 150, 0, 1, 42, 27], [6, 0, 12, 350, 0, 0, 3, 0]],
        };
        let c = after.since(&before);
        assert_eq!(c.len(), 2);
        assert!((c[0].user - 0.5).abs() < 1e-9, "{c:?}");
        assert!((c[0].system - 0.25).abs() < 1e-9, "{c:?}");
        assert!((c[0].softirq - 0.2).abs() < 1e-9, "{c:?}");
        assert!((c[0].steal - 0.1).abs() < 1e-9, "{c:?}");
        assert!(
            (c[0].busy() - 0.95).abs() < 1e-9,
            "steal is not busy: {c:?}"
        );
        assert_eq!(c[1].busy(), 0.0);
    }

    #[test]
    fn busy_time_per_thing_done() {
        let c = CoreCpu {
            user: 0.25,
            system: 0.5,
            softirq: 0.25,
            steal: 0.5,
        };
        // A whole core for 2 s over 4 requests: 0.5 s each; steal left out.
        assert!((c.busy_per(2.0, 4.0) - 0.5).abs() < 1e-12);
        assert!(
            (c.busy_per(2.0, 0.0) - 2.0).abs() < 1e-12,
            "none counts as one"
        );
    }
}
