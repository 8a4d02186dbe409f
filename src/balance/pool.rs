//! A service's daemons, their states and connection counts, and the policy that picks
//! one for each new connection.
use std::net::SocketAddrV4;

use super::{flow_hash, BackendSpec, BackendState, MaglevTable, PolicyKind};
use crate::{flow::FlowKey, ids::PoolIndex};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("service has no backends")]
    NoBackends,
    #[error("backend {0} has weight 0")]
    ZeroWeight(SocketAddrV4),
    #[error("backend {0} is listed more than once")]
    Duplicate(SocketAddrV4),
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
#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    policy: PolicyKind,
    backends: Box<[BackendSpec]>,
    states: Box<[BackendState]>,
    active: Box<[u32]>,
    up: usize,
    cursor: usize,
    wrr_current: Box<[i64]>,
    maglev: Option<MaglevTable>,
}

impl Pool {
    pub fn new(policy: PolicyKind, backends: &[BackendSpec]) -> Result<Self, PoolError> {
        let n = backends.len();
        if n == 0 {
            return Err(PoolError::NoBackends);
        }
        if n > usize::from(u16::MAX) {
            return Err(PoolError::TooMany(n));
        }
        if let Some(b) = backends.iter().find(|b| b.weight == 0) {
            return Err(PoolError::ZeroWeight(b.addr));
        }
        let mut addrs: Vec<SocketAddrV4> = backends.iter().map(|b| b.addr).collect();
        addrs.sort_unstable();
        if let Some(w) = addrs.windows(2).find(|w| w[0] == w[1]) {
            return Err(PoolError::Duplicate(w[0]));
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
    pub fn addr(&self, index: PoolIndex) -> SocketAddrV4 {
        self.backends[index.index()].addr
    }

    #[inline]
    pub fn backends(&self) -> &[BackendSpec] {
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
        let was_up = self.states[index.index()] == BackendState::Up;
        self.states[index.index()] = state;
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
    pub fn select(&mut self, key: &FlowKey) -> Option<PoolIndex> {
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
            PolicyKind::Maglev => self.maglev.as_ref()?.lookup(flow_hash(key)).map(PoolIndex),
        }
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
