//! Unit tests of `L4Frame` on hand-built byte fixtures. Expected checksums are computed
//! by a full RFC 1071 recomputation, independent of the incremental path.

use super::*;
use std::net::{Ipv4Addr, SocketAddrV4};

const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 7), 40000);
const SERVICE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 443);
const DAEMON: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 42), 8443);
const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

/// A literal TCP SYN frame: 02:00:00:00:00:0a -> 02:00:00:00:00:0b,
/// 198.51.100.7:40000 -> 203.0.113.10:443, TTL 64, payload "hi".
/// Checksums 0xc254 (IP) and 0x4335 (TCP) were cross-checked with an independent
/// Python RFC 1071 implementation.
fn tcp_fixture() -> Vec<u8> {
    build(ipv4::PROTO_TCP, CLIENT, SERVICE, 64, b"hi", TcpFlags::SYN)
}

fn udp_fixture(payload: &[u8]) -> Vec<u8> {
    build(ipv4::PROTO_UDP, CLIENT, SERVICE, 64, payload, 0)
}

/// Builds Ethernet + IPv4 (IHL 5) + TCP (offset 5) / UDP, with full checksums.
fn build(
    proto: u8,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    ttl: u8,
    payload: &[u8],
    flags: u8,
) -> Vec<u8> {
    let l4_hdr = if proto == ipv4::PROTO_TCP { 20 } else { 8 };
    let total = 20 + l4_hdr + payload.len();
    let mut f = Vec::new();
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&[0x45, 0x00]);
    f.extend_from_slice(&(total as u16).to_be_bytes());
    f.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, ttl, proto, 0, 0]);
    f.extend_from_slice(&src.ip().octets());
    f.extend_from_slice(&dst.ip().octets());
    f.extend_from_slice(&src.port().to_be_bytes());
    f.extend_from_slice(&dst.port().to_be_bytes());
    if proto == ipv4::PROTO_TCP {
        f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
    }
    f.extend_from_slice(payload);
    fill_checksums(&mut f);
    f
}

/// Recomputes the IPv4 header checksum (full).
fn fill_ip(f: &mut [u8]) {
    ipv4::Header::new_checked(&mut f[14..])
        .unwrap()
        .fill_checksum();
}

/// Recomputes IPv4 and L4 checksums (full), from scratch. UDP 0 -> 0xFFFF.
fn fill_checksums(f: &mut [u8]) {
    fill_ip(f);
    let (ck_at, proto) = if f[23] == ipv4::PROTO_TCP {
        (34 + 16, 6)
    } else {
        (34 + 6, 17)
    };
    f[ck_at] = 0;
    f[ck_at + 1] = 0;
    let ck = expected_l4(f, proto);
    f[ck_at..ck_at + 2].copy_from_slice(&ck.to_be_bytes());
}

fn expected_l4(f: &[u8], proto: u8) -> u16 {
    let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
    let src = Ipv4Addr::new(f[26], f[27], f[28], f[29]);
    let dst = Ipv4Addr::new(f[30], f[31], f[32], f[33]);
    // A UDP checksum covers the UDP length (RFC 768), which may fall short of
    // the IP payload.
    let end = if proto == 17 {
        34 + usize::from(u16::from_be_bytes([f[38], f[39]]))
    } else {
        14 + total
    };
    let mut seg = f[34..end].to_vec();
    let ck_at = if proto == 6 { 16 } else { 6 };
    seg[ck_at] = 0;
    seg[ck_at + 1] = 0;
    let c = checksum::l4_checksum_ipv4(src, dst, proto, &seg);
    if proto == 17 && c == 0 {
        0xFFFF
    } else {
        c
    }
}

fn expected_ip(f: &[u8]) -> u16 {
    let mut h = [0u8; 20];
    h.copy_from_slice(&f[14..34]);
    h[10] = 0;
    h[11] = 0;
    checksum::checksum(&h)
}

fn assert_checksums_full(f: &[u8]) {
    let fr_ip = u16::from_be_bytes([f[24], f[25]]);
    assert_eq!(fr_ip, expected_ip(f), "ip checksum");
    let proto = f[23];
    let ck_at = if proto == 6 { 34 + 16 } else { 34 + 6 };
    let l4 = u16::from_be_bytes([f[ck_at], f[ck_at + 1]]);
    assert_eq!(l4, expected_l4(f, proto), "l4 checksum");
}

