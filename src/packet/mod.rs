//! Packet core: zero-copy, allocation-free, panic-free views over Ethernet II + IPv4 +
//! TCP/UDP frames and the in-place NAT rewrites done by the workers.
//!
//! Modelled on smoltcp's `wire` module: each header has a view type over a byte buffer
//! with a private `field` module of byte ranges, a `new_checked` constructor that
//! validates lengths once, and accessors that index only inside the validated length.
//! [`L4Frame`] composes the views: [`L4Frame::parse`] validates everything once, and
//! every later accessor/rewrite touches only bytes inside the validated prefix.
//!
//! Checksums are updated incrementally (RFC 1624, see [`checksum`]); the result is
//! bit-for-bit what a full recomputation gives.
//!
//! # Validation policy (in order; the first failing check is the [`DropReason`])
//!
//! 1. frame shorter than 14 bytes: `TruncatedEthernet`
//! 2. ethertype `0x8100`/`0x88a8`: `VlanTagged`; `0x86dd`: `Ipv6`; anything but
//!    `0x0800`: `NotIpv4`
//! 3. frame shorter than 14 + 20: `TruncatedIpv4`
//! 4. version != 4: `BadIpVersion`; IHL < 5: `IhlTooSmall`; IHL > 5: `IpOptions` (by
//!    policy we never rewrite packets carrying IP options: they are rare, often
//!    suspicious, and some (source route, record route) would need rewriting too)
//! 5. MF flag set or fragment offset != 0: `Fragment` (non-first fragments carry no
//!    ports; first fragments would be rewritten without their tail). DF is ignored.
//! 6. total length < 20 (smaller than the IP header itself): `TotalLengthTooSmall`
//! 7. total length > frame length - 14: `TotalLengthBeyondFrame`. A frame longer than
//!    14 + total length is fine (Ethernet padding); bytes past the total length are
//!    never read, never covered by a checksum and left untouched.
//! 8. IPv4 header checksum wrong: `BadIpChecksum` (both `0x0000` and `0xFFFF` are
//!    accepted as representations of a zero checksum)
//! 9. TTL <= 1: `TtlExpired` (forwarding would have to decrement it to 0)
//! 10. protocol not TCP (6) or UDP (17): `UnsupportedProtocol`
//! 11. TCP, with "IP payload" = total length - 20: payload < 20 bytes: `TruncatedTcp`;
//!     data offset < 5: `TcpOffsetTooSmall`; data offset * 4 > payload: `TcpOffsetPastEnd`
//! 12. UDP: payload < 8 bytes: `TruncatedUdp`; UDP length field < 8 or > payload:
//!     `BadUdpLength` (a UDP length shorter than the IP payload is accepted)
//!
//! A total length that covers the IP header but not a minimal L4 header is reported as
//! the L4-specific `TruncatedTcp` / `TruncatedUdp`, not as `TotalLengthTooSmall`.
//!
//! IPv6 frames have a parser of their own, [`ipv6::L4Frame6`], with its own rules
//! (see the [`ipv6`] module docs); its failures are `DropReason`s too.
//!
//! TCP/UDP checksums are *not* verified (that would mean summing the whole payload on
//! the hot path); an incremental update preserves a wrong checksum as wrong, so the
//! end host still drops a corrupted segment.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

pub mod checksum;
pub mod ethernet;
pub mod icmp;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;

use checksum::Incremental;

/// Source and destination MAC addresses written on a rewritten frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MacPair {
    pub src: [u8; 6],
    pub dst: [u8; 6],
}

/// Why a frame cannot be rewritten correctly. One counter per variant downstream.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    TruncatedEthernet,
    /// Ethertype 0x8100 or 0x88a8.
    VlanTagged,
    /// Ethertype 0x86dd.
    Ipv6,
    /// Any other ethertype.
    NotIpv4,
    TruncatedIpv4,
    BadIpVersion,
    IhlTooSmall,
    /// IHL > 5: dropped by policy.
    IpOptions,
    /// MF set or fragment offset != 0.
    Fragment,
    TotalLengthTooSmall,
    TotalLengthBeyondFrame,
    BadIpChecksum,
    /// TTL <= 1.
    TtlExpired,
    /// Not TCP or UDP.
    UnsupportedProtocol,
    TruncatedTcp,
    TcpOffsetTooSmall,
    TcpOffsetPastEnd,
    TruncatedUdp,
    BadUdpLength,
    /// IPv6 path ([`ipv6::L4Frame6`]): any ethertype but 0x86dd.
    NotIpv6,
    /// IPv6 path: shorter than Ethernet + the 40-byte IPv6 header.
    TruncatedIpv6,
    /// IPv6 path: payload length beyond the frame.
    Ipv6PayloadLengthBeyondFrame,
    /// IPv6 path: the next header is an extension header (dropped by policy).
    Ipv6ExtensionHeader,
    /// IPv6 path: a UDP checksum of 0, which IPv6 forbids (RFC 8200 section 8.1).
    Udp6ZeroChecksum,
}

