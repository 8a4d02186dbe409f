//! A service's daemons, their states and connection counts, and the policy that picks
//! one for each new connection.
use std::net::{SocketAddr, SocketAddrV4};

use super::{BackendSpec, BackendState, DaemonAddr, FlowHashed, MaglevTable, PolicyKind};
use crate::ids::PoolIndex;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("service has no backends")]
    NoBackends,
    #[error("backend {0} has weight 0")]
    ZeroWeight(SocketAddr),
    #[error("backend {0} is listed more than once")]
    Duplicate(SocketAddr),
    #[error("{0} backends; at most 65535 per service")]
    TooMany(usize),
}

/// The daemons of one service and the selection state of its policy.
///
/// Everything is allocated by [`Pool::new`]; [`select`](Self::select),
/// [`set_state`](Self::set_state) and the connection counters do not allocate.
/// Indices are positions in the configured backend list.
///
/// Policies (only `Up` daemons get new connections):
/// * `RoundRobin`: cycles over Up daemons in config order.
/// * `WeightedRoundRobin`: nginx's smooth weighted round-robin: each pick adds every
///   Up daemon's weight to its current value, picks the largest (first on ties) and
///   subtracts the total Up weight from it. Over any `Σw` consecutive picks with no
///   state change, daemon `i` is picked exactly `w_i` times, interleaved. Current
///   values reset to 0 whenever the set of Up daemons changes.
/// * `LeastConnections`: smallest `active / weight` (compared exactly by
///   cross-multiplication); the scan starts after the previous pick, so ties rotate.
/// * `Maglev`: [`MaglevTable`] over the Up daemons, looked up with [`flow_hash`];
///   the same daemon set gives the same pick on every host.
///
/// A Maglev pool keeps a second table for [`recover`](Self::recover): over the
/// daemons that are not Down, so a draining daemon still owns the connections it
/// has when a segment of one meets an instance without its record. When no daemon
/// drains the two tables are equal; they are rebuilt, in place, only when their
/// own daemon set changes.
#[derive(Clone, Debug, PartialEq)]
pub struct Pool<A = SocketAddrV4> {
    policy: PolicyKind,
    backends: Box<[BackendSpec<A>]>,
    states: Box<[BackendState]>,
    active: Box<[u32]>,
    up: usize,
    cursor: usize,
    wrr_current: Box<[i64]>,
    maglev: Option<MaglevTable>,
    /// Maglev over the daemons that are not Down: where an existing connection
    /// whose record was lost belongs.
    recovery: Option<MaglevTable>,
}

impl<A: DaemonAddr> Pool<A> {
    pub fn new(policy: PolicyKind, backends: &[BackendSpec<A>]) -> Result<Self, PoolError> {
        let n = backends.len();
        if n == 0 {
            return Err(PoolError::NoBackends);
        }
        if n > usize::from(u16::MAX) {
            return Err(PoolError::TooMany(n));
        }
        if let Some(b) = backends.iter().find(|b| b.weight == 0) {
            return Err(PoolError::ZeroWeight(b.addr.into()));
        }
        let mut addrs: Vec<A> = backends.iter().map(|b| b.addr).collect();
        addrs.sort_unstable();
        if let Some(w) = addrs.windows(2).find(|w| w[0] == w[1]) {
            return Err(PoolError::Duplicate(w[0].into()));
        }
        Ok(Self {
            policy,
            backends: backends.into(),
            states: vec![BackendState::Up; n].into_boxed_slice(),
            active: vec![0; n].into_boxed_slice(),
            up: n,
            cursor: 0,
            wrr_current: vec![0; n].into_boxed_slice(),
            maglev: (policy == PolicyKind::Maglev).then(|| MaglevTable::new(backends)),
            recovery: (policy == PolicyKind::Maglev).then(|| MaglevTable::new(backends)),
        })
    }

    #[inline]
    pub fn policy(&self) -> PolicyKind {
        self.policy
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.backends.len()
    }

    /// Always false: a pool has at least one backend.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// # Panics
    /// If `index >= len()` (likewise for the other index-taking methods).
    #[inline]
    pub fn addr(&self, index: PoolIndex) -> A {
        self.backends[index.index()].addr
    }

    #[inline]
    pub fn backends(&self) -> &[BackendSpec<A>] {
        &self.backends
    }

    #[inline]
    pub fn state(&self, index: PoolIndex) -> BackendState {
        self.states[index.index()]
    }

    /// Number of daemons that are Up.
    #[inline]
    pub fn up_count(&self) -> usize {
        self.up
    }

    /// The Maglev table, for the Maglev policy.
    #[inline]
    pub fn maglev(&self) -> Option<&MaglevTable> {
        self.maglev.as_ref()
    }

