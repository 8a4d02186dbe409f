//! The IPv6 path against the IPv4 one's expectations: the same decisions,
//! events and counters, on frames from etherparse's encoder (independent of
//! `packet`), through the `Forwarder` and `Reverser` the worker uses, so the
//! family dispatch is part of every case.
use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{icmpv6::DestUnreachableCode, Icmpv6Type, PacketBuilder, TcpOptionElement};

use super::*;
use crate::{
    config::Protocol,
    flow::{FlowTable6, KeyFamily},
    packet::{icmpv6::Icmpv6Drop, ipv6::L4Frame6},
    protocol::{self, Event6, LoopEnd, Wake},
    sys::EventFd,
};

const VIP: SocketAddrV6 =
    SocketAddrV6::new(Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 0x100), 80, 0, 0);
const CLIENT: SocketAddrV6 =
    SocketAddrV6::new(Ipv6Addr::new(0x2001, 2, 0, 0xc, 0, 0, 0, 2), 40000, 0, 0);
const VIP4: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 80);
const HOP: [u8; 6] = [6; 6];
const BACK_MAC: [u8; 6] = [8; 6];

fn daemon(i: u16) -> SocketAddrV6 {
    SocketAddrV6::new(
        Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 0x11 + i),
        8080,
        0,
        0,
    )
}

fn client(i: u16) -> SocketAddrV6 {
    SocketAddrV6::new(*CLIENT.ip(), 40000 + i, 0, 0)
}

fn service6(protocol: Protocol, policy: PolicyKind, daemons: u16) -> Service6Config {
    Service6Config {
        address: VIP,
        protocol,
        policy,
        backends: (0..daemons)
            .map(|i| BackendSpec {
                addr: daemon(i),
                weight: 1,
            })
            .collect(),
        health: Default::default(),
    }
}

fn hops(n: usize) -> Arc<[NextHop]> {
    let hops: Arc<[NextHop]> = (0..n).map(|_| NextHop::default()).collect();
    hops.iter().for_each(|h| h.set(Some(HOP)));
    hops
}

fn plane6(services6: &[Service6Config]) -> Dataplane {
    let n = services6.iter().map(|s| s.backends.len()).sum();
    Dataplane::build(WorkerId(0), &[], services6, &[], hops(n), BACK_MAC).expect("valid")
}

/// A worker's state around one plane: both tables, the event sink and the
/// loop's end of the link.
struct Worker {
    table: FlowTable,
    table6: FlowTable6,
    plane: Dataplane,
    sink: EventSink,
    main: LoopEnd<Dataplane>,
    stats: WorkerStats,
}

impl Worker {
    fn new(plane: Dataplane, capacity6: usize) -> Self {
        let wake = Arc::new(Wake::new(EventFd::new().expect("eventfd")));
        let (worker, main) = protocol::link::<Dataplane>(wake, 64).expect("eventfd");
        Self {
            table: FlowTable::with_capacity(16),
            table6: FlowTable6::with_capacity(capacity6),
            plane,
            sink: worker.events,
            main,
            stats: WorkerStats::default(),
        }
    }

    /// A client frame through the worker's forwarder, prefetched first as in a
    /// batch; whether it goes on.
    fn forward(&mut self, frame: &mut [u8], now_ns: u64) -> bool {
        let mut f = Forwarder {
            table: &mut self.table,
            table6: &mut self.table6,
            plane: &mut self.plane,
            events: &mut self.sink,
            stats: &self.stats,
            now_ns,
        };
        let hint = f.prefetch(frame);
        f.handle(frame, hint)
    }

    fn reverse(&mut self, frame: &mut [u8], now_ns: u64) -> bool {
        let mut r = Reverser {
            plane: &self.plane,
            events: &mut self.sink,
            stats: &self.stats,
            now_ns,
        };
        r.handle(frame, ())
    }

    fn events6(&mut self) -> Vec<Event6> {
        self.sink.flush();
        self.main.events6.try_iter().collect()
    }

    fn events4(&mut self) -> Vec<Event> {
        self.sink.flush();
        self.main.events.try_iter().collect()
    }

