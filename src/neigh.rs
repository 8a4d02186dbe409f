//! Daemons' next hops, from the kernel's own decisions.
//!
//! A daemon's frames leave through the back interface to the daemon itself or,
//! if the kernel routes it via a gateway, to that gateway. Where they go is what
//! the kernel answers to a route "get" for the daemon's address (`ip route get`:
//! its policy rules, every table, one path of a multipath route); the hop's MAC
//! is the kernel's neighbour entry for it on the back. Both come over rtnetlink
//! ([`Kernel`]): requests at start, then the kernel's change notifications,
//! which the management loop drains as they arrive ([`HopBook`] keeps what they
//! said; it is pure). When a hop's MAC is not known yet, a TCP connection
//! attempt to the daemon (at start) or the health probes (running) make the
//! kernel resolve it, and its notification brings the MAC.
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpStream},
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use ahash::AHashMap;
use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::{
    ids::BackendId,
    netlink::{
        self,
        socket::{interface_name, NlSocket},
        Message, Messages, NeighMsg, RouteMsg, NTF_PROXY, NUD_FAILED,
    },
};

/// A daemon's next-hop MAC, packed in the low 48 bits; 0 while unresolved. The
/// loop writes it from the kernel's tables, every worker reads it per packet
/// without a lock.
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

pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

pub fn fmt_mac(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// The MAC of one of this host's interfaces.
pub fn interface_mac(device: &str) -> Result<[u8; 6]> {
    let path = format!("/sys/class/net/{device}/address");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_mac(&text).with_context(|| format!("{path} holds no MAC address: {text:?}"))
}

/// Where the kernel sends a packet to a daemon (an IPv6 one with `A` =
/// `Ipv6Addr`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reach<A = Ipv4Addr> {
    /// Out of the back, to `hop`: the daemon itself on a connected network,
    /// else the gateway of the route (of the path the kernel chose; for IPv6
    /// often a router's link-local address, on the back).
    Back { hop: A },
    /// Out of another interface (`lo` for an address of this host).
    Elsewhere { interface: String },
    /// No route (none at all, or an unreachable, prohibit or blackhole one):
    /// the kernel's reason.
    NoRoute { reason: String },
    /// Out of the back, but to a next hop dispatchd cannot resolve (an IPv6
    /// gateway for an IPv4 route).
    Unsupported { what: String },
}

impl<A: Copy> Reach<A> {
    /// From the kernel's answer to a route "get" for `daemon` on a host whose
    /// back is `back` (its index and name); `name` names other interfaces.
    pub fn of_answer(
        route: &RouteMsg<A>,
        daemon: A,
        back: (u32, &str),
        name: impl Fn(u32) -> String,
    ) -> Reach<A> {
        let Some(oif) = route.oif else {
            return Reach::NoRoute {
                reason: format!(
                    "the kernel named no output interface (route type {})",
                    route.kind
                ),
            };
        };
        if oif != back.0 {
            return Reach::Elsewhere {
                interface: name(oif),
            };
        }
        if route.via_family.is_some() {
            return Reach::Unsupported {
                what: format!("a gateway of another address family out of {}", back.1),
            };
        }
        Reach::Back {
            hop: route.gateway.unwrap_or(daemon),
        }
    }

    pub fn is_back(&self) -> bool {
        matches!(self, Reach::Back { .. })
    }

    /// The same reach with its hop as an address of either family.
    pub fn into_ip(self) -> Reach<IpAddr>
    where
        A: Into<IpAddr>,
    {
        match self {
            Reach::Back { hop } => Reach::Back { hop: hop.into() },
            Reach::Elsewhere { interface } => Reach::Elsewhere { interface },
            Reach::NoRoute { reason } => Reach::NoRoute { reason },
            Reach::Unsupported { what } => Reach::Unsupported { what },
        }
    }

    /// Why this is no way to the daemon (`ctl backends`); `None` if it
    /// leaves by the back.
    pub fn why_not(&self, back: &str) -> Option<String> {
        match self {
            Reach::Back { .. } => None,
            Reach::Elsewhere { interface } => Some(format!(
                "routed via {interface}, not the back interface {back}"
            )),
            Reach::NoRoute { reason } => Some(format!("no route ({reason})")),
            Reach::Unsupported { what } => {
                Some(format!("routed via {what}, which dispatchd cannot send to"))
            }
        }
    }

    /// What is wrong with this reach for `daemon`, as one line; `None` if it
    /// leaves by the back.
    pub fn problem(&self, daemon: impl fmt::Display, back: &str) -> Option<String> {
        match self {
            Reach::Back { .. } => None,
            Reach::Elsewhere { interface } => Some(format!(
                "daemon {daemon} is routed via {interface}, not the back interface {back}"
            )),
            Reach::NoRoute { reason } => Some(format!("no route to daemon {daemon} ({reason})")),
            Reach::Unsupported { what } => Some(format!(
                "daemon {daemon} is routed via {what}, which dispatchd cannot send to"
            )),
        }
    }
}

/// One daemon's next hop as the loop knows it (an IPv6 daemon's hop is an
/// IPv6 address, its MAC the kernel's NDP entry's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonHop {
    pub addr: IpAddr,
    pub reach: Reach<IpAddr>,
    /// The hop's MAC as the kernel last reported it, while routed via the back.
    pub mac: Option<[u8; 6]>,
}

impl DaemonHop {
    /// The MAC the workers send the daemon's frames to: only while the kernel
    /// routes it out of the back.
    pub fn usable(&self) -> Option<[u8; 6]> {
        self.mac.filter(|_| self.reach.is_back())
    }

