//! Property tests of the packet core against an independent encoder/decoder
//! (etherparse): frames are built by etherparse, rewritten in place by `L4Frame`, and
//! the result is checked against a full checksum recomputation by etherparse and
//! against the frame etherparse builds directly with the new field values.

use std::net::{Ipv4Addr, SocketAddrV4};

use dispatchd::packet::{peek_endpoints, DropReason, L4Frame, L4Proto, MacPair, TcpFlags};
use etherparse::{
    Ipv4Header, LinkSlice, NetSlice, PacketBuilder, SlicedPacket, TcpHeader, TransportSlice,
};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------
// Frame specs and the etherparse encoder

#[derive(Clone, Debug)]
struct Spec {
    udp: bool,
    macs: MacPair,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    ttl: u8,
    flags: u8,
    seq: u32,
    ack: u32,
    window: u16,
    payload: Vec<u8>,
    /// Ethernet padding appended after the IP packet.
    padding: Vec<u8>,
}

fn build(s: &Spec) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(s.macs.src, s.macs.dst).ipv4(
        s.src.ip().octets(),
        s.dst.ip().octets(),
        s.ttl,
    );
    let mut out = Vec::new();
    if s.udp {
        b.udp(s.src.port(), s.dst.port())
            .write(&mut out, &s.payload)
            .unwrap();
    } else {
        let mut h = TcpHeader::new(s.src.port(), s.dst.port(), s.seq, s.window);
        h.fin = s.flags & TcpFlags::FIN != 0;
        h.syn = s.flags & TcpFlags::SYN != 0;
        h.rst = s.flags & TcpFlags::RST != 0;
        h.psh = s.flags & TcpFlags::PSH != 0;
        h.ack = s.flags & TcpFlags::ACK != 0;
        h.urg = s.flags & TcpFlags::URG != 0;
        h.ece = s.flags & TcpFlags::ECE != 0;
        h.cwr = s.flags & TcpFlags::CWR != 0;
        h.acknowledgment_number = s.ack;
        b.tcp_header(h).write(&mut out, &s.payload).unwrap();
    }
    out.extend_from_slice(&s.padding);
    out
}

fn l4_ck_offset(udp: bool) -> usize {
    if udp {
        34 + 6
    } else {
        34 + 16
    }
}

fn read16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

