//! Raw frames for the hardening tests: malformed ones of every kind, SYN floods,
//! stray ACKs and blind resets, built by the kit's frame builder.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use dispatchd_testkit::frame::{parse_mac, tcp_flags, Frame, FrameSpec};

use crate::sockets::{raw_socket, recv, send};

const ETHER_TYPE_IPV6: u16 = 0x86dd;

/// A frame and the counter dispatchd counts it under.
struct Malformed {
    kind: &'static str,
    frame: Frame,
}

/// Every malformed kind once, named as dispatchd counts it. Each breaks one
/// rule of a valid SYN and keeps every checksum right unless the checksum is
/// the point.
fn malformed(base: &FrameSpec) -> Vec<Malformed> {
    let syn = FrameSpec {
        tcp_flags: tcp_flags::SYN,
        payload: b"malformed".to_vec(),
        ..base.clone()
    };
    let ok = syn.build();
    let with = |kind: &'static str, edit: &dyn Fn(&mut Frame)| {
        let mut frame = ok.clone();
        edit(&mut frame);
        Malformed { kind, frame }
    };
    let built = |kind: &'static str, spec: FrameSpec| Malformed {
        kind,
        frame: spec.build(),
    };
    vec![
        // (A frame shorter than its Ethernet header cannot leave AF_PACKET: the
        // kernel pads it to 14 bytes.)
        with("truncated", &|f| {
            f.truncate(14 + 6);
        }),
        with("truncated", &|f| {
            f.truncate(14 + 12);
        }),
        // Cut inside the TCP ports.
        with("vip_malformed", &|f| {
            f.truncate(14 + 20 + 2);
        }),
        with("vip_malformed", &|f| {
            f.set_ihl(4).reseal_ip_checksum();
        }),
        built(
            "ip_options",
            FrameSpec {
                ip_options: vec![1, 1, 1, 0],
                payload: b"opts".to_vec(),
                ..syn.clone()
            },
        ),
        // The first fragment: the XDP program steers it, the worker drops it.
        with("fragment", &|f| {
            f.set_fragment(true, 0).reseal_ip_checksum();
        }),
        with("vip_fragment", &|f| {
            f.set_fragment(false, 16).reseal_ip_checksum();
        }),
        with("total_length_beyond_frame", &|f| {
            f.set_total_len(f.total_len() + 40).reseal_ip_checksum();
        }),
        with("tcp_offset_too_small", &|f| {
            f.set_tcp_data_offset(4).reseal_tcp_checksum();
        }),
        with("tcp_offset_past_end", &|f| {
            f.set_tcp_data_offset(15).reseal_tcp_checksum();
        }),
        with("ttl_expired", &|f| {
            f.set_ttl(0).reseal_ip_checksum();
        }),
        with("ttl_expired", &|f| {
            f.set_ttl(1).reseal_ip_checksum();
        }),
        with("bad_ip_checksum", &|f| {
            f.set_ip_checksum(f.ip_checksum() ^ 0x5a00);
        }),
        with("bad_syn_checksum", &|f| {
            f.set_l4_checksum(f.l4_checksum() ^ 0x5a00);
        }),
        built(
            "vlan",
            FrameSpec {
                vlan: Some(7),
                ..syn.clone()
            },
        ),
        with("ipv6", &|f| {
            f.set_ether_type(ETHER_TYPE_IPV6);
        }),
    ]
}

