//! Property tests of the IPv6 packet core against an independent encoder
//! (etherparse): frames are built by etherparse, rewritten in place by `L4Frame6`
//! or `Icmpv6Error`, and compared byte for byte with the frame etherparse builds
//! directly with the new values, whose checksums it computes in full. Hostile
//! inputs (every truncation, a wrong payload length, random bytes, flipped bytes)
//! give an error or a valid view, never a panic.

use std::net::{Ipv6Addr, SocketAddrV6};

use dispatchd::packet::{
    icmpv6::{Icmpv6Drop, Icmpv6Error},
    ipv6::L4Frame6,
    DropReason, L4Proto, MacPair,
};
use etherparse::{
    icmpv6::{DestUnreachableCode, ParameterProblemCode, ParameterProblemHeader, TimeExceededCode},
    Icmpv6Type, PacketBuilder, TcpOptionElement,
};
use proptest::prelude::*;

#[derive(Clone, Debug)]
struct Spec6 {
    udp: bool,
    src: SocketAddrV6,
    dst: SocketAddrV6,
    hop_limit: u8,
    macs: MacPair,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    payload: Vec<u8>,
}

fn encode(s: &Spec6) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(s.macs.src, s.macs.dst).ipv6(
        s.src.ip().octets(),
        s.dst.ip().octets(),
        s.hop_limit,
    );
    let mut out = Vec::new();
    if s.udp {
        b.udp(s.src.port(), s.dst.port())
            .write(&mut out, &s.payload)
            .unwrap();
    } else {
        let mut t = b.tcp(s.src.port(), s.dst.port(), s.seq, s.window);
        if s.flags & 0x01 != 0 {
            t = t.fin();
        }
        if s.flags & 0x02 != 0 {
            t = t.syn();
        }
        if s.flags & 0x04 != 0 {
            t = t.rst();
        }
        if s.flags & 0x08 != 0 {
            t = t.psh();
        }
        if s.flags & 0x10 != 0 {
            t = t.ack(s.ack);
        }
        t.write(&mut out, &s.payload).unwrap();
    }
    out
}

fn addr6() -> impl Strategy<Value = Ipv6Addr> {
    prop_oneof![
        any::<u128>().prop_map(Ipv6Addr::from),
        // Addresses with many zero and all-ones words: the carries of the
        // one's complement sums at their edges.
        prop::array::uniform8(prop_oneof![Just(0u16), Just(0xffff), any::<u16>()])
            .prop_map(|w| Ipv6Addr::new(w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7])),
    ]
}

fn sock6() -> impl Strategy<Value = SocketAddrV6> {
    (addr6(), any::<u16>()).prop_map(|(a, p)| SocketAddrV6::new(a, p, 0, 0))
}

fn macs() -> impl Strategy<Value = MacPair> {
    (any::<[u8; 6]>(), any::<[u8; 6]>()).prop_map(|(src, dst)| MacPair { src, dst })
}

