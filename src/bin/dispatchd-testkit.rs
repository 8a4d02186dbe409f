//! Real TCP servers and clients for the demo, the end-to-end tests and the
//! benchmarks. Run inside the topology's namespaces with `ip netns exec`.
//!
//! serve:   echo servers; each connection first gets one line,
//!          `hello daemon=<listen addr> peer=<client addr as the daemon sees it>`,
//!          then everything it sends echoed back.
//! connect: many short connections (connect, hello, payload echo, close).
//! bulk:    one connection carrying N bytes each way, verified byte for byte.
//! hold:    one long-lived connection exchanging a message every interval.
//! rr:      K persistent connections, each doing request/reply exchanges back to
//!          back for D seconds (requests per second and per-request latency).
//!
//! Every client prints `key=value` lines that tests parse, and exits non-zero if
//! any connection failed or any echo differed.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    process::ExitCode,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;

#[derive(Parser)]
#[command(name = "dispatchd-testkit")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Serve {
        #[arg(long = "listen", required = true)]
        listen: Vec<SocketAddr>,
        /// After echoing the first read, abort the connection with a RST.
        #[arg(long)]
        reset: bool,
    },
    Connect {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 100)]
        connections: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, default_value_t = 64)]
        payload: usize,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        /// End each connection with a RST instead of a FIN.
        #[arg(long)]
        reset: bool,
        /// Expect the daemon to reset each connection after its echo.
        #[arg(long)]
        expect_reset: bool,
    },
    Bulk {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        bytes: usize,
    },
    /// Opens many connections at once and holds them: counts the accepted and the
    /// refused (connect timed out), then checks every accepted one still echoes.
    Many {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        connections: usize,
        #[arg(long, default_value_t = 100)]
        concurrency: usize,
        #[arg(long, default_value_t = 1500)]
        timeout_ms: u64,
    },
    /// Sends hand-made frames out of an interface through a raw AF_PACKET socket.
    Inject {
        #[arg(long)]
        iface: String,
        /// Destination MAC (the dispatcher's front interface).
        #[arg(long)]
        dst_mac: String,
        #[arg(long)]
        src_ip: std::net::Ipv4Addr,
        #[arg(long, default_value_t = 40_000)]
        src_port: u16,
        #[arg(long)]
        to: std::net::SocketAddrV4,
        /// `malformed`: one of each malformed kind per round; `syn-flood`: SYNs from
        /// spoofed sources in 198.18.128.0/17; `ack`: plain ACK segments.
        #[arg(long)]
        kind: String,
        #[arg(long, default_value_t = 1)]
        count: usize,
    },
    Hold {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        seconds: u64,
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
    },
    Rr {
        #[arg(long)]
        to: SocketAddr,
        /// Persistent connections, one thread each.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        #[arg(long)]
        seconds: f64,
        #[arg(long, default_value_t = 64)]
        payload: usize,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Serve { listen, reset } => serve(&listen, reset),
        Command::Connect {
            to,
            connections,
            concurrency,
            payload,
            timeout_ms,
            reset,
            expect_reset,
        } => {
            let close = match (reset, expect_reset) {
                (true, _) => Close::Reset,
                (false, true) => Close::ExpectReset,
                (false, false) => Close::Fin,
            };
            let timeout = Duration::from_millis(timeout_ms);
            connect_many(to, connections, concurrency, payload, timeout, close)
        }
        Command::Bulk { to, bytes } => bulk(to, bytes),
        Command::Many {
            to,
            connections,
            concurrency,
            timeout_ms,
        } => many(
            to,
            connections,
            concurrency,
            Duration::from_millis(timeout_ms),
        ),
        Command::Inject {
            iface,
            dst_mac,
            src_ip,
            src_port,
            to,
            kind,
            count,
        } => {
            let from = std::net::SocketAddrV4::new(src_ip, src_port);
            inject::run(&iface, &dst_mac, from, to, &kind, count)
        }
        Command::Hold {
            to,
            seconds,
            interval_ms,
        } => hold(
            to,
            Duration::from_secs(seconds),
            Duration::from_millis(interval_ms),
        ),
        Command::Rr {
            to,
            connections,
            seconds,
            payload,
        } => request_reply(to, connections, Duration::from_secs_f64(seconds), payload),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dispatchd-testkit: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Makes the next close of `stream` send a RST (SO_LINGER with a zero timeout).
fn abort_on_close(stream: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads `linger` (valid, of the size given) during the call.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// How a client ends its connections.
#[derive(Clone, Copy)]
enum Close {
    Fin,
    Reset,
    ExpectReset,
}

fn serve(listen: &[SocketAddr], reset: bool) -> Result<()> {
    let mut threads = Vec::new();
    for &addr in listen {
        let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        threads.push(thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                thread::spawn(move || {
                    // A client that vanishes mid-echo is the client's business.
                    let _ = echo(stream, addr, reset);
                });
            }
        }));
    }
    println!(
        "serving {}",
        listen
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn echo(mut stream: TcpStream, local: SocketAddr, reset: bool) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let peer = stream.peer_addr()?;
    stream.write_all(format!("hello daemon={local} peer={peer}\n").as_bytes())?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return stream.shutdown(Shutdown::Write);
        }
        stream.write_all(&buf[..n])?;
        if reset {
            // Let the echo leave before the RST, which discards unsent data.
            thread::sleep(Duration::from_millis(20));
            return abort_on_close(&stream);
        }
    }
}