/// Every malformed UDP kind once, named as dispatchd counts it: the length
/// field or the IPv4 total length at odds with the datagram, each with its
/// checksums right.
fn malformed_udp(base: &FrameSpec) -> Vec<Malformed> {
    let ok = FrameSpec {
        payload: b"malformed-udp".to_vec(),
        ..FrameSpec::udp(base.src, base.dst)
    }
    .build();
    let with = |kind: &'static str, edit: &dyn Fn(&mut Frame)| {
        let mut frame = ok.clone();
        edit(&mut frame);
        let bytes = frame.as_bytes_mut();
        bytes[..6].copy_from_slice(&base.dst_mac);
        bytes[6..12].copy_from_slice(&base.src_mac);
        Malformed { kind, frame }
    };
    vec![
        with("bad_udp_length", &|f| {
            f.set_udp_len(400);
        }),
        with("bad_udp_length", &|f| {
            f.set_udp_len(7);
        }),
        // The IPv4 packet ends inside the UDP header (the frame may go on:
        // Ethernet padding).
        with("truncated_udp", &|f| {
            f.set_total_len(20 + 6).reseal_ip_checksum();
        }),
        with("vip_malformed", &|f| {
            f.truncate(14 + 20 + 3);
        }),
        with("bad_syn_checksum", &|f| {
            f.set_l4_checksum(f.l4_checksum() ^ 0x5a00);
        }),
    ]
}

/// What to send: the kind of frames, how many, their TCP sequence number, and
/// how many per second (0: as fast as the socket takes them).
pub struct Injection<'a> {
    pub kind: &'a str,
    pub count: usize,
    pub seq: u32,
    pub rate: u64,
}

