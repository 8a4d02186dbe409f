//! The ICMPv6 view and its translations against etherparse's encoder: an error is
//! built around a quote of the packet as one side saw it, translated, and compared
//! byte for byte with the error built around the packet as the other side sent it
//! (so every checksum is checked against a full computation). One case per drop.
use std::net::{Ipv6Addr, SocketAddrV6};

use etherparse::{
    icmpv6::{DestUnreachableCode, ParameterProblemCode, ParameterProblemHeader, TimeExceededCode},
    Icmpv6Type, PacketBuilder,
};

use super::*;

const CLIENT: SocketAddrV6 =
    SocketAddrV6::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2), 40123, 0, 0);
const SERVICE: SocketAddrV6 =
    SocketAddrV6::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100), 80, 0, 0);
const DAEMON: SocketAddrV6 = SocketAddrV6::new(
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0xffff, 0x12),
    8080,
    0,
    0,
);
const ROUTER: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 1);
const ETH: ([u8; 6], [u8; 6]) = ([2, 0, 0, 0, 0x7e, 1], [2, 0, 0, 0, 0xf0, 1]);
const MACS: MacPair = MacPair {
    src: [0x02, 0, 0, 0, 0xb0, 1],
    dst: [0x02, 0, 0, 0, 0x5e, 2],
};

fn kinds() -> [Icmpv6Type; 4] {
    [
        Icmpv6Type::PacketTooBig { mtu: 1280 },
        Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port),
        Icmpv6Type::TimeExceeded(TimeExceededCode::HopLimitExceeded),
        Icmpv6Type::ParameterProblem(ParameterProblemHeader {
            code: ParameterProblemCode::ErroneousHeaderField,
            pointer: 7,
        }),
    ]
}

/// The IPv6 packet (no Ethernet header) of a TCP segment or UDP datagram.
fn packet(udp: bool, from: SocketAddrV6, to: SocketAddrV6, payload_len: usize) -> Vec<u8> {
    let b = PacketBuilder::ipv6(from.ip().octets(), to.ip().octets(), 63);
    let payload: Vec<u8> = (0..payload_len).map(|i| (i * 7) as u8).collect();
    let mut out = Vec::new();
    if udp {
        b.udp(from.port(), to.port())
            .write(&mut out, &payload)
            .unwrap();
    } else {
        b.tcp(from.port(), to.port(), 0x1234_5678, 501)
            .ack(1)
            .write(&mut out, &payload)
            .unwrap();
    }
    out
}

fn error(kind: Icmpv6Type, from: Ipv6Addr, to: Ipv6Addr, hop: u8, quote: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(ETH.0, ETH.1)
        .ipv6(from.octets(), to.octets(), hop)
        .icmpv6(kind)
        .write(&mut out, quote)
        .unwrap();
    out
}

#[test]
fn an_error_from_the_back_reaches_the_client_as_about_the_vip() {
    for kind in kinds() {
        for udp in [false, true] {
            // Whole quotes, and quotes cut at every length from the 8 bytes RFC
            // 4443 promises (no byte of the TCP checksum) to past it.
            for cut in [48, 56, 57, 58, 59, 70] {
                let sent = packet(udp, CLIENT, DAEMON, 30);
                let seen = packet(udp, CLIENT, SERVICE, 30);
                let cut = cut.min(sent.len());
                let mut f = error(kind, ROUTER, *CLIENT.ip(), 64, &sent[..cut]);
                let mut e = Icmpv6Error::parse(&mut f).unwrap();
                assert_eq!(e.quoted_dst(), DAEMON);
                assert_eq!(e.quoted_src(), CLIENT);
                e.rewrite_to_client(SERVICE);
                let mut want = error(kind, *SERVICE.ip(), *CLIENT.ip(), 63, &seen[..cut]);
                if !udp && cut == 57 {
                    // One byte of the quoted TCP checksum: left as it was; the
                    // ICMPv6 checksum covers it (parse verifies it in full).
                    assert!(Icmpv6Error::parse(&mut f.clone()).is_ok());
                    want[QUOTE_L4 + 16] = f[QUOTE_L4 + 16];
                    want[ICMP + 2..ICMP + 4].copy_from_slice(&f[ICMP + 2..ICMP + 4]);
                }
                assert_eq!(f, want, "{kind:?} udp {udp} cut {cut}");
            }
        }
    }
}

