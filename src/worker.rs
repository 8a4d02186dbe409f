//! The per-queue worker: receive a batch, rewrite each frame in place, transmit the
//! same descriptors on the other socket, recycle completions into fill rings.
//!
//! Nothing on this path allocates, locks or makes a syscall per packet: the only
//! syscalls are the TX kick (one per batch, when the ring asks for it) and poll()
//! when there is nothing to do.
#![allow(unsafe_code)] // UMEM frame access and ring produce/consume; each block says why it is sound

use std::{
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc,
    },
    time::Instant,
};

use xsk_rs::{FrameDesc, RxQueue, TxQueue, Umem};

use crate::{
    config::PollMode,
    dataplane::{pipelined, Dataplane, Forwarder, FrameHandler, Reverser},
    flow::FlowTable,
    ids::WorkerId,
    protocol::{self, Event, EventSink, FlowCommand, WorkerEnd},
    stats::{now_ns, Counter, WorkerDrop, WorkerStats},
    tracked::ReplyTracker,
    xdp::TrackedMap,
    xsk::{poll_readable, QueueSockets},
};

/// Commands applied per loop round, so a burst of them cannot stall packets.
const COMMANDS_PER_ROUND: usize = 64;
/// Empty polls an adaptive worker spins through before it sleeps in poll().
const ADAPTIVE_SPINS: u32 = 2_000;
/// Longest sleep, so that a stop request is noticed promptly.
const POLL_TIMEOUT_MS: i32 = 100;

/// What the loop tells a worker.
pub type Command = protocol::Command<Dataplane>;

pub struct WorkerSetup {
    pub id: WorkerId,
    pub core: Option<usize>,
    pub batch: usize,
    pub poll: PollMode,
    pub flow_capacity: usize,
    pub sockets: QueueSockets,
    pub plane: Dataplane,
    pub stats: Arc<WorkerStats>,
    pub stop: Arc<AtomicBool>,
    pub link: WorkerEnd<Dataplane>,
    /// Benchmark only (`--bare-forwarder`): frames cross untouched, no parsing.
    pub bare: bool,
    /// reply_mode "tracked": the kernel's map this worker mirrors its table into.
    pub tracked: Option<TrackedMap>,
    /// Told this worker's id once it is about to serve (its table allocated).
    pub ready: Option<std::sync::mpsc::Sender<WorkerId>>,
}

struct Rings<'a> {
    umem: &'a Umem,
    rx: &'a mut RxQueue,
    tx: &'a mut TxQueue,
}

/// Descriptor scratch space, sized once.
struct Batches {
    rx: Vec<FrameDesc>,
    tx: Vec<FrameDesc>,
    free: Vec<FrameDesc>,
}

