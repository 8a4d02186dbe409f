//! IPv6: the fixed header view (smoltcp style) and [`L4Frame6`], a validated
//! Ethernet + IPv6 + TCP/UDP frame with the NAT rewrites the dataplane needs, the
//! IPv6 counterpart of [`super::L4Frame`]. The TCP and UDP views, the MSS clamp and
//! the incremental checksum are the IPv4 path's own; what differs is the network
//! header: no header checksum (a rewrite changes only the hop limit there), and a
//! pseudo-header with 128-bit addresses, so an address change is eight words in the
//! TCP/UDP checksum instead of two.
//!
//! # Validation policy ([`L4Frame6::parse`], in order; the first failing check is the
//! [`DropReason`])
//!
//! 1. frame shorter than 14 bytes: `TruncatedEthernet`
//! 2. ethertype `0x8100`/`0x88a8`: `VlanTagged`; anything but `0x86dd`: `NotIpv6`
//! 3. frame shorter than 14 + 40: `TruncatedIpv6`
//! 4. version != 6: `BadIpVersion`
//! 5. payload length > frame length - 54: `Ipv6PayloadLengthBeyondFrame`. A longer
//!    frame is Ethernet padding, never read nor covered by a checksum. A payload
//!    length of 0 (a jumbogram's, which needs a hop-by-hop header, so step 7 drops it
//!    first) or too short for the L4 header is the L4-specific `Truncated*` below.
//! 6. hop limit <= 1: `TtlExpired` (forwarding would have to decrement it to 0)
//! 7. next header an extension header (hop-by-hop 0, routing 43, fragment 44, ESP 50,
//!    AH 51, destination options 60, mobility 135, HIP 139, shim6 140, experimental
//!    253/254): `Ipv6ExtensionHeader`. Dropped by policy, counted: walking them on the
//!    hot path costs a loop per frame for traffic real clients do not send to a
//!    service (fragments aside, which TCP avoids by PMTU discovery and which would
//!    have to be reassembled to find the ports anyway), and a routing header would
//!    name addresses the rewrite leaves alone. "No next header" (59) and anything
//!    else not TCP/UDP: `UnsupportedProtocol`.
//! 8. TCP with payload < 20: `TruncatedTcp`; data offset < 5: `TcpOffsetTooSmall`;
//!    past the payload: `TcpOffsetPastEnd`
//! 9. UDP with payload < 8: `TruncatedUdp`; UDP length < 8 or > payload:
//!    `BadUdpLength`; checksum 0: `Udp6ZeroChecksum`. IPv6 has no header checksum, so
//!    the UDP checksum is mandatory (RFC 8200 section 8.1: a receiver discards a
//!    zero one; the RFC 6935 exception is for tunnels, which a service is not). A
//!    forwarded zero checksum would be dropped by the daemon's kernel anyway;
//!    dropping it here counts it where the operator can see it.
//!
//! TCP/UDP checksums are not verified, as on the IPv4 path: an incremental update
//! keeps a wrong checksum wrong, so the end host still drops a corrupt segment.

use std::net::{Ipv6Addr, SocketAddrV6};

use super::{checksum::Incremental, ethernet, tcp, udp, DropReason, L4Proto, MacPair, TcpFlags};

/// Byte offsets/ranges of the fixed IPv6 header.
pub(crate) mod field {
    use core::ops::Range;
    /// Version (4 bits), traffic class (8), flow label (20) fill bytes 0..4.
    pub const PAYLOAD_LEN: Range<usize> = 4..6;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: Range<usize> = 8..24;
    pub const DST_ADDR: Range<usize> = 24..40;
}

/// Length of the fixed IPv6 header.
pub const HEADER_LEN: usize = 40;

/// Next header values (IANA "Assigned Internet Protocol Numbers").
pub const NEXT_HOP_BY_HOP: u8 = 0;
pub const NEXT_TCP: u8 = 6;
pub const NEXT_UDP: u8 = 17;
pub const NEXT_ROUTING: u8 = 43;
pub const NEXT_FRAGMENT: u8 = 44;
pub const NEXT_ESP: u8 = 50;
pub const NEXT_AH: u8 = 51;
pub const NEXT_ICMPV6: u8 = 58;
pub const NEXT_NONE: u8 = 59;
pub const NEXT_DEST_OPTS: u8 = 60;
pub const NEXT_MOBILITY: u8 = 135;
pub const NEXT_HIP: u8 = 139;
pub const NEXT_SHIM6: u8 = 140;
pub const NEXT_EXPERIMENT1: u8 = 253;
pub const NEXT_EXPERIMENT2: u8 = 254;