fn spec6() -> impl Strategy<Value = Spec6> {
    (
        any::<bool>(),
        sock6(),
        sock6(),
        2u8..=255,
        macs(),
        any::<(u32, u32, u16)>(),
        0u8..0x20,
        prop::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(
            |(udp, src, dst, hop_limit, macs, (seq, ack, window), flags, payload)| Spec6 {
                udp,
                src,
                dst,
                hop_limit,
                macs,
                seq,
                ack,
                flags,
                window,
                payload,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Forward (destination := daemon) and reverse (source := VIP), with or
    /// without the Ethernet addresses, equal a fresh encoding: checksums included.
    #[test]
    fn rewrites_match_full_recomputation(
        s in spec6(), to in sock6(), new_macs in macs(), op in 0u8..4,
    ) {
        let mut frame = encode(&s);
        let mut fr = L4Frame6::parse(&mut frame).expect("valid frame parses");
        prop_assert_eq!(fr.protocol(), if s.udp { L4Proto::Udp } else { L4Proto::Tcp });
        prop_assert_eq!((fr.src(), fr.dst()), (s.src, s.dst));
        prop_assert!(fr.l4_checksum_ok());
        let mut want = s.clone();
        want.hop_limit -= 1;
        match op {
            0 => { fr.rewrite_forward(to, &new_macs); want.dst = to; want.macs = new_macs; }
            1 => { fr.rewrite_reverse(to, &new_macs); want.src = to; want.macs = new_macs; }
            2 => { fr.rewrite_dst(to); want.dst = to; }
            _ => { fr.rewrite_src(to); want.src = to; }
        }
        prop_assert!(fr.l4_checksum_ok());
        prop_assert_eq!(frame, encode(&want));
    }

    /// The MSS clamp over IPv6 equals a SYN encoded with the clamped MSS.
    #[test]
    fn mss_clamp_matches_a_fresh_encoding(
        s in spec6(), mss in any::<u16>(), max in any::<u16>(), nops in 0usize..3, ws in any::<bool>(),
    ) {
        let syn = |mss: u16| {
            let mut opts = vec![TcpOptionElement::Noop; nops];
            opts.push(TcpOptionElement::MaximumSegmentSize(mss));
            if ws {
                opts.push(TcpOptionElement::WindowScale(7));
            }
            let mut out = Vec::new();
            PacketBuilder::ethernet2(s.macs.src, s.macs.dst)
                .ipv6(s.src.ip().octets(), s.dst.ip().octets(), s.hop_limit)
                .tcp(s.src.port(), s.dst.port(), s.seq, s.window)
                .syn()
                .options(&opts)
                .unwrap()
                .write(&mut out, &s.payload)
                .unwrap();
            out
        };
        let mut frame = syn(mss);
        let clamped = L4Frame6::parse(&mut frame).unwrap().clamp_mss(max);
        prop_assert_eq!(clamped, mss > max);
        prop_assert_eq!(frame, syn(mss.min(max)));
    }

    /// Every truncation of a valid frame is an error (the payload length then
    /// points past the frame, or a header is cut), never a panic.
    #[test]
    fn every_truncation_is_an_error(s in spec6(), cut in any::<prop::sample::Index>()) {
        let frame = encode(&s);
        let n = cut.index(frame.len());
        let mut short = frame[..n].to_vec();
        let want = match n {
            0..=13 => DropReason::TruncatedEthernet,
            14..=53 => DropReason::TruncatedIpv6,
            _ => DropReason::Ipv6PayloadLengthBeyondFrame,
        };
        prop_assert_eq!(L4Frame6::parse(&mut short).err(), Some(want));
    }

    /// Any payload length: a valid view whose accessors and rewrites stay inside
    /// the frame, or an error.
    #[test]
    fn any_payload_length_is_a_view_or_an_error(
        s in spec6(), len in any::<u16>(), to in sock6(), pad in 0usize..64,
    ) {
        let mut frame = encode(&s);
        frame[18..20].copy_from_slice(&len.to_be_bytes());
        frame.extend(std::iter::repeat_n(0xa5, pad));
        let n = frame.len();
        let tail = frame.get(54 + usize::from(len)..).map(<[u8]>::to_vec);
        match L4Frame6::parse(&mut frame) {
            Ok(mut fr) => {
                prop_assert!(54 + usize::from(len) <= n);
                let _ = (fr.l4_payload().len(), fr.tcp_seq_next(), fr.l4_checksum_ok());
                fr.clamp_mss(536);
                fr.rewrite_forward(to, &s.macs);
                // Bytes past the payload length (padding) are never touched.
                prop_assert_eq!(frame.get(54 + usize::from(len)..).map(<[u8]>::to_vec), tail);
            }
            Err(r) => prop_assert!(matches!(
                r,
                DropReason::Ipv6PayloadLengthBeyondFrame
                    | DropReason::TruncatedTcp
                    | DropReason::TruncatedUdp
                    | DropReason::TcpOffsetPastEnd
                    | DropReason::BadUdpLength
            ), "{:?}", r),
        }
    }

    /// Random bytes that look like IPv6 (ethertype and version set) and flipped
    /// bytes of valid frames: never a panic, and a view only when valid.
    #[test]
    fn hostile_bytes_never_panic(
        s in spec6(),
        mut noise in prop::collection::vec(any::<u8>(), 0..200),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        to in sock6(),
    ) {
        if noise.len() > 14 {
            noise[12] = 0x86;
            noise[13] = 0xdd;
        }
        if noise.len() > 14 {
            noise[14] = 0x60 | (noise[14] & 0x0f);
        }
        if let Ok(mut fr) = L4Frame6::parse(&mut noise) {
            fr.rewrite_reverse(to, &s.macs);
            let _ = fr.clamp_mss(1);
        }
        let mut frame = encode(&s);
        for (at, x) in flips {
            let i = at.index(frame.len());
            frame[i] ^= x;
        }
        if let Ok(mut fr) = L4Frame6::parse(&mut frame) {
            let _ = (fr.src(), fr.dst(), fr.l4_payload().len());
            fr.rewrite_forward(to, &s.macs);
            let _ = fr.clamp_mss(1);
        }
        let mut again = frame.clone();
        if let Ok(mut e) = Icmpv6Error::parse(&mut again) {
            e.rewrite_to_client(to);
        }
    }
}

/// A UDP checksum that computes to 0 after a rewrite is sent as 0xFFFF (0 would
/// mean "none", which IPv6 forbids): the one destination port that makes it so is
/// searched, and the result equals etherparse's encoding, which applies the same
/// rule.
#[test]
fn udp_checksum_computed_zero_is_sent_as_ffff() {
    let s = Spec6 {
        udp: true,
        src: "[2001:db8::2]:40000".parse().unwrap(),
        dst: "[2001:db8::100]:53".parse().unwrap(),
        hop_limit: 64,
        macs: MacPair::default(),
        seq: 0,
        ack: 0,
        flags: 0,
        window: 0,
        payload: b"query".to_vec(),
    };
    let daemon: Ipv6Addr = "2001:db8:1::12".parse().unwrap();
    let mut hits = 0;
    for port in 0..=u16::MAX {
        let mut frame = encode(&s);
        let to = SocketAddrV6::new(daemon, port, 0, 0);
        L4Frame6::parse(&mut frame).unwrap().rewrite_dst(to);
        let ck = u16::from_be_bytes([frame[54 + 6], frame[54 + 7]]);
        assert_ne!(ck, 0, "port {port}");
        if ck == 0xFFFF {
            hits += 1;
            let mut want = s.clone();
            want.dst = to;
            want.hop_limit -= 1;
            assert_eq!(frame, encode(&want), "port {port}");
        }
    }
    assert_eq!(hits, 1);
}

// ---------------------------------------------------------------------------------
// ICMPv6 errors: a quote of the packet as one side saw it, translated, equals the
// error built around the packet as the other side sent it.

fn icmp_kind() -> impl Strategy<Value = Icmpv6Type> {
    prop_oneof![
        any::<u32>().prop_map(|mtu| Icmpv6Type::PacketTooBig { mtu }),
        Just(Icmpv6Type::DestinationUnreachable(
            DestUnreachableCode::Port
        )),
        Just(Icmpv6Type::DestinationUnreachable(
            DestUnreachableCode::Address
        )),
        Just(Icmpv6Type::TimeExceeded(TimeExceededCode::HopLimitExceeded)),
        (0u32..48).prop_map(
            |pointer| Icmpv6Type::ParameterProblem(ParameterProblemHeader {
                code: ParameterProblemCode::ErroneousHeaderField,
                pointer,
            })
        ),
    ]
}

/// The IPv6 packet of `s` (without its Ethernet header).
fn ip_packet(s: &Spec6) -> Vec<u8> {
    encode(s)[14..].to_vec()
}

fn icmp_frame(
    kind: &Icmpv6Type,
    from: Ipv6Addr,
    to: Ipv6Addr,
    hop: u8,
    quote: &[u8],
    m: &MacPair,
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(m.src, m.dst)
        .ipv6(from.octets(), to.octets(), hop)
        .icmpv6(*kind)
        .write(&mut out, quote)
        .unwrap();
    out
}

/// A quote length from the 48 bytes every error carries to the whole packet,
/// never ending inside the TCP checksum (that case is a unit test's).
fn quote_len(packet: &[u8], udp: bool, pick: prop::sample::Index) -> usize {
    let n = 48 + pick.index(packet.len() - 48 + 1);
    if !udp && n == 40 + 17 {
        n + 1
    } else {
        n
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// An error from the back about a client's packet (client -> daemon) reaches
    /// the client as the error about what it sent (client -> VIP), from the VIP.
    #[test]
    fn an_error_about_a_clients_packet_translates_to_the_one_about_what_the_client_sent(
        s in spec6(), kind in icmp_kind(), service in sock6(), router in addr6(),
        hop in 2u8..=255, pick in any::<prop::sample::Index>(),
    ) {
        let sent = ip_packet(&s);
        let mut as_seen = s.clone();
        as_seen.dst = service;
        let seen = ip_packet(&as_seen);
        let n = quote_len(&sent, s.udp, pick);
        let mut f = icmp_frame(&kind, router, *s.src.ip(), hop, &sent[..n], &s.macs);
        let mut e = Icmpv6Error::parse(&mut f).expect("valid error parses");
        prop_assert_eq!(e.quoted_dst(), s.dst);
        e.rewrite_to_client(service);
        let want = icmp_frame(&kind, *service.ip(), *s.src.ip(), hop - 1, &seen[..n], &s.macs);
        prop_assert_eq!(f, want);
    }

    /// An error from the front about a reply (VIP -> client) reaches the daemon as
    /// the error about what it sent (daemon -> client), with new Ethernet addresses.
    #[test]
    fn an_error_about_a_reply_translates_to_the_one_about_what_the_daemon_sent(
        s in spec6(), kind in icmp_kind(), daemon in sock6(), router in addr6(),
        hop in 2u8..=255, pick in any::<prop::sample::Index>(), m in macs(),
    ) {
        let seen = ip_packet(&s);
        let mut as_sent = s.clone();
        as_sent.src = daemon;
        let sent = ip_packet(&as_sent);
        let n = quote_len(&seen, s.udp, pick);
        let mut f = icmp_frame(&kind, router, *s.src.ip(), hop, &seen[..n], &s.macs);
        let mut e = Icmpv6Error::parse(&mut f).expect("valid error parses");
        prop_assert_eq!(e.quoted_src(), s.src);
        e.rewrite_to_daemon(daemon, &m);
        let want = icmp_frame(&kind, router, *daemon.ip(), hop - 1, &sent[..n], &m);
        prop_assert_eq!(f, want);
    }

    /// Every truncation of a valid error is `Truncated`; flipped bytes give an
    /// error or a translatable view, never a panic.
    #[test]
    fn hostile_errors_never_panic(
        s in spec6(), kind in icmp_kind(), router in addr6(), to in sock6(),
        cut in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let f = icmp_frame(&kind, router, *s.src.ip(), 64, &ip_packet(&s), &s.macs);
        let n = cut.index(f.len());
        prop_assert_eq!(Icmpv6Error::parse(&mut f[..n].to_vec()).err(), Some(Icmpv6Drop::Truncated));
        let mut g = f.clone();
        for (at, x) in flips {
            let i = at.index(g.len());
            g[i] ^= x;
        }
        if let Ok(mut e) = Icmpv6Error::parse(&mut g) {
            e.rewrite_to_daemon(to, &s.macs);
            e.truncate(100);
        }
    }
}
