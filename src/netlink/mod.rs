//! rtnetlink, as much of it as dispatchd needs: the requests it makes (a route
//! "get" for a daemon's address, a neighbour "get" and a neighbour dump on the
//! back interface), for IPv4 and IPv6 (`*6` requests, [`Message::Route6`],
//! [`Message::Neighbour6`]: the same layouts with 16-byte addresses and
//! AF_INET6), and the parsing of what the kernel sends, answers and change
//! notifications alike. Pure: bytes in, bytes out; the socket is in [`socket`].
//!
//! Every length is checked before it is used: a message or attribute that
//! claims more than there is, or less than its own header, is [`Malformed`],
//! and the rest of its datagram is not read (its boundaries are lost). Unknown
//! message types and attributes are skipped. Numbers are in host order, as the
//! kernel writes them (netlink is not a wire protocol), except addresses,
//! which are in network order.
//!
//! Constants are those of the kernel's uapi headers (`linux/netlink.h`,
//! `linux/rtnetlink.h`, `linux/neighbour.h`), named as there.

pub mod socket;

use std::net::{Ipv4Addr, Ipv6Addr};

pub const NLMSG_HDRLEN: usize = 16;
const RTMSG_LEN: usize = 12;
const NDMSG_LEN: usize = 12;
const RTATTR_HDRLEN: usize = 4;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_DUMP: u16 = 0x300;

pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLMSG_OVERRUN: u16 = 4;

pub const RTM_NEWLINK: u16 = 16;
pub const RTM_DELLINK: u16 = 17;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_DELADDR: u16 = 21;
pub const RTM_NEWROUTE: u16 = 24;
pub const RTM_DELROUTE: u16 = 25;
pub const RTM_GETROUTE: u16 = 26;
pub const RTM_NEWNEIGH: u16 = 28;
pub const RTM_DELNEIGH: u16 = 29;
pub const RTM_GETNEIGH: u16 = 30;
pub const RTM_NEWRULE: u16 = 32;
pub const RTM_DELRULE: u16 = 33;

/// Multicast groups (the legacy bit mask of `sockaddr_nl.nl_groups`).
pub const RTMGRP_LINK: u32 = 0x1;
pub const RTMGRP_NEIGH: u32 = 0x4;
pub const RTMGRP_IPV4_IFADDR: u32 = 0x10;
pub const RTMGRP_IPV4_ROUTE: u32 = 0x40;
pub const RTMGRP_IPV4_RULE: u32 = 0x80;
pub const RTMGRP_IPV6_IFADDR: u32 = 0x100;
pub const RTMGRP_IPV6_ROUTE: u32 = 0x400;
/// `1 << (RTNLGRP_IPV6_RULE - 1)`: the kernel headers define no legacy mask
/// for it, but its group number (19) is within the mask's 32.
pub const RTMGRP_IPV6_RULE: u32 = 0x40000;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// An address family's address as rtnetlink carries it: `LEN` bytes in
/// network order, under family number `FAMILY`.
pub trait NlAddr: Copy + std::fmt::Debug + PartialEq + Eq {
    const FAMILY: u8;
    const LEN: usize;
    /// The address in `value`, which must be exactly `LEN` bytes.
    fn parse(value: &[u8]) -> Result<Self, Malformed>;
    fn put(self, out: &mut Vec<u8>, kind: u16);
}

impl NlAddr for Ipv4Addr {
    const FAMILY: u8 = AF_INET;
    const LEN: usize = 4;
    fn parse(value: &[u8]) -> Result<Self, Malformed> {
        ipv4(value)
    }
    fn put(self, out: &mut Vec<u8>, kind: u16) {
        put_attr(out, kind, &self.octets());
    }
}

impl NlAddr for Ipv6Addr {
    const FAMILY: u8 = AF_INET6;
    const LEN: usize = 16;
    fn parse(value: &[u8]) -> Result<Self, Malformed> {
        let octets: [u8; 16] = value.try_into().map_err(|_| Malformed::BadValue)?;
        Ok(Ipv6Addr::from(octets))
    }
    fn put(self, out: &mut Vec<u8>, kind: u16) {
        put_attr(out, kind, &self.octets());
    }
}