/// Whether `next_header` names an IPv6 extension header (RFC 8200 section 4 and
/// the IANA "IPv6 Extension Header Types" registry). ESP is counted as one: what
/// follows it is encrypted, so there are no ports to steer by either way. The
/// XDP program's `ipv6_ext_header` in bpf/steer.bpf.c keeps the same list.
#[inline(always)]
pub fn is_extension_header(next_header: u8) -> bool {
    matches!(
        next_header,
        NEXT_HOP_BY_HOP
            | NEXT_ROUTING
            | NEXT_FRAGMENT
            | NEXT_ESP
            | NEXT_AH
            | NEXT_DEST_OPTS
            | NEXT_MOBILITY
            | NEXT_HIP
            | NEXT_SHIM6
            | NEXT_EXPERIMENT1
            | NEXT_EXPERIMENT2
    )
}

/// A view over an IPv6 header. Invariant: `buffer.len() >= HEADER_LEN`, so no
/// accessor can panic. Nothing else is assumed about the contents.
#[derive(Debug)]
pub struct Header<T: AsRef<[u8]>> {
    buffer: T,
}

#[inline(always)]
fn addr(b: &[u8], at: usize) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    Ipv6Addr::from(a)
}

impl<T: AsRef<[u8]>> Header<T> {
    /// Wraps `buffer` (from the start of the IPv6 header to the end of the frame)
    /// after checking that it holds the fixed header.
    #[inline(always)]
    pub fn new_checked(buffer: T) -> Result<Self, DropReason> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(DropReason::TruncatedIpv6);
        }
        Ok(Self { buffer })
    }

    /// Caller guarantees `buffer.len() >= HEADER_LEN`.
    #[inline(always)]
    pub(crate) fn new_unchecked(buffer: T) -> Self {
        debug_assert!(buffer.as_ref().len() >= HEADER_LEN);
        Self { buffer }
    }

    #[inline(always)]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline(always)]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }

    #[inline(always)]
    pub fn traffic_class(&self) -> u8 {
        let b = self.buffer.as_ref();
        (b[0] << 4) | (b[1] >> 4)
    }

    #[inline(always)]
    pub fn flow_label(&self) -> u32 {
        let b = self.buffer.as_ref();
        u32::from_be_bytes([0, b[1] & 0x0f, b[2], b[3]])
    }

    /// Bytes after the fixed header: extension headers and upper-layer data.
    #[inline(always)]
    pub fn payload_len(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[field::PAYLOAD_LEN.start], b[field::PAYLOAD_LEN.start + 1]])
    }

    #[inline(always)]
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    #[inline(always)]
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    #[inline(always)]
    pub fn src_addr(&self) -> Ipv6Addr {
        addr(self.buffer.as_ref(), field::SRC_ADDR.start)
    }

    #[inline(always)]
    pub fn dst_addr(&self) -> Ipv6Addr {
        addr(self.buffer.as_ref(), field::DST_ADDR.start)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Header<T> {
    #[inline(always)]
    pub fn set_hop_limit(&mut self, value: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = value;
    }

    #[inline(always)]
    pub fn set_src_addr(&mut self, value: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&value.octets());
    }

    #[inline(always)]
    pub fn set_dst_addr(&mut self, value: Ipv6Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&value.octets());
    }
}

/// Offset of the IPv6 header in the frame.
const IP_OFFSET: usize = ethernet::HEADER_LEN;
/// Offset of the L4 header (no extension headers once validated).
const L4_OFFSET: usize = IP_OFFSET + HEADER_LEN;

/// Which endpoint a rewrite changes.
#[derive(Clone, Copy)]
enum Side {
    Src,
    Dst,
}