    fn dropped(&self, why: WorkerDrop) -> u64 {
        self.stats.dropped[why as usize].get()
    }
}

/// A TCP segment with the flag byte `flags` (0x01 FIN, 0x02 SYN, 0x04 RST,
/// 0x10 ACK).
fn tcp(from: SocketAddrV6, to: SocketAddrV6, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    let mut t = PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv6(from.ip().octets(), to.ip().octets(), 64)
        .tcp(from.port(), to.port(), seq, 64000);
    if flags & 0x01 != 0 {
        t = t.fin();
    }
    if flags & 0x02 != 0 {
        t = t.syn();
    }
    if flags & 0x04 != 0 {
        t = t.rst();
    }
    if flags & 0x10 != 0 {
        t = t.ack(ack);
    }
    let mut out = Vec::new();
    t.write(&mut out, &[]).unwrap();
    out
}

fn udp(from: SocketAddrV6, to: SocketAddrV6, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv6(from.ip().octets(), to.ip().octets(), 64)
        .udp(from.port(), to.port())
        .write(&mut out, payload)
        .unwrap();
    out
}

fn key(client: SocketAddrV6) -> FlowKey6 {
    FlowKey6::new(client, VIP, 6)
}

#[test]
fn a_new_ipv6_connection_picks_a_daemon_records_it_and_says_so() {
    let mut w = Worker::new(
        plane6(&[service6(Protocol::Tcp, PolicyKind::RoundRobin, 2)]),
        16,
    );
    let mut syn = tcp(CLIENT, VIP, 0x02, 1000, 0);
    let len = syn.len() as u64;
    assert!(w.forward(&mut syn, 10));
    let pkt = L4Frame6::parse(&mut syn).unwrap();
    assert_eq!((pkt.src(), pkt.dst()), (CLIENT, daemon(0)));
    assert_eq!(pkt.hop_limit(), 63);
    assert!(pkt.l4_checksum_ok(), "the rewrite keeps the checksum right");
    assert_eq!(pkt.macs().src, BACK_MAC);
    assert_eq!(pkt.macs().dst, HOP);
    let record = *w.table6.get(&key(CLIENT)).expect("recorded");
    assert_eq!((record.daemon(), record.backend), (daemon(0), BackendId(0)));
    assert_eq!(
        w.events6(),
        [Event6::Opened {
            worker: WorkerId(0),
            key: key(CLIENT),
            daemon: daemon(0),
            at_ns: 10
        }]
    );
    assert!(w.events4().is_empty(), "IPv4's ring carries none of it");
    assert_eq!(w.stats.new_flows.get(), 1);
    assert_eq!(w.plane.traffic[0].to_packets.get(), 1);
    assert_eq!(w.plane.traffic[0].to_bytes.get(), len);
    // The next connection goes to the other daemon; the handshake's ACK
    // follows the record and establishes it.
    let mut syn2 = tcp(client(1), VIP, 0x02, 1000, 0);
    assert!(w.forward(&mut syn2, 11));
    assert_eq!(L4Frame6::parse(&mut syn2).unwrap().dst(), daemon(1));
    let mut ack = tcp(CLIENT, VIP, 0x10, 1001, 1);
    assert!(w.forward(&mut ack, 12));
    assert_eq!(L4Frame6::parse(&mut ack).unwrap().dst(), daemon(0));
    let events = w.events6();
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[1],
        Event6::Established {
            key: key(CLIENT),
            at_ns: 12
        }
    );
    assert_eq!(w.stats.dropped_total() + w.stats.invalid_total(), 0);
}

