//! Policies that pick a daemon for a new connection.
//!
//! Seed types shared with the config module, the stable [`flow_hash`], the Maglev
//! lookup table and the [`Pool`] that applies a [`PolicyKind`] to a service's daemons.
use std::{
    fmt,
    net::{SocketAddrV4, SocketAddrV6},
    str::FromStr,
};

use serde::{Deserialize, Serialize};

mod hash;
pub mod maglev;
mod pool;

pub use hash::{addr_hashes, addr_hashes6, flow_hash, flow_hash6, fmix64};
pub use maglev::MaglevTable;
pub use pool::{Pool, PoolError};

/// How a service spreads new connections over its daemons.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    #[default]
    RoundRobin,
    WeightedRoundRobin,
    LeastConnections,
    Maglev,
}

impl PolicyKind {
    pub const NAMES: [&'static str; 4] = [
        "round_robin",
        "weighted_round_robin",
        "least_connections",
        "maglev",
    ];

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PolicyKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let all = [
            Self::RoundRobin,
            Self::WeightedRoundRobin,
            Self::LeastConnections,
            Self::Maglev,
        ];
        all.into_iter()
            .find(|p| p.name() == s.replace('-', "_"))
            .ok_or_else(|| format!("unknown policy {s:?}; one of {}", Self::NAMES.join(", ")))
    }
}

/// One daemon of a service as configured; `A` is its family's address
/// (`SocketAddrV6` for an IPv6 service's daemons).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendSpec<A = SocketAddrV4> {
    pub addr: A,
    /// Relative share of new connections for the weighted policies (>= 1).
    pub weight: u32,
}

/// Whether a daemon takes new connections. Existing connections are unaffected by
/// `Down` and `Draining` alike; what happens to them on failure is the control
/// plane's decision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendState {
    #[default]
    Up,
    Down,
    Draining,
}

/// A daemon's address in one family: what a [`Pool`] and a [`MaglevTable`] need
/// of it. Implemented for `SocketAddrV4` and `SocketAddrV6`; each pool is
/// monomorphised, so the IPv4 one is the code it was.
pub trait DaemonAddr: Copy + Ord + fmt::Debug + fmt::Display + Into<std::net::SocketAddr> {
    /// The two stable hashes that seed the daemon's Maglev permutation.
    fn addr_hashes(self) -> (u64, u64);
}

impl DaemonAddr for SocketAddrV4 {
    #[inline]
    fn addr_hashes(self) -> (u64, u64) {
        addr_hashes(self)
    }
}

impl DaemonAddr for SocketAddrV6 {
    #[inline]
    fn addr_hashes(self) -> (u64, u64) {
        addr_hashes6(self)
    }
}

/// A flow's key as a policy sees it: its stable hash, for Maglev.
pub trait FlowHashed {
    fn flow_hash(&self) -> u64;
}

impl FlowHashed for crate::flow::FlowKey {
    #[inline(always)]
    fn flow_hash(&self) -> u64 {
        flow_hash(self)
    }
}

impl FlowHashed for crate::flow::FlowKey6 {
    #[inline(always)]
    fn flow_hash(&self) -> u64 {
        flow_hash6(self)
    }
}
