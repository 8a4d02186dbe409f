//! From a validated [`Config`] to the running state: the next-hop table, each
//! worker's dataplane and the steering program's maps. Start-up and SIGHUP reload
//! both go through [`apply`], so a reload to a configuration leaves the same state
//! as a fresh start with it.
use std::{net::SocketAddrV4, sync::Arc};

use anyhow::Result;

use crate::{
    config::Config,
    dataplane::{Dataplane, Retired},
    ids::WorkerId,
    neigh::{NextHop, Resolver},
    xdp::{Steering, SteeringTable},
};

/// What a configuration becomes for the workers.
pub struct Applied {
    /// Indexed by [`BackendId`](crate::ids::BackendId), shared by every plane.
    pub next_hops: Arc<[NextHop]>,
    /// One per worker, in worker order.
    pub planes: Vec<Dataplane>,
}

/// The host facts `apply` needs besides the configuration.
pub struct Host<'a> {
    pub resolver: &'a Resolver,
    /// The back interface's MAC: the source of every frame sent to a daemon.
    pub back_mac: [u8; 6],
    pub workers: usize,
}

/// Checks that every daemon (configured or `retired`: removed by a reload, its
/// connections going on) is routed through the back interface, builds the
/// next-hop table (a MAC `known` already, else what the kernel's neighbour table
/// says now; unknown ones are resolved later by the loop), builds each worker's
/// dataplane and then makes the steering maps hold exactly `config`'s services,
/// VIPs and daemons and the retired daemons, removing what an earlier
/// configuration left. Everything that can fail on the configuration fails before
/// the maps are touched.
pub fn apply(
    config: &Config,
    retired: &[Retired],
    known: impl Fn(SocketAddrV4) -> Option<[u8; 6]>,
    host: &Host<'_>,
    steering: &mut Steering,
) -> Result<Applied> {
    // Retired daemons take the ids after the configured ones.
    let daemons: Vec<SocketAddrV4> = config
        .daemons()
        .map(|(_, _, b)| b.addr)
        .chain(retired.iter().map(|r| r.daemon))
        .collect();
    let next_hops: Arc<[NextHop]> = daemons.iter().map(|_| NextHop::default()).collect();
    for (daemon, hop) in daemons.iter().zip(next_hops.iter()) {
        host.resolver.route(*daemon.ip())?;
        hop.set(known(*daemon).or_else(|| host.resolver.lookup(*daemon.ip()).ok().flatten()));
    }
    let planes = planes(config, retired, &next_hops, host.back_mac, host.workers)?;
    steering.sync(&SteeringTable::of(config, retired))?;
    Ok(Applied { next_hops, planes })
}

/// Each worker's dataplane for `config` and the `retired` daemons.
pub fn planes(
    config: &Config,
    retired: &[Retired],
    next_hops: &Arc<[NextHop]>,
    back_mac: [u8; 6],
    workers: usize,
) -> Result<Vec<Dataplane>> {
    let age_limit = config.control.timeouts.record_age_limit();
    (0..workers)
        .map(|w| {
            let mut plane = Dataplane::build(
                WorkerId(w as u16),
                &config.services,
                retired,
                next_hops.clone(),
                back_mac,
            )?
            .with_mss_clamp(config.mss_clamp);
            plane.age_limit_ns = u64::try_from(age_limit.as_nanos()).unwrap_or(u64::MAX);
            Ok(plane)
        })
        .collect()
}
