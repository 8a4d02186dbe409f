//! What happens to one frame: the per-packet decisions and rewrites of a worker,
//! free of rings and syscalls so that tests and benchmarks run exactly this code.
use std::{
    net::{SocketAddr, SocketAddrV4, SocketAddrV6},
    sync::Arc,
};

use ahash::AHashMap;
use anyhow::{Context, Result};

use crate::{
    balance::{BackendSpec, BackendState, DaemonAddr, PolicyKind, Pool},
    config::{daemons_of, Protocol, Service6Config, ServiceConfig},
    flow::{
        FlowHash, FlowKey, FlowKey6, FlowRecord, FlowRecord6, FlowTable, FlowTable6, InsertError,
        RstWindow, TcpState,
    },
    ids::{BackendId, PoolIndex, ServiceId, WorkerId},
    neigh::NextHop,
    packet::{
        ethernet,
        icmp::{self, IcmpError},
        icmpv6::Icmpv6Error,
        ipv6::{self, L4Frame6},
        peek_endpoints, DropReason, L4Frame, L4Proto, MacPair, TcpFlags,
    },
    protocol::{Event, EventSink, Lane, SLOW_FRAME_MAX},
    stats::{BackendTraffic, WorkerDrop, WorkerStats},
};

/// One service as a worker sees it: its own copy of the selection state (so picks
/// need no lock), and the id of its first daemon (the others follow in order).
/// `A` is its family's address (`SocketAddrV6` for an IPv6 service).
#[derive(Debug, PartialEq)]
pub struct ServiceSlot<A = SocketAddrV4> {
    pub pool: Pool<A>,
    pub first_backend: BackendId,
}

impl<A> ServiceSlot<A> {
    fn backend(&self, local: PoolIndex) -> BackendId {
        BackendId(self.first_backend.0 + local.0)
    }
}

/// A daemon a reload removed whose connections go on to their end
/// (`on_remove = "finish"`): in the plane for their records and its replies, in
/// no service's selection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retired {
    pub daemon: SocketAddr,
    /// The service it answered for: its replies still leave as from it (of the
    /// daemon's family).
    pub service: SocketAddr,
    /// That service's protocol: the daemon's replies are of it.
    pub protocol: Protocol,
}

impl Retired {
    /// The daemon and its service if they are IPv4.
    pub fn v4(&self) -> Option<(SocketAddrV4, SocketAddrV4)> {
        match (self.daemon, self.service) {
            (SocketAddr::V4(d), SocketAddr::V4(s)) => Some((d, s)),
            _ => None,
        }
    }
}

/// Which pool of a plane a daemon is in: its family's list of services, the
/// service's index in it, and the daemon's place in the service's pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub v6: bool,
    pub service: ServiceId,
    pub local: PoolIndex,
}

/// A pool of either family, for what does not depend on the daemons' addresses.
enum PoolMut<'a> {
    V4(&'a mut Pool),
    V6(&'a mut Pool<SocketAddrV6>),
}

macro_rules! on_pool {
    ($pool:expr, $p:ident => $e:expr) => {
        match $pool {
            PoolMut::V4($p) => $e,
            PoolMut::V6($p) => $e,
        }
    };
}

/// What a worker needs to decide a frame's fate; built once per worker at start
/// and on every reload.
///
/// IPv6 services have maps and slots of their own (`*6`), next to the IPv4
/// ones, so that an IPv4 lookup keeps its 8-byte key; daemon ids
/// ([`BackendId`]) run over both families: the IPv4 daemons', then the IPv6
/// daemons', then the retired ones of either family.
pub struct Dataplane {
    pub services: Vec<ServiceSlot>,
    /// Keyed by [`endpoint_key`] of the VIP, port and protocol.
    pub service_by_vip: AHashMap<u64, ServiceId>,
    /// A reply's source (and protocol) decides its new source: the daemon's
    /// service; and names the daemon's id, for its traffic counters.
    pub service_by_daemon: AHashMap<u64, (SocketAddrV4, BackendId)>,
    /// IPv6 services, indexed by the [`ServiceId`]s of `service_by_vip6`.
    pub services6: Vec<ServiceSlot<SocketAddrV6>>,
    /// Keyed by [`endpoint_key6`] of the VIP, port and protocol.
    pub service_by_vip6: AHashMap<Endpoint6, ServiceId>,
    /// [`service_by_daemon`](Self::service_by_daemon) for IPv6 daemons.
    pub service_by_daemon6: AHashMap<Endpoint6, (SocketAddrV6, BackendId)>,
    /// Each daemon's frames and bytes through this worker, indexed by
    /// [`BackendId`]: this plane's own bank (see [`BackendTraffic`]).
    pub traffic: Arc<[BackendTraffic]>,
    /// Indexed by [`BackendId`].
    pub next_hops: Arc<[NextHop]>,
    /// Where each daemon sits, indexed by [`BackendId`].
    pub backend_owner: Vec<Owner>,
    pub back_mac: [u8; 6],
    /// The owning worker, reported with each new connection.
    pub worker: WorkerId,
    /// Every daemon's id, by address and IP protocol number (one ADDR:PORT may
    /// serve a TCP and a UDP service: two daemons): how a record of an earlier
    /// epoch finds its daemon's id in this plane, by its key's protocol.
    pub ids: AHashMap<(SocketAddrV4, u8), BackendId>,
    /// [`ids`](Self::ids) of the IPv6 daemons (flow label and scope 0).
    pub ids6: AHashMap<(SocketAddrV6, u8), BackendId>,
    /// Per [`BackendId`]: records made before this time are gone (the daemon
    /// failed and its connections were reset).
    pub reset_before: Vec<u64>,
    /// Daemons from this id on are retired (see [`Retired`]): always draining,
    /// whatever the plane they were taken over from said.
    pub first_retired: usize,
    /// Bumped by every change that can invalidate a record's `backend` (a
    /// reload, a reset): records of an older epoch are brought up to date when
    /// met, by the packet path or the worker's sweep.
    pub epoch: u8,
    /// A record idle this long is removed by the worker's own sweep, whatever
    /// the loop said: a lost message can never keep a record for good.
    pub age_limit_ns: u64,
    /// Client SYNs announcing a larger MSS are lowered to this (`mss_clamp`).
    pub mss_clamp: Option<u16>,
    /// The same path's MSS for IPv6 SYNs ([`ipv6_mss`]).
    pub mss_clamp6: Option<u16>,
}

/// The MSS of an IPv6 segment on the path whose IPv4 MSS is `mss_clamp`:
/// the IPv6 header is 20 bytes longer than IPv4's, and never below the MSS of
/// IPv6's minimum MTU (1280 - 60).
pub fn ipv6_mss(mss_clamp: u16) -> u16 {
    mss_clamp.saturating_sub(20).max(1220)
}

/// An address, port and IP protocol number as one integer: hashed with a
/// single write, where `SocketAddrV4`'s own Hash feeds the hasher field by field.
#[inline]
pub fn endpoint_key(addr: SocketAddrV4, protocol: u8) -> u64 {
    (u64::from(u32::from(*addr.ip())) << 24) | (u64::from(protocol) << 16) | u64::from(addr.port())
}

/// An IPv6 address, port and IP protocol number as one hashable value: the
/// address as one `u128`, the port and protocol as one `u32`.
pub type Endpoint6 = (u128, u32);

/// [`endpoint_key`] for IPv6 (flow label and scope are not part of it).
#[inline]
pub fn endpoint_key6(addr: SocketAddrV6, protocol: u8) -> Endpoint6 {
    (
        u128::from(*addr.ip()),
        (u32::from(protocol) << 16) | u32::from(addr.port()),
    )
}

/// `addr` without flow label or scope: how the plane keys an IPv6 daemon.
#[inline]
fn bare6(addr: SocketAddrV6) -> SocketAddrV6 {
    SocketAddrV6::new(*addr.ip(), addr.port(), 0, 0)
}

/// One family's services into `slots` and its VIP and daemon maps; the daemons
/// take the ids from `backend_owner.len()` on.
fn add_services<A: DaemonAddr, K: Copy + Eq + std::hash::Hash>(
    services: &[ServiceConfig<A>],
    v6: bool,
    key: impl Fn(A, u8) -> K,
    slots: &mut Vec<ServiceSlot<A>>,
    service_by_vip: &mut AHashMap<K, ServiceId>,
    service_by_daemon: &mut AHashMap<K, (A, BackendId)>,
    backend_owner: &mut Vec<Owner>,
) -> Result<()> {
    for s in services {
        let id = ServiceId::from_index(slots.len()).context("more than 65535 services")?;
        let pool =
            Pool::new(s.policy, &s.backends).with_context(|| format!("service {}", s.address))?;
        let first_backend =
            BackendId::from_index(backend_owner.len()).context("more than 65535 daemons")?;
        slots.push(ServiceSlot {
            pool,
            first_backend,
        });
        service_by_vip.insert(key(s.address, s.protocol.number()), id);
        for (local, b) in s.backends.iter().enumerate() {
            let backend =
                BackendId::from_index(backend_owner.len()).context("more than 65535 daemons")?;
            service_by_daemon.insert(key(b.addr, s.protocol.number()), (s.address, backend));
            backend_owner.push(Owner {
                v6,
                service: id,
                local: PoolIndex(local as u16),
            });
        }
    }
    Ok(())
}

/// One family's retired daemons, `(id, daemon, service, protocol)` in id
/// order: a pool of their own per protocol that no VIP leads to, every daemon
/// draining. Per protocol, because one ADDR:PORT may be a TCP and a UDP
/// daemon, and a pool holds an address once.
fn add_retired<A: DaemonAddr, K: Copy + Eq + std::hash::Hash>(
    retired: &[(BackendId, A, A, Protocol)],
    v6: bool,
    key: impl Fn(A, u8) -> K,
    slots: &mut Vec<ServiceSlot<A>>,
    service_by_daemon: &mut AHashMap<K, (A, BackendId)>,
    backend_owner: &mut [Owner],
) -> Result<()> {
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        let of_protocol: Vec<_> = retired.iter().filter(|r| r.3 == protocol).collect();
        let Some(&&(first_backend, ..)) = of_protocol.first() else {
            continue;
        };
        let id = ServiceId::from_index(slots.len()).context("more than 65535 services")?;
        let specs: Vec<BackendSpec<A>> = of_protocol
            .iter()
            .map(|&&(_, addr, ..)| BackendSpec { addr, weight: 1 })
            .collect();
        let mut pool = Pool::new(PolicyKind::RoundRobin, &specs).context("retired daemons")?;
        for (local, &&(backend, daemon, service, _)) in of_protocol.iter().enumerate() {
            let local = PoolIndex(local as u16);
            pool.set_state(local, BackendState::Draining);
            service_by_daemon.insert(key(daemon, protocol.number()), (service, backend));
            backend_owner[backend.index()] = Owner {
                v6,
                service: id,
                local,
            };
        }
        // `first_backend` names the pool's first daemon only: retired daemons
        // of both families and protocols share one run of ids, and no VIP
        // leads here to pick.
        slots.push(ServiceSlot {
            pool,
            first_backend,
        });
    }
    Ok(())
}

impl Dataplane {
    /// One worker's view of `services` and `services6`; daemons get the ids of
    /// [`Config::daemons`](crate::config::Config::daemons) then
    /// [`Config::daemons6`](crate::config::Config::daemons6), then the
    /// `retired` ones in order: the ids that index `next_hops`.
    pub fn build(
        worker: WorkerId,
        services: &[ServiceConfig],
        services6: &[Service6Config],
        retired: &[Retired],
        next_hops: Arc<[NextHop]>,
        back_mac: [u8; 6],
    ) -> Result<Self> {
        let mut slots = Vec::with_capacity(services.len());
        let mut service_by_vip = AHashMap::new();
        let mut service_by_daemon = AHashMap::new();
        let mut slots6 = Vec::with_capacity(services6.len());
        let mut service_by_vip6 = AHashMap::new();
        let mut service_by_daemon6 = AHashMap::new();
        let mut backend_owner = Vec::new();
        add_services(
            services,
            false,
            endpoint_key,
            &mut slots,
            &mut service_by_vip,
            &mut service_by_daemon,
            &mut backend_owner,
        )?;
        let bare: Vec<Service6Config> = services6
            .iter()
            .map(|s| Service6Config {
                address: bare6(s.address),
                backends: (s.backends.iter())
                    .map(|b| BackendSpec {
                        addr: bare6(b.addr),
                        weight: b.weight,
                    })
                    .collect(),
                ..s.clone()
            })
            .collect();
        add_services(
            &bare,
            true,
            endpoint_key6,
            &mut slots6,
            &mut service_by_vip6,
            &mut service_by_daemon6,
            &mut backend_owner,
        )?;
        // Retired daemons follow, in a pool of their own per family.
        let first_retired = backend_owner.len();
        let mut retired4 = Vec::new();
        let mut retired6 = Vec::new();
        for (i, r) in retired.iter().enumerate() {
            let id = BackendId::from_index(first_retired + i).context("more than 65535 daemons")?;
            match (r.daemon, r.service) {
                (SocketAddr::V4(d), SocketAddr::V4(s)) => retired4.push((id, d, s, r.protocol)),
                (SocketAddr::V6(d), SocketAddr::V6(s)) => {
                    retired6.push((id, bare6(d), bare6(s), r.protocol))
                }
                _ => anyhow::bail!(
                    "retired daemon {} of service {}: a service and its daemons are of one family",
                    r.daemon,
                    r.service
                ),
            }
            // Overwritten by add_retired.
            backend_owner.push(Owner {
                v6: false,
                service: ServiceId(0),
                local: PoolIndex(0),
            });
        }
        add_retired(
            &retired4,
            false,
            endpoint_key,
            &mut slots,
            &mut service_by_daemon,
            &mut backend_owner,
        )?;
        add_retired(
            &retired6,
            true,
            endpoint_key6,
            &mut slots6,
            &mut service_by_daemon6,
            &mut backend_owner,
        )?;
        debug_assert!(daemons_of(services)
            .zip(&backend_owner)
            .all(|((id, _, b), o)| {
                let slot = &slots[o.service.index()];
                !o.v6 && slot.backend(o.local) == id && slot.pool.addr(o.local) == b.addr
            }));
        anyhow::ensure!(
            backend_owner.len() == next_hops.len(),
            "{} daemons but {} next hops",
            backend_owner.len(),
            next_hops.len()
        );
        let ids = (services.iter())
            .flat_map(|s| {
                s.backends
                    .iter()
                    .map(move |b| (b.addr, s.protocol.number()))
            })
            .zip(daemons_of(services))
            .map(|(key, (id, ..))| (key, id))
            .chain(retired4.iter().map(|&(id, d, _, p)| ((d, p.number()), id)))
            .collect();
        let ids6 = (slots6.iter())
            .zip(&bare)
            .flat_map(|(slot, s)| {
                (s.backends.iter().enumerate()).map(|(local, b)| {
                    let id = slot.backend(PoolIndex(local as u16));
                    ((b.addr, s.protocol.number()), id)
                })
            })
            .chain(retired6.iter().map(|&(id, d, _, p)| ((d, p.number()), id)))
            .collect();
        Ok(Self {
            services: slots,
            service_by_vip,
            service_by_daemon,
            services6: slots6,
            service_by_vip6,
            service_by_daemon6,
            ids6,
            traffic: BackendTraffic::bank(backend_owner.len()),
            next_hops,
            reset_before: vec![0; backend_owner.len()],
            first_retired,
            backend_owner,
            back_mac,
            worker,
            ids,
            epoch: 0,
            age_limit_ns: u64::MAX,
            mss_clamp: None,
            mss_clamp6: None,
        })
    }

