//! Per-packet cost of the worker's decisions and rewrites: exactly the functions
//! the worker calls per frame (`dataplane::forward` / `reverse`), on frames built by
//! an independent encoder, with no rings or syscalls involved.
//!
//! The rewrite changes a frame in place, so frames are processed from a working
//! set that is restored from templates between passes, outside the timing (like
//! UMEM frames, which the kernel wrote and nothing of ours has in flight).
use std::{
    hint::black_box,
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
    sync::Arc,
    time::{Duration, Instant},
};

use criterion::{criterion_group, criterion_main, Criterion};
use dispatchd::{
    balance::{BackendSpec, PolicyKind},
    config::{
        Service6Config, ServiceConfig, DEFAULT_BATCH, DEFAULT_EVENT_RING, DEFAULT_FLOW_CAPACITY,
        DEFAULT_FRAMES_PER_QUEUE,
    },
    control::takeover,
    dataplane::{forward, forward6, pipelined, Dataplane, Forwarder, FrameHandler, Reverser},
    flow::{FlowKey, FlowKey6, FlowRecord, FlowTable, FlowTable6, TcpState},
    ids::{BackendId, WorkerId},
    neigh::NextHop,
    packet::{ipv6::L4Frame6, L4Frame, MacPair},
    prefetch::prefetch_start,
    protocol::{self, Wake},
    stats::WorkerStats,
    sys::EventFd,
    tracked::ReplyTracker,
    xdp::{self, ReplyKey, TrackedMap},
    xsk,
};
use dispatchd_testkit::frame::{tcp_flags, FrameSpec};

const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 80);
/// The UDP rows' service: the same VIP and port, protocol UDP.
const UDP: u8 = 17;
const ESTABLISHED_FLOWS: u32 = 1_000_000;
/// Distinct frames cycled through, so lookups touch the table like real traffic.
const FRAME_SET: usize = 4096;

fn daemons() -> Vec<BackendSpec> {
    (0..4)
        .map(|i| BackendSpec {
            addr: SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 11 + i), 8080),
            weight: 1,
        })
        .collect()
}

fn plane(policy: PolicyKind) -> Dataplane {
    plane_of(policy, dispatchd::config::Protocol::Tcp)
}

fn plane_of(policy: PolicyKind, protocol: dispatchd::config::Protocol) -> Dataplane {
    let backends = daemons();
    let next_hops: Arc<[NextHop]> = backends.iter().map(|_| NextHop::default()).collect();
    for hop in next_hops.iter() {
        hop.set(Some([0x02, 0, 0, 0, 0, 0x22]));
    }
    let services = [ServiceConfig {
        address: VIP,
        protocol,
        policy,
        backends,
        health: Default::default(),
    }];
    Dataplane::build(
        WorkerId(0),
        &services,
        &[],
        &[],
        next_hops,
        [0x02, 0, 0, 0, 0, 0x11],
    )
    .expect("valid services")
}

/// The i-th client: spread over a /12 and the whole port range.
fn client(i: u32) -> SocketAddrV4 {
    let ip = Ipv4Addr::from(0x0a00_0000 | (i >> 4));
    SocketAddrV4::new(ip, 1024 + (i & 0xf) as u16 * 4000)
}

fn tcp_frame(src: SocketAddrV4, dst: SocketAddrV4, syn: bool, payload: usize) -> Vec<u8> {
    let spec = FrameSpec {
        tcp_flags: if syn { tcp_flags::SYN } else { tcp_flags::ACK },
        seq: 1000,
        ack: u32::from(!syn),
        window: 64240,
        payload: vec![0x5a; payload],
        ..FrameSpec::tcp(src, dst)
    };
    spec.build().into_bytes()
}

fn udp_frame(src: SocketAddrV4, dst: SocketAddrV4, payload: usize) -> Vec<u8> {
    FrameSpec {
        payload: vec![0x5a; payload],
        ..FrameSpec::udp(src, dst)
    }
    .build()
    .into_bytes()
}