const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_MULTIPATH: u16 = 9;
const RTA_TABLE: u16 = 15;
const RTA_VIA: u16 = 18;

const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const NDA_IFINDEX: u16 = 8;

pub const NUD_INCOMPLETE: u16 = 0x01;
pub const NUD_REACHABLE: u16 = 0x02;
pub const NUD_STALE: u16 = 0x04;
pub const NUD_DELAY: u16 = 0x08;
pub const NUD_PROBE: u16 = 0x10;
pub const NUD_FAILED: u16 = 0x20;
pub const NUD_NOARP: u16 = 0x40;
pub const NUD_PERMANENT: u16 = 0x80;
/// States in which an entry's link-layer address is one the kernel sends to.
pub const NUD_VALID: u16 =
    NUD_PERMANENT | NUD_NOARP | NUD_REACHABLE | NUD_PROBE | NUD_STALE | NUD_DELAY;
pub const NTF_PROXY: u8 = 0x08;

/// The attribute type without the nested and byte-order flag bits.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// Why a message could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// Fewer bytes left than a message header.
    ShortHeader,
    /// A message length below its header or beyond the datagram.
    BadLength,
    /// A message too short for the fixed header of its type.
    ShortBody,
    /// An attribute length below its header or beyond its message.
    BadAttribute,
    /// A known attribute of the wrong size (an IPv4 address that is not 4
    /// bytes, an interface index that is not 4).
    BadValue,
}

impl Malformed {
    pub fn as_str(self) -> &'static str {
        match self {
            Malformed::ShortHeader => "short header",
            Malformed::BadLength => "bad message length",
            Malformed::ShortBody => "message shorter than its type's header",
            Malformed::BadAttribute => "bad attribute length",
            Malformed::BadValue => "attribute of the wrong size",
        }
    }
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    pub pid: u32,
}

/// A route as the kernel describes it: the answer to a route "get" (the
/// path it chose for one destination) or a route added or removed; IPv4 unless
/// `A` is `Ipv6Addr`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteMsg<A = Ipv4Addr> {
    /// RTM_DELROUTE.
    pub deleted: bool,
    pub family: u8,
    pub dst_len: u8,
    /// `rtm_type`: unicast, local, unreachable, ...
    pub kind: u8,
    pub table: u32,
    pub dst: Option<A>,
    pub gateway: Option<A>,
    /// The output interface's index.
    pub oif: Option<u32>,
    /// An RTA_VIA gateway (an IPv6 next hop for an IPv4 route): its family.
    pub via_family: Option<u16>,
    /// Several paths (RTA_MULTIPATH): a route added or removed, never the
    /// answer to a "get", which names the one path chosen.
    pub multipath: bool,
}

impl<A> Default for RouteMsg<A> {
    fn default() -> Self {
        Self {
            deleted: false,
            family: 0,
            dst_len: 0,
            kind: 0,
            table: 0,
            dst: None,
            gateway: None,
            oif: None,
            via_family: None,
            multipath: false,
        }
    }
}

pub const RTN_UNICAST: u8 = 1;

/// A neighbour entry as the kernel describes it (IPv4 unless `A` is
/// `Ipv6Addr`: the NDP table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeighMsg<A = Ipv4Addr> {
    /// RTM_DELNEIGH: the entry is gone.
    pub deleted: bool,
    pub family: u8,
    pub ifindex: u32,
    /// NUD_* bits.
    pub state: u16,
    /// NTF_* bits.
    pub flags: u8,
    pub dst: Option<A>,
    /// The link-layer address when it is an Ethernet one (6 bytes).
    pub lladdr: Option<[u8; 6]>,
}

impl<A> Default for NeighMsg<A> {
    fn default() -> Self {
        Self {
            deleted: false,
            family: 0,
            ifindex: 0,
            state: 0,
            flags: 0,
            dst: None,
            lladdr: None,
        }
    }
}

