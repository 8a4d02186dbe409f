//! ICMP errors from the front, on the management loop: a worker copied the
//! error (it arrived on whatever queue the NIC picked, not necessarily the one
//! whose worker owns the connection's record); the loop knows every connection's
//! daemon, so it rewrites the copy for that daemon here and hands it back to a
//! worker to send on its back socket.
//!
//! ICMPv6 errors take the same way ([`to_daemon6`]), with the IPv6 tracker.
//!
//! Errors about no tracked connection are dropped and counted, not handed to the
//! host: the host has no socket for a service's connections (their frames never
//! reach it), so it could do nothing with them either.
use std::net::{SocketAddrV4, SocketAddrV6};

use serde::Serialize;

use crate::{
    flow::{FlowKey, FlowKey6},
    packet::{
        ethernet,
        icmp::{IcmpDrop, IcmpError},
        icmpv6::{Icmpv6Drop, Icmpv6Error},
        MacPair,
    },
};

/// What became of the errors the workers handed to the loop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IcmpStats {
    /// Rewritten for their connection's daemon and queued to a worker.
    pub translated: u64,
    /// About no connection the loop tracks (closed since, or never ours).
    pub no_connection: u64,
    /// The daemon's next hop is not resolved.
    pub no_next_hop: u64,
    /// Not a valid error (the worker checked it already: a bug if not 0).
    pub invalid: u64,
}

impl IcmpStats {
    /// (name, value) pairs in a stable order, for the reports.
    pub fn fields(&self) -> [(&'static str, u64); 4] {
        [
            ("translated", self.translated),
            ("no_connection", self.no_connection),
            ("no_next_hop", self.no_next_hop),
            ("invalid", self.invalid),
        ]
    }
}

/// Why an error was not translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Untranslated {
    Invalid(IcmpDrop),
    Invalid6(Icmpv6Drop),
    NoConnection,
    NoNextHop,
}

/// Rewrites `frame`, an ICMP error about a reply (quote `VIP:port → client`),
/// for the daemon of its connection: `daemon_of` answers from the connection
/// tracker, `next_hop` with a daemon's next-hop MAC. On success, the bytes to
/// send (the frame up to its IPv4 total length).
pub fn to_daemon(
    frame: &mut [u8],
    daemon_of: impl Fn(FlowKey) -> Option<SocketAddrV4>,
    next_hop: impl Fn(SocketAddrV4) -> Option<[u8; 6]>,
    back_mac: [u8; 6],
) -> Result<&[u8], Untranslated> {
    let mut error = IcmpError::parse(frame).map_err(Untranslated::Invalid)?;
    // The quote is the reply: from the service, to the client.
    let key = FlowKey::new(
        error.quoted_dst(),
        error.quoted_src(),
        error.quoted_protocol(),
    );
    let daemon = daemon_of(key).ok_or(Untranslated::NoConnection)?;
    let dst = next_hop(daemon).ok_or(Untranslated::NoNextHop)?;
    error.rewrite_to_daemon(daemon, &MacPair { src: back_mac, dst });
    let len = error.frame_len();
    Ok(&frame[..len])
}

/// Whether a copied frame is IPv6 (by its ethertype): which of
/// [`to_daemon`] and [`to_daemon6`] it is for.
pub fn is_ipv6(frame: &[u8]) -> bool {
    frame.get(12..14) == Some(&ethernet::ETHERTYPE_IPV6.to_be_bytes()[..])
}

/// [`to_daemon`] for an ICMPv6 error about an IPv6 reply.
pub fn to_daemon6(
    frame: &mut [u8],
    daemon_of: impl Fn(FlowKey6) -> Option<SocketAddrV6>,
    next_hop: impl Fn(SocketAddrV6) -> Option<[u8; 6]>,
    back_mac: [u8; 6],
) -> Result<&[u8], Untranslated> {
    let mut error = Icmpv6Error::parse(frame).map_err(Untranslated::Invalid6)?;
    // The quote is the reply: from the service, to the client.
    let key = FlowKey6::new(
        error.quoted_dst(),
        error.quoted_src(),
        error.quoted_protocol(),
    );
    let daemon = daemon_of(key).ok_or(Untranslated::NoConnection)?;
    let dst = next_hop(daemon).ok_or(Untranslated::NoNextHop)?;
    error.rewrite_to_daemon(daemon, &MacPair { src: back_mac, dst });
    let len = error.frame_len();
    Ok(&frame[..len])
}