#[test]
fn an_ipv6_reply_leaves_as_from_the_vip_and_its_fin_and_rst_are_reported() {
    let mut w = Worker::new(
        plane6(&[service6(Protocol::Tcp, PolicyKind::RoundRobin, 2)]),
        16,
    );
    let mut reply = tcp(daemon(1), CLIENT, 0x10, 5000, 1001);
    let len = reply.len() as u64;
    assert!(w.reverse(&mut reply, 20));
    let pkt = L4Frame6::parse(&mut reply).unwrap();
    assert_eq!((pkt.src(), pkt.dst()), (VIP, CLIENT));
    assert!(pkt.l4_checksum_ok());
    assert_eq!(w.plane.traffic[1].from_packets.get(), 1);
    assert_eq!(w.plane.traffic[1].from_bytes.get(), len);
    assert!(w.events6().is_empty(), "a plain reply makes no event");

    let mut fin = tcp(daemon(1), CLIENT, 0x11, 5000, 1001);
    assert!(w.reverse(&mut fin, 21));
    let mut rst = tcp(daemon(1), CLIENT, 0x04, 5001, 0);
    assert!(w.reverse(&mut rst, 22));
    assert_eq!(
        w.events6(),
        [
            Event6::Fin {
                key: key(CLIENT),
                from_client: false,
                at_ns: 21
            },
            Event6::DaemonRst {
                key: key(CLIENT),
                seq: 5001,
                at_ns: 22
            }
        ]
    );
    // Not from a configured daemon (another port): never rewritten.
    let stranger = SocketAddrV6::new(*daemon(1).ip(), 9999, 0, 0);
    assert!(!w.reverse(&mut tcp(stranger, CLIENT, 0x10, 1, 1), 23));
    assert_eq!(w.dropped(WorkerDrop::UnknownDaemon), 1);
}

#[test]
fn an_ipv6_client_fin_and_a_reset_in_its_window_end_the_connection() {
    let mut w = Worker::new(
        plane6(&[service6(Protocol::Tcp, PolicyKind::RoundRobin, 1)]),
        16,
    );
    assert!(w.forward(&mut tcp(CLIENT, VIP, 0x02, 1000, 0), 1));
    assert!(w.forward(&mut tcp(CLIENT, VIP, 0x10, 1001, 1), 2));
    // A reset far outside the window passes but ends nothing.
    assert!(w.forward(&mut tcp(CLIENT, VIP, 0x04, 1001 + (1 << 30), 0), 3));
    assert_eq!(w.stats.rst_ignored.get(), 1);
    assert!(w.forward(&mut tcp(CLIENT, VIP, 0x11, 1001, 1), 4));
    assert!(w.forward(&mut tcp(CLIENT, VIP, 0x04, 1002, 0), 5));
    let events = w.events6();
    assert_eq!(
        events[2..],
        [
            Event6::Fin {
                key: key(CLIENT),
                from_client: true,
                at_ns: 4
            },
            Event6::Reset {
                key: key(CLIENT),
                at_ns: 5
            }
        ]
    );
    let state = w.table6.get(&key(CLIENT)).unwrap().state;
    assert!(state.contains(TcpState::FIN_CLIENT) && state.contains(TcpState::RST));
    // A SYN reusing the closing connection's port starts a new one.
    assert!(w.forward(&mut tcp(CLIENT, VIP, 0x02, 9000, 0), 6));
    assert!(matches!(w.events6()[..], [Event6::Opened { at_ns: 6, .. }]));
    assert_eq!(w.table6.get(&key(CLIENT)).unwrap().created_ns, 6);
    assert_eq!(
        w.stats.new_flows.get(),
        2,
        "the reuse is a connection accepted"
    );
}

#[test]
fn an_ipv6_udp_flow_picks_on_its_first_datagram_and_follows_its_record() {
    let mut w = Worker::new(
        plane6(&[service6(Protocol::Udp, PolicyKind::RoundRobin, 2)]),
        2,
    );
    let udp_key = |c| FlowKey6::new(c, VIP, 17);
    for (i, at) in [(0u16, 1u64), (1, 2)] {
        let mut d = udp(client(i), VIP, b"query");
        assert!(w.forward(&mut d, at));
        let pkt = L4Frame6::parse(&mut d).unwrap();
        assert_eq!(pkt.dst(), daemon(i));
        assert!(pkt.l4_checksum_ok());
    }
    // The first flow's next datagram goes where its first went, and updates
    // the record's last activity; no further event.
    let mut again = udp(client(0), VIP, b"again");
    assert!(w.forward(&mut again, 7));
    assert_eq!(L4Frame6::parse(&mut again).unwrap().dst(), daemon(0));
    assert_eq!(w.table6.get(&udp_key(client(0))).unwrap().last_seen_ns, 7);
    let events = w.events6();
    assert_eq!(events.len(), 2);
    assert!(events
        .iter()
        .all(|e| matches!(e, Event6::Opened { key, .. } if key.protocol() == 17)));
    // The table holds two: a third flow is refused and counted.
    assert!(!w.forward(&mut udp(client(2), VIP, b"x"), 8));
    assert_eq!(w.dropped(WorkerDrop::TableFull), 1);
    assert!(w.table6.get(&udp_key(client(2))).is_none());
    // The daemon's answer leaves as from the VIP.
    let mut answer = udp(daemon(1), client(1), b"answer");
    assert!(w.reverse(&mut answer, 9));
    assert_eq!(L4Frame6::parse(&mut answer).unwrap().src(), VIP);
}