/// A validated Ethernet + IPv6 + TCP/UDP frame, borrowed mutably from a UMEM frame.
///
/// # Invariants (established by [`L4Frame6::parse`], never changed afterwards)
///
/// * `L4_OFFSET + min_l4_header(proto) <= ip_end <= buf.len()`, where `ip_end` is
///   `54 + payload length` and `min_l4_header` is 20 (TCP) or 8 (UDP).
/// * The next header is TCP or UDP, so L4 starts at 54.
/// * For TCP, `data offset * 4` lies in `20..=ip_end - 54`; for UDP the length
///   field lies in `8..=ip_end - 54` and the checksum is not 0.
///
/// Rewrites change only addresses, ports, the hop limit and checksums, so the
/// invariants hold for the lifetime of the value and no method can panic.
#[derive(Debug)]
pub struct L4Frame6<'a> {
    buf: &'a mut [u8],
    proto: L4Proto,
    /// `54 + payload length`: end of the bytes covered by the IPv6 packet.
    ip_end: usize,
}

impl<'a> L4Frame6<'a> {
    /// Validates the frame once (see the module docs for the rules and their order).
    #[inline(always)]
    pub fn parse(buf: &'a mut [u8]) -> Result<Self, DropReason> {
        let eth = ethernet::Frame::new_checked(&buf[..])?;
        match eth.ethertype() {
            ethernet::ETHERTYPE_IPV6 => {}
            ethernet::ETHERTYPE_VLAN | ethernet::ETHERTYPE_QINQ => {
                return Err(DropReason::VlanTagged)
            }
            _ => return Err(DropReason::NotIpv6),
        }
        let ip = Header::new_checked(&buf[IP_OFFSET..])?;
        // buf.len() >= 54 from here.
        if ip.version() != 6 {
            return Err(DropReason::BadIpVersion);
        }
        let payload = usize::from(ip.payload_len());
        if payload > buf.len() - L4_OFFSET {
            return Err(DropReason::Ipv6PayloadLengthBeyondFrame);
        }
        if ip.hop_limit() <= 1 {
            return Err(DropReason::TtlExpired);
        }
        let next = ip.next_header();
        if is_extension_header(next) {
            return Err(DropReason::Ipv6ExtensionHeader);
        }
        let proto = L4Proto::from_number(next).ok_or(DropReason::UnsupportedProtocol)?;
        let ip_end = L4_OFFSET + payload;
        let l4 = &buf[L4_OFFSET..ip_end];
        match proto {
            L4Proto::Tcp => {
                tcp::Segment::new_checked(l4)?;
            }
            L4Proto::Udp => {
                if udp::Datagram::new_checked(l4)?.checksum() == 0 {
                    return Err(DropReason::Udp6ZeroChecksum);
                }
            }
        }
        Ok(Self { buf, proto, ip_end })
    }

    #[inline(always)]
    fn ip(&self) -> Header<&[u8]> {
        Header::new_unchecked(&self.buf[IP_OFFSET..L4_OFFSET])
    }

    #[inline(always)]
    fn ip_mut(&mut self) -> Header<&mut [u8]> {
        Header::new_unchecked(&mut self.buf[IP_OFFSET..L4_OFFSET])
    }

    /// The IP payload (L4 header + data), up to the payload length.
    #[inline(always)]
    fn l4(&self) -> &[u8] {
        &self.buf[L4_OFFSET..self.ip_end]
    }

    #[inline(always)]
    fn l4_mut(&mut self) -> &mut [u8] {
        &mut self.buf[L4_OFFSET..self.ip_end]
    }

    /// (source port, destination port): the first four bytes of TCP and UDP alike.
    #[inline(always)]
    fn ports(&self) -> (u16, u16) {
        let l4 = self.l4();
        (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        )
    }

    #[inline(always)]
    pub fn protocol(&self) -> L4Proto {
        self.proto
    }

    /// IPv6 source + L4 source port (flow label and scope 0: neither is part of a
    /// flow's identity here).
    #[inline(always)]
    pub fn src(&self) -> SocketAddrV6 {
        SocketAddrV6::new(self.ip().src_addr(), self.ports().0, 0, 0)
    }

    /// IPv6 destination + L4 destination port.
    #[inline(always)]
    pub fn dst(&self) -> SocketAddrV6 {
        SocketAddrV6::new(self.ip().dst_addr(), self.ports().1, 0, 0)
    }

    pub fn hop_limit(&self) -> u8 {
        self.ip().hop_limit()
    }

