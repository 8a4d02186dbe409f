//! Health-check rise/fall: a backend flips Down after `fall` consecutive failed
//! probes and back Up after `rise` consecutive successful ones. And what an HTTP
//! probe sends and how its answer is judged (the loop drives the socket).
use std::net::{IpAddr, SocketAddr};

use crate::config::{HealthCheck, HttpProbe};

/// The most of an HTTP check's answer read: a status line is far shorter, and
/// one not ended within it is a failure.
pub const HTTP_REPLY_MAX: usize = 512;

/// The request of an HTTP check of `target` (the address probed): HTTP/1.0 and
/// `Connection: close`, so that any server answers once and closes.
pub fn http_request(probe: &HttpProbe, target: SocketAddr) -> Vec<u8> {
    let host = match &probe.host {
        Some(h) => h.clone(),
        None if target.port() == 80 => match target.ip() {
            IpAddr::V4(ip) => ip.to_string(),
            // An IPv6 literal in a Host is bracketed (RFC 3986 IP-literal).
            IpAddr::V6(ip) => format!("[{ip}]"),
        },
        None => target.to_string(),
    };
    format!(
        "GET {} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: dispatchd-health\r\nConnection: close\r\n\r\n",
        probe.path
    )
    .into_bytes()
}

/// What the bytes of an answer read so far say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusLine {
    /// A valid start without its line end yet: read more.
    Incomplete,
    /// A whole `HTTP/x.y NNN ...` line.
    Status(u16),
    /// Not an HTTP/1.x status line.
    Malformed,
}

/// Judges the start of an HTTP answer: `HTTP/` DIGIT `.` DIGIT SP 3DIGIT, then
/// SP and a reason phrase or the line's end (CRLF, or a bare LF as lenient
/// clients accept). Garbage is found as soon as a byte contradicts the form,
/// so a server speaking something else fails the probe at once.
pub fn parse_status_line(bytes: &[u8]) -> StatusLine {
    // The fixed part: b"HTTP/1.1 200"; `d` stands for a digit.
    const FORM: &[u8; 12] = b"HTTP/d.d ddd";
    let line_end = bytes.iter().position(|&b| b == b'\n');
    let line = &bytes[..line_end.unwrap_or(bytes.len())];
    for (i, (&b, &f)) in line.iter().zip(FORM.iter()).enumerate() {
        let fits = if f == b'd' {
            b.is_ascii_digit()
        } else {
            b == f
        };
        // HTTP/1.x only: a 2.0 status line never comes over a plain HTTP/1.0 request.
        if !fits || (i == 5 && b != b'1') {
            return StatusLine::Malformed;
        }
    }
    if line_end.is_none() {
        return StatusLine::Incomplete;
    }
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() < FORM.len() || (line.len() > FORM.len() && line[FORM.len()] != b' ') {
        return StatusLine::Malformed;
    }
    if line.iter().any(|&b| b.is_ascii_control() && b != b'\t') {
        return StatusLine::Malformed;
    }
    let code = &line[9..12];
    let status = code.iter().fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
    if status < 100 {
        return StatusLine::Malformed;
    }
    StatusLine::Status(status)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Up,
    Down,
}

/// Rise/fall state of one backend.
///
/// Starts [`Health::Up`]: a configured backend is assumed healthy at start so traffic
/// flows before the first probes complete; it takes `fall` failures to take it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthState {
    rise: u32,
    fall: u32,
    health: Health,
    successes: u32,
    failures: u32,
}

impl HealthState {
    pub fn new(check: &HealthCheck) -> Self {
        Self {
            rise: check.rise.max(1),
            fall: check.fall.max(1),
            health: Health::Up,
            successes: 0,
            failures: 0,
        }
    }

    pub fn health(&self) -> Health {
        self.health
    }

    /// Takes a reload's thresholds: the state stays; the streak stays too
    /// unless `restart` (the check itself changed, so earlier results say
    /// nothing of it). A streak already beyond a lowered threshold flips at
    /// the next result of its kind.
    pub fn retune(&mut self, check: &HealthCheck, restart: bool) {
        self.rise = check.rise.max(1);
        self.fall = check.fall.max(1);
        if restart {
            self.successes = 0;
            self.failures = 0;
        }
    }

