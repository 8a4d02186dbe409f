//! Property tests of the packet core against an independent encoder/decoder
//! (etherparse): frames are built by the test kit's etherparse-based builder,
//! rewritten in place by `L4Frame`, and the result is checked against a full
//! checksum recomputation by etherparse and against the frame the builder makes
//! directly with the new field values.

use std::net::{Ipv4Addr, SocketAddrV4};

use dispatchd::packet::{peek_endpoints, DropReason, L4Frame, L4Proto, MacPair, TcpFlags};
use dispatchd_testkit::frame::{Frame, FrameSpec, Transport};
use etherparse::{Ipv4Header, LinkSlice, NetSlice, SlicedPacket, TransportSlice};
use proptest::prelude::*;

fn is_udp(s: &FrameSpec) -> bool {
    s.transport == Transport::Udp
}

/// Where the L4 checksum sits in a frame without IP options.
fn l4_ck_offset(udp: bool) -> usize {
    if udp {
        34 + 6
    } else {
        34 + 16
    }
}

// ---------------------------------------------------------------------------------
// Rewrites and the checks of their result

#[derive(Clone, Copy, Debug)]
enum Op {
    Forward,
    Reverse,
    Dst,
    Src,
}

/// Applies `op` and returns the spec the builder should encode as the result.
fn apply(frame: &mut [u8], s: &FrameSpec, op: Op, to: SocketAddrV4, macs: &MacPair) -> FrameSpec {
    let mut fr = L4Frame::parse(frame).expect("valid frame parses");
    let mut exp = s.clone();
    exp.ttl -= 1;
    match op {
        Op::Forward => {
            fr.rewrite_forward(to, macs);
            exp.dst = to;
            (exp.src_mac, exp.dst_mac) = (macs.src, macs.dst);
        }
        Op::Reverse => {
            fr.rewrite_reverse(to, macs);
            exp.src = to;
            (exp.src_mac, exp.dst_mac) = (macs.src, macs.dst);
        }
        Op::Dst => {
            fr.rewrite_dst(to);
            exp.dst = to;
        }
        Op::Src => {
            fr.rewrite_src(to);
            exp.src = to;
        }
    }
    exp
}

/// Decodes `frame` with etherparse and checks checksums (full recomputation), field
/// values, TTL, payload and that nothing else changed.
fn check_rewritten(frame: &Frame, orig: &Frame, before: &FrameSpec, exp: &FrameSpec) {
    let p = SlicedPacket::from_ethernet(frame.as_bytes()).expect("etherparse decodes the result");
    let Some(LinkSlice::Ethernet2(eth)) = &p.link else {
        panic!("no ethernet")
    };
    assert_eq!(eth.source(), exp.src_mac);
    assert_eq!(eth.destination(), exp.dst_mac);
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        panic!("no ipv4")
    };
    let iph: Ipv4Header = ip.header().to_header();
    assert_eq!(
        iph.header_checksum,
        iph.calc_header_checksum(),
        "ip checksum"
    );
    assert_eq!(iph.time_to_live, before.ttl - 1, "ttl decremented by one");
    assert_eq!(iph.source, exp.src.ip().octets());
    assert_eq!(iph.destination, exp.dst.ip().octets());
    match p.transport.as_ref().expect("transport") {
        TransportSlice::Tcp(t) => {
            assert!(!is_udp(exp));
            let calc = t.to_header().calc_checksum_ipv4(&iph, t.payload()).unwrap();
            assert_eq!(t.checksum(), calc, "tcp checksum");
            assert_eq!(t.source_port(), exp.src.port());
            assert_eq!(t.destination_port(), exp.dst.port());
            assert_eq!(t.payload(), &before.payload[..]);
            assert_eq!(t.sequence_number(), before.seq);
        }
        TransportSlice::Udp(u) => {
            assert!(is_udp(exp));
            if orig.l4_checksum() == 0 {
                assert_eq!(u.checksum(), 0, "udp no-checksum stays 0");
            } else {
                let calc = u.to_header().calc_checksum_ipv4(&iph, u.payload()).unwrap();
                assert_eq!(u.checksum(), calc, "udp checksum");
                assert_ne!(u.checksum(), 0);
            }
            assert_eq!(u.source_port(), exp.src.port());
            assert_eq!(u.destination_port(), exp.dst.port());
            assert_eq!(u.payload(), &before.payload[..]);
        }
        other => panic!("unexpected transport {other:?}"),
    }
    // Only MACs, TTL, IP checksum, addresses, ports and the L4 checksum may change.
    let ck = l4_ck_offset(is_udp(exp));
    let changeable = |i: usize| {
        i < 12
            || i == 22
            || (24..34).contains(&i)
            || (34..38).contains(&i)
            || (ck..ck + 2).contains(&i)
    };
    let (frame, orig_bytes) = (frame.as_bytes(), orig.as_bytes());
    assert_eq!(frame.len(), orig_bytes.len());
    for (i, (a, b)) in frame.iter().zip(orig_bytes).enumerate() {
        if !changeable(i) {
            assert_eq!(a, b, "byte {i} changed");
        }
    }
    // And the whole frame equals what the builder encodes from scratch (except for a
    // UDP datagram sent without checksum, which etherparse would not produce).
    if !(is_udp(exp) && orig.l4_checksum() == 0) {
        assert_eq!(
            frame,
            exp.build().as_bytes(),
            "byte-identical to a fresh encoding"
        );
    }
}