fn write16(f: &mut [u8], at: usize, v: u16) {
    f[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Independent RFC 1071 checksum of the IPv4 header, to re-seal mutated headers.
fn reseal_ip(f: &mut [u8]) {
    write16(f, 24, 0);
    let mut s: u32 = f[14..34]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while s > 0xFFFF {
        s = (s & 0xFFFF) + (s >> 16);
    }
    write16(f, 24, !(s as u16));
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

/// Applies `op` and returns the spec etherparse should produce for the result.
fn apply(frame: &mut [u8], s: &Spec, op: Op, to: SocketAddrV4, macs: &MacPair) -> Spec {
    let mut fr = L4Frame::parse(frame).expect("valid frame parses");
    let mut exp = s.clone();
    exp.ttl -= 1;
    match op {
        Op::Forward => {
            fr.rewrite_forward(to, macs);
            exp.dst = to;
            exp.macs = *macs;
        }
        Op::Reverse => {
            fr.rewrite_reverse(to, macs);
            exp.src = to;
            exp.macs = *macs;
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
fn check_rewritten(frame: &[u8], orig: &[u8], before: &Spec, exp: &Spec) {
    let p = SlicedPacket::from_ethernet(frame).expect("etherparse decodes the result");
    let Some(LinkSlice::Ethernet2(eth)) = &p.link else {
        panic!("no ethernet")
    };
    assert_eq!(eth.source(), exp.macs.src);
    assert_eq!(eth.destination(), exp.macs.dst);
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
            assert!(!exp.udp);
            let calc = t.to_header().calc_checksum_ipv4(&iph, t.payload()).unwrap();
            assert_eq!(t.checksum(), calc, "tcp checksum");
            assert_eq!(t.source_port(), exp.src.port());
            assert_eq!(t.destination_port(), exp.dst.port());
            assert_eq!(t.payload(), &before.payload[..]);
            assert_eq!(t.sequence_number(), before.seq);
        }
        TransportSlice::Udp(u) => {
            assert!(exp.udp);
            if read16(orig, l4_ck_offset(true)) == 0 {
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
    let ck = l4_ck_offset(exp.udp);
    let changeable = |i: usize| {
        i < 12
            || i == 22
            || (24..34).contains(&i)
            || (34..38).contains(&i)
            || (ck..ck + 2).contains(&i)
    };
    assert_eq!(frame.len(), orig.len());
    for (i, (a, b)) in frame.iter().zip(orig).enumerate() {
        if !changeable(i) {
            assert_eq!(a, b, "byte {i} changed");
        }
    }
    // And the whole frame equals what etherparse encodes from scratch (except for a UDP
    // datagram sent without checksum, which etherparse would not produce).
    if !(exp.udp && read16(orig, ck) == 0) {
        assert_eq!(frame, &build(exp)[..], "byte-identical to a fresh encoding");
    }
}

fn roundtrip(s: &Spec, op: Op, to: SocketAddrV4, macs: &MacPair) {
    let orig = build(s);
    let mut f = orig.clone();
    let exp = apply(&mut f, s, op, to, macs);
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

fn spec() -> impl Strategy<Value = Spec> {
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
            |(udp, macs, src, dst, ttl, flags, (seq, ack, window), payload, padding)| Spec {
                udp,
                macs,
                src,
                dst,
                ttl,
                flags,
                seq,
                ack,
                window,
                payload,
                padding,
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
        let mut frame = build(&s);
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
        let mut f = build(&s);
        let fr = L4Frame::parse(&mut f).unwrap();
        prop_assert_eq!(fr.protocol(), if s.udp { L4Proto::Udp } else { L4Proto::Tcp });
        prop_assert_eq!(fr.src(), s.src);
        prop_assert_eq!(fr.dst(), s.dst);
        prop_assert_eq!(fr.ttl(), s.ttl);
        prop_assert_eq!(fr.macs(), s.macs);
        prop_assert_eq!(fr.tcp_flags(), TcpFlags(if s.udp { 0 } else { s.flags }));
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
        s.udp = true;
        let mut orig = build(&s);
        write16(&mut orig, 40, 0);
        let mut f = orig.clone();
        let exp = apply(&mut f, &s, op, to, &new_macs);
        prop_assert_eq!(read16(&f, 40), 0);
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
            bytes[12] = 0x08;
            bytes[13] = 0x00;
            bytes[14] = 0x45;
        }
        if bytes.len() >= 34 {
            let room = bytes.len() - 14;
            if fix[0] {
                write16(&mut bytes, 20, 0); // no fragment
            }
            if fix[1] {
                let total = 20 + len_pick.index(room - 19);
                write16(&mut bytes, 16, total as u16);
            }
            if fix[2] {
                bytes[22] = bytes[22].max(2);
            }
            if fix[3] {
                bytes[23] = if fix[4] { 6 } else { 17 };
            }
            reseal_ip(&mut bytes);
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
        let mut f = build(&s);
        // Concentrate flips on the headers, where the decisions are.
        let hdr = f.len().min(64);
        for (i, x) in flips {
            let at = i.index(hdr);
            f[at] ^= x;
        }
        if reseal {
            reseal_ip(&mut f);
        }
        exercise(&mut f, to, &m, op);
    }

    #[test]
    fn truncations_of_random_frames(s in spec(), cut in any::<prop::sample::Index>()) {
        let mut s = s;
        s.padding.clear();
        let f = build(&s);
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

fn base_spec(udp: bool) -> Spec {
    Spec {
        udp,
        macs: MacPair {
            src: [0x02, 0, 0, 0, 0, 1],
            dst: [0x02, 0, 0, 0, 0, 2],
        },
        src: SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 7), 40000),
        dst: SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 443),
        ttl: 64,
        flags: TcpFlags::SYN,
        seq: 1,
        ack: 0,
        window: 65535,
        payload: b"hello, odd!".to_vec(),
        padding: Vec::new(),
    }
}

const DAEMON: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 42), 8443);
const NEW_MACS: MacPair = MacPair {
    src: [0x02, 0, 0, 0, 0, 3],
    dst: [0x02, 0, 0, 0, 0, 4],
};

fn all_ops(s: &Spec, orig: &[u8], to: SocketAddrV4) {
    for op in [Op::Forward, Op::Reverse, Op::Dst, Op::Src] {
        let mut f = orig.to_vec();
        let exp = apply(&mut f, s, op, to, &NEW_MACS);
        check_rewritten(&f, orig, s, &exp);
    }
}

/// First source port for which `pred` holds on the etherparse-built frame.
fn search_src_port(s: &Spec, pred: impl Fn(&[u8]) -> bool) -> Spec {
    (0..=u16::MAX)
        .map(|p| {
            let mut t = s.clone();
            t.src.set_port(p);
            t
        })
        .find(|t| pred(&build(t)))
        .expect("a port hitting the edge value exists")
}

#[test]
fn tcp_original_checksum_zero_and_ffff() {
    let s = search_src_port(&base_spec(false), |f| read16(f, 50) == 0x0000);
    let orig = build(&s);
    all_ops(&s, &orig, DAEMON);
    // 0xFFFF: the other representation of zero, which a full computation never yields
    // but a sender may put on the wire; receivers accept it.
    let mut alt = orig.clone();
    write16(&mut alt, 50, 0xFFFF);
    all_ops(&s, &alt, DAEMON);
}

#[test]
fn tcp_degenerate_incremental_case_is_canonical() {
    // Stored checksum 0xFFFF (-0) and every replaced word 0xFFFF -> 0x0000: RFC 1624
    // eqn. 3 alone yields 0xFFFF; a full recomputation yields 0x0000.
    let mut s = base_spec(false);
    s.dst = SocketAddrV4::new(Ipv4Addr::BROADCAST, 0xFFFF);
    let s = search_src_port(&s, |f| read16(f, 50) == 0x0000);
    let mut orig = build(&s);
    write16(&mut orig, 50, 0xFFFF);
    let mut f = orig.clone();
    let to = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
    let exp = apply(&mut f, &s, Op::Dst, to, &NEW_MACS);
    assert_eq!(read16(&f, 50), 0x0000);
    check_rewritten(&f, &orig, &s, &exp);
}

#[test]
fn udp_original_checksum_ffff() {
    // etherparse (RFC 768) writes a computed 0 as 0xFFFF.
    let s = search_src_port(&base_spec(true), |f| read16(f, 40) == 0xFFFF);
    all_ops(&s, &build(&s), DAEMON);
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
        .find(|t| read16(&build(t), 24) == 0)
        .unwrap();
    let orig = build(&s);
    all_ops(&s, &orig, DAEMON);
    let mut alt = orig.clone();
    write16(&mut alt, 24, 0xFFFF);
    all_ops(&s, &alt, DAEMON);
}

/// Finds a new destination (port, or low half of the address) such that the rewritten
/// frame's checksum at `at` is `value`, rewrites to it and checks.
fn rewrite_to_edge(udp: bool, at: usize, value: u16, vary_ip: bool) {
    let s = base_spec(udp);
    let orig = build(&s);
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
            read16(&build(&e), at) == value
        })
        .expect("edge value reachable");
    let mut f = orig.clone();
    let exp = apply(&mut f, &s, Op::Dst, to, &NEW_MACS);
    assert_eq!(read16(&f, at), value);
    check_rewritten(&f, &orig, &s, &exp);
}

#[test]
fn tcp_rewrite_result_zero() {
    rewrite_to_edge(false, 50, 0x0000, false);
}

#[test]
fn udp_rewrite_result_computed_zero_is_ffff() {
    rewrite_to_edge(true, 40, 0xFFFF, false);
}

#[test]
fn ip_rewrite_result_zero() {
    rewrite_to_edge(false, 24, 0x0000, true);
}

#[test]
fn every_truncation_of_a_tcp_frame() {
    let f = build(&base_spec(false));
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
    let f = build(&s);
    for n in 34..f.len() {
        let mut t = f[..n].to_vec();
        write16(&mut t, 16, (n - 14) as u16);
        reseal_ip(&mut t);
        assert_eq!(
            L4Frame::parse(&mut t).err(),
            Some(DropReason::TruncatedTcp),
            "len {n}"
        );
    }
}

// One test per DropReason: a valid etherparse frame mutated to trip exactly that rule.

fn mutated(udp: bool, reseal: bool, m: impl FnOnce(&mut Vec<u8>)) -> Result<(), DropReason> {
    let mut f = build(&base_spec(udp));
    assert!(L4Frame::parse(&mut f.clone()).is_ok());
    m(&mut f);
    if reseal && f.len() >= 34 {
        reseal_ip(&mut f);
    }
    L4Frame::parse(&mut f).map(|_| ())
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
    |f| f.truncate(13)
);
drop_case!(drop_vlan_8100, VlanTagged, false, false, |f| write16(
    f, 12, 0x8100
));
drop_case!(drop_vlan_88a8, VlanTagged, false, false, |f| write16(
    f, 12, 0x88a8
));
drop_case!(drop_ipv6, Ipv6, false, false, |f| write16(f, 12, 0x86dd));
drop_case!(drop_not_ipv4, NotIpv4, false, false, |f| write16(
    f, 12, 0x0806
));
drop_case!(drop_truncated_ipv4, TruncatedIpv4, false, false, |f| f
    .truncate(33));
drop_case!(drop_bad_ip_version, BadIpVersion, false, true, |f| f[14] =
    0x65);
drop_case!(drop_ihl_too_small, IhlTooSmall, false, true, |f| f[14] =
    0x44);
drop_case!(drop_ip_options, IpOptions, false, true, |f| f[14] = 0x46);
drop_case!(drop_fragment_mf, Fragment, false, true, |f| f[20] |= 0x20);
drop_case!(drop_fragment_offset, Fragment, false, true, |f| f[21] = 1);
drop_case!(
    drop_total_length_too_small,
    TotalLengthTooSmall,
    false,
    true,
    |f| write16(f, 16, 19)
);
drop_case!(
    drop_total_length_beyond_frame,
    TotalLengthBeyondFrame,
    false,
    true,
    |f| {
        let n = f.len() as u16 - 14 + 1;
        write16(f, 16, n)
    }
);
drop_case!(drop_bad_ip_checksum, BadIpChecksum, false, false, |f| f
    [25] ^=
    0x40);
drop_case!(drop_ttl_expired, TtlExpired, false, true, |f| f[22] = 1);
drop_case!(
    drop_unsupported_protocol,
    UnsupportedProtocol,
    false,
    true,
    |f| f[23] = 1
);
drop_case!(drop_truncated_tcp, TruncatedTcp, false, true, |f| write16(
    f,
    16,
    20 + 19
));
drop_case!(
    drop_tcp_offset_too_small,
    TcpOffsetTooSmall,
    false,
    true,
    |f| f[46] = 0x40
);
drop_case!(
    drop_tcp_offset_past_end,
    TcpOffsetPastEnd,
    false,
    true,
    |f| f[46] = 0xF0
);
drop_case!(drop_truncated_udp, TruncatedUdp, true, true, |f| write16(
    f,
    16,
    20 + 7
));
drop_case!(drop_bad_udp_length_small, BadUdpLength, true, true, |f| {
    write16(f, 38, 7)
});
drop_case!(drop_bad_udp_length_large, BadUdpLength, true, true, |f| {
    let n = f.len() as u16 - 34 + 1;
    write16(f, 38, n)
});

#[test]
fn drop_cases_cover_every_reason() {
    // Keep the list above in step with the enum.
    assert_eq!(DropReason::COUNT, 19);
    assert_eq!(DropReason::ALL.len(), DropReason::COUNT);
}
