//! ICMPv6 error messages about a TCP segment or UDP datagram, and their
//! translation across the NAT: the IPv6 counterpart of [`super::icmp`]. The error
//! quotes as much of the offending packet as fits in the minimum MTU (RFC 4443
//! section 2.4 (c)), so the quote must be rewritten as that packet was, or the
//! sender's kernel finds no socket for it and path-MTU discovery (which IPv6
//! routers never bypass by fragmenting) black-holes large segments.
//!
//! ```text
//! 0        14            54            62                    102              110
//! | Ethernet | outer IPv6 | ICMPv6 hdr  | quoted IPv6 header  | quoted L4 (8+) |
//!                          type code    src dst (the packet)   sport dport ...
//!                          checksum     as it was sent
//!                          mtu/pointer
//! ```
//!
//! Translated types (RFC 4443): destination unreachable (1), packet too big (2),
//! time exceeded (3), parameter problem (4; its pointer stays right, as no length
//! changes). Informational messages (echo, neighbour discovery: types >= 128) are
//! the host's.
//!
//! Two translations, as for ICMPv4:
//! - [`Icmpv6Error::rewrite_to_daemon`]: an error from the front about a reply
//!   (quote `VIP:port → client`) goes to the daemon: outer destination := daemon,
//!   quoted source := daemon address and port.
//! - [`Icmpv6Error::rewrite_to_client`]: an error from the back about a client's
//!   packet (quote `client → daemon:port`) goes to the client: outer source := VIP,
//!   quoted destination := VIP and service port.
//!
//! Both decrement the outer hop limit, as forwarding does, and update two checksums
//! incrementally (RFC 1624): the quoted TCP/UDP checksum when the quote holds it
//! whole (its pseudo-header holds the quoted address, its header the port), and the
//! ICMPv6 checksum. Unlike ICMPv4's, the ICMPv6 checksum covers a pseudo-header
//! (RFC 4443 section 2.3), so the outer address changed counts in it too: eight
//! words for it, eight for the quoted address, one for the port and one for the
//! quoted L4 checksum. Incrementally rather than by a fresh sum: [`Icmpv6Error::parse`]
//! has already verified the whole message (a corrupt error is dropped, not
//! "repaired"), the update is a constant 18 words where a fresh sum is a second
//! pass over up to 1232 bytes, and it is the ICMPv4 code's method, so both are
//! tested the same way. [`Icmpv6Error::truncate`] does sum afresh: it removes bytes.
//!
//! A quoted UDP checksum of 0 is left 0: IPv6 forbids it, so the quoted datagram
//! was never forwarded by dispatchd, and whoever sent it gets it back as it was.
//!
//! # Validation ([`Icmpv6Error::parse`], the first failing check is the [`Icmpv6Drop`])
//!
//! 1. shorter than Ethernet + IPv6 header: `Truncated`
//! 2. not IPv6 (ethertype, version): `NotIcmpv6`
//! 3. outer next header an extension header: `ExtensionHeader` (routers do not add
//!    them to their errors); any other but ICMPv6 (58): `NotIcmpv6`
//! 4. payload length below ICMPv6 header + quoted IPv6 header + 8 bytes, or beyond
//!    the frame: `Truncated`
//! 5. hop limit <= 1: `TtlExpired`
//! 6. ICMPv6 checksum over the pseudo-header and the whole message: `BadChecksum`
//! 7. type not 1-4: `NotAnError`
//! 8. quoted version != 6: `BadHeader`
//! 9. quoted next header an extension header: `ExtensionHeader` (dispatchd forwards
//!    none, so the quote is not about its traffic)
//! 10. quoted next header not TCP or UDP: `NotTcpOrUdp`
use std::net::{Ipv6Addr, SocketAddrV6};

use super::{
    checksum::{self, Incremental},
    ethernet,
    ipv6::{self, is_extension_header},
    tcp, udp, MacPair,
};

pub const TYPE_DEST_UNREACH: u8 = 1;
pub const TYPE_PACKET_TOO_BIG: u8 = 2;
pub const TYPE_TIME_EXCEEDED: u8 = 3;
pub const TYPE_PARAMETER_PROBLEM: u8 = 4;
/// Neighbour discovery (RFC 4861): never translated, always the host's.
pub const TYPE_ROUTER_SOLICIT: u8 = 133;
pub const TYPE_ROUTER_ADVERT: u8 = 134;
pub const TYPE_NEIGHBOR_SOLICIT: u8 = 135;
pub const TYPE_NEIGHBOR_ADVERT: u8 = 136;
/// Destination unreachable, port unreachable.
pub const CODE_PORT_UNREACH: u8 = 4;
/// Length of the ICMPv6 header (type, code, checksum, 4 bytes of MTU/pointer/unused).
pub const HEADER_LEN: usize = 8;
/// The largest IPv6 packet an error may be (RFC 4443 section 2.4 (c)): the
/// minimum MTU.
pub const MAX_ERROR_IP_LEN: usize = 1280;