    /// This plane with client SYNs clamped to `mss` (see [`Dataplane::mss_clamp`]).
    pub fn with_mss_clamp(mut self, mss: Option<u16>) -> Self {
        self.mss_clamp = mss;
        self.mss_clamp6 = mss.map(ipv6_mss);
        self
    }
}

impl Dataplane {
    fn pool_of(&mut self, backend: BackendId) -> Option<(PoolMut<'_>, PoolIndex)> {
        let &Owner { v6, service, local } = self.backend_owner.get(backend.index())?;
        let pool = if v6 {
            PoolMut::V6(&mut self.services6[service.index()].pool)
        } else {
            PoolMut::V4(&mut self.services[service.index()].pool)
        };
        Some((pool, local))
    }

    pub fn connection_closed(&mut self, backend: BackendId) {
        if let Some((pool, local)) = self.pool_of(backend) {
            on_pool!(pool, p => p.connection_closed(local));
        }
    }

    /// Whether `backend`'s daemon takes new connections (it is up, not
    /// draining or down).
    fn takes_new(&mut self, backend: BackendId) -> bool {
        self.pool_of(backend)
            .is_some_and(|(pool, local)| on_pool!(pool, p => p.state(local)) == BackendState::Up)
    }

    /// Whether a record a segment found still stands: it is current
    /// ([`current`](Self::current)), and
    /// - for a client's bare SYN on a closing connection, its daemon takes new
    ///   connections. The client reused the port: the SYN is a new connection,
    ///   which a draining or down daemon must not get (IPVS too schedules a SYN
    ///   on a closed connection's entry afresh);
    /// - for a UDP datagram, its daemon has a next hop. One routed off the back
    ///   has none, and every datagram of the flow would be dropped while
    ///   keeping the record alive: with no connection to lose, the flow picks
    ///   afresh (IPVS's `expire_nodest_conn` for a daemon gone).
    ///
    /// Refused, the record goes (its daemon's count with it) and the segment
    /// picks like any first one.
    #[inline(always)]
    fn stands<R: PlaneRecord>(&mut self, record: &mut R, segment: &ClientSegment) -> bool {
        if !record.is_current(self) {
            return false;
        }
        let backend = record.backend();
        let moves = if segment.is_udp {
            self.next_hops[backend.index()].get().is_none()
        } else {
            segment.reopens() && record.state().is_closing() && !self.takes_new(backend)
        };
        if moves {
            self.connection_closed(backend);
        }
        !moves
    }

    pub fn set_backend_state(&mut self, backend: BackendId, state: BackendState) {
        if let Some((pool, local)) = self.pool_of(backend) {
            on_pool!(pool, p => p.set_state(local, state));
        }
    }

    /// Forgets a daemon's active connections (its records were dropped).
    pub fn reset_active(&mut self, backend: BackendId) {
        if let Some((pool, local)) = self.pool_of(backend) {
            on_pool!(pool, p => while p.active(local) > 0 {
                p.connection_closed(local);
            });
        }
    }

    fn connection_opened(&mut self, backend: BackendId) {
        if let Some((pool, local)) = self.pool_of(backend) {
            on_pool!(pool, p => p.connection_opened(local));
        }
    }

    /// The id of a daemon of either family in this plane, by its address and
    /// its service's IP protocol number.
    fn id_of(&self, addr: SocketAddr, protocol: u8) -> Option<BackendId> {
        match addr {
            SocketAddr::V4(a) => self.ids.get(&(a, protocol)).copied(),
            SocketAddr::V6(a) => self.ids6.get(&(bare6(a), protocol)).copied(),
        }
    }

    /// Every daemon of the plane, by address and IP protocol number, with its
    /// state and connection count: what a reload carries over.
    pub(crate) fn daemons(&self) -> impl Iterator<Item = (SocketAddr, u8, BackendState, u32)> + '_ {
        let v4 = (self.ids.iter()).map(|(&(a, p), &id)| (SocketAddr::V4(a), p, id));
        let v6 = (self.ids6.iter()).map(|(&(a, p), &id)| (SocketAddr::V6(a), p, id));
        v4.chain(v6).filter_map(|(addr, protocol, id)| {
            let &Owner { v6, service, local } = self.backend_owner.get(id.index())?;
            let (state, active) = if v6 {
                let p = &self.services6[service.index()].pool;
                (p.state(local), p.active(local))
            } else {
                let p = &self.services[service.index()].pool;
                (p.state(local), p.active(local))
            };
            Some((addr, protocol, state, active))
        })
    }

    /// [`adopt`](Self::adopt) for an IPv6 record.
    pub fn adopt6(&mut self, record: &mut FlowRecord6) -> bool {
        let Some(&id) = self.ids6.get(&(record.daemon(), record.key.protocol)) else {
            return false;
        };
        record.backend = id;
        record.epoch = self.epoch;
        self.connection_opened(id);
        true
    }

    /// [`current`](Self::current) for an IPv6 record.
    #[inline(always)]
    pub fn current6(&self, record: &mut FlowRecord6) -> bool {
        record.epoch == self.epoch || self.refresh6(record)
    }

    #[cold]
    fn refresh6(&self, record: &mut FlowRecord6) -> bool {
        match self.ids6.get(&(record.daemon(), record.key.protocol)) {
            Some(&id) if record.created_ns >= self.reset_before[id.index()] => {
                record.backend = id;
                record.epoch = self.epoch;
                true
            }
            _ => false,
        }
    }

    /// Takes a record another process made (a takeover): points it at this
    /// plane's id for its daemon, by address, and counts it as one of that
    /// daemon's connections. False if the daemon is not in this plane.
    pub fn adopt(&mut self, record: &mut FlowRecord) -> bool {
        let Some(&id) = self.ids.get(&(record.daemon, record.key.protocol)) else {
            return false;
        };
        record.backend = id;
        record.epoch = self.epoch;
        self.connection_opened(id);
        true
    }

    /// Whether `record` still stands, brought up to this plane's epoch: its
    /// daemon is found by address (a reload may have given it another id); false
    /// if the daemon is no longer configured or its connections were reset after
    /// the record was made. Connection counts are not touched: they were carried
    /// over by [`take_over`](Self::take_over), or zeroed by the reset.
    #[inline(always)]
    pub fn current(&self, record: &mut FlowRecord) -> bool {
        record.epoch == self.epoch || self.refresh(record)
    }

    #[cold]
    fn refresh(&self, record: &mut FlowRecord) -> bool {
        match self.ids.get(&(record.daemon, record.key.protocol)) {
            Some(&id) if record.created_ns >= self.reset_before[id.index()] => {
                record.backend = id;
                record.epoch = self.epoch;
                true
            }
            _ => false,
        }
    }

    /// A failed daemon's connections are reset: its records made before
    /// `now_ns` are gone (each when next met, by a packet or the sweep).
    pub fn reset_daemon(&mut self, backend: BackendId, now_ns: u64) {
        if let Some(at) = self.reset_before.get_mut(backend.index()) {
            *at = now_ns;
            self.reset_active(backend);
            self.epoch = self.epoch.wrapping_add(1);
        }
    }

    /// Takes over from the plane a reload replaces: daemons that remain keep
    /// their up/down/draining state, their connection counts and their resets,
    /// by address, and the epoch moves on so that every record is re-pointed by
    /// address when next met. O(daemons): the records are left to the packet
    /// path and the worker's sweep.
    pub fn take_over(&mut self, old: &Dataplane) {
        for (addr, protocol, state, active) in old.daemons() {
            let Some(id) = self.id_of(addr, protocol) else {
                continue;
            };
            let old_id = old.id_of(addr, protocol);
            // A retired daemon's state is not its own choice (it is
            // draining because it was removed): it is not carried either way.
            let old_retired = old_id.is_some_and(|o| o.index() >= old.first_retired);
            if !old_retired && id.index() < self.first_retired {
                self.set_backend_state(id, state);
            }
            if let Some((pool, new_local)) = self.pool_of(id) {
                on_pool!(pool, p => p.connections_carried(new_local, active));
            }
            if let Some(old_id) = old_id {
                self.reset_before[id.index()] = old.reset_before[old_id.index()];
            }
        }
        self.epoch = old.epoch.wrapping_add(1);
    }
}

/// What the worker's commands and sweep need of a record of either family:
/// the same handling for both tables, monomorphised per family.
pub trait PlaneRecord: crate::flow::Record<Key = Self::FlowKey> {
    type FlowKey: Lane + Eq + Copy;
    /// [`Dataplane::current`] or [`Dataplane::current6`].
    fn is_current(&mut self, plane: &Dataplane) -> bool;
    fn backend(&self) -> BackendId;
    fn created_ns(&self) -> u64;
    fn last_seen_ns(&self) -> u64;
    fn client_ack(&self) -> u32;
    fn state(&self) -> TcpState;
    fn state_mut(&mut self) -> &mut TcpState;
    /// What a client segment updates, for [`follow_client`].
    fn client_track(&mut self) -> ClientTrack<'_>;
}

/// The part of a record of either family that follows the client's side.
pub struct ClientTrack<'a> {
    state: &'a mut TcpState,
    created_ns: &'a mut u64,
    last_seen_ns: &'a mut u64,
    client_next: &'a mut u32,
    client_ack: &'a mut u32,
}

macro_rules! plane_record {
    ($record:ty, $key:ty, $current:ident) => {
        impl PlaneRecord for $record {
            type FlowKey = $key;
            #[inline]
            fn is_current(&mut self, plane: &Dataplane) -> bool {
                plane.$current(self)
            }
            #[inline]
            fn backend(&self) -> BackendId {
                self.backend
            }
            #[inline]
            fn created_ns(&self) -> u64 {
                self.created_ns
            }
            #[inline]
            fn last_seen_ns(&self) -> u64 {
                self.last_seen_ns
            }
            #[inline]
            fn client_ack(&self) -> u32 {
                self.client_ack
            }
            #[inline]
            fn state(&self) -> TcpState {
                self.state
            }
            #[inline]
            fn state_mut(&mut self) -> &mut TcpState {
                &mut self.state
            }
            #[inline]
            fn client_track(&mut self) -> ClientTrack<'_> {
                ClientTrack {
                    state: &mut self.state,
                    created_ns: &mut self.created_ns,
                    last_seen_ns: &mut self.last_seen_ns,
                    client_next: &mut self.client_next,
                    client_ack: &mut self.client_ack,
                }
            }
        }
    };
}

plane_record!(FlowRecord, FlowKey, current);
plane_record!(FlowRecord6, FlowKey6, current6);

/// How many frames ahead of the one being handled a batch prefetches: far enough
/// for a cache miss to be served meanwhile, few enough that the lines are not
/// evicted again before use and the CPU's miss buffers are not overrun.
pub const PREFETCH_AHEAD: usize = 8;

/// How many frames ahead of the one being handled a batch starts loading the
/// frame's first cache line (an IPv4 frame's headers, TCP options aside), so
/// that by the time `prefetch` reads them, [`PREFETCH_AHEAD`] frames later,
/// they are in the cache. Under load a frame waits behind a full RX ring of
/// frames the kernel copied after it (megabytes of 1500-byte ones), and its
/// headers are out of the cache: `prefetch`'s own read of them then stalled
/// the batch once per frame.
pub const WARM_AHEAD: usize = 2 * PREFETCH_AHEAD;

/// Hands each of `items` to `handle` in order, after `prefetch` has seen the item
/// [`PREFETCH_AHEAD`] places later and `warm` the item [`WARM_AHEAD`] places
/// later: the memory one packet needs is loaded while the packets before it are
/// handled. What `prefetch` learns about an item comes back with it to `handle`.
/// Both are given `handler` rather than capturing it, so that neither needs the
/// other's borrow.
#[inline(always)]
pub fn pipelined<T, F: FrameHandler>(
    items: &mut [T],
    handler: &mut F,
    warm: impl Fn(&T),
    prefetch: impl Fn(&F, &T) -> F::Hint,
    mut handle: impl FnMut(&mut F, &mut T, F::Hint),
) {
    const RING: usize = (PREFETCH_AHEAD + 1).next_power_of_two();
    let mut hints = [F::Hint::default(); RING];
    for item in items.iter().take(WARM_AHEAD) {
        warm(item);
    }
    for (i, item) in items.iter().take(PREFETCH_AHEAD).enumerate() {
        hints[i] = prefetch(handler, item);
    }
    for i in 0..items.len() {
        let hint = hints[i % RING];
        if let Some(far) = items.get(i + WARM_AHEAD) {
            warm(far);
        }
        if let Some(ahead) = items.get(i + PREFETCH_AHEAD) {
            hints[(i + PREFETCH_AHEAD) % RING] = prefetch(handler, ahead);
        }
        handle(handler, &mut items[i], hint);
    }
}

