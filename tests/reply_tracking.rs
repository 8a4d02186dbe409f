//! `reply_mode = "tracked"`: a worker's mirror of its flow table in the kernel's
//! map of tracked connections, against a real BPF hash map of the program's
//! layout (the XDP program's lookups in it are tests/xdp_program.rs's tracked
//! rows). Needs root (CAP_BPF); fails, never skips, without it.
use std::net::{Ipv4Addr, SocketAddrV4};

use dispatchd::{
    flow::{FlowKey, FlowRecord, FlowTable, TcpState},
    ids::BackendId,
    stats::WorkerStats,
    tracked::ReplyTracker,
    xdp::{reply_key, TrackedMap},
};
use dispatchd_testkit::require_root;

const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 80);

fn daemon(i: u8) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 11 + i), 8080)
}

fn client(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), port)
}

const TCP: u8 = libc::IPPROTO_TCP as u8;
const UDP: u8 = libc::IPPROTO_UDP as u8;

fn record(port: u16, d: u8) -> FlowRecord {
    record_of(port, d, TCP)
}

fn record_of(port: u16, d: u8, protocol: u8) -> FlowRecord {
    FlowRecord {
        key: FlowKey::new(client(port), VIP, protocol),
        backend: BackendId(u16::from(d)),
        daemon: daemon(d),
        created_ns: 1,
        last_seen_ns: 1,
        state: TcpState::SYN_SEEN,
        client_next: 0,
        client_ack: 0,
        epoch: 0,
    }
}

/// Two handles on one map: the tracker's, and one to look with.
fn maps(capacity: u32) -> (TrackedMap, TrackedMap) {
    require_root();
    let map = TrackedMap::standalone(capacity).unwrap_or_else(|e| panic!("{e:#}"));
    let look = map.try_clone().expect("a second handle");
    (map, look)
}

fn present(look: &TrackedMap, port: u16, d: u8) -> bool {
    look.contains(&reply_key(client(port), daemon(d), TCP))
}

#[test]
fn the_map_follows_the_table_through_inserts_removals_and_reuse() {
    let (map, look) = maps(64);
    let stats = WorkerStats::default();
    let mut table = FlowTable::with_capacity(16);
    let mut tracker = ReplyTracker::new(map, &mut table);

    for port in 1..=6 {
        table.insert(record(port, (port % 2) as u8)).unwrap();
    }
    tracker.sync(&mut table, &stats);
    assert!((1..=6).all(|p| present(&look, p, (p % 2) as u8)));
    assert!(!present(&look, 1, 0), "keyed by the daemon too");

    table.remove(&record(1, 1).key).unwrap();
    // Inserted and removed between two syncs: never in the map.
    table.insert(record(7, 0)).unwrap();
    table.remove(&record(7, 0).key).unwrap();
    // A port reused for a connection to another daemon.
    table.remove(&record(2, 0).key).unwrap();
    table.insert(record(2, 1)).unwrap();
    // A daemon's records dropped at once.
    table.retain(|r| r.daemon != daemon(1) || r.key.client_port == 2);
    tracker.sync(&mut table, &stats);

    let want = [(2, 1), (4, 0), (6, 0)];
    for port in 1..=7 {
        for d in 0..2 {
            assert_eq!(
                present(&look, port, d),
                want.contains(&(port, d)),
                "port {port} daemon {d}"
            );
        }
    }
    assert_eq!(stats.tracked_failed.get(), 0);
    assert_eq!(
        stats.tracked_inserted.get() - stats.tracked_removed.get(),
        want.len() as u64
    );
    // Nothing changed, nothing written.
    let written = stats.tracked_inserted.get() + stats.tracked_removed.get();
    tracker.sync(&mut table, &stats);
    assert_eq!(
        stats.tracked_inserted.get() + stats.tracked_removed.get(),
        written
    );
}

/// A map too small (which the configuration rules out) refuses keys; they are
/// counted, and their later removal skips them and removes the others.
#[test]
fn keys_the_kernel_refuses_are_counted_and_skipped_on_removal() {
    let (map, look) = maps(2);
    let stats = WorkerStats::default();
    let mut table = FlowTable::with_capacity(8);
    let mut tracker = ReplyTracker::new(map, &mut table);
    for port in 1..=4 {
        table.insert(record(port, 0)).unwrap();
    }
    tracker.sync(&mut table, &stats);
    assert_eq!(stats.tracked_inserted.get(), 2);
    assert_eq!(stats.tracked_failed.get(), 2);
    table.retain(|_| false);
    tracker.sync(&mut table, &stats);
    assert_eq!(stats.tracked_removed.get(), 2);
    assert_eq!(stats.tracked_failed.get(), 4);
    assert!((1..=4).all(|p| !present(&look, p, 0)));
}

/// A daemon ADDR:PORT behind a TCP and a UDP service: one client port's
/// connection and flow of either protocol are two keys, and the end of one
/// leaves the other's in the map.
#[test]
fn one_client_ports_tcp_and_udp_records_to_one_daemon_are_two_keys() {
    let (map, look) = maps(16);
    let stats = WorkerStats::default();
    let mut table = FlowTable::with_capacity(8);
    let mut tracker = ReplyTracker::new(map, &mut table);
    let (tcp, udp) = (record_of(40000, 0, TCP), record_of(40000, 0, UDP));
    let key_of = |protocol| reply_key(client(40000), daemon(0), protocol);
    table.insert(tcp).unwrap();
    tracker.sync(&mut table, &stats);
    assert!(look.contains(&key_of(TCP)));
    assert!(
        !look.contains(&key_of(UDP)),
        "a TCP connection tracks no UDP replies"
    );
    table.insert(udp).unwrap();
    tracker.sync(&mut table, &stats);
    assert_eq!(stats.tracked_inserted.get(), 2);
    table.remove(&tcp.key).unwrap();
    tracker.sync(&mut table, &stats);
    assert!(!look.contains(&key_of(TCP)));
    assert!(
        look.contains(&key_of(UDP)),
        "the UDP flow outlives the TCP connection"
    );
    table.remove(&udp.key).unwrap();
    tracker.sync(&mut table, &stats);
    assert!(!look.contains(&key_of(UDP)));
    assert_eq!(stats.tracked_removed.get(), 2);
    assert_eq!(stats.tracked_failed.get(), 0);
}
