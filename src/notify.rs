//! systemd's service notifications (sd_notify(3)): READY, RELOADING,
//! STOPPING, STATUS and WATCHDOG, as datagrams to `$NOTIFY_SOCKET`.
//!
//! A few lines over a Unix datagram socket rather than a crate: the small
//! crates connect a socket per message and do not take the abstract
//! addresses (`@name`) systemd may pass. Without `NOTIFY_SOCKET` every send
//! is a no-op, so nothing changes outside systemd.
//!
//! The watchdog ([`Watchdog`]) is fed only while every worker's heartbeat
//! moved since the last feed: the management loop feeds it, so a wedged loop
//! stops it too, and a wedged worker stops it by not moving.
use std::{
    cell::Cell,
    ffi::OsStr,
    io,
    os::unix::{
        ffi::OsStrExt,
        net::{SocketAddr, UnixDatagram},
    },
    time::Duration,
};

/// The environment systemd passes a `Type=notify` service.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";
pub const WATCHDOG_USEC_ENV: &str = "WATCHDOG_USEC";
pub const WATCHDOG_PID_ENV: &str = "WATCHDOG_PID";

/// Where notifications go, if anywhere.
#[derive(Debug, Default)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    /// The last send failed: the next failures are not logged again (the
    /// watchdog sends every few seconds) until one succeeds.
    failing: Cell<bool>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; disabled (every send a no-op) without it.
    pub fn from_env() -> io::Result<Self> {
        match std::env::var_os(NOTIFY_SOCKET_ENV) {
            Some(path) if !path.is_empty() => Self::to(&path),
            _ => Ok(Self::default()),
        }
    }

    /// To the socket at `path`: a file, or an abstract name after `@`.
    pub fn to(path: &OsStr) -> io::Result<Self> {
        let addr = match path.as_bytes() {
            [b'@', name @ ..] => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name)?
            }
            _ => SocketAddr::from_pathname(path)?,
        };
        let socket = UnixDatagram::unbound()?;
        // The management loop sends: a full receive queue must cost a
        // notification, never a stalled loop.
        socket.set_nonblocking(true)?;
        Ok(Self {
            target: Some((socket, addr)),
            failing: Cell::new(false),
        })
    }

    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one notification: `KEY=value` lines, as one datagram.
    pub fn send(&self, message: &str) -> io::Result<()> {
        let Some((socket, addr)) = &self.target else {
            return Ok(());
        };
        socket.send_to_addr(message.as_bytes(), addr).map(drop)
    }

    /// [`send`](Self::send), a failure logged: systemd not hearing a state
    /// change is worth a line, not a stop.
    pub fn tell(&self, message: &str) {
        match self.send(message) {
            Ok(()) => {
                if self.failing.replace(false) {
                    tracing::info!("systemd notifications sent again");
                }
            }
            Err(e) => {
                if !self.failing.replace(true) {
                    let what = message.lines().next().unwrap_or_default();
                    tracing::warn!(
                        notification = what,
                        error = %e,
                        "systemd notification not sent (further failures not logged until one is sent)"
                    );
                }
            }
        }
    }
}

/// A STATUS= line's text: one line, as systemd shows it.
pub fn status(text: &str) -> String {
    format!("STATUS={}", text.replace('\n', " "))
}

/// The watchdog's timeout systemd asks for (`$WATCHDOG_USEC`), if it is meant
/// for this process (`$WATCHDOG_PID` unset or this process's id).
pub fn watchdog_timeout() -> Option<Duration> {
    let usec: u64 = std::env::var(WATCHDOG_USEC_ENV).ok()?.parse().ok()?;
    let for_us = match std::env::var(WATCHDOG_PID_ENV) {
        Ok(pid) => pid.parse() == Ok(std::process::id()),
        Err(_) => true,
    };
    (for_us && usec > 0).then(|| Duration::from_micros(usec))
}

/// What the watchdog check decided at one moment.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The next feed is not due yet.
    NotDue,
    /// Feed it: every worker moved since the last feed. `resumed` lists the
    /// workers that had been stalled.
    Feed { resumed: Vec<usize> },
    /// Do not feed: these workers have not moved since the last feed.
    /// `newly` lists those not reported before.
    Withhold {
        stalled: Vec<usize>,
        newly: Vec<usize>,
    },
}

/// Feeds at half the timeout, as sd_watchdog_enabled(3) advises, and only
/// when every worker's heartbeat moved since the last feed; while one has not,
/// it asks again at every check, so a worker that moves again is fed for at
/// once.
#[derive(Debug)]
pub struct Watchdog {
    interval_ns: u64,
    next_ns: u64,
    fed_at: Vec<u64>,
    stalled: Vec<bool>,
}