#[test]
fn literal_fixture_checksums() {
    // The builder's output pinned as bytes, so the fixture cannot silently drift.
    let f = tcp_fixture();
    assert_eq!(
        &f[..],
        &[
            0x02, 0, 0, 0, 0, 0x0b, 0x02, 0, 0, 0, 0, 0x0a, 0x08, 0x00, // eth
            0x45, 0x00, 0x00, 0x2a, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0xc2, 0x54, // ip
            198, 51, 100, 7, 203, 0, 113, 10, // addrs
            0x9c, 0x40, 0x01, 0xbb, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0x43, 0x35, 0,
            0, // tcp
            b'h', b'i',
        ][..]
    );
}

#[test]
fn parse_tcp_accessors() {
    let mut f = tcp_fixture();
    let fr = L4Frame::parse(&mut f).unwrap();
    assert_eq!(fr.protocol(), L4Proto::Tcp);
    assert_eq!(fr.protocol().number(), 6);
    assert_eq!(fr.src(), CLIENT);
    assert_eq!(fr.dst(), SERVICE);
    assert_eq!(fr.ttl(), 64);
    assert!(fr.tcp_flags().syn());
    assert!(!fr.tcp_flags().ack() && !fr.tcp_flags().fin() && !fr.tcp_flags().rst());
    assert_eq!(
        fr.macs(),
        MacPair {
            src: MAC_A,
            dst: MAC_B
        }
    );
    assert_eq!(fr.l4_payload(), b"hi");
    assert_eq!(fr.ip_total_len(), 42);
    assert_eq!(fr.as_bytes().len(), 56);
}

#[test]
fn parse_udp_accessors() {
    let mut f = udp_fixture(b"hello");
    let fr = L4Frame::parse(&mut f).unwrap();
    assert_eq!(fr.protocol(), L4Proto::Udp);
    assert_eq!(fr.protocol().number(), 17);
    assert_eq!(fr.src(), CLIENT);
    assert_eq!(fr.dst(), SERVICE);
    assert_eq!(fr.tcp_flags(), TcpFlags::default());
    assert_eq!(fr.l4_payload(), b"hello");
}

#[test]
fn rewrite_forward_tcp() {
    let mut f = tcp_fixture();
    let orig = f.clone();
    let macs = MacPair {
        src: [1; 6],
        dst: [2; 6],
    };
    let mut fr = L4Frame::parse(&mut f).unwrap();
    fr.rewrite_forward(DAEMON, &macs);
    assert_eq!(fr.dst(), DAEMON);
    assert_eq!(fr.src(), CLIENT);
    assert_eq!(fr.ttl(), 63);
    assert_eq!(fr.macs(), macs);
    assert_checksums_full(&f);
    assert_eq!(&f[54..], &orig[54..]);
    // Re-parses (IP checksum valid).
    assert!(L4Frame::parse(&mut f).is_ok());
}

#[test]
fn rewrite_reverse_udp() {
    let mut f = build(ipv4::PROTO_UDP, DAEMON, CLIENT, 2, b"odd", 0);
    let macs = MacPair {
        src: [3; 6],
        dst: [4; 6],
    };
    let mut fr = L4Frame::parse(&mut f).unwrap();
    fr.rewrite_reverse(SERVICE, &macs);
    assert_eq!(fr.src(), SERVICE);
    assert_eq!(fr.dst(), CLIENT);
    assert_eq!(fr.ttl(), 1);
    assert_checksums_full(&f);
    assert_eq!(&f[42..], b"odd");
}

#[test]
fn rewrite_dst_and_src_all_protocols() {
    for proto in [ipv4::PROTO_TCP, ipv4::PROTO_UDP] {
        for len in 0..8 {
            let payload: Vec<u8> = (0..len).map(|i| 0xA0 ^ i as u8).collect();
            let mut f = build(proto, CLIENT, SERVICE, 255, &payload, 0x18);
            L4Frame::parse(&mut f).unwrap().rewrite_dst(DAEMON);
            assert_checksums_full(&f);
            let mut f = build(proto, DAEMON, CLIENT, 255, &payload, 0x18);
            L4Frame::parse(&mut f).unwrap().rewrite_src(SERVICE);
            assert_checksums_full(&f);
            assert_eq!(L4Frame::parse(&mut f).unwrap().src(), SERVICE);
        }
    }
}

