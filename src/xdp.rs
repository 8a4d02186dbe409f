//! The steering program: load it, fill its maps from the config, attach it to the
//! front and back interfaces through bpf_links that die with the process.
//!
//! The links are deliberately not pinned: when dispatchd exits, by SIGTERM or by
//! SIGKILL, the kernel closes their fds and detaches the program, so a crashed
//! dispatcher never leaves the host's traffic black-holed.
#![allow(unsafe_code)] // libbpf C calls and the generated skeleton; each block says why it is sound

use std::{
    collections::BTreeMap,
    ffi::CString,
    fmt, io,
    mem::MaybeUninit,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
};

use anyhow::{bail, Context, Result};
use libbpf_rs::{
    skel::{OpenSkel, SkelBuilder},
    MapCore, MapFlags, OpenObject,
};

use crate::{
    config::{
        Config, Protocol, XdpMode, MAX_QUEUES, REPLY_KEY6_SIZE, REPLY_KEY_SIZE, REPLY_KEY_V0_SIZE,
        VIP_TCP, VIP_UDP,
    },
    dataplane::Retired,
};

#[allow(
    clippy::all,
    clippy::pedantic,
    dead_code,
    unused_imports,
    non_camel_case_types
)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/steer.skel.rs"));
}
use skel::{types, SteerSkel, SteerSkelBuilder};

/// Names of `enum steer_counter` in `bpf/steer.h`, in order. [`Steering::load`]
/// checks the length against the counters map's size, which comes from the header.
pub const COUNTER_NAMES: [&str; 26] = [
    "front_steered",
    "back_steered",
    "passed",
    "no_socket",
    "fib_no_neigh",
    "fib_failed",
    "truncated",
    "vlan",
    "ipv6",
    "vip_malformed",
    "vip_fragment",
    "icmp_front_steered",
    "icmp_back_steered",
    "frag_needed_sent",
    "too_big",
    "back_to_host",
    "back_not_front",
    "back_untracked",
    "fwd_disabled",
    "front6_steered",
    "vip6_ext_header",
    "back6_steered",
    "icmp6_front_steered",
    "icmp6_back_steered",
    "packet_too_big_sent",
    "direct_took_over",
];

/// Counters of [`COUNTER_NAMES`] that say why a frame was passed to the host:
/// each such frame is counted in `passed` as well, so these are a breakdown of
/// it, not verdicts of their own.
pub const PASS_REASONS: [&str; 8] = [
    "truncated",
    "vlan",
    "ipv6",
    "back_to_host",
    "back_not_front",
    "back_untracked",
    "fwd_disabled",
    "direct_took_over",
];

/// Which side of the dispatcher a socket or interface is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Front,
    Back,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Front => "front",
            Self::Back => "back",
        })
    }
}

/// An interface that exists, resolved once at start-up.
#[derive(Clone, Debug)]
pub struct Interface {
    pub name: String,
    pub index: u32,
}

impl Interface {
    pub fn lookup(name: &str) -> Result<Self> {
        let cname = CString::new(name).with_context(|| format!("interface name {name:?}"))?;
        // SAFETY: cname is a valid NUL-terminated string that outlives the call.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if index == 0 {
            bail!(
                "interface {name} not found: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(Self {
            name: name.to_owned(),
            index,
        })
    }
}

/// How the program ended up attached to an interface, as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    Native,
    Generic,
    Offload,
    Unknown(u8),
}

impl fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Native => f.write_str("native"),
            Self::Generic => f.write_str("skb (generic)"),
            Self::Offload => f.write_str("offload"),
            Self::Unknown(m) => write!(f, "unknown ({m})"),
        }
    }
}

pub struct Steering {
    skel: SteerSkel<'static>,
    links: Vec<OwnedFd>,
}

/// Which frames from a daemon's address and port the program takes as replies
/// to clients (`reply_mode`). Either way only those the kernel would route out
/// of the front.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replies {
    /// All of them: no per-connection state, any instance can rewrite them.
    Stateless,
    /// Those of connections in the tracked map, which has room for `capacity`
    /// (IPv4) and tracked6, with room for `capacity6` (IPv6; both allocated in
    /// full at load, so 1 while there are no IPv6 services).
    Tracked { capacity: u32, capacity6: u32 },
}

/// What the steering maps hold for a configuration: its services (with their
/// index), its daemons (with their service), each by address and protocol,
/// and its VIPs with the protocols of their services (`VIP_TCP | VIP_UDP`);
/// the IPv6 ones in the `6` fields (maps services6, daemons6, vip6_addrs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SteeringTable {
    pub services: BTreeMap<(SocketAddrV4, Protocol), u32>,
    pub daemons: BTreeMap<(SocketAddrV4, Protocol), SocketAddrV4>,
    pub vips: BTreeMap<Ipv4Addr, u8>,
    pub services6: BTreeMap<(SocketAddrV6, Protocol), u32>,
    pub daemons6: BTreeMap<(SocketAddrV6, Protocol), SocketAddrV6>,
    pub vips6: BTreeMap<Ipv6Addr, u8>,
}

/// The `services` value of a service a reload removed while a retired daemon
/// of it still has connections (the program reads only the key).
pub const REMOVED_SERVICE: u32 = u32::MAX;

/// The bit of `protocol` in a VIP's value.
pub fn vip_kind(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Tcp => VIP_TCP as u8,
        Protocol::Udp => VIP_UDP as u8,
    }
}