/// Times `handler` over `iters` frames taken in turn from `templates`, prefetching
/// ahead like a worker does within a batch; the working copies are restored after
/// each pass, untimed.
fn timed_passes(templates: &[Vec<u8>], iters: u64, handler: &mut impl FrameHandler) -> Duration {
    let mut work = templates.to_vec();
    let mut elapsed = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(work.len() as u64) as usize;
        let start = Instant::now();
        pipelined(
            &mut work[..n],
            handler,
            |frame: &Vec<u8>| prefetch_start(frame),
            |h, frame| h.prefetch(frame),
            |h, frame, hint| {
                black_box(h.handle(frame, hint));
            },
        );
        elapsed += start.elapsed();
        for (w, t) in work[..n].iter_mut().zip(templates) {
            w.copy_from_slice(t);
        }
        left -= n as u64;
    }
    elapsed
}

/// A UMEM frame's slot.
const UMEM_SLOT: usize = xsk::FRAME_SIZE as usize;

/// Times `handler` over `iters` frames laid out like a worker's UMEM under
/// load (see [`umem_rooms`]), a batch of the worker's default size at a time,
/// the rooms taken in their order from `next` on (kept across calls, so that
/// every sample comes back to a room only after all the others). Between two
/// visits of a frame, the batches touch the header lines of all the other
/// frames (1 MiB at the default UMEM size; the L2 of this VM is 1 MiB a core) beside
/// the flow table's lines, each in a 4 KiB page of its own (far more pages
/// than the TLB holds, as in a UMEM on ordinary pages, the default): its
/// headers are out of the L2 and its page out of the TLB when its batch comes.
/// Each batch's frames are restored after it, untimed.
fn timed_umem_batches(
    rooms: &mut [(&mut [u8], &[u8])],
    next: &mut usize,
    iters: u64,
    handler: &mut impl FrameHandler,
) -> Duration {
    let mut elapsed = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        if *next + DEFAULT_BATCH > rooms.len() {
            *next = 0;
        }
        let n = left.min(DEFAULT_BATCH as u64) as usize;
        let batch = &mut rooms[*next..*next + n];
        let start = Instant::now();
        pipelined(
            batch,
            handler,
            |(frame, _)| prefetch_start(frame),
            |h, (frame, _)| h.prefetch(frame),
            |h, (frame, _), hint| {
                black_box(h.handle(frame, hint));
            },
        );
        elapsed += start.elapsed();
        for (frame, template) in batch.iter_mut() {
            frame.copy_from_slice(template);
        }
        *next += n;
        left -= n as u64;
    }
    elapsed
}

/// `templates` cycled over a UMEM's slots, one frame at the start of each
/// 4 KiB slot of `umem`, each with its template; in a shuffled order, since a
/// worker refills its fill ring from a free list, so a batch's frames are not
/// at ascending addresses that a hardware prefetcher could follow.
fn umem_rooms<'a>(umem: &'a mut [u8], templates: &'a [Vec<u8>]) -> Vec<(&'a mut [u8], &'a [u8])> {
    let mut rooms: Vec<(&mut [u8], &[u8])> = umem
        .chunks_mut(UMEM_SLOT)
        .zip(templates.iter().cycle())
        .map(|(room, t)| {
            let frame = &mut room[..t.len()];
            frame.copy_from_slice(t);
            (frame, t.as_slice())
        })
        .collect();
    // Fisher-Yates over a xorshift sequence: the same order every run.
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    for i in (1..rooms.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        rooms.swap(i, (x % (i as u64 + 1)) as usize);
    }
    rooms
}