fn roundtrip(s: &FrameSpec, op: Op, to: SocketAddrV4, macs: &MacPair) {
    let orig = s.build();
    let mut f = orig.clone();
    let exp = apply(f.as_bytes_mut(), s, op, to, macs);
    check_rewritten(&f, &orig, s, &exp);
}

// ---------------------------------------------------------------------------------
// Strategies

fn sock() -> impl Strategy<Value = SocketAddrV4> {
    (any::<u32>(), any::<u16>()).prop_map(|(ip, port)| SocketAddrV4::new(Ipv4Addr::from(ip), port))
}

fn macs() -> impl Strategy<Value = MacPair> {
    (any::<[u8; 6]>(), any::<[u8; 6]>()).prop_map(|(src, dst)| MacPair { src, dst })
}

fn spec() -> impl Strategy<Value = FrameSpec> {
    (
        any::<bool>(),
        macs(),
        sock(),
        sock(),
        2u8..=255,
        any::<u8>(),
        any::<(u32, u32, u16)>(),
        prop::collection::vec(any::<u8>(), 0..1400),
        prop::collection::vec(any::<u8>(), 0..24),
    )
        .prop_map(
            |(udp, macs, src, dst, ttl, flags, (seq, ack, window), payload, padding)| FrameSpec {
                src_mac: macs.src,
                dst_mac: macs.dst,
                ttl,
                transport: if udp { Transport::Udp } else { Transport::Tcp },
                tcp_flags: flags,
                seq,
                ack,
                window,
                payload,
                padding,
                ..FrameSpec::tcp(src, dst)
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::Forward),
        Just(Op::Reverse),
        Just(Op::Dst),
        Just(Op::Src)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn l4_checksum_ok_agrees_with_etherparse(s in spec(), flip in any::<prop::sample::Index>()) {
        let mut frame = s.build().into_bytes();
        let end = {
            let pkt = L4Frame::parse(&mut frame).unwrap();
            prop_assert!(pkt.l4_checksum_ok());
            14 + usize::from(pkt.ip_total_len())
        };
        // Any changed bit of the segment (after the IP header, before any
        // Ethernet padding) breaks it, unless UDP without checksum.
        let at = 34 + flip.index(end - 34);
        frame[at] ^= 0x01;
        if let Ok(pkt) = L4Frame::parse(&mut frame) {
            if pkt.protocol() == dispatchd::packet::L4Proto::Tcp || pkt.l4_checksum() != 0 {
                prop_assert!(!pkt.l4_checksum_ok(), "flip at {} went unnoticed", at);
            }
        }
    }

    #[test]
    fn parse_reads_what_etherparse_wrote(s in spec()) {
        let mut f = s.build().into_bytes();
        let fr = L4Frame::parse(&mut f).unwrap();
        prop_assert_eq!(fr.protocol(), if is_udp(&s) { L4Proto::Udp } else { L4Proto::Tcp });
        prop_assert_eq!(fr.src(), s.src);
        prop_assert_eq!(fr.dst(), s.dst);
        prop_assert_eq!(fr.ttl(), s.ttl);
        prop_assert_eq!(fr.macs(), MacPair { src: s.src_mac, dst: s.dst_mac });
        prop_assert_eq!(fr.tcp_flags(), TcpFlags(if is_udp(&s) { 0 } else { s.tcp_flags }));
        prop_assert_eq!(fr.l4_payload(), &s.payload[..]);
        let proto = fr.protocol().number();
        prop_assert_eq!(peek_endpoints(&f), Some((s.src, s.dst, proto)));
    }

    #[test]
    fn rewrite_matches_full_recomputation(
        s in spec(), op in op(), to in sock(), new_macs in macs()
    ) {
        roundtrip(&s, op, to, &new_macs);
    }

    #[test]
    fn udp_without_checksum_stays_without(
        mut s in spec(), op in op(), to in sock(), new_macs in macs()
    ) {
        s.transport = Transport::Udp;
        let mut orig = s.build();
        orig.set_l4_checksum(0);
        let mut f = orig.clone();
        let exp = apply(f.as_bytes_mut(), &s, op, to, &new_macs);
        prop_assert_eq!(f.l4_checksum(), 0);
        check_rewritten(&f, &orig, &s, &exp);
    }

    #[test]
    fn parse_random_bytes_never_panics(mut bytes in prop::collection::vec(any::<u8>(), 0..200),
                                       to in sock(), m in macs(), op in op()) {
        exercise(&mut bytes, to, &m, op);
    }

    #[test]
    fn parse_random_ipv4_looking_bytes_never_panics(
        mut bytes in prop::collection::vec(any::<u8>(), 0..200),
        fix in any::<[bool; 5]>(),
        len_pick in any::<prop::sample::Index>(),
        to in sock(), m in macs(), op in op()
    ) {
        // Bias random bytes towards passing each IPv4 check, so that the L4 checks and
        // the rewrites also see random input.
        if bytes.len() >= 15 {
            bytes[12..15].copy_from_slice(&[0x08, 0x00, 0x45]);
        }
        if bytes.len() >= 34 {
            let (room, ttl) = (bytes.len() - 14, bytes[22]);
            let mut f = Frame::from_bytes(bytes);
            if fix[0] {
                f.set_fragment(false, 0);
            }
            if fix[1] {
                f.set_total_len((20 + len_pick.index(room - 19)) as u16);
            }
            if fix[2] {
                f.set_ttl(ttl.max(2));
            }
            if fix[3] {
                f.set_protocol(if fix[4] { 6 } else { 17 });
            }
            f.reseal_ip_checksum();
            bytes = f.into_bytes();
        }
        exercise(&mut bytes, to, &m, op);
    }

    #[test]
    fn parse_flipped_valid_frames_never_panics(
        s in spec(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..6),
        reseal in any::<bool>(),
        to in sock(), m in macs(), op in op()
    ) {
        let mut f = s.build();
        // Concentrate flips on the headers, where the decisions are.
        let hdr = f.as_bytes().len().min(64);
        for (i, x) in flips {
            let at = i.index(hdr);
            f.as_bytes_mut()[at] ^= x;
        }
        if reseal {
            f.reseal_ip_checksum();
        }
        exercise(f.as_bytes_mut(), to, &m, op);
    }

    #[test]
    fn truncations_of_random_frames(s in spec(), cut in any::<prop::sample::Index>()) {
        let mut s = s;
        s.padding.clear();
        let f = s.build().into_bytes();
        let n = cut.index(f.len());
        let mut t = f[..n].to_vec();
        let r = L4Frame::parse(&mut t).err();
        prop_assert_eq!(r, Some(truncation_reason(n)));
    }
}

/// After a successful parse, every accessor and rewrite must run without panicking,
/// and the IPv4 header checksum (verified by parse) must still be right.
/// The unvalidated peek used for prefetching must not panic on any bytes, and must
/// agree with parse on every frame parse accepts (its hash is reused for the lookup).
fn exercise(bytes: &mut [u8], to: SocketAddrV4, m: &MacPair, op: Op) {
    let peeked = peek_endpoints(bytes);
    let Ok(mut fr) = L4Frame::parse(bytes) else {
        return;
    };
    assert_eq!(
        peeked,
        Some((fr.src(), fr.dst(), fr.protocol().number())),
        "peek and parse disagree"
    );
    let _ = (
        fr.src(),
        fr.dst(),
        fr.tcp_flags(),
        fr.ttl(),
        fr.macs(),
        fr.protocol(),
    );
    let _ = (fr.l4_payload().len(), fr.ip_total_len(), fr.l4_checksum());
    match op {
        Op::Forward => fr.rewrite_forward(to, m),
        Op::Reverse => fr.rewrite_reverse(to, m),
        Op::Dst => fr.rewrite_dst(to),
        Op::Src => fr.rewrite_src(to),
    }
    // A second rewrite on the same frame must not panic either (TTL saturates).
    fr.rewrite_src(to);
    fr.rewrite_dst(to);
    let out = fr.as_bytes();
    assert!(dispatchd::packet::checksum::verify(&out[14..34]));
}

fn truncation_reason(n: usize) -> DropReason {
    if n < 14 {
        DropReason::TruncatedEthernet
    } else if n < 34 {
        DropReason::TruncatedIpv4
    } else {
        // The IPv4 total length still claims the full packet.
        DropReason::TotalLengthBeyondFrame
    }
}

// ---------------------------------------------------------------------------------
// Fixed cases

fn base_spec(udp: bool) -> FrameSpec {
    FrameSpec {
        transport: if udp { Transport::Udp } else { Transport::Tcp },
        tcp_flags: TcpFlags::SYN,
        seq: 1,
        payload: b"hello, odd!".to_vec(),
        ..FrameSpec::tcp(
            SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 7), 40000),
            SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 443),
        )
    }
}