impl IcmpStats {
    pub fn count(&mut self, outcome: Result<(), Untranslated>) {
        match outcome {
            Ok(()) => self.translated += 1,
            Err(Untranslated::NoConnection) => self.no_connection += 1,
            Err(Untranslated::NoNextHop) => self.no_next_hop += 1,
            Err(Untranslated::Invalid(_) | Untranslated::Invalid6(_)) => self.invalid += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};

    use dispatchd_testkit::frame::{FrameSpec, IcmpKind, IcmpSpec};

    use super::*;
    use crate::packet::ipv4::PROTO_TCP;

    const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 40000);
    const SERVICE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 80);
    const DAEMON: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 11), 8080);
    const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
    const BACK_MAC: [u8; 6] = [2, 0, 0, 0, 0xb0, 1];
    const HOP: [u8; 6] = [2, 0, 0, 0, 0x5e, 1];

    fn error_about(from: SocketAddrV4, to: SocketAddrV4, at: Ipv4Addr, ttl: u8) -> Vec<u8> {
        let reply = FrameSpec {
            ttl: 63,
            payload: vec![7; 100],
            ..FrameSpec::tcp(from, to)
        }
        .build();
        IcmpSpec {
            src_mac: [2, 0, 0, 0, 0x7e, 1],
            dst_mac: [2, 0, 0, 0, 0xf0, 1],
            src: ROUTER,
            dst: at,
            ttl,
            tos: 0xc0,
            kind: IcmpKind::FragNeeded { mtu: 1280 },
            quote: reply.ip_packet().to_vec(),
        }
        .build()
        .into_bytes()
    }

    fn tracked(key: FlowKey) -> Option<SocketAddrV4> {
        (key == FlowKey::new(CLIENT, SERVICE, PROTO_TCP)).then_some(DAEMON)
    }

    #[test]
    fn an_error_about_a_tracked_reply_goes_to_its_daemon() {
        let mut f = error_about(SERVICE, CLIENT, *SERVICE.ip(), 64);
        let sent = to_daemon(&mut f, tracked, |_| Some(HOP), BACK_MAC)
            .expect("translated")
            .to_vec();
        let mut want = error_about(DAEMON, CLIENT, *DAEMON.ip(), 63);
        want[..6].copy_from_slice(&HOP);
        want[6..12].copy_from_slice(&BACK_MAC);
        assert_eq!(sent, want);
    }

    #[test]
    fn an_error_about_a_udp_answer_goes_to_its_flows_daemon_and_not_a_tcp_ones() {
        let about = |from, to, at, ttl| {
            let answer = FrameSpec {
                ttl: 63,
                payload: vec![7; 100],
                ..FrameSpec::udp(from, to)
            }
            .build();
            IcmpSpec {
                src_mac: [2, 0, 0, 0, 0x7e, 1],
                dst_mac: [2, 0, 0, 0, 0xf0, 1],
                src: ROUTER,
                dst: at,
                ttl,
                tos: 0xc0,
                kind: IcmpKind::PortUnreachable,
                quote: answer.ip_packet().to_vec(),
            }
            .build()
            .into_bytes()
        };
        let udp_flow = |key: FlowKey| {
            (key == FlowKey::new(CLIENT, SERVICE, crate::packet::ipv4::PROTO_UDP)).then_some(DAEMON)
        };
        let mut f = about(SERVICE, CLIENT, *SERVICE.ip(), 64);
        let sent = to_daemon(&mut f, udp_flow, |_| Some(HOP), BACK_MAC)
            .expect("translated")
            .to_vec();
        let mut want = about(DAEMON, CLIENT, *DAEMON.ip(), 63);
        want[..6].copy_from_slice(&HOP);
        want[6..12].copy_from_slice(&BACK_MAC);
        assert_eq!(sent, want);
        // The TCP connection on the same ports is another flow.
        let mut f = about(SERVICE, CLIENT, *SERVICE.ip(), 64);
        assert_eq!(
            to_daemon(&mut f, tracked, |_| Some(HOP), BACK_MAC).err(),
            Some(Untranslated::NoConnection)
        );
    }

    /// An ICMPv6 packet-too-big from a router at `at`'s side about a TCP
    /// segment `from` -> `to`, in an Ethernet frame.
    fn error6_about(from: SocketAddrV6, to: SocketAddrV6, at: Ipv6Addr, hop_limit: u8) -> Vec<u8> {
        use etherparse::{Icmpv6Type, PacketBuilder};
        let mut segment = Vec::new();
        PacketBuilder::ethernet2([0; 6], [0; 6])
            .ipv6(from.ip().octets(), to.ip().octets(), 63)
            .tcp(from.port(), to.port(), 5000, 1000)
            .ack(1001)
            .write(&mut segment, &[7; 100])
            .unwrap();
        let router = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 1);
        let mut out = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0x7e, 1], [2, 0, 0, 0, 0xf0, 1])
            .ipv6(router.octets(), at.octets(), hop_limit)
            .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1280 })
            .write(&mut out, &segment[14..])
            .unwrap();
        out
    }

    #[test]
    fn an_ipv6_error_about_a_tracked_reply_goes_to_its_daemon_from_the_ipv6_tracker() {
        use crate::{control::conntrack::ConnTracker6, flow::FlowKey6, protocol::Event6};
        let v6 = |last: u16, port| {
            SocketAddrV6::new(Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, last), port, 0, 0)
        };
        let (client, service) = (v6(2, 40000), v6(0x100, 80));
        let daemon = SocketAddrV6::new(Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 0x11), 8080, 0, 0);
        let key = FlowKey6::new(client, service, PROTO_TCP);
        let mut tracker = ConnTracker6::new(Default::default());
        let opened = Event6::Opened {
            worker: crate::ids::WorkerId(0),
            key,
            daemon,
            at_ns: 1,
        };
        tracker.on_event(opened, 1, &mut Vec::new());

        let mut f = error6_about(service, client, *service.ip(), 64);
        assert!(is_ipv6(&f));
        let sent = to_daemon6(&mut f, |k| tracker.daemon_of(k), |_| Some(HOP), BACK_MAC)
            .expect("translated")
            .to_vec();
        let mut want = error6_about(daemon, client, *daemon.ip(), 63);
        want[..6].copy_from_slice(&HOP);
        want[6..12].copy_from_slice(&BACK_MAC);
        assert_eq!(sent, want);
        // No connection the tracker knows: not translated, and said so.
        let mut stray = error6_about(service, v6(2, 40007), *service.ip(), 64);
        assert_eq!(
            to_daemon6(
                &mut stray,
                |k| tracker.daemon_of(k),
                |_| Some(HOP),
                BACK_MAC
            )
            .err(),
            Some(Untranslated::NoConnection)
        );
    }

    #[test]
    fn what_is_not_translated_says_why() {
        let other = SocketAddrV4::new(*CLIENT.ip(), 40001);
        let mut f = error_about(SERVICE, other, *SERVICE.ip(), 64);
        assert_eq!(
            to_daemon(&mut f, tracked, |_| Some(HOP), BACK_MAC).err(),
            Some(Untranslated::NoConnection)
        );
        let mut f = error_about(SERVICE, CLIENT, *SERVICE.ip(), 64);
        assert_eq!(
            to_daemon(&mut f, tracked, |_| None, BACK_MAC).err(),
            Some(Untranslated::NoNextHop)
        );
        let mut f = error_about(SERVICE, CLIENT, *SERVICE.ip(), 1);
        assert_eq!(
            to_daemon(&mut f, tracked, |_| Some(HOP), BACK_MAC).err(),
            Some(Untranslated::Invalid(IcmpDrop::TtlExpired))
        );
        let mut stats = IcmpStats::default();
        for outcome in [
            Ok(()),
            Ok(()),
            Err(Untranslated::NoConnection),
            Err(Untranslated::NoNextHop),
            Err(Untranslated::Invalid(IcmpDrop::Truncated)),
        ] {
            stats.count(outcome);
        }
        assert_eq!(
            stats.fields(),
            [
                ("translated", 2),
                ("no_connection", 1),
                ("no_next_hop", 1),
                ("invalid", 1)
            ]
        );
    }
}