    pub fn hop(&self) -> Option<IpAddr> {
        match self.reach {
            Reach::Back { hop } => Some(hop),
            _ => None,
        }
    }
}

/// What the kernel has told the loop about the daemons' next hops: the
/// complete neighbour entries on the back, and where it routes each daemon.
/// Pure: the loop feeds it the kernel's messages and answers, and copies each
/// daemon's [`DaemonHop::usable`] MAC into its [`NextHop`] cell.
///
/// A daemon keeps its hop's last MAC when the kernel drops or fails the entry
/// (unused entries are collected, a flush removes them): that is not news
/// that the MAC changed, and the loop soon has the kernel resolve
/// it again, whose notification brings the answer. A new MAC replaces it at
/// once; a route away from the back clears it.
#[derive(Debug)]
pub struct HopBook {
    back: u32,
    /// MACs of the kernel's complete (NUD_VALID) entries on the back, IPv4
    /// (ARP) and IPv6 (NDP).
    macs: AHashMap<IpAddr, [u8; 6]>,
    /// Indexed by [`BackendId`].
    daemons: Vec<DaemonHop>,
}

/// A daemon's hop as a route answer changed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rerouted {
    pub before: Reach<IpAddr>,
    pub after: Reach<IpAddr>,
}

impl HopBook {
    /// An empty book for a back interface of index `back`.
    pub fn new(back: u32) -> Self {
        Self {
            back,
            macs: AHashMap::new(),
            daemons: Vec::new(),
        }
    }

    pub fn get(&self, id: BackendId) -> Option<&DaemonHop> {
        self.daemons.get(id.index())
    }

    pub fn daemons(&self) -> &[DaemonHop] {
        &self.daemons
    }

    /// The MAC a daemon at `addr` routed to `hop` starts with when a
    /// configuration is (re)applied: the kernel's entry for the hop, else what
    /// the same daemon had with the same hop.
    pub fn mac_for(&self, addr: impl Into<IpAddr>, hop: impl Into<IpAddr>) -> Option<[u8; 6]> {
        let (addr, hop) = (addr.into(), hop.into());
        self.macs.get(&hop).copied().or_else(|| {
            self.daemons
                .iter()
                .find(|d| d.addr == addr && d.hop() == Some(hop))
                .and_then(|d| d.mac)
        })
    }

    /// Whether some daemon is an IPv6 one (its hop in the NDP table).
    pub fn has_ipv6(&self) -> bool {
        self.daemons.iter().any(|d| d.addr.is_ipv6())
    }

    /// The daemons of a new configuration, in [`BackendId`] order.
    pub fn install(&mut self, daemons: Vec<DaemonHop>) {
        self.daemons = daemons;
    }

    /// Whether the complete entry for `ip` is known, and its MAC.
    pub fn neighbour_mac(&self, ip: impl Into<IpAddr>) -> Option<[u8; 6]> {
        self.macs.get(&ip.into()).copied()
    }

    /// Takes a full dump of the kernel's entries on the back (IPv4's and
    /// IPv6's) as the truth: every daemon whose hop has an entry takes its
    /// MAC (`changed` gets those whose MAC changed); the others keep theirs.
    pub fn load_neighbours<'a>(
        &mut self,
        entries: impl IntoIterator<Item = &'a NeighMsg>,
        entries6: impl IntoIterator<Item = &'a NeighMsg<Ipv6Addr>>,
        changed: &mut Vec<BackendId>,
    ) {
        self.macs.clear();
        for n in entries {
            if let (Some(ip), Some(mac)) = (n.dst, self.entry_mac(n)) {
                self.macs.insert(ip.into(), mac);
            }
        }
        for n in entries6 {
            if let (Some(ip), Some(mac)) = (n.dst, self.entry_mac(n)) {
                self.macs.insert(ip.into(), mac);
            }
        }
        for (i, d) in self.daemons.iter_mut().enumerate() {
            let Some(hop) = d.hop() else { continue };
            if let Some(&mac) = self.macs.get(&hop) {
                if d.mac != Some(mac) {
                    d.mac = Some(mac);
                    changed.push(BackendId(i as u16));
                }
            }
        }
    }

    /// The MAC a message gives an entry on the back, if it is one dispatchd
    /// follows and it is complete.
    fn entry_mac<A>(&self, n: &NeighMsg<A>) -> Option<[u8; 6]> {
        if n.ifindex != self.back || n.flags & NTF_PROXY != 0 {
            return None;
        }
        n.usable_mac()
    }

    /// One neighbour notification. Daemons whose hop it is and whose MAC it
    /// changes go into `changed`. Returns true when it says a daemon's hop
    /// failed (nobody answered the kernel's ARP): with
    /// `fib_multipath_use_neigh` the kernel then routes around it, so the
    /// routes are worth asking again.
    pub fn neighbour<A: Copy + Into<IpAddr>>(
        &mut self,
        n: &NeighMsg<A>,
        changed: &mut Vec<BackendId>,
    ) -> bool {
        if n.ifindex != self.back || n.flags & NTF_PROXY != 0 {
            return false;
        }
        let Some(ip) = n.dst.map(Into::into) else {
            return false;
        };
        match n.usable_mac() {
            Some(mac) => {
                self.macs.insert(ip, mac);
                for (i, d) in self.daemons.iter_mut().enumerate() {
                    if d.hop() == Some(ip) && d.mac != Some(mac) {
                        d.mac = Some(mac);
                        changed.push(BackendId(i as u16));
                    }
                }
                false
            }
            None => {
                self.macs.remove(&ip);
                !n.deleted
                    && n.state & NUD_FAILED != 0
                    && self.daemons.iter().any(|d| d.hop() == Some(ip))
            }
        }
    }

    /// Where the kernel now routes daemon `id`. A new hop takes the kernel's
    /// entry for it (or none yet: the loop has it resolved); a
    /// route away from the back leaves the daemon without a MAC. Returns the
    /// change, if the route changed; `changed` gets `id` if its usable MAC did.
    pub fn reroute(
        &mut self,
        id: BackendId,
        reach: Reach<IpAddr>,
        changed: &mut Vec<BackendId>,
    ) -> Option<Rerouted> {
        let macs = &self.macs;
        let d = self.daemons.get_mut(id.index())?;
        let usable_before = d.usable();
        let mac = match &reach {
            Reach::Back { hop } => macs
                .get(hop)
                .copied()
                .or(d.mac.filter(|_| d.hop() == Some(*hop))),
            _ => None,
        };
        d.mac = mac;
        let before = std::mem::replace(&mut d.reach, reach);
        if d.usable() != usable_before {
            changed.push(id);
        }
        (before != d.reach).then(|| Rerouted {
            before,
            after: d.reach.clone(),
        })
    }

    /// Whether a route to `dst`/`dst_len` (no `dst`: a default route) covers
    /// some daemon's address, so that its coming or going may change where
    /// the kernel sends that daemon's packets.
    pub fn covers_a_daemon(&self, dst: Option<Ipv4Addr>, dst_len: u8) -> bool {
        if dst_len > 32 {
            return false;
        }
        let dst = u32::from(dst.unwrap_or(Ipv4Addr::UNSPECIFIED));
        let mask = u32::MAX.checked_shl(32 - u32::from(dst_len)).unwrap_or(0);
        self.daemons.iter().any(|d| match d.addr {
            IpAddr::V4(a) => u32::from(a) & mask == dst & mask,
            IpAddr::V6(_) => false,
        })
    }

    /// [`covers_a_daemon`](Self::covers_a_daemon) for an IPv6 route.
    pub fn covers_a_daemon6(&self, dst: Option<Ipv6Addr>, dst_len: u8) -> bool {
        if dst_len > 128 {
            return false;
        }
        let dst = u128::from(dst.unwrap_or(Ipv6Addr::UNSPECIFIED));
        let mask = u128::MAX.checked_shl(128 - u32::from(dst_len)).unwrap_or(0);
        self.daemons.iter().any(|d| match d.addr {
            IpAddr::V6(a) => u128::from(a) & mask == dst & mask,
            IpAddr::V4(_) => false,
        })
    }
}