const DAEMON: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 42), 8443);
const NEW_MACS: MacPair = MacPair {
    src: [0x02, 0, 0, 0, 0, 3],
    dst: [0x02, 0, 0, 0, 0, 4],
};

fn all_ops(s: &FrameSpec, orig: &Frame, to: SocketAddrV4) {
    for op in [Op::Forward, Op::Reverse, Op::Dst, Op::Src] {
        let mut f = orig.clone();
        let exp = apply(f.as_bytes_mut(), s, op, to, &NEW_MACS);
        check_rewritten(&f, orig, s, &exp);
    }
}

/// First source port for which `pred` holds on the built frame.
fn search_src_port(s: &FrameSpec, pred: impl Fn(&Frame) -> bool) -> FrameSpec {
    (0..=u16::MAX)
        .map(|p| {
            let mut t = s.clone();
            t.src.set_port(p);
            t
        })
        .find(|t| pred(&t.build()))
        .expect("a port hitting the edge value exists")
}

#[test]
fn tcp_original_checksum_zero_and_ffff() {
    let s = search_src_port(&base_spec(false), |f| f.l4_checksum() == 0x0000);
    let orig = s.build();
    all_ops(&s, &orig, DAEMON);
    // 0xFFFF: the other representation of zero, which a full computation never yields
    // but a sender may put on the wire; receivers accept it.
    let mut alt = orig.clone();
    alt.set_l4_checksum(0xFFFF);
    all_ops(&s, &alt, DAEMON);
}