impl SteeringTable {
    /// The maps for `config` and the daemons a reload `retired` (whose replies
    /// still come back).
    /// IPv6 services are indexed after the IPv4 ones, as their daemons' ids
    /// follow the IPv4 daemons'.
    pub fn of(config: &Config, retired: &[Retired]) -> Self {
        let mut vips = BTreeMap::new();
        for s in &config.services {
            *vips.entry(*s.address.ip()).or_default() |= vip_kind(s.protocol);
        }
        let mut table = Self {
            services: config
                .services
                .iter()
                .enumerate()
                .map(|(i, s)| ((s.address, s.protocol), i as u32))
                .collect(),
            daemons: config
                .services
                .iter()
                .flat_map(|s| s.backends.iter().map(|b| ((b.addr, s.protocol), s.address)))
                .collect(),
            vips,
            ..Self::default()
        };
        for (i, s) in config.services6.iter().enumerate() {
            let id = (config.services.len() + i) as u32;
            table.add_service6(s.address, s.protocol, id, s.backends.iter().map(|b| b.addr));
        }
        // A retired daemon's replies still come back, as from its service;
        // and its clients' segments still come, to a service the reload may
        // have removed: steered on until the daemon is let go of (the workers
        // drop a new connection's first segment there, as for no service).
        for r in retired {
            match (r.daemon, r.service) {
                (SocketAddr::V4(daemon), SocketAddr::V4(service)) => {
                    table.daemons.insert((daemon, r.protocol), service);
                    table
                        .services
                        .entry((service, r.protocol))
                        .or_insert(REMOVED_SERVICE);
                    *table.vips.entry(*service.ip()).or_default() |= vip_kind(r.protocol);
                }
                (SocketAddr::V6(daemon), SocketAddr::V6(service)) => {
                    table.daemons6.insert((daemon, r.protocol), service);
                    table
                        .services6
                        .entry((service, r.protocol))
                        .or_insert(REMOVED_SERVICE);
                    *table.vips6.entry(*service.ip()).or_default() |= vip_kind(r.protocol);
                }
                // A service and its daemons are of one family (validation).
                _ => {}
            }
        }
        table
    }

    /// Adds the IPv6 service `service` of `protocol` (index `id`) with its
    /// `daemons`, and its VIP with the protocol's bit.
    pub fn add_service6(
        &mut self,
        service: SocketAddrV6,
        protocol: Protocol,
        id: u32,
        daemons: impl IntoIterator<Item = SocketAddrV6>,
    ) {
        self.services6.insert((service, protocol), id);
        *self.vips6.entry(*service.ip()).or_default() |= vip_kind(protocol);
        for d in daemons {
            self.daemons6.insert((d, protocol), service);
        }
    }
}

fn endpoint((addr, protocol): (SocketAddrV4, Protocol)) -> types::endpoint {
    // Network byte order in memory, as the program reads the packet.
    types::endpoint {
        addr: u32::from_ne_bytes(addr.ip().octets()),
        port: addr.port().to_be(),
        protocol: protocol.number(),
        pad: 0,
    }
}

/// The address and protocol an `endpoint` key or value holds, from its bytes
/// as the map stores them.
fn endpoint_addr(bytes: &[u8]) -> Option<(SocketAddrV4, Protocol)> {
    let ip: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
    let port: [u8; 2] = bytes.get(4..6)?.try_into().ok()?;
    let protocol = match *bytes.get(6)? {
        n if n == Protocol::Udp.number() => Protocol::Udp,
        _ => Protocol::Tcp,
    };
    Some((
        SocketAddrV4::new(ip.into(), u16::from_be_bytes(port)),
        protocol,
    ))
}

fn ip_of(bytes: &[u8]) -> Option<Ipv4Addr> {
    let ip: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
    Some(ip.into())
}

fn endpoint6((addr, protocol): (SocketAddrV6, Protocol)) -> types::endpoint6 {
    // Address and port in network byte order, as the program reads the packet.
    types::endpoint6 {
        addr: addr.ip().octets(),
        port: addr.port().to_be(),
        protocol: protocol.number(),
        pad: 0,
    }
}

/// The address and protocol an `endpoint6` key or value holds, from its bytes
/// as the map stores them.
fn endpoint6_of(bytes: &[u8]) -> Option<(SocketAddrV6, Protocol)> {
    let ip: [u8; 16] = bytes.get(..16)?.try_into().ok()?;
    let port: [u8; 2] = bytes.get(16..18)?.try_into().ok()?;
    let protocol = match *bytes.get(18)? {
        n if n == Protocol::Udp.number() => Protocol::Udp,
        _ => Protocol::Tcp,
    };
    Some((
        SocketAddrV6::new(ip.into(), u16::from_be_bytes(port), 0, 0),
        protocol,
    ))
}

fn ip6_of(bytes: &[u8]) -> Option<Ipv6Addr> {
    let ip: [u8; 16] = bytes.get(..16)?.try_into().ok()?;
    Some(ip.into())
}

/// Views a plain-old-data map key or value as bytes for libbpf's byte-slice API.
fn pod_bytes<T: Copy>(value: &T) -> &[u8] {
    // SAFETY: only called with the skeleton's #[repr(C)] types and integers, which
    // have no padding bytes left uninitialised (`endpoint.pad` is explicit) and no
    // invalid bit patterns; the slice borrows `value` and cannot outlive it.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
}

impl Steering {
    /// Loads (and verifies) the program for this pair of interfaces. Nothing is
    /// attached until [`Steering::attach`].
    pub fn load(front: &Interface, back: &Interface, replies: Replies) -> Result<Self> {
        Self::load_as(front, back, replies, false)
    }

    /// [`Steering::load`] for the benchmark's XDP ceiling (`--bare-xdp-redirect`):
    /// what the program would steer to a socket it redirects to the other
    /// interface instead, untouched.
    pub fn load_bare_redirect(
        front: &Interface,
        back: &Interface,
        replies: Replies,
    ) -> Result<Self> {
        Self::load_as(front, back, replies, true)
    }

    fn load_as(
        front: &Interface,
        back: &Interface,
        replies: Replies,
        bare_redirect: bool,
    ) -> Result<Self> {
        // The skeleton borrows its object storage for its whole life; one program per
        // process, so leaking it once gives it the 'static life the workers need.
        // libbpf's own messages would add lines to a failure that is reported as
        // one; every error still comes back through the Result.
        libbpf_rs::set_print(None);
        let storage: &'static mut MaybeUninit<OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = SteerSkelBuilder::default()
            .open(storage)
            .context("opening the XDP program (is this kernel built with BPF?)")?;
        let rodata = open
            .maps
            .rodata_data
            .as_deref_mut()
            .context("program has no rodata")?;
        rodata.front_ifindex = front.index;
        rodata.back_ifindex = back.index;
        rodata.bare_xdp_redirect = u8::from(bare_redirect);
        if let Replies::Tracked {
            capacity,
            capacity6,
        } = replies
        {
            rodata.track_replies = 1;
            open.maps
                .tracked
                .set_max_entries(capacity.max(1))
                .context("sizing the tracked-connections map")?;
            open.maps
                .tracked6
                .set_max_entries(capacity6.max(1))
                .context("sizing the IPv6 tracked-connections map")?;
        }
        let skel = open
            .load()
            .context("loading the XDP program (needs root, or CAP_BPF with CAP_PERFMON)")?;
        let slots = skel.maps.counters.max_entries() as usize;
        if slots != COUNTER_NAMES.len() {
            bail!(
                "bpf/steer.h has {slots} counters, COUNTER_NAMES {}",
                COUNTER_NAMES.len()
            );
        }
        Ok(Self {
            skel,
            links: Vec::new(),
        })
    }

