//! IPv4 header view (smoltcp style). Only the fixed 20-byte header is described:
//! frames with options are dropped by policy (see [`super::DropReason::IpOptions`]).

use std::net::Ipv4Addr;

use super::{checksum, DropReason};

/// Byte offsets/ranges of the fixed IPv4 header.
pub(crate) mod field {
    use core::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC_ADDR: Range<usize> = 12..16;
    pub const DST_ADDR: Range<usize> = 16..20;
}

/// Length of the IPv4 header without options (IHL = 5).
pub const HEADER_LEN: usize = 20;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// "More fragments" flag in the flags/fragment-offset word.
pub const FLAG_MF: u16 = 0x2000;
/// "Don't fragment" flag.
pub const FLAG_DF: u16 = 0x4000;
/// Fragment offset mask (in units of 8 bytes).
pub const FRAG_OFFSET_MASK: u16 = 0x1fff;

/// A view over an IPv4 header. Invariant: `buffer.len() >= HEADER_LEN`, so no accessor
/// can panic. Nothing else is assumed about the contents.
#[derive(Debug)]
pub struct Header<T: AsRef<[u8]>> {
    buffer: T,
}

#[inline(always)]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline(always)]
fn addr(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

impl<T: AsRef<[u8]>> Header<T> {
    /// Wraps `buffer` (the bytes from the start of the IPv4 header to the end of the
    /// frame) after checking that it holds the fixed header.
    #[inline(always)]
    pub fn new_checked(buffer: T) -> Result<Self, DropReason> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(DropReason::TruncatedIpv4);
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
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in 32-bit words.
    #[inline(always)]
    pub fn ihl(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] & 0x0f
    }

    #[inline(always)]
    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }

    #[inline(always)]
    pub fn total_len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH.start)
    }

    #[inline(always)]
    pub fn ident(&self) -> u16 {
        be16(self.buffer.as_ref(), field::IDENT.start)
    }

    /// The raw flags + fragment offset word.
    #[inline(always)]
    pub fn flags_frag(&self) -> u16 {
        be16(self.buffer.as_ref(), field::FLG_OFF.start)
    }

    #[inline(always)]
    pub fn more_frags(&self) -> bool {
        self.flags_frag() & FLAG_MF != 0
    }

    #[inline(always)]
    pub fn dont_frag(&self) -> bool {
        self.flags_frag() & FLAG_DF != 0
    }

    /// Fragment offset in units of 8 bytes.
    #[inline(always)]
    pub fn frag_offset(&self) -> u16 {
        self.flags_frag() & FRAG_OFFSET_MASK
    }

    #[inline(always)]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    #[inline(always)]
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    /// The 16-bit word TTL|protocol, as covered by the header checksum.
    #[inline(always)]
    pub fn ttl_proto_word(&self) -> u16 {
        be16(self.buffer.as_ref(), field::TTL)
    }

    #[inline(always)]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    #[inline(always)]
    pub fn src_addr(&self) -> Ipv4Addr {
        addr(self.buffer.as_ref(), field::SRC_ADDR.start)
    }

    #[inline(always)]
    pub fn dst_addr(&self) -> Ipv4Addr {
        addr(self.buffer.as_ref(), field::DST_ADDR.start)
    }

    /// Verifies the checksum of the fixed 20-byte header (both representations of a
    /// zero checksum are accepted).
    #[inline(always)]
    pub fn verify_checksum(&self) -> bool {
        checksum::verify(&self.buffer.as_ref()[..HEADER_LEN])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Header<T> {
    #[inline(always)]
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    #[inline(always)]
    pub fn set_checksum(&mut self, value: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&value.to_be_bytes());
    }

    #[inline(always)]
    pub fn set_src_addr(&mut self, value: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&value.octets());
    }

    #[inline(always)]
    pub fn set_dst_addr(&mut self, value: Ipv4Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&value.octets());
    }

    /// Recomputes the header checksum from scratch (not used on the hot path).
    #[inline(always)]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum::checksum(&self.buffer.as_ref()[..HEADER_LEN]);
        self.set_checksum(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Wikipedia example header: UDP, 192.168.0.1 -> 192.168.0.199, checksum 0xb861.
    const HDR: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    #[test]
    fn accessors() {
        let h = Header::new_checked(&HDR[..]).unwrap();
        assert_eq!(h.version(), 4);
        assert_eq!(h.ihl(), 5);
        assert_eq!(h.total_len(), 0x73);
        assert!(h.dont_frag());
        assert!(!h.more_frags());
        assert_eq!(h.frag_offset(), 0);
        assert_eq!(h.ttl(), 64);
        assert_eq!(h.protocol(), PROTO_UDP);
        assert_eq!(h.ttl_proto_word(), 0x4011);
        assert_eq!(h.checksum(), 0xb861);
        assert_eq!(h.src_addr(), Ipv4Addr::new(192, 168, 0, 1));
        assert_eq!(h.dst_addr(), Ipv4Addr::new(192, 168, 0, 199));
        assert!(h.verify_checksum());
    }

    #[test]
    fn setters_and_fill() {
        let mut b = HDR;
        let mut h = Header::new_checked(&mut b[..]).unwrap();
        h.set_ttl(63);
        h.set_src_addr(Ipv4Addr::new(10, 0, 0, 1));
        h.set_dst_addr(Ipv4Addr::new(10, 0, 0, 2));
        assert!(!h.verify_checksum());
        h.fill_checksum();
        assert!(h.verify_checksum());
        assert_eq!(h.src_addr(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(h.dst_addr(), Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(h.ttl(), 63);
    }

    #[test]
    fn truncated() {
        for n in 0..HEADER_LEN {
            assert_eq!(
                Header::new_checked(&HDR[..n]).err(),
                Some(DropReason::TruncatedIpv4)
            );
        }
    }
}