impl<A> NeighMsg<A> {
    /// The MAC the kernel sends to for this entry now, if any.
    pub fn usable_mac(&self) -> Option<[u8; 6]> {
        if self.deleted || self.state & NUD_VALID == 0 {
            return None;
        }
        self.lladdr
    }
}

/// One message, as far as dispatchd cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Route(RouteMsg),
    Neighbour(NeighMsg),
    /// An IPv6 route (AF_INET6).
    Route6(RouteMsg<Ipv6Addr>),
    /// An IPv6 neighbour (NDP) entry (AF_INET6).
    Neighbour6(NeighMsg<Ipv6Addr>),
    /// A link, an address or a policy rule was added, changed or removed: any
    /// route may have changed with it (IPv4 sends no route notification for
    /// the routes a link going down takes away, nor for a new rule's effect).
    RoutingChanged,
    /// The end of a dump.
    Done,
    /// An answer's status: 0 for an acknowledgement, else a positive errno.
    Error(i32),
    /// Any other type: no-ops, overruns, families dispatchd does not follow.
    Other,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Rounded up to netlink's 4-byte alignment.
const fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// The messages of one datagram. After a [`Malformed`] item the iterator
/// ends: the lengths that would find the next message are not to be trusted.
pub struct Messages<'a> {
    rest: &'a [u8],
}

impl<'a> Messages<'a> {
    pub fn new(datagram: &'a [u8]) -> Self {
        Self { rest: datagram }
    }
}