impl DropReason {
    /// Every variant, in discriminant order (`ALL[r.index()] == r`).
    pub const ALL: [DropReason; 24] = [
        DropReason::TruncatedEthernet,
        DropReason::VlanTagged,
        DropReason::Ipv6,
        DropReason::NotIpv4,
        DropReason::TruncatedIpv4,
        DropReason::BadIpVersion,
        DropReason::IhlTooSmall,
        DropReason::IpOptions,
        DropReason::Fragment,
        DropReason::TotalLengthTooSmall,
        DropReason::TotalLengthBeyondFrame,
        DropReason::BadIpChecksum,
        DropReason::TtlExpired,
        DropReason::UnsupportedProtocol,
        DropReason::TruncatedTcp,
        DropReason::TcpOffsetTooSmall,
        DropReason::TcpOffsetPastEnd,
        DropReason::TruncatedUdp,
        DropReason::BadUdpLength,
        DropReason::NotIpv6,
        DropReason::TruncatedIpv6,
        DropReason::Ipv6PayloadLengthBeyondFrame,
        DropReason::Ipv6ExtensionHeader,
        DropReason::Udp6ZeroChecksum,
    ];

    /// Number of variants.
    pub const COUNT: usize = Self::ALL.len();

    /// Dense index `0..COUNT`, usable for a counter array.
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }

    /// Stable snake_case label used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::TruncatedEthernet => "truncated_ethernet",
            DropReason::VlanTagged => "vlan_tagged",
            DropReason::Ipv6 => "ipv6",
            DropReason::NotIpv4 => "not_ipv4",
            DropReason::TruncatedIpv4 => "truncated_ipv4",
            DropReason::BadIpVersion => "bad_ip_version",
            DropReason::IhlTooSmall => "ihl_too_small",
            DropReason::IpOptions => "ip_options",
            DropReason::Fragment => "fragment",
            DropReason::TotalLengthTooSmall => "total_length_too_small",
            DropReason::TotalLengthBeyondFrame => "total_length_beyond_frame",
            DropReason::BadIpChecksum => "bad_ip_checksum",
            DropReason::TtlExpired => "ttl_expired",
            DropReason::UnsupportedProtocol => "unsupported_protocol",
            DropReason::TruncatedTcp => "truncated_tcp",
            DropReason::TcpOffsetTooSmall => "tcp_offset_too_small",
            DropReason::TcpOffsetPastEnd => "tcp_offset_past_end",
            DropReason::TruncatedUdp => "truncated_udp",
            DropReason::BadUdpLength => "bad_udp_length",
            DropReason::NotIpv6 => "not_ipv6",
            DropReason::TruncatedIpv6 => "truncated_ipv6",
            DropReason::Ipv6PayloadLengthBeyondFrame => "ipv6_payload_length_beyond_frame",
            DropReason::Ipv6ExtensionHeader => "ipv6_extension_header",
            DropReason::Udp6ZeroChecksum => "udp6_zero_checksum",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for DropReason {}

/// Transport protocol of a validated frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4Proto {
    Tcp,
    Udp,
}

impl L4Proto {
    /// IP protocol number: 6 for TCP, 17 for UDP.
    #[inline(always)]
    pub fn number(self) -> u8 {
        match self {
            L4Proto::Tcp => ipv4::PROTO_TCP,
            L4Proto::Udp => ipv4::PROTO_UDP,
        }
    }

    /// The protocol for an IP protocol number, if supported.
    #[inline(always)]
    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            ipv4::PROTO_TCP => Some(L4Proto::Tcp),
            ipv4::PROTO_UDP => Some(L4Proto::Udp),
            _ => None,
        }
    }
}

/// TCP flags byte (byte 13 of the TCP header); empty for UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;

    /// True if every bit of `mask` is set.
    #[inline(always)]
    pub fn contains(self, mask: u8) -> bool {
        self.0 & mask == mask
    }
    #[inline(always)]
    pub fn fin(self) -> bool {
        self.contains(Self::FIN)
    }
    #[inline(always)]
    pub fn syn(self) -> bool {
        self.contains(Self::SYN)
    }
    #[inline(always)]
    pub fn rst(self) -> bool {
        self.contains(Self::RST)
    }
    #[inline]
    pub fn psh(self) -> bool {
        self.contains(Self::PSH)
    }
    #[inline(always)]
    pub fn ack(self) -> bool {
        self.contains(Self::ACK)
    }
}