    /// The IPv6 payload length: bytes after the fixed header that belong to the
    /// packet (the rest of the frame, if any, is padding).
    pub fn payload_len(&self) -> u16 {
        // ip_end - 54 came from a u16.
        (self.ip_end - L4_OFFSET) as u16
    }

    /// TCP flags; empty for UDP.
    #[inline(always)]
    pub fn tcp_flags(&self) -> TcpFlags {
        match self.proto {
            L4Proto::Tcp => tcp::Segment::new_unchecked(self.l4()).flags(),
            L4Proto::Udp => TcpFlags::default(),
        }
    }

    /// As [`L4Frame::tcp_seq_next`](super::L4Frame::tcp_seq_next).
    #[inline(always)]
    pub fn tcp_seq_next(&self) -> (u32, u32) {
        if self.proto != L4Proto::Tcp {
            return (0, 0);
        }
        let seg = tcp::Segment::new_unchecked(self.l4());
        let seq = seg.seq_number();
        let flags = seg.flags();
        let len = self.l4().len() - seg.header_len();
        let next = seq
            .wrapping_add(len as u32)
            .wrapping_add(u32::from(flags.syn()))
            .wrapping_add(u32::from(flags.fin()));
        (seq, next)
    }

    /// The TCP acknowledgment number; 0 for UDP.
    #[inline(always)]
    pub fn tcp_ack(&self) -> u32 {
        match self.proto {
            L4Proto::Tcp => tcp::Segment::new_unchecked(self.l4()).ack_number(),
            L4Proto::Udp => 0,
        }
    }

    /// The TCP/UDP checksum field (never 0 for UDP: `parse` drops that).
    pub fn l4_checksum(&self) -> u16 {
        match self.proto {
            L4Proto::Tcp => tcp::Segment::new_unchecked(self.l4()).checksum(),
            L4Proto::Udp => udp::Datagram::new_unchecked(self.l4()).checksum(),
        }
    }

    /// Whether the TCP/UDP checksum is right, by a full computation over the
    /// segment and the IPv6 pseudo-header (a pass over the payload: for a
    /// connection's first segment only, as on the IPv4 path).
    pub fn l4_checksum_ok(&self) -> bool {
        let ip = self.ip();
        let mut segment = self.l4();
        if self.proto == L4Proto::Udp {
            // Only the UDP length is covered, as on the IPv4 path.
            let len = usize::from(udp::Datagram::new_unchecked(segment).len());
            segment = &segment[..len.min(segment.len())];
        }
        let pseudo = super::checksum::pseudo_header_ipv6(
            ip.src_addr(),
            ip.dst_addr(),
            self.proto.number(),
            segment.len() as u32,
        );
        super::checksum::fold(super::checksum::sum(segment, pseudo)) == 0xFFFF
    }

    /// The L4 payload: after the TCP header up to the payload length, or after the
    /// UDP header up to the UDP length.
    pub fn l4_payload(&self) -> &[u8] {
        let l4 = self.l4();
        match self.proto {
            L4Proto::Tcp => &l4[tcp::Segment::new_unchecked(l4).header_len()..],
            L4Proto::Udp => {
                let len = usize::from(udp::Datagram::new_unchecked(l4).len());
                &l4[udp::HEADER_LEN..len]
            }
        }
    }

    /// Lowers a TCP MSS option larger than `max` to `max` (the IPv4 path's clamp:
    /// the option and its checksum words do not depend on the IP version); true if
    /// it did. Nothing for UDP.
    pub fn clamp_mss(&mut self, max: u16) -> bool {
        self.proto == L4Proto::Tcp && tcp::clamp_mss(self.l4_mut(), max)
    }

    pub fn macs(&self) -> MacPair {
        let e = ethernet::Frame::new_unchecked(&self.buf[..]);
        MacPair {
            src: e.src_addr(),
            dst: e.dst_addr(),
        }
    }

    #[inline(always)]
    pub fn set_macs(&mut self, macs: &MacPair) {
        let mut e = ethernet::Frame::new_unchecked(&mut self.buf[..]);
        e.set_src_addr(macs.src);
        e.set_dst_addr(macs.dst);
    }

    /// DNAT: destination address + port := `new_dst`, hop limit -= 1, L4 checksum
    /// updated incrementally.
    #[inline(always)]
    pub fn rewrite_dst(&mut self, new_dst: SocketAddrV6) {
        self.rewrite(Side::Dst, new_dst);
    }