#[test]
fn udp_zero_checksum_stays_zero() {
    let mut f = udp_fixture(b"x");
    f[40] = 0;
    f[41] = 0;
    let mut fr = L4Frame::parse(&mut f).unwrap();
    fr.rewrite_dst(DAEMON);
    assert_eq!(fr.l4_checksum(), 0);
    assert_eq!(fr.dst(), DAEMON);
    assert_eq!(expected_ip(&f), u16::from_be_bytes([f[24], f[25]]));
}

#[test]
fn udp_computed_zero_becomes_ffff() {
    // Search for a destination port making the full UDP checksum 0 (sent as 0xFFFF).
    let mut found = false;
    for port in 0..=u16::MAX {
        let target = SocketAddrV4::new(*DAEMON.ip(), port);
        let exp = build(ipv4::PROTO_UDP, CLIENT, target, 63, b"zz", 0);
        if u16::from_be_bytes([exp[40], exp[41]]) != 0xFFFF {
            continue;
        }
        let mut f = udp_fixture(b"zz");
        let mut fr = L4Frame::parse(&mut f).unwrap();
        fr.rewrite_dst(target);
        assert_eq!(fr.l4_checksum(), 0xFFFF);
        assert_checksums_full(&f);
        found = true;
        break;
    }
    assert!(found);
}

#[test]
fn tcp_edge_checksums() {
    // Original TCP checksum 0x0000 (and the same frame stored with 0xFFFF, the other
    // representation of zero), rewritten; and a rewrite whose result is 0x0000.
    let base = |p: u16| {
        build(
            ipv4::PROTO_TCP,
            SocketAddrV4::new(*CLIENT.ip(), p),
            SERVICE,
            64,
            b"abc",
            0x10,
        )
    };
    let p0 = (0..=u16::MAX).find(|&p| {
        let f = base(p);
        f[50] == 0 && f[51] == 0
    });
    let p0 = p0.expect("some source port gives checksum 0");
    for stored in [0x0000u16, 0xFFFF] {
        let mut f = base(p0);
        f[50..52].copy_from_slice(&stored.to_be_bytes());
        L4Frame::parse(&mut f).unwrap().rewrite_dst(DAEMON);
        assert_checksums_full(&f);
    }
    // Result 0x0000.
    let target = (0..=u16::MAX)
        .map(|p| SocketAddrV4::new(*DAEMON.ip(), p))
        .find(|&t| {
            let f = build(ipv4::PROTO_TCP, CLIENT, t, 63, b"abc", 0x10);
            f[50] == 0 && f[51] == 0
        })
        .unwrap();
    let mut f = build(ipv4::PROTO_TCP, CLIENT, SERVICE, 64, b"abc", 0x10);
    L4Frame::parse(&mut f).unwrap().rewrite_dst(target);
    assert_eq!(&f[50..52], &[0, 0]);
    assert_checksums_full(&f);
}

#[test]
fn ip_checksum_stored_as_ffff_is_accepted_and_rewritten_canonically() {
    // Find an ident making the IP checksum 0, then store it as 0xFFFF.
    let mut f = tcp_fixture();
    let ident = (0..=u16::MAX)
        .find(|&id| {
            f[18..20].copy_from_slice(&id.to_be_bytes());
            expected_ip(&f) == 0
        })
        .unwrap();
    f[18..20].copy_from_slice(&ident.to_be_bytes());
    for stored in [0x0000u16, 0xFFFF] {
        let mut g = f.clone();
        g[24..26].copy_from_slice(&stored.to_be_bytes());
        let mut fr = L4Frame::parse(&mut g).unwrap();
        fr.rewrite_dst(DAEMON);
        assert_checksums_full(&g);
    }
}

