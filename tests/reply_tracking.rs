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
    xdp::{read_map_keys, reply_key, reply_key_parts, ReplyKey, TrackedMap},
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

/// A takeover reads the running process's map while that process's workers
/// still write it. Every key is read once, in batches far more than one
/// (100,000 keys), at most `most` of them; and a key that stays is read
/// exactly once while others come and go around it (a walk key by key
/// restarted from the first key whenever the key it stood on went, reading
/// the rest twice).
#[test]
fn a_running_processs_map_is_read_whole_while_it_changes() {
    use std::collections::HashSet;
    use std::os::fd::AsFd;
    require_root();
    const KEYS: u32 = 100_000;
    let map = TrackedMap::standalone(2 * KEYS).expect("a map");
    let key = |i: u32| {
        let client = SocketAddrV4::new(Ipv4Addr::from(0xc612_0000 + (i >> 14)), i as u16 | 0x4000);
        reply_key(client, daemon((i % 4) as u8), TCP)
    };
    let stable: Vec<_> = (0..KEYS).map(key).collect();
    map.insert_all(&stable).expect("filling the map");
    let read: Vec<ReplyKey> = read_map_keys(map.as_fd(), 2 * KEYS as usize).expect("reading");
    let want: HashSet<_> = stable.iter().map(reply_key_parts).collect();
    let got: HashSet<_> = read.iter().map(reply_key_parts).collect();
    assert_eq!(read.len(), KEYS as usize, "each key once");
    assert_eq!(got, want);
    let some: Vec<ReplyKey> = read_map_keys(map.as_fd(), 1000).expect("reading");
    assert_eq!(some.len(), 1000, "at most `most`");

    // Churn: another thread adds and removes keys beside the stable ones.
    let writer = map.try_clone().expect("another handle");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut rounds = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let batch: Vec<_> = (0..256)
                    .map(|i| key(KEYS + (rounds * 256 + i) % KEYS))
                    .collect();
                writer.insert_all(&batch).expect("churn in");
                writer.remove_each(&batch).expect("churn out");
                rounds += 1;
            }
            rounds
        })
    };
    for _ in 0..5 {
        let read: Vec<ReplyKey> = read_map_keys(map.as_fd(), 4 * KEYS as usize).expect("reading");
        let mut seen = HashSet::new();
        for k in read
            .iter()
            .map(reply_key_parts)
            .filter(|p| want.contains(p))
        {
            assert!(seen.insert(k), "{k:?} read twice");
        }
        assert_eq!(seen.len(), KEYS as usize, "every stable key read");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(
        churn.join().expect("the churn thread") > 0,
        "the map changed meanwhile"
    );
}