pub fn run(setup: WorkerSetup) {
    let WorkerSetup {
        id,
        core,
        batch,
        poll,
        flow_capacity,
        sockets,
        mut plane,
        stats,
        stop,
        link: WorkerEnd {
            mut events,
            commands,
        },
        bare,
        tracked,
        ready,
    } = setup;
    if let Some(core) = core {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
            eprintln!("dispatchd: worker {id} could not pin to core {core}; running unpinned");
        }
    }
    let QueueSockets {
        umem,
        frames,
        mut front,
        mut back,
    } = sockets;
    let mut table = FlowTable::with_capacity(flow_capacity);
    let mut tracker = tracked.map(|map| ReplyTracker::new(map, &mut table));
    let mut b = Batches {
        // Placeholders, overwritten by each consume before they are read.
        rx: vec![FrameDesc::default(); batch],
        tx: Vec::with_capacity(batch),
        free: frames,
    };
    let mut idle_spins = 0u32;
    // The daemon waits for this before it says it is running; frames that
    // arrived meanwhile are waiting in the RX rings.
    if let Some(ready) = ready {
        let _ = ready.send(id);
    }

    let mut next_socket_stats_ns = 0;

    while !stop.load(Relaxed) {
        let now_ns = now_ns();
        if now_ns >= next_socket_stats_ns {
            next_socket_stats_ns = now_ns + SOCKET_STATS_INTERVAL_NS;
            read_socket_stats(&front, &back, &stats);
        }
        for command in commands.try_iter().take(COMMANDS_PER_ROUND) {
            stats.commands.add(1);
            apply(command, &mut table, &mut plane, &mut events, &stats);
        }
        if let Some(t) = &mut tracker {
            t.sync(&mut table, &stats);
        }
        recycle(&mut front, &mut b, &stats);
        recycle(&mut back, &mut b, &stats);

        let mut busy_ns = 0u64;
        let mut fwd = Rings {
            umem: &umem,
            rx: &mut front.rx,
            tx: &mut back.tx,
        };
        // The bare forwarder (benchmark only) passes every frame untouched.
        let n_fwd = pump(
            &mut fwd,
            &mut b,
            &stats,
            &stats.tx_back,
            &mut busy_ns,
            bare,
            &mut Forwarder {
                table: &mut table,
                plane: &mut plane,
                events: &mut events,
                stats: &stats,
                now_ns,
            },
            |f| {
                if let Some(t) = &mut tracker {
                    t.sync(f.table, f.stats);
                }
            },
        );
        let mut rev = Rings {
            umem: &umem,
            rx: &mut back.rx,
            tx: &mut front.tx,
        };
        let n_rev = pump(
            &mut rev,
            &mut b,
            &stats,
            &stats.tx_front,
            &mut busy_ns,
            bare,
            &mut Reverser {
                plane: &plane,
                events: &mut events,
                stats: &stats,
            },
            |_| {},
        );
        events.flush();
        stats.rx_front.add(n_fwd as u64);
        stats.rx_back.add(n_rev as u64);
        stats.flows.set(table.len() as u64);

        let n = (n_fwd + n_rev) as u64;
        if let Some(per_packet) = busy_ns.checked_div(n) {
            stats.latency_ns.record_n(per_packet, n);
            stats.batch_sizes.record_n(n, 1);
            stats.batches.add(1);
            idle_spins = 0;
            continue;
        }
        match poll {
            PollMode::Busy => std::hint::spin_loop(),
            PollMode::Wakeup => sleep(&front, &back, &stats),
            PollMode::Adaptive => {
                idle_spins += 1;
                if idle_spins >= ADAPTIVE_SPINS {
                    sleep(&front, &back, &stats);
                    idle_spins = 0;
                } else {
                    std::hint::spin_loop();
                }
            }
        }
    }
}

/// Carries out one command of the management loop; the worker stays the only
/// writer of its table and pools.
fn apply(
    command: Command,
    table: &mut FlowTable,
    plane: &mut Dataplane,
    events: &mut EventSink,
    stats: &WorkerStats,
) {
    match command {
        Command::Flow(FlowCommand::Remove { key, opened_ns }) => {
            // A record restarted by a reused port since the loop decided is a
            // newer connection's.
            if table.get(&key).is_some_and(|r| r.created_ns <= opened_ns) {
                if let Some(record) = table.remove(&key) {
                    plane.connection_closed(record.backend);
                }
            }
        }
        Command::Flow(FlowCommand::RemoveIfIdle { key, idle_since_ns }) => match table.get(&key) {
            Some(record) if record.last_seen_ns > idle_since_ns => {
                events.emit(
                    Event::Active {
                        key,
                        last_seen_ns: record.last_seen_ns,
                    },
                    stats,
                );
            }
            _ => {
                if let Some(record) = table.remove(&key) {
                    plane.connection_closed(record.backend);
                }
                events.emit(Event::Removed { key }, stats);
            }
        },
        Command::BackendState { backend, state } => plane.set_backend_state(backend, state),
        Command::RemoveBackendFlows { backend } => {
            table.retain(|r| r.backend != backend);
            plane.reset_active(backend);
        }
        Command::ReplacePlane(new) => {
            let old = std::mem::replace(plane, *new);
            plane.adopt(table, &old);
        }
    }
    events.flush();
}

/// How often a worker asks the kernel for its sockets' drop counters (a syscall
/// per socket, so not per batch).
const SOCKET_STATS_INTERVAL_NS: u64 = 1_000_000_000;

