use proptest::prelude::*;

use super::*;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// Captured on this 6.18 kernel (x86_64, little endian): the answer to a
/// route "get" for 198.19.6.7, which a rule sends to table 100, where a route
/// goes via 198.19.5.2 out of interface 3.
const ROUTE_ANSWER: &str = "7000000018000000070000003c35000002200000fe0000010002000008000f00fe00000008000100c6130607080004000300000008000700c613050108000500c6130502080019000000000024000c000200000000000000000000000000000000000000000000000000000000000000";
/// The neighbour dump of interface 3: one permanent entry, then NLMSG_DONE.
const NEIGH_DUMP: &str = "4c0000001c002200080000003c35000002000000030000008000000108000100c61305020a0002000200000000090000080004000000000014000300d0010000d0010000d0010000000000001400000003000200080000003c35000000000000";
/// The answer to a route "get" for an address with no route: ENETUNREACH,
/// with the request quoted.
const NO_ROUTE: &str = "3800000002000000090000003c3500009bffffff240000001a000100090000000000000002200000000000000000000008000100cb007109";

fn all(datagram: &[u8]) -> Vec<Result<(Header, Message), Malformed>> {
    Messages::new(datagram).collect()
}

#[test]
fn a_captured_route_answer_names_the_gateway_and_the_interface() {
    let got = all(&hex(ROUTE_ANSWER));
    assert_eq!(got.len(), 1);
    let (header, message) = got[0].clone().unwrap();
    assert_eq!(header.kind, RTM_NEWROUTE);
    assert_eq!(header.seq, 7);
    assert_eq!(
        message,
        Message::Route(RouteMsg {
            deleted: false,
            family: 2,
            dst_len: 32,
            kind: RTN_UNICAST,
            table: 254,
            dst: Some(ip("198.19.6.7")),
            gateway: Some(ip("198.19.5.2")),
            oif: Some(3),
            via_family: None,
            multipath: false,
        })
    );
}

#[test]
fn a_captured_neighbour_dump_gives_the_entry_then_the_end() {
    let got = all(&hex(NEIGH_DUMP));
    assert_eq!(got.len(), 2);
    let (header, message) = got[0].clone().unwrap();
    assert_eq!(header.flags & NLM_F_MULTI, NLM_F_MULTI);
    let Message::Neighbour(n) = message else {
        panic!("{message:?}")
    };
    assert_eq!(n.ifindex, 3);
    assert_eq!(n.state, NUD_PERMANENT);
    assert_eq!(n.dst, Some(ip("198.19.5.2")));
    assert_eq!(n.usable_mac(), Some([2, 0, 0, 0, 0, 9]));
    assert_eq!(got[1].clone().unwrap().1, Message::Done);
}

#[test]
fn a_captured_refusal_is_its_errno() {
    let got = all(&hex(NO_ROUTE));
    assert_eq!(got.len(), 1);
    let (header, message) = got[0].clone().unwrap();
    assert_eq!(header.seq, 9);
    assert_eq!(message, Message::Error(101), "ENETUNREACH");
}

/// The requests, byte for byte as `ip` and the capture above sent them.
#[test]
fn requests_are_laid_out_as_the_kernel_reads_them() {
    let get = route_get(7, ip("198.19.6.7"));
    assert_eq!(
        get,
        hex("240000001a000100070000000000000002200000000000000000000008000100c6130607")
    );
    let dump = neigh_dump(8, 3);
    assert_eq!(
        dump,
        hex("240000001e00010308000000000000000200000000000000000000000800080003000000")
    );
    let one = neigh_get(9, 3, ip("198.19.5.2"));
    assert_eq!(
        one,
        hex("240000001e000100090000000000000002000000030000000000000008000100c6130502")
    );
    // Each parses back as what it asks, by type and sequence number.
    for (msg, kind, seq) in [
        (get, RTM_GETROUTE, 7),
        (dump, RTM_GETNEIGH, 8),
        (one, RTM_GETNEIGH, 9),
    ] {
        let (header, message) = Messages::new(&msg).next().unwrap().unwrap();
        assert_eq!(
            (header.kind, header.seq, message),
            (kind, seq, Message::Other)
        );
    }
}

/// A message: header for `kind` around `body`.
fn message(kind: u16, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_header(&mut out, kind, 0, 1, body.len());
    out.extend_from_slice(body);
    out.resize(align(out.len()), 0);
    out
}

fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_attr(&mut out, kind, value);
    out
}