#[test]
fn tcp_degenerate_incremental_case_is_canonical() {
    // Stored checksum 0xFFFF (-0) and every replaced word 0xFFFF -> 0x0000: RFC 1624
    // eqn. 3 alone yields 0xFFFF; a full recomputation yields 0x0000.
    let mut s = base_spec(false);
    s.dst = SocketAddrV4::new(Ipv4Addr::BROADCAST, 0xFFFF);
    let s = search_src_port(&s, |f| f.l4_checksum() == 0x0000);
    let mut orig = s.build();
    orig.set_l4_checksum(0xFFFF);
    let mut f = orig.clone();
    let to = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
    let exp = apply(f.as_bytes_mut(), &s, Op::Dst, to, &NEW_MACS);
    assert_eq!(f.l4_checksum(), 0x0000);
    check_rewritten(&f, &orig, &s, &exp);
}

#[test]
fn udp_original_checksum_ffff() {
    // etherparse (RFC 768) writes a computed 0 as 0xFFFF.
    let s = search_src_port(&base_spec(true), |f| f.l4_checksum() == 0xFFFF);
    all_ops(&s, &s.build(), DAEMON);
}

#[test]
fn ip_original_checksum_zero_and_ffff() {
    let base = base_spec(false);
    let s = (0..=u16::MAX)
        .map(|v| {
            let mut t = base.clone();
            let o = t.src.ip().octets();
            let [a, b] = v.to_be_bytes();
            t.src.set_ip(Ipv4Addr::new(o[0], o[1], a, b));
            t
        })
        .find(|t| t.build().ip_checksum() == 0)
        .unwrap();
    let orig = s.build();
    all_ops(&s, &orig, DAEMON);
    let mut alt = orig.clone();
    alt.set_ip_checksum(0xFFFF);
    all_ops(&s, &alt, DAEMON);
}

