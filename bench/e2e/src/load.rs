//! What else the machine was doing during a variant: CPU time outside the
//! benchmark's own processes, and the busiest of those processes.
use std::{collections::BTreeMap, fs, time::Instant};

/// CPU accounting at one instant: the whole machine's busy time, this benchmark's
/// own processes' time, and every live process's time by pid.
pub struct Load {
    at: Instant,
    busy_s: f64,
    ours_s: f64,
    procs: BTreeMap<u32, (String, f64)>,
}

const HZ: f64 = 100.0;

fn proc_stat(pid: &str) -> Option<(String, u32, f64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (l, r) = (text.find('(')?, text.rfind(')')?);
    let comm = text[l + 1..r].to_owned();
    let f: Vec<&str> = text[r + 2..].split_whitespace().collect();
    // After the comm: state ppid pgrp session tty tpgid flags minflt cminflt
    // majflt cmajflt utime stime; flags bit 0x200000 = kernel thread.
    let flags: u64 = f.get(6)?.parse().ok()?;
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let kthread = flags & 0x0020_0000 != 0;
    Some((comm, u32::from(kthread), ticks / HZ))
}

fn rusage_s(who: libc::c_int) -> f64 {
    // SAFETY: getrusage writes one rusage, which lives for the call.
    #[allow(unsafe_code)]
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

impl Load {
    pub fn sample(server: u32) -> Load {
        let busy_s = fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| {
                let v: Vec<f64> = t
                    .lines()
                    .next()?
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|x| x.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal
                Some(
                    [0, 1, 2, 5, 6, 7]
                        .iter()
                        .filter_map(|&i| v.get(i))
                        .sum::<f64>()
                        / HZ,
                )
            })
            .unwrap_or(0.0);
        let mut procs = BTreeMap::new();
        if let Ok(dir) = fs::read_dir("/proc") {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Ok(pid) = name.parse::<u32>() else {
                    continue;
                };
                if let Some((comm, kthread, cpu)) = proc_stat(&name) {
                    if kthread == 0 {
                        procs.insert(pid, (comm, cpu));
                    }
                }
            }
        }
        let server_s = procs.get(&server).map_or(0.0, |p| p.1);
        Load {
            at: Instant::now(),
            busy_s,
            ours_s: rusage_s(libc::RUSAGE_SELF) + rusage_s(libc::RUSAGE_CHILDREN) + server_s,
            procs,
        }
    }

    /// Cores' worth of CPU spent outside this benchmark's processes since `self`
    /// (an estimate: kernel threads doing the benchmark's packet work count as
    /// outside), and the busiest outside processes alive at both samples.
    pub fn outside_since(&self, server: u32) -> (f64, Vec<String>) {
        let now = Load::sample(server);
        let wall = now.at.duration_since(self.at).as_secs_f64().max(1e-3);
        let outside = ((now.busy_s - self.busy_s) - (now.ours_s - self.ours_s)) / wall;
        let mine = [
            "dispatchd",
            "dispatchd-testk",
            "dispatchd-bench",
            "perf",
            "iperf3",
        ];
        let mut top: Vec<(f64, String)> = now
            .procs
            .iter()
            .filter(|(pid, (comm, _))| **pid != server && !mine.contains(&comm.as_str()))
            .filter_map(|(pid, (comm, cpu))| {
                let before = self.procs.get(pid).map_or(0.0, |p| p.1);
                let cores = (cpu - before) / wall;
                (cores >= 0.05).then(|| (cores, comm.clone()))
            })
            .collect();
        top.sort_by(|a, b| b.0.total_cmp(&a.0));
        let names = top
            .iter()
            .take(4)
            .map(|(c, n)| format!("{n} {c:.2}"))
            .collect();
        (outside.max(0.0), names)
    }
}
