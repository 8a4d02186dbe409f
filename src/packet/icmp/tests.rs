//! The ICMP view and its translations against the test kit's encoder
//! (etherparse): an error is built around a quote of the segment as one side
//! saw it, translated, and compared byte for byte with the error built around
//! the segment as the other side sent it.
use std::net::{Ipv4Addr, SocketAddrV4};

use dispatchd_testkit::frame::{Frame, FrameSpec, IcmpKind, IcmpSpec};
use etherparse::{Icmpv4Slice, NetSlice, SlicedPacket};

use super::*;

const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 40123);
const SERVICE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 80);
const DAEMON: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 12), 8080);
/// A router on the front path and one on the back path.
const FRONT_ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const BACK_ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
const MACS: MacPair = MacPair {
    src: [0x02, 0, 0, 0, 0xb0, 1],
    dst: [0x02, 0, 0, 0, 0x5e, 2],
};
const ROUTER_MACS: ([u8; 6], [u8; 6]) = ([0x02, 0, 0, 0, 0x7e, 1], [0x02, 0, 0, 0, 0xf0, 1]);

const KINDS: [IcmpKind; 4] = [
    IcmpKind::FragNeeded { mtu: 1280 },
    IcmpKind::PortUnreachable,
    IcmpKind::TimeExceeded,
    IcmpKind::ParameterProblem { pointer: 9 },
];

/// A data segment with an odd payload, TTL `ttl`.
fn segment(from: SocketAddrV4, to: SocketAddrV4, ttl: u8) -> Frame {
    FrameSpec {
        ttl,
        ip_id: 0x4d2,
        tcp_flags: 0x18,
        seq: 0x1234_5678,
        ack: 0x9abc_def0,
        window: 501,
        payload: (0..1001u32).map(|i| (i * 7) as u8).collect(),
        ..FrameSpec::tcp(from, to)
    }
    .build()
}

fn error(
    macs: ([u8; 6], [u8; 6]),
    from: Ipv4Addr,
    to: Ipv4Addr,
    ttl: u8,
    kind: IcmpKind,
    quote: &[u8],
) -> Vec<u8> {
    IcmpSpec {
        src_mac: macs.0,
        dst_mac: macs.1,
        src: from,
        dst: to,
        ttl,
        tos: 0xc0,
        kind,
        quote: quote.to_vec(),
    }
    .build()
    .into_bytes()
}

/// Quote lengths: RFC 792's minimum (IPv4 header + 8 bytes), up to the TCP
/// checksum, half of it, all of it, the TCP header, and the whole packet.
fn quote_lens(packet: &[u8]) -> [usize; 6] {
    [28, 36, 37, 38, 40, packet.len()]
}

/// Where the first byte of the quoted TCP checksum sits in an error frame.
const QUOTED_TCP_CHECKSUM: usize = 14 + 20 + 8 + 20 + 16;

/// `want` with the quoted TCP checksum's first byte as in `got`, and the ICMP
/// checksum recomputed by etherparse: a quote that ends inside the checksum
/// keeps the byte it has (its new value depends on the byte that is missing).
fn with_half_checksum_kept(mut want: Vec<u8>, got: &[u8]) -> Vec<u8> {
    want[QUOTED_TCP_CHECKSUM] = got[QUOTED_TCP_CHECKSUM];
    let icmp = Icmpv4Slice::from_slice(&want[34..]).expect("ICMP decodes");
    let ck = icmp.header().icmp_type.calc_checksum(icmp.payload());
    want[36..38].copy_from_slice(&ck.to_be_bytes());
    want
}

