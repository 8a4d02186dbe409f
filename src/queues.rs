//! The RX queues dispatchd serves: how many each interface has, which worker
//! serves which, whether frames fit a UMEM frame, and whether all of that still
//! holds while dispatchd runs.
//!
//! A NIC spreads flows over all its RX queues (RSS) and the XDP program steers
//! each service frame to the socket of the queue it arrived on; a queue without
//! a socket has its frames dropped (`no_socket`). So every queue of both
//! interfaces gets a socket, and a count that cannot be served is refused at
//! start rather than found out from lost connections.
//!
//! The counts come from `/sys/class/net/IF/queues/rx-*`, which follows the
//! device's real RX queue count (`ethtool -L` changes it): the range of
//! `rx_queue_index` the XDP program sees.
use std::{fs, io, path::PathBuf};

use thiserror::Error;

use crate::{
    config::MAX_QUEUES,
    xdp::{Interface, Side},
};

/// Bytes of an Ethernet header: a frame is the IP packet (at most the MTU) plus
/// this. Tagged frames are not served (the program passes them to the host).
pub const ETHERNET_HEADER: u32 = 14;
/// Headroom the kernel keeps in front of every received frame
/// (`XDP_PACKET_HEADROOM`), in copy and zero-copy mode alike.
pub const XDP_PACKET_HEADROOM: u32 = 256;

/// What start-up and the watch read about an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkFacts {
    pub name: String,
    pub role: Side,
    /// Real RX queues (`queues/rx-*`).
    pub rx_queues: u32,
    pub mtu: u32,
}

impl LinkFacts {
    /// `l0 (front)`.
    pub fn label(&self) -> String {
        format!("{} ({})", self.name, self.role)
    }
}

/// The largest MTU whose frames fit one UMEM frame of `frame_size` bytes with
/// `frame_headroom` bytes reserved by user space: the kernel delivers a frame
/// into `frame_size - XDP_PACKET_HEADROOM - frame_headroom` bytes and drops a
/// longer one (dispatchd binds single-buffer sockets).
pub fn max_mtu(frame_size: u32, frame_headroom: u32) -> u32 {
    frame_size.saturating_sub(XDP_PACKET_HEADROOM + frame_headroom + ETHERNET_HEADER)
}

/// Why the interfaces cannot be served as configured. Each is one line naming
/// the counts and the fix.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum QueueError {
    #[error(
        "{label} has {count} RX queues; dispatchd serves at most {MAX_QUEUES} \
         (MAX_QUEUES of bpf/steer.h): reduce them (ethtool -L {name} combined {MAX_QUEUES})"
    )]
    TooMany {
        label: String,
        name: String,
        count: u32,
    },
    #[error(
        "queues = {queues} would leave RX queues without a socket, whose frames would be \
         dropped: {front} has {front_count} RX queues, {back} has {back_count}; omit queues \
         to serve them all, or give both interfaces {queues} (ethtool -L IF combined {queues})"
    )]
    Mismatch {
        queues: u32,
        front: String,
        front_count: u32,
        back: String,
        back_count: u32,
    },
    #[error(
        "{label} has MTU {mtu}, larger than an AF_XDP frame holds ({max}: {frame_size}-byte \
         single-buffer frames less {XDP_PACKET_HEADROOM} bytes of XDP headroom and \
         {ETHERNET_HEADER} of Ethernet header): lower it (ip link set dev {name} mtu {max})"
    )]
    MtuTooLarge {
        label: String,
        name: String,
        mtu: u32,
        max: u32,
        frame_size: u32,
    },
}

/// Checks that dispatchd can serve every RX queue of both interfaces and that
/// their frames fit a UMEM frame: each count at most [`MAX_QUEUES`], both equal
/// to `queues` when the configuration asserts a count, each MTU at most
/// [`max_mtu`] of `frame_size`.
pub fn check(
    queues: Option<u32>,
    front: &LinkFacts,
    back: &LinkFacts,
    frame_size: u32,
    frame_headroom: u32,
) -> Result<(), QueueError> {
    for link in [front, back] {
        if link.rx_queues > MAX_QUEUES {
            return Err(QueueError::TooMany {
                label: link.label(),
                name: link.name.clone(),
                count: link.rx_queues,
            });
        }
    }
    if let Some(queues) = queues {
        if front.rx_queues != queues || back.rx_queues != queues {
            return Err(QueueError::Mismatch {
                queues,
                front: front.label(),
                front_count: front.rx_queues,
                back: back.label(),
                back_count: back.rx_queues,
            });
        }
    }
    let max = max_mtu(frame_size, frame_headroom);
    for link in [front, back] {
        if link.mtu > max {
            return Err(QueueError::MtuTooLarge {
                label: link.label(),
                name: link.name.clone(),
                mtu: link.mtu,
                max,
                frame_size,
            });
        }
    }
    Ok(())
}