impl Iterator for Messages<'_> {
    type Item = Result<(Header, Message), Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let item = split_message(self.rest);
        match item {
            Ok((header, body, next)) => {
                self.rest = next;
                Some(parse_body(&header, body).map(|m| (header, m)))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

/// The first message's header and body, and what follows it.
fn split_message(b: &[u8]) -> Result<(Header, &[u8], &[u8]), Malformed> {
    if b.len() < NLMSG_HDRLEN {
        return Err(Malformed::ShortHeader);
    }
    let len = u32_at(b, 0) as usize;
    if len < NLMSG_HDRLEN || len > b.len() {
        return Err(Malformed::BadLength);
    }
    let header = Header {
        kind: u16_at(b, 4),
        flags: u16_at(b, 6),
        seq: u32_at(b, 8),
        pid: u32_at(b, 12),
    };
    // The last message of a datagram may lack its padding.
    let next = align(len).min(b.len());
    Ok((header, &b[NLMSG_HDRLEN..len], &b[next..]))
}

fn parse_body(header: &Header, body: &[u8]) -> Result<Message, Malformed> {
    match header.kind {
        NLMSG_ERROR => {
            if body.len() < 4 {
                return Err(Malformed::ShortBody);
            }
            // The kernel's `-errno`, as an i32 in host order.
            let code = u32_at(body, 0) as i32;
            Ok(Message::Error(code.saturating_neg()))
        }
        NLMSG_DONE => Ok(Message::Done),
        RTM_NEWROUTE | RTM_DELROUTE => {
            let deleted = header.kind == RTM_DELROUTE;
            match body.first() {
                Some(&AF_INET) => {
                    Ok(parse_route::<Ipv4Addr>(body, deleted)?
                        .map_or(Message::Other, Message::Route))
                }
                Some(&AF_INET6) => {
                    Ok(parse_route::<Ipv6Addr>(body, deleted)?
                        .map_or(Message::Other, Message::Route6))
                }
                Some(_) => Ok(Message::Other),
                None => Err(Malformed::ShortBody),
            }
        }
        RTM_NEWNEIGH | RTM_DELNEIGH => {
            let deleted = header.kind == RTM_DELNEIGH;
            match body.first() {
                Some(&AF_INET) => Ok(parse_neigh::<Ipv4Addr>(body, deleted)?
                    .map_or(Message::Other, Message::Neighbour)),
                Some(&AF_INET6) => Ok(parse_neigh::<Ipv6Addr>(body, deleted)?
                    .map_or(Message::Other, Message::Neighbour6)),
                Some(_) => Ok(Message::Other),
                None => Err(Malformed::ShortBody),
            }
        }
        RTM_NEWLINK | RTM_DELLINK | RTM_NEWADDR | RTM_DELADDR | RTM_NEWRULE | RTM_DELRULE => {
            Ok(Message::RoutingChanged)
        }
        _ => Ok(Message::Other),
    }
}

/// The attributes in `b`: (type without flag bits, value).
struct Attrs<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<(u16, &'a [u8]), Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let b = self.rest;
        if b.len() < RTATTR_HDRLEN {
            self.rest = &[];
            return Some(Err(Malformed::BadAttribute));
        }
        let len = usize::from(u16_at(b, 0));
        if len < RTATTR_HDRLEN || len > b.len() {
            self.rest = &[];
            return Some(Err(Malformed::BadAttribute));
        }
        let kind = u16_at(b, 2) & NLA_TYPE_MASK;
        self.rest = &b[align(len).min(b.len())..];
        Some(Ok((kind, &b[RTATTR_HDRLEN..len])))
    }
}

fn ipv4(value: &[u8]) -> Result<Ipv4Addr, Malformed> {
    let octets: [u8; 4] = value.try_into().map_err(|_| Malformed::BadValue)?;
    Ok(Ipv4Addr::from(octets))
}

fn index(value: &[u8]) -> Result<u32, Malformed> {
    let bytes: [u8; 4] = value.try_into().map_err(|_| Malformed::BadValue)?;
    Ok(u32::from_ne_bytes(bytes))
}

/// A route of family `A` (`None`: not that family's).
fn parse_route<A: NlAddr>(body: &[u8], deleted: bool) -> Result<Option<RouteMsg<A>>, Malformed> {
    if body.len() < RTMSG_LEN {
        return Err(Malformed::ShortBody);
    }
    let mut r = RouteMsg::<A> {
        deleted,
        family: body[0],
        dst_len: body[1],
        table: u32::from(body[4]),
        kind: body[7],
        ..RouteMsg::default()
    };
    if r.family != A::FAMILY {
        // Only this family's routes carry its addresses.
        return Ok(None);
    }
    for attr in (Attrs {
        rest: &body[RTMSG_LEN..],
    }) {
        let (kind, value) = attr?;
        match kind {
            RTA_DST => r.dst = Some(A::parse(value)?),
            RTA_GATEWAY => r.gateway = Some(A::parse(value)?),
            RTA_OIF => r.oif = Some(index(value)?),
            RTA_TABLE => r.table = index(value)?,
            RTA_MULTIPATH => r.multipath = true,
            RTA_VIA => {
                let family = value.get(..2).ok_or(Malformed::BadValue)?;
                r.via_family = Some(u16_at(family, 0));
            }
            _ => {}
        }
    }
    Ok(Some(r))
}

/// A neighbour entry of family `A` (`None`: not that family's).
fn parse_neigh<A: NlAddr>(body: &[u8], deleted: bool) -> Result<Option<NeighMsg<A>>, Malformed> {
    if body.len() < NDMSG_LEN {
        return Err(Malformed::ShortBody);
    }
    let mut n = NeighMsg::<A> {
        deleted,
        family: body[0],
        ifindex: u32_at(body, 4),
        state: u16_at(body, 8),
        flags: body[10],
        ..NeighMsg::default()
    };
    if n.family != A::FAMILY {
        return Ok(None);
    }
    for attr in (Attrs {
        rest: &body[NDMSG_LEN..],
    }) {
        let (kind, value) = attr?;
        match kind {
            NDA_DST => n.dst = Some(A::parse(value)?),
            // Other link layers (InfiniBand, tunnels without one) are not a
            // MAC a worker could write: no address, not a malformed message.
            NDA_LLADDR => n.lladdr = value.try_into().ok(),
            _ => {}
        }
    }
    Ok(Some(n))
}

/// Appends a message header for a body of `body_len` bytes.
fn put_header(out: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, body_len: usize) {
    let len = (NLMSG_HDRLEN + body_len) as u32;
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    // Port 0: the kernel fills in the sender's.
    out.extend_from_slice(&0u32.to_ne_bytes());
}

fn put_attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = (RTATTR_HDRLEN + value.len()) as u16;
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(align(out.len()), 0);
}

