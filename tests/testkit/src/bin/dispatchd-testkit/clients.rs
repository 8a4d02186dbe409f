//! The clients: short connections, bulk transfers, long-lived and persistent
//! connections, and many held at once. Each checks every echo byte for byte and
//! that the daemon saw the client's own address.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, SocketAddrV4, TcpStream},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use dispatchd_testkit::outcome::{kind_of, unix_ms, Failure};
use hdrhistogram::Histogram;

use crate::sockets::{self, abort_on_close};

/// How a client ends its connections.
#[derive(Clone, Copy)]
pub enum Close {
    Fin,
    Reset,
    ExpectReset,
}

/// One established connection past its hello line.
struct Session {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
    daemon: String,
    seen_peer: String,
}

/// How far a connection got: its local address once the kernel picked one, its
/// daemon once it said hello. What a failure report names.
#[derive(Default)]
struct Seen {
    local: Option<SocketAddrV4>,
    daemon: Option<SocketAddrV4>,
}

impl Seen {
    fn failure(&self, e: &anyhow::Error, start_ms: u64) -> Failure {
        Failure {
            kind: kind_of(e),
            start_ms,
            end_ms: unix_ms(),
            local: self.local,
            daemon: self.daemon,
            error: format!("{e:#}"),
        }
    }
}

fn open(to: SocketAddr, timeout: Duration) -> Result<Session> {
    open_sending(to, timeout, &[], &mut Seen::default())
}

/// Connects and sends `first` right away, before the daemon's hello: the client
/// speaks first, as most protocols do, so the handshake's last ACK is repeated by
/// the data segment if it was lost (which matters when the daemon answered with a
/// SYN cookie and kept no state).
fn open_sending(
    to: SocketAddr,
    timeout: Duration,
    first: &[u8],
    seen: &mut Seen,
) -> Result<Session> {
    let (local, connected) = sockets::connect(to, timeout);
    // A failure report names IPv4 connections only.
    seen.local = match local {
        Some(SocketAddr::V4(local)) => Some(local),
        _ => None,
    };
    let mut stream = connected.with_context(|| format!("connecting to {to}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    stream.write_all(first)?;
    let peer = stream.peer_addr()?;
    if peer != to {
        bail!("peer address is {peer}, not the service address {to}");
    }
    let local = stream.local_addr()?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .context("reading the daemon's hello")?;
    if line.is_empty() {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof))
            .context("reading the daemon's hello");
    }
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .map(str::to_owned)
            .with_context(|| format!("hello line {line:?} lacks {k}"))
    };
    let (daemon, seen_peer) = (field("daemon=")?, field("peer=")?);
    seen.daemon = daemon.parse().ok();
    if seen_peer != local.to_string() {
        bail!("daemon {daemon} saw the client as {seen_peer}, the client is {local}");
    }
    Ok(Session {
        reader,
        stream,
        daemon,
        seen_peer,
    })
}

/// Deterministic bytes that differ per offset, so a reordered or mixed-up echo shows.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn exchange(s: &mut Session, data: &[u8]) -> Result<()> {
    s.stream.write_all(data)?;
    let mut back = vec![0u8; data.len()];
    s.reader.read_exact(&mut back).context("reading the echo")?;
    if back != data {
        bail!("echo from {} differs from what was sent", s.daemon);
    }
    Ok(())
}

fn short_connection(
    to: SocketAddr,
    payload: &[u8],
    timeout: Duration,
    close: Close,
    seen: &mut Seen,
) -> Result<String> {
    let mut s = open_sending(to, timeout, payload, seen)?;
    let mut back = vec![0u8; payload.len()];
    s.reader.read_exact(&mut back).context("reading the echo")?;
    if back != payload {
        bail!("echo from {} differs from what was sent", s.daemon);
    }
    match close {
        Close::Fin => {
            s.stream.shutdown(Shutdown::Write)?;
            // Wait for the daemon's FIN, so the whole close crosses the dispatcher.
            let mut rest = Vec::new();
            s.reader.read_to_end(&mut rest)?;
        }
        Close::Reset => abort_on_close(&s.stream)?,
        Close::ExpectReset => {
            let mut rest = Vec::new();
            match s.reader.read_to_end(&mut rest) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                other => bail!("expected a reset from {}, got {other:?}", s.daemon),
            }
        }
    }
    Ok(s.daemon)
}

fn print_latency(name: &str, h: &Histogram<u64>) {
    println!(
        "{name}_us p50={} p90={} p99={} p99.9={} max={} n={}",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
        h.len()
    );
}