    /// Makes the services, daemons and VIPs maps hold exactly `want`: entries of
    /// an earlier configuration that `want` lacks are removed, the rest written.
    pub fn sync(&mut self, want: &SteeringTable) -> Result<()> {
        let have = self.contents()?;
        let maps = &self.skel.maps;
        for vip in have
            .services
            .keys()
            .filter(|k| !want.services.contains_key(k))
        {
            maps.services
                .delete(pod_bytes(&endpoint(*vip)))
                .with_context(|| format!("removing service {} from the XDP map", vip.0))?;
        }
        for daemon in have
            .daemons
            .keys()
            .filter(|k| !want.daemons.contains_key(k))
        {
            maps.daemons
                .delete(pod_bytes(&endpoint(*daemon)))
                .with_context(|| format!("removing daemon {} from the XDP map", daemon.0))?;
        }
        for ip in have.vips.keys().filter(|k| !want.vips.contains_key(k)) {
            maps.vip_addrs
                .delete(&u32::from_ne_bytes(ip.octets()).to_ne_bytes())
                .with_context(|| format!("removing VIP {ip} from the XDP map"))?;
        }
        for (ip, kinds) in &want.vips {
            maps.vip_addrs
                .update(
                    &u32::from_ne_bytes(ip.octets()).to_ne_bytes(),
                    &[*kinds],
                    MapFlags::ANY,
                )
                .with_context(|| format!("adding VIP {ip} to the XDP map"))?;
        }
        for (vip, id) in &want.services {
            maps.services
                .update(pod_bytes(&endpoint(*vip)), &id.to_ne_bytes(), MapFlags::ANY)
                .with_context(|| format!("adding service {} to the XDP map", vip.0))?;
        }
        for (daemon, service) in &want.daemons {
            let value = types::daemon_info {
                service: endpoint((*service, daemon.1)),
            };
            maps.daemons
                .update(
                    pod_bytes(&endpoint(*daemon)),
                    pod_bytes(&value),
                    MapFlags::ANY,
                )
                .with_context(|| format!("adding daemon {} to the XDP map", daemon.0))?;
        }
        self.sync6(&have, want)
    }

    /// The IPv6 half of [`sync`](Self::sync): services6, daemons6, vip6_addrs.
    fn sync6(&self, have: &SteeringTable, want: &SteeringTable) -> Result<()> {
        let maps = &self.skel.maps;
        for service in have
            .services6
            .keys()
            .filter(|k| !want.services6.contains_key(k))
        {
            maps.services6
                .delete(pod_bytes(&endpoint6(*service)))
                .with_context(|| format!("removing service {} from the XDP map", service.0))?;
        }
        for daemon in have
            .daemons6
            .keys()
            .filter(|k| !want.daemons6.contains_key(k))
        {
            maps.daemons6
                .delete(pod_bytes(&endpoint6(*daemon)))
                .with_context(|| format!("removing daemon {} from the XDP map", daemon.0))?;
        }
        for ip in have.vips6.keys().filter(|k| !want.vips6.contains_key(k)) {
            maps.vip6_addrs
                .delete(&ip.octets())
                .with_context(|| format!("removing VIP {ip} from the XDP map"))?;
        }
        for (ip, kinds) in &want.vips6 {
            maps.vip6_addrs
                .update(&ip.octets(), &[*kinds], MapFlags::ANY)
                .with_context(|| format!("adding VIP {ip} to the XDP map"))?;
        }
        for (service, id) in &want.services6 {
            maps.services6
                .update(
                    pod_bytes(&endpoint6(*service)),
                    &id.to_ne_bytes(),
                    MapFlags::ANY,
                )
                .with_context(|| format!("adding service {} to the XDP map", service.0))?;
        }
        for (daemon, service) in &want.daemons6 {
            let value = types::daemon_info6 {
                service: endpoint6((*service, daemon.1)),
            };
            maps.daemons6
                .update(
                    pod_bytes(&endpoint6(*daemon)),
                    pod_bytes(&value),
                    MapFlags::ANY,
                )
                .with_context(|| format!("adding daemon {} to the XDP map", daemon.0))?;
        }
        Ok(())
    }

