//! ICMPv4 error messages about a TCP segment, and their translation across the
//! NAT, as IPVS does it (`ip_vs_nat_icmp`): the error names the offending packet
//! by quoting its IPv4 header and the first 8 bytes of its TCP header, so the
//! quote must be rewritten exactly as that packet was, or the sender's kernel
//! finds no socket for it and path-MTU discovery black-holes large segments.
//!
//! ```text
//! 0        14            34          42                    62                70
//! | Ethernet | outer IPv4 | ICMP hdr  | quoted IPv4 header  | quoted TCP (8+) |
//!                          type code   src dst (the segment)  sport dport seq
//!                          checksum    as it was sent         [.. checksum ..]
//! ```
//!
//! Two translations:
//! - [`IcmpError::rewrite_to_daemon`]: an error from the front about a reply
//!   (quote `VIP:port → client`) goes to the daemon that sent it: outer
//!   destination := daemon, quoted source := daemon address and port.
//! - [`IcmpError::rewrite_to_client`]: an error from the back about a client's
//!   segment (quote `client → daemon:port`) goes to the client: outer source :=
//!   VIP, quoted destination := VIP and service port.
//!
//! Both decrement the outer TTL as forwarding does and update every checksum
//! incrementally (RFC 1624): the outer IPv4 header's, the quoted IPv4 header's,
//! the ICMP checksum (which covers the quote), and the quoted TCP checksum when
//! the quote holds it whole (bytes 16-17 of the TCP header; RFC 792 only
//! promises 8 bytes, Linux quotes up to 576 bytes in all). Updating that one
//! is not needed by any receiver (none verifies a quoted segment) but makes the
//! quote byte for byte the segment as its sender sent it, TTL aside.
//!
//! # Validation ([`IcmpError::parse`], the first failing check is the [`IcmpDrop`])
//!
//! 1. shorter than Ethernet + IPv4 header: `Truncated`
//! 2. not IPv4 (ethertype, version) or not ICMP: `NotIcmp`
//! 3. outer IHL < 5: `BadHeader`; IHL > 5: `IpOptions` (IPVS handles options;
//!    dispatchd never forwards packets with options, so an error about one is
//!    not about its traffic, and routers do not add options to their errors)
//! 4. outer MF or offset: `Fragment` (an error of at most 576 bytes is never
//!    fragmented)
//! 5. total length below outer + ICMP + quoted IPv4 header + 8 bytes, or beyond
//!    the frame: `Truncated`
//! 6. outer header checksum: `BadIpChecksum`; TTL <= 1: `TtlExpired`
//! 7. ICMP checksum over the whole message: `BadChecksum` (a corrupt error is
//!    dropped rather than "repaired" by the rewrite, as IPVS does)
//! 8. type not destination unreachable (3), time exceeded (11) or parameter
//!    problem (12): `NotAnError`. Source quench (4) is not translated: RFC 6633
//!    deprecated it and hosts ignore it (Linux's tcp_v4_err does).
//! 9. quoted version != 4 or IHL < 5: `BadHeader`; IHL > 5: `IpOptions`
//! 10. quoted protocol neither TCP nor UDP: `NotTcp` (the counter keeps its
//!     name); quoted offset != 0: `Fragment` (no ports to translate)
//!
//! A quoted UDP datagram's checksum sits in the 8 bytes every error carries:
//! it is always updated, except a 0 (no checksum), which stays 0.
use std::net::{Ipv4Addr, SocketAddrV4};

use super::{
    checksum::{self, Incremental},
    ethernet, ipv4, tcp, udp, MacPair,
};

/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
pub const TYPE_DEST_UNREACH: u8 = 3;
pub const TYPE_SOURCE_QUENCH: u8 = 4;
pub const TYPE_TIME_EXCEEDED: u8 = 11;
pub const TYPE_PARAMETER_PROBLEM: u8 = 12;
/// Destination unreachable, fragmentation needed and DF set (RFC 1191).
pub const CODE_FRAG_NEEDED: u8 = 4;
/// Length of the ICMP header (type, code, checksum, 4 bytes of rest).
pub const HEADER_LEN: usize = 8;
/// The largest IPv4 packet RFC 1812 lets a router's error be (and Linux's
/// icmp_send keeps to).
pub const MAX_ERROR_IP_LEN: usize = 576;