/// Offset of the IPv4 header in the frame.
const IP_OFFSET: usize = ethernet::HEADER_LEN;
/// Offset of the L4 header in the frame (IHL is always 5 once validated).
const L4_OFFSET: usize = IP_OFFSET + ipv4::HEADER_LEN;

/// The (source, destination, IP protocol) a frame would have if it were a valid
/// option-less IPv4 TCP/UDP frame, read without validating anything. A hint for
/// prefetching only; [`L4Frame::parse`] decides what a frame is.
#[inline(always)]
pub fn peek_endpoints(buf: &[u8]) -> Option<(SocketAddrV4, SocketAddrV4, u8)> {
    let h: &[u8; L4_OFFSET + 4] = buf.get(..L4_OFFSET + 4)?.try_into().ok()?;
    let addr = |at: usize| Ipv4Addr::new(h[at], h[at + 1], h[at + 2], h[at + 3]);
    let port = |at: usize| u16::from_be_bytes([h[at], h[at + 1]]);
    let ip = IP_OFFSET;
    Some((
        SocketAddrV4::new(addr(ip + ipv4::field::SRC_ADDR.start), port(L4_OFFSET)),
        SocketAddrV4::new(addr(ip + ipv4::field::DST_ADDR.start), port(L4_OFFSET + 2)),
        h[ip + ipv4::field::PROTOCOL],
    ))
}

/// Which endpoint a rewrite changes.
#[derive(Clone, Copy)]
enum Side {
    Src,
    Dst,
}

/// A validated Ethernet + IPv4 + TCP/UDP frame, borrowed mutably from a UMEM frame.
///
/// # Invariants (established by [`L4Frame::parse`], never changed afterwards)
///
/// * `L4_OFFSET + min_l4_header(proto) <= ip_end <= buf.len()`, where `ip_end` is
///   `14 + IPv4 total length` and `min_l4_header` is 20 (TCP) or 8 (UDP).
/// * The IPv4 header has IHL 5, so it is exactly `buf[14..34]` and L4 starts at 34.
/// * For TCP, `data offset * 4` lies in `20..=ip_end - 34`; for UDP the length field lies
///   in `8..=ip_end - 34`.
///
/// Rewrites change only addresses, ports, TTL and checksums, never a length, a data
/// offset or the protocol, so the invariants hold for the lifetime of the value. Every
/// index used below is therefore in bounds: no method can panic.
#[derive(Debug)]
pub struct L4Frame<'a> {
    buf: &'a mut [u8],
    proto: L4Proto,
    /// `14 + IPv4 total length`: end of the bytes covered by the IP packet.
    ip_end: usize,
}

impl<'a> L4Frame<'a> {
    /// Validates the frame once (see the module docs for the rules and their order).
    #[inline(always)]
    pub fn parse(buf: &'a mut [u8]) -> Result<Self, DropReason> {
        ethernet::Frame::new_checked(&buf[..])?.check_ipv4()?;
        // buf.len() >= 14 from here.
        let ip = ipv4::Header::new_checked(&buf[IP_OFFSET..])?;
        // buf.len() >= 34 from here.
        if ip.version() != 4 {
            return Err(DropReason::BadIpVersion);
        }
        match ip.ihl() {
            0..=4 => return Err(DropReason::IhlTooSmall),
            5 => {}
            _ => return Err(DropReason::IpOptions),
        }
        if ip.more_frags() || ip.frag_offset() != 0 {
            return Err(DropReason::Fragment);
        }
        let total = usize::from(ip.total_len());
        if total < ipv4::HEADER_LEN {
            return Err(DropReason::TotalLengthTooSmall);
        }
        if total > buf.len() - IP_OFFSET {
            return Err(DropReason::TotalLengthBeyondFrame);
        }
        if !ip.verify_checksum() {
            return Err(DropReason::BadIpChecksum);
        }
        if ip.ttl() <= 1 {
            return Err(DropReason::TtlExpired);
        }
        let proto = L4Proto::from_number(ip.protocol()).ok_or(DropReason::UnsupportedProtocol)?;
        // 34 <= ip_end <= buf.len() by the two length checks above.
        let ip_end = IP_OFFSET + total;
        let l4 = &buf[L4_OFFSET..ip_end];
        match proto {
            L4Proto::Tcp => {
                tcp::Segment::new_checked(l4)?;
            }
            L4Proto::Udp => {
                udp::Datagram::new_checked(l4)?;
            }
        }
        Ok(Self { buf, proto, ip_end })
    }