    /// What the services, daemons and VIPs maps hold now.
    pub fn contents(&self) -> Result<SteeringTable> {
        let maps = &self.skel.maps;
        let mut table = SteeringTable::default();
        for key in maps.services.keys() {
            let id = maps
                .services
                .lookup(&key, MapFlags::ANY)?
                .and_then(|v| Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?)));
            if let (Some(vip), Some(id)) = (endpoint_addr(&key), id) {
                table.services.insert(vip, id);
            }
        }
        for key in maps.daemons.keys() {
            let service = maps
                .daemons
                .lookup(&key, MapFlags::ANY)?
                .and_then(|v| endpoint_addr(&v));
            if let (Some(daemon), Some((service, _))) = (endpoint_addr(&key), service) {
                table.daemons.insert(daemon, service);
            }
        }
        for key in maps.vip_addrs.keys() {
            let kinds = maps.vip_addrs.lookup(&key, MapFlags::ANY)?;
            if let (Some(ip), Some(&kinds)) = (ip_of(&key), kinds.as_ref().and_then(|v| v.first()))
            {
                table.vips.insert(ip, kinds);
            }
        }
        for key in maps.services6.keys() {
            let id = maps
                .services6
                .lookup(&key, MapFlags::ANY)?
                .and_then(|v| Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?)));
            if let (Some(service), Some(id)) = (endpoint6_of(&key), id) {
                table.services6.insert(service, id);
            }
        }
        for key in maps.daemons6.keys() {
            let service = maps
                .daemons6
                .lookup(&key, MapFlags::ANY)?
                .and_then(|v| endpoint6_of(&v));
            if let (Some(daemon), Some((service, _))) = (endpoint6_of(&key), service) {
                table.daemons6.insert(daemon, service);
            }
        }
        for key in maps.vip6_addrs.keys() {
            let kinds = maps.vip6_addrs.lookup(&key, MapFlags::ANY)?;
            if let (Some(ip), Some(&kinds)) = (ip6_of(&key), kinds.as_ref().and_then(|v| v.first()))
            {
                table.vips6.insert(ip, kinds);
            }
        }
        Ok(table)
    }

    /// Takes the next hops towards clients that the program found without a
    /// neighbour entry since the last call (appended to `hops`), and forgets
    /// them: one still unresolved is noted again by the next reply that needs it.
    pub fn take_unresolved_hops(&self, hops: &mut Vec<Ipv4Addr>) -> Result<()> {
        let map = &self.skel.maps.unresolved_hops;
        let start = hops.len();
        // A key the program evicts under the walk's cursor restarts the walk
        // from the first key: bounded, a storm of new hops cannot hold it.
        let most = 2 * map.max_entries() as usize;
        hops.extend(map.keys().take(most).filter_map(|k| ip_of(&k)));
        for hop in &hops[start..] {
            match map.delete(&hop.octets()) {
                Ok(()) => {}
                // Evicted meanwhile (the map is an LRU): nothing to forget.
                Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => {}
                Err(e) => return Err(e).context("forgetting an unresolved next hop"),
            }
        }
        Ok(())
    }

    /// [`take_unresolved_hops`](Self::take_unresolved_hops) for IPv6 next
    /// hops (unresolved_hops6); a link-local one is on the front.
    pub fn take_unresolved_hops6(&self, hops: &mut Vec<Ipv6Addr>) -> Result<()> {
        let map = &self.skel.maps.unresolved_hops6;
        let start = hops.len();
        let most = 2 * map.max_entries() as usize;
        hops.extend(map.keys().take(most).filter_map(|k| ip6_of(&k)));
        for hop in &hops[start..] {
            match map.delete(&hop.octets()) {
                Ok(()) => {}
                Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => {}
                Err(e) => return Err(e).context("forgetting an unresolved IPv6 next hop"),
            }
        }
        Ok(())
    }

    /// A handle on the IPv6 tracked-connections map (tracked6) for one worker.
    pub fn tracked6_map(&self) -> Result<TrackedMap<ReplyKey6>> {
        let fd = self
            .skel
            .maps
            .tracked6
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating the IPv6 tracked map's descriptor")?;
        Ok(TrackedMap::from_fd(fd))
    }

    /// A handle on the tracked-connections map for one worker (reply_mode
    /// "tracked"); in stateless mode the map exists with one unused entry.
    pub fn tracked_map(&self) -> Result<TrackedMap> {
        let fd = self
            .skel
            .maps
            .tracked
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating the tracked map's descriptor")?;
        Ok(TrackedMap::from_fd(fd))
    }

    /// The tracked-connections map itself: what a takeover hands to the new
    /// process, which copies it before it switches.
    pub fn tracked_fd(&self) -> BorrowedFd<'_> {
        self.skel.maps.tracked.as_fd()
    }

    /// The IPv6 tracked-connections map itself, handed as [`tracked_fd`](Self::tracked_fd)'s.
    pub fn tracked6_fd(&self) -> BorrowedFd<'_> {
        self.skel.maps.tracked6.as_fd()
    }

    /// Every key of another process's IPv6 tracked-connections map (`from`:
    /// a takeover's running process, of this version: an older one hands no
    /// such map).
    pub fn handed_tracked6_keys(&self, from: BorrowedFd<'_>) -> Result<Vec<ReplyKey6>> {
        let most = 2 * self.skel.maps.tracked6.max_entries() as usize;
        read_map_keys(from, most).context("reading the running process's IPv6 tracked map")
    }

    /// Every key of another process's tracked-connections map (`from`: a
    /// takeover's running process), in the layout its key size says it has:
    /// the running process may be older (README, "Takeover").
    pub fn handed_tracked_keys(&self, from: BorrowedFd<'_>) -> Result<HandedKeys> {
        let most = 2 * self.skel.maps.tracked.max_entries() as usize;
        let key_size = map_key_size(from).context("reading the running process's tracked map")?;
        match key_size {
            REPLY_KEY_SIZE => Ok(HandedKeys::Current(read_map_keys(from, most)?)),
            REPLY_KEY_V0_SIZE => Ok(HandedKeys::WithoutProtocol(read_map_keys(from, most)?)),
            other => bail!(
                "the running process's tracked map has keys of {other} bytes, a layout this \
                 version does not know (its own: {REPLY_KEY_SIZE}, the previous one: \
                 {REPLY_KEY_V0_SIZE}); restart instead"
            ),
        }
    }

    /// The source address of the "fragmentation needed" the program answers a
    /// daemon with when its reply is larger than the front path's MTU: one of
    /// this host's addresses on the back. Until it is set, such replies are
    /// dropped (counted as `too_big`).
    pub fn set_icmp_source(&self, addr: Ipv4Addr) -> Result<()> {
        let value = u32::from_ne_bytes(addr.octets());
        self.skel
            .maps
            .icmp_source
            .update(&0u32.to_ne_bytes(), &value.to_ne_bytes(), MapFlags::ANY)
            .with_context(|| format!("setting {addr} as the source of ICMP errors"))
    }

    /// The source address of the "packet too big" the program answers a
    /// daemon with when its IPv6 reply is larger than the front path's MTU:
    /// one of this host's global addresses on the back. Until it is set (the
    /// unspecified address unsets it), such replies are dropped (`too_big`).
    pub fn set_icmp_source6(&self, addr: Ipv6Addr) -> Result<()> {
        self.skel
            .maps
            .icmp_source6
            .update(&0u32.to_ne_bytes(), &addr.octets(), MapFlags::ANY)
            .with_context(|| format!("setting {addr} as the source of ICMPv6 errors"))
    }

    pub fn register_socket(&self, side: Side, queue: u32, fd: RawFd) -> Result<()> {
        if queue >= MAX_QUEUES {
            bail!("queue {queue} beyond the program's {MAX_QUEUES} slots");
        }
        let slot = match side {
            Side::Front => queue,
            Side::Back => MAX_QUEUES + queue,
        };
        self.skel
            .maps
            .xsks
            .update(
                &slot.to_ne_bytes(),
                &(fd as u32).to_ne_bytes(),
                MapFlags::ANY,
            )
            .with_context(|| {
                format!("registering the {side:?} socket of queue {queue} in the XSKMAP")
            })
    }

    /// Attaches the program to `iface` through a bpf_link and reports the mode the
    /// kernel chose.
    pub fn attach(&mut self, iface: &Interface, mode: XdpMode) -> Result<AttachedMode> {
        const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
        const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
        let flags = match mode {
            XdpMode::Auto => 0,
            XdpMode::Native => XDP_FLAGS_DRV_MODE,
            XdpMode::Skb => XDP_FLAGS_SKB_MODE,
        };
        let prog_fd = self.skel.progs.dispatchd_steer.as_fd().as_raw_fd();
        // SAFETY: all-zero is a valid bpf_link_create_opts (libbpf's own
        // LIBBPF_OPTS does the same); only sz and flags are set.
        let mut opts: libbpf_sys::bpf_link_create_opts = unsafe { std::mem::zeroed() };
        opts.sz = size_of::<libbpf_sys::bpf_link_create_opts>() as _;
        opts.flags = flags;
        // SAFETY: prog_fd is the loaded program's open fd; opts is initialised and
        // lives across the call.
        let fd = unsafe {
            libbpf_sys::bpf_link_create(prog_fd, iface.index as i32, libbpf_sys::BPF_XDP, &opts)
        };
        if fd < 0 {
            let err = std::io::Error::from_raw_os_error(-fd);
            let hint = match -fd {
                libc::EBUSY | libc::EEXIST => " (another XDP program is attached)",
                libc::EOPNOTSUPP | libc::EINVAL if mode == XdpMode::Native => {
                    " (the driver has no native XDP; try --xdp-mode skb)"
                }
                libc::EPERM => " (needs root or CAP_NET_ADMIN + CAP_BPF)",
                _ => "",
            };
            bail!(
                "attaching XDP to {} in {mode:?} mode: {err}{hint}",
                iface.name
            );
        }
        // SAFETY: bpf_link_create returned a new fd that nothing else owns.
        self.links.push(unsafe { OwnedFd::from_raw_fd(fd) });
        query_mode(iface)
    }

    /// The links attaching the program, front first: what a takeover hands to
    /// the new process (which gets its own descriptors for them).
    pub fn links(&self) -> Vec<BorrowedFd<'_>> {
        self.links.iter().map(|l| l.as_fd()).collect()
    }

    /// Takes over the links of another process (front first) and points each
    /// at this program (`bpf_link_update`, atomic per interface): from then
    /// on every frame on those interfaces runs this program, and the links live
    /// as long as any process holds them. The first failure is returned with
    /// the links that were re-pointed kept, so the caller can tell.
    pub fn adopt_links(&mut self, links: Vec<OwnedFd>) -> Result<()> {
        for link in links {
            self.links.push(link);
            let link = self.links.last().map(|l| l.as_raw_fd()).unwrap_or(-1);
            self.point(link)?;
        }
        Ok(())
    }

    /// Points every link this process holds at its own program again (after
    /// a takeover that did not complete).
    pub fn reclaim_links(&self) -> Result<()> {
        self.links
            .iter()
            .try_for_each(|l| self.point(l.as_raw_fd()))
    }

    fn point(&self, link: RawFd) -> Result<()> {
        let prog = self.skel.progs.dispatchd_steer.as_fd().as_raw_fd();
        // SAFETY: link and prog are open descriptors this process holds; a
        // null opts asks for an unconditional update.
        let rc = unsafe { libbpf_sys::bpf_link_update(link, prog, std::ptr::null()) };
        if rc < 0 {
            bail!(
                "re-pointing an XDP link at the new program: {}",
                io::Error::from_raw_os_error(-rc)
            );
        }
        Ok(())
    }

    /// Detaches from every interface (closing the links). Also happens on drop.
    pub fn detach(&mut self) {
        self.links.clear();
    }

    /// The program's verdict counters, summed over CPUs, in `COUNTER_NAMES` order.
    pub fn counters(&self) -> Result<[u64; COUNTER_NAMES.len()]> {
        let mut out = [0u64; COUNTER_NAMES.len()];
        for (i, slot) in out.iter_mut().enumerate() {
            let per_cpu = self
                .skel
                .maps
                .counters
                .lookup_percpu(&(i as u32).to_ne_bytes(), MapFlags::ANY)?
                .unwrap_or_default();
            *slot = per_cpu
                .iter()
                .filter_map(|v| {
                    v.get(..8)
                        .map(|b| u64::from_ne_bytes(b.try_into().unwrap_or_default()))
                })
                .sum();
        }
        Ok(out)
    }

    /// Runs the loaded program once on `frame` through `BPF_PROG_TEST_RUN`, as if it
    /// had arrived on interface `ingress_ifindex`, rx queue `rx_queue`, and returns
    /// the verdict (`XDP_PASS`, `XDP_DROP`, `XDP_REDIRECT`, ...) and the frame as the
    /// program left it. Its maps and counters are the live ones. For tests: nothing
    /// needs to be attached and a redirect is only decided, never carried out. The
    /// kernel looks the interface up in the calling thread's network namespace and
    /// refuses (EINVAL) a frame shorter than an Ethernet header and a queue the
    /// interface does not have.
    pub fn test_run(
        &self,
        frame: &[u8],
        ingress_ifindex: u32,
        rx_queue: u32,
    ) -> Result<(u32, Vec<u8>)> {
        // struct xdp_md, all __u32: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex. The kernel wants data_end to be the
        // frame's length and no metadata.
        const _: () = assert!(size_of::<libbpf_sys::xdp_md>() == 6 * 4);
        let len = u32::try_from(frame.len()).context("frame length")?;
        let mut ctx: Vec<u8> = [0, len, 0, ingress_ifindex, rx_queue, 0]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        // One page: the most a single-buffer XDP test run takes in.
        let mut out = vec![0u8; 4096];
        let input = libbpf_rs::ProgramInput {
            data_in: Some(frame),
            data_out: Some(&mut out),
            context_in: Some(&mut ctx),
            ..Default::default()
        };
        let output = self
            .skel
            .progs
            .dispatchd_steer
            .test_run(input)
            .with_context(|| {
                format!("BPF_PROG_TEST_RUN on ifindex {ingress_ifindex} queue {rx_queue}")
            })?;
        let data = output.data.map(|d| d.to_vec()).unwrap_or_default();
        Ok((output.return_value, data))
    }

    /// The kernel's average time for one run of the program on `frame`, over
    /// `repeat` runs of [`test_run`](Self::test_run) in one call: what the
    /// program costs per frame of that class (FIB and map lookups included).
    pub fn time_run(
        &self,
        frame: &[u8],
        ingress_ifindex: u32,
        rx_queue: u32,
        repeat: u32,
    ) -> Result<std::time::Duration> {
        let len = u32::try_from(frame.len()).context("frame length")?;
        let mut ctx: Vec<u8> = [0, len, 0, ingress_ifindex, rx_queue, 0]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        let input = libbpf_rs::ProgramInput {
            data_in: Some(frame),
            context_in: Some(&mut ctx),
            repeat,
            ..Default::default()
        };
        let output = self
            .skel
            .progs
            .dispatchd_steer
            .test_run(input)
            .context("timed BPF_PROG_TEST_RUN")?;
        Ok(output.duration)
    }
}

