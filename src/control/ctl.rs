//! The control socket: what a request line may ask, binding the socket, and the
//! client side that `dispatchd ctl` uses.
use std::{
    fmt,
    io::{Read, Write},
    net::{IpAddr, SocketAddr},
    os::unix::{
        fs::{DirBuilderExt, FileTypeExt, PermissionsExt},
        net::{UnixListener, UnixStream},
    },
    path::Path,
    str::FromStr,
    time::Duration,
};

use anyhow::{bail, Context, Result};

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

/// Which connections `ctl conns` lists: those matching every filter given, at
/// most `limit` of them (the reply stays small however many are tracked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnFilter {
    pub daemon: Option<SocketAddr>,
    pub client: Option<ClientFilter>,
    pub limit: usize,
}

/// A client address, with or without its port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientFilter {
    Addr(IpAddr),
    Endpoint(SocketAddr),
}

impl ClientFilter {
    pub fn matches(&self, client: SocketAddr) -> bool {
        match *self {
            ClientFilter::Addr(ip) => client.ip() == ip,
            ClientFilter::Endpoint(e) => client == e,
        }
    }
}

impl FromStr for ClientFilter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        s.parse()
            .map(ClientFilter::Endpoint)
            .or_else(|_| s.parse().map(ClientFilter::Addr))
            .map_err(|_| format!("{s:?} is not an address or ADDR:PORT ([v6]:PORT for IPv6)"))
    }
}

impl fmt::Display for ClientFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientFilter::Addr(ip) => ip.fmt(f),
            ClientFilter::Endpoint(e) => e.fmt(f),
        }
    }
}

/// Rows `ctl conns` shows unless told otherwise.
pub const DEFAULT_CONNS_LIMIT: usize = 1000;

/// One request of `dispatchd ctl`: what the client sends as one line
/// ([`Request::line`]) and the loop reads back ([`Request::parse`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Stats(Format),
    Conns(ConnFilter, Format),
    Backends(Format),
    Drain(SocketAddr),
    Undrain(SocketAddr),
    /// A daemon's weight; 0 drains it (as IPVS users expect).
    Weight(SocketAddr, u32),
    /// Back to the config's weight, undrained: the daemon's overrides cleared.
    WeightReset(SocketAddr),
    /// Whether this instance should get traffic (see [`super::ready`]).
    Ready(Format),
}

const EXPECTED: &str = "expected stats|conns [daemon=ADDR:PORT] [client=ADDR[:PORT]] [limit=N]|backends|drain ADDR|undrain ADDR|weight ADDR N|weight ADDR reset|ready, optionally followed by json";

impl Request {
    /// The request line: a verb, its arguments, and `json` last if wanted.
    pub fn line(&self) -> String {
        let (mut words, format) = match self {
            Request::Stats(f) => (vec!["stats".to_owned()], *f),
            Request::Backends(f) => (vec!["backends".to_owned()], *f),
            Request::Ready(f) => (vec!["ready".to_owned()], *f),
            Request::Conns(filter, f) => {
                let mut w = vec!["conns".to_owned()];
                w.extend(filter.daemon.map(|d| format!("daemon={d}")));
                w.extend(filter.client.map(|c| format!("client={c}")));
                w.push(format!("limit={}", filter.limit));
                (w, *f)
            }
            Request::Drain(d) => (vec!["drain".to_owned(), d.to_string()], Format::Text),
            Request::Undrain(d) => (vec!["undrain".to_owned(), d.to_string()], Format::Text),
            Request::Weight(d, w) => (
                vec!["weight".to_owned(), d.to_string(), w.to_string()],
                Format::Text,
            ),
            Request::WeightReset(d) => (
                vec!["weight".to_owned(), d.to_string(), "reset".to_owned()],
                Format::Text,
            ),
        };
        if format == Format::Json {
            words.push("json".to_owned());
        }
        words.join(" ")
    }