pub fn connect_many(
    to: SocketAddr,
    connections: usize,
    concurrency: usize,
    payload: usize,
    timeout: Duration,
    close: Close,
) -> Result<()> {
    struct Tally {
        per_daemon: BTreeMap<String, usize>,
        errors: Vec<String>,
        latency: Histogram<u64>,
    }
    let tally = Arc::new(Mutex::new(Tally {
        per_daemon: BTreeMap::new(),
        errors: Vec::new(),
        latency: Histogram::new_with_bounds(1, 60_000_000, 3)?,
    }));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (tally, next) = (tally.clone(), next.clone());
            thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= connections {
                    break;
                }
                let data = pattern(i as u64, payload);
                let t = Instant::now();
                let result = short_connection(to, &data, timeout, close, &mut Seen::default());
                let us = t.elapsed().as_micros() as u64;
                let mut tally = tally.lock().unwrap_or_else(|p| p.into_inner());
                match result {
                    Ok(daemon) => {
                        *tally.per_daemon.entry(daemon).or_default() += 1;
                        let _ = tally.latency.record(us.max(1));
                    }
                    Err(e) => tally.errors.push(format!("{e:#}")),
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let elapsed = started.elapsed();
    let tally = tally.lock().unwrap_or_else(|p| p.into_inner());
    for (daemon, n) in &tally.per_daemon {
        println!("daemon={daemon} connections={n}");
    }
    let ok: usize = tally.per_daemon.values().sum();
    println!(
        "ok={ok} errors={} seconds={:.3} rate={:.0}",
        tally.errors.len(),
        elapsed.as_secs_f64(),
        ok as f64 / elapsed.as_secs_f64()
    );
    print_latency("latency", &tally.latency);
    for e in tally.errors.iter().take(5) {
        println!("error: {e}");
    }
    if !tally.errors.is_empty() {
        bail!("{} of {connections} connections failed", tally.errors.len());
    }
    Ok(())
}

pub fn bulk(to: SocketAddr, bytes: usize) -> Result<()> {
    let s = open(to, Duration::from_secs(5))?;
    let data = pattern(0xb01c, bytes);
    let started = Instant::now();
    let mut writer = s.stream.try_clone()?;
    let sent = data.clone();
    // Write and read at once: the echo comes back while we are still sending.
    let sender = thread::spawn(move || -> std::io::Result<()> {
        writer.write_all(&sent)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut back = Vec::with_capacity(bytes);
    let mut reader = s.reader;
    reader
        .get_mut()
        .set_read_timeout(Some(Duration::from_secs(30)))?;
    reader.read_to_end(&mut back).context("reading the echo")?;
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "daemon={} peer={} bytes={} seconds={secs:.3} mbit_per_s={:.1}",
        s.daemon,
        s.seen_peer,
        back.len(),
        (2 * bytes) as f64 * 8.0 / secs / 1e6
    );
    if back != data {
        let at = back
            .iter()
            .zip(&data)
            .position(|(a, b)| a != b)
            .unwrap_or(back.len().min(data.len()));
        bail!(
            "echo differs at byte {at} (got {} of {bytes} bytes)",
            back.len()
        );
    }
    Ok(())
}

/// `count` downloads of `bytes` each from a `serve --download` daemon, one after
/// another: one line per download (`download=I daemon=… bytes=… seconds=…`, or
/// `download=I failed …`), then `ok=N failed=M`; fails if any failed.
pub fn download(to: SocketAddr, bytes: usize, count: usize, timeout: Duration) -> Result<()> {
    let want = pattern(crate::server::DOWNLOAD_SEED, bytes);
    let mut failed = 0;
    for i in 0..count {
        let started = Instant::now();
        match download_one(to, &want, timeout) {
            Ok(daemon) => {
                let secs = started.elapsed().as_secs_f64();
                println!(
                    "download={i} daemon={daemon} bytes={bytes} seconds={secs:.3} mbit_per_s={:.1}",
                    bytes as f64 * 8.0 / secs / 1e6
                );
            }
            Err(e) => {
                failed += 1;
                println!(
                    "download={i} failed after {:.3} s: {e:#}",
                    started.elapsed().as_secs_f64()
                );
            }
        }
    }
    println!("ok={} failed={failed}", count - failed);
    if failed > 0 {
        bail!("{failed} of {count} downloads failed");
    }
    Ok(())
}

fn download_one(to: SocketAddr, want: &[u8], timeout: Duration) -> Result<String> {
    let mut s = open_sending(
        to,
        timeout,
        format!("{}\n", want.len()).as_bytes(),
        &mut Seen::default(),
    )?;
    let mut got = Vec::with_capacity(want.len());
    let read = s.reader.read_to_end(&mut got);
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    if let Err(e) = read {
        let what = match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                format!("stalled (nothing for {timeout:?})")
            }
            _ => e.to_string(),
        };
        bail!(
            "{what} after {} of {} bytes from {}",
            got.len(),
            want.len(),
            s.daemon
        );
    }
    if got != want {
        bail!(
            "the bytes from {} differ at byte {at} (got {} of {})",
            s.daemon,
            got.len(),
            want.len()
        );
    }
    Ok(s.daemon)
}