#[test]
fn an_ipv6_maglev_service_recovers_a_connection_on_another_instance() {
    let services = [service6(Protocol::Tcp, PolicyKind::Maglev, 5)];
    let mut a = Worker::new(plane6(&services), 64);
    let mut b = Worker::new(plane6(&services), 64);
    for i in 0..32 {
        let mut syn = tcp(client(i), VIP, 0x02, 1000, 0);
        assert!(a.forward(&mut syn, 1));
        let picked = L4Frame6::parse(&mut syn).unwrap().dst();
        // Instance b never saw the SYN: the next segment recovers the record
        // to the same daemon.
        let mut ack = tcp(client(i), VIP, 0x10, 1001, 1);
        assert!(b.forward(&mut ack, 2));
        assert_eq!(
            L4Frame6::parse(&mut ack).unwrap().dst(),
            picked,
            "client {i}"
        );
        let r = b.table6.get(&key(client(i))).unwrap();
        assert!(r.state.contains(TcpState::RECOVERED));
    }
    assert_eq!(b.stats.recovered.get(), 32);
    let events = b.events6();
    assert_eq!(events.len(), 32);
    assert!(events.iter().all(|e| matches!(e, Event6::Recovered { .. })));
    // A reset without a record is not recovered.
    assert!(!b.forward(&mut tcp(client(99), VIP, 0x14, 1, 1), 3));
    assert_eq!(b.dropped(WorkerDrop::NoFlow), 1);
}

#[test]
fn malformed_ipv6_frames_are_counted_drops_and_make_no_record() {
    let mut w = Worker::new(
        plane6(&[service6(Protocol::Tcp, PolicyKind::RoundRobin, 1)]),
        16,
    );
    // An extension header (hop-by-hop options) before TCP.
    let mut ext = Vec::new();
    PacketBuilder::ethernet2([2; 6], [4; 6])
        .ip(etherparse::IpHeaders::Ipv6(
            etherparse::Ipv6Header {
                source: CLIENT.ip().octets(),
                destination: VIP.ip().octets(),
                hop_limit: 64,
                ..Default::default()
            },
            etherparse::Ipv6Extensions {
                hop_by_hop_options: Some(
                    etherparse::Ipv6RawExtHeader::new_raw(0.into(), &[0; 6]).unwrap(),
                ),
                ..Default::default()
            },
        ))
        .tcp(CLIENT.port(), VIP.port(), 1, 64000)
        .syn()
        .write(&mut ext, &[])
        .unwrap();
    assert!(!w.forward(&mut ext, 1));
    assert_eq!(
        w.stats.invalid[DropReason::Ipv6ExtensionHeader.index()].get(),
        1
    );
    // Cut inside the IPv6 header.
    let mut cut = tcp(CLIENT, VIP, 0x02, 1, 0);
    cut.truncate(40);
    assert!(!w.forward(&mut cut, 2));
    assert_eq!(w.stats.invalid[DropReason::TruncatedIpv6.index()].get(), 1);
    // A hop limit of 1 is not forwarded.
    let mut last_hop = tcp(CLIENT, VIP, 0x02, 1, 0);
    last_hop[14 + 7] = 1;
    assert!(!w.forward(&mut last_hop, 3));
    assert_eq!(w.stats.invalid[DropReason::TtlExpired.index()].get(), 1);
    // A SYN whose checksum is wrong makes no state.
    let mut bad = tcp(CLIENT, VIP, 0x02, 1, 0);
    let at = bad.len() - 20 + 16;
    bad[at] ^= 0xff;
    assert!(!w.forward(&mut bad, 4));
    assert_eq!(w.dropped(WorkerDrop::BadSynChecksum), 1);
    // Not a service: another port.
    let other = SocketAddrV6::new(*VIP.ip(), 81, 0, 0);
    assert!(!w.forward(&mut tcp(CLIENT, other, 0x02, 1, 0), 5));
    assert_eq!(w.dropped(WorkerDrop::UnknownService), 1);
    assert!(w.table6.is_empty() && w.events6().is_empty());
    // The reverse path counts its own.
    let mut short = tcp(daemon(0), CLIENT, 0x10, 1, 1);
    short.truncate(50);
    assert!(!w.reverse(&mut short, 6));
    assert_eq!(w.stats.invalid_total(), 4);
}