#[test]
fn an_error_about_a_reply_becomes_the_error_about_what_the_daemon_sent() {
    // The daemon sent TTL 64; dispatchd's reverse rewrite left TTL 63 and the
    // VIP as source, which is what the router quotes.
    let sent = segment(DAEMON, CLIENT, 63);
    let seen = segment(SERVICE, CLIENT, 63);
    for kind in KINDS {
        for n in quote_lens(seen.ip_packet()) {
            let mut f = error(
                ROUTER_MACS,
                FRONT_ROUTER,
                *SERVICE.ip(),
                61,
                kind,
                &seen.ip_packet()[..n],
            );
            let mut e = IcmpError::parse(&mut f).unwrap_or_else(|r| panic!("{kind:?} {n}: {r}"));
            assert_eq!(e.quoted_src(), SERVICE);
            assert_eq!(e.quoted_dst(), CLIENT);
            assert_eq!(
                (e.outer_src(), e.outer_dst()),
                (FRONT_ROUTER, *SERVICE.ip())
            );
            let before = e.as_bytes().get(QUOTED_TCP_CHECKSUM).copied();
            e.rewrite_to_daemon(DAEMON, &MACS);
            let mut want = error(
                (MACS.src, MACS.dst),
                FRONT_ROUTER,
                *DAEMON.ip(),
                60,
                kind,
                &sent.ip_packet()[..n],
            );
            if n == 37 {
                assert_eq!(Some(f[QUOTED_TCP_CHECKSUM]), before);
                want = with_half_checksum_kept(want, &f);
            }
            assert_eq!(f, want, "{kind:?}, quote of {n} bytes");
        }
    }
}

#[test]
fn an_error_about_a_clients_segment_becomes_the_error_about_what_the_client_sent() {
    // The client sent TTL 64 to the VIP; dispatchd's forward rewrite made it
    // TTL 63 to the daemon, which is what the back router quotes.
    let sent = segment(CLIENT, SERVICE, 63);
    let seen = segment(CLIENT, DAEMON, 63);
    for kind in KINDS {
        for n in quote_lens(seen.ip_packet()) {
            let mut f = error(
                ROUTER_MACS,
                BACK_ROUTER,
                *CLIENT.ip(),
                64,
                kind,
                &seen.ip_packet()[..n],
            );
            let mut e = IcmpError::parse(&mut f).unwrap_or_else(|r| panic!("{kind:?} {n}: {r}"));
            assert_eq!((e.quoted_src(), e.quoted_dst()), (CLIENT, DAEMON));
            let before = e.as_bytes().get(QUOTED_TCP_CHECKSUM).copied();
            e.rewrite_to_client(SERVICE);
            // The Ethernet addresses are the XDP program's business.
            let mut want = error(
                ROUTER_MACS,
                *SERVICE.ip(),
                *CLIENT.ip(),
                63,
                kind,
                &sent.ip_packet()[..n],
            );
            if n == 37 {
                assert_eq!(Some(f[QUOTED_TCP_CHECKSUM]), before);
                want = with_half_checksum_kept(want, &f);
            }
            assert_eq!(f, want, "{kind:?}, quote of {n} bytes");
        }
    }
}

#[test]
fn a_fragmentation_needed_tells_its_mtu() {
    let seen = segment(SERVICE, CLIENT, 63);
    let mut f = error(
        ROUTER_MACS,
        FRONT_ROUTER,
        *SERVICE.ip(),
        64,
        KINDS[0],
        &seen.ip_packet()[..28],
    );
    let e = IcmpError::parse(&mut f).unwrap();
    assert_eq!((e.kind(), e.mtu()), ((3, 4), Some(1280)));
    assert_eq!(e.frame_len(), 14 + 20 + 8 + 28);
    for kind in &KINDS[1..] {
        let mut f = error(
            ROUTER_MACS,
            FRONT_ROUTER,
            *SERVICE.ip(),
            64,
            *kind,
            &seen.ip_packet()[..28],
        );
        assert_eq!(IcmpError::parse(&mut f).unwrap().mtu(), None, "{kind:?}");
    }
}

