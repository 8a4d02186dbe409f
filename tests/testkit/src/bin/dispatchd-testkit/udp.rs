//! UDP stand-ins: an echo server for the daemons and a query client.
//!
//! udp-serve: each datagram is answered with `daemon=<listen addr> peer=<source
//!            as the daemon sees it>\n` followed by the datagram itself.
//! udp-query: `--clients` connected sockets (each its own source port, from
//!            `--src-port` up if given), `--count` rounds of one query per socket
//!            and its answer. Connected sockets take datagrams from the queried
//!            address only, so every answer counted came from it (the VIP:port),
//!            and a port unreachable about a query ends as ECONNREFUSED.
use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

pub fn serve(listen: &[SocketAddr]) -> Result<()> {
    let mut threads = Vec::new();
    for &addr in listen {
        let socket = UdpSocket::bind(addr).with_context(|| format!("binding UDP {addr}"))?;
        threads.push(thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            let mut out = Vec::with_capacity(65536 + 64);
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                out.clear();
                out.extend_from_slice(format!("daemon={addr} peer={peer}\n").as_bytes());
                out.extend_from_slice(&buf[..n]);
                let _ = socket.send_to(&out, peer);
            }
        }));
    }
    println!(
        "serving udp {}",
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

/// What [`query`] does.
pub struct Query {
    pub to: SocketAddr,
    pub clients: usize,
    pub count: usize,
    pub src_port: Option<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    pub payload: usize,
}

/// The outcome of one query.
enum Answer {
    Daemon(String),
    Lost,
    Refused,
    Wrong(String),
}

fn ask(socket: &UdpSocket, query: &[u8], buf: &mut [u8]) -> Answer {
    if let Err(e) = socket.send(query) {
        return match e.kind() {
            ErrorKind::ConnectionRefused => Answer::Refused,
            _ => Answer::Wrong(format!("send: {e}")),
        };
    }
    loop {
        match socket.recv(buf) {
            Ok(n) => {
                let text = &buf[..n];
                let Some(split) = text.iter().position(|&b| b == b'\n') else {
                    return Answer::Wrong("answer without a header line".into());
                };
                // A late answer to an earlier query of this socket: skip it.
                if &text[split + 1..] != query {
                    continue;
                }
                let head = String::from_utf8_lossy(&text[..split]);
                let daemon = head
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("daemon="))
                    .unwrap_or("?")
                    .to_owned();
                return Answer::Daemon(daemon);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Answer::Lost
            }
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Answer::Refused,
            Err(e) => return Answer::Wrong(format!("recv: {e}")),
        }
    }
}

/// One query on a connected socket and its answer: the daemon that answered,
/// or why none came.
pub fn ask_daemon(socket: &UdpSocket, query: &[u8]) -> Result<String> {
    let mut buf = vec![0u8; 65536];
    match ask(socket, query, &mut buf) {
        Answer::Daemon(d) => Ok(d),
        Answer::Lost => anyhow::bail!("no UDP answer within the timeout"),
        Answer::Refused => anyhow::bail!("the UDP query was refused (port unreachable)"),
        Answer::Wrong(e) => anyhow::bail!("UDP: {e}"),
    }
}

pub fn query(q: Query) -> Result<()> {
    // `--bind` is IPv4's; an IPv6 query goes from any of the client's addresses.
    let local = match (q.to, crate::sockets::client_bind()) {
        (SocketAddr::V6(_), _) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        (SocketAddr::V4(_), Some(ip)) => IpAddr::V4(ip),
        (SocketAddr::V4(_), None) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    let mut sockets = Vec::with_capacity(q.clients);
    for i in 0..q.clients {
        let port = q.src_port.map_or(0, |p| p + i as u16);
        let socket = UdpSocket::bind(SocketAddr::new(local, port))
            .with_context(|| format!("binding a UDP client on port {port}"))?;
        socket
            .connect(q.to)
            .with_context(|| format!("connecting to {}", q.to))?;
        socket.set_read_timeout(Some(q.timeout))?;
        sockets.push(socket);
    }
    let mut per_daemon = BTreeMap::<String, (usize, usize)>::new();
    let mut first_daemon: Vec<Option<String>> = vec![None; q.clients];
    let (mut ok, mut lost, mut refused, mut switched) = (0usize, 0usize, 0usize, 0usize);
    let mut errors = Vec::new();
    let mut buf = vec![0u8; 65536];
    let started = Instant::now();
    for round in 0..q.count {
        if round > 0 && !q.interval.is_zero() {
            thread::sleep(q.interval);
        }
        for (i, socket) in sockets.iter().enumerate() {
            let mut query = format!("q client={i} round={round} ").into_bytes();
            query.resize(query.len().max(q.payload), b'.');
            match ask(socket, &query, &mut buf) {
                Answer::Daemon(d) => {
                    ok += 1;
                    let entry = per_daemon.entry(d.clone()).or_default();
                    entry.1 += 1;
                    match &first_daemon[i] {
                        None => {
                            entry.0 += 1;
                            first_daemon[i] = Some(d);
                        }
                        Some(first) if *first != d => switched += 1,
                        Some(_) => {}
                    }
                }
                Answer::Lost => lost += 1,
                Answer::Refused => refused += 1,
                Answer::Wrong(e) => errors.push(e),
            }
        }
    }
    for (daemon, (flows, datagrams)) in &per_daemon {
        println!("daemon={daemon} flows={flows} datagrams={datagrams}");
    }
    println!(
        "ok={ok} lost={lost} refused={refused} switched={switched} errors={} seconds={:.3}",
        errors.len(),
        started.elapsed().as_secs_f64()
    );
    if let Some(first) = sockets.first() {
        println!("first_local={}", first.local_addr()?);
    }
    for e in errors.iter().take(5) {
        println!("error: {e}");
    }
    Ok(())
}