/// Finds a new destination (port, or low half of the address) such that the rewritten
/// frame's `checksum` is `value`, rewrites to it and checks.
fn rewrite_to_edge(udp: bool, checksum: fn(&Frame) -> u16, value: u16, vary_ip: bool) {
    let s = base_spec(udp);
    let orig = s.build();
    let to = (0..=u16::MAX)
        .map(|v| {
            if vary_ip {
                let [a, b] = v.to_be_bytes();
                SocketAddrV4::new(Ipv4Addr::new(10, 0, a, b), DAEMON.port())
            } else {
                SocketAddrV4::new(*DAEMON.ip(), v)
            }
        })
        .find(|&to| {
            let mut e = s.clone();
            e.dst = to;
            e.ttl -= 1;
            checksum(&e.build()) == value
        })
        .expect("edge value reachable");
    let mut f = orig.clone();
    let exp = apply(f.as_bytes_mut(), &s, Op::Dst, to, &NEW_MACS);
    assert_eq!(checksum(&f), value);
    check_rewritten(&f, &orig, &s, &exp);
}

#[test]
fn tcp_rewrite_result_zero() {
    rewrite_to_edge(false, Frame::l4_checksum, 0x0000, false);
}

#[test]
fn udp_rewrite_result_computed_zero_is_ffff() {
    rewrite_to_edge(true, Frame::l4_checksum, 0xFFFF, false);
}

#[test]
fn ip_rewrite_result_zero() {
    rewrite_to_edge(false, Frame::ip_checksum, 0x0000, true);
}

