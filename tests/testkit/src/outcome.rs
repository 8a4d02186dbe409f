//! What the clients report about each connection that failed, so that a test can
//! attribute the failure: its kind, when it started and ended, the client's side
//! of its 4-tuple, and its daemon if it got as far as the daemon's hello.
//!
//! A client prints one line per failure, `failure ` and the record as JSON; the
//! test reads them back with [`Failure::parse_line`].
use std::{
    io,
    net::SocketAddrV4,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

/// How a connection failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// No answer in time: the connect or a read timed out.
    Timeout,
    /// The daemon's kernel refused the connection (no listener).
    Refused,
    /// Reset, or closed before the exchange was complete.
    Reset,
    /// The client had no local port or address to connect from.
    AddrUnavailable,
    /// Anything else, a wrong echo among them.
    Other,
}

/// One failed connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub kind: FailureKind,
    /// Wall-clock milliseconds since the Unix epoch, as [`unix_ms`] gives them.
    pub start_ms: u64,
    pub end_ms: u64,
    /// The client's address and port, if the kernel had picked one.
    pub local: Option<SocketAddrV4>,
    /// The daemon, if it said hello.
    pub daemon: Option<SocketAddrV4>,
    pub error: String,
}

const PREFIX: &str = "failure ";

impl Failure {
    /// The line a client prints for this failure.
    pub fn line(&self) -> String {
        format!(
            "{PREFIX}{}",
            serde_json::to_string(self).expect("plain data serializes")
        )
    }

    /// The failure a line reports, if it is a failure line.
    pub fn parse_line(line: &str) -> Option<Failure> {
        serde_json::from_str(line.strip_prefix(PREFIX)?).ok()
    }
}

/// Wall-clock milliseconds since the Unix epoch: one clock for the clients and
/// the test that reads their reports, all on one machine.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The kind of the first I/O error in `e`'s chain; `Other` when there is none.
pub fn kind_of(e: &anyhow::Error) -> FailureKind {
    let Some(io) = e.chain().find_map(|c| c.downcast_ref::<io::Error>()) else {
        return FailureKind::Other;
    };
    use io::ErrorKind as K;
    match io.kind() {
        K::TimedOut | K::WouldBlock => FailureKind::Timeout,
        K::ConnectionRefused => FailureKind::Refused,
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
            FailureKind::Reset
        }
        K::AddrNotAvailable => FailureKind::AddrUnavailable,
        _ => FailureKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_survives_its_line() {
        let f = Failure {
            kind: FailureKind::Refused,
            start_ms: 1,
            end_ms: 2,
            local: Some("198.18.0.2:40000".parse().unwrap()),
            daemon: None,
            error: "connecting: refused".into(),
        };
        assert_eq!(Failure::parse_line(&f.line()), Some(f));
        assert_eq!(Failure::parse_line("daemon=1.2.3.4:5 connections=3"), None);
    }

    #[test]
    fn kinds_come_from_the_io_error_in_the_chain() {
        let io = |k| anyhow::Error::from(io::Error::from(k)).context("reading the echo");
        assert_eq!(
            kind_of(&io(io::ErrorKind::ConnectionRefused)),
            FailureKind::Refused
        );
        assert_eq!(
            kind_of(&io(io::ErrorKind::UnexpectedEof)),
            FailureKind::Reset
        );
        assert_eq!(
            kind_of(&io(io::ErrorKind::WouldBlock)),
            FailureKind::Timeout
        );
        assert_eq!(
            kind_of(&io(io::ErrorKind::AddrNotAvailable)),
            FailureKind::AddrUnavailable
        );
        assert_eq!(
            kind_of(&anyhow::anyhow!("echo differs")),
            FailureKind::Other
        );
    }
}