    /// Sets a daemon's state. `Down` and `Draining` daemons get no new connections;
    /// existing ones are untouched. When the set of Up daemons changes, smooth WRR
    /// restarts its cycle and Maglev repopulates its table in place.
    pub fn set_state(&mut self, index: PoolIndex, state: BackendState) {
        let before = self.states[index.index()];
        let was_up = before == BackendState::Up;
        self.states[index.index()] = state;
        if (before == BackendState::Down) != (state == BackendState::Down) {
            if let Some(r) = self.recovery.as_mut() {
                let states = &self.states;
                r.rebuild(|i| states[i] != BackendState::Down);
            }
        }
        let is_up = state == BackendState::Up;
        if was_up == is_up {
            return;
        }
        if is_up {
            self.up += 1;
        } else {
            self.up -= 1;
        }
        self.wrr_current.fill(0);
        if let Some(m) = self.maglev.as_mut() {
            let states = &self.states;
            m.rebuild(|i| states[i] == BackendState::Up);
        }
    }

    /// Picks a daemon for a new connection; `None` if no daemon is Up. Does not
    /// count the connection (see [`connection_opened`](Self::connection_opened)).
    pub fn select<K: FlowHashed>(&mut self, key: &K) -> Option<PoolIndex> {
        if self.up == 0 {
            return None;
        }
        let n = self.backends.len();
        match self.policy {
            PolicyKind::RoundRobin => {
                for k in 0..n {
                    let i = (self.cursor + k) % n;
                    if self.states[i] == BackendState::Up {
                        self.cursor = (i + 1) % n;
                        return Some(PoolIndex(i as u16));
                    }
                }
                None
            }
            PolicyKind::WeightedRoundRobin => {
                let mut total = 0i64;
                let mut best: Option<usize> = None;
                for i in 0..n {
                    if self.states[i] != BackendState::Up {
                        continue;
                    }
                    let w = i64::from(self.backends[i].weight);
                    self.wrr_current[i] += w;
                    total += w;
                    if best.is_none_or(|b| self.wrr_current[i] > self.wrr_current[b]) {
                        best = Some(i);
                    }
                }
                let b = best?;
                self.wrr_current[b] -= total;
                Some(PoolIndex(b as u16))
            }
            PolicyKind::LeastConnections => {
                let mut best: Option<usize> = None;
                for k in 0..n {
                    let i = (self.cursor + k) % n;
                    if self.states[i] != BackendState::Up {
                        continue;
                    }
                    // active[i]/w[i] < active[b]/w[b], exactly.
                    let fewer = |b: usize| {
                        u64::from(self.active[i]) * u64::from(self.backends[b].weight)
                            < u64::from(self.active[b]) * u64::from(self.backends[i].weight)
                    };
                    if best.is_none_or(fewer) {
                        best = Some(i);
                    }
                }
                let b = best?;
                self.cursor = (b + 1) % n;
                Some(PoolIndex(b as u16))
            }
            PolicyKind::Maglev => self.maglev.as_ref()?.lookup(key.flow_hash()).map(PoolIndex),
        }
    }

    /// The daemon an existing connection belongs to when its record is lost
    /// (after a restart, or on another instance behind ECMP): Maglev over the
    /// daemons that are not Down, the same answer on every instance with the same
    /// daemon set. `None` for the other policies, whose choice no other process
    /// can repeat, and when every daemon is Down.
    #[inline]
    pub fn recover<K: FlowHashed>(&self, key: &K) -> Option<PoolIndex> {
        self.recovery
            .as_ref()?
            .lookup(key.flow_hash())
            .map(PoolIndex)
    }

    /// Counts a new connection to `index` (saturating).
    #[inline]
    pub fn connection_opened(&mut self, index: PoolIndex) {
        let a = &mut self.active[index.index()];
        *a = a.saturating_add(1);
    }

    /// Adds `n` connections carried over from an earlier pool (a reload): one
    /// addition however many there are.
    #[inline]
    pub fn connections_carried(&mut self, index: PoolIndex, n: u32) {
        let a = &mut self.active[index.index()];
        *a = a.saturating_add(n);
    }

    /// Counts a closed connection of `index` (saturating at 0).
    #[inline]
    pub fn connection_closed(&mut self, index: PoolIndex) {
        let a = &mut self.active[index.index()];
        *a = a.saturating_sub(1);
    }

    /// Connections currently counted to `index`.
    #[inline]
    pub fn active(&self, index: PoolIndex) -> u32 {
        self.active[index.index()]
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};

    use super::*;
    use crate::flow::{FlowKey, FlowKey6};