#[test]
fn a_long_error_is_cut_to_a_valid_shorter_one() {
    let seen = segment(SERVICE, CLIENT, 63);
    let mut f = error(
        ROUTER_MACS,
        FRONT_ROUTER,
        *SERVICE.ip(),
        64,
        KINDS[0],
        seen.ip_packet(),
    );
    let max = 14 + MAX_ERROR_IP_LEN;
    assert!(f.len() > max);
    let mut e = IcmpError::parse(&mut f).unwrap();
    e.truncate(max);
    assert_eq!(e.frame_len(), max);
    let kept = e.as_bytes().to_vec();
    let want = error(
        ROUTER_MACS,
        FRONT_ROUTER,
        *SERVICE.ip(),
        64,
        KINDS[0],
        &seen.ip_packet()[..MAX_ERROR_IP_LEN - 28],
    );
    assert_eq!(kept, want);
    // What is cut still parses, and a cut below the quote keeps the quote.
    let mut again = kept.clone();
    let mut e = IcmpError::parse(&mut again).unwrap();
    e.truncate(0);
    assert_eq!(e.frame_len(), MIN_FRAME_LEN);
    let mut short = e.as_bytes().to_vec();
    assert!(IcmpError::parse(&mut short).is_ok());
    // A short one is left alone.
    let mut small = error(
        ROUTER_MACS,
        FRONT_ROUTER,
        *SERVICE.ip(),
        64,
        KINDS[0],
        &seen.ip_packet()[..28],
    );
    let copy = small.clone();
    IcmpError::parse(&mut small).unwrap().truncate(max);
    assert_eq!(small, copy);
}

#[test]
fn etherparse_agrees_the_rewritten_checksums_are_right() {
    let seen = segment(SERVICE, CLIENT, 63);
    let mut f = error(
        ROUTER_MACS,
        FRONT_ROUTER,
        *SERVICE.ip(),
        61,
        KINDS[0],
        &seen.ip_packet()[..200],
    );
    IcmpError::parse(&mut f)
        .unwrap()
        .rewrite_to_daemon(DAEMON, &MACS);
    let p = SlicedPacket::from_ethernet(&f).expect("decodes");
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        panic!("no IPv4")
    };
    let h = ip.header().to_header();
    assert_eq!(h.header_checksum, h.calc_header_checksum());
    let icmp = Icmpv4Slice::from_slice(ip.payload().payload).expect("ICMP decodes");
    assert_eq!(
        icmp.checksum(),
        icmp.header().icmp_type.calc_checksum(icmp.payload())
    );
}