/// What a worker does with each frame of one direction of a batch.
pub trait FrameHandler {
    /// What [`prefetch`](Self::prefetch) learns that [`handle`](Self::handle)
    /// can reuse.
    type Hint: Copy + Default;
    /// Starts loading the memory that handling `frame` will touch.
    fn prefetch(&self, frame: &[u8]) -> Self::Hint;
    /// Rewrites `frame` in place; false if it is to be dropped.
    fn handle(&mut self, frame: &mut [u8], hint: Self::Hint) -> bool;
}

/// A frame's flow key as peeked before parsing, and the key's hash in the
/// worker's table: the hash is computed once per packet.
#[derive(Clone, Copy, Debug)]
pub struct FlowHint {
    key: FlowKey,
    hash: FlowHash,
}

/// Client-to-daemon frames: [`forward`] or [`forward6`] with what they need.
///
/// The IPv4 path is what it was before IPv6, to the instruction: the family
/// is not looked at on it. An IPv6 frame fails the IPv4 parse at its
/// ethertype (bytes 12-13, `DropReason::Ipv6`), and that error, and only it,
/// leads to [`forward6`]. Any look at the family on the way (a branch in the
/// prefetch or before the parse, a wider hint carrying the family) cost the
/// IPv4 rows of the microbench 1-4 ns a frame of their 20-35. The prefetch is
/// IPv4's alone: an IPv6 frame's (meaningless) IPv4 hint prefetches a slot in
/// vain, and `forward6` hashes its key itself.
pub struct Forwarder<'a> {
    pub table: &'a mut FlowTable,
    pub table6: &'a mut FlowTable6,
    pub plane: &'a mut Dataplane,
    pub events: &'a mut EventSink,
    pub stats: &'a WorkerStats,
    pub now_ns: u64,
}

impl FrameHandler for Forwarder<'_> {
    type Hint = Option<FlowHint>;

    #[inline(always)]
    fn prefetch(&self, frame: &[u8]) -> Option<FlowHint> {
        let (client, service, protocol) = peek_endpoints(frame)?;
        let key = FlowKey::new(client, service, protocol);
        let hash = self.table.hash(&key);
        self.table.prefetch(hash);
        Some(FlowHint { key, hash })
    }

    #[inline(always)]
    fn handle(&mut self, frame: &mut [u8], hint: Option<FlowHint>) -> bool {
        forward_any(
            frame,
            self.table,
            Some(&mut *self.table6),
            self.plane,
            self.events,
            self.stats,
            self.now_ns,
            hint,
        )
    }
}

/// Daemon-to-client frames: [`reverse`] with what it needs. Its lookup is in a
/// map of a few daemons, which stays in cache: nothing to prefetch.
pub struct Reverser<'a> {
    pub plane: &'a Dataplane,
    pub events: &'a mut EventSink,
    pub stats: &'a WorkerStats,
    pub now_ns: u64,
}

impl FrameHandler for Reverser<'_> {
    type Hint = ();

    #[inline(always)]
    fn prefetch(&self, _frame: &[u8]) {}

    #[inline(always)]
    fn handle(&mut self, frame: &mut [u8], _hint: ()) -> bool {
        reverse(frame, self.plane, self.events, self.stats, self.now_ns)
    }
}

/// Whether a frame that is not TCP or UDP is ICMP: the XDP program steers ICMP
/// errors about connections to the same sockets as their segments.
#[inline]
fn is_icmp(reason: DropReason, frame: &[u8]) -> bool {
    reason == DropReason::UnsupportedProtocol
        && icmp::peek_protocol(frame) == Some(icmp::PROTO_ICMP)
}

/// [`is_icmp`] for an IPv6 frame: its next header is ICMPv6 (extension
/// headers before it are not walked; see `packet::ipv6`).
#[inline]
fn is_icmp6(reason: DropReason, frame: &[u8]) -> bool {
    reason == DropReason::UnsupportedProtocol
        && frame.get(ethernet::HEADER_LEN + ipv6::field::NEXT_HEADER) == Some(&ipv6::NEXT_ICMPV6)
}

#[inline]
fn drop_with(stats: &WorkerStats, why: WorkerDrop) -> bool {
    stats.dropped[why as usize].add(1);
    false
}

/// Client to daemon: find or create the connection's record, rewrite the
/// destination to its daemon. A prefetch's `hint` saves hashing the key again
/// when it was of the same key.
#[inline(always)]
pub fn forward(
    frame: &mut [u8],
    table: &mut FlowTable,
    plane: &mut Dataplane,
    events: &mut EventSink,
    stats: &WorkerStats,
    now_ns: u64,
    hint: Option<FlowHint>,
) -> bool {
    forward_any(frame, table, None, plane, events, stats, now_ns, hint)
}

/// [`forward`], and with `table6`, an IPv6 frame to [`forward6`] (see
/// [`Forwarder`]); without it, an IPv6 frame is an invalid one, counted.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_any(
    frame: &mut [u8],
    table: &mut FlowTable,
    table6: Option<&mut FlowTable6>,
    plane: &mut Dataplane,
    events: &mut EventSink,
    stats: &WorkerStats,
    now_ns: u64,
    hint: Option<FlowHint>,
) -> bool {
    let frame_len = frame.len() as u64;
    let mut pkt = match L4Frame::parse(frame) {
        Ok(pkt) => pkt,
        Err(reason) => {
            if let (DropReason::Ipv6, Some(table6)) = (reason, table6) {
                return forward6_out_of_line(frame, table6, plane, events, stats, now_ns);
            }
            if is_icmp(reason, frame) {
                return icmp_from_front(frame, events, stats);
            }
            stats.invalid[reason.index()].add(1);
            return false;
        }
    };
    let key = FlowKey::new(pkt.src(), pkt.dst(), pkt.protocol().number());
    let hash = match hint {
        Some(hint) if hint.key == key => hint.hash,
        _ => table.hash(&key),
    };
    let segment = ClientSegment::new(
        pkt.tcp_flags(),
        pkt.protocol() == L4Proto::Udp,
        pkt.tcp_seq_next(),
        pkt.tcp_ack(),
    );
    let valid = |r: &mut FlowRecord| plane.stands(r, &segment);
    let mut restarted = None;
    let (daemon, backend, opened) = match table.get_valid_hashed(&key, hash, valid) {
        Some(record) => {
            let opened = follow_client(record, key, &segment, events, stats, now_ns);
            if opened {
                restarted = Some(*record);
            }
            (record.daemon, record.backend, opened)
        }
        None if !segment.opens_connection => {
            // Only a connection's first segment may pick a daemon; anything else
            // without a record belongs to a connection we never saw, which a
            // maglev service can still place.
            let Some(found) = recover(&mut pkt, key, hash, table, plane, stats, now_ns) else {
                return false;
            };
            events.emit(
                Event::Recovered {
                    worker: plane.worker,
                    key,
                    daemon: found.0,
                    at_ns: now_ns,
                },
                stats,
            );
            (found.0, found.1, false)
        }
        None => {
            if !pkt.l4_checksum_ok() {
                return drop_with(stats, WorkerDrop::BadSynChecksum);
            }
            let Some(&service) = plane
                .service_by_vip
                .get(&endpoint_key(key.service(), key.protocol))
            else {
                return drop_with(stats, WorkerDrop::UnknownService);
            };
            let slot = &mut plane.services[service.index()];
            // A UDP datagram without a record may be a flow's first or one
            // whose record is gone (a restart, another instance): nothing
            // tells them apart. Maglev's pick is a pure function of the daemons
            // taking new flows, so the same set places a flow where it was;
            // a draining daemon takes no new flow, as for TCP.
            let Some(local) = slot.pool.select(&key) else {
                return drop_with(stats, WorkerDrop::NoBackend);
            };
            let backend = slot.backend(local);
            let daemon = slot.pool.addr(local);
            // Refuse before recording: the client's retransmitted SYN then gets
            // a fresh pick instead of the same unreachable daemon.
            if plane.next_hops[backend.index()].get().is_none() {
                return drop_with(stats, WorkerDrop::NoNeighbour);
            }
            let mut state = TcpState::default();
            state.on_client_segment(segment.flags.0);
            let record = FlowRecord {
                key,
                backend,
                daemon,
                created_ns: now_ns,
                last_seen_ns: now_ns,
                client_next: segment.next,
                client_ack: 0,
                state,
                epoch: plane.epoch,
            };
            // `Exists` cannot happen right after a miss with this worker the only
            // writer; either way the connection is refused rather than mis-counted.
            if let Err(InsertError::Full { .. } | InsertError::Exists) =
                table.insert_hashed(record, hash)
            {
                return drop_with(stats, WorkerDrop::TableFull);
            }
            slot.pool.connection_opened(local);
            stats.new_flows.add(1);
            (daemon, backend, true)
        }
    };
    if let Some(record) = restarted {
        // Its key may have gone to a direct connection meanwhile (see
        // `TRACKED_BY_WORKER` in bpf/steer.bpf.c): the tracked map takes it back.
        table.note_restarted(record);
    }
    if opened {
        let worker = plane.worker;
        events.emit(
            Event::Opened {
                worker,
                key,
                daemon,
                at_ns: now_ns,
            },
            stats,
        );
    }
    let Some(dst_mac) = plane.next_hops[backend.index()].get() else {
        return drop_with(stats, WorkerDrop::NoNeighbour);
    };
    if let Some(traffic) = plane.traffic.get(backend.index()) {
        traffic.to_packets.add(1);
        traffic.to_bytes.add(frame_len);
    }
    pkt.rewrite_forward(
        daemon,
        &MacPair {
            src: plane.back_mac,
            dst: dst_mac,
        },
    );
    if segment.opens_connection {
        if let Some(mss) = plane.mss_clamp {
            if pkt.clamp_mss(mss) {
                stats.mss_clamped.add(1);
            }
        }
    }
    true
}

/// A segment from the client, as [`follow_client`] needs it.
#[derive(Clone, Copy)]
struct ClientSegment {
    flags: TcpFlags,
    is_udp: bool,
    /// A UDP datagram, or a SYN without ACK.
    opens_connection: bool,
    seq: u32,
    /// The sequence number after the segment.
    next: u32,
    ack: u32,
}

impl ClientSegment {
    #[inline(always)]
    fn new(flags: TcpFlags, is_udp: bool, (seq, next): (u32, u32), ack: u32) -> Self {
        Self {
            flags,
            is_udp,
            // UDP has no handshake: any datagram without a record starts a flow.
            opens_connection: is_udp || (flags.syn() && !flags.ack()),
            seq,
            next,
            ack,
        }
    }

    /// A bare SYN, which may restart a closing record (see `Dataplane::stands`).
    #[inline(always)]
    fn reopens(&self) -> bool {
        !self.is_udp && self.opens_connection
    }
}

/// A client segment on a connection whose record stands (IPv4 or IPv6):
/// follows the connection's state and reports what changed. True when the
/// segment restarted the record for a new connection.
#[inline(always)]
fn follow_client<R: PlaneRecord>(
    record: &mut R,
    key: R::FlowKey,
    segment: &ClientSegment,
    events: &mut EventSink,
    stats: &WorkerStats,
    now_ns: u64,
) -> bool {
    let track = record.client_track();
    let &ClientSegment {
        flags,
        is_udp,
        opens_connection,
        seq,
        mut next,
        mut ack,
    } = segment;
    *track.last_seen_ns = now_ns;
    let before = *track.state;
    if is_udp {
        // Nothing to follow: the record lives while datagrams come.
        false
    } else if opens_connection && before.is_closing() {
        // The client reuses the port of a connection that is closing (its
        // record lingers): a new connection to the same daemon (one that
        // takes no new connection refused the record: see `stands`), which
        // the loop must track afresh rather than expire with the old one.
        *track.state = TcpState::default();
        track.state.on_client_segment(flags.0);
        *track.created_ns = now_ns;
        *track.client_next = next;
        *track.client_ack = 0;
        stats.new_flows.add(1);
        true
    } else if flags.rst() {
        // The segment goes on either way: the daemon's kernel judges it
        // too. Only one in the window ends the mapping.
        if !before.contains(TcpState::RST) {
            if RstWindow::CLIENT.admits(seq, *track.client_next) {
                track.state.insert(TcpState::RST);
                events.emit(Event::Reset { key, at_ns: now_ns }, stats);
            } else {
                stats.rst_ignored.add(1);
            }
        }
        false
    } else {
        if before.contains(TcpState::RECOVERED) && !before.is_established() {
            confirm_recovered(
                track.state,
                (*track.client_next, *track.client_ack),
                flags.ack(),
                &mut next,
                &mut ack,
            );
        }
        *track.client_next = next;
        if flags.ack() {
            *track.client_ack = ack;
        }
        track.state.on_client_segment(flags.0);
        if *track.state != before {
            report_client_change(events, stats, key, before, *track.state, now_ns);
        }
        false
    }
}

/// A mid-connection segment without a record: for a `maglev` service, the
/// daemon the recovery table names gets a record, so a connection goes on
/// through a restart or a move to another instance. Every instance with the
/// same daemon set names the same daemon (the table is a pure function of the
/// daemons' addresses). The record starts short-lived (the loop expires it like
/// a half-open one) until a later client segment proves the connection (see
/// [`confirm_recovered`]): a spoofed segment costs a record for `syn_ms`, as a
/// spoofed SYN does, and no longer. Only a segment with ACK and without SYN or
/// RST qualifies (a reset without a record has nothing to end); its checksum is
/// verified, as a SYN's is, since it makes state. `None`: dropped, counted.
#[cold]
#[inline(never)]
fn recover(
    pkt: &mut L4Frame<'_>,
    key: FlowKey,
    hash: FlowHash,
    table: &mut FlowTable,
    plane: &mut Dataplane,
    stats: &WorkerStats,
    now_ns: u64,
) -> Option<(SocketAddrV4, BackendId)> {
    let flags = pkt.tcp_flags();
    let refuse = |why| {
        drop_with(stats, why);
        None
    };
    if !flags.ack() || flags.rst() || flags.syn() {
        return refuse(WorkerDrop::NoFlow);
    }
    let Some(&service) = plane
        .service_by_vip
        .get(&endpoint_key(key.service(), key.protocol))
    else {
        return refuse(WorkerDrop::UnknownService);
    };
    let slot = &mut plane.services[service.index()];
    let Some(local) = slot.pool.recover(&key) else {
        return refuse(WorkerDrop::NoFlow);
    };
    if !pkt.l4_checksum_ok() {
        return refuse(WorkerDrop::BadSynChecksum);
    }
    let backend = slot.backend(local);
    let daemon = slot.pool.addr(local);
    if plane.next_hops[backend.index()].get().is_none() {
        return refuse(WorkerDrop::NoNeighbour);
    }
    let (_, next) = pkt.tcp_seq_next();
    let mut state = TcpState::RECOVERED;
    state.on_client_segment(flags.0);
    let record = FlowRecord {
        key,
        backend,
        daemon,
        created_ns: now_ns,
        last_seen_ns: now_ns,
        client_next: next,
        client_ack: pkt.tcp_ack(),
        state,
        epoch: plane.epoch,
    };
    if table.insert_hashed(record, hash).is_err() {
        return refuse(WorkerDrop::TableFull);
    }
    slot.pool.connection_opened(local);
    stats.recovered.add(1);
    Some((daemon, backend))
}