    #[inline(always)]
    fn eth(&self) -> ethernet::Frame<&[u8]> {
        ethernet::Frame::new_unchecked(&self.buf[..])
    }

    #[inline(always)]
    fn ip(&self) -> ipv4::Header<&[u8]> {
        ipv4::Header::new_unchecked(&self.buf[IP_OFFSET..L4_OFFSET])
    }

    #[inline(always)]
    fn ip_mut(&mut self) -> ipv4::Header<&mut [u8]> {
        ipv4::Header::new_unchecked(&mut self.buf[IP_OFFSET..L4_OFFSET])
    }

    /// The IP payload (L4 header + data), up to the IPv4 total length.
    #[inline(always)]
    fn l4(&self) -> &[u8] {
        &self.buf[L4_OFFSET..self.ip_end]
    }

    #[inline(always)]
    fn l4_mut(&mut self) -> &mut [u8] {
        &mut self.buf[L4_OFFSET..self.ip_end]
    }

    /// (source port, destination port).
    #[inline(always)]
    fn ports(&self) -> (u16, u16) {
        match self.proto {
            L4Proto::Tcp => {
                let s = tcp::Segment::new_unchecked(self.l4());
                (s.src_port(), s.dst_port())
            }
            L4Proto::Udp => {
                let d = udp::Datagram::new_unchecked(self.l4());
                (d.src_port(), d.dst_port())
            }
        }
    }

    #[inline(always)]
    pub fn protocol(&self) -> L4Proto {
        self.proto
    }