/// One established connection past its hello line.
struct Session {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
    daemon: String,
    seen_peer: String,
}

fn open(to: SocketAddr, timeout: Duration) -> Result<Session> {
    open_sending(to, timeout, &[])
}

/// Connects and sends `first` right away, before the daemon's hello: the client
/// speaks first, as most protocols do, so the handshake's last ACK is repeated by
/// the data segment if it was lost (which matters when the daemon answered with a
/// SYN cookie and kept no state).
fn open_sending(to: SocketAddr, timeout: Duration, first: &[u8]) -> Result<Session> {
    let mut stream =
        TcpStream::connect_timeout(&to, timeout).with_context(|| format!("connecting to {to}"))?;
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
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .map(str::to_owned)
            .with_context(|| format!("hello line {line:?} lacks {k}"))
    };
    let (daemon, seen_peer) = (field("daemon=")?, field("peer=")?);
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
fn pattern(seed: u64, len: usize) -> Vec<u8> {
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
) -> Result<String> {
    let mut s = open_sending(to, timeout, payload)?;
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

fn connect_many(
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
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (tally, next) = (tally.clone(), next.clone());
            thread::spawn(move || loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= connections {
                    break;
                }
                let data = pattern(i as u64, payload);
                let t = Instant::now();
                let result = short_connection(to, &data, timeout, close);
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

fn bulk(to: SocketAddr, bytes: usize) -> Result<()> {
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

fn many(to: SocketAddr, connections: usize, concurrency: usize, timeout: Duration) -> Result<()> {
    let open_ones = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (open_ones, refused, next) = (open_ones.clone(), refused.clone(), next.clone());
            thread::spawn(move || loop {
                if next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= connections {
                    break;
                }
                match open(to, timeout) {
                    Ok(s) => open_ones.lock().unwrap_or_else(|p| p.into_inner()).push(s),
                    Err(_) => {
                        refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
        refused.load(std::sync::atomic::Ordering::Relaxed)
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

fn hold(to: SocketAddr, duration: Duration, interval: Duration) -> Result<()> {
    let mut s = open(to, Duration::from_secs(5))?;
    println!("daemon={} opened", s.daemon);
    let started = Instant::now();
    let mut rounds = 0u64;
    while started.elapsed() < duration {
        exchange(&mut s, &pattern(rounds, 100)).with_context(|| format!("round {rounds}"))?;
        rounds += 1;
        thread::sleep(interval);
    }
    println!("daemon={} rounds={rounds} ok", s.daemon);
    Ok(())
}

/// Raw frames for the hardening tests: malformed ones of every kind, and SYN floods.
mod inject {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use anyhow::{bail, Context, Result};
    use dispatchd::packet::checksum;

    struct Frame {
        kind: &'static str,
        bytes: Vec<u8>,
    }

    fn mac(text: &str) -> Result<[u8; 6]> {
        dispatchd::neigh::parse_mac(text).with_context(|| format!("MAC {text:?}"))
    }

    /// Ethernet + IPv4 (+options) + TCP with correct checksums, then `edit`ed.
    struct Builder {
        dst_mac: [u8; 6],
        src_mac: [u8; 6],
        src: SocketAddrV4,
        dst: SocketAddrV4,
    }

    impl Builder {
        fn tcp(&self, flags: u8, payload: &[u8], ip_options: &[u8]) -> Vec<u8> {
            let ihl = 5 + ip_options.len() / 4;
            let total = ihl * 4 + 20 + payload.len();
            let mut f = Vec::with_capacity(14 + total);
            f.extend_from_slice(&self.dst_mac);
            f.extend_from_slice(&self.src_mac);
            f.extend_from_slice(&[0x08, 0x00]);
            f.push(0x40 | ihl as u8);
            f.push(0);
            f.extend_from_slice(&(total as u16).to_be_bytes());
            f.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, 6, 0, 0]);
            f.extend_from_slice(&self.src.ip().octets());
            f.extend_from_slice(&self.dst.ip().octets());
            f.extend_from_slice(ip_options);
            let l4 = f.len();
            f.extend_from_slice(&self.src.port().to_be_bytes());
            f.extend_from_slice(&self.dst.port().to_be_bytes());
            f.extend_from_slice(&1u32.to_be_bytes());
            f.extend_from_slice(&0u32.to_be_bytes());
            f.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
            f.extend_from_slice(payload);
            fix_checksums(&mut f, l4);
            f
        }
    }

    fn fix_checksums(f: &mut [u8], l4: usize) {
        f[24..26].copy_from_slice(&[0, 0]);
        let ip = checksum::checksum(&f[14..l4]);
        f[24..26].copy_from_slice(&ip.to_be_bytes());
        f[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
        let src = Ipv4Addr::new(f[26], f[27], f[28], f[29]);
        let dst = Ipv4Addr::new(f[30], f[31], f[32], f[33]);
        let c = checksum::l4_checksum_ipv4(src, dst, 6, &f[l4..]);
        f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
    }

    /// Every malformed kind once, named as dispatchd counts it.
    fn malformed(b: &Builder) -> Vec<Frame> {
        let ok = b.tcp(0x02, b"malformed", &[]);
        let with = |kind: &'static str, edit: &dyn Fn(&mut Vec<u8>)| {
            let mut bytes = ok.clone();
            edit(&mut bytes);
            Frame { kind, bytes }
        };
        let ip_checksum = |f: &mut Vec<u8>| {
            f[24..26].copy_from_slice(&[0, 0]);
            let c = checksum::checksum(&f[14..34]);
            f[24..26].copy_from_slice(&c.to_be_bytes());
        };
        vec![
            // (A frame shorter than its Ethernet header cannot leave AF_PACKET: the
            // kernel pads it to 14 bytes.)
            with("truncated", &|f| f.truncate(14 + 6)),
            with("truncated", &|f| f.truncate(14 + 12)),
            with("vip_malformed", &|f| f.truncate(14 + 20 + 2)),
            with("vip_malformed", &|f| {
                f[14] = 0x44;
                ip_checksum(f)
            }),
            Frame {
                kind: "ip_options",
                bytes: b.tcp(0x02, b"opts", &[1, 1, 1, 0]),
            },
            with("fragment", &|f| {
                f[20] = 0x20; // MF, offset 0: the first fragment
                ip_checksum(f)
            }),
            with("vip_fragment", &|f| {
                f[20..22].copy_from_slice(&0x0010u16.to_be_bytes());
                ip_checksum(f)
            }),
            with("total_length_beyond_frame", &|f| {
                let total = u16::from_be_bytes([f[16], f[17]]) + 40;
                f[16..18].copy_from_slice(&total.to_be_bytes());
                ip_checksum(f)
            }),
            with("tcp_offset_too_small", &|f| {
                f[34 + 12] = 0x40;
                fix_checksums(f, 34)
            }),
            with("tcp_offset_past_end", &|f| {
                f[34 + 12] = 0xf0;
                fix_checksums(f, 34)
            }),
            with("ttl_expired", &|f| {
                f[22] = 0;
                ip_checksum(f)
            }),
            with("ttl_expired", &|f| {
                f[22] = 1;
                ip_checksum(f)
            }),
            with("bad_ip_checksum", &|f| f[24] ^= 0x5a),
            with("bad_syn_checksum", &|f| f[34 + 16] ^= 0x5a),
            with("vlan", &|f| {
                f.splice(12..12, [0x81, 0x00, 0x00, 0x07]);
            }),
            with("ipv6", &|f| {
                f[12..14].copy_from_slice(&[0x86, 0xdd]);
            }),
        ]
    }

    fn raw_socket(iface: &str) -> Result<std::os::fd::OwnedFd> {
        use std::os::fd::FromRawFd;
        let name = std::ffi::CString::new(iface)?;
        // SAFETY: a valid NUL-terminated name for the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            bail!("no interface {iface}");
        }
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); a non-negative result is a new fd we own.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .context("AF_PACKET socket (needs CAP_NET_RAW)");
        }
        // SAFETY: fd is fresh and owned by nobody else.
        let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: all-zero is a valid sockaddr_ll; the fields we need are set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = index as i32;
        // SAFETY: sll is initialised and its size is passed.
        let rc = unsafe {
            libc::bind(
                fd,
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("binding the AF_PACKET socket");
        }
        Ok(owned)
    }

    fn send(fd: &std::os::fd::OwnedFd, frame: &[u8]) -> Result<()> {
        use std::os::fd::AsRawFd;
        loop {
            // SAFETY: frame is a live buffer of the length given.
            let n = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            if n >= 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOBUFS) {
                return Err(e).context("sending a raw frame");
            }
            std::thread::yield_now();
        }
    }

    pub fn run(
        iface: &str,
        dst_mac: &str,
        from: SocketAddrV4,
        to: SocketAddrV4,
        kind: &str,
        count: usize,
    ) -> Result<()> {
        let src_mac = mac(&std::fs::read_to_string(format!(
            "/sys/class/net/{iface}/address"
        ))?)?;
        let fd = raw_socket(iface)?;
        let mut b = Builder {
            dst_mac: mac(dst_mac)?,
            src_mac,
            src: from,
            dst: to,
        };
        match kind {
            "malformed" => {
                let frames = malformed(&b);
                let mut sent = std::collections::BTreeMap::<&str, usize>::new();
                for _ in 0..count {
                    for f in &frames {
                        send(&fd, &f.bytes)?;
                        *sent.entry(f.kind).or_default() += 1;
                    }
                }
                for (k, n) in sent {
                    println!("sent {k}={n}");
                }
            }
            "syn-flood" => {
                let started = std::time::Instant::now();
                for i in 0..count as u32 {
                    // Spoofed clients in 198.18.128.0/17: no route back from the
                    // dispatcher, as with a real flood's forged sources.
                    let ip = Ipv4Addr::from(0xc612_8000 | (i % 0x8000));
                    b.src = SocketAddrV4::new(ip, 1024 + (i / 0x8000) as u16 * 7 + (i % 61) as u16);
                    send(&fd, &b.tcp(0x02, &[], &[]))?;
                }
                let secs = started.elapsed().as_secs_f64();
                println!(
                    "sent syn={count} seconds={secs:.3} rate={:.0}",
                    count as f64 / secs
                );
            }
            "ack" => {
                let frame = b.tcp(0x10, b"spoofed", &[]);
                for _ in 0..count {
                    send(&fd, &frame)?;
                }
                println!("sent ack={count}");
            }
            other => bail!("unknown kind {other:?}: malformed | syn-flood | ack"),
        }
        Ok(())
    }
}

/// `connections` persistent connections, each sending `payload` bytes and reading
/// their echo back to back until `duration` has passed.
fn request_reply(
    to: SocketAddr,
    connections: usize,
    duration: Duration,
    payload: usize,
) -> Result<()> {
    let sessions = (0..connections.max(1))
        .map(|_| open(to, Duration::from_secs(5)))
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