/// A recovered record is proven once a client segment moves past what the
/// segments before it said: new data (its end beyond the furthest end seen) or
/// a larger acknowledgment (the client got something new from the daemon). A
/// duplicate, a retransmission or a keep-alive does not, and does not lower the
/// marks either (`next` and `ack`, what the record keeps, stay the furthest).
///
/// The client rather than the daemon, because the daemon's replies take the
/// stateless reverse path (any worker, any instance) and finding their record
/// would put a lookup on every reply. A flood of one spoofed segment per tuple
/// never gets past the short-lived record; a spoofer who sends a second,
/// advanced one gets what a spoofed SYN and ACK get, a record that lives until
/// idle or until the daemon's reset (its kernel has no socket for the tuple and
/// answers with one, which the record's window admits).
#[cold]
#[inline(never)]
fn confirm_recovered(
    state: &mut TcpState,
    (client_next, client_ack): (u32, u32),
    has_ack: bool,
    next: &mut u32,
    ack: &mut u32,
) {
    let after = |a: u32, b: u32| (a.wrapping_sub(b) as i32) > 0;
    if after(*next, client_next) || (has_ack && after(*ack, client_ack)) {
        state.insert(TcpState::ESTABLISHED);
    } else {
        *next = client_next;
        *ack = client_ack;
    }
}

/// Daemon to client: the daemon's address alone names the service, so no flow
/// lookup; the XDP program already set the Ethernet addresses from the kernel's FIB.
#[inline]
pub fn reverse(
    frame: &mut [u8],
    plane: &Dataplane,
    events: &mut EventSink,
    stats: &WorkerStats,
    now_ns: u64,
) -> bool {
    let frame_len = frame.len() as u64;
    let mut pkt = match L4Frame::parse(frame) {
        Ok(pkt) => pkt,
        Err(reason) => {
            // The IPv6 path leaves from the IPv4 parse's error, as forward's.
            if reason == DropReason::Ipv6 {
                return reverse6_out_of_line(frame, plane, events, stats, now_ns);
            }
            if is_icmp(reason, frame) {
                return icmp_from_back(frame, plane, stats);
            }
            stats.invalid[reason.index()].add(1);
            return false;
        }
    };
    let Some(&(service, backend)) = plane
        .service_by_daemon
        .get(&endpoint_key(pkt.src(), pkt.protocol().number()))
    else {
        return drop_with(stats, WorkerDrop::UnknownDaemon);
    };
    if let Some(traffic) = plane.traffic.get(backend.index()) {
        traffic.from_packets.add(1);
        traffic.from_bytes.add(frame_len);
    }
    let flags = pkt.tcp_flags();
    if flags.fin() || flags.rst() {
        // The record may belong to another worker (replies arrive on any queue):
        // the management loop routes by key to the owner, which judges a reset.
        let key = FlowKey::new(pkt.dst(), service, pkt.protocol().number());
        let ev = if flags.rst() {
            let (seq, _) = pkt.tcp_seq_next();
            Event::DaemonRst {
                key,
                seq,
                at_ns: now_ns,
            }
        } else {
            Event::Fin {
                key,
                from_client: false,
                at_ns: now_ns,
            }
        };
        events.emit(ev, stats);
    }
    pkt.rewrite_src(service);
    true
}

/// An ICMP error from the front about a reply: its daemon is in the record of
/// the connection, which may be another worker's (the error's queue is the
/// NIC's pick), so a copy goes to the management loop, which knows every
/// connection. Errors are rare; the copy is small (at most [`SLOW_FRAME_MAX`]
/// bytes, a longer one is cut) and the UMEM frame is freed at once.
#[cold]
fn icmp_from_front(frame: &mut [u8], events: &mut EventSink, stats: &WorkerStats) -> bool {
    let mut error = match IcmpError::parse(frame) {
        Ok(e) => e,
        Err(reason) => {
            stats.icmp_invalid[reason.index()].add(1);
            return false;
        }
    };
    error.truncate(SLOW_FRAME_MAX);
    if events.emit_frame(error.as_bytes()) {
        stats.icmp_to_loop.add(1);
    } else {
        stats.dropped[WorkerDrop::IcmpQueueFull as usize].add(1);
    }
    false
}

/// An ICMP error from the back about a client's segment: like a reply, the
/// daemon it was sent to names the service, so it is translated here, with no
/// flow lookup; the XDP program set the Ethernet addresses towards the client.
#[cold]
fn icmp_from_back(frame: &mut [u8], plane: &Dataplane, stats: &WorkerStats) -> bool {
    let mut error = match IcmpError::parse(frame) {
        Ok(e) => e,
        Err(reason) => {
            stats.icmp_invalid[reason.index()].add(1);
            return false;
        }
    };
    let Some(&(service, _)) = plane
        .service_by_daemon
        .get(&endpoint_key(error.quoted_dst(), error.quoted_protocol()))
    else {
        return drop_with(stats, WorkerDrop::UnknownDaemon);
    };
    error.rewrite_to_client(service);
    stats.icmp_to_client.add(1);
    true
}

/// [`forward`] for an IPv6 frame: the same decisions, events and counters, on
/// the worker's IPv6 table and the plane's IPv6 services. `hint`, if given, is
/// the hash of this frame's key in `table` (e.g. from a prefetch of the key
/// `packet::ipv6::peek_endpoints6` reads: the bytes the parse reads).
#[inline(always)]
pub fn forward6(
    frame: &mut [u8],
    table: &mut FlowTable6,
    plane: &mut Dataplane,
    events: &mut EventSink,
    stats: &WorkerStats,
    now_ns: u64,
    hint: Option<FlowHash>,
) -> bool {
    let frame_len = frame.len() as u64;
    let mut pkt = match L4Frame6::parse(frame) {
        Ok(pkt) => pkt,
        Err(reason) => {
            if is_icmp6(reason, frame) {
                return icmp6_from_front(frame, events, stats);
            }
            stats.invalid[reason.index()].add(1);
            return false;
        }
    };
    let key = FlowKey6::new(pkt.src(), pkt.dst(), pkt.protocol().number());
    let hash = match hint {
        Some(hash) => {
            debug_assert_eq!(hash, table.hash(&key), "a hint of another frame");
            hash
        }
        None => table.hash(&key),
    };
    let segment = ClientSegment::new(
        pkt.tcp_flags(),
        pkt.protocol() == L4Proto::Udp,
        pkt.tcp_seq_next(),
        pkt.tcp_ack(),
    );
    let valid = |r: &mut FlowRecord6| plane.stands(r, &segment);
    let mut restarted = None;
    let (daemon, backend, opened) = match table.get_valid_hashed(&key, hash, valid) {
        Some(record) => {
            let opened = follow_client(record, key, &segment, events, stats, now_ns);
            if opened {
                restarted = Some(*record);
            }
            (record.daemon(), record.backend, opened)
        }
        None if !segment.opens_connection => {
            // Only a connection's first segment may pick a daemon; anything else
            // without a record belongs to a connection we never saw, which a
            // maglev service can still place.
            let Some(found) = recover6(&mut pkt, key, hash, table, plane, stats, now_ns) else {
                return false;
            };
            events.emit(
                Event::Recovered {
                    worker: plane.worker,
                    key,
                    daemon: found.0,
                    at_ns: now_ns,
                },
                stats,
            );
            (found.0, found.1, false)
        }
        None => {
            if !pkt.l4_checksum_ok() {
                return drop_with(stats, WorkerDrop::BadSynChecksum);
            }
            let Some(&service) = plane
                .service_by_vip6
                .get(&endpoint_key6(key.service(), key.protocol))
            else {
                return drop_with(stats, WorkerDrop::UnknownService);
            };
            let slot = &mut plane.services6[service.index()];
            // A UDP datagram without a record may be a flow's first or one
            // whose record is gone (a restart, another instance): nothing
            // tells them apart. Maglev's pick is a pure function of the daemons
            // taking new flows, so the same set places a flow where it was;
            // a draining daemon takes no new flow, as for TCP.
            let Some(local) = slot.pool.select(&key) else {
                return drop_with(stats, WorkerDrop::NoBackend);
            };
            let backend = slot.backend(local);
            let daemon = slot.pool.addr(local);
            // Refuse before recording: the client's retransmitted SYN then gets
            // a fresh pick instead of the same unreachable daemon.
            if plane.next_hops[backend.index()].get().is_none() {
                return drop_with(stats, WorkerDrop::NoNeighbour);
            }
            let mut state = TcpState::default();
            state.on_client_segment(segment.flags.0);
            let record = FlowRecord6 {
                key,
                backend,
                daemon_ip: *daemon.ip(),
                daemon_port: daemon.port(),
                created_ns: now_ns,
                last_seen_ns: now_ns,
                client_next: segment.next,
                client_ack: 0,
                state,
                epoch: plane.epoch,
            };
            // `Exists` cannot happen right after a miss with this worker the only
            // writer; either way the connection is refused rather than mis-counted.
            if let Err(InsertError::Full { .. } | InsertError::Exists) =
                table.insert_hashed(record, hash)
            {
                return drop_with(stats, WorkerDrop::TableFull);
            }
            slot.pool.connection_opened(local);
            stats.new_flows.add(1);
            (daemon, backend, true)
        }
    };
    if let Some(record) = restarted {
        // Its key may have gone to a direct connection meanwhile (see
        // `TRACKED_BY_WORKER` in bpf/steer.bpf.c): the tracked map takes it back.
        table.note_restarted(record);
    }
    if opened {
        let worker = plane.worker;
        events.emit(
            Event::Opened {
                worker,
                key,
                daemon,
                at_ns: now_ns,
            },
            stats,
        );
    }
    let Some(dst_mac) = plane.next_hops[backend.index()].get() else {
        return drop_with(stats, WorkerDrop::NoNeighbour);
    };
    if let Some(traffic) = plane.traffic.get(backend.index()) {
        traffic.to_packets.add(1);
        traffic.to_bytes.add(frame_len);
    }
    pkt.rewrite_forward(
        daemon,
        &MacPair {
            src: plane.back_mac,
            dst: dst_mac,
        },
    );
    if segment.opens_connection {
        if let Some(mss) = plane.mss_clamp6 {
            if pkt.clamp_mss(mss) {
                stats.mss_clamped.add(1);
            }
        }
    }
    true
}

/// [`forward6`] called from the IPv4 path's parse error: out of line, so that
/// the IPv4 path's code does not grow by the IPv6 one.
#[inline(never)]
fn forward6_out_of_line(
    frame: &mut [u8],
    table6: &mut FlowTable6,
    plane: &mut Dataplane,
    events: &mut EventSink,
    stats: &WorkerStats,
    now_ns: u64,
) -> bool {
    forward6(frame, table6, plane, events, stats, now_ns, None)
}

/// [`reverse6`], out of line as [`forward6_out_of_line`].
#[inline(never)]
fn reverse6_out_of_line(
    frame: &mut [u8],
    plane: &Dataplane,
    events: &mut EventSink,
    stats: &WorkerStats,
    now_ns: u64,
) -> bool {
    reverse6(frame, plane, events, stats, now_ns)
}

/// [`recover`] for an IPv6 segment.
#[cold]
#[inline(never)]
fn recover6(
    pkt: &mut L4Frame6<'_>,
    key: FlowKey6,
    hash: FlowHash,
    table: &mut FlowTable6,
    plane: &mut Dataplane,
    stats: &WorkerStats,
    now_ns: u64,
) -> Option<(SocketAddrV6, BackendId)> {
    let flags = pkt.tcp_flags();
    let refuse = |why| {
        drop_with(stats, why);
        None
    };
    if !flags.ack() || flags.rst() || flags.syn() {
        return refuse(WorkerDrop::NoFlow);
    }
    let Some(&service) = plane
        .service_by_vip6
        .get(&endpoint_key6(key.service(), key.protocol))
    else {
        return refuse(WorkerDrop::UnknownService);
    };
    let slot = &mut plane.services6[service.index()];
    let Some(local) = slot.pool.recover(&key) else {
        return refuse(WorkerDrop::NoFlow);
    };
    if !pkt.l4_checksum_ok() {
        return refuse(WorkerDrop::BadSynChecksum);
    }
    let backend = slot.backend(local);
    let daemon = slot.pool.addr(local);
    if plane.next_hops[backend.index()].get().is_none() {
        return refuse(WorkerDrop::NoNeighbour);
    }
    let (_, next) = pkt.tcp_seq_next();
    let mut state = TcpState::RECOVERED;
    state.on_client_segment(flags.0);
    let record = FlowRecord6 {
        key,
        backend,
        daemon_ip: *daemon.ip(),
        daemon_port: daemon.port(),
        created_ns: now_ns,
        last_seen_ns: now_ns,
        client_next: next,
        client_ack: pkt.tcp_ack(),
        state,
        epoch: plane.epoch,
    };
    if table.insert_hashed(record, hash).is_err() {
        return refuse(WorkerDrop::TableFull);
    }
    slot.pool.connection_opened(local);
    stats.recovered.add(1);
    Some((daemon, backend))
}