fn bench(c: &mut Criterion) {
    let stats = WorkerStats::default();
    // The worker's real event queue, at its real size (its slots cycle through
    // the cache like in the daemon); emptied between timed passes like the
    // management loop does.
    let wake = Arc::new(Wake::new(EventFd::new().expect("eventfd")));
    let (worker, main) = protocol::link::<Dataplane>(wake, DEFAULT_EVENT_RING).expect("eventfd");
    let (mut sink, mut events, mut events6) = (worker.events, main.events, main.events6);

    // A table with one million established connections, made through the real
    // new-connection path.
    let mut table = FlowTable::with_capacity(DEFAULT_FLOW_CAPACITY);
    // The IPv4 rows' IPv6 table: empty, as in an IPv4-only process.
    let mut empty6 = FlowTable6::with_capacity(0);
    let mut rr = plane(PolicyKind::RoundRobin);
    let mut opened = 0;
    for i in 0..ESTABLISHED_FLOWS {
        let mut syn = tcp_frame(client(i), VIP, true, 0);
        assert!(forward(
            &mut syn, &mut table, &mut rr, &mut sink, &stats, 1, None
        ));
        if i % 1024 == 0 {
            sink.flush();
            opened += events.try_iter().count();
        }
    }
    sink.flush();
    opened += events.try_iter().count();
    assert_eq!(table.len(), ESTABLISHED_FLOWS as usize);
    assert_eq!(opened, ESTABLISHED_FLOWS as usize, "one Opened event each");
    let step = ESTABLISHED_FLOWS / FRAME_SET as u32;
    let acks: Vec<Vec<u8>> = (0..FRAME_SET as u32)
        .map(|k| tcp_frame(client(k * step), VIP, false, 0))
        .collect();

    let mut g = c.benchmark_group("packet_path");
    g.measurement_time(Duration::from_secs(4));

    // A few busy connections among the million: their records stay in cache,
    // as a connection's packets arrive in bursts.
    let hot: Vec<Vec<u8>> = acks[..16].iter().cycle().take(FRAME_SET).cloned().collect();
    // The cold row's frames as the worker meets them under load: out of the
    // cache, in the slots of a UMEM of the default size (see
    // `timed_umem_batches`).
    let slots = xsk::umem_frames(DEFAULT_FRAMES_PER_QUEUE, 2) as usize;
    let mut umem = vec![0u8; slots * UMEM_SLOT];
    let mut rooms = umem_rooms(&mut umem, &acks);
    let mut next_room = 0;
    // Each packet from another of 4096 connections spread over the whole 88 MiB
    // table: every lookup touches lines of its own, far more than L1 holds.
    for (name, frames) in [
        ("forward_established_hot_1m_flows", Some(&hot)),
        ("forward_established_cold_1m_flows", Some(&acks)),
        ("forward_established_cold_1m_flows_umem_frames", None),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut handler = Forwarder {
                    table: &mut table,
                    table6: &mut empty6,
                    plane: &mut rr,
                    events: &mut sink,
                    stats: &stats,
                    now_ns: 2,
                };
                match frames {
                    Some(frames) => timed_passes(frames, iters, &mut handler),
                    None => timed_umem_batches(&mut rooms, &mut next_room, iters, &mut handler),
                }
            })
        });
    }
    drop(rooms);
    drop(umem);

    // New connections: fresh clients each time, timed over select + insert +
    // rewrite, in chunks small enough to fit beside the million established
    // records; each chunk's records are removed afterwards, outside the timing.
    const CHUNK: u32 = 16_384;
    let fresh = |k: u32| client(ESTABLISHED_FLOWS + k);
    let syns: Vec<Vec<u8>> = (0..CHUNK)
        .map(|k| tcp_frame(fresh(k), VIP, true, 0))
        .collect();
    // Mid-connection segments of the same fresh clients: records recovered
    // by a maglev service (the rare path after a restart or an ECMP move).
    let lost: Vec<Vec<u8>> = (0..CHUNK)
        .map(|k| tcp_frame(fresh(k), VIP, false, 0))
        .collect();
    // Last, the round-robin case again with the journal reply_mode "tracked"
    // keeps (emptied outside the timing, as the worker's sync would): the
    // worker's own share of a tracked connection, without the map writes.
    for (policy, journal, frames, what) in [
        (PolicyKind::RoundRobin, false, &syns, "new_connection"),
        (PolicyKind::Maglev, false, &syns, "new_connection"),
        (PolicyKind::LeastConnections, false, &syns, "new_connection"),
        (PolicyKind::Maglev, false, &lost, "recovered_connection"),
        (PolicyKind::RoundRobin, true, &syns, "new_connection"),
    ] {
        let mut p = plane(policy);
        if journal {
            table.keep_journal(CHUNK as usize * 2);
        }
        let name = if journal { "_journal" } else { "" };
        g.bench_function(format!("{what}_{policy}{name}"), |b| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(u64::from(CHUNK)) as usize;
                    let mut handler = Forwarder {
                        table: &mut table,
                        table6: &mut empty6,
                        plane: &mut p,
                        events: &mut sink,
                        stats: &stats,
                        now_ns: 3,
                    };
                    elapsed += timed_passes(&frames[..n], n as u64, &mut handler);
                    for k in 0..n as u32 {
                        table.remove(&FlowKey::new(fresh(k), VIP, 6));
                    }
                    table.drain_journal().for_each(drop);
                    sink.flush();
                    events.try_iter().for_each(drop);
                    left -= n as u64;
                }
                elapsed
            })
        });
    }

    let replies: Vec<Vec<u8>> = (0..FRAME_SET as u32)
        .map(|k| tcp_frame(daemons()[k as usize % 4].addr, client(k), false, 0))
        .collect();
    g.bench_function("reverse", |b| {
        b.iter_custom(|iters| {
            let mut handler = Reverser {
                plane: &rr,
                events: &mut sink,
                stats: &stats,
                now_ns: 2,
            };
            timed_passes(&replies, iters, &mut handler)
        })
    });
    drop(table);
    udp_rows(&mut g, &stats, &mut sink, &mut events);
    ipv6_rows(&mut g, &stats, &mut sink, &mut events6);
    tracked_sync(&mut g);
    packet_core(&mut g);
    g.finish();
    takeover_copy(c);
    assert_eq!(
        stats.invalid_total() + stats.dropped_total(),
        0,
        "every benchmarked frame was forwarded"
    );
}