#[test]
fn padding_is_ignored_and_untouched() {
    let mut f = udp_fixture(b"");
    f.extend_from_slice(&[0xEE; 18]); // pad to 60 bytes
    let mut fr = L4Frame::parse(&mut f).unwrap();
    assert_eq!(fr.l4_payload(), b"");
    fr.rewrite_dst(DAEMON);
    assert_eq!(fr.as_bytes().len(), 60);
    assert_checksums_full(&f);
    assert_eq!(&f[42..], &[0xEE; 18]);
}

#[test]
fn udp_length_shorter_than_ip_payload() {
    let mut f = udp_fixture(b"abcd");
    f[38..40].copy_from_slice(&10u16.to_be_bytes()); // UDP says 2 bytes of payload
    fill_checksums(&mut f);
    let fr = L4Frame::parse(&mut f).unwrap();
    assert_eq!(fr.l4_payload(), b"ab");
}

/// A UDP length short of the IP payload: the checksum covers the datagram
/// alone, pseudo-header length included, whatever follows it. Before, the
/// whole IP payload was summed, so such a datagram (with RFC 9868's options
/// after it, say) failed the check and its flow was never recorded.
#[test]
fn a_udp_checksum_covers_the_udp_length_not_the_ip_payload() {
    let mut f = udp_fixture(b"abcd");
    f[38..40].copy_from_slice(&10u16.to_be_bytes()); // the datagram is "ab"
    fill_checksums(&mut f);
    f[44..46].copy_from_slice(b"zz"); // after the datagram: not covered
    assert!(L4Frame::parse(&mut f).unwrap().l4_checksum_ok());
    f[42] ^= 1; // inside it
    assert!(!L4Frame::parse(&mut f).unwrap().l4_checksum_ok());
}

#[test]
fn tcp_with_options() {
    // Data offset 6 (4 option bytes, here NOP x4), payload after the options.
    let mut f = build(
        ipv4::PROTO_TCP,
        CLIENT,
        SERVICE,
        64,
        &[1, 1, 1, 1, b'p'],
        0x02,
    );
    f[46] = 0x60;
    fill_checksums(&mut f);
    let mut fr = L4Frame::parse(&mut f).unwrap();
    assert_eq!(fr.l4_payload(), b"p");
    fr.rewrite_dst(DAEMON);
    assert_checksums_full(&f);
}

#[test]
fn repeated_rewrites_saturate_ttl() {
    let mut f = build(ipv4::PROTO_TCP, CLIENT, SERVICE, 2, b"", 0x02);
    let mut fr = L4Frame::parse(&mut f).unwrap();
    fr.rewrite_dst(DAEMON);
    fr.rewrite_src(SERVICE);
    fr.rewrite_src(CLIENT);
    assert_eq!(fr.ttl(), 0);
    assert_checksums_full(&f);
}