#[test]
fn every_truncation_of_a_tcp_frame() {
    let f = base_spec(false).build().into_bytes();
    for n in 0..f.len() {
        let mut t = f[..n].to_vec();
        assert_eq!(
            L4Frame::parse(&mut t).err(),
            Some(truncation_reason(n)),
            "len {n}"
        );
    }
    // Truncations made consistent (total length fixed up): the L4 check fires.
    let mut s = base_spec(false);
    s.payload.clear();
    let f = s.build();
    for n in 34..f.as_bytes().len() {
        let mut t = f.clone();
        t.truncate(n)
            .set_total_len((n - 14) as u16)
            .reseal_ip_checksum();
        assert_eq!(
            L4Frame::parse(t.as_bytes_mut()).err(),
            Some(DropReason::TruncatedTcp),
            "len {n}"
        );
    }
}

// One test per DropReason: a valid frame mutated to trip exactly that rule.

fn mutated(udp: bool, reseal: bool, m: impl FnOnce(&mut Frame)) -> Result<(), DropReason> {
    let mut f = base_spec(udp).build();
    assert!(L4Frame::parse(f.clone().as_bytes_mut()).is_ok());
    m(&mut f);
    if reseal && f.as_bytes().len() >= 34 {
        f.reseal_ip_checksum();
    }
    L4Frame::parse(f.as_bytes_mut()).map(|_| ())
}

macro_rules! drop_case {
    ($name:ident, $reason:ident, $udp:expr, $reseal:expr, $m:expr) => {
        #[test]
        fn $name() {
            assert_eq!(mutated($udp, $reseal, $m), Err(DropReason::$reason));
        }
    };
}

drop_case!(
    drop_truncated_ethernet,
    TruncatedEthernet,
    false,
    false,
    |f| {
        f.truncate(13);
    }
);
drop_case!(drop_vlan_8100, VlanTagged, false, false, |f| {
    f.set_ether_type(0x8100);
});
drop_case!(drop_vlan_88a8, VlanTagged, false, false, |f| {
    f.set_ether_type(0x88a8);
});
drop_case!(drop_ipv6, Ipv6, false, false, |f| {
    f.set_ether_type(0x86dd);
});
drop_case!(drop_not_ipv4, NotIpv4, false, false, |f| {
    f.set_ether_type(0x0806);
});
drop_case!(drop_truncated_ipv4, TruncatedIpv4, false, false, |f| {
    f.truncate(33);
});
drop_case!(drop_bad_ip_version, BadIpVersion, false, true, |f| {
    f.set_ip_version(6);
});
drop_case!(drop_ihl_too_small, IhlTooSmall, false, true, |f| {
    f.set_ihl(4);
});
drop_case!(drop_ip_options, IpOptions, false, true, |f| {
    f.set_ihl(6);
});
drop_case!(drop_fragment_mf, Fragment, false, true, |f| {
    f.set_fragment(true, 0);
});
drop_case!(drop_fragment_offset, Fragment, false, true, |f| {
    f.set_fragment(false, 1);
});
drop_case!(
    drop_total_length_too_small,
    TotalLengthTooSmall,
    false,
    true,
    |f| {
        f.set_total_len(19);
    }
);
drop_case!(
    drop_total_length_beyond_frame,
    TotalLengthBeyondFrame,
    false,
    true,
    |f| {
        let n = f.as_bytes().len() as u16 - 14 + 1;
        f.set_total_len(n);
    }
);
drop_case!(drop_bad_ip_checksum, BadIpChecksum, false, false, |f| {
    f.set_ip_checksum(f.ip_checksum() ^ 0x0040);
});
drop_case!(drop_ttl_expired, TtlExpired, false, true, |f| {
    f.set_ttl(1);
});
drop_case!(
    drop_unsupported_protocol,
    UnsupportedProtocol,
    false,
    true,
    |f| {
        f.set_protocol(1);
    }
);
drop_case!(drop_truncated_tcp, TruncatedTcp, false, true, |f| {
    f.set_total_len(20 + 19);
});
drop_case!(
    drop_tcp_offset_too_small,
    TcpOffsetTooSmall,
    false,
    true,
    |f| {
        f.set_tcp_data_offset(4);
    }
);
drop_case!(
    drop_tcp_offset_past_end,
    TcpOffsetPastEnd,
    false,
    true,
    |f| {
        f.set_tcp_data_offset(15);
    }
);
drop_case!(drop_truncated_udp, TruncatedUdp, true, true, |f| {
    f.set_total_len(20 + 7);
});
drop_case!(drop_bad_udp_length_small, BadUdpLength, true, true, |f| {
    f.set_udp_len(7);
});
drop_case!(drop_bad_udp_length_large, BadUdpLength, true, true, |f| {
    let n = f.as_bytes().len() as u16 - 34 + 1;
    f.set_udp_len(n);
});