/// The UDP rows, on a table of their own with a million UDP flows (the TCP
/// table is dropped first): a datagram of an established flow (cold, as the
/// TCP row), a flow's first datagram, and a daemon's answer.
fn udp_rows(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    stats: &WorkerStats,
    sink: &mut protocol::EventSink,
    events: &mut protocol::ring::Consumer<protocol::Event>,
) {
    let mut table = FlowTable::with_capacity(DEFAULT_FLOW_CAPACITY);
    let mut empty6 = FlowTable6::with_capacity(0);
    let mut rr = plane_of(PolicyKind::RoundRobin, dispatchd::config::Protocol::Udp);
    for i in 0..ESTABLISHED_FLOWS {
        let mut first = udp_frame(client(i), VIP, 32);
        assert!(forward(
            &mut first, &mut table, &mut rr, sink, stats, 1, None
        ));
        if i % 1024 == 0 {
            sink.flush();
            events.try_iter().for_each(drop);
        }
    }
    sink.flush();
    events.try_iter().for_each(drop);
    assert_eq!(table.len(), ESTABLISHED_FLOWS as usize);
    let step = ESTABLISHED_FLOWS / FRAME_SET as u32;
    let datagrams: Vec<Vec<u8>> = (0..FRAME_SET as u32)
        .map(|k| udp_frame(client(k * step), VIP, 32))
        .collect();
    g.bench_function("forward_udp_established_cold_1m_flows", |b| {
        b.iter_custom(|iters| {
            let mut handler = Forwarder {
                table: &mut table,
                table6: &mut empty6,
                plane: &mut rr,
                events: &mut *sink,
                stats,
                now_ns: 2,
            };
            timed_passes(&datagrams, iters, &mut handler)
        })
    });
    const CHUNK: u32 = 16_384;
    let fresh = |k: u32| client(ESTABLISHED_FLOWS + k);
    let firsts: Vec<Vec<u8>> = (0..CHUNK).map(|k| udp_frame(fresh(k), VIP, 32)).collect();
    g.bench_function("new_udp_flow_round_robin", |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(u64::from(CHUNK)) as usize;
                let mut handler = Forwarder {
                    table: &mut table,
                    table6: &mut empty6,
                    plane: &mut rr,
                    events: &mut *sink,
                    stats,
                    now_ns: 3,
                };
                elapsed += timed_passes(&firsts[..n], n as u64, &mut handler);
                for k in 0..n as u32 {
                    table.remove(&FlowKey::new(fresh(k), VIP, UDP));
                }
                sink.flush();
                events.try_iter().for_each(drop);
                left -= n as u64;
            }
            elapsed
        })
    });
    let answers: Vec<Vec<u8>> = (0..FRAME_SET as u32)
        .map(|k| udp_frame(daemons()[k as usize % 4].addr, client(k), 32))
        .collect();
    g.bench_function("reverse_udp", |b| {
        b.iter_custom(|iters| {
            let mut handler = Reverser {
                plane: &rr,
                events: &mut *sink,
                stats,
                now_ns: 2,
            };
            timed_passes(&answers, iters, &mut handler)
        })
    });
}

