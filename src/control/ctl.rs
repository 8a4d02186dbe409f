//! The control socket: what a request line may ask, binding the socket, and the
//! client side that `dispatchd ctl` uses.
use std::{
    io::{Read, Write},
    net::SocketAddrV4,
    os::unix::{
        fs::{FileTypeExt, PermissionsExt},
        net::{UnixListener, UnixStream},
    },
    path::Path,
    time::Duration,
};

use anyhow::{Context, Result};

use crate::sys;

/// Longest request line the loop reads.
pub const REQUEST_MAX: usize = 1024;
/// How long `dispatchd ctl` waits for an answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Text or JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// One request of `dispatchd ctl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Stats(Format),
    Conns(Format),
    Backends(Format),
    Drain(SocketAddrV4),
    Undrain(SocketAddrV4),
}

impl Request {
    /// Parses a request line: a verb, its argument if any, and an optional last
    /// word `json`. The error is the reply to send.
    pub fn parse(line: &str) -> Result<Request, String> {
        let mut words: Vec<&str> = line.split_whitespace().collect();
        let format = if words.last() == Some(&"json") {
            words.pop();
            Format::Json
        } else {
            Format::Text
        };
        let daemon = |addr: &str| {
            addr.parse::<SocketAddrV4>()
                .map_err(|_| format!("{addr:?} is not an IPv4 ADDR:PORT"))
        };
        match words.as_slice() {
            ["stats"] => Ok(Request::Stats(format)),
            ["conns"] => Ok(Request::Conns(format)),
            ["backends"] => Ok(Request::Backends(format)),
            ["drain", addr] => daemon(addr).map(Request::Drain),
            ["undrain", addr] => daemon(addr).map(Request::Undrain),
            _ => Err(
                "expected stats|conns|backends|drain ADDR|undrain ADDR, optionally followed by json"
                    .into(),
            ),
        }
    }
}

/// Binds the control socket with mode 0600 from the start (umask), replacing a
/// stale socket file left by a dead process.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            let _ = std::fs::remove_file(path);
        }
    }
    let listener = sys::with_umask(0o177, || UnixListener::bind(path))
        .with_context(|| format!("binding the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(listener)
}

/// Sends one request to a running dispatchd's control socket and returns the reply.
pub fn request(socket: &Path, request: &str) -> Result<String> {
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("connecting to {} (is dispatchd running?)", socket.display()))?;
    s.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    s.write_all(format!("{request}\n").as_bytes())?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).context("reading the reply")?;
    Ok(reply)
}

/// The metrics endpoint's whole answer to any request: `body` in the Prometheus
/// text format.
pub fn http_metrics(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_with_their_format() {
        let d: SocketAddrV4 = "198.19.0.12:8080".parse().unwrap();
        for (line, want) in [
            ("stats", Request::Stats(Format::Text)),
            ("stats json\n", Request::Stats(Format::Json)),
            (" conns ", Request::Conns(Format::Text)),
            ("backends json", Request::Backends(Format::Json)),
            ("drain 198.19.0.12:8080", Request::Drain(d)),
            ("undrain 198.19.0.12:8080 json", Request::Undrain(d)),
        ] {
            assert_eq!(Request::parse(line), Ok(want), "{line:?}");
        }
    }

    #[test]
    fn bad_requests_say_what_is_expected() {
        for line in ["", "json", "stat", "stats now", "drain", "drain a b"] {
            let e = Request::parse(line).unwrap_err();
            assert!(
                e.starts_with("expected stats|conns|backends"),
                "{line:?}: {e}"
            );
        }
        assert_eq!(
            Request::parse("drain 198.19.0.12"),
            Err("\"198.19.0.12\" is not an IPv4 ADDR:PORT".into())
        );
    }

    #[test]
    fn the_socket_is_private_and_replaces_a_stale_one() {
        let dir = std::env::temp_dir().join(format!("dispatchd-ctl-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ctl.sock");
        drop(bind(&path).unwrap());
        // The file of a dead process's socket stays behind; binding again works.
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut line = [0u8; 64];
            let n = conn.read(&mut line).unwrap();
            conn.write_all(&line[..n]).unwrap();
        });
        assert_eq!(request(&path, "stats").unwrap(), "stats\n");
        server.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