/// `struct reply_key` of `bpf/steer.h`: a connection as its daemon's replies
/// show it, the key of the tracked map.
pub type ReplyKey = types::reply_key;

// The skeleton's types are the header's structs; the header asserts the
// same sizes, so a field added on one side only fails a build.
const _: () = assert!(size_of::<ReplyKey>() == REPLY_KEY_SIZE as usize);
const _: () = assert!(size_of::<ReplyKey6>() == REPLY_KEY6_SIZE as usize);

/// The tracked map's key for the connection between `client` and `daemon`
/// over `protocol` (its IP protocol number, as the flow key holds it).
pub fn reply_key(client: SocketAddrV4, daemon: SocketAddrV4, protocol: u8) -> ReplyKey {
    // Network byte order in memory, as the program reads the packet.
    ReplyKey {
        client_addr: u32::from_ne_bytes(client.ip().octets()),
        daemon_addr: u32::from_ne_bytes(daemon.ip().octets()),
        client_port: client.port().to_be(),
        daemon_port: daemon.port().to_be(),
        protocol,
        pad: [0; 3],
    }
}

/// `struct reply_key` as it was before it carried the protocol
/// (`REPLY_KEY_V0_SIZE` bytes: client address, daemon address, client port,
/// daemon port, all in network byte order): what an older running process's
/// tracked map holds at a takeover.
pub type ReplyKeyV0 = [u8; REPLY_KEY_V0_SIZE as usize];