const IP: usize = ethernet::HEADER_LEN;
const ICMP: usize = IP + ipv4::HEADER_LEN;
const QUOTE_IP: usize = ICMP + HEADER_LEN;
const QUOTE_TCP: usize = QUOTE_IP + ipv4::HEADER_LEN;
/// Bytes of the quoted TCP header every error carries (RFC 792): the ports and
/// the sequence number.
const QUOTE_TCP_MIN: usize = 8;
/// The shortest frame that is a translatable error.
pub const MIN_FRAME_LEN: usize = QUOTE_TCP + QUOTE_TCP_MIN;
/// Where the quoted TCP checksum ends, in the frame.
const QUOTE_TCP_CHECKSUM_END: usize = QUOTE_TCP + tcp::field::CHECKSUM.end;

/// Why an ICMP frame is not translated. One counter per variant.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IcmpDrop {
    Truncated,
    NotIcmp,
    /// Outer or quoted header: version or IHL impossible.
    BadHeader,
    IpOptions,
    Fragment,
    BadIpChecksum,
    TtlExpired,
    BadChecksum,
    NotAnError,
    NotTcp,
}

impl IcmpDrop {
    /// Every variant, in discriminant order (`ALL[r.index()] == r`).
    pub const ALL: [IcmpDrop; 10] = [
        IcmpDrop::Truncated,
        IcmpDrop::NotIcmp,
        IcmpDrop::BadHeader,
        IcmpDrop::IpOptions,
        IcmpDrop::Fragment,
        IcmpDrop::BadIpChecksum,
        IcmpDrop::TtlExpired,
        IcmpDrop::BadChecksum,
        IcmpDrop::NotAnError,
        IcmpDrop::NotTcp,
    ];
    pub const COUNT: usize = Self::ALL.len();

    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }

    /// Stable snake_case label used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            IcmpDrop::Truncated => "icmp_truncated",
            IcmpDrop::NotIcmp => "icmp_not_icmp",
            IcmpDrop::BadHeader => "icmp_bad_header",
            IcmpDrop::IpOptions => "icmp_ip_options",
            IcmpDrop::Fragment => "icmp_fragment",
            IcmpDrop::BadIpChecksum => "icmp_bad_ip_checksum",
            IcmpDrop::TtlExpired => "icmp_ttl_expired",
            IcmpDrop::BadChecksum => "icmp_bad_checksum",
            IcmpDrop::NotAnError => "icmp_not_an_error",
            IcmpDrop::NotTcp => "icmp_not_tcp",
        }
    }
}

impl std::fmt::Display for IcmpDrop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The IP protocol a frame would have if it were IPv4, read without validating
/// anything: which parser to hand it to.
#[inline(always)]
pub fn peek_protocol(buf: &[u8]) -> Option<u8> {
    buf.get(IP + ipv4::field::PROTOCOL).copied()
}