fn ndmsg_body(ifindex: u32, state: u16, attrs: &[Vec<u8>]) -> Vec<u8> {
    let mut b = ndmsg(AF_INET, ifindex).to_vec();
    b[8..10].copy_from_slice(&state.to_ne_bytes());
    for a in attrs {
        b.extend_from_slice(a);
    }
    b
}

#[test]
fn unknown_attributes_and_flag_bits_are_skipped() {
    let body = ndmsg_body(
        3,
        NUD_REACHABLE,
        &[
            attr(0x3ffe, b"future"),
            // NLA_F_NESTED set on a known type: still the known type.
            attr(NDA_DST | 0x8000, &[198, 19, 0, 11]),
            attr(NDA_LLADDR, &[2, 0, 0, 0, 0, 0x11]),
            attr(99, &[]),
        ],
    );
    let got = all(&message(RTM_NEWNEIGH, &body));
    let Ok((_, Message::Neighbour(n))) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(n.dst, Some(ip("198.19.0.11")));
    assert_eq!(n.usable_mac(), Some([2, 0, 0, 0, 0, 0x11]));
}

#[test]
fn a_deleted_or_incomplete_entry_has_no_usable_mac() {
    let body = ndmsg_body(
        3,
        NUD_STALE,
        &[
            attr(NDA_DST, &[198, 19, 0, 11]),
            attr(NDA_LLADDR, &[2, 0, 0, 0, 0, 1]),
        ],
    );
    let Ok((_, Message::Neighbour(n))) = &all(&message(RTM_DELNEIGH, &body))[0] else {
        panic!()
    };
    assert!(n.deleted);
    assert_eq!(n.usable_mac(), None);
    let body = ndmsg_body(3, NUD_FAILED, &[attr(NDA_DST, &[198, 19, 0, 11])]);
    let Ok((_, Message::Neighbour(n))) = &all(&message(RTM_NEWNEIGH, &body))[0] else {
        panic!()
    };
    assert_eq!(n.usable_mac(), None);
}

#[test]
fn a_link_layer_address_that_is_not_ethernet_is_no_mac_but_no_fault() {
    let body = ndmsg_body(
        3,
        NUD_REACHABLE,
        &[attr(NDA_DST, &[198, 19, 0, 11]), attr(NDA_LLADDR, &[7; 20])],
    );
    let got = all(&message(RTM_NEWNEIGH, &body));
    let Ok((_, Message::Neighbour(n))) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(n.usable_mac(), None);
}

fn ip6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// IPv6 messages are read with 16-byte addresses, as their own variants; an
/// IPv4-sized address in one is malformed; other families are skipped.
#[test]
fn ipv6_messages_are_read_as_ipv6_and_other_families_skipped() {
    let mut body = ndmsg_body(
        3,
        NUD_REACHABLE,
        &[
            attr(NDA_DST, &ip6("2001:2:0:2::11").octets()),
            attr(NDA_LLADDR, &[2, 0, 0, 0, 0, 0x11]),
        ],
    );
    body[0] = 10; // AF_INET6
    let got = all(&message(RTM_NEWNEIGH, &body));
    let Ok((_, Message::Neighbour6(n))) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(
        (n.family, n.ifindex, n.dst),
        (10, 3, Some(ip6("2001:2:0:2::11")))
    );
    assert_eq!(n.usable_mac(), Some([2, 0, 0, 0, 0, 0x11]));

    let mut route = vec![10, 64, 0, 0, 254, 0, 0, RTN_UNICAST, 0, 0, 0, 0];
    route.extend(attr(RTA_DST, &ip6("2001:2:0:64::").octets()));
    route.extend(attr(RTA_GATEWAY, &ip6("fe80::fe").octets()));
    route.extend(attr(RTA_OIF, &4u32.to_ne_bytes()));
    let got = all(&message(RTM_NEWROUTE, &route));
    let Ok((_, Message::Route6(r))) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(
        (r.dst, r.dst_len, r.gateway, r.oif),
        (
            Some(ip6("2001:2:0:64::")),
            64,
            Some(ip6("fe80::fe")),
            Some(4)
        )
    );

    let mut short = ndmsg_body(3, NUD_REACHABLE, &[attr(NDA_DST, &[198, 19, 0, 11])]);
    short[0] = 10;
    assert_eq!(
        all(&message(RTM_NEWNEIGH, &short))[0],
        Err(Malformed::BadValue)
    );
    // An IPv4 entry with an IPv6-sized address is malformed too.
    let long = ndmsg_body(3, NUD_REACHABLE, &[attr(NDA_DST, &[0x20; 16])]);
    assert_eq!(
        all(&message(RTM_NEWNEIGH, &long))[0],
        Err(Malformed::BadValue)
    );
    let mut bridge = ndmsg_body(3, NUD_REACHABLE, &[attr(NDA_DST, &[0xfe; 16])]);
    bridge[0] = 7; // AF_BRIDGE: the forwarding database
    assert_eq!(
        all(&message(RTM_NEWNEIGH, &bridge))[0],
        Ok((header(RTM_NEWNEIGH), Message::Other))
    );
    assert_eq!(
        all(&message(RTM_NEWROUTE, &[]))[0],
        Err(Malformed::ShortBody)
    );
}

