//! What happens to one frame: the per-packet decisions and rewrites of a worker,
//! free of rings and syscalls so that tests and benchmarks run exactly this code.
use std::{
    net::SocketAddrV4,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
};

use ahash::AHashMap;
use anyhow::{Context, Result};

use crate::{
    balance::Pool,
    config::ServiceConfig,
    flow::{FlowKey, FlowRecord, FlowTable, InsertError, TcpState},
    packet::{L4Frame, MacPair},
    stats::{WorkerDrop, WorkerStats},
};

/// A daemon's next-hop MAC, packed in the low 48 bits; 0 while unresolved. The
/// neighbour resolver writes it, every worker reads it per packet without a lock.
#[derive(Debug, Default)]
pub struct NextHop(AtomicU64);

impl NextHop {
    pub fn set(&self, mac: Option<[u8; 6]>) {
        let packed = mac.map_or(0, |m| {
            let mut b = [0u8; 8];
            b[..6].copy_from_slice(&m);
            u64::from_le_bytes(b)
        });
        self.0.store(packed, Relaxed);
    }

    #[inline]
    pub fn get(&self) -> Option<[u8; 6]> {
        let packed = self.0.load(Relaxed);
        (packed != 0).then(|| {
            let b = packed.to_le_bytes();
            [b[0], b[1], b[2], b[3], b[4], b[5]]
        })
    }
}

/// One service as a worker sees it: its own copy of the selection state (so picks
/// need no lock), and where its daemons' global ids start.
pub struct ServiceSlot {
    pub vip: SocketAddrV4,
    pub pool: Pool,
    pub first_backend: u16,
}

/// What a worker needs to decide a frame's fate; built once per worker at start.
pub struct Dataplane {
    pub services: Vec<ServiceSlot>,
    /// Keyed by [`endpoint_key`] of the VIP and port.
    pub service_by_vip: AHashMap<u64, u16>,
    /// A reply's source decides its new source: the daemon's service.
    pub service_by_daemon: AHashMap<u64, SocketAddrV4>,
    /// Indexed by global backend id.
    pub next_hops: Arc<[NextHop]>,
    /// Global backend id -> (service index, index in that service's pool).
    pub backend_owner: Vec<(u16, u16)>,
    pub back_mac: [u8; 6],
}

/// An address and port as one integer: hashed with a single write, where
/// `SocketAddrV4`'s own Hash feeds the hasher field by field.
#[inline]
pub fn endpoint_key(addr: SocketAddrV4) -> u64 {
    (u64::from(u32::from(*addr.ip())) << 16) | u64::from(addr.port())
}

impl Dataplane {
    /// One worker's view of `services`; daemons get global ids in config order,
    /// which index `next_hops`.
    pub fn build(
        services: &[ServiceConfig],
        next_hops: Arc<[NextHop]>,
        back_mac: [u8; 6],
    ) -> Result<Self> {
        let mut slots = Vec::with_capacity(services.len());
        let mut service_by_vip = AHashMap::new();
        let mut service_by_daemon = AHashMap::new();
        let mut backend_owner = Vec::new();
        for (i, s) in services.iter().enumerate() {
            let pool = Pool::new(s.policy, &s.backends)
                .with_context(|| format!("service {}", s.address))?;
            let first_backend =
                u16::try_from(backend_owner.len()).context("more than 65535 daemons")?;
            slots.push(ServiceSlot {
                vip: s.address,
                pool,
                first_backend,
            });
            service_by_vip.insert(endpoint_key(s.address), i as u16);
            for (local, b) in s.backends.iter().enumerate() {
                service_by_daemon.insert(endpoint_key(b.addr), s.address);
                backend_owner.push((i as u16, local as u16));
            }
        }
        anyhow::ensure!(
            backend_owner.len() == next_hops.len(),
            "{} daemons but {} next hops",
            backend_owner.len(),
            next_hops.len()
        );
        Ok(Self {
            services: slots,
            service_by_vip,
            service_by_daemon,
            next_hops,
            backend_owner,
            back_mac,
        })
    }
}

#[inline]
fn drop_with(stats: &WorkerStats, why: WorkerDrop) -> bool {
    stats.dropped[why as usize].add(1);
    false
}

/// Client to daemon: find or create the connection's record, rewrite the
/// destination to its daemon.
#[inline]
pub fn forward(
    frame: &mut [u8],
    table: &mut FlowTable,
    plane: &mut Dataplane,
    stats: &WorkerStats,
    now_ns: u64,
) -> bool {
    let mut pkt = match L4Frame::parse(frame) {
        Ok(pkt) => pkt,
        Err(reason) => {
            stats.invalid[reason.index()].add(1);
            return false;
        }
    };
    let key = FlowKey::new(pkt.src(), pkt.dst(), pkt.protocol().number());
    let flags = pkt.tcp_flags();
    let (daemon, backend) = match table.get_mut(&key) {
        Some(record) => {
            record.last_seen_ns = now_ns;
            record.state.on_client_segment(flags.0);
            (record.daemon, record.backend)
        }
        None => {
            // Only a connection's first segment may pick a daemon; anything else
            // without a record belongs to a connection we never saw.
            let opens_connection = flags.syn() && !flags.ack();
            if !opens_connection {
                return drop_with(stats, WorkerDrop::NoFlow);
            }
            let Some(&service) = plane.service_by_vip.get(&endpoint_key(key.service())) else {
                return drop_with(stats, WorkerDrop::UnknownService);
            };
            let slot = &mut plane.services[service as usize];
            let Some(local) = slot.pool.select(&key) else {
                return drop_with(stats, WorkerDrop::NoBackend);
            };
            let backend = slot.first_backend + local;
            let daemon = slot.pool.addr(local as usize);
            // Refuse before recording: the client's retransmitted SYN then gets
            // a fresh pick instead of the same unreachable daemon.
            if plane.next_hops[backend as usize].get().is_none() {
                return drop_with(stats, WorkerDrop::NoNeighbour);
            }
            let mut state = TcpState::default();
            state.on_client_segment(flags.0);
            let record = FlowRecord {
                key,
                backend,
                daemon,
                created_ns: now_ns,
                last_seen_ns: now_ns,
                state,
            };
            // `Exists` cannot happen right after a miss with this worker the only
            // writer; either way the connection is refused rather than mis-counted.
            if let Err(InsertError::Full { .. } | InsertError::Exists) = table.insert(record) {
                return drop_with(stats, WorkerDrop::TableFull);
            }
            slot.pool.connection_opened(local);
            stats.new_flows.add(1);
            (daemon, backend)
        }
    };
    let Some(dst_mac) = plane.next_hops[backend as usize].get() else {
        return drop_with(stats, WorkerDrop::NoNeighbour);
    };
    pkt.rewrite_forward(
        daemon,
        &MacPair {
            src: plane.back_mac,
            dst: dst_mac,
        },
    );
    stats.tx_back.add(1);
    true
}

/// Daemon to client: the daemon's address alone names the service, so no flow
/// lookup; the XDP program already set the Ethernet addresses from the kernel's FIB.
#[inline]
pub fn reverse(frame: &mut [u8], plane: &Dataplane, stats: &WorkerStats) -> bool {
    let mut pkt = match L4Frame::parse(frame) {
        Ok(pkt) => pkt,
        Err(reason) => {
            stats.invalid[reason.index()].add(1);
            return false;
        }
    };
    let Some(&service) = plane.service_by_daemon.get(&endpoint_key(pkt.src())) else {
        return drop_with(stats, WorkerDrop::UnknownDaemon);
    };
    pkt.rewrite_src(service);
    stats.tx_front.add(1);
    true
}