/// An ICMPv6 error `kind` from `from` to `to`, quoting `quoted` (a frame).
fn icmp6(kind: Icmpv6Type, from: Ipv6Addr, to: Ipv6Addr, quoted: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv6(from.octets(), to.octets(), 64)
        .icmpv6(kind)
        .write(&mut out, &quoted[14..])
        .unwrap();
    out
}

#[test]
fn an_icmpv6_error_from_the_front_goes_to_the_loop_as_it_came() {
    let mut w = Worker::new(
        plane6(&[service6(Protocol::Tcp, PolicyKind::RoundRobin, 2)]),
        16,
    );
    assert!(w.forward(&mut tcp(CLIENT, VIP, 0x02, 1000, 0), 1));
    let router = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 1);
    // A router on the way to the client says the reply (VIP -> client) is too big.
    let reply = tcp(VIP, CLIENT, 0x10, 5000, 1001);
    let mut error = icmp6(
        Icmpv6Type::PacketTooBig { mtu: 1280 },
        router,
        *VIP.ip(),
        &reply,
    );
    assert!(!w.forward(&mut error, 2), "the worker frees its frame");
    assert_eq!(w.stats.icmp_to_loop.get(), 1);
    w.sink.flush();
    let mut copy = w.main.frames.try_pop().expect("a copy for the loop");
    // The loop gets the error as it came, to translate with its IPv6 tracker
    // (`control::icmp::to_daemon6`, tested there).
    assert_eq!(copy.bytes_mut(), &error[..]);
    // A broken one is the worker's counted drop.
    let mut broken = icmp6(
        Icmpv6Type::PacketTooBig { mtu: 1280 },
        router,
        *VIP.ip(),
        &reply,
    );
    let last = broken.len() - 1;
    broken[last] ^= 0x5a;
    assert!(!w.forward(&mut broken, 3));
    assert_eq!(
        w.stats.icmpv6_invalid[Icmpv6Drop::BadChecksum.index()].get(),
        1
    );
}

#[test]
fn an_icmpv6_error_from_the_back_is_translated_for_the_client() {
    let mut w = Worker::new(
        plane6(&[service6(Protocol::Tcp, PolicyKind::RoundRobin, 2)]),
        16,
    );
    let router = Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 1);
    // The segment as the daemon's side saw it: client -> daemon.
    let segment = tcp(CLIENT, daemon(1), 0x10, 1001, 1);
    let kind = Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port);
    let mut error = icmp6(kind, router, *CLIENT.ip(), &segment);
    assert!(w.reverse(&mut error, 1));
    let e = Icmpv6Error::parse(&mut error).expect("still a valid error");
    assert_eq!(
        e.outer_src(),
        *VIP.ip(),
        "from the VIP, as the client knows it"
    );
    assert_eq!((e.quoted_src(), e.quoted_dst()), (CLIENT, VIP));
    assert_eq!(w.stats.icmp_to_client.get(), 1);
    // About a daemon that is not configured: dropped, counted.
    let stranger = SocketAddrV6::new(*daemon(1).ip(), 9, 0, 0);
    let mut other = icmp6(
        kind,
        router,
        *CLIENT.ip(),
        &tcp(CLIENT, stranger, 0x10, 1, 1),
    );
    assert!(!w.reverse(&mut other, 2));
    assert_eq!(w.dropped(WorkerDrop::UnknownDaemon), 1);
}