fn read_socket_stats(front: &crate::xsk::Rings, back: &crate::xsk::Rings, stats: &WorkerStats) {
    // An error (none is expected on a bound socket) keeps the last values.
    let (Ok(f), Ok(b)) = (front.kernel_drops(), back.kernel_drops()) else {
        return;
    };
    let sum = |i: usize| f[i] + b[i];
    stats.xsk_rx_ring_full.set(sum(0));
    stats.xsk_fill_ring_empty.set(sum(1));
    stats.xsk_rx_dropped.set(sum(2));
    stats.xsk_invalid_descs.set(sum(3));
}

fn sleep(front: &crate::xsk::Rings, back: &crate::xsk::Rings, stats: &WorkerStats) {
    stats.sleeps.add(1);
    poll_readable([front.fd(), back.fd()], POLL_TIMEOUT_MS);
}

/// Completed transmissions come back as free frames; free frames go to the fill
/// ring so the kernel can receive into them.
fn recycle(rings: &mut crate::xsk::Rings, b: &mut Batches, stats: &WorkerStats) {
    loop {
        // SAFETY: the descriptors belong to this queue's UMEM, the only one these
        // rings were created with.
        let done = unsafe { rings.comp.consume(&mut b.rx) };
        b.free.extend_from_slice(&b.rx[..done]);
        if done < b.rx.len() {
            break;
        }
    }
    rings.refill(&mut b.free);
    if rings.fill.needs_wakeup() {
        stats.wakeups.add(1);
        // A zero-timeout poll only nudges the driver; errors mean "try later".
        let _ = rings.fill.wakeup(rings.rx.fd_mut(), 0);
    }
}

/// Descriptors the kernel sends per TX kick in copy mode (TX_BATCH_SIZE of the
/// generic AF_XDP path); a batch larger than that needs more than one kick.
const COPY_MODE_TX_BUDGET: usize = 32;

/// Asks the kernel to send `n` newly queued frames, if the ring wants a wake-up.
fn kick(tx: &mut TxQueue, n: usize, stats: &WorkerStats) {
    if !tx.needs_wakeup() {
        return;
    }
    for _ in 0..n.div_ceil(COPY_MODE_TX_BUDGET) {
        stats.wakeups.add(1);
        // EAGAIN/ENOBUFS/EBUSY mean the kernel is busy sending; xsk-rs folds
        // them into Ok, anything else would show as missing completions.
        let _ = tx.wakeup();
    }
}