/// [`reverse`] for an IPv6 frame.
#[inline]
pub fn reverse6(
    frame: &mut [u8],
    plane: &Dataplane,
    events: &mut EventSink,
    stats: &WorkerStats,
    now_ns: u64,
) -> bool {
    let frame_len = frame.len() as u64;
    let mut pkt = match L4Frame6::parse(frame) {
        Ok(pkt) => pkt,
        Err(reason) => {
            if is_icmp6(reason, frame) {
                return icmp6_from_back(frame, plane, stats);
            }
            stats.invalid[reason.index()].add(1);
            return false;
        }
    };
    let Some(&(service, backend)) = plane
        .service_by_daemon6
        .get(&endpoint_key6(pkt.src(), pkt.protocol().number()))
    else {
        return drop_with(stats, WorkerDrop::UnknownDaemon);
    };
    if let Some(traffic) = plane.traffic.get(backend.index()) {
        traffic.from_packets.add(1);
        traffic.from_bytes.add(frame_len);
    }
    let flags = pkt.tcp_flags();
    if flags.fin() || flags.rst() {
        // The record may belong to another worker (replies arrive on any queue):
        // the management loop routes by key to the owner, which judges a reset.
        let key = FlowKey6::new(pkt.dst(), service, pkt.protocol().number());
        let ev = if flags.rst() {
            let (seq, _) = pkt.tcp_seq_next();
            Event::DaemonRst {
                key,
                seq,
                at_ns: now_ns,
            }
        } else {
            Event::Fin {
                key,
                from_client: false,
                at_ns: now_ns,
            }
        };
        events.emit(ev, stats);
    }
    pkt.rewrite_src(service);
    true
}

/// [`icmp_from_front`] for an ICMPv6 error: the loop translates it with its
/// IPv6 tracker.
#[cold]
fn icmp6_from_front(frame: &mut [u8], events: &mut EventSink, stats: &WorkerStats) -> bool {
    let mut error = match Icmpv6Error::parse(frame) {
        Ok(e) => e,
        Err(reason) => {
            stats.icmpv6_invalid[reason.index()].add(1);
            return false;
        }
    };
    error.truncate(SLOW_FRAME_MAX);
    if events.emit_frame(error.as_bytes()) {
        stats.icmp_to_loop.add(1);
    } else {
        stats.dropped[WorkerDrop::IcmpQueueFull as usize].add(1);
    }
    false
}

/// [`icmp_from_back`] for an ICMPv6 error about a client's IPv6 segment.
#[cold]
fn icmp6_from_back(frame: &mut [u8], plane: &Dataplane, stats: &WorkerStats) -> bool {
    let mut error = match Icmpv6Error::parse(frame) {
        Ok(e) => e,
        Err(reason) => {
            stats.icmpv6_invalid[reason.index()].add(1);
            return false;
        }
    };
    let Some(&(service, _)) = plane
        .service_by_daemon6
        .get(&endpoint_key6(error.quoted_dst(), error.quoted_protocol()))
    else {
        return drop_with(stats, WorkerDrop::UnknownDaemon);
    };
    error.rewrite_to_client(service);
    stats.icmp_to_client.add(1);
    true
}

/// Tells the management loop what a client segment changed in a record's state.
#[cold]
fn report_client_change<K: Lane>(
    events: &mut EventSink,
    stats: &WorkerStats,
    key: K,
    before: TcpState,
    after: TcpState,
    at_ns: u64,
) {
    if after.is_established() && !before.is_established() {
        events.emit(Event::Established { key, at_ns }, stats);
    }
    if after.contains(TcpState::FIN_CLIENT) && !before.contains(TcpState::FIN_CLIENT) {
        events.emit(
            Event::Fin {
                key,
                from_client: true,
                at_ns,
            },
            stats,
        );
    }
}