    /// Records one probe result; returns `Some(new)` when the state flips: `fall`
    /// consecutive failures while Up -> Down, `rise` consecutive successes while
    /// Down -> Up. A result of the other kind resets the streak.
    pub fn record(&mut self, ok: bool) -> Option<Health> {
        if ok {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
            if self.health == Health::Down && self.successes >= self.rise {
                self.health = Health::Up;
                return Some(Health::Up);
            }
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
            if self.health == Health::Up && self.failures >= self.fall {
                self.health = Health::Down;
                return Some(Health::Down);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    impl HealthState {
        /// Current streaks: (consecutive successes, consecutive failures); one is 0.
        fn consecutive(&self) -> (u32, u32) {
            (self.successes, self.failures)
        }
    }

    fn state(rise: u32, fall: u32) -> HealthState {
        HealthState::new(&HealthCheck {
            rise,
            fall,
            ..HealthCheck::default()
        })
    }

    #[test]
    fn defaults() {
        let c = HealthCheck::default();
        assert_eq!(
            (c.interval, c.timeout, c.rise, c.fall),
            (Duration::from_secs(1), Duration::from_millis(500), 2, 3)
        );
        let s = HealthState::new(&c);
        assert_eq!((s.health(), s.consecutive()), (Health::Up, (0, 0)));
    }

    #[test]
    fn falls_after_fall_failures_and_rises_after_rise_successes() {
        let mut s = state(2, 3);
        assert_eq!(s.record(false), None);
        assert_eq!(s.record(false), None);
        assert_eq!(s.consecutive(), (0, 2));
        assert_eq!(s.record(false), Some(Health::Down));
        assert_eq!(s.health(), Health::Down);
        // Further failures do not flip again.
        assert_eq!(s.record(false), None);
        assert_eq!(s.record(true), None);
        assert_eq!(s.consecutive(), (1, 0));
        assert_eq!(s.record(true), Some(Health::Up));
        assert_eq!(s.health(), Health::Up);
        assert_eq!(s.record(true), None);
    }

    #[test]
    fn opposite_result_resets_streak() {
        let mut s = state(2, 3);
        for _ in 0..10 {
            assert_eq!(s.record(false), None);
            assert_eq!(s.record(false), None);
            assert_eq!(s.record(true), None);
        }
        assert_eq!(s.health(), Health::Up);
        for _ in 0..3 {
            s.record(false);
        }
        assert_eq!(s.health(), Health::Down);
        for _ in 0..10 {
            assert_eq!(s.record(true), None);
            assert_eq!(s.record(false), None);
        }
        assert_eq!(s.health(), Health::Down);
        assert_eq!(s.consecutive(), (0, 1));
    }

    #[test]
    fn rise_and_fall_of_one_flip_on_every_change() {
        let mut s = state(1, 1);
        assert_eq!(s.record(true), None);
        assert_eq!(s.record(false), Some(Health::Down));
        assert_eq!(s.record(false), None);
        assert_eq!(s.record(true), Some(Health::Up));
        assert_eq!(s.record(false), Some(Health::Down));
    }

    #[test]
    fn a_retune_keeps_state_and_streak_unless_told_to_restart() {
        let mut s = state(2, 3);
        s.record(false);
        s.record(false);
        let fall_one = HealthCheck {
            rise: 2,
            fall: 1,
            ..HealthCheck::default()
        };
        s.retune(&fall_one, false);
        assert_eq!((s.health(), s.consecutive()), (Health::Up, (0, 2)));
        assert_eq!(s.record(false), Some(Health::Down), "fall 1 from now on");
        s.record(true);
        s.retune(&fall_one, true);
        assert_eq!((s.health(), s.consecutive()), (Health::Down, (0, 0)));
        assert_eq!(s.record(true), None);
        assert_eq!(s.record(true), Some(Health::Up));
    }

    fn parse(text: &str) -> StatusLine {
        parse_status_line(text.as_bytes())
    }

    #[test]
    fn status_lines_of_http_1_0_and_1_1_with_or_without_reason() {
        for (line, code) in [
            ("HTTP/1.0 200 OK\r\n", 200),
            ("HTTP/1.1 404 Not Found\r\nServer: x\r\n\r\n", 404),
            ("HTTP/1.1 503\r\n", 503),
            ("HTTP/1.0 204 \r\n", 204),
            ("HTTP/1.1 301 Moved\n", 301),
            ("HTTP/1.1 599 custom\treason\r\n", 599),
            ("HTTP/1.1 100 Continue\r\n", 100),
        ] {
            assert_eq!(parse(line), StatusLine::Status(code), "{line:?}");
        }
    }

    #[test]
    fn a_status_line_split_anywhere_is_incomplete_until_its_end() {
        let whole = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let line_end = whole.find('\n').unwrap();
        for cut in 0..=line_end {
            assert_eq!(parse(&whole[..cut]), StatusLine::Incomplete, "{cut}");
        }
        for cut in line_end + 1..=whole.len() {
            assert_eq!(parse(&whole[..cut]), StatusLine::Status(200), "{cut}");
        }
    }

    #[test]
    fn garbage_and_wrong_shapes_are_malformed_as_soon_as_they_show() {
        for text in [
            "SSH-2.0-OpenSSH_9.2\r\n",
            "S",
            "http/1.1 200 OK\r\n",
            "HTTP/2 200\r\n",
            "HTTP/2.0 200 OK\r\n",
            "HTTP/1.1 20 OK\r\n",
            "HTTP/1.1 2000 OK\r\n",
            "HTTP/1.1 2x0 OK\r\n",
            "HTTP/1.1  200 OK\r\n",
            "HTTP/1.1 200OK\r\n",
            "HTTP/1.1 099 low\r\n",
            "HTTP/1.1 200 O\x00K\r\n",
            "HTTP/1.1 200 OK\r\r\n",
            "HTTP/1.1\r\n",
            "\r\n",
            "\n",
        ] {
            assert_eq!(parse(text), StatusLine::Malformed, "{text:?}");
        }
        assert_eq!(parse("HTTP/1."), StatusLine::Incomplete, "a valid start");
        assert_eq!(parse_status_line(&[0xff, b'\n']), StatusLine::Malformed);
        assert_eq!(parse_status_line(&[]), StatusLine::Incomplete);
    }

    #[test]
    fn the_request_names_path_and_host_and_asks_to_close() {
        let probe = HttpProbe {
            path: "/health?x=1".into(),
            status: vec![200..=200],
            host: None,
        };
        let target: SocketAddr = "198.19.0.11:8081".parse().unwrap();
        assert_eq!(
            String::from_utf8(http_request(&probe, target)).unwrap(),
            "GET /health?x=1 HTTP/1.0\r\nHost: 198.19.0.11:8081\r\n\
             User-Agent: dispatchd-health\r\nConnection: close\r\n\r\n"
        );
        let on_80 = "198.19.0.11:80".parse().unwrap();
        assert!(String::from_utf8(http_request(&probe, on_80))
            .unwrap()
            .contains("\r\nHost: 198.19.0.11\r\n"));
        let v6: SocketAddr = "[2001:2:0:2::11]:8081".parse().unwrap();
        assert!(String::from_utf8(http_request(&probe, v6))
            .unwrap()
            .contains("\r\nHost: [2001:2:0:2::11]:8081\r\n"));
        let v6_on_80 = "[2001:2:0:2::11]:80".parse().unwrap();
        assert!(String::from_utf8(http_request(&probe, v6_on_80))
            .unwrap()
            .contains("\r\nHost: [2001:2:0:2::11]\r\n"));
        let named = HttpProbe {
            host: Some("app.example".into()),
            ..probe
        };
        assert!(String::from_utf8(http_request(&named, target))
            .unwrap()
            .contains("\r\nHost: app.example\r\n"));
    }

    #[test]
    fn zero_thresholds_behave_as_one() {
        let mut s = state(0, 0);
        assert_eq!(s.record(false), Some(Health::Down));
        assert_eq!(s.record(true), Some(Health::Up));
    }
}