#[test]
fn an_error_from_the_front_reaches_the_daemon_as_about_its_reply() {
    for kind in kinds() {
        for udp in [false, true] {
            let seen = packet(udp, SERVICE, CLIENT, 100);
            let sent = packet(udp, DAEMON, CLIENT, 100);
            let mut f = error(kind, ROUTER, *SERVICE.ip(), 64, &seen);
            let len = f.len();
            let mut e = Icmpv6Error::parse(&mut f).unwrap();
            assert_eq!(e.outer_dst(), *SERVICE.ip());
            assert_eq!(e.outer_src(), ROUTER);
            assert_eq!(e.frame_len(), len);
            e.rewrite_to_daemon(DAEMON, &MACS);
            let mut want = error(kind, ROUTER, *DAEMON.ip(), 63, &sent);
            want[..6].copy_from_slice(&MACS.dst);
            want[6..12].copy_from_slice(&MACS.src);
            assert_eq!(f, want, "{kind:?} udp {udp}");
        }
    }
}

#[test]
fn kind_mtu_and_protocol() {
    let mut f = error(
        Icmpv6Type::PacketTooBig { mtu: 1400 },
        ROUTER,
        *CLIENT.ip(),
        64,
        &packet(false, CLIENT, DAEMON, 0),
    );
    let e = Icmpv6Error::parse(&mut f).unwrap();
    assert_eq!(e.kind(), (TYPE_PACKET_TOO_BIG, 0));
    assert_eq!(e.mtu(), Some(1400));
    assert_eq!(e.quoted_protocol(), 6);
    let mut g = error(
        kinds()[1],
        ROUTER,
        *CLIENT.ip(),
        64,
        &packet(true, CLIENT, DAEMON, 0),
    );
    let e = Icmpv6Error::parse(&mut g).unwrap();
    assert_eq!(e.kind(), (TYPE_DEST_UNREACH, CODE_PORT_UNREACH));
    assert_eq!(e.mtu(), None);
    assert_eq!(e.quoted_protocol(), 17);
}

#[test]
fn truncate_keeps_a_valid_error() {
    let big = packet(false, SERVICE, CLIENT, 1400);
    let mut f = error(kinds()[0], ROUTER, *SERVICE.ip(), 64, &big);
    let mut e = Icmpv6Error::parse(&mut f).unwrap();
    e.truncate(14 + MAX_ERROR_IP_LEN);
    assert_eq!(e.frame_len(), 14 + MAX_ERROR_IP_LEN);
    let kept = e.frame_len();
    let want = error(
        kinds()[0],
        ROUTER,
        *SERVICE.ip(),
        64,
        &big[..MAX_ERROR_IP_LEN - 48],
    );
    assert_eq!(&f[..kept], &want[..]);
    // A limit below the quoted headers keeps them.
    let mut e = Icmpv6Error::parse(&mut f[..kept]).unwrap();
    e.truncate(0);
    assert_eq!(e.frame_len(), MIN_FRAME_LEN);
    assert!(Icmpv6Error::parse(&mut f[..MIN_FRAME_LEN]).is_ok());
}

fn valid() -> Vec<u8> {
    error(
        kinds()[1],
        ROUTER,
        *CLIENT.ip(),
        64,
        &packet(false, CLIENT, DAEMON, 10),
    )
}

/// `f` with its ICMPv6 checksum recomputed (so that a change after it is seen by
/// the check it targets, not by the checksum).
fn resealed(mut f: Vec<u8>) -> Vec<u8> {
    let end = ICMP + usize::from(be16(&f, IP + 4));
    f[ICMP + 2] = 0;
    f[ICMP + 3] = 0;
    let src = Ipv6Addr::from(be128(&f, IP + 8));
    let dst = Ipv6Addr::from(be128(&f, IP + 24));
    let ck = checksum::l4_checksum_ipv6(src, dst, 58, &f[ICMP..end]);
    put16(&mut f, ICMP + 2, ck);
    f
}