fn sys_path(name: &str, leaf: &str) -> PathBuf {
    PathBuf::from("/sys/class/net").join(name).join(leaf)
}

fn read_number<T: std::str::FromStr>(name: &str, leaf: &str) -> io::Result<T> {
    let path = sys_path(name, leaf);
    let text = fs::read_to_string(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    text.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: not a number: {:?}", path.display(), text.trim()),
        )
    })
}

/// The device's real RX queue count: its `queues/rx-N` entries.
pub fn rx_queue_count(name: &str) -> io::Result<u32> {
    let dir = sys_path(name, "queues");
    let entries = fs::read_dir(&dir)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    let mut count = 0;
    for entry in entries {
        if entry?.file_name().to_string_lossy().starts_with("rx-") {
            count += 1;
        }
    }
    Ok(count)
}

/// The device's `napi_defer_hard_irqs` and `gro_flush_timeout` (ns): what
/// preferred busy polling needs non-zero to own its NAPI.
pub fn napi_deferral(name: &str) -> io::Result<(u32, u64)> {
    Ok((
        read_number(name, "napi_defer_hard_irqs")?,
        read_number(name, "gro_flush_timeout")?,
    ))
}

/// An interface's RX queue count and MTU now, for the watch.
pub fn read_counts(name: &str) -> io::Result<(u32, u32)> {
    Ok((rx_queue_count(name)?, read_number(name, "mtu")?))
}

/// Reads an interface's RX queue count and MTU. sysfs shows the devices of the
/// network namespace it was mounted in, not necessarily the caller's, so the
/// device's index there must be the one this process resolved.
pub fn read_link(iface: &Interface, role: Side) -> anyhow::Result<LinkFacts> {
    let name = &iface.name;
    let index: u32 = read_number(name, "ifindex").map_err(|e| {
        anyhow::anyhow!("reading {name} ({role}) from sysfs: {e} (is /sys mounted for this network namespace? ip netns exec does that)")
    })?;
    if index != iface.index {
        anyhow::bail!(
            "/sys/class/net/{name} is ifindex {index}, this network namespace's {name} is {}: \
             /sys belongs to another namespace (ip netns exec mounts the right one)",
            iface.index
        );
    }
    let rx_queues = rx_queue_count(name)
        .map_err(|e| anyhow::anyhow!("reading the RX queues of {name} ({role}): {e}"))?;
    let mtu = read_number(name, "mtu")
        .map_err(|e| anyhow::anyhow!("reading the MTU of {name} ({role}): {e}"))?;
    Ok(LinkFacts {
        name: name.clone(),
        role,
        rx_queues,
        mtu,
    })
}

/// The queues of each side one worker serves, and its core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerQueues {
    pub core: Option<usize>,
    pub front: Vec<u32>,
    pub back: Vec<u32>,
}

/// Worker cores: as configured, or else every core this process may use but
/// the first (which keeps the main thread and the kernel's own work), or that
/// one if it is the only one.
pub fn worker_cores(configured: &[usize], available: &[usize]) -> Vec<Option<usize>> {
    if !configured.is_empty() {
        return configured.iter().map(|&c| Some(c)).collect();
    }
    match available {
        [] => vec![None],
        [only] => vec![Some(*only)],
        [_, rest @ ..] => rest.iter().map(|&c| Some(c)).collect(),
    }
}

/// One worker per core, but never more than the smaller interface's queue
/// count, so that every worker has at least one socket on each side; queue `q`
/// of each interface goes to worker `q % workers`. Counts are at least 1 (a
/// device has an RX queue) and `cores` is not empty.
pub fn plan(front_queues: u32, back_queues: u32, cores: &[Option<usize>]) -> Vec<WorkerQueues> {
    let workers = cores
        .len()
        .min(front_queues as usize)
        .min(back_queues as usize)
        .max(1);
    let mine = |count: u32, w: usize| -> Vec<u32> {
        (0..count).filter(|q| *q as usize % workers == w).collect()
    };
    (0..workers)
        .map(|w| WorkerQueues {
            core: cores.get(w).copied().flatten(),
            front: mine(front_queues, w),
            back: mine(back_queues, w),
        })
        .collect()
}

