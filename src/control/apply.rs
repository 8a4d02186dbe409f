//! From a validated [`Config`] to the running state: the next-hop table, each
//! worker's dataplane and the steering program's maps. Start-up and SIGHUP reload
//! both go through [`apply`], so a reload to a configuration leaves the same state
//! as a fresh start with it.
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use anyhow::{bail, Result};

use crate::{
    config::Config,
    dataplane::{Dataplane, Retired},
    ids::WorkerId,
    neigh::{DaemonHop, Kernel, NextHop, Reach},
    xdp::{Steering, SteeringTable},
};

/// What a configuration becomes for the workers.
pub struct Applied {
    /// Indexed by [`BackendId`](crate::ids::BackendId), shared by every plane.
    pub next_hops: Arc<[NextHop]>,
    /// One per worker, in worker order.
    pub planes: Vec<Dataplane>,
    /// Each daemon's route and the MAC its cell started with, in the same
    /// order: what the loop's [`HopBook`](crate::neigh::HopBook) installs.
    pub hops: Vec<DaemonHop>,
}

/// What a daemon the kernel does not route out of the back does to [`apply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffBack {
    /// Refuses the configuration (start-up, reload): one line saying why.
    Refuse,
    /// Takes it without a next hop, as the loop found it while running (when
    /// the running configuration is applied again, e.g. to let go of retired
    /// daemons): it is offered nothing until its route is back.
    Keep,
}

/// The host facts `apply` needs besides the configuration.
pub struct Host<'a> {
    pub kernel: &'a Kernel,
    /// The back interface's MAC: the source of every frame sent to a daemon.
    pub back_mac: [u8; 6],
    pub workers: usize,
}

/// Asks the kernel where it routes every daemon (configured or `retired`:
/// removed by a reload, its connections going on) and checks that it is out of
/// the back interface (`off_back` says what happens otherwise), builds the
/// next-hop table (the MAC `mac` gives a daemon and its hop: the kernel's
/// entry, or what the daemon had; unknown ones come with the kernel's
/// notification once it has resolved them), builds each worker's dataplane and
/// then makes the steering maps hold exactly `config`'s services, VIPs and
/// daemons and the retired daemons, removing what an earlier configuration
/// left. Everything that can fail on the configuration fails before the maps
/// are touched.
pub fn apply(
    config: &Config,
    retired: &[Retired],
    mac: impl Fn(IpAddr, IpAddr) -> Option<[u8; 6]>,
    host: &Host<'_>,
    off_back: OffBack,
    steering: &mut Steering,
) -> Result<Applied> {
    // IPv6 daemons take the ids after the IPv4 ones, retired daemons after
    // every configured one.
    let daemons: Vec<SocketAddr> = (config.daemons().map(|(_, _, b)| b.addr.into()))
        .chain(config.daemons6().map(|(_, _, b)| b.addr.into()))
        .chain(retired.iter().map(|r| r.daemon))
        .collect();
    let mut hops = Vec::with_capacity(daemons.len());
    for daemon in &daemons {
        let addr = daemon.ip();
        let reach = host.kernel.route_ip(addr)?;
        if let (Some(problem), OffBack::Refuse) =
            (reach.problem(addr, host.kernel.back()), off_back)
        {
            bail!("{problem}");
        }
        let mac = match reach {
            Reach::Back { hop } => mac(addr, hop),
            _ => None,
        };
        hops.push(DaemonHop { addr, reach, mac });
    }
    let next_hops: Arc<[NextHop]> = hops
        .iter()
        .map(|h| {
            let cell = NextHop::default();
            cell.set(h.usable());
            cell
        })
        .collect();
    let planes = planes(config, retired, &next_hops, host.back_mac, host.workers)?;
    steering.sync(&SteeringTable::of(config, retired))?;
    Ok(Applied {
        next_hops,
        planes,
        hops,
    })
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
                &config.services6,
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