#[test]
fn a_dual_stack_plane_numbers_ipv6_daemons_after_ipv4_ones_and_keeps_them_on_reload() {
    let v4 = |n: u8| ServiceConfig {
        address: VIP4,
        protocol: Protocol::Tcp,
        policy: PolicyKind::RoundRobin,
        backends: (0..n)
            .map(|i| BackendSpec {
                addr: SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 11 + i), 8080),
                weight: 1,
            })
            .collect(),
        health: Default::default(),
    };
    let six = [service6(Protocol::Tcp, PolicyKind::RoundRobin, 2)];
    let build = |n: u8, retired: &[Retired]| {
        let count = usize::from(n) + 2 + retired.len();
        Dataplane::build(WorkerId(0), &[v4(n)], &six, retired, hops(count), BACK_MAC).unwrap()
    };
    let mut w = Worker::new(build(1, &[]), 16);
    assert!(w.forward(&mut tcp(CLIENT, VIP, 0x02, 1000, 0), 1));
    assert_eq!(w.table6.get(&key(CLIENT)).unwrap().backend, BackendId(1));
    assert_eq!(
        w.plane.traffic[1].to_packets.get(),
        1,
        "the IPv6 daemon's own counters"
    );
    // An IPv4 connection beside it.
    let mut syn4 = testing::segment(
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 4000),
        VIP4,
        0x02,
    );
    assert!(w.forward(&mut syn4, 1));
    assert_eq!(w.table.len(), 1);
    assert_eq!(w.events4().len(), 1);
    assert_eq!(w.events6().len(), 1);

    // A reload adds an IPv4 daemon: the IPv6 daemons' ids move up by one, and
    // the record is re-pointed by address when next met.
    let mut new = build(2, &[]);
    new.take_over(&w.plane);
    w.plane = new;
    assert!(w.forward(&mut tcp(CLIENT, VIP, 0x10, 1001, 1), 2));
    assert_eq!(w.table6.get(&key(CLIENT)).unwrap().backend, BackendId(2));
    assert_eq!(
        w.plane.services6[0].pool.active(PoolIndex(0)),
        1,
        "its count carried"
    );

    // Removed by a reload with on_remove = "finish": retired, the connection
    // goes on, its replies still leave as from the VIP, no new one goes there.
    let retired = [Retired {
        daemon: daemon(0).into(),
        service: VIP.into(),
        protocol: Protocol::Tcp,
    }];
    let six_left = [Service6Config {
        backends: vec![BackendSpec {
            addr: daemon(1),
            weight: 1,
        }],
        ..six[0].clone()
    }];
    let mut held = Dataplane::build(
        WorkerId(0),
        &[v4(2)],
        &six_left,
        &retired,
        hops(4),
        BACK_MAC,
    )
    .unwrap();
    held.take_over(&w.plane);
    w.plane = held;
    let mut ack = tcp(CLIENT, VIP, 0x10, 1001, 1);
    assert!(w.forward(&mut ack, 3));
    assert_eq!(L4Frame6::parse(&mut ack).unwrap().dst(), daemon(0));
    assert_eq!(w.table6.get(&key(CLIENT)).unwrap().backend, BackendId(3));
    let mut reply = tcp(daemon(0), CLIENT, 0x10, 1, 1);
    assert!(w.reverse(&mut reply, 3));
    assert_eq!(L4Frame6::parse(&mut reply).unwrap().src(), VIP);
    let mut syn = tcp(client(5), VIP, 0x02, 1, 0);
    assert!(w.forward(&mut syn, 4));
    assert_eq!(L4Frame6::parse(&mut syn).unwrap().dst(), daemon(1));
    // A retired daemon of the wrong family for its service is refused.
    let mixed = [Retired {
        daemon: daemon(0).into(),
        service: VIP4.into(),
        protocol: Protocol::Tcp,
    }];
    assert!(Dataplane::build(WorkerId(0), &[v4(1)], &[], &mixed, hops(2), BACK_MAC).is_err());
}