#[test]
fn drop_cases_cover_every_reason() {
    // Keep the list above in step with the enum (the 5 IPv6-only reasons have
    // their cases in src/packet/ipv6/tests.rs).
    assert_eq!(DropReason::COUNT, 19 + 5);
    assert_eq!(DropReason::ALL.len(), DropReason::COUNT);
}

// ---------------------------------------------------------------------------------
// ICMP errors: a quote of the segment as one side saw it, translated, equals the
// error built around the segment as the other side sent it.

use dispatchd::packet::icmp::IcmpError;
use dispatchd_testkit::frame::{IcmpKind, IcmpSpec};

fn icmp_kind() -> impl Strategy<Value = IcmpKind> {
    prop_oneof![
        any::<u16>().prop_map(|mtu| IcmpKind::FragNeeded { mtu }),
        Just(IcmpKind::PortUnreachable),
        Just(IcmpKind::TimeExceeded),
        any::<u8>().prop_map(|pointer| IcmpKind::ParameterProblem { pointer }),
    ]
}

/// A TCP segment (TTL `ttl`) from `src` to `dst`, and its IPv4 packet.
fn tcp_segment(s: &FrameSpec, src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
    FrameSpec {
        transport: Transport::Tcp,
        padding: Vec::new(),
        src,
        dst,
        ..s.clone()
    }
    .build()
    .ip_packet()
    .to_vec()
}

fn icmp_frame(
    macs: &MacPair,
    (from, to): (Ipv4Addr, Ipv4Addr),
    ttl: u8,
    kind: IcmpKind,
    quote: &[u8],
) -> Vec<u8> {
    IcmpSpec {
        src_mac: macs.src,
        dst_mac: macs.dst,
        src: from,
        dst: to,
        ttl,
        tos: 0,
        kind,
        quote: quote.to_vec(),
    }
    .build()
    .into_bytes()
}

