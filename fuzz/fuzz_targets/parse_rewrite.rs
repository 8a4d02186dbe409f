//! Any bytes as a frame: parsing never panics, and when a frame parses, every
//! rewrite leaves checksums equal to a full recomputation, touches only the fields
//! it should, and the per-packet functions of the worker run without panicking.
//! The same for ICMP errors: a translated error's IPv4 and ICMP checksums still
//! verify.
#![no_main]

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    sync::Arc,
};

use dispatchd::{
    balance::{BackendSpec, PolicyKind},
    config::ServiceConfig,
    dataplane::{reverse, Dataplane, Forwarder, FrameHandler},
    flow::FlowTable,
    ids::WorkerId,
    neigh::NextHop,
    protocol::{self, Wake},
    packet::{checksum, icmp::IcmpError, L4Frame, L4Proto, MacPair},
    stats::WorkerStats,
    sys::EventFd,
};
use libfuzzer_sys::fuzz_target;

fn addr(b: &[u8]) -> SocketAddrV4 {
    let g = |i: usize| b.get(i).copied().unwrap_or(0);
    SocketAddrV4::new(Ipv4Addr::new(g(0), g(1), g(2), g(3)), u16::from_be_bytes([g(4), g(5)]))
}

/// A TCP segment whose checksum field makes the full sum (with pseudo-header)
/// come out as all ones. UDP is covered by the property tests.
fn tcp_checksum_ok(src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> bool {
    let pseudo = checksum::pseudo_header_ipv4(src, dst, 6, segment.len() as u16);
    checksum::fold(checksum::sum(segment, pseudo)) == 0xFFFF
}

/// The frame's checksums are what a full computation gives.
fn checksums_hold(frame: &mut [u8], before_ok: (bool, bool)) {
    let Ok(pkt) = L4Frame::parse(frame) else { return };
    let bytes = pkt.as_bytes();
    let ip_ok = checksum::verify(&bytes[14..34]);
    let total = usize::from(pkt.ip_total_len());
    let (src, dst) = (*pkt.src().ip(), *pkt.dst().ip());
    let segment = &bytes[34..14 + total];
    let proto = pkt.protocol();
    let l4_ok = proto == L4Proto::Udp || tcp_checksum_ok(src, dst, segment);
    // A rewrite keeps a correct checksum correct (and a wrong one wrong).
    if before_ok.0 {
        assert!(ip_ok, "IPv4 checksum broken by the rewrite");
    }
    if before_ok.1 {
        assert!(l4_ok, "L4 checksum broken by the rewrite");
    }
}

/// A valid ICMP error stays valid through either translation: its checksums
/// were verified by the parse and must still verify by a full computation.
fn icmp_translations(knobs: &[u8], frame: &[u8]) {
    let mut buf = frame.to_vec();
    let Ok(mut error) = IcmpError::parse(&mut buf) else { return };
    let target = addr(&knobs[..6]);
    if knobs[6] & 1 == 0 {
        let macs = MacPair { src: [2, 0, 0, 0, 0, 1], dst: [2, 0, 0, 0, 0, 2] };
        error.rewrite_to_daemon(target, &macs);
        assert_eq!(error.quoted_src(), target);
    } else {
        error.rewrite_to_client(target);
        assert_eq!(error.quoted_dst(), target);
    }
    error.truncate(usize::from(knobs[7]) * 8);
    let len = error.frame_len();
    assert!(checksum::verify(&buf[14..34]), "IPv4 checksum broken by the translation");
    assert!(checksum::verify(&buf[34..len]), "ICMP checksum broken by the translation");
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 12 {
        return;
    }
    let (knobs, frame) = data.split_at(12);
    icmp_translations(knobs, frame);
    worker_path(knobs, frame);
    let mut buf = frame.to_vec();
    let Ok(pkt) = L4Frame::parse(&mut buf) else { return };
    let bytes = pkt.as_bytes();
    let total = usize::from(pkt.ip_total_len());
    let (src, dst) = (*pkt.src().ip(), *pkt.dst().ip());
    let proto = pkt.protocol();
    let before = (
        checksum::verify(&bytes[14..34]),
        proto == L4Proto::Udp || tcp_checksum_ok(src, dst, &bytes[34..14 + total]),
    );
    let payload = pkt.l4_payload().to_vec();
    let ttl = pkt.ttl();
    drop(pkt);

    let macs = MacPair { src: [2, 0, 0, 0, 0, 1], dst: [2, 0, 0, 0, 0, 2] };
    let target = addr(&knobs[..6]);
    let mut pkt = L4Frame::parse(&mut buf).expect("parsed a moment ago");
    if knobs[6] & 1 == 0 {
        pkt.rewrite_forward(target, &macs);
        assert_eq!(pkt.dst(), target);
    } else {
        pkt.rewrite_reverse(target, &macs);
        assert_eq!(pkt.src(), target);
    }
    assert_eq!(pkt.ttl(), ttl - 1);
    assert_eq!(pkt.l4_payload(), &payload[..], "payload untouched");
    drop(pkt);
    checksums_hold(&mut buf, before);
});

/// The worker's own per-packet path, on a tiny table that fills up: any frame,
/// TCP, UDP, ICMP or garbage.
fn worker_path(knobs: &[u8], frame: &[u8]) {
    let services = [ServiceConfig {
        address: addr(&knobs[6..12]),
        policy: if knobs[6] & 2 == 0 { PolicyKind::RoundRobin } else { PolicyKind::Maglev },
        backends: vec![BackendSpec { addr: SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 11), 8080), weight: 1 }],
    }];
    let hops: Arc<[NextHop]> = vec![NextHop::default()].into();
    hops[0].set(Some([2, 0, 0, 0, 0, 3]));
    let plane = Dataplane::build(WorkerId(0), &services, &[], hops, [2, 0, 0, 0, 0, 4]);
    let Ok(mut plane) = plane else { return };
    let mut table = FlowTable::with_capacity(2);
    let stats = WorkerStats::default();
    let wake = Arc::new(Wake::new(EventFd::new().expect("eventfd")));
    let (worker, _main) = protocol::link::<Dataplane>(wake, 64);
    let mut sink = worker.events;
    // Forward as the worker's batch loop does: the prefetch's hint comes along.
    let mut forwarder = Forwarder {
        table: &mut table,
        plane: &mut plane,
        events: &mut sink,
        stats: &stats,
        now_ns: 1,
    };
    let mut copy = frame.to_vec();
    let hint = forwarder.prefetch(&copy);
    forwarder.handle(&mut copy, hint);
    let mut copy = frame.to_vec();
    reverse(&mut copy, &plane, &mut sink, &stats, 2);
}