/// What the loop did with rtnetlink, since start (`ctl stats`, metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NetlinkStats {
    /// Notifications read and handled (neighbour, route, link, address and
    /// rule changes; the ones about nothing dispatchd follows included).
    pub messages: u64,
    /// Route "get" requests for daemons made while running (after a change).
    pub route_requests: u64,
    /// Times notifications were lost (receive buffer full, ENOBUFS, or a
    /// datagram cut short) and every neighbour and route was read again.
    pub resyncs: u64,
    /// Messages that could not be read (bad lengths; their datagram's rest is
    /// skipped) and messages from a sender other than the kernel.
    pub malformed: u64,
    /// Failed reads and requests.
    pub errors: u64,
}

impl NetlinkStats {
    pub fn fields(&self) -> [(&'static str, u64); 5] {
        [
            ("messages", self.messages),
            ("route_requests", self.route_requests),
            ("resyncs", self.resyncs),
            ("malformed", self.malformed),
            ("errors", self.errors),
        ]
    }
}

/// A notification socket's receive buffer: a burst of changes (a routing
/// daemon loading a table) must overflow it before anything is lost.
const NOTIFY_BUFFER: usize = 4 << 20;
/// Requests are answered at once; a longer wait is a fault.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);
/// A dump's datagrams are at most 32 KiB (the kernel sizes them after the
/// reader's buffer, up to that).
pub const DATAGRAM_MAX: usize = 32 << 10;
/// The groups the loop follows: neighbours, routes and policy rules of both
/// families, and the links and addresses whose changes move routes without a
/// route message.
const GROUPS: u32 = netlink::RTMGRP_NEIGH
    | netlink::RTMGRP_IPV4_ROUTE
    | netlink::RTMGRP_IPV6_ROUTE
    | netlink::RTMGRP_IPV4_RULE
    | netlink::RTMGRP_IPV6_RULE
    | netlink::RTMGRP_IPV4_IFADDR
    | netlink::RTMGRP_LINK;

/// The kernel's routes and neighbours over rtnetlink: requests and their
/// answers on one socket, change notifications on another (non-blocking,
/// drained by the loop), so that an answer never waits behind notifications.
pub struct Kernel {
    back: String,
    back_index: u32,
    requests: NlSocket,
    notifications: NlSocket,
    seq: std::cell::Cell<u32>,
    probe_timeout: Duration,
}

impl Kernel {
    /// Subscribes first, so that no change after the first requests is missed.
    pub fn open(back: &str, back_index: u32, probe_timeout: Duration) -> Result<Self> {
        let notifications =
            NlSocket::open(GROUPS, true).context("opening an rtnetlink notification socket")?;
        notifications
            .set_receive_buffer(NOTIFY_BUFFER)
            .context("sizing the rtnetlink notification socket")?;
        let requests = NlSocket::open(0, false).context("opening an rtnetlink socket")?;
        requests
            .set_receive_timeout(ANSWER_TIMEOUT)
            .context("setting the rtnetlink socket's timeout")?;
        Ok(Self {
            back: back.to_owned(),
            back_index,
            requests,
            notifications,
            seq: std::cell::Cell::new(1),
            probe_timeout,
        })
    }