    /// IPv4 source + L4 source port.
    #[inline(always)]
    pub fn src(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.ip().src_addr(), self.ports().0)
    }

    /// IPv4 destination + L4 destination port.
    #[inline(always)]
    pub fn dst(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.ip().dst_addr(), self.ports().1)
    }

    /// TCP flags; empty for UDP.
    #[inline(always)]
    pub fn tcp_flags(&self) -> TcpFlags {
        match self.proto {
            L4Proto::Tcp => tcp::Segment::new_unchecked(self.l4()).flags(),
            L4Proto::Udp => TcpFlags::default(),
        }
    }

    /// The TCP sequence number, and where the sender's next segment starts
    /// (after this one's payload, SYN and FIN); zeros for UDP.
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

    /// The TCP acknowledgment number (meaningful when the ACK flag is set); 0
    /// for UDP.
    #[inline(always)]
    pub fn tcp_ack(&self) -> u32 {
        match self.proto {
            L4Proto::Tcp => tcp::Segment::new_unchecked(self.l4()).ack_number(),
            L4Proto::Udp => 0,
        }
    }

    pub fn ttl(&self) -> u8 {
        self.ip().ttl()
    }

    /// The IPv4 header checksum field.
    pub fn ip_checksum(&self) -> u16 {
        self.ip().checksum()
    }

    /// The TCP/UDP checksum field (0 for a UDP datagram without checksum).
    pub fn l4_checksum(&self) -> u16 {
        match self.proto {
            L4Proto::Tcp => tcp::Segment::new_unchecked(self.l4()).checksum(),
            L4Proto::Udp => udp::Datagram::new_unchecked(self.l4()).checksum(),
        }
    }

    /// Whether the TCP/UDP checksum is right, by a full computation over the
    /// segment. Costs a pass over the payload, so the hot path calls it only for
    /// a connection's first segment (which then has none, or little).
    pub fn l4_checksum_ok(&self) -> bool {
        let ip = self.ip();
        let mut segment = self.l4();
        if self.proto == L4Proto::Udp {
            let datagram = udp::Datagram::new_unchecked(segment);
            if datagram.checksum() == 0 {
                return true;
            }
            // A UDP length short of the IP payload (item 12) is what the
            // checksum covers, pseudo-header included (RFC 768; Linux trims
            // the datagram to it first): the rest (RFC 9868's options, say)
            // is not the datagram's.
            segment = &segment[..usize::from(datagram.len()).min(segment.len())];
        }
        let pseudo = checksum::pseudo_header_ipv4(
            ip.src_addr(),
            ip.dst_addr(),
            self.proto.number(),
            segment.len() as u16,
        );
        checksum::fold(checksum::sum(segment, pseudo)) == 0xFFFF
    }

    /// The IPv4 total length: bytes of the frame after the Ethernet header that belong to
    /// the packet (the rest, if any, is padding).
    pub fn ip_total_len(&self) -> u16 {
        // ip_end - 14 came from a u16.
        (self.ip_end - IP_OFFSET) as u16
    }

    /// The L4 payload: after the TCP header (data offset) up to the IPv4 total length,
    /// or after the UDP header up to the UDP length.
    pub fn l4_payload(&self) -> &[u8] {
        let l4 = self.l4();
        match self.proto {
            L4Proto::Tcp => {
                let hl = tcp::Segment::new_unchecked(l4).header_len();
                &l4[hl..]
            }
            L4Proto::Udp => {
                let len = usize::from(udp::Datagram::new_unchecked(l4).len());
                &l4[udp::HEADER_LEN..len]
            }
        }
    }

    /// Lowers a TCP MSS option larger than `max` to `max`, updating the TCP
    /// checksum incrementally; true if it did. Options are walked within the
    /// validated data offset; a malformed option list (a length below 2 or past
    /// the header) ends the walk with nothing changed, as does a UDP frame.
    pub fn clamp_mss(&mut self, max: u16) -> bool {
        self.proto == L4Proto::Tcp && tcp::clamp_mss(self.l4_mut(), max)
    }

    pub fn macs(&self) -> MacPair {
        let e = self.eth();
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

    /// DNAT: destination IP + port := `new_dst`, TTL -= 1, IPv4 and L4 checksums
    /// updated incrementally.
    #[inline(always)]
    pub fn rewrite_dst(&mut self, new_dst: SocketAddrV4) {
        self.rewrite(Side::Dst, new_dst);
    }

    /// Reverse NAT: source IP + port := `new_src`, TTL -= 1, checksums updated
    /// incrementally.
    #[inline(always)]
    pub fn rewrite_src(&mut self, new_src: SocketAddrV4) {
        self.rewrite(Side::Src, new_src);
    }

    /// [`set_macs`](Self::set_macs) + [`rewrite_dst`](Self::rewrite_dst).
    #[inline(always)]
    pub fn rewrite_forward(&mut self, new_dst: SocketAddrV4, macs: &MacPair) {
        self.set_macs(macs);
        self.rewrite_dst(new_dst);
    }

    /// [`set_macs`](Self::set_macs) + [`rewrite_src`](Self::rewrite_src).
    #[inline(always)]
    pub fn rewrite_reverse(&mut self, new_src: SocketAddrV4, macs: &MacPair) {
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

    /// Rewrites one endpoint. Each call decrements the TTL once; `parse` guarantees
    /// TTL >= 2, so one rewrite per frame leaves it >= 1. (Should a caller rewrite the
    /// same frame repeatedly, the TTL saturates at 0 rather than wrapping.)
    #[inline(always)]
    fn rewrite(&mut self, side: Side, new: SocketAddrV4) {
        let ip = self.ip();
        let old_addr = match side {
            Side::Src => ip.src_addr(),
            Side::Dst => ip.dst_addr(),
        };
        let new_addr: Ipv4Addr = *new.ip();
        let (old_a, new_a) = (u32::from(old_addr), u32::from(new_addr));
        let ttl = ip.ttl();
        let new_ttl = ttl.saturating_sub(1);
        let old_word = ip.ttl_proto_word();
        let new_word = u16::from_be_bytes([new_ttl, ip.protocol()]);
        let ip_ck = Incremental::new(ip.checksum())
            .replace32(old_a, new_a)
            .replace16(old_word, new_word)
            .finish();

        let mut ip = self.ip_mut();
        match side {
            Side::Src => ip.set_src_addr(new_addr),
            Side::Dst => ip.set_dst_addr(new_addr),
        }
        ip.set_ttl(new_ttl);
        ip.set_checksum(ip_ck);

        let (sp, dp) = self.ports();
        let old_port = match side {
            Side::Src => sp,
            Side::Dst => dp,
        };
        let new_port = new.port();
        // The L4 checksum covers the pseudo-header (addresses) and the ports; TTL is
        // not part of it.
        let l4_update = |ck: u16| {
            Incremental::new(ck)
                .replace32(old_a, new_a)
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
                match side {
                    Side::Src => d.set_src_port(new_port),
                    Side::Dst => d.set_dst_port(new_port),
                }
                let old_ck = d.checksum();
                // 0 = "no checksum": leave it. A computed 0 is sent as 0xFFFF (RFC 768).
                if old_ck != 0 {
                    let ck = match l4_update(old_ck) {
                        0 => 0xFFFF,
                        c => c,
                    };
                    d.set_checksum(ck);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