const IP: usize = ethernet::HEADER_LEN;
const ICMP: usize = IP + ipv6::HEADER_LEN;
const QUOTE_IP: usize = ICMP + HEADER_LEN;
const QUOTE_L4: usize = QUOTE_IP + ipv6::HEADER_LEN;
/// Bytes of the quoted L4 header needed: the ports (and UDP's whole header).
const QUOTE_L4_MIN: usize = 8;
/// The shortest frame that is a translatable error.
pub const MIN_FRAME_LEN: usize = QUOTE_L4 + QUOTE_L4_MIN;

/// Why an ICMPv6 frame is not translated. One counter per variant.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Icmpv6Drop {
    Truncated,
    NotIcmpv6,
    /// The quoted header's version is not 6.
    BadHeader,
    /// An extension header in the outer packet or the quote.
    ExtensionHeader,
    TtlExpired,
    BadChecksum,
    NotAnError,
    NotTcpOrUdp,
}

impl Icmpv6Drop {
    /// Every variant, in discriminant order (`ALL[r.index()] == r`).
    pub const ALL: [Icmpv6Drop; 8] = [
        Icmpv6Drop::Truncated,
        Icmpv6Drop::NotIcmpv6,
        Icmpv6Drop::BadHeader,
        Icmpv6Drop::ExtensionHeader,
        Icmpv6Drop::TtlExpired,
        Icmpv6Drop::BadChecksum,
        Icmpv6Drop::NotAnError,
        Icmpv6Drop::NotTcpOrUdp,
    ];
    pub const COUNT: usize = Self::ALL.len();

    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }

    /// Stable snake_case label used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Icmpv6Drop::Truncated => "icmpv6_truncated",
            Icmpv6Drop::NotIcmpv6 => "icmpv6_not_icmpv6",
            Icmpv6Drop::BadHeader => "icmpv6_bad_header",
            Icmpv6Drop::ExtensionHeader => "icmpv6_extension_header",
            Icmpv6Drop::TtlExpired => "icmpv6_ttl_expired",
            Icmpv6Drop::BadChecksum => "icmpv6_bad_checksum",
            Icmpv6Drop::NotAnError => "icmpv6_not_an_error",
            Icmpv6Drop::NotTcpOrUdp => "icmpv6_not_tcp_or_udp",
        }
    }
}

impl std::fmt::Display for Icmpv6Drop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the ICMPv6 type is one whose quote is translated.
pub fn is_translated_error(icmp_type: u8) -> bool {
    matches!(
        icmp_type,
        TYPE_DEST_UNREACH | TYPE_PACKET_TOO_BIG | TYPE_TIME_EXCEEDED | TYPE_PARAMETER_PROBLEM
    )
}

#[inline(always)]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline(always)]
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline(always)]
fn be128(b: &[u8], at: usize) -> u128 {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    u128::from_be_bytes(a)
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn put128(b: &mut [u8], at: usize, v: u128) {
    b[at..at + 16].copy_from_slice(&v.to_be_bytes());
}

/// A validated ICMPv6 error about a TCP segment or UDP datagram, borrowed from a
/// frame.
///
/// # Invariants (established by [`Icmpv6Error::parse`], kept by every method)
///
/// `MIN_FRAME_LEN <= ip_end <= buf.len()`, with `ip_end = 54 + outer payload
/// length`; both IPv6 headers are the fixed 40 bytes, so every offset used is a
/// constant under `MIN_FRAME_LEN`, except the quoted TCP checksum, touched only when
/// `ip_end` covers it. No method can panic.
#[derive(Debug)]
pub struct Icmpv6Error<'a> {
    buf: &'a mut [u8],
    ip_end: usize,
    /// The quoted next header: TCP or UDP.
    quoted_proto: u8,
}