/// The keys a takeover finds in the running process's tracked map.
#[derive(Debug)]
pub enum HandedKeys {
    /// Of this version's layout: copied as they are.
    Current(Vec<ReplyKey>),
    /// Of the layout before the protocol was in the key.
    WithoutProtocol(Vec<ReplyKeyV0>),
}

/// The parts of an old key: (client, daemon).
pub fn reply_key_v0_parts(key: &ReplyKeyV0) -> (SocketAddrV4, SocketAddrV4) {
    let ip = |i: usize| Ipv4Addr::new(key[i], key[i + 1], key[i + 2], key[i + 3]);
    let port = |i: usize| u16::from_be_bytes([key[i], key[i + 1]]);
    (
        SocketAddrV4::new(ip(0), port(8)),
        SocketAddrV4::new(ip(4), port(10)),
    )
}

/// The parts of a key: (client, daemon, protocol).
pub fn reply_key_parts(key: &ReplyKey) -> (SocketAddrV4, SocketAddrV4, u8) {
    let client = SocketAddrV4::new(
        Ipv4Addr::from(key.client_addr.to_ne_bytes()),
        u16::from_be(key.client_port),
    );
    let daemon = SocketAddrV4::new(
        Ipv4Addr::from(key.daemon_addr.to_ne_bytes()),
        u16::from_be(key.daemon_port),
    );
    (client, daemon, key.protocol)
}