#[test]
fn ipv6_syns_are_clamped_to_the_same_paths_ipv6_mss() {
    let plane =
        plane6(&[service6(Protocol::Tcp, PolicyKind::RoundRobin, 1)]).with_mss_clamp(Some(1400));
    let mut w = Worker::new(plane, 16);
    let mut syn = Vec::new();
    PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv6(CLIENT.ip().octets(), VIP.ip().octets(), 64)
        .tcp(CLIENT.port(), VIP.port(), 7, 64240)
        .syn()
        .options(&[TcpOptionElement::MaximumSegmentSize(1440)])
        .unwrap()
        .write(&mut syn, &[])
        .unwrap();
    assert!(w.forward(&mut syn, 1));
    assert_eq!(w.stats.mss_clamped.get(), 1);
    let pkt = L4Frame6::parse(&mut syn).unwrap();
    assert!(pkt.l4_checksum_ok());
    // The IPv4 MSS 1400 is a 1440-byte path: 1380 for IPv6's longer header.
    assert_eq!(
        u16::from_be_bytes([syn[14 + 40 + 22], syn[14 + 40 + 23]]),
        1380
    );
    assert_eq!(super::ipv6_mss(536), 1220, "never below IPv6's minimum MTU");
}

/// The ring of IPv6 events is the IPv4 one's twin: a worker's IPv6 events wait
/// in their own overflow when it is full and arrive in order.
#[test]
fn ipv6_events_have_their_own_ring_and_lose_nothing() {
    let mut w = Worker::new(
        plane6(&[service6(Protocol::Udp, PolicyKind::RoundRobin, 1)]),
        256,
    );
    for i in 0..100 {
        assert!(w.forward(&mut udp(client(i), VIP, b"x"), u64::from(i)));
    }
    assert!(w.stats.events_deferred.get() > 0, "a ring of 64 overflowed");
    let mut seen: Vec<Event6> = Vec::new();
    while seen.len() < 100 {
        seen.extend(w.events6());
    }
    let at: Vec<u64> = seen
        .iter()
        .map(|e| match e {
            Event6::Opened { at_ns, .. } => *at_ns,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(at, (0..100).collect::<Vec<_>>());
    assert_eq!(w.stats.events_dropped.get(), 0);
}

/// An IPv6 daemon ADDR:PORT behind the TCP and the UDP service is two daemons:
/// after a reload that gives them other ids, each record finds its own by its
/// key's protocol, with its own state.
#[test]
fn an_ipv6_daemon_of_a_tcp_and_a_udp_service_is_two_daemons_across_a_reload() {
    let tcp = service6(Protocol::Tcp, PolicyKind::RoundRobin, 1);
    let udp = service6(Protocol::Udp, PolicyKind::RoundRobin, 1);
    let mut old = plane6(&[tcp.clone(), udp.clone()]);
    let d = daemon(0);
    assert_eq!(old.ids6.get(&(d, 6)), Some(&BackendId(0)));
    assert_eq!(old.ids6.get(&(d, 17)), Some(&BackendId(1)));
    old.set_backend_state(BackendId(0), BackendState::Draining);
    let record = |protocol: u8, backend| FlowRecord6 {
        key: FlowKey6::new(CLIENT, VIP, protocol),
        backend,
        daemon_ip: *d.ip(),
        daemon_port: d.port(),
        created_ns: 1,
        last_seen_ns: 1,
        client_next: 0,
        client_ack: 0,
        state: Default::default(),
        epoch: 0,
    };
    let mut new = plane6(&[udp, tcp]);
    new.take_over(&old);
    let (mut t, mut u) = (record(6, BackendId(0)), record(17, BackendId(1)));
    assert!(new.current6(&mut t) && new.current6(&mut u));
    assert_eq!((t.backend, u.backend), (BackendId(1), BackendId(0)));
    assert_eq!(
        new.services6[1].pool.state(PoolIndex(0)),
        BackendState::Draining
    );
    assert_eq!(new.services6[0].pool.state(PoolIndex(0)), BackendState::Up);
}