    pub fn back(&self) -> &str {
        &self.back
    }

    pub fn back_index(&self) -> u32 {
        self.back_index
    }

    /// The socket the notifications arrive on (non-blocking).
    pub fn notifications(&self) -> &NlSocket {
        &self.notifications
    }

    fn next_seq(&self) -> u32 {
        let seq = self.seq.get().wrapping_add(1).max(1);
        self.seq.set(seq);
        seq
    }

    /// Sends `request` (built for sequence number `seq`) and hands `each` the
    /// answer's messages until it returns false or the answer ends (a dump's
    /// NLMSG_DONE, an error). Messages of other sequence numbers (the late
    /// answer to a request that timed out) are skipped.
    fn ask(&self, seq: u32, request: &[u8], mut each: impl FnMut(Message) -> bool) -> Result<()> {
        self.requests
            .send(request)
            .context("sending an rtnetlink request")?;
        let mut buf = vec![0u8; DATAGRAM_MAX];
        loop {
            let got = self
                .requests
                .recv(&mut buf)
                .context("reading the kernel's rtnetlink answer")?;
            if got.truncated {
                bail!("an rtnetlink answer did not fit {} bytes", buf.len());
            }
            if !got.from_kernel {
                continue;
            }
            for item in Messages::new(&buf[..got.len]) {
                let (header, message) =
                    item.map_err(|e| anyhow::anyhow!("a malformed rtnetlink answer: {e}"))?;
                if header.seq != seq {
                    continue;
                }
                let end = matches!(message, Message::Done | Message::Error(_));
                if !each(message) || end {
                    return Ok(());
                }
            }
        }
    }

    /// Where the kernel routes a packet this host sends to `daemon` (`ip
    /// route get`). Errors are the socket's; the kernel's refusals are a
    /// [`Reach::NoRoute`].
    pub fn route(&self, daemon: Ipv4Addr) -> Result<Reach> {
        let seq = self.next_seq();
        self.ask_route(seq, &netlink::route_get(seq, daemon), daemon, |m| match m {
            Message::Route(r) => Ok(r),
            other => Err(other),
        })
    }

    /// Asks the kernel for its route to `daemon` (`request`, numbered `seq`),
    /// whose answer `route` picks out of the messages of the family.
    fn ask_route<A: Copy + std::fmt::Display>(
        &self,
        seq: u32,
        request: &[u8],
        daemon: A,
        route: impl Fn(Message) -> std::result::Result<RouteMsg<A>, Message>,
    ) -> Result<Reach<A>> {
        let mut reach = None;
        self.ask(seq, request, |m| {
            reach = match route(m) {
                Ok(r) => Some(Reach::of_answer(
                    &r,
                    daemon,
                    (self.back_index, &self.back),
                    |oif| interface_name(oif).unwrap_or_else(|| format!("interface #{oif}")),
                )),
                Err(Message::Error(0)) => None,
                Err(Message::Error(errno)) => Some(Reach::NoRoute {
                    reason: format!("the kernel: {}", errno_text(errno)),
                }),
                Err(_) => return true,
            };
            false
        })?;
        reach.with_context(|| format!("the kernel did not answer the route request for {daemon}"))
    }

    /// The next hop of `daemon`, or why it is not routed out of the back: the
    /// error start-up and reload give.
    pub fn route_via_back(&self, daemon: Ipv4Addr) -> Result<Ipv4Addr> {
        match self.route(daemon)? {
            Reach::Back { hop } => Ok(hop),
            other => bail!("{}", other.problem(daemon, &self.back).unwrap_or_default()),
        }
    }

    /// The kernel's entry for `hop` on the back, if it has one (`ip neigh get`).
    pub fn neighbour(&self, hop: Ipv4Addr) -> Result<Option<NeighMsg>> {
        let seq = self.next_seq();
        let mut entry = None;
        self.ask(seq, &netlink::neigh_get(seq, self.back_index, hop), |m| {
            if let Message::Neighbour(n) = m {
                entry = Some(n);
            }
            false
        })?;
        Ok(entry)
    }

    /// Every IPv4 entry the kernel has on the back.
    pub fn neighbours(&self) -> Result<Vec<NeighMsg>> {
        let seq = self.next_seq();
        let mut entries = Vec::new();
        let mut failed = None;
        self.ask(seq, &netlink::neigh_dump(seq, self.back_index), |m| {
            match m {
                Message::Neighbour(n) => entries.push(n),
                Message::Error(e) if e != 0 => failed = Some(e),
                _ => {}
            }
            true
        })?;
        if let Some(errno) = failed {
            bail!(
                "dumping the neighbours of {}: {}",
                self.back,
                errno_text(errno)
            );
        }
        Ok(entries)
    }

    /// At start: the next hop of `daemon` (or the error that refuses it), and
    /// its MAC. If the kernel has no complete entry for the hop, a TCP
    /// connection attempt to the daemon makes it resolve one first (any
    /// answer, even a refusal, leaves a complete entry behind).
    pub fn resolve(&self, daemon: SocketAddrV4) -> Result<(Ipv4Addr, Option<[u8; 6]>)> {
        let hop = self.route_via_back(*daemon.ip())?;
        let mac = |k: &Self| -> Result<Option<[u8; 6]>> {
            Ok(k.neighbour(hop)?.and_then(|n| n.usable_mac()))
        };
        if let Some(known) = mac(self)? {
            return Ok((hop, Some(known)));
        }
        let _ = TcpStream::connect_timeout(&SocketAddr::V4(daemon), self.probe_timeout);
        Ok((hop, mac(self)?))
    }
}

/// The IPv6 side of [`Kernel`]: the same requests with AF_INET6, for daemons
/// with IPv6 addresses.
impl Kernel {
    /// [`route`](Self::route) or [`route6`](Self::route6), by `daemon`'s family.
    pub fn route_ip(&self, daemon: IpAddr) -> Result<Reach<IpAddr>> {
        Ok(match daemon {
            IpAddr::V4(a) => self.route(a)?.into_ip(),
            IpAddr::V6(a) => self.route6(a)?.into_ip(),
        })
    }