impl Watchdog {
    /// For `timeout`, from the workers' heartbeats at `now_ns`.
    pub fn new(timeout: Duration, heartbeats: &[u64], now_ns: u64) -> Self {
        let interval_ns = (timeout.as_nanos() / 2) as u64;
        Self {
            interval_ns,
            next_ns: now_ns + interval_ns,
            fed_at: heartbeats.to_vec(),
            stalled: vec![false; heartbeats.len()],
        }
    }

    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval_ns)
    }

    pub fn check(&mut self, now_ns: u64, heartbeats: &[u64]) -> Verdict {
        if now_ns < self.next_ns {
            return Verdict::NotDue;
        }
        let stalled: Vec<usize> = (0..self.fed_at.len())
            .filter(|&w| heartbeats.get(w) == Some(&self.fed_at[w]))
            .collect();
        if stalled.is_empty() {
            let resumed = (0..self.stalled.len())
                .filter(|&w| self.stalled[w])
                .collect();
            self.stalled.fill(false);
            self.fed_at.clear();
            self.fed_at.extend_from_slice(heartbeats);
            self.next_ns = now_ns + self.interval_ns;
            return Verdict::Feed { resumed };
        }
        let newly = stalled
            .iter()
            .copied()
            .filter(|&w| !std::mem::replace(&mut self.stalled[w], true))
            .collect();
        Verdict::Withhold { stalled, newly }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn feeds_at_half_the_timeout_while_every_worker_moves() {
        let mut dog = Watchdog::new(Duration::from_millis(400), &[0, 0], 0);
        assert_eq!(dog.interval(), Duration::from_millis(200));
        assert_eq!(dog.check(199 * MS, &[5, 5]), Verdict::NotDue);
        assert_eq!(
            dog.check(200 * MS, &[5, 5]),
            Verdict::Feed { resumed: vec![] }
        );
        assert_eq!(dog.check(300 * MS, &[9, 9]), Verdict::NotDue);
        assert_eq!(
            dog.check(400 * MS, &[9, 9]),
            Verdict::Feed { resumed: vec![] }
        );
    }

    #[test]
    fn a_worker_that_did_not_move_withholds_the_feed_until_it_moves() {
        let mut dog = Watchdog::new(Duration::from_millis(400), &[0, 0], 0);
        assert_eq!(
            dog.check(200 * MS, &[3, 0]),
            Verdict::Withhold {
                stalled: vec![1],
                newly: vec![1]
            }
        );
        // Said once: still stalled, not newly.
        assert_eq!(
            dog.check(300 * MS, &[7, 0]),
            Verdict::Withhold {
                stalled: vec![1],
                newly: vec![]
            }
        );
        // Asked again at every check once due, and fed as soon as it moves.
        assert_eq!(
            dog.check(310 * MS, &[8, 1]),
            Verdict::Feed { resumed: vec![1] }
        );
        assert_eq!(dog.check(400 * MS, &[9, 2]), Verdict::NotDue);
    }

    #[test]
    fn a_worker_is_compared_with_the_last_feed_not_the_last_check() {
        let mut dog = Watchdog::new(Duration::from_millis(400), &[0, 0], 0);
        assert!(matches!(
            dog.check(200 * MS, &[1, 0]),
            Verdict::Withhold { .. }
        ));
        // Worker 0 did not move since the previous check, but did since the
        // last feed (at start): only worker 1 counts.
        assert_eq!(
            dog.check(300 * MS, &[1, 1]),
            Verdict::Feed { resumed: vec![1] }
        );
    }

    #[test]
    fn sends_to_a_path_and_to_an_abstract_socket() {
        let dir = std::env::temp_dir().join(format!("nt-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let receiver = UnixDatagram::bind(&path).unwrap();
        Notifier::to(path.as_os_str())
            .unwrap()
            .send("READY=1\nSTATUS=up")
            .unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=up");
        std::fs::remove_dir_all(&dir).unwrap();

        use std::os::linux::net::SocketAddrExt;
        let name = format!("nt-notify-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&addr).unwrap();
        Notifier::to(OsStr::new(&format!("@{name}")))
            .unwrap()
            .send("WATCHDOG=1")
            .unwrap();
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_nothing_fails() {
        let n = Notifier::default();
        assert!(!n.enabled());
        n.send("READY=1").unwrap();
    }

    #[test]
    fn a_status_is_one_line() {
        assert_eq!(status("a\nb"), "STATUS=a b");
    }
}