/// The IPv6 rows, TCP then UDP, each on a table of its own with a million
/// flows of its protocol (the IPv4 tables are dropped first): a segment or
/// datagram of an established flow (cold, as the IPv4 rows), a flow's first
/// frame, a daemon's answer. Frames come in through the `Forwarder` and
/// `Reverser` the worker uses, so the family dispatch is part of the cost.
fn ipv6_rows(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    stats: &WorkerStats,
    sink: &mut protocol::EventSink,
    events: &mut protocol::ring::Consumer<protocol::Event6>,
) {
    use dispatchd::config::Protocol;
    let vip6 = SocketAddrV6::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100), 80, 0, 0);
    let daemons6: Vec<BackendSpec<SocketAddrV6>> = (0..4)
        .map(|i| BackendSpec {
            addr: SocketAddrV6::new(
                Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 11 + i),
                8080,
                0,
                0,
            ),
            weight: 1,
        })
        .collect();
    let plane6 = |protocol| {
        let next_hops: Arc<[NextHop]> = daemons6.iter().map(|_| NextHop::default()).collect();
        for hop in next_hops.iter() {
            hop.set(Some([0x02, 0, 0, 0, 0, 0x22]));
        }
        let services6 = [Service6Config {
            address: vip6,
            protocol,
            policy: PolicyKind::RoundRobin,
            backends: daemons6.clone(),
            health: Default::default(),
        }];
        Dataplane::build(
            WorkerId(0),
            &[],
            &services6,
            &[],
            next_hops,
            [2, 0, 0, 0, 0, 0x11],
        )
        .expect("valid services")
    };
    // The i-th client: 2^20 addresses of a /64 and the whole port range.
    let client6 = |i: u32| {
        let ip = Ipv6Addr::new(
            0x2001,
            0xdb8,
            0xc,
            0,
            0,
            0,
            (i >> 20) as u16,
            (i >> 4) as u16,
        );
        SocketAddrV6::new(ip, 1024 + (i & 0xf) as u16 * 4000, 0, 0)
    };
    let frame6 =
        |protocol, src: SocketAddrV6, dst: SocketAddrV6, syn: bool| {
            let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
                .ipv6(src.ip().octets(), dst.ip().octets(), 64);
            let mut f = Vec::new();
            match protocol {
                Protocol::Udp => b.udp(src.port(), dst.port()).write(&mut f, &[0x5a; 32]),
                Protocol::Tcp if syn => b
                    .tcp(src.port(), dst.port(), 1000, 64240)
                    .syn()
                    .write(&mut f, &[]),
                Protocol::Tcp => b
                    .tcp(src.port(), dst.port(), 1000, 64240)
                    .ack(1)
                    .write(&mut f, &[]),
            }
            .expect("an IPv6 frame");
            f
        };
    let mut empty4 = FlowTable::with_capacity(1);
    for (protocol, tag) in [(Protocol::Tcp, ""), (Protocol::Udp, "_udp")] {
        let mut table6 = FlowTable6::with_capacity(DEFAULT_FLOW_CAPACITY);
        let mut rr = plane6(protocol);
        for i in 0..ESTABLISHED_FLOWS {
            let mut first = frame6(protocol, client6(i), vip6, true);
            assert!(forward6(
                &mut first,
                &mut table6,
                &mut rr,
                sink,
                stats,
                1,
                None
            ));
            if i % 1024 == 0 {
                sink.flush();
                events.try_iter().for_each(drop);
            }
        }
        sink.flush();
        events.try_iter().for_each(drop);
        assert_eq!(table6.len(), ESTABLISHED_FLOWS as usize);
        let step = ESTABLISHED_FLOWS / FRAME_SET as u32;
        let established: Vec<Vec<u8>> = (0..FRAME_SET as u32)
            .map(|k| frame6(protocol, client6(k * step), vip6, false))
            .collect();
        g.bench_function(format!("forward6{tag}_established_cold_1m_flows"), |b| {
            b.iter_custom(|iters| {
                let mut handler = Forwarder {
                    table: &mut empty4,
                    table6: &mut table6,
                    plane: &mut rr,
                    events: &mut *sink,
                    stats,
                    now_ns: 2,
                };
                timed_passes(&established, iters, &mut handler)
            })
        });
        const CHUNK: u32 = 16_384;
        let fresh = |k: u32| client6(ESTABLISHED_FLOWS + k);
        let firsts: Vec<Vec<u8>> = (0..CHUNK)
            .map(|k| frame6(protocol, fresh(k), vip6, true))
            .collect();
        let what = match protocol {
            Protocol::Tcp => "new_connection6_round_robin",
            Protocol::Udp => "new_udp6_flow_round_robin",
        };
        g.bench_function(what, |b| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(u64::from(CHUNK)) as usize;
                    let mut handler = Forwarder {
                        table: &mut empty4,
                        table6: &mut table6,
                        plane: &mut rr,
                        events: &mut *sink,
                        stats,
                        now_ns: 3,
                    };
                    elapsed += timed_passes(&firsts[..n], n as u64, &mut handler);
                    for k in 0..n as u32 {
                        table6.remove(&FlowKey6::new(fresh(k), vip6, protocol.number()));
                    }
                    sink.flush();
                    events.try_iter().for_each(drop);
                    left -= n as u64;
                }
                elapsed
            })
        });
        let answers: Vec<Vec<u8>> = (0..FRAME_SET as u32)
            .map(|k| frame6(protocol, daemons6[k as usize % 4].addr, client6(k), false))
            .collect();
        g.bench_function(format!("reverse6{tag}"), |b| {
            b.iter_custom(|iters| {
                let mut handler = Reverser {
                    plane: &rr,
                    events: &mut *sink,
                    stats,
                    now_ns: 2,
                };
                timed_passes(&answers, iters, &mut handler)
            })
        });
    }
}