/// The IPv6 requests: the IPv4 layouts with AF_INET6, /128 and 16-byte
/// addresses (checked against the kernel's answers in e2e_netlink).
#[test]
fn ipv6_requests_are_laid_out_as_the_kernel_reads_them() {
    let get = route_get6(7, ip6("2001:2:0:2::11"));
    assert_eq!(
        get,
        hex("300000001a00010007000000000000000a80000000000000000000001400010020010002000000020000000000000011")
    );
    let dump = neigh_dump6(8, 3);
    assert_eq!(
        dump,
        hex("240000001e00010308000000000000000a00000000000000000000000800080003000000")
    );
    let one = neigh_get6(9, 3, ip6("2001:2:0:2::1"));
    assert_eq!(
        one,
        hex("300000001e00010009000000000000000a00000003000000000000001400010020010002000000020000000000000001")
    );
}

fn header(kind: u16) -> Header {
    Header {
        kind,
        flags: 0,
        seq: 1,
        pid: 0,
    }
}

#[test]
fn route_notifications_say_what_they_cover() {
    let mut body = vec![2, 24, 0, 0, 100, 4, 0, RTN_UNICAST, 0, 0, 0, 0];
    body.extend(attr(RTA_DST, &[198, 19, 1, 0]));
    body.extend(attr(RTA_MULTIPATH, &[0; 16]));
    let got = all(&message(RTM_DELROUTE, &body));
    let Ok((_, Message::Route(r))) = &got[0] else {
        panic!("{got:?}")
    };
    assert!(r.deleted && r.multipath);
    assert_eq!(
        (r.dst, r.dst_len, r.table),
        (Some(ip("198.19.1.0")), 24, 100)
    );
    let mut via = vec![2, 32, 0, 0, 254, 0, 0, RTN_UNICAST, 0, 0, 0, 0];
    via.extend(attr(RTA_VIA, &[10, 0, 0xfe, 0x80, 0, 0]));
    let Ok((_, Message::Route(r))) = &all(&message(RTM_NEWROUTE, &via))[0] else {
        panic!()
    };
    assert_eq!(r.via_family, Some(10));
    for kind in [RTM_NEWLINK, RTM_DELADDR, RTM_NEWRULE, RTM_DELRULE] {
        assert_eq!(
            all(&message(kind, &[0; 16]))[0].clone().unwrap().1,
            Message::RoutingChanged
        );
    }
    assert_eq!(
        all(&message(NLMSG_NOOP, &[]))[0].clone().unwrap().1,
        Message::Other
    );
}

#[test]
fn several_messages_share_a_datagram_and_the_last_may_lack_padding() {
    let first = message(
        RTM_NEWNEIGH,
        &ndmsg_body(
            3,
            NUD_REACHABLE,
            &[
                attr(NDA_DST, &[198, 19, 0, 11]),
                attr(NDA_LLADDR, &[2, 0, 0, 0, 0, 1]),
            ],
        ),
    );
    // 16 + 12 + 8 + 10 = 46, padded to 48 in `first`.
    assert_eq!(first.len(), 48);
    let mut datagram = first.clone();
    datagram.extend_from_slice(&first[..46]);
    datagram[48..52].copy_from_slice(&46u32.to_ne_bytes());
    let got = all(&datagram);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got
        .iter()
        .all(|m| matches!(m, Ok((_, Message::Neighbour(_))))));
}