/// What the kernel reports of the BPF map `fd`.
fn map_info(fd: BorrowedFd<'_>) -> Result<libbpf_sys::bpf_map_info> {
    let mut info = libbpf_sys::bpf_map_info::default();
    let mut len = size_of::<libbpf_sys::bpf_map_info>() as u32;
    // SAFETY: info is a bpf_map_info of `len` bytes that lives across the
    // call; the kernel writes at most `len` bytes of it and `len` itself.
    let rc = unsafe { libbpf_sys::bpf_map_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    if rc < 0 {
        bail!("BPF map info: {}", io::Error::from_raw_os_error(-rc));
    }
    Ok(info)
}

/// The key size of the BPF map `fd` is, as the kernel reports it.
fn map_key_size(fd: BorrowedFd<'_>) -> Result<u32> {
    Ok(map_info(fd)?.key_size)
}

/// Keys read per BPF_MAP_LOOKUP_BATCH. A hash map's batch ends at a bucket's
/// end and fails with ENOSPC if one bucket holds more than this.
const LOOKUP_BATCH_MAX: usize = 8192;

/// Every key of hash map `fd` (at most `most`), if its keys are `K`'s size:
/// a takeover's copy of the running process's tracked maps, while that
/// process still writes them. Read in batches (BPF_MAP_LOOKUP_BATCH), a
/// bucket at a time: a million keys in a small fraction of a second, where
/// one BPF_MAP_GET_NEXT_KEY per key took about 2 s, and a key removed
/// meanwhile does not restart the walk from the map's first key as it does
/// that one's.
pub fn read_map_keys<K: Copy + Default>(fd: BorrowedFd<'_>, most: usize) -> Result<Vec<K>> {
    let info = map_info(fd)?;
    if info.key_size as usize != size_of::<K>() {
        bail!(
            "the map's keys are {} bytes, not the {} expected",
            info.key_size,
            size_of::<K>()
        );
    }
    let mut keys: Vec<K> = Vec::new();
    let mut batch = vec![K::default(); LOOKUP_BATCH_MAX];
    let mut values = vec![0u8; LOOKUP_BATCH_MAX * info.value_size as usize];
    // Where the next batch starts: a hash map's bucket index (a u32), which
    // the kernel writes after each batch and reads in the next.
    let mut position = 0u64;
    let mut first = true;
    while keys.len() < most {
        let mut count = LOOKUP_BATCH_MAX as u32;
        let from = if first {
            std::ptr::null_mut()
        } else {
            (&mut position as *mut u64).cast()
        };
        // SAFETY: `batch` and `values` have room for `count` keys and values
        // of the map's sizes (the key size checked above to be K's); the
        // position is null (from the start) or 8 bytes the kernel reads, and
        // it writes at most 8 bytes of position (a hash map's is 4); all live
        // across the call, and the kernel writes `count`, at most its input.
        let rc = unsafe {
            libbpf_sys::bpf_map_lookup_batch(
                fd.as_raw_fd(),
                from,
                (&mut position as *mut u64).cast(),
                batch.as_mut_ptr().cast(),
                values.as_mut_ptr().cast(),
                &mut count,
                &batch_opts(),
            )
        };
        first = false;
        keys.extend_from_slice(&batch[..(count as usize).min(LOOKUP_BATCH_MAX)]);
        if rc == -libc::ENOENT {
            break;
        }
        if rc < 0 {
            bail!(
                "reading the running process's tracked connections: {}",
                io::Error::from_raw_os_error(-rc)
            );
        }
    }
    keys.truncate(most);
    Ok(keys)
}

/// `struct reply_key6` of `bpf/steer.h`: the key of the tracked6 map.
pub type ReplyKey6 = types::reply_key6;

/// The tracked6 map's key for the connection between `client` and `daemon`
/// over `protocol`.
pub fn reply_key6(client: SocketAddrV6, daemon: SocketAddrV6, protocol: u8) -> ReplyKey6 {
    ReplyKey6 {
        client_addr: client.ip().octets(),
        daemon_addr: daemon.ip().octets(),
        client_port: client.port().to_be(),
        daemon_port: daemon.port().to_be(),
        protocol,
        pad: [0; 3],
    }
}

/// How far one batch operation went: the keys the kernel took, in order, and
/// why it stopped before the end, if it did (the key at `done` was refused).
#[derive(Debug)]
pub struct BatchOutcome {
    pub done: usize,
    pub error: Option<io::Error>,
}

/// One worker's handle on the tracked-connections map (reply_mode "tracked"):
/// what its flow table holds, as the program looks replies up. `K` is the
/// map's key: [`ReplyKey`] (tracked) or [`ReplyKey6`] (tracked6).
#[derive(Debug)]
pub struct TrackedMap<K = ReplyKey> {
    fd: OwnedFd,
    key: std::marker::PhantomData<K>,
}

impl<K> AsFd for TrackedMap<K> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Keys written per BPF_MAP_UPDATE_BATCH: the values are this many ones.
const UPDATE_BATCH_MAX: usize = 256;
static ONES: [u8; UPDATE_BATCH_MAX] = [1; UPDATE_BATCH_MAX];

/// The keys a tracked map can have: the skeleton's key structs (their padding
/// explicit and zeroed), whose size is the map's key size.
pub trait TrackedKey: Copy + private::Sealed {
    /// A client's or a daemon's ADDR:PORT in this family.
    type Addr: Copy + Ord + std::hash::Hash;
    /// The key's connection: (client, daemon, protocol).
    fn parts(&self) -> (Self::Addr, Self::Addr, u8);
}
impl TrackedKey for ReplyKey {
    type Addr = SocketAddrV4;
    fn parts(&self) -> (SocketAddrV4, SocketAddrV4, u8) {
        reply_key_parts(self)
    }
}
impl TrackedKey for ReplyKey6 {
    type Addr = SocketAddrV6;
    fn parts(&self) -> (SocketAddrV6, SocketAddrV6, u8) {
        let end =
            |addr: [u8; 16], port: u16| SocketAddrV6::new(addr.into(), u16::from_be(port), 0, 0);
        (
            end(self.client_addr, self.client_port),
            end(self.daemon_addr, self.daemon_port),
            self.protocol,
        )
    }
}
mod private {
    pub trait Sealed {}
    impl Sealed for super::ReplyKey {}
    impl Sealed for super::ReplyKey6 {}
}

impl<K: TrackedKey> TrackedMap<K> {
    fn from_fd(fd: OwnedFd) -> Self {
        Self {
            fd,
            key: std::marker::PhantomData,
        }
    }

    /// A map of the tracked map's layout on its own, with no program looking it
    /// up (for tests and benchmarks; dispatchd uses the program's own through
    /// [`Steering::tracked_map`]). Needs CAP_BPF.
    pub fn standalone(capacity: u32) -> Result<Self> {
        let opts = libbpf_sys::bpf_map_create_opts {
            sz: size_of::<libbpf_sys::bpf_map_create_opts>() as _,
            ..Default::default()
        };
        let map = libbpf_rs::MapHandle::create(
            libbpf_rs::MapType::Hash,
            Some("tracked"),
            size_of::<K>() as u32,
            1,
            capacity,
            &opts,
        )
        .context("creating a tracked-connections map (needs CAP_BPF)")?;
        let fd = map
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating the map's descriptor")?;
        Ok(Self::from_fd(fd))
    }

    /// Another handle on the same map (a duplicated descriptor).
    pub fn try_clone(&self) -> Result<Self> {
        let fd = self
            .fd
            .try_clone()
            .context("duplicating the tracked map's descriptor")?;
        Ok(Self::from_fd(fd))
    }

    /// Adds `keys` with one BPF_MAP_UPDATE_BATCH per 256 keys.
    pub fn insert(&self, keys: &[K]) -> BatchOutcome {
        let mut done = 0;
        for chunk in keys.chunks(UPDATE_BATCH_MAX) {
            let mut count = chunk.len() as u32;
            // SAFETY: keys and values hold `count` elements of the map's key
            // (`struct reply_key` or `reply_key6`, padding explicit and zeroed) and value (one byte) sizes; the
            // kernel only reads them during the call and writes `count`.
            let rc = unsafe {
                libbpf_sys::bpf_map_update_batch(
                    self.fd.as_raw_fd(),
                    chunk.as_ptr().cast(),
                    ONES.as_ptr().cast(),
                    &mut count,
                    &batch_opts(),
                )
            };
            done += count as usize;
            if rc < 0 {
                return BatchOutcome {
                    done,
                    error: Some(io::Error::from_raw_os_error(-rc)),
                };
            }
        }
        BatchOutcome { done, error: None }
    }

    /// Removes `keys` with one BPF_MAP_DELETE_BATCH.
    pub fn remove(&self, keys: &[K]) -> BatchOutcome {
        let mut count = keys.len() as u32;
        // SAFETY: keys holds `count` elements of the map's key size, read by the
        // kernel during the call only; it writes `count`.
        let rc = unsafe {
            libbpf_sys::bpf_map_delete_batch(
                self.fd.as_raw_fd(),
                keys.as_ptr().cast(),
                &mut count,
                &batch_opts(),
            )
        };
        BatchOutcome {
            done: count as usize,
            error: (rc < 0).then(|| io::Error::from_raw_os_error(-rc)),
        }
    }

    /// Writes `keys` (a takeover's, in the switch window or before): an
    /// error if the map took not all of them.
    pub fn insert_all(&self, keys: &[K]) -> Result<()> {
        let outcome = self.insert(keys);
        if let Some(e) = outcome.error {
            bail!(
                "writing tracked connections: {e} after {} of {}",
                outcome.done,
                keys.len()
            );
        }
        Ok(())
    }

    /// Removes `keys`; a key the map lacks is skipped. Returns how many it
    /// removed.
    pub fn remove_each(&self, keys: &[K]) -> Result<usize> {
        match self.remove_present(keys) {
            (removed, _, None) => Ok(removed),
            (_, _, Some(e)) => bail!("removing tracked connections: {e}"),
        }
    }

    /// Removes `keys`, skipping each the map lacks (a removal stops at one).
    /// Returns how many it removed and how many it skipped, and the error
    /// that stopped it before the end, if one did.
    pub fn remove_present(&self, keys: &[K]) -> (usize, usize, Option<io::Error>) {
        let (mut rest, mut removed, mut skipped) = (keys, 0, 0);
        while !rest.is_empty() {
            let BatchOutcome { done, error } = self.remove(rest);
            removed += done;
            match error {
                None => break,
                Some(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    skipped += 1;
                    rest = &rest[(done + 1).min(rest.len())..];
                }
                Some(e) => return (removed, skipped, Some(e)),
            }
        }
        (removed, skipped, None)
    }

    /// Whether `key` is in the map (for tests and diagnostics: a syscall).
    pub fn contains(&self, key: &K) -> bool {
        let mut value = 0u8;
        // SAFETY: key points at one key of the map's key size and value at one
        // byte, the map's value size; both live across the call.
        let rc = unsafe {
            libbpf_sys::bpf_map_lookup_elem(
                self.fd.as_raw_fd(),
                (key as *const K).cast(),
                (&mut value as *mut u8).cast(),
            )
        };
        rc == 0
    }
}

fn batch_opts() -> libbpf_sys::bpf_map_batch_opts {
    libbpf_sys::bpf_map_batch_opts {
        sz: size_of::<libbpf_sys::bpf_map_batch_opts>() as _,
        elem_flags: 0,
        flags: 0,
    }
}

/// What an interface says it can do with AF_XDP: `Some(zero-copy)`, or `None`
/// when the kernel does not report XDP features (no netdev netlink family).
pub type ZerocopySupport = Option<bool>;

/// Whether `iface` advertises AF_XDP zero-copy (NETDEV_XDP_ACT_XSK_ZEROCOPY in
/// the XDP features libbpf's bpf_xdp_query reads from the netdev netlink
/// family); `None` when the kernel reports no features at all (a kernel
/// without that family reports 0, while every device that runs XDP reports at
/// least NETDEV_XDP_ACT_BASIC).
pub fn zerocopy_support(iface: &Interface) -> Result<ZerocopySupport> {
    const NETDEV_XDP_ACT_XSK_ZEROCOPY: u64 = 1 << 3;
    // SAFETY: all-zero is a valid bpf_xdp_query_opts; sz tells libbpf its size,
    // which includes feature_flags, so libbpf fills it in.
    let mut opts: libbpf_sys::bpf_xdp_query_opts = unsafe { std::mem::zeroed() };
    opts.sz = size_of::<libbpf_sys::bpf_xdp_query_opts>() as _;
    // SAFETY: opts is initialised and outlives the call.
    let rc = unsafe { libbpf_sys::bpf_xdp_query(iface.index as i32, 0, &mut opts) };
    if rc < 0 {
        bail!(
            "querying the XDP features of {}: {}",
            iface.name,
            std::io::Error::from_raw_os_error(-rc)
        );
    }
    Ok((opts.feature_flags != 0).then_some(opts.feature_flags & NETDEV_XDP_ACT_XSK_ZEROCOPY != 0))
}

fn query_mode(iface: &Interface) -> Result<AttachedMode> {
    // SAFETY: all-zero is a valid bpf_xdp_query_opts; sz tells libbpf its size.
    let mut opts: libbpf_sys::bpf_xdp_query_opts = unsafe { std::mem::zeroed() };
    opts.sz = size_of::<libbpf_sys::bpf_xdp_query_opts>() as _;
    // SAFETY: opts is initialised and outlives the call.
    let rc = unsafe { libbpf_sys::bpf_xdp_query(iface.index as i32, 0, &mut opts) };
    if rc < 0 {
        bail!(
            "querying XDP on {}: {}",
            iface.name,
            std::io::Error::from_raw_os_error(-rc)
        );
    }
    Ok(match u32::from(opts.attach_mode) {
        libbpf_sys::XDP_ATTACHED_DRV => AttachedMode::Native,
        libbpf_sys::XDP_ATTACHED_SKB => AttachedMode::Generic,
        libbpf_sys::XDP_ATTACHED_HW => AttachedMode::Offload,
        m => AttachedMode::Unknown(m as u8),
    })
}