    /// Where the kernel routes a packet this host sends to `daemon` (`ip -6
    /// route get`).
    pub fn route6(&self, daemon: Ipv6Addr) -> Result<Reach<Ipv6Addr>> {
        let seq = self.next_seq();
        self.ask_route(
            seq,
            &netlink::route_get6(seq, daemon),
            daemon,
            |m| match m {
                Message::Route6(r) => Ok(r),
                other => Err(other),
            },
        )
    }

    /// The next hop of an IPv6 `daemon` (itself, a gateway, or a router's
    /// link-local address on the back), or why it is not routed out of the back.
    pub fn route_via_back6(&self, daemon: Ipv6Addr) -> Result<Ipv6Addr> {
        match self.route6(daemon)? {
            Reach::Back { hop } => Ok(hop),
            other => bail!("{}", other.problem(daemon, &self.back).unwrap_or_default()),
        }
    }

    /// The kernel's NDP entry for `hop` on the back, if it has one (`ip -6
    /// neigh get`).
    pub fn neighbour6(&self, hop: Ipv6Addr) -> Result<Option<NeighMsg<Ipv6Addr>>> {
        self.neighbour6_on(self.back_index, hop)
    }

    /// The kernel's NDP entry for `hop` on interface `ifindex` (a client's hop
    /// is on the front).
    pub fn neighbour6_on(&self, ifindex: u32, hop: Ipv6Addr) -> Result<Option<NeighMsg<Ipv6Addr>>> {
        let seq = self.next_seq();
        let mut entry = None;
        self.ask(seq, &netlink::neigh_get6(seq, ifindex, hop), |m| {
            if let Message::Neighbour6(n) = m {
                entry = Some(n);
            }
            false
        })?;
        Ok(entry)
    }

    /// Every IPv6 entry the kernel has on the back.
    pub fn neighbours6(&self) -> Result<Vec<NeighMsg<Ipv6Addr>>> {
        let seq = self.next_seq();
        let mut entries = Vec::new();
        let mut failed = None;
        self.ask(seq, &netlink::neigh_dump6(seq, self.back_index), |m| {
            match m {
                Message::Neighbour6(n) => entries.push(n),
                Message::Error(e) if e != 0 => failed = Some(e),
                _ => {}
            }
            true
        })?;
        if let Some(errno) = failed {
            bail!(
                "dumping the IPv6 neighbours of {}: {}",
                self.back,
                errno_text(errno)
            );
        }
        Ok(entries)
    }

    /// [`resolve`](Self::resolve) for an IPv6 daemon: its next hop and the
    /// hop's MAC, a TCP connection attempt making the kernel solicit it first
    /// when it has no complete entry.
    pub fn resolve6(&self, daemon: SocketAddrV6) -> Result<(Ipv6Addr, Option<[u8; 6]>)> {
        let hop = self.route_via_back6(*daemon.ip())?;
        let mac = |k: &Self| -> Result<Option<[u8; 6]>> {
            Ok(k.neighbour6(hop)?.and_then(|n| n.usable_mac()))
        };
        if let Some(known) = mac(self)? {
            return Ok((hop, Some(known)));
        }
        let _ = TcpStream::connect_timeout(&SocketAddr::V6(daemon), self.probe_timeout);
        Ok((hop, mac(self)?))
    }
}

/// What the IPv6 next-hop probe carries (an ICMPv6 echo request's data).
const PROBE6_PAYLOAD: &[u8; 24] = b"dispatchd next-hop probe";
/// ICMPv6 echo identifier of every probe ("dp"), as the IPv4 probe's.
const PROBE6_ID: u16 = 0x6470;
/// An ICMPv6 echo request: header and payload.
pub const PROBE6_LEN: usize = 8 + PROBE6_PAYLOAD.len();

/// The IPv6 next-hop probe: an ICMPv6 echo request (type 128) with checksum 0,
/// which the kernel fills in on a raw ICMPv6 socket (RFC 3542 3.1), for
/// [`crate::sys::RawIcmp6Sender`]. Sending it to a hop the kernel has no
/// neighbour entry for makes the kernel solicit the hop.
pub fn echo6_request(seq: u16) -> [u8; PROBE6_LEN] {
    let mut p = [0u8; PROBE6_LEN];
    p[0] = 128;
    p[4..6].copy_from_slice(&PROBE6_ID.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..].copy_from_slice(PROBE6_PAYLOAD);
    p
}

/// The text of a positive errno.
pub fn errno_text(errno: i32) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    // "No route to host (os error 113)": the number says nothing more.
    match text.rfind(" (os error") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::{NUD_REACHABLE, NUD_STALE, RTN_UNICAST};

    const BACK: u32 = 3;
    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn neigh(addr: &str, state: u16, mac: Option<[u8; 6]>) -> NeighMsg {
        NeighMsg {
            deleted: false,
            family: 2,
            ifindex: BACK,
            state,
            flags: 0,
            dst: Some(ip(addr)),
            lladdr: mac,
        }
    }

    fn back(hop: &str) -> Reach<IpAddr> {
        Reach::Back {
            hop: ip(hop).into(),
        }
    }