/// reply_mode "tracked": what a connection costs the worker in map writes, in
/// batches of 64 new connections (one BPF_MAP_UPDATE_BATCH) later removed
/// together (one BPF_MAP_DELETE_BATCH), against a real kernel map; per
/// connection. Needs CAP_BPF: without it, said and left out.
fn tracked_sync(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    const BATCH: u32 = 64;
    let map = match TrackedMap::standalone(1 << 20) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("packet_path/tracked_sync left out: {e:#}");
            return;
        }
    };
    let stats = WorkerStats::default();
    let mut table = FlowTable::with_capacity(BATCH as usize);
    let mut tracker = ReplyTracker::new(map, &mut table);
    let records: Vec<FlowRecord> = (0..BATCH)
        .map(|i| FlowRecord {
            key: FlowKey::new(client(i), VIP, 6),
            backend: BackendId(0),
            daemon: daemons()[0].addr,
            created_ns: 1,
            last_seen_ns: 1,
            state: TcpState::SYN_SEEN,
            client_next: 0,
            client_ack: 0,
            epoch: 0,
        })
        .collect();
    g.bench_function("tracked_sync_per_connection_batch_64", |b| {
        b.iter_custom(|iters| {
            let batches = iters.div_ceil(u64::from(BATCH));
            let start = Instant::now();
            for _ in 0..batches {
                for r in &records {
                    let _ = table.insert(*r);
                }
                tracker.sync(&mut table, &stats);
                table.retain(|_| false);
                tracker.sync(&mut table, &stats);
            }
            // Per connection: the batches ran BATCH of them each.
            start
                .elapsed()
                .mul_f64(iters as f64 / (batches * u64::from(BATCH)) as f64)
        })
    });
    assert_eq!(stats.tracked_failed.get(), 0, "every key written");
}

