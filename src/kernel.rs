//! The oldest kernel dispatchd runs on, and the check of the running one.
//!
//! What sets the floor (README, *Running it*), newest first:
//!
//! | since | what | without it |
//! | --- | --- | --- |
//! | 5.12 | `bpf_fib_lookup` writes the route's MTU to `mtu_result` on `FRAG_NEEDED` | the XDP program's "fragmentation needed" would announce the packet's own length as the MTU |
//! | 5.11 | `SO_PREFER_BUSY_POLL`, `SO_BUSY_POLL_BUDGET` | `poll = "busy"` only |
//! | 5.10 | AF_XDP sockets of several queues and devices sharing one UMEM | a worker could not own its front and back sockets |
//! | 5.9 | XDP attached through a `bpf_link` | the program would outlive a crash |
//! | 5.8 | `CAP_BPF`, `CAP_PERFMON` | start-up's capability check cannot pass |
//! | 5.6 | io_uring send/recv, BPF map batch operations | the management loop, `reply_mode = "tracked"` |
//!
//! Used when present, not needed: the XDP features query (6.3, says whether an
//! interface advertises zero-copy) and `XDP_MAX_TX_SKB_BUDGET` (6.17, a copy-mode
//! TX kick of more than 32 frames).

use std::fmt;

/// The oldest kernel release dispatchd runs on (see the table above).
pub const MINIMUM: Release = Release {
    major: 5,
    minor: 12,
};

/// A kernel release's major and minor numbers: what features follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Release {
    pub major: u32,
    pub minor: u32,
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl Release {
    /// The major and minor numbers at the start of a release string as uname
    /// gives it ("6.8.0-45-generic", "5.15.167.4-microsoft-standard-WSL2",
    /// "6.12.0-rc3"); None when it does not start with `MAJOR.MINOR`.
    pub fn parse(release: &str) -> Option<Release> {
        let mut parts = release.trim().splitn(3, '.');
        let major = parts.next()?.parse().ok()?;
        let minor_part = parts.next()?;
        let digits = minor_part
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(minor_part.len());
        let minor = minor_part[..digits].parse().ok()?;
        Some(Release { major, minor })
    }
}

/// Why the kernel whose release string is `release` is too old for
/// dispatchd, in one line naming both versions; None when it is new enough.
/// A release that cannot be read is let through: the feature checks further
/// on still say what is missing.
pub fn too_old(release: &str) -> Option<String> {
    let running = Release::parse(release)?;
    (running < MINIMUM).then(|| {
        format!(
            "kernel {} is older than {MINIMUM}, the oldest dispatchd runs on \
             (bpf_fib_lookup's MTU for \"fragmentation needed\", bpf_link for XDP, \
             AF_XDP UMEM shared across queues and devices, CAP_BPF); upgrade the kernel",
            release.trim()
        )
    })
}

/// The running kernel's release string.
pub fn running_release() -> std::io::Result<String> {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(major: u32, minor: u32) -> Release {
        Release { major, minor }
    }

    #[test]
    fn release_strings_as_distributions_write_them() {
        for (text, want) in [
            ("6.18.44-fc-v657", r(6, 18)),
            ("5.15.0-91-generic", r(5, 15)),
            ("5.12.0", r(5, 12)),
            ("6.12.0-rc3", r(6, 12)),
            ("6.1", r(6, 1)),
            ("5.4.0-1103-aws\n", r(5, 4)),
            ("4.18.0-553.el8_10.x86_64", r(4, 18)),
            ("5.15.167.4-microsoft-standard-WSL2", r(5, 15)),
            ("6.9-rc1", r(6, 9)),
            ("10.0.0", r(10, 0)),
        ] {
            assert_eq!(Release::parse(text), Some(want), "{text}");
        }
        for bad in ["", "6", "six.1", "6.", "6.x", "-5.10", "5 .10"] {
            assert_eq!(Release::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn releases_compare_by_major_then_minor() {
        assert!(r(5, 9) < r(5, 12), "numerically, not as text");
        assert!(r(5, 12) < r(6, 0));
        assert!(r(4, 20) < r(5, 0));
        assert!(r(6, 18) > r(6, 3));
    }

    #[test]
    fn an_older_kernel_is_refused_in_one_line_naming_both_versions() {
        let msg = too_old("5.10.0-32-amd64").unwrap();
        assert!(!msg.contains('\n'));
        assert!(
            msg.starts_with(
                "kernel 5.10.0-32-amd64 is older than 5.12, the oldest dispatchd runs on"
            ),
            "{msg}"
        );
        assert!(too_old("5.11.22").is_some());
        assert_eq!(too_old("5.12.0"), None);
        assert_eq!(too_old("6.18.44-fc-v657"), None);
        assert_eq!(too_old("not a release"), None);
    }

    #[test]
    fn the_running_kernel_is_read_and_parses() {
        let release = running_release().unwrap();
        assert!(Release::parse(&release).is_some(), "{release}");
    }
}