/// Breaks a valid error in one way; the view must name that way.
#[test]
fn every_drop_reason() {
    let seen = segment(SERVICE, CLIENT, 63);
    let good = error(
        ROUTER_MACS,
        FRONT_ROUTER,
        *SERVICE.ip(),
        64,
        KINDS[0],
        &seen.ip_packet()[..28],
    );
    let reseal_ip = |f: &mut Vec<u8>| {
        f[24..26].copy_from_slice(&[0, 0]);
        let ck = checksum::checksum(&f[14..34]);
        f[24..26].copy_from_slice(&ck.to_be_bytes());
    };
    let reseal_icmp = |f: &mut Vec<u8>| {
        f[36..38].copy_from_slice(&[0, 0]);
        let end = 14 + usize::from(u16::from_be_bytes([f[16], f[17]]));
        let ck = checksum::checksum(&f[34..end]);
        f[36..38].copy_from_slice(&ck.to_be_bytes());
    };
    type Edit = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Edit, IcmpDrop)> = vec![
        (
            "runt",
            Box::new(|f: &mut Vec<u8>| f.truncate(33)),
            IcmpDrop::Truncated,
        ),
        (
            "ARP",
            Box::new(|f: &mut Vec<u8>| f[12..14].copy_from_slice(&[8, 6])),
            IcmpDrop::NotIcmp,
        ),
        (
            "version 6",
            Box::new(|f: &mut Vec<u8>| f[14] = 0x65),
            IcmpDrop::NotIcmp,
        ),
        (
            "TCP",
            Box::new(|f: &mut Vec<u8>| f[23] = 6),
            IcmpDrop::NotIcmp,
        ),
        (
            "IHL 4",
            Box::new(|f: &mut Vec<u8>| f[14] = 0x44),
            IcmpDrop::BadHeader,
        ),
        (
            "IHL 6",
            Box::new(|f: &mut Vec<u8>| f[14] = 0x46),
            IcmpDrop::IpOptions,
        ),
        (
            "MF",
            Box::new(|f: &mut Vec<u8>| f[20] = 0x20),
            IcmpDrop::Fragment,
        ),
        (
            "offset",
            Box::new(|f: &mut Vec<u8>| f[21] = 1),
            IcmpDrop::Fragment,
        ),
        (
            "cut quote",
            Box::new(|f: &mut Vec<u8>| f.truncate(MIN_FRAME_LEN - 1)),
            IcmpDrop::Truncated,
        ),
        (
            "total length short",
            Box::new(move |f: &mut Vec<u8>| {
                f[16..18].copy_from_slice(&((MIN_FRAME_LEN - 15) as u16).to_be_bytes());
                reseal_ip(f);
            }),
            IcmpDrop::Truncated,
        ),
        (
            "total length long",
            Box::new(move |f: &mut Vec<u8>| {
                let n = (f.len() - 13) as u16;
                f[16..18].copy_from_slice(&n.to_be_bytes());
                reseal_ip(f);
            }),
            IcmpDrop::Truncated,
        ),
        (
            "IP checksum",
            Box::new(|f: &mut Vec<u8>| f[25] ^= 1),
            IcmpDrop::BadIpChecksum,
        ),
        (
            "TTL 1",
            Box::new(move |f: &mut Vec<u8>| {
                f[22] = 1;
                reseal_ip(f);
            }),
            IcmpDrop::TtlExpired,
        ),
        (
            "ICMP checksum",
            Box::new(|f: &mut Vec<u8>| f[37] ^= 1),
            IcmpDrop::BadChecksum,
        ),
        (
            "a flipped quote byte",
            Box::new(|f: &mut Vec<u8>| f[60] ^= 0x10),
            IcmpDrop::BadChecksum,
        ),
        (
            "echo request",
            Box::new(move |f: &mut Vec<u8>| {
                f[34] = 8;
                f[35] = 0;
                reseal_icmp(f);
            }),
            IcmpDrop::NotAnError,
        ),
        (
            "source quench",
            Box::new(move |f: &mut Vec<u8>| {
                f[34] = TYPE_SOURCE_QUENCH;
                f[35] = 0;
                reseal_icmp(f);
            }),
            IcmpDrop::NotAnError,
        ),
        (
            "quoted version 6",
            Box::new(move |f: &mut Vec<u8>| {
                f[42] = 0x65;
                reseal_icmp(f);
            }),
            IcmpDrop::BadHeader,
        ),
        (
            "quoted IHL 3",
            Box::new(move |f: &mut Vec<u8>| {
                f[42] = 0x43;
                reseal_icmp(f);
            }),
            IcmpDrop::BadHeader,
        ),
        (
            "quoted options",
            Box::new(move |f: &mut Vec<u8>| {
                f[42] = 0x47;
                reseal_icmp(f);
            }),
            IcmpDrop::IpOptions,
        ),
        (
            "quoted SCTP",
            Box::new(move |f: &mut Vec<u8>| {
                f[42 + 9] = 132;
                reseal_icmp(f);
            }),
            IcmpDrop::NotTcp,
        ),
        (
            "quoted later fragment",
            Box::new(move |f: &mut Vec<u8>| {
                f[42 + 7] = 1;
                reseal_icmp(f);
            }),
            IcmpDrop::Fragment,
        ),
    ];
    for (what, edit, want) in &cases {
        let mut f = good.clone();
        edit(&mut f);
        assert_eq!(IcmpError::parse(&mut f).err(), Some(*want), "{what}");
    }
    let mut f = good.clone();
    assert!(IcmpError::parse(&mut f).is_ok());
    // Every reason is reached by some case.
    for r in IcmpDrop::ALL {
        assert!(cases.iter().any(|(_, _, w)| *w == r), "no case for {r}");
        assert_eq!(IcmpDrop::ALL[r.index()], r);
    }
}