pub fn many(
    to: SocketAddr,
    connections: usize,
    concurrency: usize,
    timeout: Duration,
) -> Result<()> {
    let open_ones = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (open_ones, refused, next) = (open_ones.clone(), refused.clone(), next.clone());
            thread::spawn(move || loop {
                if next.fetch_add(1, Ordering::Relaxed) >= connections {
                    break;
                }
                match open(to, timeout) {
                    Ok(s) => open_ones.lock().unwrap_or_else(|p| p.into_inner()).push(s),
                    Err(_) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let mut sessions = std::mem::take(&mut *open_ones.lock().unwrap_or_else(|p| p.into_inner()));
    let accepted = sessions.len();
    println!(
        "accepted={accepted} refused={}",
        refused.load(Ordering::Relaxed)
    );
    // Every accepted connection, all still open, must still carry data.
    let mut disturbed = 0;
    for (i, s) in sessions.iter_mut().enumerate() {
        if exchange(s, &pattern(i as u64, 200)).is_err() {
            disturbed += 1;
        }
    }
    for s in &mut sessions {
        let _ = s.stream.shutdown(Shutdown::Write);
        let mut rest = Vec::new();
        let _ = s.reader.read_to_end(&mut rest);
    }
    println!("disturbed={disturbed}");
    if disturbed > 0 {
        bail!("{disturbed} of {accepted} accepted connections stopped working");
    }
    Ok(())
}

/// One long-lived connection exchanging a message every `interval` for
/// `duration`. A failure is also reported as a failure line.
pub fn hold(to: SocketAddr, duration: Duration, interval: Duration) -> Result<()> {
    let start_ms = unix_ms();
    let mut seen = Seen::default();
    let result = hold_on(to, duration, interval, &mut seen);
    if let Err(e) = &result {
        println!("{}", seen.failure(e, start_ms).line());
    }
    result
}

fn hold_on(to: SocketAddr, duration: Duration, interval: Duration, seen: &mut Seen) -> Result<()> {
    let mut s = open_sending(to, Duration::from_secs(5), &[], seen)?;
    println!("daemon={} opened", s.daemon);
    let started = Instant::now();
    let mut rounds = 0u64;
    // The slowest exchange: how long the connection stalled at worst.
    let mut max_round = Duration::ZERO;
    while started.elapsed() < duration {
        let round = Instant::now();
        exchange(&mut s, &pattern(rounds, 100)).with_context(|| format!("round {rounds}"))?;
        max_round = max_round.max(round.elapsed());
        rounds += 1;
        thread::sleep(interval);
    }
    println!(
        "daemon={} rounds={rounds} max_round_ms={} ok",
        s.daemon,
        max_round.as_millis()
    );
    Ok(())
}

/// Short connections, `concurrency` at a time, for `duration`: each failure is
/// reported as a failure line as it happens, and the run goes on; at the end,
/// the connections per daemon and `ok=N failed=M`. Fails only if it cannot run.
pub fn churn(
    to: SocketAddr,
    duration: Duration,
    concurrency: usize,
    payload: usize,
    timeout: Duration,
) -> Result<()> {
    let per_daemon = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let failed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    println!("churning");
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|t| {
            let (per_daemon, failed) = (per_daemon.clone(), failed.clone());
            thread::spawn(move || {
                let mut i = t as u64;
                while started.elapsed() < duration {
                    let data = pattern(i, payload);
                    i += concurrency as u64;
                    let (start_ms, mut seen) = (unix_ms(), Seen::default());
                    match short_connection(to, &data, timeout, Close::Fin, &mut seen) {
                        Ok(daemon) => {
                            let mut tally = per_daemon.lock().unwrap_or_else(|p| p.into_inner());
                            *tally.entry(daemon).or_default() += 1;
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            println!("{}", seen.failure(&e, start_ms).line());
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let per_daemon = per_daemon.lock().unwrap_or_else(|p| p.into_inner());
    for (daemon, n) in per_daemon.iter() {
        println!("daemon={daemon} connections={n}");
    }
    println!(
        "ok={} failed={} seconds={:.3}",
        per_daemon.values().sum::<usize>(),
        failed.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `connections` persistent connections, each sending `payload` bytes and reading
/// their echo back to back until `duration` has passed.
pub fn request_reply(
    to: SocketAddr,
    connections: usize,
    duration: Duration,
    payload: usize,
    timeout: Duration,
) -> Result<()> {
    let sessions = (0..connections.max(1))
        .map(|_| open(to, timeout))
        .collect::<Result<Vec<_>>>()?;
    let started = Instant::now();
    let workers: Vec<_> = sessions
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            thread::spawn(move || -> Result<(u64, Histogram<u64>)> {
                let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
                let data = pattern(i as u64 + 1, payload);
                let mut back = vec![0u8; payload];
                let mut n = 0u64;
                while started.elapsed() < duration {
                    let t = Instant::now();
                    s.stream.write_all(&data)?;
                    s.reader
                        .read_exact(&mut back)
                        .with_context(|| format!("request {n}: reading the echo"))?;
                    let _ = latency.record((t.elapsed().as_micros() as u64).max(1));
                    if back != data {
                        bail!("echo from {} differs from what was sent", s.daemon);
                    }
                    n += 1;
                }
                s.stream.shutdown(Shutdown::Write)?;
                Ok((n, latency))
            })
        })
        .collect();
    let mut total = 0u64;
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = Vec::new();
    for w in workers {
        match w.join() {
            Ok(Ok((n, h))) => {
                total += n;
                latency.add(&h)?;
            }
            Ok(Err(e)) => errors.push(format!("{e:#}")),
            Err(_) => errors.push("a connection thread panicked".into()),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "requests={total} errors={} seconds={secs:.3} rate={:.0}",
        errors.len(),
        total as f64 / secs
    );
    print_latency("latency", &latency);
    for e in errors.iter().take(5) {
        println!("error: {e}");
    }
    if !errors.is_empty() {
        bail!("{} of {connections} connections failed", errors.len());
    }
    Ok(())
}

/// Which of [`two_protocols`]' two flows the client ends first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// A TCP connection and a UDP flow from one local port to `to` (a VIP:port
/// with a service of each protocol; `reply_mode = "tracked"` keys its
/// replies by the client's port): both exchange once, then the `close` one
/// ends (TCP: FIN both ways; UDP: its socket closed, the record left to idle
/// out) and the other goes on exchanging every `interval` for `after`. Its
/// first failure fails the run. The UDP socket is connected, so it counts
/// only answers from `to`. Prints `port=P tcp=<daemon> udp=<daemon>`,
/// `closed=<protocol>`, then `kept=<protocol> rounds=N ok`.
pub fn two_protocols(
    to: SocketAddr,
    close: Protocol,
    after: Duration,
    interval: Duration,
) -> Result<()> {
    let timeout = Duration::from_secs(2);
    let mut tcp = open(to, timeout)?;
    exchange(&mut tcp, &pattern(0, 100)).context("the first TCP exchange")?;
    // The kernel picked the TCP port; the UDP socket takes the same number
    // (the two protocols' ports are separate spaces).
    let local = tcp.stream.local_addr()?;
    let udp = std::net::UdpSocket::bind(local)
        .with_context(|| format!("binding the UDP socket to the TCP connection's {local}"))?;
    udp.connect(to)
        .with_context(|| format!("connecting UDP to {to}"))?;
    udp.set_read_timeout(Some(timeout))?;
    let udp_daemon =
        crate::udp::ask_daemon(&udp, b"q two-protocols round=0").context("the first UDP query")?;
    println!("port={} tcp={} udp={udp_daemon}", local.port(), tcp.daemon);
    let mut udp = Some(udp);
    let mut tcp = Some(tcp);
    match close {
        Protocol::Tcp => {
            let mut s = tcp.take().context("the TCP connection")?;
            s.stream.shutdown(Shutdown::Write)?;
            let mut rest = Vec::new();
            s.reader
                .read_to_end(&mut rest)
                .context("waiting for the daemon's FIN")?;
        }
        Protocol::Udp => drop(udp.take()),
    }
    println!("closed={close:?}");
    let started = Instant::now();
    let mut rounds = 0u64;
    while started.elapsed() < after {
        thread::sleep(interval);
        rounds += 1;
        let round = || {
            format!(
                "round {rounds}, {} ms after the close",
                started.elapsed().as_millis()
            )
        };
        if let Some(s) = tcp.as_mut() {
            exchange(s, &pattern(rounds, 100)).with_context(round)?;
        }
        if let Some(u) = udp.as_ref() {
            let query = format!("q two-protocols round={rounds}");
            crate::udp::ask_daemon(u, query.as_bytes()).with_context(round)?;
        }
    }
    if let Some(mut s) = tcp {
        s.stream.shutdown(Shutdown::Write)?;
        let mut rest = Vec::new();
        let _ = s.reader.read_to_end(&mut rest);
    }
    let kept = match close {
        Protocol::Tcp => Protocol::Udp,
        Protocol::Udp => Protocol::Tcp,
    };
    println!("kept={kept:?} rounds={rounds} ok");
    Ok(())
}