/// Fixtures shared by the dataplane's and the worker's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::{
        protocol::{self, ring, Wake},
        sys::EventFd,
    };

    /// A round-robin service at `vip` over `daemons`, every next hop known.
    pub fn plane(vip: SocketAddrV4, daemons: &[SocketAddrV4]) -> Dataplane {
        plane_with(vip, daemons, PolicyKind::RoundRobin)
    }

    /// [`plane`] with another policy.
    pub fn plane_with(
        vip: SocketAddrV4,
        daemons: &[SocketAddrV4],
        policy: PolicyKind,
    ) -> Dataplane {
        plane_of(&[service(vip, daemons, policy)], &[])
    }

    /// A TCP service at `vip` over `daemons` (either family), each of weight 1.
    pub fn service<A: Copy>(vip: A, daemons: &[A], policy: PolicyKind) -> ServiceConfig<A> {
        ServiceConfig {
            address: vip,
            protocol: crate::config::Protocol::Tcp,
            policy,
            backends: daemons
                .iter()
                .map(|&addr| BackendSpec { addr, weight: 1 })
                .collect(),
            health: Default::default(),
        }
    }

    /// A plane of `services` and `services6`, every daemon's next hop known.
    pub fn plane_of(services: &[ServiceConfig], services6: &[Service6Config]) -> Dataplane {
        let daemons = services.iter().map(|s| s.backends.len()).sum::<usize>()
            + services6.iter().map(|s| s.backends.len()).sum::<usize>();
        let hops: Arc<[NextHop]> = (0..daemons).map(|_| NextHop::default()).collect();
        hops.iter().for_each(|h| h.set(Some([6; 6])));
        Dataplane::build(WorkerId(0), services, services6, &[], hops, [8; 6])
            .expect("valid services")
    }

    /// An IPv6 SYN from `client` to `vip` with sequence number `seq`.
    pub fn syn6(client: SocketAddrV6, vip: SocketAddrV6, seq: u32) -> Vec<u8> {
        let mut out = Vec::new();
        etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv6(client.ip().octets(), vip.ip().octets(), 64)
            .tcp(client.port(), vip.port(), seq, 64000)
            .syn()
            .write(&mut out, &[])
            .expect("a SYN fits");
        out
    }

    /// A TCP segment from `client` to `vip` with the flag byte `flags`, from the
    /// test kit's encoder (independent of `packet`).
    pub fn segment(client: SocketAddrV4, vip: SocketAddrV4, flags: u8) -> Vec<u8> {
        use dispatchd_testkit::frame::tcp_flags;
        segment_at(
            client,
            vip,
            flags,
            1,
            u32::from(flags & tcp_flags::ACK != 0),
        )
    }

    /// [`segment`] with its sequence and acknowledgment numbers.
    pub fn segment_at(
        client: SocketAddrV4,
        vip: SocketAddrV4,
        flags: u8,
        seq: u32,
        ack: u32,
    ) -> Vec<u8> {
        use dispatchd_testkit::frame::FrameSpec;
        FrameSpec {
            src_mac: [2; 6],
            dst_mac: [4; 6],
            tcp_flags: flags,
            seq,
            ack,
            window: 64000,
            ..FrameSpec::tcp(client, vip)
        }
        .build()
        .into_bytes()
    }

    /// An event sink and the loop's end of its ring.
    pub fn events() -> (EventSink, ring::Consumer<Event>) {
        let (events, main) = link();
        (events, main.events)
    }

    /// An event sink and the loop's end of the whole link (events and frames).
    pub fn link() -> (EventSink, protocol::LoopEnd<Dataplane>) {
        let wake = Arc::new(Wake::new(EventFd::new().expect("eventfd")));
        let (worker, main) = protocol::link::<Dataplane>(wake, 16).expect("eventfd");
        (worker.events, main)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        packet::icmp::IcmpDrop,
        protocol::{self, ring},
    };

    const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 80);
    const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 40000);

    fn segment(flags: u8) -> Vec<u8> {
        testing::segment(CLIENT, VIP, flags)
    }

    fn segment_from(client: SocketAddrV4, flags: u8) -> Vec<u8> {
        testing::segment(client, VIP, flags)
    }

    /// What `pipelined` asked, in order: (`'w'`arm, `'p'`refetch or
    /// `'h'`andle, the frame's first byte, which names it).
    type Log = std::rc::Rc<std::cell::RefCell<Vec<(char, u8)>>>;

    /// Logs the prefetches and handlings `pipelined` asks of it, and each
    /// handled frame with the hint that came with it.
    #[derive(Default)]
    struct Recorder {
        /// Shared with the test's `warm`, which does not see the handler.
        log: Log,
        hints: Vec<(u8, u8)>,
    }

    impl FrameHandler for Recorder {
        type Hint = u8;

        fn prefetch(&self, frame: &[u8]) -> u8 {
            self.log.borrow_mut().push(('p', frame[0]));
            frame[0]
        }

        fn handle(&mut self, frame: &mut [u8], hint: u8) -> bool {
            self.log.borrow_mut().push(('h', frame[0]));
            self.hints.push((frame[0], hint));
            true
        }
    }

    #[test]
    fn pipelined_warms_and_prefetches_ahead_and_returns_each_hint_with_its_frame() {
        for n in [
            0,
            1,
            PREFETCH_AHEAD - 1,
            PREFETCH_AHEAD,
            PREFETCH_AHEAD + 1,
            WARM_AHEAD - 1,
            WARM_AHEAD,
            WARM_AHEAD + 1,
            64,
        ] {
            let mut frames: Vec<Vec<u8>> = (0..n as u8).map(|i| vec![i]).collect();
            let mut rec = Recorder::default();
            let log = rec.log.clone();
            pipelined(
                &mut frames,
                &mut rec,
                |f| log.borrow_mut().push(('w', f[0])),
                |h, f| h.prefetch(f),
                |h, f, hint| {
                    h.handle(f, hint);
                },
            );
            let log = log.borrow();
            let ids: Vec<u8> = (0..n as u8).collect();
            for step in ['w', 'p', 'h'] {
                let of_step: Vec<u8> = log.iter().filter(|e| e.0 == step).map(|e| e.1).collect();
                assert_eq!(of_step, ids, "n={n}: each {step} once, in order");
            }
            let at = |step: char, id: u8| log.iter().position(|&e| e == (step, id)).unwrap();
            for i in 0..n {
                let id = i as u8;
                assert!(at('w', id) < at('p', id), "n={n} i={i}: warmed first");
                let before = &log[..at('h', id)];
                let count = |step: char| before.iter().filter(|e| e.0 == step).count();
                assert_eq!(count('p'), n.min(i + PREFETCH_AHEAD + 1), "n={n} i={i}");
                assert_eq!(count('w'), n.min(i + WARM_AHEAD + 1), "n={n} i={i}");
            }
            let expected: Vec<(u8, u8)> = ids.iter().map(|&i| (i, i)).collect();
            assert_eq!(rec.hints, expected, "n={n}: each hint with its frame");
        }
    }

    #[test]
    fn a_hint_for_another_flow_is_not_trusted() {
        let daemons = [
            SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 11), 8080),
            SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 12), 8080),
        ];
        let mut plane = testing::plane(VIP, &daemons);
        let mut table = FlowTable::with_capacity(16);
        let stats = WorkerStats::default();
        let (mut events, _rx) = testing::events();
        let mut table6 = FlowTable6::with_capacity(0);
        let mut fwd = Forwarder {
            table: &mut table,
            table6: &mut table6,
            plane: &mut plane,
            events: &mut events,
            stats: &stats,
            now_ns: 1,
        };
        let clients = [
            CLIENT,
            SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 3), 50000),
        ];
        for (client, daemon) in clients.iter().zip(daemons) {
            let mut syn = segment_from(*client, 0x02);
            assert!(fwd.handle(&mut syn, None));
            assert_eq!(L4Frame::parse(&mut syn).unwrap().dst(), daemon);
        }

        let wrong = fwd.prefetch(&segment_from(clients[0], 0x10));
        let right = fwd.prefetch(&segment_from(clients[1], 0x10));
        assert!(wrong.is_some() && right.is_some());
        for hint in [wrong, right, None] {
            let mut ack = segment_from(clients[1], 0x10);
            assert!(fwd.handle(&mut ack, hint));
            assert_eq!(L4Frame::parse(&mut ack).unwrap().dst(), daemons[1]);
        }
        assert_eq!(stats.dropped_total() + stats.invalid_total(), 0);
        // Something that is not a frame gives no hint, and is dropped when handled.
        assert!(fwd.prefetch(&[0u8; 20]).is_none());
        assert!(!fwd.handle(&mut [0u8; 20], None));
    }

    /// A plane with a TCP service on `VIP` over `tcp` and a UDP service on the
    /// same VIP and port over `udp`.
    fn tcp_and_udp_plane(tcp: &[SocketAddrV4], udp: &[SocketAddrV4]) -> Dataplane {
        let service = |protocol, daemons: &[SocketAddrV4]| ServiceConfig {
            address: VIP,
            protocol,
            policy: PolicyKind::RoundRobin,
            backends: daemons
                .iter()
                .map(|&addr| BackendSpec { addr, weight: 1 })
                .collect(),
            health: Default::default(),
        };
        let services = [service(Protocol::Tcp, tcp), service(Protocol::Udp, udp)];
        let hops: Arc<[NextHop]> = tcp.iter().chain(udp).map(|_| NextHop::default()).collect();
        hops.iter().for_each(|h| h.set(Some([6; 6])));
        Dataplane::build(WorkerId(0), &services, &[], &[], hops, [8; 6]).expect("valid services")
    }

    /// One daemon ADDR:PORT behind the TCP and the UDP service is two daemons:
    /// after a reload each record finds its own by its key's protocol, and each
    /// keeps its own state and connection count.
    #[test]
    fn a_daemon_of_a_tcp_and_a_udp_service_is_two_daemons_across_a_reload() {
        let d = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 11), 53);
        let x = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 12), 53);
        let mut old = tcp_and_udp_plane(&[d], &[d]);
        let record = |protocol: L4Proto, backend| FlowRecord {
            key: FlowKey::new(CLIENT, VIP, protocol.number()),
            backend,
            daemon: d,
            created_ns: 1,
            last_seen_ns: 1,
            client_next: 0,
            client_ack: 0,
            state: TcpState::default(),
            epoch: 0,
        };
        let (tcp_old, udp_old) = (BackendId(0), BackendId(1));
        assert_eq!(old.ids.get(&(d, L4Proto::Tcp.number())), Some(&tcp_old));
        assert_eq!(old.ids.get(&(d, L4Proto::Udp.number())), Some(&udp_old));
        old.set_backend_state(udp_old, BackendState::Draining);
        old.connection_opened(tcp_old);
        old.connection_opened(tcp_old);
        old.connection_opened(udp_old);

        // A new TCP daemon ahead of both moves their ids on by one.
        let mut new = tcp_and_udp_plane(&[x, d], &[d]);
        new.take_over(&old);
        let (tcp_new, udp_new) = (BackendId(1), BackendId(2));
        let mut tcp = record(L4Proto::Tcp, tcp_old);
        let mut udp = record(L4Proto::Udp, udp_old);
        assert!(new.current(&mut tcp) && new.current(&mut udp));
        assert_eq!((tcp.backend, udp.backend), (tcp_new, udp_new));
        let tcp_pool = &new.services[0].pool;
        let udp_pool = &new.services[1].pool;
        assert_eq!(tcp_pool.state(PoolIndex(1)), BackendState::Up);
        assert_eq!(udp_pool.state(PoolIndex(0)), BackendState::Draining);
        assert_eq!(tcp_pool.active(PoolIndex(1)), 2);
        assert_eq!(udp_pool.active(PoolIndex(0)), 1);

        // Without its UDP service, the daemon's UDP records are gone, its TCP
        // ones stand.
        let tcp_only = [ServiceConfig {
            address: VIP,
            protocol: Protocol::Tcp,
            policy: PolicyKind::RoundRobin,
            backends: vec![BackendSpec { addr: d, weight: 1 }],
            health: Default::default(),
        }];
        let hop: Arc<[NextHop]> = Arc::new([NextHop::default()]);
        hop[0].set(Some([6; 6]));
        let mut last = Dataplane::build(WorkerId(0), &tcp_only, &[], &[], hop, [8; 6]).unwrap();
        last.take_over(&new);
        assert!(last.current(&mut tcp));
        assert_eq!(tcp.backend, BackendId(0));
        assert!(!last.current(&mut udp));
    }

    fn datagram(from: SocketAddrV4, to: SocketAddrV4, summed: bool) -> Vec<u8> {
        use dispatchd_testkit::frame::FrameSpec;
        let mut f = FrameSpec {
            src_mac: [2; 6],
            dst_mac: [4; 6],
            payload: b"query".to_vec(),
            ..FrameSpec::udp(from, to)
        }
        .build();
        if !summed {
            f.set_l4_checksum(0);
        }
        f.into_bytes()
    }

    /// The TCP daemon and the UDP daemons of the UDP tests' VIP.
    const UDP_TESTS_TCP: [SocketAddrV4; 1] =
        [SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 11), 8080)];
    const UDP_TESTS_UDP: [SocketAddrV4; 2] = [
        SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 21), 5353),
        SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 22), 5353),
    ];

    /// Four sockets of the client's address (ports 40000 to 40003).
    fn four_clients() -> Vec<SocketAddrV4> {
        (0..4)
            .map(|i| SocketAddrV4::new(*CLIENT.ip(), 40000 + i))
            .collect()
    }

    #[test]
    fn udp_flows_pick_on_their_first_datagram_and_follow_their_record() {
        let (tcp, udp) = (UDP_TESTS_TCP, UDP_TESTS_UDP);
        let mut plane = tcp_and_udp_plane(&tcp, &udp);
        let mut table = FlowTable::with_capacity(16);
        let stats = WorkerStats::default();
        let (mut events, mut rx) = testing::events();
        let clients = four_clients();
        let mut picked = Vec::new();
        for round in 0..3 {
            for &client in &clients {
                let mut f = datagram(client, VIP, true);
                assert!(forward(
                    &mut f,
                    &mut table,
                    &mut plane,
                    &mut events,
                    &stats,
                    10 + round,
                    None
                ));
                let pkt = L4Frame::parse(&mut f).unwrap();
                assert_eq!(pkt.protocol(), L4Proto::Udp);
                assert!(pkt.l4_checksum_ok(), "the rewritten checksum is right");
                if round == 0 {
                    picked.push(pkt.dst());
                } else {
                    assert_eq!(
                        pkt.dst(),
                        picked[clients.iter().position(|c| *c == client).unwrap()]
                    );
                }
            }
        }
        assert_eq!(
            picked,
            [udp[0], udp[1], udp[0], udp[1]],
            "round robin over the UDP daemons only"
        );
        assert_eq!(stats.new_flows.get(), 4, "one record per flow");
        let opened: Vec<Event> = {
            events.flush();
            rx.try_iter().collect()
        };
        assert_eq!(opened.len(), 4, "{opened:?}");
        assert!(opened
            .iter()
            .all(|e| matches!(e, Event::Opened { key, .. } if key.protocol == 17)));
        // A TCP SYN to the same VIP and port goes to the TCP service.
        let mut syn = segment(0x02);
        assert!(forward(
            &mut syn,
            &mut table,
            &mut plane,
            &mut events,
            &stats,
            20,
            None
        ));
        assert_eq!(L4Frame::parse(&mut syn).unwrap().dst(), tcp[0]);
        // A daemon's reply leaves as from the VIP and port, a zero checksum stays zero.
        for summed in [true, false] {
            let mut reply = datagram(udp[1], clients[1], summed);
            assert!(reverse(&mut reply, &plane, &mut events, &stats, 30));
            let pkt = L4Frame::parse(&mut reply).unwrap();
            assert_eq!((pkt.src(), pkt.dst()), (VIP, clients[1]));
            if summed {
                assert!(pkt.l4_checksum_ok());
            } else {
                assert_eq!(pkt.l4_checksum(), 0);
            }
        }
        // A first datagram without a checksum is taken (0 means none); the same
        // rule on the forward rewrite.
        let mut f = datagram(SocketAddrV4::new(*CLIENT.ip(), 41000), VIP, false);
        assert!(forward(
            &mut f,
            &mut table,
            &mut plane,
            &mut events,
            &stats,
            40,
            None
        ));
        assert_eq!(L4Frame::parse(&mut f).unwrap().l4_checksum(), 0);
        // TCP from a UDP daemon's address and port is no reply of its service.
        let mut tcp_reply = testing::segment(udp[0], CLIENT, 0x12);
        assert!(!reverse(&mut tcp_reply, &plane, &mut events, &stats, 50));
        assert_eq!(stats.dropped[WorkerDrop::UnknownDaemon as usize].get(), 1);
    }

    /// A daemon routed off the back loses its next hop. Its UDP flows, which
    /// would be dropped for good while every datagram kept their record
    /// alive, pick another daemon at their next datagram; its TCP connections
    /// cannot move and are dropped until the hop returns.
    #[test]
    fn a_udp_flow_whose_daemon_loses_its_next_hop_picks_another() {
        let (tcp, udp) = (UDP_TESTS_TCP, UDP_TESTS_UDP);
        let mut plane = tcp_and_udp_plane(&tcp, &udp);
        let mut table = FlowTable::with_capacity(16);
        let stats = WorkerStats::default();
        let (mut events, mut rx) = testing::events();
        let clients = four_clients();
        // Where `frame` went, if it was sent.
        let mut send = |plane: &mut Dataplane, mut frame: Vec<u8>, at: u64| {
            let sent = forward(&mut frame, &mut table, plane, &mut events, &stats, at, None);
            let to = sent.then(|| L4Frame::parse(&mut frame).unwrap().dst());
            (to, table.len())
        };
        let first: Vec<_> = (clients.iter())
            .map(|&c| send(&mut plane, datagram(c, VIP, true), 10).0.unwrap())
            .collect();
        assert_eq!(first, [udp[0], udp[1], udp[0], udp[1]]);
        assert_eq!(send(&mut plane, segment(0x02), 11), (Some(tcp[0]), 5));

        // What the loop does when the kernel routes udp[1] and tcp[0] off
        // the back: the cells first, the states after.
        let lost = plane.id_of(udp[1].into(), 17).unwrap();
        let tcp_id = plane.id_of(tcp[0].into(), 6).unwrap();
        plane.next_hops[lost.index()].set(None);
        plane.next_hops[tcp_id.index()].set(None);
        plane.set_backend_state(lost, BackendState::Down);
        for round in [20, 30] {
            for &c in &clients {
                assert_eq!(
                    send(&mut plane, datagram(c, VIP, true), round),
                    (Some(udp[0]), 5),
                    "every flow on the daemon left, moved (not doubled), and stays"
                );
            }
        }
        let pool = &plane.services[1].pool;
        assert_eq!(
            (pool.active(PoolIndex(0)), pool.active(PoolIndex(1))),
            (4, 0),
            "the moved flows counted over"
        );
        // The TCP connection's segment is dropped, its record kept.
        assert_eq!(send(&mut plane, segment(0x10), 31), (None, 5));
        assert_eq!(stats.dropped[WorkerDrop::NoNeighbour as usize].get(), 1);
        let opened = {
            events.flush();
            rx.try_iter()
                .filter(|e| matches!(e, Event::Opened { key, .. } if key.protocol == 17))
                .count()
        };
        assert_eq!(opened, 4 + 2, "the loop hears of each move");
    }

    #[test]
    fn a_udp_flow_without_its_record_goes_on_to_its_maglev_daemon() {
        let daemons: Vec<SocketAddrV4> = (0..5)
            .map(|i| SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 21 + i), 5353))
            .collect();
        let maglev_udp = || {
            let services = [ServiceConfig {
                address: VIP,
                protocol: Protocol::Udp,
                policy: PolicyKind::Maglev,
                backends: daemons
                    .iter()
                    .map(|&addr| BackendSpec { addr, weight: 1 })
                    .collect(),
                health: Default::default(),
            }];
            let hops: Arc<[NextHop]> = daemons.iter().map(|_| NextHop::default()).collect();
            hops.iter().for_each(|h| h.set(Some([6; 6])));
            Dataplane::build(WorkerId(0), &services, &[], &[], hops, [8; 6])
                .expect("a valid service")
        };
        // Two instances (or one before and after a restart): each datagram of
        // a flow, met first on either, goes to the same daemon.
        let (mut first, mut second) = (maglev_udp(), maglev_udp());
        let (mut table_a, mut table_b) =
            (FlowTable::with_capacity(256), FlowTable::with_capacity(256));
        let stats = WorkerStats::default();
        let (mut events, _rx) = testing::events();
        let mut used = std::collections::BTreeSet::new();
        for i in 0..64 {
            let client = SocketAddrV4::new(Ipv4Addr::new(198, 18, 7, i as u8), 20000 + i);
            let mut on_a = datagram(client, VIP, true);
            let mut on_b = on_a.clone();
            assert!(forward(
                &mut on_a,
                &mut table_a,
                &mut first,
                &mut events,
                &stats,
                1,
                None
            ));
            assert!(forward(
                &mut on_b,
                &mut table_b,
                &mut second,
                &mut events,
                &stats,
                2,
                None
            ));
            let a = L4Frame::parse(&mut on_a).unwrap().dst();
            assert_eq!(a, L4Frame::parse(&mut on_b).unwrap().dst(), "{client}");
            used.insert(a);
        }
        assert!(used.len() >= 4, "the flows spread: {used:?}");
    }

    #[test]
    fn hostile_udp_frames_are_counted_drops_and_make_no_record() {
        let udp = [SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 21), 5353)];
        let mut plane = tcp_and_udp_plane(
            &[SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 11), 8080)],
            &udp,
        );
        let mut table = FlowTable::with_capacity(16);
        let stats = WorkerStats::default();
        let (mut events, _rx) = testing::events();
        let good = datagram(CLIENT, VIP, true);
        let edit = |f: fn(&mut dispatchd_testkit::frame::Frame)| {
            let mut frame = dispatchd_testkit::frame::Frame::from_bytes(good.clone());
            f(&mut frame);
            frame.into_bytes()
        };
        let cases: [(&str, Vec<u8>, DropReason); 4] = [
            (
                "length beyond the datagram",
                edit(|f| {
                    f.set_udp_len(400);
                }),
                DropReason::BadUdpLength,
            ),
            (
                "length below the header",
                edit(|f| {
                    f.set_udp_len(7);
                }),
                DropReason::BadUdpLength,
            ),
            (
                "cut inside the header",
                edit(|f| {
                    f.truncate(14 + 20 + 6)
                        .set_total_len(26)
                        .reseal_ip_checksum();
                }),
                DropReason::TruncatedUdp,
            ),
            (
                "IP length shorter than the header",
                edit(|f| {
                    f.set_total_len(20 + 5).reseal_ip_checksum();
                }),
                DropReason::TruncatedUdp,
            ),
        ];
        for (name, mut frame, reason) in cases {
            let before = stats.invalid[reason.index()].get();
            assert!(
                !forward(
                    &mut frame,
                    &mut table,
                    &mut plane,
                    &mut events,
                    &stats,
                    1,
                    None
                ),
                "{name}"
            );
            assert_eq!(stats.invalid[reason.index()].get(), before + 1, "{name}");
        }
        // A wrong checksum on a first datagram makes no record either.
        let mut bad_sum = edit(|f| {
            f.set_l4_checksum(0x1234);
        });
        assert!(!forward(
            &mut bad_sum,
            &mut table,
            &mut plane,
            &mut events,
            &stats,
            1,
            None
        ));
        assert_eq!(stats.dropped[WorkerDrop::BadSynChecksum as usize].get(), 1);
        assert_eq!(table.len(), 0);
        assert_eq!(stats.new_flows.get(), 0);
    }

    #[test]
    fn a_syn_reusing_a_closing_connections_port_is_tracked_as_new() {
        let daemon = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 11), 8080);
        let mut plane = testing::plane(VIP, &[daemon]);
        let mut table = FlowTable::with_capacity(4);
        let stats = WorkerStats::default();
        let (mut sink, mut rx) = testing::events();
        let key = FlowKey::new(CLIENT, VIP, 6);
        let send =
            |flags, now_ns, table: &mut FlowTable, plane: &mut Dataplane, sink: &mut EventSink| {
                forward(
                    &mut segment(flags),
                    table,
                    plane,
                    sink,
                    &stats,
                    now_ns,
                    None,
                )
            };
        let opened = |sink: &mut EventSink, rx: &mut ring::Consumer<Event>| {
            sink.flush();
            rx.try_iter()
                .filter(|e| matches!(e, Event::Opened { key: k, .. } if *k == key))
                .count()
        };

        for flags in [0x02, 0x10, 0x11] {
            assert!(send(flags, 1, &mut table, &mut plane, &mut sink));
        }
        assert_eq!(opened(&mut sink, &mut rx), 1);
        assert!(table
            .get(&key)
            .unwrap()
            .state
            .contains(TcpState::FIN_CLIENT));

        // Same 4-tuple, new SYN while the old record lingers.
        assert!(send(0x02, 2, &mut table, &mut plane, &mut sink));
        assert_eq!(
            opened(&mut sink, &mut rx),
            1,
            "the loop hears of the new connection"
        );
        let record = table.get(&key).unwrap();
        assert_eq!(record.state, TcpState::SYN_SEEN);
        assert_eq!((record.daemon, record.created_ns), (daemon, 2));
        assert_eq!(
            stats.new_flows.get(),
            2,
            "the reuse is a connection accepted"
        );
        // A retransmitted SYN of a live connection is not a new one.
        assert!(send(0x02, 3, &mut table, &mut plane, &mut sink));
        assert_eq!(opened(&mut sink, &mut rx), 0);
        assert_eq!(stats.new_flows.get(), 2);
    }

    #[test]
    fn a_client_reset_ends_the_connection_only_inside_its_window() {
        let daemon = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 11), 8080);
        let mut plane = testing::plane(VIP, &[daemon]);
        let mut table = FlowTable::with_capacity(4);
        let stats = WorkerStats::default();
        let (mut sink, mut rx) = testing::events();
        let key = FlowKey::new(CLIENT, VIP, 6);
        let mut send = |table: &mut FlowTable, flags: u8, seq: u32, ack: u32| {
            let mut f = testing::segment_at(CLIENT, VIP, flags, seq, ack);
            assert!(forward(
                &mut f, table, &mut plane, &mut sink, &stats, 7, None
            ));
            sink.flush();
            rx.try_iter().collect::<Vec<_>>()
        };
        send(&mut table, 0x02, 100, 0);
        send(&mut table, 0x10, 101, 5000);
        // Half the sequence space away: a blind guess. It goes on to the daemon,
        // whose kernel judges it too, but the mapping stays.
        let far = 101u32.wrapping_add(1 << 31);
        assert_eq!(send(&mut table, 0x14, far, 5000), []);
        assert_eq!(stats.rst_ignored.get(), 1);
        let record = table.get(&key).unwrap();
        assert!(!record.state.contains(TcpState::RST));
        assert_eq!((record.client_next, record.client_ack), (101, 5000));
        // At the client's own next sequence number: the connection is over.
        let reset = Event::Reset { key, at_ns: 7 };
        assert_eq!(send(&mut table, 0x14, 101, 5000), [reset]);
        assert!(table.get(&key).unwrap().state.contains(TcpState::RST));
        // Another one changes nothing.
        assert_eq!(send(&mut table, 0x04, 101, 0), []);
        assert_eq!(stats.rst_ignored.get(), 1);
    }

    #[test]
    fn one_address_retired_as_a_tcp_and_a_udp_daemon_is_two_retired_daemons() {
        use crate::config::Protocol;
        let a = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 11), 5353);
        let b = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 12), 5353);
        let service = |protocol| ServiceConfig {
            address: VIP,
            protocol,
            policy: PolicyKind::RoundRobin,
            backends: vec![BackendSpec { addr: b, weight: 1 }],
            health: Default::default(),
        };
        let retired = [Protocol::Tcp, Protocol::Udp].map(|protocol| Retired {
            daemon: a.into(),
            service: VIP.into(),
            protocol,
        });
        let hops: Arc<[NextHop]> = (0..4).map(|_| NextHop::default()).collect();
        let services = [service(Protocol::Tcp), service(Protocol::Udp)];
        let plane = Dataplane::build(WorkerId(0), &services, &[], &retired, hops, [8; 6])
            .expect("a reload retiring both of an address's daemons");
        assert_eq!(plane.first_retired, 2);
        for (id, protocol) in [(2, Protocol::Tcp), (3, Protocol::Udp)] {
            assert_eq!(
                plane.id_of(a.into(), protocol.number()),
                Some(BackendId(id))
            );
            let owner = plane.backend_owner[id as usize];
            assert!(!owner.v6);
            let pool = &plane.services[owner.service.index()].pool;
            assert_eq!(pool.addr(owner.local), a);
            assert_eq!(pool.state(owner.local), BackendState::Draining);
        }
    }

    #[test]
    fn a_retired_daemon_keeps_its_connections_and_gets_no_new_one() {
        let a = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 11), 8080);
        let b = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 12), 8080);
        let hops = |n: usize| -> Arc<[NextHop]> {
            let hops: Arc<[NextHop]> = (0..n).map(|_| NextHop::default()).collect();
            hops.iter().for_each(|h| h.set(Some([6; 6])));
            hops
        };
        let only_b = [ServiceConfig {
            address: VIP,
            protocol: crate::config::Protocol::Tcp,
            policy: PolicyKind::RoundRobin,
            backends: vec![BackendSpec { addr: b, weight: 1 }],
            health: Default::default(),
        }];
        let retired = [Retired {
            daemon: a.into(),
            service: VIP.into(),
            protocol: crate::config::Protocol::Tcp,
        }];
        let mut table = FlowTable::with_capacity(16);
        let stats = WorkerStats::default();
        let (mut sink, _rx) = testing::events();
        let mut send = |plane: &mut Dataplane, table: &mut FlowTable, client, flags| {
            let mut f = segment_from(client, flags);
            forward(&mut f, table, plane, &mut sink, &stats, 1, None)
                .then(|| L4Frame::parse(&mut f).unwrap().dst())
        };

        let mut old = testing::plane(VIP, &[a, b]);
        assert_eq!(send(&mut old, &mut table, CLIENT, 0x02), Some(a));
        let mut held =
            Dataplane::build(WorkerId(0), &only_b, &[], &retired, hops(2), [8; 6]).unwrap();
        held.take_over(&old);
        assert_eq!(held.first_retired, 1);
        assert_eq!(
            send(&mut held, &mut table, CLIENT, 0x10),
            Some(a),
            "goes on"
        );
        for port in 1..5 {
            let other = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 3), port);
            assert_eq!(send(&mut held, &mut table, other, 0x02), Some(b));
        }
        let mut reply = testing::segment(a, CLIENT, 0x10);
        let (mut events, _) = testing::events();
        assert!(reverse(&mut reply, &held, &mut events, &stats, 1));
        assert_eq!(L4Frame::parse(&mut reply).unwrap().src(), VIP);

        // Its state is not carried into a plane where it is configured again.
        let mut back = testing::plane(VIP, &[a, b]);
        back.take_over(&held);
        assert_eq!(back.services[0].pool.state(PoolIndex(0)), BackendState::Up);

        // Let go of: its records are gone when next met.
        let mut gone = Dataplane::build(WorkerId(0), &only_b, &[], &[], hops(1), [8; 6]).unwrap();
        gone.take_over(&held);
        assert_eq!(send(&mut gone, &mut table, CLIENT, 0x10), None);
        assert_eq!(stats.dropped_total(), 1);
    }

    // ICMP errors and the MSS clamp: frames from the test kit's encoder.
    use dispatchd_testkit::frame::{FrameSpec, IcmpKind, IcmpSpec};

    const DAEMON: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 11), 8080);
    const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);

    fn error_about(
        from: SocketAddrV4,
        to: SocketAddrV4,
        at: Ipv4Addr,
        quote_len: usize,
    ) -> Vec<u8> {
        let about = FrameSpec {
            ttl: 63,
            payload: vec![1; 1000],
            ..FrameSpec::tcp(from, to)
        }
        .build();
        IcmpSpec {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: ROUTER,
            dst: at,
            ttl: 64,
            tos: 0xc0,
            kind: IcmpKind::FragNeeded { mtu: 1280 },
            quote: about.ip_packet()[..quote_len].to_vec(),
        }
        .build()
        .into_bytes()
    }

    #[test]
    fn an_icmp_error_from_the_front_is_copied_to_the_loop_and_its_frame_freed() {
        let mut plane = testing::plane(VIP, &[DAEMON]);
        let mut table = FlowTable::with_capacity(4);
        let stats = WorkerStats::default();
        let (mut sink, mut main) = testing::link();
        let mut long = error_about(VIP, CLIENT, *VIP.ip(), 1020);
        let original = long.clone();
        assert!(!forward(
            &mut long, &mut table, &mut plane, &mut sink, &stats, 1, None
        ));
        sink.flush();
        let mut copy = main.frames.try_pop().expect("a copy for the loop");
        // Cut to what RFC 1812 lets an error be, still a valid error.
        assert_eq!(copy.bytes_mut().len(), SLOW_FRAME_MAX);
        let mut cut = IcmpError::parse(copy.bytes_mut()).expect("a valid error");
        assert_eq!((cut.quoted_src(), cut.quoted_dst()), (VIP, CLIENT));
        assert_eq!(
            cut.as_bytes()[42..],
            original[42..SLOW_FRAME_MAX],
            "the quote's start"
        );
        cut.truncate(0);
        assert_eq!(stats.icmp_to_loop.get(), 1);
        assert!(main.events.try_pop().is_none(), "no event");
        assert_eq!(table.len(), 0, "no record");

        // A corrupt one is counted and not copied.
        let mut bad = error_about(VIP, CLIENT, *VIP.ip(), 28);
        bad[40] ^= 1;
        assert!(!forward(
            &mut bad, &mut table, &mut plane, &mut sink, &stats, 1, None
        ));
        sink.flush();
        assert!(main.frames.try_pop().is_none());
        assert_eq!(stats.icmp_invalid[IcmpDrop::BadChecksum.index()].get(), 1);
        assert_eq!(stats.invalid_total(), 0, "not counted as a bad TCP frame");

        // A full ring costs the copy, counted.
        for _ in 0..protocol::SLOW_QUEUE + 1 {
            let mut e = error_about(VIP, CLIENT, *VIP.ip(), 28);
            forward(&mut e, &mut table, &mut plane, &mut sink, &stats, 1, None);
        }
        assert_eq!(stats.dropped[WorkerDrop::IcmpQueueFull as usize].get(), 1);
        assert_eq!(stats.icmp_to_loop.get(), 1 + protocol::SLOW_QUEUE as u64);
    }

    /// Each daemon's frames and bytes, both ways, land in its own slot of the
    /// plane's bank; a stranger's reply counts for none.
    #[test]
    fn traffic_is_counted_per_daemon_both_ways() {
        use dispatchd_testkit::frame::tcp_flags::{ACK, SYN};
        let other = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 12), 8080);
        let mut plane = testing::plane(VIP, &[DAEMON, other]);
        let stats = WorkerStats::default();
        let (mut sink, _rx) = testing::events();
        let mut table = FlowTable::with_capacity(64);
        let mut syn = segment(SYN);
        let len = syn.len() as u64;
        assert!(forward(
            &mut syn, &mut table, &mut plane, &mut sink, &stats, 1, None
        ));
        let picked = table.get(&FlowKey::new(CLIENT, VIP, 6)).unwrap().backend;
        let mut ack = segment(ACK);
        assert!(forward(
            &mut ack, &mut table, &mut plane, &mut sink, &stats, 2, None
        ));
        let mine = &plane.traffic[picked.index()];
        assert_eq!((mine.to_packets.get(), mine.to_bytes.get()), (2, 2 * len));
        let theirs = &plane.traffic[1 - picked.index()];
        assert_eq!(theirs.to_packets.get(), 0);

        let from = [DAEMON, other][picked.index()];
        let mut reply = testing::segment(from, CLIENT, ACK);
        let reply_len = reply.len() as u64;
        assert!(reverse(&mut reply, &plane, &mut sink, &stats, 3));
        assert_eq!(
            (mine.from_packets.get(), mine.from_bytes.get()),
            (1, reply_len)
        );
        let stranger = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 99), 8080);
        let mut reply = testing::segment(stranger, CLIENT, ACK);
        assert!(!reverse(&mut reply, &plane, &mut sink, &stats, 3));
        let counted: u64 = plane.traffic.iter().map(|t| t.from_packets.get()).sum();
        assert_eq!(counted, 1);
    }

    #[test]
    fn an_icmp_error_from_the_back_is_translated_for_the_client() {
        let plane = testing::plane(VIP, &[DAEMON]);
        let stats = WorkerStats::default();
        let (mut sink, _rx) = testing::events();
        let mut f = error_about(CLIENT, DAEMON, *CLIENT.ip(), 100);
        let macs = f[..12].to_vec();
        assert!(reverse(&mut f, &plane, &mut sink, &stats, 1));
        let e = IcmpError::parse(&mut f).expect("still a valid error");
        assert_eq!((e.outer_src(), e.outer_dst()), (*VIP.ip(), *CLIENT.ip()));
        assert_eq!((e.quoted_src(), e.quoted_dst()), (CLIENT, VIP));
        assert_eq!(
            f[..12],
            macs[..],
            "the XDP program's Ethernet addresses stay"
        );
        assert_eq!(stats.icmp_to_client.get(), 1);

        // About a segment to no configured daemon: never rewritten.
        let stranger = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 99), 8080);
        let mut f = error_about(CLIENT, stranger, *CLIENT.ip(), 28);
        assert!(!reverse(&mut f, &plane, &mut sink, &stats, 1));
        assert_eq!(stats.dropped[WorkerDrop::UnknownDaemon as usize].get(), 1);
    }

    fn syn_with_mss(mss: u16, flags: u8) -> Vec<u8> {
        let mut f = segment(flags);
        // Data offset 6: a 4-byte MSS option after the header.
        let at = 14 + 20 + 20;
        f.splice(at..at, [2, 4, (mss >> 8) as u8, mss as u8]);
        let mut fr = dispatchd_testkit::frame::Frame::from_bytes(f);
        let total = fr.total_len() + 4;
        fr.set_total_len(total).set_tcp_data_offset(6);
        fr.reseal_ip_checksum().reseal_tcp_checksum();
        fr.into_bytes()
    }

    #[test]
    fn mss_clamp_lowers_client_syns_only() {
        let mut plane = testing::plane(VIP, &[DAEMON]).with_mss_clamp(Some(1240));
        let mut table = FlowTable::with_capacity(4);
        let stats = WorkerStats::default();
        let (mut sink, _rx) = testing::events();
        let mss_of = |f: &[u8]| u16::from_be_bytes([f[56], f[57]]);
        let mut syn = syn_with_mss(1460, 0x02);
        assert!(forward(
            &mut syn, &mut table, &mut plane, &mut sink, &stats, 1, None
        ));
        assert_eq!(mss_of(&syn), 1240);
        assert!(L4Frame::parse(&mut syn).unwrap().l4_checksum_ok());
        // A segment that is not a SYN is left alone, whatever it carries.
        let mut ack = syn_with_mss(1460, 0x10);
        assert!(forward(
            &mut ack, &mut table, &mut plane, &mut sink, &stats, 2, None
        ));
        assert_eq!(mss_of(&ack), 1460);
        // A smaller MSS stays.
        let mut small = syn_with_mss(536, 0x02);
        let client = SocketAddrV4::new(*CLIENT.ip(), 40001);
        small[34..36].copy_from_slice(&client.port().to_be_bytes());
        let mut fr = dispatchd_testkit::frame::Frame::from_bytes(small);
        fr.reseal_tcp_checksum();
        let mut small = fr.into_bytes();
        assert!(forward(
            &mut small, &mut table, &mut plane, &mut sink, &stats, 3, None
        ));
        assert_eq!(mss_of(&small), 536);
        assert_eq!(stats.mss_clamped.get(), 1);
        // Off by default.
        let mut plane = testing::plane(VIP, &[DAEMON]);
        let mut table = FlowTable::with_capacity(4);
        let mut syn = syn_with_mss(1460, 0x02);
        assert!(forward(
            &mut syn, &mut table, &mut plane, &mut sink, &stats, 1, None
        ));
        assert_eq!(mss_of(&syn), 1460);
    }

    // Recovery: a mid-connection segment without a record.
    const DAEMONS: [SocketAddrV4; 3] = [
        SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 11), 8080),
        SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 12), 8080),
        SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 13), 8080),
    ];

    /// One instance of dispatchd as far as a frame is concerned: its own plane,
    /// table, counters and event ring, built from its own copy of the config.
    struct Instance {
        plane: Dataplane,
        table: FlowTable,
        stats: WorkerStats,
        sink: EventSink,
        rx: ring::Consumer<Event>,
    }

    impl Instance {
        fn new(policy: PolicyKind) -> Self {
            let (sink, rx) = testing::events();
            Self {
                plane: testing::plane_with(VIP, &DAEMONS, policy),
                table: FlowTable::with_capacity(4096),
                stats: WorkerStats::default(),
                sink,
                rx,
            }
        }

        /// Sends `frame` through `forward`: where it went, if anywhere.
        fn send(&mut self, mut frame: Vec<u8>, now_ns: u64) -> Option<SocketAddrV4> {
            let i = self;
            forward(
                &mut frame,
                &mut i.table,
                &mut i.plane,
                &mut i.sink,
                &i.stats,
                now_ns,
                None,
            )
            .then(|| L4Frame::parse(&mut frame).unwrap().dst())
        }

        fn events(&mut self) -> Vec<Event> {
            self.sink.flush();
            self.rx.try_iter().collect()
        }

        fn dropped(&self, why: WorkerDrop) -> u64 {
            self.stats.dropped[why as usize].get()
        }
    }

    fn client(i: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2 + (i % 7) as u8), 30000 + i)
    }

    #[test]
    fn a_maglev_service_recovers_a_connection_on_another_instance_to_the_same_daemon() {
        let mut first = Instance::new(PolicyKind::Maglev);
        let mut second = Instance::new(PolicyKind::Maglev);
        let mut spread = [0; 3];
        for i in 0..300 {
            let c = client(i);
            let picked = first.send(testing::segment(c, VIP, 0x02), 1).unwrap();
            // The second instance never saw the SYN: a data segment, a pure
            // ACK and a FIN|ACK all find the first one's daemon.
            let flags = [0x18, 0x10, 0x11][usize::from(i % 3)];
            let seg = testing::segment_at(c, VIP, flags, 1000, 5000);
            assert_eq!(second.send(seg, 2), Some(picked), "client {c}");
            spread[DAEMONS.iter().position(|&d| d == picked).unwrap()] += 1;
            // Its next segment is the record's.
            let seg = testing::segment_at(c, VIP, 0x10, 1000, 5000);
            assert_eq!(second.send(seg, 3), Some(picked));
            let events = second.events();
            assert!(
                matches!(
                    events[..],
                    [Event::Recovered { worker: WorkerId(0), key, daemon, at_ns: 2 }]
                        if key == FlowKey::new(c, VIP, 6) && daemon == picked
                ),
                "one Recovered, nothing else: {events:?}"
            );
            first.events();
        }
        assert!(spread.iter().all(|&n| n > 50), "{spread:?}");
        assert_eq!(second.stats.recovered.get(), 300);
        assert_eq!(second.stats.new_flows.get(), 0);
        assert_eq!(second.stats.dropped_total(), 0);
        assert_eq!(second.table.len(), 300);
        let record = second.table.get(&FlowKey::new(client(0), VIP, 6)).unwrap();
        assert!(record.state.contains(TcpState::RECOVERED));
        assert!(!record.state.is_established());
        assert_eq!((record.client_ack, record.created_ns), (5000, 2));
    }

    #[test]
    fn what_cannot_be_recovered_is_dropped_as_before() {
        let mut maglev = Instance::new(PolicyKind::Maglev);
        // A reset, a segment without ACK, a SYN|ACK from a client: no record.
        for flags in [0x04, 0x14, 0x01, 0x12] {
            let seg = testing::segment_at(client(1), VIP, flags, 1000, 5000);
            assert_eq!(maglev.send(seg, 1), None, "flags {flags:#x}");
        }
        assert_eq!(maglev.dropped(WorkerDrop::NoFlow), 4);
        // A corrupted segment makes no state either.
        let mut bad = testing::segment_at(client(1), VIP, 0x10, 1000, 5000);
        bad[14 + 20 + 16] ^= 0x40;
        assert_eq!(maglev.send(bad, 1), None);
        assert_eq!(maglev.dropped(WorkerDrop::BadSynChecksum), 1);
        // Every daemon down: nowhere to recover to.
        for b in 0..3 {
            maglev
                .plane
                .set_backend_state(BackendId(b), BackendState::Down);
        }
        let seg = testing::segment_at(client(1), VIP, 0x10, 1000, 5000);
        assert_eq!(maglev.send(seg, 1), None);
        assert_eq!(maglev.dropped(WorkerDrop::NoFlow), 5);
        assert_eq!((maglev.table.len(), maglev.stats.recovered.get()), (0, 0));
        assert!(maglev.events().is_empty());

        // Policies whose choice no other process can repeat keep dropping.
        for policy in [
            PolicyKind::RoundRobin,
            PolicyKind::WeightedRoundRobin,
            PolicyKind::LeastConnections,
        ] {
            let mut other = Instance::new(policy);
            let seg = testing::segment_at(client(1), VIP, 0x10, 1000, 5000);
            assert_eq!(other.send(seg, 1), None, "{policy}");
            assert_eq!(other.dropped(WorkerDrop::NoFlow), 1);
            assert_eq!((other.table.len(), other.stats.recovered.get()), (0, 0));
        }
    }

    #[test]
    fn a_recovered_record_is_confirmed_only_by_the_client_moving_on() {
        let mut lb = Instance::new(PolicyKind::Maglev);
        let c = client(4);
        let key = FlowKey::new(c, VIP, 6);
        let established = |lb: &mut Instance| {
            lb.events()
                .iter()
                .filter(|e| matches!(e, Event::Established { key: k, .. } if *k == key))
                .count()
        };
        assert!(lb
            .send(testing::segment_at(c, VIP, 0x10, 1000, 5000), 1)
            .is_some());
        // The same segment again (a spoofer's flood, or a retransmission), a
        // keep-alive one byte back, an older ACK: still unproven.
        for (seq, ack) in [(1000, 5000), (999, 5000), (1000, 4000), (1000, 5000)] {
            lb.send(testing::segment_at(c, VIP, 0x10, seq, ack), 2);
            assert_eq!(established(&mut lb), 0, "seq {seq} ack {ack}");
        }
        assert!(!lb.table.get(&key).unwrap().state.is_established());
        // The client acknowledges something new from the daemon: proven.
        lb.send(testing::segment_at(c, VIP, 0x10, 1000, 5100), 3);
        assert_eq!(established(&mut lb), 1);
        assert!(lb.table.get(&key).unwrap().state.is_established());
        lb.send(testing::segment_at(c, VIP, 0x10, 1000, 5200), 4);
        assert_eq!(established(&mut lb), 0, "once");

        // New data from the client proves it too (an upload: its ACK stays).
        let c = client(5);
        let key = FlowKey::new(c, VIP, 6);
        let data = |seq| {
            dispatchd_testkit::frame::FrameSpec {
                tcp_flags: 0x18,
                seq,
                ack: 5000,
                payload: vec![7; 100],
                ..dispatchd_testkit::frame::FrameSpec::tcp(c, VIP)
            }
            .build()
            .into_bytes()
        };
        lb.send(data(1000), 5);
        lb.send(data(1000), 6);
        assert!(!lb.table.get(&key).unwrap().state.is_established());
        lb.send(data(1100), 7);
        assert!(lb.table.get(&key).unwrap().state.is_established());
        assert_eq!(lb.stats.recovered.get(), 2);
    }

    #[test]
    fn a_draining_daemon_keeps_the_connections_it_had_and_gets_no_new_one() {
        let mut before = Instance::new(PolicyKind::Maglev);
        let mut after = Instance::new(PolicyKind::Maglev);
        let draining = BackendId(1);
        after
            .plane
            .set_backend_state(draining, BackendState::Draining);
        let mut kept = 0;
        for i in 0..300 {
            let c = client(i);
            let owner = before.send(testing::segment(c, VIP, 0x02), 1).unwrap();
            let ack = testing::segment_at(c, VIP, 0x10, 1000, 5000);
            assert_eq!(after.send(ack, 1), Some(owner), "recovered where it was");
            kept += usize::from(owner == DAEMONS[1]);
            let new = SocketAddrV4::new(*c.ip(), c.port() + 10_000);
            let syn = testing::segment(new, VIP, 0x02);
            assert_ne!(after.send(syn, 1), Some(DAEMONS[1]), "no new connection");
        }
        assert!(kept > 50, "{kept}");
    }

    /// A client reusing the port of a closing connection whose daemon has
    /// since been drained (or gone down) opens a new connection: it goes to a
    /// daemon that takes new ones, as any first SYN does, and the drained
    /// daemon's count gives the old one up. Up, the daemon keeps the port's
    /// new connection (`a_syn_reusing_a_closing_connections_port_is_tracked_as_new`).
    #[test]
    fn a_reused_port_of_a_drained_daemons_closing_connection_picks_another() {
        for (closing, drained) in [(0x11, BackendState::Draining), (0x04, BackendState::Down)] {
            let mut lb = Instance::new(PolicyKind::RoundRobin);
            let c = client(7);
            let first = lb.send(testing::segment(c, VIP, 0x02), 1).unwrap();
            assert_eq!(first, DAEMONS[0], "round robin starts at the first");
            assert!(lb
                .send(testing::segment_at(c, VIP, 0x10, 1000, 5000), 2)
                .is_some());
            assert!(lb
                .send(testing::segment_at(c, VIP, closing, 1000, 5000), 3)
                .is_some());
            let active = |lb: &Instance, i: u16| lb.plane.services[0].pool.active(PoolIndex(i));
            assert_eq!(active(&lb, 0), 1);
            lb.plane.set_backend_state(BackendId(0), drained);
            lb.events();

            let again = lb.send(testing::segment(c, VIP, 0x02), 4);
            assert_eq!(
                again,
                Some(DAEMONS[1]),
                "{drained:?}: not the drained daemon"
            );
            assert_eq!((active(&lb, 0), active(&lb, 1)), (0, 1), "{drained:?}");
            let record = lb.table.get(&FlowKey::new(c, VIP, 6)).unwrap();
            assert_eq!((record.daemon, record.created_ns), (DAEMONS[1], 4));
            assert_eq!(lb.stats.new_flows.get(), 2);
            assert!(
                matches!(lb.events()[..], [Event::Opened { daemon, at_ns: 4, .. }] if daemon == DAEMONS[1]),
                "{drained:?}"
            );
            // Its next segments follow the new record.
            let ack = testing::segment_at(c, VIP, 0x10, 1000, 5000);
            assert_eq!(lb.send(ack, 5), Some(DAEMONS[1]));
            assert_eq!(lb.stats.dropped_total(), 0);
        }
    }

    /// A daemon's FIN or RST on an instance that never saw the connection (its
    /// reply took another path back): rewritten and passed on like any reply,
    /// no record made; the events it raises name a key no tracker knows, which
    /// the tracker ignores and counts (`events_for_unknown_keys_are_ignored_and_counted`
    /// in the conntrack tests), and a worker asked to judge the reset without
    /// the record ignores it (`rst_ignored`).
    #[test]
    fn a_daemons_termination_without_a_record_passes_and_makes_no_state() {
        let mut lb = Instance::new(PolicyKind::Maglev);
        for flags in [0x11, 0x14, 0x04] {
            let mut reply = testing::segment(DAEMONS[0], client(1), flags);
            assert!(reverse(&mut reply, &lb.plane, &mut lb.sink, &lb.stats, 1));
            assert_eq!(L4Frame::parse(&mut reply).unwrap().src(), VIP);
        }
        assert_eq!(lb.table.len(), 0);
        let key = FlowKey::new(client(1), VIP, 6);
        let events = lb.events();
        assert_eq!(events.len(), 3);
        assert!(events.iter().all(|e| matches!(
            e,
            Event::Fin { key: k, from_client: false, .. } | Event::DaemonRst { key: k, .. } if *k == key
        )));
        assert_eq!(lb.stats.dropped_total() + lb.stats.recovered.get(), 0);
    }
}

#[cfg(test)]
mod tests6;