#[test]
fn truncated_and_lying_lengths_are_malformed_and_end_the_datagram() {
    let good = message(
        RTM_NEWNEIGH,
        &ndmsg_body(3, NUD_REACHABLE, &[attr(NDA_DST, &[198, 19, 0, 11])]),
    );
    // Fewer bytes than a header.
    assert_eq!(all(&good[..10]), [Err(Malformed::ShortHeader)]);
    // A length beyond the datagram (cut short).
    assert_eq!(all(&good[..good.len() - 4]), [Err(Malformed::BadLength)]);
    // A length below the header: the walk cannot go on.
    let mut low = good.clone();
    low[0..4].copy_from_slice(&8u32.to_ne_bytes());
    low.extend_from_slice(&good);
    assert_eq!(all(&low), [Err(Malformed::BadLength)]);
    // A good message, then garbage: the first is read.
    let mut then = good.clone();
    then.extend_from_slice(&[1, 2, 3]);
    let got = all(&then);
    assert!(got[0].is_ok());
    assert_eq!(got[1], Err(Malformed::ShortHeader));
    assert_eq!(got.len(), 2);
    // A body shorter than ndmsg, rtmsg or an error's code.
    assert_eq!(
        all(&message(RTM_NEWNEIGH, &[2; 8])),
        [Err(Malformed::ShortBody)]
    );
    assert_eq!(
        all(&message(RTM_NEWROUTE, &[2; 11])),
        [Err(Malformed::ShortBody)]
    );
    assert_eq!(
        all(&message(NLMSG_ERROR, &[0; 2])),
        [Err(Malformed::ShortBody)]
    );
}

#[test]
fn bad_attributes_are_malformed() {
    // An attribute claiming more than its message holds.
    let mut body = ndmsg_body(3, NUD_REACHABLE, &[]);
    body.extend_from_slice(&[40, 0, 1, 0, 198, 19, 0, 11]);
    assert_eq!(
        all(&message(RTM_NEWNEIGH, &body)),
        [Err(Malformed::BadAttribute)]
    );
    // An attribute shorter than its own header.
    let mut body = ndmsg_body(3, NUD_REACHABLE, &[]);
    body.extend_from_slice(&[2, 0, 1, 0]);
    assert_eq!(
        all(&message(RTM_NEWNEIGH, &body)),
        [Err(Malformed::BadAttribute)]
    );
    // Fewer bytes left than an attribute header.
    let mut body = ndmsg_body(3, NUD_REACHABLE, &[]);
    body.extend_from_slice(&[8, 0]);
    assert_eq!(
        all(&message(RTM_NEWNEIGH, &body)),
        [Err(Malformed::BadAttribute)]
    );
    // Known attributes of the wrong size.
    let body = ndmsg_body(3, NUD_REACHABLE, &[attr(NDA_DST, &[198, 19, 0])]);
    assert_eq!(
        all(&message(RTM_NEWNEIGH, &body)),
        [Err(Malformed::BadValue)]
    );
    let mut route = vec![2, 32, 0, 0, 254, 0, 0, RTN_UNICAST, 0, 0, 0, 0];
    route.extend(attr(RTA_OIF, &[3, 0]));
    assert_eq!(
        all(&message(RTM_NEWROUTE, &route)),
        [Err(Malformed::BadValue)]
    );
    let mut route = vec![2, 32, 0, 0, 254, 0, 0, RTN_UNICAST, 0, 0, 0, 0];
    route.extend(attr(RTA_VIA, &[10]));
    assert_eq!(
        all(&message(RTM_NEWROUTE, &route)),
        [Err(Malformed::BadValue)]
    );
}

#[test]
fn an_error_code_of_any_value_reads() {
    assert_eq!(
        all(&message(NLMSG_ERROR, &i32::MIN.to_ne_bytes()))[0]
            .clone()
            .unwrap()
            .1,
        Message::Error(i32::MAX)
    );
    assert_eq!(
        all(&message(NLMSG_ERROR, &0i32.to_ne_bytes()))[0]
            .clone()
            .unwrap()
            .1,
        Message::Error(0)
    );
}

proptest! {
    /// Any bytes: the walk ends, never panics, and never reads beyond them.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let n = Messages::new(&bytes).take(1000).count();
        prop_assert!(n <= bytes.len() / NLMSG_HDRLEN + 1);
    }

    /// A valid message with any of its bytes changed: still no panic.
    #[test]
    fn a_mutated_answer_never_panics(at in 0usize..112, value in any::<u8>()) {
        let mut bytes = hex(ROUTE_ANSWER);
        bytes[at] = value;
        let _ = Messages::new(&bytes).count();
    }
}