/// Paced sending: after frame `i`, waits until a schedule of `rate` frames a
/// second catches up with what was sent (checked every 1024 frames; 0: no pace).
fn pace(started: Instant, i: u32, rate: u64) {
    if rate > 0 && i.is_multiple_of(1024) {
        let due = Duration::from_secs_f64(f64::from(i) / rate as f64);
        if let Some(ahead) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
}

/// splitmix64: reproducible pseudo-random numbers without a dependency.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub fn run(
    iface: &str,
    dst_mac: &str,
    from: SocketAddrV4,
    to: SocketAddrV4,
    what: Injection<'_>,
) -> Result<()> {
    let Injection {
        kind,
        count,
        seq,
        rate,
    } = what;
    let mac = |text: &str| parse_mac(text).with_context(|| format!("MAC {text:?}"));
    let src_mac = mac(&std::fs::read_to_string(format!(
        "/sys/class/net/{iface}/address"
    ))?)?;
    let fd = raw_socket(iface)?;
    let base = FrameSpec {
        src_mac,
        dst_mac: mac(dst_mac)?,
        ip_id: 0x1234,
        seq,
        ..FrameSpec::tcp(from, to)
    };
    match kind {
        "malformed" => {
            let frames = malformed(&base);
            let mut sent = BTreeMap::<&str, usize>::new();
            for _ in 0..count {
                for m in &frames {
                    send(&fd, m.frame.as_bytes())?;
                    *sent.entry(m.kind).or_default() += 1;
                }
            }
            for (k, n) in sent {
                println!("sent {k}={n}");
            }
        }
        "udp-malformed" => {
            let frames = malformed_udp(&base);
            let mut sent = BTreeMap::<&str, usize>::new();
            for _ in 0..count {
                for m in &frames {
                    send(&fd, m.frame.as_bytes())?;
                    *sent.entry(m.kind).or_default() += 1;
                }
            }
            for (k, n) in sent {
                println!("sent {k}={n}");
            }
        }
        "udp-flood" => {
            // Datagrams from spoofed sources in 198.18.128.0/17, each tuple
            // once: every one asks for a record.
            let started = Instant::now();
            for i in 0..count as u32 {
                let ip = Ipv4Addr::from(0xc612_8000 | (i % 0x8000));
                let port = 1024 + (i / 0x8000) as u16 * 7 + (i % 61) as u16;
                let datagram = FrameSpec {
                    src_mac: base.src_mac,
                    dst_mac: base.dst_mac,
                    payload: b"spoofed".to_vec(),
                    ..FrameSpec::udp(SocketAddrV4::new(ip, port), to)
                };
                send(&fd, datagram.build().as_bytes())?;
                pace(started, i, rate);
            }
            let secs = started.elapsed().as_secs_f64();
            println!(
                "sent udp={count} seconds={secs:.3} rate={:.0}",
                count as f64 / secs
            );
        }
        "syn-flood" => {
            let started = Instant::now();
            for i in 0..count as u32 {
                // Spoofed clients in 198.18.128.0/17: no route back from the
                // dispatcher, as with a real flood's forged sources.
                let ip = Ipv4Addr::from(0xc612_8000 | (i % 0x8000));
                let port = 1024 + (i / 0x8000) as u16 * 7 + (i % 61) as u16;
                let syn = FrameSpec {
                    src: SocketAddrV4::new(ip, port),
                    tcp_flags: tcp_flags::SYN,
                    ..base.clone()
                };
                send(&fd, syn.build().as_bytes())?;
                pace(started, i, rate);
            }
            let secs = started.elapsed().as_secs_f64();
            println!(
                "sent syn={count} seconds={secs:.3} rate={:.0}",
                count as f64 / secs
            );
        }
        "ack-flood" => {
            // Spoofed mid-connection segments: ACKs (with a little data) from
            // clients that never opened a connection, at hosts 128..254 of the
            // sender's own /24 (the client network) and ports from 1024 up,
            // each tuple once (up to 127 × 64,512), with random sequence and
            // acknowledgment numbers: what a blind attacker sends to make a
            // consistent-hashing balancer create records.
            let net = u32::from(*from.ip()) & 0xffff_ff00;
            let mut state = 0x5eed_u64 ^ u64::from(seq);
            let started = Instant::now();
            for i in 0..count as u32 {
                let r = splitmix(&mut state);
                let ip = Ipv4Addr::from(net | (0x80 + i % 127));
                let port = 1024 + (i / 127) as u16;
                let ack = FrameSpec {
                    src: SocketAddrV4::new(ip, port),
                    tcp_flags: tcp_flags::ACK,
                    seq: (r >> 24) as u32,
                    ack: (r >> 40) as u32 ^ (r as u32),
                    payload: b"spoofed".to_vec(),
                    ..base.clone()
                };
                send(&fd, ack.build().as_bytes())?;
                pace(started, i, rate);
            }
            let secs = started.elapsed().as_secs_f64();
            println!(
                "sent ack={count} seconds={secs:.3} rate={:.0}",
                count as f64 / secs
            );
        }
        "ack" => {
            let ack = FrameSpec {
                tcp_flags: tcp_flags::ACK,
                payload: b"spoofed".to_vec(),
                ..base
            }
            .build();
            for _ in 0..count {
                send(&fd, ack.as_bytes())?;
            }
            println!("sent ack={count}");
        }
        "rst" => {
            let rst = FrameSpec {
                tcp_flags: tcp_flags::RST,
                ..base
            }
            .build();
            for _ in 0..count {
                send(&fd, rst.as_bytes())?;
            }
            println!("sent rst={count} seq={seq}");
        }
        other => bail!(
            "unknown kind {other:?}: malformed | udp-malformed | syn-flood | udp-flood | ack-flood | ack | rst"
        ),
    }
    Ok(())
}

/// Waits for one TCP segment sent from `from` on `iface` and prints its
/// sequence and acknowledgment numbers: what a test needs to aim a reset inside
/// (or outside) a live connection's window.
pub fn sniff(iface: &str, from: SocketAddrV4, timeout: Duration) -> Result<()> {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let fd = raw_socket(iface)?;
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no segment from {from} on {iface} within {timeout:?}");
        }
        let Some(n) = recv(&fd, &mut buf, left)? else {
            continue;
        };
        let Ok(p) = SlicedPacket::from_ethernet(&buf[..n]) else {
            continue;
        };
        let (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Tcp(tcp))) = (p.net, p.transport)
        else {
            continue;
        };
        if ip.header().source_addr() == *from.ip() && tcp.source_port() == from.port() {
            println!(
                "seq={} ack={}",
                tcp.sequence_number(),
                tcp.acknowledgment_number()
            );
            return Ok(());
        }
    }
}