/// Compact list of queue numbers: `0-3`, `0,2,4`.
pub fn fmt_queues(queues: &[u32]) -> String {
    let contiguous = queues.windows(2).all(|w| w[1] == w[0] + 1);
    match queues {
        [] => String::new(),
        [one] => one.to_string(),
        [first, .., last] if contiguous => format!("{first}-{last}"),
        _ => queues
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// What the management loop re-reads about an interface about once a second.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkWatch {
    pub facts: LinkFacts,
    /// RX queues with a socket: those of the start.
    pub served: u32,
    /// The largest MTU a frame fits.
    pub max_mtu: u32,
}

impl LinkWatch {
    pub fn new(facts: LinkFacts, max_mtu: u32) -> Self {
        Self {
            served: facts.rx_queues,
            facts,
            max_mtu,
        }
    }

    /// Takes a fresh reading; returns the line to report if the queue count or
    /// the MTU changed from the previous reading (both are always reported:
    /// served queues need a restart to change).
    pub fn update(&mut self, rx_queues: u32, mtu: u32) -> Option<String> {
        let before = (self.facts.rx_queues, self.facts.mtu);
        self.facts.rx_queues = rx_queues;
        self.facts.mtu = mtu;
        let label = self.facts.label();
        let served = self.served;
        let mut line = Vec::new();
        if rx_queues != before.0 {
            line.push(if rx_queues > served {
                format!(
                    "{label} now has {rx_queues} RX queues, dispatchd serves {served}: frames on queues \
                     {} have no socket and are dropped (xdp no_socket); restart dispatchd to serve them",
                    fmt_queues(&(served..rx_queues).collect::<Vec<_>>())
                )
            } else if rx_queues < served {
                format!(
                    "{label} now has {rx_queues} RX queues, dispatchd serves {served}: the sockets of \
                     queues {} get nothing; restart dispatchd to spread the workers over the queues left",
                    fmt_queues(&(rx_queues..served).collect::<Vec<_>>())
                )
            } else {
                format!("{label} has {rx_queues} RX queues again, all served")
            });
        }
        if mtu != before.1 {
            line.push(if mtu > self.max_mtu {
                format!(
                    "{label} now has MTU {mtu}, more than an AF_XDP frame holds ({}): longer frames \
                     are dropped by the kernel (xsk_rx_dropped); lower it (ip link set dev {} mtu {})",
                    self.max_mtu, self.facts.name, self.max_mtu
                )
            } else {
                format!("{label} now has MTU {mtu}")
            });
        }
        (!line.is_empty()).then(|| line.join("; "))
    }

    /// True while a queue has no socket.
    pub fn unserved(&self) -> bool {
        self.facts.rx_queues > self.served
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(role: Side, rx_queues: u32, mtu: u32) -> LinkFacts {
        LinkFacts {
            name: if role == Side::Front { "l0" } else { "l1" }.into(),
            role,
            rx_queues,
            mtu,
        }
    }

    #[test]
    fn a_frame_of_4_kib_takes_an_mtu_of_3826() {
        assert_eq!(max_mtu(4096, 0), 3826);
        assert_eq!(max_mtu(2048, 0), 1778);
        assert_eq!(max_mtu(4096, 256), 3570);
        assert_eq!(max_mtu(100, 0), 0);
    }

    #[test]
    fn every_count_up_to_max_queues_is_served_unless_asserted_otherwise() {
        let ok = |f, b, q| {
            check(
                q,
                &link(Side::Front, f, 1500),
                &link(Side::Back, b, 1500),
                4096,
                0,
            )
        };
        assert_eq!(ok(4, 2, None), Ok(()));
        assert_eq!(ok(MAX_QUEUES, MAX_QUEUES, None), Ok(()));
        assert_eq!(ok(4, 4, Some(4)), Ok(()));

        let e = ok(MAX_QUEUES + 1, 1, None).unwrap_err();
        assert!(matches!(e, QueueError::TooMany { count: 65, .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("l0 (front) has 65 RX queues")
                && msg.contains("ethtool -L l0 combined 64"),
            "{msg}"
        );
        let e = ok(1, MAX_QUEUES + 1, None).unwrap_err();
        assert!(e.to_string().starts_with("l1 (back) has 65"), "{e}");

        // An assertion that leaves a queue without a socket, on either side, or
        // names queues that do not exist.
        for (f, b, q) in [(4, 4, 2), (4, 2, 4), (2, 4, 4), (4, 4, 8)] {
            let e = ok(f, b, Some(q)).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, QueueError::Mismatch { .. }), "{msg}");
            assert!(
                msg.contains(&format!("queues = {q}"))
                    && msg.contains(&format!("l0 (front) has {f} RX queues"))
                    && msg.contains(&format!("l1 (back) has {b}"))
                    && msg.contains(&format!("ethtool -L IF combined {q}")),
                "{msg}"
            );
            assert!(!msg.contains('\n'));
        }
    }

    #[test]
    fn an_mtu_beyond_the_frame_is_refused_with_the_largest_that_fits() {
        let check_mtu = |front, back| {
            check(
                None,
                &link(Side::Front, 1, front),
                &link(Side::Back, 1, back),
                4096,
                0,
            )
        };
        assert_eq!(check_mtu(3826, 1500), Ok(()));
        let e = check_mtu(1500, 3827).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(
            e,
            QueueError::MtuTooLarge {
                mtu: 3827,
                max: 3826,
                ..
            }
        ));
        assert!(
            msg.starts_with("l1 (back) has MTU 3827")
                && msg.contains("ip link set dev l1 mtu 3826"),
            "{msg}"
        );
        assert!(check_mtu(9000, 1500)
            .unwrap_err()
            .to_string()
            .starts_with("l0 (front) has MTU 9000"));
    }

    #[test]
    fn default_cores_are_all_but_the_first() {
        assert_eq!(worker_cores(&[], &[0, 1]), vec![Some(1)]);
        assert_eq!(
            worker_cores(&[], &[0, 1, 2, 3]),
            vec![Some(1), Some(2), Some(3)]
        );
        assert_eq!(worker_cores(&[], &[5]), vec![Some(5)]);
        assert_eq!(worker_cores(&[], &[]), vec![None]);
        assert_eq!(worker_cores(&[3, 2], &[0, 1, 2, 3]), vec![Some(3), Some(2)]);
    }

    #[test]
    fn queues_go_round_robin_to_at_most_the_smaller_count_of_workers() {
        let cores = |n: usize| (0..n).map(Some).collect::<Vec<_>>();
        // One worker for everything.
        assert_eq!(
            plan(4, 2, &cores(1)),
            vec![WorkerQueues {
                core: Some(0),
                front: vec![0, 1, 2, 3],
                back: vec![0, 1]
            }]
        );
        // Four cores, but the back has two queues: two workers.
        let p = plan(4, 2, &cores(4));
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].front.clone(), p[0].back.clone()),
            (vec![0, 2], vec![0])
        );
        assert_eq!(
            (p[1].front.clone(), p[1].back.clone()),
            (vec![1, 3], vec![1])
        );
        for (f, b, c) in [(1, 1, 1), (64, 64, 3), (64, 1, 8), (7, 5, 4), (3, 64, 64)] {
            let p = plan(f, b, &cores(c));
            assert_eq!(p.len(), c.min(f as usize).min(b as usize));
            for (side, count) in [(0, f), (1, b)] {
                let mut all: Vec<u32> = p
                    .iter()
                    .flat_map(|w| {
                        if side == 0 {
                            w.front.clone()
                        } else {
                            w.back.clone()
                        }
                    })
                    .collect();
                all.sort_unstable();
                assert_eq!(all, (0..count).collect::<Vec<_>>(), "every queue once");
            }
            assert!(p.iter().all(|w| !w.front.is_empty() && !w.back.is_empty()));
            let sizes: Vec<usize> = p.iter().map(|w| w.front.len()).collect();
            assert!(
                sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
                "even: {sizes:?}"
            );
        }
    }

    #[test]
    fn queue_lists_print_compactly() {
        assert_eq!(fmt_queues(&[0, 1, 2, 3]), "0-3");
        assert_eq!(fmt_queues(&[1, 3]), "1,3");
        assert_eq!(fmt_queues(&[2]), "2");
    }

    #[test]
    fn the_watch_reports_each_change_once() {
        let mut w = LinkWatch::new(link(Side::Front, 4, 1500), 3826);
        assert_eq!(w.update(4, 1500), None);
        let line = w.update(8, 1500).expect("more queues are reported");
        assert!(
            line.contains("l0 (front) now has 8 RX queues, dispatchd serves 4"),
            "{line}"
        );
        assert!(
            line.contains("queues 4-7") && line.contains("restart"),
            "{line}"
        );
        assert!(w.unserved());
        assert_eq!(w.update(8, 1500), None, "reported once");
        let line = w.update(4, 1500).unwrap();
        assert!(line.contains("4 RX queues again"), "{line}");
        assert!(!w.unserved());
        let line = w.update(2, 1500).unwrap();
        assert!(line.contains("queues 2-3 get nothing"), "{line}");
        let line = w.update(2, 9000).unwrap();
        assert!(
            line.contains("MTU 9000") && line.contains("mtu 3826"),
            "{line}"
        );
    }
}