    /// Daemons .11 (on link), .12 (on link) and 198.19.1.11 via gateway .2.
    fn book() -> HopBook {
        let mut b = HopBook::new(BACK);
        b.install(vec![
            DaemonHop {
                addr: ip("198.19.0.11").into(),
                reach: back("198.19.0.11"),
                mac: None,
            },
            DaemonHop {
                addr: ip("198.19.0.12").into(),
                reach: back("198.19.0.12"),
                mac: Some(MAC_A),
            },
            DaemonHop {
                addr: ip("198.19.1.11").into(),
                reach: back("198.19.0.2"),
                mac: None,
            },
        ]);
        b
    }

    fn id(i: u16) -> BackendId {
        BackendId(i)
    }

    fn ip6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn neigh6(addr: &str, state: u16, mac: Option<[u8; 6]>) -> NeighMsg<Ipv6Addr> {
        NeighMsg {
            deleted: false,
            family: 10,
            ifindex: BACK,
            state,
            flags: 0,
            dst: Some(ip6(addr)),
            lladdr: mac,
        }
    }

    /// An IPv4 daemon, then IPv6 daemons on link and behind a router's
    /// link-local address.
    fn dual_book() -> HopBook {
        let mut b = HopBook::new(BACK);
        let v6 = |daemon: &str, hop: &str| DaemonHop {
            addr: ip6(daemon).into(),
            reach: Reach::Back {
                hop: ip6(hop).into(),
            },
            mac: None,
        };
        b.install(vec![
            DaemonHop {
                addr: ip("198.19.0.11").into(),
                reach: back("198.19.0.11"),
                mac: None,
            },
            v6("2001:2:0:2::11", "2001:2:0:2::11"),
            v6("2001:2:0:3::11", "fe80::1"),
        ]);
        b
    }

    #[test]
    fn ipv6_daemons_take_the_macs_of_their_hops_ndp_entries() {
        let mut b = dual_book();
        assert!(b.has_ipv6());
        assert!(!book().has_ipv6());
        let mut changed = Vec::new();
        b.neighbour(&neigh6("fe80::1", NUD_REACHABLE, Some(MAC_B)), &mut changed);
        assert_eq!(changed, [id(2)], "the daemon behind the router");
        assert_eq!(b.get(id(2)).unwrap().usable(), Some(MAC_B));
        // An IPv4 entry of the same bytes is no IPv6 hop, and the reverse.
        changed.clear();
        b.neighbour(
            &neigh("198.19.0.11", NUD_REACHABLE, Some(MAC_A)),
            &mut changed,
        );
        assert_eq!(changed, [id(0)]);
        // A full dump of both tables: the on-link daemon's entry is in the NDP one.
        changed.clear();
        b.load_neighbours(
            &[neigh("198.19.0.11", NUD_REACHABLE, Some(MAC_A))],
            &[neigh6("2001:2:0:2::11", NUD_STALE, Some(MAC_A))],
            &mut changed,
        );
        assert_eq!(changed, [id(1)]);
        assert_eq!(b.neighbour_mac(ip6("2001:2:0:2::11")), Some(MAC_A));
        assert_eq!(b.neighbour_mac(ip6("fe80::1")), None, "not in the dump");
        assert_eq!(b.get(id(2)).unwrap().usable(), Some(MAC_B), "kept its last");
        // A failed NDP entry of a daemon's hop asks for the routes again.
        assert!(b.neighbour(&neigh6("fe80::1", NUD_FAILED, None), &mut changed));
        // A reload keeps the MAC of the same daemon behind the same hop.
        assert_eq!(
            b.mac_for(ip6("2001:2:0:3::11"), ip6("fe80::1")),
            Some(MAC_B)
        );
        assert_eq!(b.mac_for(ip6("2001:2:0:3::11"), ip6("fe80::2")), None);
        // A route away from the back leaves it without one.
        changed.clear();
        let away = Reach::NoRoute {
            reason: "unreachable".into(),
        };
        let change = b.reroute(id(2), away.clone(), &mut changed).unwrap();
        assert_eq!(change.after, away);
        assert_eq!(changed, [id(2)]);
        assert_eq!(b.get(id(2)).unwrap().usable(), None);
    }

    #[test]
    fn an_ipv6_route_matters_when_it_covers_an_ipv6_daemon() {
        let b = dual_book();
        assert!(b.covers_a_daemon6(None, 0), "a default route");
        assert!(b.covers_a_daemon6(Some(ip6("2001:2:0:2::")), 64));
        assert!(b.covers_a_daemon6(Some(ip6("2001:2:0:3::11")), 128));
        assert!(!b.covers_a_daemon6(Some(ip6("2001:2:0:4::")), 64));
        assert!(!b.covers_a_daemon6(Some(ip6("2001:2:0:2::11")), 129));
        assert!(!book().covers_a_daemon6(None, 0), "no IPv6 daemon");
        assert!(
            !b.covers_a_daemon(Some(ip("198.19.1.0")), 24),
            "IPv4 routes only for IPv4 daemons"
        );
        assert!(b.covers_a_daemon(Some(ip("198.19.0.0")), 24));
    }

    #[test]
    fn a_complete_entry_gives_its_mac_to_every_daemon_behind_the_hop() {
        let mut b = book();
        let mut changed = Vec::new();
        assert!(!b.neighbour(
            &neigh("198.19.0.2", NUD_REACHABLE, Some(MAC_B)),
            &mut changed
        ));
        assert_eq!(changed, [id(2)]);
        assert_eq!(b.get(id(2)).unwrap().usable(), Some(MAC_B));
        changed.clear();
        // The same MAC again (a state change, REACHABLE to STALE): no news.
        b.neighbour(&neigh("198.19.0.2", NUD_STALE, Some(MAC_B)), &mut changed);
        assert!(changed.is_empty());
        // A new MAC: news at once.
        b.neighbour(
            &neigh("198.19.0.12", NUD_REACHABLE, Some(MAC_B)),
            &mut changed,
        );
        assert_eq!(changed, [id(1)]);
        assert_eq!(b.get(id(1)).unwrap().usable(), Some(MAC_B));
    }