/// The quote's length, from RFC 792's 28 bytes to the whole packet, but never
/// ending inside the quoted TCP checksum (bytes 36-37), whose first byte cannot
/// be translated alone (see the unit tests).
fn quote_len(packet: &[u8], pick: prop::sample::Index) -> usize {
    match 28 + pick.index(packet.len() - 27) {
        37 => 38,
        n => n,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn an_error_about_a_reply_translates_to_the_error_about_what_the_daemon_sent(
        s in spec(), (client, service, daemon) in (sock(), sock(), sock()),
        router in any::<u32>(), ttl in 2u8..=255, kind in icmp_kind(),
        pick in any::<prop::sample::Index>(), (seen_macs, new_macs) in (macs(), macs()),
    ) {
        let sent = tcp_segment(&s, daemon, client);
        let seen = tcp_segment(&s, service, client);
        let n = quote_len(&seen, pick);
        let router = Ipv4Addr::from(router);
        let mut f = icmp_frame(&seen_macs, (router, *service.ip()), ttl, kind, &seen[..n]);
        let mut e = IcmpError::parse(&mut f).expect("a valid error parses");
        prop_assert_eq!((e.quoted_src(), e.quoted_dst()), (service, client));
        e.rewrite_to_daemon(daemon, &new_macs);
        let want = icmp_frame(&new_macs, (router, *daemon.ip()), ttl - 1, kind, &sent[..n]);
        prop_assert_eq!(f, want);
    }

    #[test]
    fn an_error_about_a_clients_segment_translates_to_the_error_about_what_the_client_sent(
        s in spec(), (client, service, daemon) in (sock(), sock(), sock()),
        router in any::<u32>(), ttl in 2u8..=255, kind in icmp_kind(),
        pick in any::<prop::sample::Index>(), m in macs(),
    ) {
        let sent = tcp_segment(&s, client, service);
        let seen = tcp_segment(&s, client, daemon);
        let n = quote_len(&seen, pick);
        let mut f = icmp_frame(&m, (Ipv4Addr::from(router), *client.ip()), ttl, kind, &seen[..n]);
        IcmpError::parse(&mut f).expect("a valid error parses").rewrite_to_client(service);
        let want = icmp_frame(&m, (*service.ip(), *client.ip()), ttl - 1, kind, &sent[..n]);
        prop_assert_eq!(f, want);
    }

    #[test]
    fn icmp_parse_of_flipped_errors_never_panics(
        s in spec(), kind in icmp_kind(), m in macs(), to in sock(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let seen = tcp_segment(&s, s.src, s.dst);
        let mut f = icmp_frame(&m, (*s.src.ip(), *s.dst.ip()), s.ttl, kind, &seen[..seen.len().min(100)]);
        let hdr = f.len().min(80);
        for (i, x) in flips {
            let at = i.index(hdr);
            f[at] ^= x;
        }
        let n = cut.index(f.len() + 1);
        f.truncate(n);
        if let Ok(mut e) = IcmpError::parse(&mut f) {
            let _ = (e.kind(), e.mtu(), e.outer_src(), e.outer_dst(), e.quoted_src(), e.quoted_dst());
            e.truncate(100);
            e.rewrite_to_daemon(to, &m);
            e.rewrite_to_client(to);
            let len = e.frame_len();
            prop_assert!(IcmpError::parse(&mut f[..len].to_vec()).is_ok(), "a rewrite keeps it valid");
        }
    }
}

// ---------------------------------------------------------------------------------
// MSS clamp: a SYN whose MSS option is lowered equals the SYN built with the lower
// value, whatever the option's alignment and the options around it.

fn syn_with_options(s: &FrameSpec, mss: u16, nops_before: usize, window_scale: bool) -> Vec<u8> {
    use etherparse::{TcpHeader, TcpOptionElement};
    let mut tcp = TcpHeader::new(s.src.port(), s.dst.port(), s.seq, s.window);
    tcp.syn = true;
    let mut options: Vec<TcpOptionElement> = vec![TcpOptionElement::Noop; nops_before];
    options.push(TcpOptionElement::MaximumSegmentSize(mss));
    if window_scale {
        options.push(TcpOptionElement::WindowScale(7));
    }
    tcp.set_options(&options).expect("options fit");
    let b = etherparse::PacketBuilder::ethernet2(s.src_mac, s.dst_mac)
        .ipv4(s.src.ip().octets(), s.dst.ip().octets(), s.ttl)
        .tcp_header(tcp);
    let mut f = Vec::with_capacity(b.size(s.payload.len()));
    b.write(&mut f, &s.payload).expect("encodes");
    f
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn mss_clamp_matches_a_fresh_encoding(
        s in spec(), mss in any::<u16>(), max in any::<u16>(),
        nops in 0usize..4, window_scale in any::<bool>(),
    ) {
        let s = FrameSpec { payload: s.payload[..s.payload.len().min(64)].to_vec(), ..s };
        let mut f = syn_with_options(&s, mss, nops, window_scale);
        let clamped = L4Frame::parse(&mut f).expect("parses").clamp_mss(max);
        prop_assert_eq!(clamped, mss > max);
        prop_assert_eq!(f, syn_with_options(&s, mss.min(max), nops, window_scale));
    }
}