    /// Reverse NAT: source address + port := `new_src`, hop limit -= 1, L4
    /// checksum updated incrementally.
    #[inline(always)]
    pub fn rewrite_src(&mut self, new_src: SocketAddrV6) {
        self.rewrite(Side::Src, new_src);
    }

    /// [`set_macs`](Self::set_macs) + [`rewrite_dst`](Self::rewrite_dst).
    #[inline(always)]
    pub fn rewrite_forward(&mut self, new_dst: SocketAddrV6, macs: &MacPair) {
        self.set_macs(macs);
        self.rewrite_dst(new_dst);
    }

    /// [`set_macs`](Self::set_macs) + [`rewrite_src`](Self::rewrite_src).
    #[inline(always)]
    pub fn rewrite_reverse(&mut self, new_src: SocketAddrV6, macs: &MacPair) {
        self.set_macs(macs);
        self.rewrite_src(new_src);
    }

    /// The whole buffer given to [`parse`](Self::parse), padding included.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> &'a mut [u8] {
        self.buf
    }

    /// Rewrites one endpoint and decrements the hop limit (`parse` guarantees >= 2;
    /// repeated rewrites saturate at 0). The hop limit is in no checksum: IPv6 has
    /// no header checksum and the pseudo-header leaves it out.
    #[inline(always)]
    fn rewrite(&mut self, side: Side, new: SocketAddrV6) {
        let ip = self.ip();
        let old_addr = match side {
            Side::Src => ip.src_addr(),
            Side::Dst => ip.dst_addr(),
        };
        let new_addr = *new.ip();
        let new_hop_limit = ip.hop_limit().saturating_sub(1);
        let mut ip = self.ip_mut();
        match side {
            Side::Src => ip.set_src_addr(new_addr),
            Side::Dst => ip.set_dst_addr(new_addr),
        }
        ip.set_hop_limit(new_hop_limit);

        let (sp, dp) = self.ports();
        let old_port = match side {
            Side::Src => sp,
            Side::Dst => dp,
        };
        let new_port = new.port();
        let l4_update = |ck: u16| {
            Incremental::new(ck)
                .replace128(u128::from(old_addr), u128::from(new_addr))
                .replace16(old_port, new_port)
                .finish()
        };
        match self.proto {
            L4Proto::Tcp => {
                let mut s = tcp::Segment::new_unchecked(self.l4_mut());
                let ck = l4_update(s.checksum());
                match side {
                    Side::Src => s.set_src_port(new_port),
                    Side::Dst => s.set_dst_port(new_port),
                }
                s.set_checksum(ck);
            }
            L4Proto::Udp => {
                let mut d = udp::Datagram::new_unchecked(self.l4_mut());
                // Never 0 here (`parse`); a computed 0 is sent as 0xFFFF, as a
                // 0 on the wire would mean "none", which IPv6 forbids.
                let ck = match l4_update(d.checksum()) {
                    0 => 0xFFFF,
                    c => c,
                };
                match side {
                    Side::Src => d.set_src_port(new_port),
                    Side::Dst => d.set_dst_port(new_port),
                }
                d.set_checksum(ck);
            }
        }
    }
}

/// The (source, destination, next header) a frame would have if it were a valid
/// IPv6 TCP/UDP frame without extension headers, read without validating anything:
/// a prefetch hint, as [`peek_endpoints`](super::peek_endpoints) is for IPv4.
#[inline(always)]
pub fn peek_endpoints6(buf: &[u8]) -> Option<(SocketAddrV6, SocketAddrV6, u8)> {
    let h = buf.get(..L4_OFFSET + 4)?;
    let port = |at: usize| u16::from_be_bytes([h[at], h[at + 1]]);
    let ip = IP_OFFSET;
    Some((
        SocketAddrV6::new(addr(h, ip + field::SRC_ADDR.start), port(L4_OFFSET), 0, 0),
        SocketAddrV6::new(
            addr(h, ip + field::DST_ADDR.start),
            port(L4_OFFSET + 2),
            0,
            0,
        ),
        h[ip + field::NEXT_HEADER],
    ))
}

#[cfg(test)]
mod tests;