    #[test]
    fn entries_of_other_interfaces_proxies_and_incomplete_ones_give_nothing() {
        let mut b = book();
        let mut changed = Vec::new();
        let mut other = neigh("198.19.0.11", NUD_REACHABLE, Some(MAC_B));
        other.ifindex = BACK + 1;
        b.neighbour(&other, &mut changed);
        let mut proxy = neigh("198.19.0.11", NUD_REACHABLE, Some(MAC_B));
        proxy.flags = NTF_PROXY;
        b.neighbour(&proxy, &mut changed);
        b.neighbour(
            &neigh("198.19.0.11", netlink::NUD_INCOMPLETE, None),
            &mut changed,
        );
        b.neighbour(&neigh("198.19.0.11", NUD_REACHABLE, None), &mut changed);
        assert!(changed.is_empty());
        assert_eq!(b.get(id(0)).unwrap().usable(), None);
        assert_eq!(b.neighbour_mac(ip("198.19.0.11")), None);
    }

    #[test]
    fn a_forgotten_or_failed_entry_keeps_the_last_mac_and_a_failed_hop_asks_for_routes() {
        let mut b = book();
        let mut changed = Vec::new();
        b.neighbour(
            &neigh("198.19.0.12", NUD_REACHABLE, Some(MAC_A)),
            &mut changed,
        );
        let mut gone = neigh("198.19.0.12", NUD_STALE, Some(MAC_A));
        gone.deleted = true;
        assert!(
            !b.neighbour(&gone, &mut changed),
            "a deletion is not a failure"
        );
        assert_eq!(
            b.neighbour_mac(ip("198.19.0.12")),
            None,
            "the kernel has none"
        );
        assert_eq!(
            b.get(id(1)).unwrap().usable(),
            Some(MAC_A),
            "the daemon keeps it"
        );
        assert!(b.neighbour(&neigh("198.19.0.12", NUD_FAILED, None), &mut changed));
        assert_eq!(b.get(id(1)).unwrap().usable(), Some(MAC_A));
        assert!(changed.is_empty());
        // Not a daemon's hop: nothing to ask.
        assert!(!b.neighbour(&neigh("198.19.0.99", NUD_FAILED, None), &mut changed));
    }

    #[test]
    fn a_route_off_the_back_clears_the_mac_and_the_way_back_restores_the_kernels() {
        let mut b = book();
        let mut changed = Vec::new();
        b.neighbour(
            &neigh("198.19.0.12", NUD_REACHABLE, Some(MAC_A)),
            &mut changed,
        );
        changed.clear();
        let away = Reach::Elsewhere {
            interface: "l0".into(),
        };
        let r = b
            .reroute(id(1), away.clone(), &mut changed)
            .expect("a change");
        assert_eq!((r.before, r.after), (back("198.19.0.12"), away.clone()));
        assert_eq!(changed, [id(1)]);
        assert_eq!(b.get(id(1)).unwrap().usable(), None);
        changed.clear();
        assert_eq!(b.reroute(id(1), away, &mut changed), None, "no change");
        assert!(changed.is_empty());
        b.reroute(id(1), back("198.19.0.12"), &mut changed)
            .expect("back");
        assert_eq!(changed, [id(1)]);
        assert_eq!(b.get(id(1)).unwrap().usable(), Some(MAC_A));
    }

    #[test]
    fn a_new_hop_waits_for_its_own_entry() {
        let mut b = book();
        let mut changed = Vec::new();
        // .12 moves behind a gateway the kernel has no entry for yet.
        b.reroute(id(1), back("198.19.0.3"), &mut changed)
            .expect("a change");
        assert_eq!(changed, [id(1)]);
        assert_eq!(b.get(id(1)).unwrap().usable(), None, "not .12's old MAC");
        changed.clear();
        b.neighbour(
            &neigh("198.19.0.3", NUD_REACHABLE, Some(MAC_B)),
            &mut changed,
        );
        assert_eq!(changed, [id(1)]);
        assert_eq!(b.get(id(1)).unwrap().usable(), Some(MAC_B));
        // Same route again, same hop: unchanged, MAC kept.
        changed.clear();
        assert_eq!(b.reroute(id(1), back("198.19.0.3"), &mut changed), None);
        assert!(changed.is_empty());
        assert_eq!(
            b.reroute(id(9), back("198.19.0.3"), &mut changed),
            None,
            "no such daemon"
        );
    }

    #[test]
    fn a_dump_is_the_truth_for_the_hops_it_has() {
        let mut b = book();
        let mut changed = Vec::new();
        let mut other = neigh("198.19.0.11", NUD_REACHABLE, Some(MAC_B));
        other.ifindex = BACK + 1;
        let dump = [
            neigh("198.19.0.2", NUD_REACHABLE, Some(MAC_A)),
            neigh("198.19.0.12", NUD_STALE, Some(MAC_B)),
            other,
            neigh("198.19.0.50", NUD_FAILED, None),
        ];
        b.load_neighbours(&dump, &[], &mut changed);
        assert_eq!(changed, [id(1), id(2)]);
        assert_eq!(b.get(id(0)).unwrap().usable(), None, "only on the back");
        assert_eq!(b.get(id(1)).unwrap().usable(), Some(MAC_B));
        assert_eq!(b.get(id(2)).unwrap().usable(), Some(MAC_A));
        assert_eq!(b.neighbour_mac(ip("198.19.0.50")), None);
        // A later dump without .12's entry: .12 keeps its MAC.
        changed.clear();
        b.load_neighbours(&dump[..1], &[], &mut changed);
        assert!(changed.is_empty());
        assert_eq!(b.get(id(1)).unwrap().usable(), Some(MAC_B));
        assert_eq!(b.neighbour_mac(ip("198.19.0.12")), None);
    }