    /// Parses a request line. The error is the reply to send.
    pub fn parse(line: &str) -> Result<Request, String> {
        let mut words: Vec<&str> = line.split_whitespace().collect();
        let format = if words.last() == Some(&"json") {
            words.pop();
            Format::Json
        } else {
            Format::Text
        };
        let daemon = |addr: &str| {
            addr.parse::<SocketAddr>()
                .map_err(|_| format!("{addr:?} is not an ADDR:PORT ([v6]:PORT for IPv6)"))
        };
        match words.as_slice() {
            ["stats"] => Ok(Request::Stats(format)),
            ["conns", args @ ..] => {
                let mut filter = ConnFilter {
                    daemon: None,
                    client: None,
                    limit: DEFAULT_CONNS_LIMIT,
                };
                for arg in args {
                    match arg.split_once('=') {
                        Some(("daemon", v)) => filter.daemon = Some(daemon(v)?),
                        Some(("client", v)) => filter.client = Some(v.parse()?),
                        Some(("limit", v)) => {
                            filter.limit = v
                                .parse()
                                .map_err(|_| format!("limit {v:?} is not a whole number"))?
                        }
                        _ => return Err(EXPECTED.into()),
                    }
                }
                Ok(Request::Conns(filter, format))
            }
            ["backends"] => Ok(Request::Backends(format)),
            ["ready"] => Ok(Request::Ready(format)),
            ["drain", addr] => daemon(addr).map(Request::Drain),
            ["undrain", addr] => daemon(addr).map(Request::Undrain),
            ["weight", addr, "reset"] => daemon(addr).map(Request::WeightReset),
            ["weight", addr, weight] => {
                let weight = weight
                    .parse()
                    .map_err(|_| format!("weight {weight:?} is not a whole number"))?;
                daemon(addr).map(|d| Request::Weight(d, weight))
            }
            _ => Err(EXPECTED.into()),
        }
    }
}

/// Binds the control socket with mode 0600 from the start (umask), replacing a
/// stale socket file left by a dead process. A socket a live process listens on
/// is replaced only by a takeover of that process (`takeover`); otherwise it is
/// another instance's, whose `ctl` and takeovers this one would cut off.
pub fn bind(path: &Path, takeover: bool) -> Result<UnixListener> {
    // Its directory, when missing (the default's /run/dispatchd outside
    // systemd): only that one level, so a mistyped path still fails.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .mode(0o755)
                .create(dir)
                .with_context(|| {
                    format!("creating the control socket's directory {}", dir.display())
                })?;
        }
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            if !takeover && UnixStream::connect(path).is_ok() {
                bail!(
                    "control socket {}: a running process listens on it (another dispatchd? \
                     take it over with --takeover, or give this one its own control_socket)",
                    path.display()
                );
            }
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

/// What a request to the metrics listener asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpAsk {
    /// `GET /ready`: the readiness answer (200 or 503).
    Ready,
    /// Anything else: the metrics, as before /ready existed.
    Metrics,
}

/// Reads the request line of an HTTP request: only the path matters.
pub fn http_ask(request: &str) -> HttpAsk {
    let mut words = request.lines().next().unwrap_or("").split_whitespace();
    match (words.next(), words.next()) {
        (Some("GET" | "HEAD"), Some(path)) if path.split('?').next() == Some("/ready") => {
            HttpAsk::Ready
        }
        _ => HttpAsk::Metrics,
    }
}