/// A takeover's copy, before the switch: reading every key of the running
/// process's tracked map (a million connections, the default capacity), and
/// also writing them into the new one's; per key. The window A keeps waiting for
/// the switch is 5 s, and each family has a map. Needs CAP_BPF.
fn takeover_copy(c: &mut Criterion) {
    use std::os::fd::AsFd;
    const KEYS: u32 = 1 << 20;
    let (from, into) = match (TrackedMap::standalone(KEYS), TrackedMap::standalone(KEYS)) {
        (Ok(from), Ok(into)) => (from, into),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("packet_path/takeover_copy left out: {e:#}");
            return;
        }
    };
    let keys: Vec<ReplyKey> = (0..KEYS)
        .map(|i| {
            let client = SocketAddrV4::new(
                Ipv4Addr::from(0xc612_0000 + (i >> 12)),
                1024 + (i & 0xfff) as u16,
            );
            xdp::reply_key(client, daemons()[i as usize % 4].addr, 6)
        })
        .collect();
    from.insert_all(&keys)
        .expect("filling the running process's map");
    let mut g = c.benchmark_group("takeover");
    g.sample_size(10);
    for (name, write) in [
        ("read_tracked_per_key_1m_keys", false),
        ("copy_tracked_per_key_1m_keys", true),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let copies = iters.div_ceil(u64::from(KEYS));
                let start = Instant::now();
                for _ in 0..copies {
                    let read: Vec<ReplyKey> =
                        xdp::read_map_keys(from.as_fd(), 2 * KEYS as usize).expect("reading");
                    assert_eq!(read.len(), KEYS as usize, "every key read once");
                    if write {
                        into.insert_all(&read).expect("writing");
                    }
                }
                start
                    .elapsed()
                    .mul_f64(iters as f64 / (copies * u64::from(KEYS)) as f64)
            })
        });
    }
    // The copied keys no kept record backs, for a million of each: set out
    // before the switch, and the part in the switch window (service frames
    // dropped).
    let records: Vec<(u16, FlowRecord)> = (0..KEYS)
        .map(|i| {
            let (client, daemon, _) = xdp::reply_key_parts(&keys[i as usize]);
            let record = FlowRecord {
                key: FlowKey::new(client, VIP, 6),
                backend: BackendId(0),
                daemon,
                created_ns: 1,
                last_seen_ns: 1,
                state: TcpState::ESTABLISHED,
                client_next: 0,
                client_ack: 0,
                epoch: 0,
            };
            (0, record)
        })
        .collect();
    let served = takeover::daemon_protocols(&[ServiceConfig {
        address: VIP,
        protocol: dispatchd::config::Protocol::Tcp,
        policy: PolicyKind::RoundRobin,
        backends: daemons(),
        health: Default::default(),
    }]);
    g.bench_function("copied_keys_set_out_1m_keys", |b| {
        b.iter(|| takeover::CopiedKeys::new(keys.clone()))
    });
    g.bench_function("settle_in_window_1m_keys_1m_records", |b| {
        b.iter_batched(
            || takeover::CopiedKeys::new(keys.clone()),
            |copied| {
                let settled = copied.settle(&records, &served);
                assert!(settled.unbacked.is_empty(), "every key backed");
                assert!(settled.unwritten.is_empty(), "every key copied");
            },
            criterion::BatchSize::PerIteration,
        )
    });
    g.finish();
}

