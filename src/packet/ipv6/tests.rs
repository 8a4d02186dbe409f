//! The IPv6 views against etherparse's encoder: one case per drop reason of
//! `L4Frame6::parse`, accessors, and each rewrite against the frame etherparse
//! builds directly with the new values (checksums computed in full).
use std::net::{Ipv6Addr, SocketAddrV6};

use etherparse::{PacketBuilder, TcpOptionElement};

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
const MACS: MacPair = MacPair {
    src: [0x02, 0, 0, 0, 0xb0, 1],
    dst: [0x02, 0, 0, 0, 0x5e, 2],
};

fn tcp(from: SocketAddrV6, to: SocketAddrV6, hop_limit: u8, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv6(from.ip().octets(), to.ip().octets(), hop_limit)
        .tcp(from.port(), to.port(), 0x1234_5678, 501)
        .ack(0x9abc_def0)
        .psh();
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

fn udp(from: SocketAddrV6, to: SocketAddrV6, hop_limit: u8, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv6(from.ip().octets(), to.ip().octets(), hop_limit)
        .udp(from.port(), to.port());
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

fn syn_with_mss(from: SocketAddrV6, to: SocketAddrV6, mss: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv6(from.ip().octets(), to.ip().octets(), 64)
        .tcp(from.port(), to.port(), 7, 64240)
        .syn()
        .options(&[
            TcpOptionElement::Noop,
            TcpOptionElement::MaximumSegmentSize(mss),
            TcpOptionElement::WindowScale(7),
        ])
        .unwrap();
    let mut out = Vec::new();
    b.write(&mut out, &[]).unwrap();
    out
}

fn parse(mut frame: Vec<u8>) -> Result<(), DropReason> {
    L4Frame6::parse(&mut frame).map(|_| ())
}

/// As on the IPv4 path: a UDP length short of the IPv6 payload is what the
/// checksum covers.
#[test]
fn a_udp_checksum_covers_the_udp_length_not_the_ipv6_payload() {
    let mut f = udp(CLIENT, SERVICE, 64, b"ab");
    f.extend_from_slice(b"zz");
    let payload_len = u16::from_be_bytes([f[18], f[19]]) + 2;
    f[18..20].copy_from_slice(&payload_len.to_be_bytes());
    assert!(L4Frame6::parse(&mut f).unwrap().l4_checksum_ok());
    let last = f.len() - 3; // the datagram's last byte
    f[last] ^= 1;
    assert!(!L4Frame6::parse(&mut f).unwrap().l4_checksum_ok());
}

#[test]
fn header_accessors() {
    let mut f = tcp(CLIENT, SERVICE, 64, b"abc");
    f[15] = 0xab; // traffic class 0x0a, flow label 0xb....
    f[16] = 0xcd;
    f[17] = 0xef;
    let h = Header::new_checked(&f[14..]).unwrap();
    assert_eq!(h.version(), 6);
    assert_eq!(h.traffic_class(), 0x0a);
    assert_eq!(h.flow_label(), 0xb_cdef);
    assert_eq!(usize::from(h.payload_len()), 20 + 3);
    assert_eq!(h.next_header(), NEXT_TCP);
    assert_eq!(h.hop_limit(), 64);
    assert_eq!(h.src_addr(), *CLIENT.ip());
    assert_eq!(h.dst_addr(), *SERVICE.ip());
    for n in 0..HEADER_LEN {
        assert_eq!(
            Header::new_checked(&f[14..14 + n]).err(),
            Some(DropReason::TruncatedIpv6)
        );
    }
}

#[test]
fn frame_accessors() {
    let mut f = tcp(CLIENT, SERVICE, 64, b"hello");
    f.extend_from_slice(&[0; 6]); // Ethernet padding: not part of anything
    let fr = L4Frame6::parse(&mut f).unwrap();
    assert_eq!(fr.protocol(), L4Proto::Tcp);
    assert_eq!((fr.src(), fr.dst()), (CLIENT, SERVICE));
    assert_eq!(fr.hop_limit(), 64);
    assert_eq!(fr.payload_len(), 25);
    assert_eq!(fr.l4_payload(), b"hello");
    assert_eq!(fr.tcp_seq_next(), (0x1234_5678, 0x1234_5678 + 5));
    assert_eq!(fr.tcp_ack(), 0x9abc_def0);
    assert!(fr.tcp_flags().ack() && fr.tcp_flags().psh());
    assert!(fr.l4_checksum_ok());
    assert_eq!(
        peek_endpoints6(fr.as_bytes()),
        Some((CLIENT, SERVICE, NEXT_TCP))
    );
    let mut u = udp(CLIENT, SERVICE, 64, b"q");
    let fr = L4Frame6::parse(&mut u).unwrap();
    assert_eq!(fr.protocol(), L4Proto::Udp);
    assert_eq!(fr.l4_payload(), b"q");
    assert_eq!(fr.tcp_seq_next(), (0, 0));
    assert!(fr.l4_checksum_ok());
}

#[test]
fn a_flipped_checksum_is_seen() {
    let mut f = tcp(CLIENT, SERVICE, 64, b"hello");
    f[54 + 17] ^= 1;
    assert!(!L4Frame6::parse(&mut f).unwrap().l4_checksum_ok());
}

// One case per drop reason the IPv6 parser returns.

#[test]
fn drop_truncated_ethernet() {
    for n in 0..14 {
        assert_eq!(parse(vec![0; n]), Err(DropReason::TruncatedEthernet));
    }
}

#[test]
fn drop_vlan_tagged_and_not_ipv6() {
    let mut f = tcp(CLIENT, SERVICE, 64, b"");
    for (ethertype, reason) in [
        (0x8100u16, DropReason::VlanTagged),
        (0x88a8, DropReason::VlanTagged),
        (0x0800, DropReason::NotIpv6),
        (0x0806, DropReason::NotIpv6),
    ] {
        f[12..14].copy_from_slice(&ethertype.to_be_bytes());
        assert_eq!(parse(f.clone()), Err(reason), "{ethertype:#06x}");
    }
}

#[test]
fn drop_truncated_ipv6() {
    let f = tcp(CLIENT, SERVICE, 64, b"");
    for n in 14..54 {
        assert_eq!(parse(f[..n].to_vec()), Err(DropReason::TruncatedIpv6));
    }
}

#[test]
fn drop_bad_ip_version() {
    let mut f = tcp(CLIENT, SERVICE, 64, b"");
    f[14] = 0x40 | (f[14] & 0x0f);
    assert_eq!(parse(f), Err(DropReason::BadIpVersion));
}

#[test]
fn drop_payload_length_beyond_frame() {
    let f = tcp(CLIENT, SERVICE, 64, b"abcd");
    // Cutting the frame anywhere past the fixed header leaves the payload length
    // pointing past it.
    for n in 54..f.len() {
        assert_eq!(
            parse(f[..n].to_vec()),
            Err(DropReason::Ipv6PayloadLengthBeyondFrame)
        );
    }
    let mut g = f.clone();
    g[18..20].copy_from_slice(&(24u16 + 5).to_be_bytes());
    assert_eq!(parse(g), Err(DropReason::Ipv6PayloadLengthBeyondFrame));
}

#[test]
fn drop_hop_limit_expired() {
    for hop_limit in [0, 1] {
        assert_eq!(
            parse(tcp(CLIENT, SERVICE, hop_limit, b"")),
            Err(DropReason::TtlExpired)
        );
    }
    assert!(parse(tcp(CLIENT, SERVICE, 2, b"")).is_ok());
}

#[test]
fn drop_extension_header() {
    for next in [0u8, 43, 44, 50, 51, 60, 135, 139, 140, 253, 254] {
        let mut f = tcp(CLIENT, SERVICE, 64, b"");
        f[20] = next;
        assert_eq!(parse(f), Err(DropReason::Ipv6ExtensionHeader), "{next}");
    }
}

#[test]
fn drop_unsupported_protocol() {
    for next in [NEXT_ICMPV6, NEXT_NONE, 1, 132] {
        let mut f = tcp(CLIENT, SERVICE, 64, b"");
        f[20] = next;
        assert_eq!(parse(f), Err(DropReason::UnsupportedProtocol), "{next}");
    }
}

#[test]
fn drop_short_payload_length_is_the_l4_truncation() {
    let f = tcp(CLIENT, SERVICE, 64, b"");
    for len in 0..20u16 {
        let mut g = f.clone();
        g[18..20].copy_from_slice(&len.to_be_bytes());
        assert_eq!(parse(g), Err(DropReason::TruncatedTcp), "{len}");
    }
    let u = udp(CLIENT, SERVICE, 64, b"");
    for len in 0..8u16 {
        let mut g = u.clone();
        g[18..20].copy_from_slice(&len.to_be_bytes());
        assert_eq!(parse(g), Err(DropReason::TruncatedUdp), "{len}");
    }
}

#[test]
fn drop_tcp_offsets() {
    let mut f = tcp(CLIENT, SERVICE, 64, b"");
    f[54 + 12] = 0x40;
    assert_eq!(parse(f.clone()), Err(DropReason::TcpOffsetTooSmall));
    f[54 + 12] = 0x60;
    assert_eq!(parse(f), Err(DropReason::TcpOffsetPastEnd));
}

#[test]
fn drop_bad_udp_length() {
    let u = udp(CLIENT, SERVICE, 64, b"xy");
    for len in [0u16, 7, 11] {
        let mut g = u.clone();
        g[54 + 4..54 + 6].copy_from_slice(&len.to_be_bytes());
        assert_eq!(parse(g), Err(DropReason::BadUdpLength), "{len}");
    }
}

#[test]
fn drop_udp_zero_checksum() {
    let mut u = udp(CLIENT, SERVICE, 64, b"xy");
    u[54 + 6] = 0;
    u[54 + 7] = 0;
    assert_eq!(parse(u), Err(DropReason::Udp6ZeroChecksum));
}

#[test]
fn forward_and_reverse_equal_a_fresh_encoding() {
    for payload in [&b""[..], b"odd", b"even"] {
        let mut f = tcp(CLIENT, SERVICE, 64, payload);
        L4Frame6::parse(&mut f)
            .unwrap()
            .rewrite_forward(DAEMON, &MACS);
        let mut want = tcp(CLIENT, DAEMON, 63, payload);
        want[..6].copy_from_slice(&MACS.dst);
        want[6..12].copy_from_slice(&MACS.src);
        assert_eq!(f, want);

        let mut r = udp(DAEMON, CLIENT, 64, payload);
        L4Frame6::parse(&mut r)
            .unwrap()
            .rewrite_reverse(SERVICE, &MACS);
        let mut want = udp(SERVICE, CLIENT, 63, payload);
        want[..6].copy_from_slice(&MACS.dst);
        want[6..12].copy_from_slice(&MACS.src);
        assert_eq!(r, want);
    }
}

#[test]
fn mss_clamp_over_ipv6_equals_a_fresh_encoding() {
    let mut f = syn_with_mss(CLIENT, SERVICE, 1460);
    assert!(L4Frame6::parse(&mut f).unwrap().clamp_mss(1220));
    assert_eq!(f, syn_with_mss(CLIENT, SERVICE, 1220));
    assert!(!L4Frame6::parse(&mut f).unwrap().clamp_mss(1400));
    let mut u = udp(CLIENT, SERVICE, 64, b"abcd");
    assert!(!L4Frame6::parse(&mut u).unwrap().clamp_mss(1));
}