impl<'a> Icmpv6Error<'a> {
    /// Validates the frame once (see the module docs for the rules and their order).
    pub fn parse(buf: &'a mut [u8]) -> Result<Self, Icmpv6Drop> {
        if buf.len() < ICMP {
            return Err(Icmpv6Drop::Truncated);
        }
        let eth = ethernet::Frame::new_unchecked(&buf[..]);
        let ip = ipv6::Header::new_unchecked(&buf[IP..ICMP]);
        if eth.ethertype() != ethernet::ETHERTYPE_IPV6 || ip.version() != 6 {
            return Err(Icmpv6Drop::NotIcmpv6);
        }
        if is_extension_header(ip.next_header()) {
            return Err(Icmpv6Drop::ExtensionHeader);
        }
        if ip.next_header() != ipv6::NEXT_ICMPV6 {
            return Err(Icmpv6Drop::NotIcmpv6);
        }
        let payload = usize::from(ip.payload_len());
        if payload < MIN_FRAME_LEN - ICMP || payload > buf.len() - ICMP {
            return Err(Icmpv6Drop::Truncated);
        }
        if ip.hop_limit() <= 1 {
            return Err(Icmpv6Drop::TtlExpired);
        }
        let ip_end = ICMP + payload;
        let pseudo = checksum::pseudo_header_ipv6(
            ip.src_addr(),
            ip.dst_addr(),
            ipv6::NEXT_ICMPV6,
            payload as u32,
        );
        if checksum::fold(checksum::sum(&buf[ICMP..ip_end], pseudo)) != 0xFFFF {
            return Err(Icmpv6Drop::BadChecksum);
        }
        if !is_translated_error(buf[ICMP]) {
            return Err(Icmpv6Drop::NotAnError);
        }
        let quote = ipv6::Header::new_unchecked(&buf[QUOTE_IP..QUOTE_L4]);
        if quote.version() != 6 {
            return Err(Icmpv6Drop::BadHeader);
        }
        let quoted_proto = quote.next_header();
        if is_extension_header(quoted_proto) {
            return Err(Icmpv6Drop::ExtensionHeader);
        }
        if quoted_proto != ipv6::NEXT_TCP && quoted_proto != ipv6::NEXT_UDP {
            return Err(Icmpv6Drop::NotTcpOrUdp);
        }
        Ok(Self {
            buf,
            ip_end,
            quoted_proto,
        })
    }

    /// (type, code).
    pub fn kind(&self) -> (u8, u8) {
        (self.buf[ICMP], self.buf[ICMP + 1])
    }

    /// The MTU of a "packet too big" (RFC 4443 section 3.2), else `None`.
    pub fn mtu(&self) -> Option<u32> {
        (self.buf[ICMP] == TYPE_PACKET_TOO_BIG).then(|| be32(self.buf, ICMP + 4))
    }

    /// The quoted packet's next header: 6 (TCP) or 17 (UDP).
    pub fn quoted_protocol(&self) -> u8 {
        self.quoted_proto
    }

    fn addr(&self, at: usize) -> Ipv6Addr {
        Ipv6Addr::from(be128(self.buf, at))
    }

    /// Who sent the error.
    pub fn outer_src(&self) -> Ipv6Addr {
        self.addr(IP + ipv6::field::SRC_ADDR.start)
    }

    /// Who the error is for: the quoted packet's sender, as the network saw it.
    pub fn outer_dst(&self) -> Ipv6Addr {
        self.addr(IP + ipv6::field::DST_ADDR.start)
    }

    /// The quoted packet's source address and port.
    pub fn quoted_src(&self) -> SocketAddrV6 {
        SocketAddrV6::new(
            self.addr(QUOTE_IP + ipv6::field::SRC_ADDR.start),
            be16(self.buf, QUOTE_L4),
            0,
            0,
        )
    }

    /// The quoted packet's destination address and port.
    pub fn quoted_dst(&self) -> SocketAddrV6 {
        SocketAddrV6::new(
            self.addr(QUOTE_IP + ipv6::field::DST_ADDR.start),
            be16(self.buf, QUOTE_L4 + 2),
            0,
            0,
        )
    }