/// Whether the ICMP type is one whose quote is translated.
pub fn is_translated_error(icmp_type: u8) -> bool {
    matches!(
        icmp_type,
        TYPE_DEST_UNREACH | TYPE_TIME_EXCEEDED | TYPE_PARAMETER_PROBLEM
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

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// A validated ICMP error about a TCP segment, borrowed from a frame.
///
/// # Invariants (established by [`IcmpError::parse`], kept by every method)
///
/// `MIN_FRAME_LEN <= ip_end <= buf.len()`, with `ip_end = 14 + outer total
/// length`; both IPv4 headers are 20 bytes, so every field offset used below is
/// a constant under `MIN_FRAME_LEN`, except the quoted TCP checksum, which is
/// only touched when `ip_end` covers it. No method can panic.
#[derive(Debug)]
pub struct IcmpError<'a> {
    buf: &'a mut [u8],
    ip_end: usize,
}

impl<'a> IcmpError<'a> {
    /// Validates the frame once (see the module docs for the rules and their order).
    pub fn parse(buf: &'a mut [u8]) -> Result<Self, IcmpDrop> {
        if buf.len() < ICMP {
            return Err(IcmpDrop::Truncated);
        }
        let eth = ethernet::Frame::new_unchecked(&buf[..]);
        let ip = ipv4::Header::new_unchecked(&buf[IP..ICMP]);
        if eth.ethertype() != ethernet::ETHERTYPE_IPV4
            || ip.version() != 4
            || ip.protocol() != PROTO_ICMP
        {
            return Err(IcmpDrop::NotIcmp);
        }
        check_ihl(ip.ihl())?;
        if ip.more_frags() || ip.frag_offset() != 0 {
            return Err(IcmpDrop::Fragment);
        }
        let total = usize::from(ip.total_len());
        if total < MIN_FRAME_LEN - IP || total > buf.len() - IP {
            return Err(IcmpDrop::Truncated);
        }
        if !ip.verify_checksum() {
            return Err(IcmpDrop::BadIpChecksum);
        }
        if ip.ttl() <= 1 {
            return Err(IcmpDrop::TtlExpired);
        }
        let ip_end = IP + total;
        if !checksum::verify(&buf[ICMP..ip_end]) {
            return Err(IcmpDrop::BadChecksum);
        }
        if !is_translated_error(buf[ICMP]) {
            return Err(IcmpDrop::NotAnError);
        }
        let quote = ipv4::Header::new_unchecked(&buf[QUOTE_IP..QUOTE_TCP]);
        if quote.version() != 4 {
            return Err(IcmpDrop::BadHeader);
        }
        check_ihl(quote.ihl())?;
        if quote.protocol() != ipv4::PROTO_TCP && quote.protocol() != ipv4::PROTO_UDP {
            return Err(IcmpDrop::NotTcp);
        }
        if quote.frag_offset() != 0 {
            return Err(IcmpDrop::Fragment);
        }
        Ok(Self { buf, ip_end })
    }

    /// (type, code).
    pub fn kind(&self) -> (u8, u8) {
        (self.buf[ICMP], self.buf[ICMP + 1])
    }

    /// The next-hop MTU of a "fragmentation needed" (RFC 1191), else `None`.
    pub fn mtu(&self) -> Option<u16> {
        (self.kind() == (TYPE_DEST_UNREACH, CODE_FRAG_NEEDED)).then(|| be16(self.buf, ICMP + 6))
    }

    fn addr(&self, at: usize) -> Ipv4Addr {
        Ipv4Addr::from(be32(self.buf, at))
    }

    /// Who sent the error.
    pub fn outer_src(&self) -> Ipv4Addr {
        self.addr(IP + ipv4::field::SRC_ADDR.start)
    }

    /// Who the error is for: the quoted segment's sender, as the network saw it.
    pub fn outer_dst(&self) -> Ipv4Addr {
        self.addr(IP + ipv4::field::DST_ADDR.start)
    }

    /// The quoted packet's protocol: TCP or UDP.
    pub fn quoted_protocol(&self) -> u8 {
        self.buf[QUOTE_IP + ipv4::field::PROTOCOL]
    }

    /// The quoted segment's source address and port.
    pub fn quoted_src(&self) -> SocketAddrV4 {
        SocketAddrV4::new(
            self.addr(QUOTE_IP + ipv4::field::SRC_ADDR.start),
            be16(self.buf, QUOTE_TCP + tcp::field::SRC_PORT.start),
        )
    }

    /// The quoted segment's destination address and port.
    pub fn quoted_dst(&self) -> SocketAddrV4 {
        SocketAddrV4::new(
            self.addr(QUOTE_IP + ipv4::field::DST_ADDR.start),
            be16(self.buf, QUOTE_TCP + tcp::field::DST_PORT.start),
        )
    }

    /// The bytes of the frame that belong to the packet: what to copy.
    pub fn frame_len(&self) -> usize {
        self.ip_end
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.ip_end]
    }

    /// An error about a reply, from the front, for the daemon that sent the
    /// reply: outer destination := `daemon`'s address, quoted source := `daemon`,
    /// Ethernet addresses := `macs`, TTL - 1.
    pub fn rewrite_to_daemon(&mut self, daemon: SocketAddrV4, macs: &MacPair) {
        let mut e = ethernet::Frame::new_unchecked(&mut self.buf[..]);
        e.set_src_addr(macs.src);
        e.set_dst_addr(macs.dst);
        self.translate(ipv4::field::DST_ADDR.start, Quoted::Src, daemon);
    }

    /// An error about a client's segment, from the back, for the client: outer
    /// source := the service's VIP, quoted destination := `service`, TTL - 1.
    /// The Ethernet addresses are the caller's (the XDP program set them from
    /// the kernel's FIB).
    pub fn rewrite_to_client(&mut self, service: SocketAddrV4) {
        self.translate(ipv4::field::SRC_ADDR.start, Quoted::Dst, service);
    }

    /// Shortens the message so that the frame is at most `max_frame_len` bytes,
    /// keeping the quoted headers (a `max_frame_len` below [`MIN_FRAME_LEN`]
    /// counts as that). The ICMP checksum is recomputed over what is kept, which
    /// is sound only because `parse` verified the whole message first.
    pub fn truncate(&mut self, max_frame_len: usize) {
        let end = max_frame_len.max(MIN_FRAME_LEN);
        if self.ip_end <= end {
            return;
        }
        self.ip_end = end;
        let total = (end - IP) as u16;
        let old_total = be16(self.buf, IP + ipv4::field::LENGTH.start);
        let ip_ck = Incremental::new(be16(self.buf, IP + ipv4::field::CHECKSUM.start))
            .replace16(old_total, total)
            .finish();
        put16(self.buf, IP + ipv4::field::LENGTH.start, total);
        put16(self.buf, IP + ipv4::field::CHECKSUM.start, ip_ck);
        put16(self.buf, ICMP + 2, 0);
        let icmp_ck = checksum::checksum(&self.buf[ICMP..end]);
        put16(self.buf, ICMP + 2, icmp_ck);
    }

    /// Rewrites the outer address at `outer` (offset in the outer IPv4 header)
    /// and the quoted endpoint `quoted` to `new`; decrements the TTL.
    fn translate(&mut self, outer: usize, quoted: Quoted, new: SocketAddrV4) {
        let new_addr = u32::from(*new.ip());
        let new_port = new.port();
        let b = &mut *self.buf;

        // Outer IPv4 header: one address and the TTL.
        let old_outer = be32(b, IP + outer);
        let ttl_word = be16(b, IP + ipv4::field::TTL);
        let new_ttl_word = u16::from_be_bytes([
            b[IP + ipv4::field::TTL].saturating_sub(1),
            b[IP + ipv4::field::PROTOCOL],
        ]);
        let outer_ck = Incremental::new(be16(b, IP + ipv4::field::CHECKSUM.start))
            .replace32(old_outer, new_addr)
            .replace16(ttl_word, new_ttl_word)
            .finish();
        put32(b, IP + outer, new_addr);
        put16(b, IP + ipv4::field::TTL, new_ttl_word);
        put16(b, IP + ipv4::field::CHECKSUM.start, outer_ck);

        // The quote: an address, its header checksum, a port, and the TCP
        // checksum when quoted. Every word changed inside the ICMP message goes
        // into the ICMP checksum too. All offsets are even from the ICMP header,
        // so the words are the ones the checksum sums.
        let (addr_at, port_at) = match quoted {
            Quoted::Src => (ipv4::field::SRC_ADDR.start, tcp::field::SRC_PORT.start),
            Quoted::Dst => (ipv4::field::DST_ADDR.start, tcp::field::DST_PORT.start),
        };
        let (addr_at, port_at) = (QUOTE_IP + addr_at, QUOTE_TCP + port_at);
        let quote_ck_at = QUOTE_IP + ipv4::field::CHECKSUM.start;
        let old_addr = be32(b, addr_at);
        let old_port = be16(b, port_at);
        let old_quote_ck = be16(b, quote_ck_at);
        let new_quote_ck = Incremental::new(old_quote_ck)
            .replace32(old_addr, new_addr)
            .finish();
        let mut icmp_ck = Incremental::new(be16(b, ICMP + 2))
            .replace32(old_addr, new_addr)
            .replace16(old_port, new_port)
            .replace16(old_quote_ck, new_quote_ck);
        // The quoted TCP checksum, if the quote holds it whole. A quote that
        // ends between its two bytes leaves the first one as it was: the new
        // value's high byte depends, by the carry, on the low byte, which is
        // not there. A UDP checksum is always there (in the first 8 bytes);
        // a 0 there means none was sent, and stays.
        let l4_ck_at = if b[QUOTE_IP + ipv4::field::PROTOCOL] == ipv4::PROTO_UDP {
            Some(QUOTE_TCP + udp::field::CHECKSUM.start).filter(|&at| be16(b, at) != 0)
        } else {
            (self.ip_end >= QUOTE_TCP_CHECKSUM_END)
                .then_some(QUOTE_TCP + tcp::field::CHECKSUM.start)
        };
        if let Some(at) = l4_ck_at {
            let old_l4_ck = be16(b, at);
            // The L4 checksum covers the address (pseudo-header) and the port.
            let mut new_l4_ck = Incremental::new(old_l4_ck)
                .replace32(old_addr, new_addr)
                .replace16(old_port, new_port)
                .finish();
            // RFC 768: a computed 0 is sent as all ones, 0 meaning none.
            if new_l4_ck == 0 && at == QUOTE_TCP + udp::field::CHECKSUM.start {
                new_l4_ck = 0xffff;
            }
            put16(b, at, new_l4_ck);
            icmp_ck = icmp_ck.replace16(old_l4_ck, new_l4_ck);
        }
        put32(b, addr_at, new_addr);
        put16(b, port_at, new_port);
        put16(b, quote_ck_at, new_quote_ck);
        put16(b, ICMP + 2, icmp_ck.finish());
    }
}

/// Which quoted endpoint a translation rewrites.
#[derive(Clone, Copy)]
enum Quoted {
    Src,
    Dst,
}

fn check_ihl(ihl: u8) -> Result<(), IcmpDrop> {
    match ihl {
        0..=4 => Err(IcmpDrop::BadHeader),
        5 => Ok(()),
        _ => Err(IcmpDrop::IpOptions),
    }
}

#[cfg(test)]
mod tests;