fn parse(mut f: Vec<u8>) -> Result<(), Icmpv6Drop> {
    Icmpv6Error::parse(&mut f).map(|_| ())
}

#[test]
fn drop_truncated() {
    let f = valid();
    for n in 0..f.len() {
        assert_eq!(parse(f[..n].to_vec()), Err(Icmpv6Drop::Truncated), "{n}");
    }
    // A payload length shorter than the quoted headers.
    let mut g = f.clone();
    put16(&mut g, IP + 4, (MIN_FRAME_LEN - ICMP - 1) as u16);
    assert_eq!(parse(g), Err(Icmpv6Drop::Truncated));
}

#[test]
fn drop_not_icmpv6() {
    let mut f = valid();
    f[12] = 0x08;
    f[13] = 0x00;
    assert_eq!(parse(f), Err(Icmpv6Drop::NotIcmpv6));
    let mut f = valid();
    f[IP] = 0x45;
    assert_eq!(parse(f), Err(Icmpv6Drop::NotIcmpv6));
    let mut f = valid();
    f[IP + 6] = 6;
    assert_eq!(parse(f), Err(Icmpv6Drop::NotIcmpv6));
}

#[test]
fn drop_extension_header() {
    let mut f = valid();
    f[IP + 6] = ipv6::NEXT_FRAGMENT;
    assert_eq!(parse(f), Err(Icmpv6Drop::ExtensionHeader));
    let mut f = valid();
    f[QUOTE_IP + 6] = ipv6::NEXT_ROUTING;
    assert_eq!(parse(resealed(f)), Err(Icmpv6Drop::ExtensionHeader));
}

#[test]
fn drop_ttl_expired() {
    for hop in [0, 1] {
        let mut f = valid();
        f[IP + 7] = hop;
        assert_eq!(parse(f), Err(Icmpv6Drop::TtlExpired));
    }
}

#[test]
fn drop_bad_checksum() {
    let mut f = valid();
    let last = f.len() - 1;
    f[last] ^= 0x40;
    assert_eq!(parse(f), Err(Icmpv6Drop::BadChecksum));
    // The pseudo-header counts: the same message to another address fails.
    let mut f = valid();
    f[IP + 39] ^= 1;
    assert_eq!(parse(f), Err(Icmpv6Drop::BadChecksum));
}

#[test]
fn drop_not_an_error() {
    for t in [
        0u8,
        5,
        127,
        128,
        129,
        TYPE_ROUTER_SOLICIT,
        TYPE_ROUTER_ADVERT,
        TYPE_NEIGHBOR_SOLICIT,
        TYPE_NEIGHBOR_ADVERT,
    ] {
        let mut f = valid();
        f[ICMP] = t;
        assert_eq!(parse(resealed(f)), Err(Icmpv6Drop::NotAnError), "{t}");
    }
}

#[test]
fn drop_bad_header() {
    let mut f = valid();
    f[QUOTE_IP] = 0x45;
    assert_eq!(parse(resealed(f)), Err(Icmpv6Drop::BadHeader));
}

#[test]
fn drop_not_tcp_or_udp() {
    for next in [58u8, 59, 1, 132] {
        let mut f = valid();
        f[QUOTE_IP + 6] = next;
        assert_eq!(parse(resealed(f)), Err(Icmpv6Drop::NotTcpOrUdp), "{next}");
    }
}

#[test]
fn every_drop_has_a_label() {
    let labels: std::collections::HashSet<_> = Icmpv6Drop::ALL.iter().map(|d| d.as_str()).collect();
    assert_eq!(labels.len(), Icmpv6Drop::COUNT);
    for (i, d) in Icmpv6Drop::ALL.iter().enumerate() {
        assert_eq!(d.index(), i);
    }
}