    /// The bytes of the frame that belong to the packet: what to copy.
    pub fn frame_len(&self) -> usize {
        self.ip_end
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.ip_end]
    }

    /// An error about a reply, from the front, for the daemon that sent it: outer
    /// destination := `daemon`'s address, quoted source := `daemon`, Ethernet
    /// addresses := `macs`, hop limit - 1.
    pub fn rewrite_to_daemon(&mut self, daemon: SocketAddrV6, macs: &MacPair) {
        let mut e = ethernet::Frame::new_unchecked(&mut self.buf[..]);
        e.set_src_addr(macs.src);
        e.set_dst_addr(macs.dst);
        self.translate(ipv6::field::DST_ADDR.start, Quoted::Src, daemon);
    }

    /// An error about a client's packet, from the back, for the client: outer
    /// source := the service's VIP, quoted destination := `service`, hop limit - 1.
    /// The Ethernet addresses are the caller's (from the FIB).
    pub fn rewrite_to_client(&mut self, service: SocketAddrV6) {
        self.translate(ipv6::field::SRC_ADDR.start, Quoted::Dst, service);
    }

    /// Shortens the message so that the frame is at most `max_frame_len` bytes,
    /// keeping the quoted headers (a smaller `max_frame_len` counts as
    /// [`MIN_FRAME_LEN`]); the ICMPv6 checksum is summed afresh over what is kept,
    /// sound because `parse` verified the whole message first.
    pub fn truncate(&mut self, max_frame_len: usize) {
        let end = max_frame_len.max(MIN_FRAME_LEN);
        if self.ip_end <= end {
            return;
        }
        self.ip_end = end;
        let payload = (end - ICMP) as u16;
        put16(self.buf, IP + ipv6::field::PAYLOAD_LEN.start, payload);
        put16(self.buf, ICMP + 2, 0);
        let ck = checksum::l4_checksum_ipv6(
            self.outer_src(),
            self.outer_dst(),
            ipv6::NEXT_ICMPV6,
            &self.buf[ICMP..end],
        );
        put16(self.buf, ICMP + 2, ck);
    }

    /// Rewrites the outer address at `outer` (offset in the outer IPv6 header) and
    /// the quoted endpoint `quoted` to `new`; decrements the hop limit.
    fn translate(&mut self, outer: usize, quoted: Quoted, new: SocketAddrV6) {
        let new_addr = u128::from(*new.ip());
        let new_port = new.port();
        let quoted_proto = self.quoted_proto;
        let ip_end = self.ip_end;
        let b = &mut *self.buf;

        // Outer header: one address (in the ICMPv6 pseudo-header) and the hop
        // limit (in no checksum).
        let old_outer = be128(b, IP + outer);
        put128(b, IP + outer, new_addr);
        let hop = IP + ipv6::field::HOP_LIMIT;
        b[hop] = b[hop].saturating_sub(1);
        let mut icmp_ck = Incremental::new(be16(b, ICMP + 2)).replace128(old_outer, new_addr);

        // The quote: an address, a port, and the L4 checksum when quoted whole.
        // Every offset is even from the ICMPv6 header, so each changed word is
        // one the checksum sums.
        let (addr_at, port_at) = match quoted {
            Quoted::Src => (ipv6::field::SRC_ADDR.start, 0),
            Quoted::Dst => (ipv6::field::DST_ADDR.start, 2),
        };
        let (addr_at, port_at) = (QUOTE_IP + addr_at, QUOTE_L4 + port_at);
        let old_addr = be128(b, addr_at);
        let old_port = be16(b, port_at);
        icmp_ck = icmp_ck
            .replace128(old_addr, new_addr)
            .replace16(old_port, new_port);
        let l4_ck_at = QUOTE_L4
            + if quoted_proto == ipv6::NEXT_TCP {
                tcp::field::CHECKSUM.start
            } else {
                udp::field::CHECKSUM.start
            };
        // A quote that ends inside the TCP checksum leaves it as it was (its
        // new high byte depends, by the carry, on the missing low byte).
        if ip_end >= l4_ck_at + 2 {
            let old_l4_ck = be16(b, l4_ck_at);
            let keep_zero = quoted_proto == ipv6::NEXT_UDP && old_l4_ck == 0;
            if !keep_zero {
                let mut new_l4_ck = Incremental::new(old_l4_ck)
                    .replace128(old_addr, new_addr)
                    .replace16(old_port, new_port)
                    .finish();
                if quoted_proto == ipv6::NEXT_UDP && new_l4_ck == 0 {
                    new_l4_ck = 0xFFFF;
                }
                put16(b, l4_ck_at, new_l4_ck);
                icmp_ck = icmp_ck.replace16(old_l4_ck, new_l4_ck);
            }
        }
        put128(b, addr_at, new_addr);
        put16(b, port_at, new_port);
        put16(b, ICMP + 2, icmp_ck.finish());
    }
}

/// Which quoted endpoint a translation rewrites.
#[derive(Clone, Copy)]
enum Quoted {
    Src,
    Dst,
}

#[cfg(test)]
mod tests;