/// Receives one batch on `rings.rx`, runs `handle` over each frame in place and
/// transmits the ones it accepts on `rings.tx`; `before_send` runs once the
/// batch is handled and before any of it is handed to the ring. Returns the
/// frames received, and adds to `busy_ns` the time from taking the batch to
/// handing it to the TX ring: the dispatcher's own per-packet cost, without the
/// kernel's send in the kick.
#[allow(clippy::too_many_arguments)]
fn pump<H: FrameHandler>(
    rings: &mut Rings<'_>,
    b: &mut Batches,
    stats: &WorkerStats,
    tx_counter: &Counter,
    busy_ns: &mut u64,
    bare: bool,
    handler: &mut H,
    before_send: impl FnOnce(&mut H),
) -> usize {
    // SAFETY: the descriptors belong to this queue's UMEM.
    let received = unsafe { rings.rx.consume(&mut b.rx) };
    if received == 0 {
        return 0;
    }
    let start = Instant::now();
    b.tx.clear();
    let umem = rings.umem;
    pipelined(
        &mut b.rx[..received],
        handler,
        |h, desc| {
            if bare {
                return Default::default();
            }
            // SAFETY: the frame was consumed from the RX ring, so the kernel is
            // done with it; the only mutable view of a frame lives inside the
            // closure below, for the frame being handled, never this one.
            h.prefetch(unsafe { umem.data(desc) }.contents())
        },
        |h, desc, hint| {
            // SAFETY: the frame was just consumed from the RX ring, so the kernel
            // is done with it, and no other reference to it exists until it is
            // handed to a ring again below.
            let mut data = unsafe { umem.data_mut(desc) };
            if bare || h.handle(data.contents_mut(), hint) {
                b.tx.push(*desc);
            } else {
                b.free.push(*desc);
            }
        },
    );
    // reply_mode "tracked": the batch's new connections reach the kernel's map
    // before their SYNs leave, so no SYN-ACK can come back ahead of its key.
    before_send(handler);
    if b.tx.is_empty() {
        *busy_ns += start.elapsed().as_nanos() as u64;
        return received;
    }
    // SAFETY (both produce calls): the frames are owned by user space and belong
    // to this UMEM; a produce takes all of them or none (libxdp reserves all or
    // none), and on success they leave b.tx for the kernel.
    let mut sent = unsafe { rings.tx.produce(&b.tx) };
    *busy_ns += start.elapsed().as_nanos() as u64;
    if sent == 0 {
        // The kernel has not taken earlier batches yet: push it, then retry once.
        kick(rings.tx, b.tx.len(), stats);
        sent = unsafe { rings.tx.produce(&b.tx) };
    }
    if sent == 0 {
        stats.dropped[WorkerDrop::TxRingFull as usize].add(b.tx.len() as u64);
        b.free.extend_from_slice(&b.tx);
    } else {
        tx_counter.add(sent as u64);
        kick(rings.tx, sent, stats);
    }
    received
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use super::*;
    use crate::{
        dataplane::{forward, testing},
        flow::FlowKey,
    };

    const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 80);
    const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 40000);

    fn segment(syn: bool) -> Vec<u8> {
        testing::segment(CLIENT, VIP, if syn { 0x02 } else { 0x11 })
    }

    /// The loop removes a closed connection's record when its linger ends; if the
    /// client has reused the port meanwhile, the worker already restarted the
    /// record for the new connection, whose `Opened` the loop may not have seen
    /// yet. That record must survive the old connection's removal.
    #[test]
    fn a_remove_spares_a_record_restarted_by_a_reused_port() {
        let daemon = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 11), 8080);
        let mut plane = testing::plane(VIP, &[daemon]);
        let mut table = FlowTable::with_capacity(4);
        let stats = WorkerStats::default();
        let (mut events, _rx) = testing::events();
        let key = FlowKey::new(CLIENT, VIP, 6);
        let mut send = |syn: bool, now_ns: u64, table: &mut FlowTable, plane: &mut Dataplane| {
            let mut f = segment(syn);
            assert!(forward(
                &mut f,
                table,
                plane,
                &mut events,
                &stats,
                now_ns,
                None
            ));
        };
        let (mut loop_side, _rx2) = testing::events();
        let remove = |opened_ns: u64| Command::Flow(FlowCommand::Remove { key, opened_ns });

        // The first connection opens at 10 (the loop hears it at 20) and closes.
        send(true, 10, &mut table, &mut plane);
        send(false, 15, &mut table, &mut plane);
        // The port is reused at 30: the record restarts for the new connection.
        send(true, 30, &mut table, &mut plane);
        apply(remove(20), &mut table, &mut plane, &mut loop_side, &stats);
        assert_eq!(table.get(&key).map(|r| r.created_ns), Some(30), "kept");
        // The new connection's own removal (the loop heard it open at 35) works.
        apply(remove(35), &mut table, &mut plane, &mut loop_side, &stats);
        assert!(table.get(&key).is_none());
    }

    fn syn(client: SocketAddrV4, vip: SocketAddrV4) -> Vec<u8> {
        testing::segment(client, vip, 0x02)
    }

    /// A reload hands the worker a dataplane built from the new configuration;
    /// afterwards the worker must be in the state a fresh start with that
    /// configuration would reach with the same connections open: records of
    /// remaining daemons re-pointed at their new ids and counted, the others
    /// gone, daemon states kept, and nothing of the old services left.
    #[test]
    fn a_reload_leaves_the_state_of_a_fresh_start_with_the_new_config() {
        use crate::{
            balance::{BackendSpec, BackendState, PolicyKind},
            config::ServiceConfig,
            ids::BackendId,
            neigh::NextHop,
        };
        let addr = |s: &str| s.parse::<SocketAddrV4>().unwrap();
        let service = |vip: &str, policy, daemons: &[&str]| ServiceConfig {
            address: addr(vip),
            policy,
            backends: daemons
                .iter()
                .map(|d| BackendSpec {
                    addr: addr(d),
                    weight: 1,
                })
                .collect(),
        };
        let (a, b, c, d, e) = (
            "198.19.0.11:8080",
            "198.19.0.12:8080",
            "198.19.0.13:8080",
            "198.19.0.14:8080",
            "198.19.0.15:8080",
        );
        let old = [
            service("198.18.0.100:80", PolicyKind::RoundRobin, &[a, b, c]),
            service("198.18.0.101:80", PolicyKind::RoundRobin, &[d]),
        ];
        // 101 goes, 102 comes, and 100 loses b, has its daemons reordered and
        // changes policy.
        let new = [
            service("198.18.0.102:80", PolicyKind::Maglev, &[e]),
            service("198.18.0.100:80", PolicyKind::LeastConnections, &[c, a]),
        ];
        let plane = |services: &[ServiceConfig]| {
            let n = services.iter().map(|s| s.backends.len()).sum::<usize>();
            let hops: Arc<[NextHop]> = (0..n).map(|_| NextHop::default()).collect();
            hops.iter().for_each(|h| h.set(Some([6; 6])));
            Dataplane::build(WorkerId(0), services, hops, [8; 6]).unwrap()
        };

        let mut running = plane(&old);
        let mut table = FlowTable::with_capacity(64);
        let stats = WorkerStats::default();
        let (mut events, _rx) = testing::events();
        for i in 0..12u16 {
            let client = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 40000 + i);
            let vip = if i % 4 == 3 {
                old[1].address
            } else {
                old[0].address
            };
            assert!(forward(
                &mut syn(client, vip),
                &mut table,
                &mut running,
                &mut events,
                &stats,
                1,
                None
            ));
        }
        running.set_backend_state(BackendId(2), BackendState::Draining); // c
        let count = |table: &FlowTable, daemon: &str| {
            table.iter().filter(|r| r.daemon == addr(daemon)).count()
        };
        let (kept_a, kept_c) = (count(&table, a), count(&table, c));
        assert!(kept_a > 0 && kept_c > 0 && count(&table, b) > 0 && count(&table, d) > 0);

        apply(
            Command::ReplacePlane(Box::new(plane(&new))),
            &mut table,
            &mut running,
            &mut events,
            &stats,
        );

        // A fresh start with `new`, brought to the same connections and states.
        let mut fresh = plane(&new);
        let ids = |p: &Dataplane, daemon: &str| {
            (0..3u16)
                .map(BackendId)
                .find(|&id| {
                    p.backend_owner
                        .get(id.index())
                        .is_some_and(|&(s, l)| p.services[s.index()].pool.addr(l) == addr(daemon))
                })
                .unwrap()
        };
        for r in table.iter() {
            assert_eq!(
                r.backend,
                ids(&fresh, &r.daemon.to_string()),
                "{r:?} re-pointed"
            );
        }
        for daemon in [a, c] {
            let id = ids(&fresh, daemon);
            for _ in 0..count(&table, daemon) {
                let (s, l) = fresh.backend_owner[id.index()];
                fresh.services[s.index()].pool.connection_opened(l);
            }
        }
        fresh.set_backend_state(ids(&fresh, c), BackendState::Draining);

        assert_eq!((count(&table, a), count(&table, c)), (kept_a, kept_c));
        assert_eq!(table.len(), kept_a + kept_c, "b's and d's records are gone");
        assert_eq!(running.services, fresh.services);
        assert_eq!(running.service_by_vip, fresh.service_by_vip);
        assert_eq!(running.service_by_daemon, fresh.service_by_daemon);
        assert_eq!(running.backend_owner, fresh.backend_owner);
        let hops = |p: &Dataplane| p.next_hops.iter().map(NextHop::get).collect::<Vec<_>>();
        assert_eq!(hops(&running), hops(&fresh));
    }
}