#[test]
fn drop_reason_table() {
    assert_eq!(DropReason::COUNT, 24);
    let mut labels = std::collections::HashSet::new();
    for (i, r) in DropReason::ALL.iter().enumerate() {
        assert_eq!(r.index(), i);
        assert!(labels.insert(r.as_str()));
        assert!(r
            .as_str()
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
        assert_eq!(r.to_string(), r.as_str());
    }
    assert_eq!(DropReason::IpOptions.as_str(), "ip_options");
}

#[test]
fn l4proto_numbers() {
    assert_eq!(L4Proto::from_number(6), Some(L4Proto::Tcp));
    assert_eq!(L4Proto::from_number(17), Some(L4Proto::Udp));
    assert_eq!(L4Proto::from_number(1), None);
}

fn expect(mut f: Vec<u8>, r: DropReason) {
    assert_eq!(L4Frame::parse(&mut f).err(), Some(r), "expected {r:?}");
}

/// Mutates a valid TCP fixture, refreshing the IP checksum (so only the target rule
/// fires).
fn tcp_with(m: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut f = tcp_fixture();
    m(&mut f);
    fill_ip(&mut f);
    f
}

fn udp_with(m: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut f = udp_fixture(b"hello");
    m(&mut f);
    fill_ip(&mut f);
    f
}

fn set16(f: &mut [u8], at: usize, v: u16) {
    f[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[test]
fn every_drop_reason() {
    use DropReason::*;
    let mut seen = std::collections::HashSet::new();
    let mut check = |f: Vec<u8>, r: DropReason| {
        expect(f, r);
        seen.insert(r);
    };
    check(tcp_fixture()[..13].to_vec(), TruncatedEthernet);
    check(tcp_with(|f| set16(f, 12, 0x8100)), VlanTagged);
    check(tcp_with(|f| set16(f, 12, 0x88a8)), VlanTagged);
    check(tcp_with(|f| set16(f, 12, 0x86dd)), Ipv6);
    check(tcp_with(|f| set16(f, 12, 0x0806)), NotIpv4);
    check(tcp_fixture()[..33].to_vec(), TruncatedIpv4);
    check(tcp_with(|f| f[14] = 0x65), BadIpVersion);
    check(tcp_with(|f| f[14] = 0x44), IhlTooSmall);
    check(tcp_with(|f| f[14] = 0x46), IpOptions);
    check(tcp_with(|f| set16(f, 20, 0x2000)), Fragment);
    check(tcp_with(|f| set16(f, 20, 0x0001)), Fragment);
    check(tcp_with(|f| set16(f, 20, 0x4000 | 0x0100)), Fragment);
    check(tcp_with(|f| set16(f, 16, 19)), TotalLengthTooSmall);
    check(tcp_with(|f| set16(f, 16, 0)), TotalLengthTooSmall);
    check(tcp_with(|f| set16(f, 16, 43)), TotalLengthBeyondFrame);
    check(
        {
            let mut f = tcp_fixture();
            f[25] ^= 1;
            f
        },
        BadIpChecksum,
    );
    check(tcp_with(|f| f[22] = 1), TtlExpired);
    check(tcp_with(|f| f[22] = 0), TtlExpired);
    check(tcp_with(|f| f[23] = 1), UnsupportedProtocol);
    check(tcp_with(|f| f[23] = 41), UnsupportedProtocol);
    check(tcp_with(|f| set16(f, 16, 20 + 19)), TruncatedTcp);
    check(tcp_with(|f| set16(f, 16, 20)), TruncatedTcp);
    check(tcp_with(|f| f[46] = 0x40), TcpOffsetTooSmall);
    check(tcp_with(|f| f[46] = 0x00), TcpOffsetTooSmall);
    check(tcp_with(|f| f[46] = 0x60), TcpOffsetPastEnd); // 24 > 22
    check(tcp_with(|f| f[46] = 0xF0), TcpOffsetPastEnd);
    check(udp_with(|f| set16(f, 16, 20 + 7)), TruncatedUdp);
    check(udp_with(|f| set16(f, 38, 7)), BadUdpLength);
    check(udp_with(|f| set16(f, 38, 14)), BadUdpLength);
    check(udp_with(|f| set16(f, 38, 0xFFFF)), BadUdpLength);
    // The IPv6 parser's own reasons have their cases in ipv6/tests.rs.
    let ipv6_only = [
        NotIpv6,
        TruncatedIpv6,
        Ipv6PayloadLengthBeyondFrame,
        Ipv6ExtensionHeader,
        Udp6ZeroChecksum,
    ];
    assert!(ipv6_only.iter().all(|r| !seen.contains(r)));
    assert_eq!(
        seen.len() + ipv6_only.len(),
        DropReason::COUNT,
        "every reason covered"
    );
}

#[test]
fn every_truncation_of_tcp_frame() {
    let f = build(ipv4::PROTO_TCP, CLIENT, SERVICE, 64, b"payload!", 0x18);
    for n in 0..f.len() {
        let mut t = f[..n].to_vec();
        let r = L4Frame::parse(&mut t).err();
        let want = if n < 14 {
            DropReason::TruncatedEthernet
        } else if n < 34 {
            DropReason::TruncatedIpv4
        } else {
            // total length still claims the full packet
            DropReason::TotalLengthBeyondFrame
        };
        assert_eq!(r, Some(want), "len {n}");
    }
}

#[test]
fn every_consistent_truncation_of_tcp_frame() {
    // Truncate and fix up total length: the L4 checks fire.
    let f = build(ipv4::PROTO_TCP, CLIENT, SERVICE, 64, b"", 0x18);
    for n in 34..54 {
        let mut t = f[..n].to_vec();
        set16(&mut t, 16, (n - 14) as u16);
        fill_ip(&mut t);
        expect(t, DropReason::TruncatedTcp);
    }
}