/// Whether `received` holds a whole HTTP request head (it ends with an empty
/// line; the endpoints take no body).
pub fn http_request_complete(received: &[u8]) -> bool {
    received.windows(4).any(|w| w == b"\r\n\r\n") || received.windows(2).any(|w| w == b"\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_makes_the_sockets_missing_directory_and_only_that_one() {
        let base = std::env::temp_dir().join(format!("nt-ctl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir(&base).unwrap();
        let socket = base.join("dispatchd").join("dispatchd.sock");
        let listener = bind(&socket, false).unwrap();
        assert!(socket.exists());
        drop(listener);
        // Bound again over the socket it left, in the directory now there.
        bind(&socket, false).unwrap();
        let deeper = base.join("a").join("b").join("dispatchd.sock");
        let err = bind(&deeper, false).unwrap_err();
        assert!(format!("{err:#}").contains("creating the control socket's directory"));
        assert!(!base.join("a").exists());
        std::fs::remove_dir_all(&base).unwrap();
    }

    /// A second instance started with the same control socket took the path
    /// from the first (which then answered no `ctl` and could not be taken
    /// over); now it refuses to start, and only a takeover replaces it.
    #[test]
    fn a_live_processs_socket_is_replaced_only_by_a_takeover() {
        let dir = std::env::temp_dir().join(format!("dispatchd-ctl-live-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ctl.sock");
        let running = bind(&path, false).unwrap();
        let err = bind(&path, false).unwrap_err();
        assert!(
            format!("{err:#}").contains("a running process listens on it"),
            "{err:#}"
        );
        assert!(
            UnixStream::connect(&path).is_ok(),
            "the first one's socket is still there"
        );
        let _taken = bind(&path, true).unwrap();
        drop(running);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_http_request_is_whole_at_its_empty_line() {
        assert!(!http_request_complete(b"GET /ready HTTP/1.0\r\n"));
        assert!(!http_request_complete(
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
        ));
        assert!(http_request_complete(b"GET /ready HTTP/1.0\r\n\r\n"));
        assert!(http_request_complete(
            b"GET / HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"
        ));
        assert!(http_request_complete(b"GET / HTTP/1.0\n\n"));
    }

    #[test]
    fn requests_parse_with_their_format() {
        let d: SocketAddr = "198.19.0.12:8080".parse().unwrap();
        let all = ConnFilter {
            daemon: None,
            client: None,
            limit: DEFAULT_CONNS_LIMIT,
        };
        for (line, want) in [
            ("stats", Request::Stats(Format::Text)),
            ("stats json\n", Request::Stats(Format::Json)),
            (" conns ", Request::Conns(all, Format::Text)),
            ("backends json", Request::Backends(Format::Json)),
            ("drain 198.19.0.12:8080", Request::Drain(d)),
            ("undrain 198.19.0.12:8080 json", Request::Undrain(d)),
            ("weight 198.19.0.12:8080 3", Request::Weight(d, 3)),
            ("weight 198.19.0.12:8080 0", Request::Weight(d, 0)),
            ("weight 198.19.0.12:8080 reset", Request::WeightReset(d)),
            ("ready", Request::Ready(Format::Text)),
            ("ready json", Request::Ready(Format::Json)),
        ] {
            assert_eq!(Request::parse(line), Ok(want), "{line:?}");
        }
    }

    #[test]
    fn a_request_survives_its_line() {
        let d: SocketAddr = "198.19.0.12:8080".parse().unwrap();
        let d6: SocketAddr = "[2001:2:0:2::11]:8080".parse().unwrap();
        for request in [
            Request::Stats(Format::Json),
            Request::Conns(
                ConnFilter {
                    daemon: Some(d),
                    client: Some("198.18.0.2".parse().unwrap()),
                    limit: 5,
                },
                Format::Json,
            ),
            Request::Conns(
                ConnFilter {
                    daemon: None,
                    client: Some("198.18.0.2:40000".parse().unwrap()),
                    limit: 0,
                },
                Format::Text,
            ),
            Request::Backends(Format::Text),
            Request::Drain(d),
            Request::Undrain(d),
            Request::Weight(d, 7),
            Request::WeightReset(d),
            Request::Drain(d6),
            Request::Weight(d6, 2),
            Request::Conns(
                ConnFilter {
                    daemon: Some(d6),
                    client: Some("2001:2:0:1::2".parse().unwrap()),
                    limit: 5,
                },
                Format::Text,
            ),
            Request::Conns(
                ConnFilter {
                    daemon: None,
                    client: Some("[2001:2:0:1::2]:40000".parse().unwrap()),
                    limit: 5,
                },
                Format::Text,
            ),
            Request::Ready(Format::Text),
            Request::Ready(Format::Json),
        ] {
            assert_eq!(Request::parse(&request.line()), Ok(request));
        }
    }

    #[test]
    fn ipv6_daemons_are_named_in_brackets() {
        let d6: SocketAddr = "[2001:2:0:2::11]:8080".parse().unwrap();
        for (line, want) in [
            ("drain [2001:2:0:2::11]:8080", Request::Drain(d6)),
            ("undrain [2001:2:0:2::11]:8080", Request::Undrain(d6)),
            ("weight [2001:2:0:2::11]:8080 4", Request::Weight(d6, 4)),
            (
                "weight [2001:2:0:2::11]:8080 reset",
                Request::WeightReset(d6),
            ),
        ] {
            assert_eq!(Request::parse(line), Ok(want), "{line:?}");
        }
        assert_eq!(
            Request::Weight(d6, 4).line(),
            "weight [2001:2:0:2::11]:8080 4"
        );
        // Without brackets the port cannot be told from the address.
        assert_eq!(
            Request::parse("drain 2001:2:0:2::11:8080"),
            Err("\"2001:2:0:2::11:8080\" is not an ADDR:PORT ([v6]:PORT for IPv6)".into())
        );
        let filter: ClientFilter = "2001:2:0:1::2".parse().unwrap();
        assert!(filter.matches("[2001:2:0:1::2]:40000".parse().unwrap()));
        assert!(!filter.matches("198.18.0.2:40000".parse().unwrap()));
        let filter: ClientFilter = "[2001:2:0:1::2]:40000".parse().unwrap();
        assert!(filter.matches("[2001:2:0:1::2]:40000".parse().unwrap()));
        assert!(!filter.matches("[2001:2:0:1::2]:40001".parse().unwrap()));
    }

    #[test]
    fn bad_requests_say_what_is_expected() {
        for line in [
            "",
            "json",
            "stat",
            "stats now",
            "drain",
            "drain a b",
            "conns all",
            "ready now",
        ] {
            let e = Request::parse(line).unwrap_err();
            assert!(e.starts_with("expected stats|conns"), "{line:?}: {e}");
        }
        assert_eq!(
            Request::parse("drain 198.19.0.12"),
            Err("\"198.19.0.12\" is not an ADDR:PORT ([v6]:PORT for IPv6)".into())
        );
        assert_eq!(
            Request::parse("conns client=nowhere"),
            Err("\"nowhere\" is not an address or ADDR:PORT ([v6]:PORT for IPv6)".into())
        );
        assert_eq!(
            Request::parse("conns limit=-1"),
            Err("limit \"-1\" is not a whole number".into())
        );
    }

    #[test]
    fn only_get_ready_asks_for_readiness() {
        for (request, want) in [
            ("GET /ready HTTP/1.1\r\nHost: x\r\n\r\n", HttpAsk::Ready),
            ("GET /ready?verbose HTTP/1.0\r\n\r\n", HttpAsk::Ready),
            ("HEAD /ready HTTP/1.1\r\n\r\n", HttpAsk::Ready),
            ("GET /metrics HTTP/1.1\r\n\r\n", HttpAsk::Metrics),
            ("GET / HTTP/1.1\r\n\r\n", HttpAsk::Metrics),
            ("GET /readyz HTTP/1.1\r\n\r\n", HttpAsk::Metrics),
            ("", HttpAsk::Metrics),
        ] {
            assert_eq!(http_ask(request), want, "{request:?}");
        }
    }

    #[test]
    fn the_socket_is_private_and_replaces_a_stale_one() {
        let dir = std::env::temp_dir().join(format!("dispatchd-ctl-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ctl.sock");
        drop(bind(&path, false).unwrap());
        // The file of a dead process's socket stays behind; binding again works.
        let listener = bind(&path, false).unwrap();
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