    #[test]
    fn a_reload_keeps_a_daemons_mac_for_the_same_hop_and_prefers_the_kernels() {
        let mut b = book();
        // .12 has MAC_A, which the kernel no longer lists.
        assert_eq!(b.mac_for(ip("198.19.0.12"), ip("198.19.0.12")), Some(MAC_A));
        assert_eq!(
            b.mac_for(ip("198.19.0.12"), ip("198.19.0.3")),
            None,
            "another hop"
        );
        assert_eq!(
            b.mac_for(ip("198.19.0.13"), ip("198.19.0.12")),
            None,
            "another daemon"
        );
        let mut changed = Vec::new();
        b.neighbour(
            &neigh("198.19.0.12", NUD_REACHABLE, Some(MAC_B)),
            &mut changed,
        );
        assert_eq!(b.mac_for(ip("198.19.0.12"), ip("198.19.0.12")), Some(MAC_B));
        assert_eq!(b.mac_for(ip("198.19.0.13"), ip("198.19.0.12")), Some(MAC_B));
    }

    #[test]
    fn a_route_matters_when_it_covers_a_daemon() {
        let b = book();
        assert!(b.covers_a_daemon(None, 0), "a default route");
        assert!(b.covers_a_daemon(Some(ip("198.19.1.0")), 24));
        assert!(b.covers_a_daemon(Some(ip("198.19.0.12")), 32));
        assert!(!b.covers_a_daemon(Some(ip("198.19.0.13")), 32));
        assert!(!b.covers_a_daemon(Some(ip("198.18.0.0")), 24));
        assert!(b.covers_a_daemon(Some(ip("198.16.0.0")), 12));
        assert!(
            !b.covers_a_daemon(Some(ip("198.19.0.12")), 33),
            "not a prefix length"
        );
    }

    fn answer(oif: Option<u32>, gateway: Option<&str>) -> RouteMsg {
        RouteMsg {
            family: 2,
            dst_len: 32,
            kind: RTN_UNICAST,
            table: 254,
            dst: Some(ip("198.19.1.11")),
            gateway: gateway.map(ip),
            oif,
            ..RouteMsg::default()
        }
    }

    #[test]
    fn a_route_answer_says_which_hop_or_why_none() {
        let daemon = ip("198.19.1.11");
        let on_back = (BACK, "l1");
        let name = |i: u32| {
            if i == 1 {
                "lo".to_owned()
            } else {
                format!("if{i}")
            }
        };
        assert_eq!(
            Reach::of_answer(
                &answer(Some(BACK), Some("198.19.0.2")),
                daemon,
                on_back,
                name
            ),
            Reach::Back {
                hop: ip("198.19.0.2")
            }
        );
        assert_eq!(
            Reach::of_answer(&answer(Some(BACK), None), daemon, on_back, name),
            Reach::Back {
                hop: ip("198.19.1.11")
            },
            "on link: the daemon is its own hop"
        );
        let local = Reach::of_answer(&answer(Some(1), None), daemon, on_back, name);
        assert_eq!(
            local,
            Reach::Elsewhere {
                interface: "lo".into()
            }
        );
        assert_eq!(
            local.problem("198.19.1.11:8080", "l1").unwrap(),
            "daemon 198.19.1.11:8080 is routed via lo, not the back interface l1"
        );
        assert!(matches!(
            Reach::of_answer(&answer(None, None), daemon, on_back, name),
            Reach::NoRoute { .. }
        ));
        let mut v6 = answer(Some(BACK), None);
        v6.via_family = Some(10);
        let reach = Reach::of_answer(&v6, daemon, on_back, name);
        assert!(matches!(reach, Reach::Unsupported { .. }), "{reach:?}");
        assert!(back("198.19.0.2").problem(daemon, "l1").is_none());
        assert_eq!(
            Reach::<Ipv4Addr>::NoRoute {
                reason: format!("the kernel: {}", errno_text(101))
            }
            .problem(daemon, "l1")
            .unwrap(),
            "no route to daemon 198.19.1.11 (the kernel: Network is unreachable)"
        );
    }

    #[test]
    fn the_ipv6_probe_is_an_echo_request_the_kernel_completes() {
        let p = echo6_request(0x0102);
        assert_eq!(p.len(), PROBE6_LEN);
        // Type 128, code 0, checksum left to the kernel, id "dp", the sequence.
        assert_eq!(p[..8], [128, 0, 0, 0, 0x64, 0x70, 1, 2]);
        assert_eq!(&p[8..], PROBE6_PAYLOAD);
    }

    #[test]
    fn mac_parsing_rejects_malformed_text() {
        assert_eq!(parse_mac("02:00:00:00:00:0a\n"), Some([2, 0, 0, 0, 0, 10]));
        assert_eq!(parse_mac("02:00:00:00:00"), None);
        assert_eq!(parse_mac("02:00:00:00:00:0a:01"), None);
        assert_eq!(parse_mac("zz:00:00:00:00:0a"), None);
        assert_eq!(fmt_mac([2, 0, 0x5e, 0x10, 0, 1]), "02:00:5e:10:00:01");
    }
}