    fn daemons(n: u8) -> Vec<BackendSpec> {
        (0..n)
            .map(|i| BackendSpec {
                addr: SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 11 + i), 8080),
                weight: 1,
            })
            .collect()
    }

    fn keys() -> impl Iterator<Item = FlowKey> {
        (0..20_000u32).map(|i| {
            FlowKey::new(
                SocketAddrV4::new(Ipv4Addr::from(0xc612_0000 | (i >> 6)), 1024 + i as u16),
                SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 80),
                6,
            )
        })
    }

    /// Two instances never share memory: each builds its pools from its own copy
    /// of the configuration (here in another order), and both must send a lost
    /// connection to the same daemon.
    #[test]
    fn independently_built_pools_recover_alike() {
        let specs = daemons(5);
        let mut reversed = specs.clone();
        reversed.reverse();
        let mut a = Pool::new(PolicyKind::Maglev, &specs).unwrap();
        let mut b = Pool::new(PolicyKind::Maglev, &reversed).unwrap();
        for key in keys() {
            let on_a = a.recover(&key).map(|i| a.addr(i));
            assert!(on_a.is_some());
            assert_eq!(on_a, b.recover(&key).map(|i| b.addr(i)));
            // With every daemon up, recovery repeats the pick of the SYN.
            assert_eq!(a.select(&key), a.recover(&key));
            assert_eq!(
                b.select(&key).map(|i| b.addr(i)),
                b.recover(&key).map(|i| b.addr(i))
            );
        }
    }

    #[test]
    fn a_draining_daemon_keeps_its_connections_and_a_down_one_loses_them() {
        let specs = daemons(4);
        let mut pool = Pool::new(PolicyKind::Maglev, &specs).unwrap();
        let before: Vec<_> = keys().map(|k| pool.recover(&k)).collect();
        let draining = PoolIndex(2);
        pool.set_state(draining, BackendState::Draining);
        let mut moved_to_others = 0;
        for (key, was) in keys().zip(&before) {
            assert_eq!(pool.recover(&key), *was, "recovery ignores draining");
            let pick = pool.select(&key).unwrap();
            assert_ne!(pick, draining, "no new connection to a draining daemon");
            if *was == Some(draining) {
                moved_to_others += 1;
            }
        }
        assert!(moved_to_others > 4_000, "{moved_to_others}");

        pool.set_state(draining, BackendState::Down);
        for key in keys() {
            assert_ne!(pool.recover(&key), Some(draining));
        }
        // Back up: the same table as at the start, without allocating anew.
        pool.set_state(draining, BackendState::Up);
        assert!(keys().zip(&before).all(|(k, was)| pool.recover(&k) == *was));
        for i in 0..4 {
            pool.set_state(PoolIndex(i), BackendState::Down);
        }
        assert_eq!(pool.recover(&keys().next().unwrap()), None);
    }

    #[test]
    fn only_maglev_recovers() {
        let specs = daemons(3);
        for policy in [
            PolicyKind::RoundRobin,
            PolicyKind::WeightedRoundRobin,
            PolicyKind::LeastConnections,
        ] {
            let pool = Pool::new(policy, &specs).unwrap();
            assert_eq!(pool.recover(&keys().next().unwrap()), None, "{policy}");
        }
    }

    fn daemons6(n: u16) -> Vec<BackendSpec<SocketAddrV6>> {
        (0..n)
            .map(|i| BackendSpec {
                addr: SocketAddrV6::new(
                    Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 0x11 + i),
                    8080,
                    0,
                    0,
                ),
                weight: 1,
            })
            .collect()
    }

    fn keys6() -> impl Iterator<Item = FlowKey6> {
        (0..20_000u32).map(|i| {
            FlowKey6::new(
                SocketAddrV6::new(
                    Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, (i >> 16) as u16, i as u16),
                    1024 + i as u16,
                    0,
                    0,
                ),
                SocketAddrV6::new(Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 0x100), 80, 0, 0),
                6,
            )
        })
    }

    /// IPv6 daemons and keys: the same guarantees as IPv4's. Pools built from
    /// differently ordered lists pick and recover alike, every daemon gets a
    /// fair share, and a drained daemon keeps its lost connections.
    #[test]
    fn ipv6_pools_pick_and_recover_alike_on_every_instance() {
        let specs = daemons6(5);
        let mut reversed = specs.clone();
        reversed.reverse();
        let mut a = Pool::new(PolicyKind::Maglev, &specs).unwrap();
        let mut b = Pool::new(PolicyKind::Maglev, &reversed).unwrap();
        let mut share = [0u32; 5];
        for key in keys6() {
            let picked = a.select(&key).map(|i| a.addr(i));
            assert_eq!(picked, b.select(&key).map(|i| b.addr(i)));
            assert_eq!(a.recover(&key).map(|i| a.addr(i)), picked);
            share[a.select(&key).unwrap().index()] += 1;
        }
        // 20,000 keys over 5 daemons: 4,000 each, within 10 %.
        assert!(
            share.iter().all(|&n| (3_600..=4_400).contains(&n)),
            "{share:?}"
        );
        a.set_state(PoolIndex(2), BackendState::Draining);
        for key in keys6() {
            let recovered = a.recover(&key).unwrap();
            let before = b.recover(&key).map(|i| b.addr(i)).unwrap();
            assert_eq!(a.addr(recovered), before, "draining keeps its connections");
            assert_ne!(a.select(&key), Some(PoolIndex(2)), "and takes no new one");
        }
        let dup = [specs[0], specs[0]];
        assert_eq!(
            Pool::new(PolicyKind::RoundRobin, &dup).unwrap_err(),
            PoolError::Duplicate(specs[0].addr.into())
        );
    }
}