/// The packet core's share of a frame, IPv4 beside IPv6: validate, then rewrite
/// forward (destination := daemon) or reverse (source := VIP), Ethernet addresses
/// included; no flow table, no policy: the difference is the IPv6 parse and the
/// eight-word address update in the TCP checksum (the whole IPv6 path's rows
/// are `ipv6_rows`').
fn packet_core(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    let macs = MacPair {
        src: [0x02, 0, 0, 0, 0, 0x11],
        dst: [0x02, 0, 0, 0, 0, 0x22],
    };
    let vip6 = SocketAddrV6::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100), 80, 0, 0);
    let daemon6 = |k: u32| {
        SocketAddrV6::new(
            Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 11 + (k % 4) as u16),
            8080,
            0,
            0,
        )
    };
    let client6 = |k: u32| {
        let c = client(k);
        SocketAddrV6::new(c.ip().to_ipv6_mapped(), c.port(), 0, 0)
    };
    let tcp6 = |src: SocketAddrV6, dst: SocketAddrV6| {
        let mut f = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv6(src.ip().octets(), dst.ip().octets(), 64)
            .tcp(src.port(), dst.port(), 1000, 64240)
            .ack(1)
            .write(&mut f, &[])
            .expect("an IPv6 frame");
        f
    };
    let n = FRAME_SET as u32;
    let v4_in: Vec<Vec<u8>> = (0..n)
        .map(|k| tcp_frame(client(k), VIP, false, 0))
        .collect();
    let v4_out: Vec<Vec<u8>> = (0..n)
        .map(|k| tcp_frame(daemons()[k as usize % 4].addr, client(k), false, 0))
        .collect();
    let v6_in: Vec<Vec<u8>> = (0..n).map(|k| tcp6(client6(k), vip6)).collect();
    let v6_out: Vec<Vec<u8>> = (0..n).map(|k| tcp6(daemon6(k), client6(k))).collect();
    let daemon4 = |k: u32| daemons()[k as usize % 4].addr;
    let daemons4: Vec<SocketAddrV4> = (0..n).map(daemon4).collect();
    let daemons6: Vec<SocketAddrV6> = (0..n).map(daemon6).collect();

    // The rows below would time nothing if a frame failed to parse.
    for f in v4_in.iter().chain(&v4_out) {
        assert!(L4Frame::parse(&mut f.clone()).is_ok());
    }
    for f in v6_in.iter().chain(&v6_out) {
        assert!(L4Frame6::parse(&mut f.clone()).is_ok());
    }

    /// Times `rewrite` over `iters` frames taken in turn from `templates`,
    /// restoring the working copies after each pass, untimed.
    fn timed(
        templates: &[Vec<u8>],
        iters: u64,
        mut rewrite: impl FnMut(usize, &mut [u8]),
    ) -> Duration {
        let mut work = templates.to_vec();
        let mut elapsed = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let n = left.min(work.len() as u64) as usize;
            let start = Instant::now();
            for (i, frame) in work[..n].iter_mut().enumerate() {
                rewrite(i, black_box(frame));
            }
            elapsed += start.elapsed();
            for (w, t) in work[..n].iter_mut().zip(templates) {
                w.copy_from_slice(t);
            }
            left -= n as u64;
        }
        elapsed
    }

    g.bench_function("packet_core_forward_ipv4", |b| {
        b.iter_custom(|iters| {
            timed(&v4_in, iters, |i, f| {
                if let Ok(mut fr) = L4Frame::parse(f) {
                    fr.rewrite_forward(daemons4[i], &macs);
                }
            })
        })
    });
    g.bench_function("packet_core_forward_ipv6", |b| {
        b.iter_custom(|iters| {
            timed(&v6_in, iters, |i, f| {
                if let Ok(mut fr) = L4Frame6::parse(f) {
                    fr.rewrite_forward(daemons6[i], &macs);
                }
            })
        })
    });
    g.bench_function("packet_core_reverse_ipv4", |b| {
        b.iter_custom(|iters| {
            timed(&v4_out, iters, |_, f| {
                if let Ok(mut fr) = L4Frame::parse(f) {
                    fr.rewrite_reverse(VIP, &macs);
                }
            })
        })
    });
    g.bench_function("packet_core_reverse_ipv6", |b| {
        b.iter_custom(|iters| {
            timed(&v6_out, iters, |_, f| {
                if let Ok(mut fr) = L4Frame6::parse(f) {
                    fr.rewrite_reverse(vip6, &macs);
                }
            })
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