/// What `ip route get DST` asks: the kernel's decision for a packet this host
/// sends to `dst`, through its policy rules, choosing one path of a multipath
/// route. The answer is an RTM_NEWROUTE naming the output interface and the
/// gateway, or an error (no route, unreachable, prohibited).
pub fn route_get(seq: u32, dst: Ipv4Addr) -> Vec<u8> {
    route_get_of(seq, dst)
}

/// [`route_get`] for an IPv6 destination (`ip -6 route get`): the answer is
/// a [`Message::Route6`].
pub fn route_get6(seq: u32, dst: Ipv6Addr) -> Vec<u8> {
    route_get_of(seq, dst)
}

fn route_get_of<A: NlAddr>(seq: u32, dst: A) -> Vec<u8> {
    let attr = RTATTR_HDRLEN + A::LEN;
    let mut out = Vec::with_capacity(NLMSG_HDRLEN + RTMSG_LEN + attr);
    put_header(&mut out, RTM_GETROUTE, NLM_F_REQUEST, seq, RTMSG_LEN + attr);
    // rtmsg: family, dst_len the whole address, the rest zero (any table,
    // type, scope).
    let bits = (A::LEN * 8) as u8;
    out.extend_from_slice(&[A::FAMILY, bits, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    dst.put(&mut out, RTA_DST);
    out
}

/// The kernel's IPv4 neighbour entry for `dst` on interface `ifindex` (`ip
/// neigh get`): an RTM_NEWNEIGH, or ENOENT.
pub fn neigh_get(seq: u32, ifindex: u32, dst: Ipv4Addr) -> Vec<u8> {
    neigh_get_of(seq, ifindex, dst)
}

/// The kernel's IPv6 (NDP) entry for `dst` on `ifindex` (`ip -6 neigh get`):
/// a [`Message::Neighbour6`], or ENOENT.
pub fn neigh_get6(seq: u32, ifindex: u32, dst: Ipv6Addr) -> Vec<u8> {
    neigh_get_of(seq, ifindex, dst)
}

fn neigh_get_of<A: NlAddr>(seq: u32, ifindex: u32, dst: A) -> Vec<u8> {
    let attr = RTATTR_HDRLEN + A::LEN;
    let mut out = Vec::with_capacity(NLMSG_HDRLEN + NDMSG_LEN + attr);
    put_header(&mut out, RTM_GETNEIGH, NLM_F_REQUEST, seq, NDMSG_LEN + attr);
    out.extend_from_slice(&ndmsg(A::FAMILY, ifindex));
    dst.put(&mut out, NDA_DST);
    out
}

/// Every IPv4 neighbour entry on interface `ifindex` (`ip neigh show dev`):
/// RTM_NEWNEIGH messages over one or more datagrams, then NLMSG_DONE.
pub fn neigh_dump(seq: u32, ifindex: u32) -> Vec<u8> {
    neigh_dump_of(AF_INET, seq, ifindex)
}

/// Every IPv6 neighbour entry on `ifindex` (`ip -6 neigh show dev`).
pub fn neigh_dump6(seq: u32, ifindex: u32) -> Vec<u8> {
    neigh_dump_of(AF_INET6, seq, ifindex)
}

fn neigh_dump_of(family: u8, seq: u32, ifindex: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(NLMSG_HDRLEN + NDMSG_LEN + 8);
    put_header(
        &mut out,
        RTM_GETNEIGH,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        NDMSG_LEN + 8,
    );
    // The interface goes in NDA_IFINDEX: a dump's ndmsg must have none (the
    // kernel checks it strictly when asked to).
    out.extend_from_slice(&ndmsg(family, 0));
    put_attr(&mut out, NDA_IFINDEX, &ifindex.to_ne_bytes());
    out
}

fn ndmsg(family: u8, ifindex: u32) -> [u8; NDMSG_LEN] {
    let mut m = [0u8; NDMSG_LEN];
    m[0] = family;
    m[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    m
}

#[cfg(test)]
mod tests;