#[test]
fn the_translated_types_are_the_errors_tcp_acts_on() {
    for t in [
        TYPE_DEST_UNREACH,
        TYPE_TIME_EXCEEDED,
        TYPE_PARAMETER_PROBLEM,
    ] {
        assert!(is_translated_error(t));
    }
    for t in [0, TYPE_SOURCE_QUENCH, 5, 8, 13] {
        assert!(!is_translated_error(t));
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut x = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let seen = segment(SERVICE, CLIENT, 63);
    let good = error(
        ROUTER_MACS,
        FRONT_ROUTER,
        *SERVICE.ip(),
        64,
        KINDS[0],
        &seen.ip_packet()[..60],
    );
    for _ in 0..20_000 {
        let mut f = good.clone();
        f.truncate((next() % (good.len() as u64 + 1)) as usize);
        for _ in 0..(next() % 4) {
            if !f.is_empty() {
                let i = (next() % f.len() as u64) as usize;
                f[i] = next() as u8;
            }
        }
        if let Ok(mut e) = IcmpError::parse(&mut f) {
            e.truncate((next() % 200) as usize);
            e.rewrite_to_daemon(DAEMON, &MACS);
            e.rewrite_to_client(SERVICE);
        }
    }
}

/// A datagram with an odd payload, TTL `ttl`; its checksum 0 (none) if not `summed`.
fn datagram(from: SocketAddrV4, to: SocketAddrV4, ttl: u8, summed: bool) -> Frame {
    let mut f = FrameSpec {
        ttl,
        ip_id: 0x4d2,
        payload: (0..301u32).map(|i| (i * 5) as u8).collect(),
        ..FrameSpec::udp(from, to)
    }
    .build();
    if !summed {
        f.set_l4_checksum(0);
    }
    f
}

#[test]
fn errors_about_udp_datagrams_are_translated_both_ways_and_a_zero_checksum_stays_zero() {
    for summed in [true, false] {
        for kind in KINDS {
            for n in [28, 36, 300] {
                // About a reply: as the router saw it (from the VIP), for the daemon.
                let sent = datagram(DAEMON, CLIENT, 63, summed);
                let seen = datagram(SERVICE, CLIENT, 63, summed);
                let mut f = error(
                    ROUTER_MACS,
                    FRONT_ROUTER,
                    *SERVICE.ip(),
                    61,
                    kind,
                    &seen.ip_packet()[..n],
                );
                let mut e =
                    IcmpError::parse(&mut f).unwrap_or_else(|r| panic!("{kind:?} {n}: {r}"));
                assert_eq!(e.quoted_protocol(), ipv4::PROTO_UDP);
                assert_eq!((e.quoted_src(), e.quoted_dst()), (SERVICE, CLIENT));
                e.rewrite_to_daemon(DAEMON, &MACS);
                let want = error(
                    (MACS.src, MACS.dst),
                    FRONT_ROUTER,
                    *DAEMON.ip(),
                    60,
                    kind,
                    &sent.ip_packet()[..n],
                );
                assert_eq!(
                    f, want,
                    "to the daemon: {kind:?}, {n} bytes, summed {summed}"
                );

                // About a client's datagram: as the back saw it (to the daemon), for the client.
                let sent = datagram(CLIENT, SERVICE, 63, summed);
                let seen = datagram(CLIENT, DAEMON, 63, summed);
                let mut f = error(
                    ROUTER_MACS,
                    BACK_ROUTER,
                    *CLIENT.ip(),
                    64,
                    kind,
                    &seen.ip_packet()[..n],
                );
                let mut e =
                    IcmpError::parse(&mut f).unwrap_or_else(|r| panic!("{kind:?} {n}: {r}"));
                e.rewrite_to_client(SERVICE);
                let want = error(
                    ROUTER_MACS,
                    *SERVICE.ip(),
                    *CLIENT.ip(),
                    63,
                    kind,
                    &sent.ip_packet()[..n],
                );
                assert_eq!(
                    f, want,
                    "to the client: {kind:?}, {n} bytes, summed {summed}"
                );
                let quoted_ck = 14 + 20 + 8 + 20 + 6;
                if !summed {
                    assert_eq!(
                        &f[quoted_ck..quoted_ck + 2],
                        [0, 0],
                        "no checksum stays none"
                    );
                }
            }
        }
    }
}
