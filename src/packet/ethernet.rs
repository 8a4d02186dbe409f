//! Ethernet II header view (smoltcp style: a typed view over a byte buffer).

use super::DropReason;

/// Byte ranges of the Ethernet II header.
pub(crate) mod field {
    use core::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
}

/// Length of the Ethernet II header (no 802.1Q tag, no FCS).
pub const HEADER_LEN: usize = 14;

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const ETHERTYPE_QINQ: u16 = 0x88a8;

/// A view over an Ethernet II frame. Invariant: `buffer.len() >= HEADER_LEN`, so no
/// accessor can panic.
#[derive(Debug)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps `buffer` after checking it holds a full header.
    #[inline(always)]
    pub fn new_checked(buffer: T) -> Result<Self, DropReason> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(DropReason::TruncatedEthernet);
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
    pub fn dst_addr(&self) -> [u8; 6] {
        let b = self.buffer.as_ref();
        let f = &b[field::DST];
        [f[0], f[1], f[2], f[3], f[4], f[5]]
    }

    #[inline(always)]
    pub fn src_addr(&self) -> [u8; 6] {
        let b = self.buffer.as_ref();
        let f = &b[field::SRC];
        [f[0], f[1], f[2], f[3], f[4], f[5]]
    }

    #[inline(always)]
    pub fn ethertype(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[field::ETHERTYPE.start], b[field::ETHERTYPE.start + 1]])
    }

    /// Classifies the ethertype: `Ok(())` for IPv4, else the drop reason.
    #[inline(always)]
    pub fn check_ipv4(&self) -> Result<(), DropReason> {
        match self.ethertype() {
            ETHERTYPE_IPV4 => Ok(()),
            ETHERTYPE_VLAN | ETHERTYPE_QINQ => Err(DropReason::VlanTagged),
            ETHERTYPE_IPV6 => Err(DropReason::Ipv6),
            _ => Err(DropReason::NotIpv4),
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    #[inline(always)]
    pub fn set_dst_addr(&mut self, addr: [u8; 6]) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&addr);
    }

    #[inline(always)]
    pub fn set_src_addr(&mut self, addr: [u8; 6]) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: [u8; 14] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x08, 0x00];

    #[test]
    fn accessors() {
        let f = Frame::new_checked(&FRAME[..]).unwrap();
        assert_eq!(f.dst_addr(), [1, 2, 3, 4, 5, 6]);
        assert_eq!(f.src_addr(), [7, 8, 9, 10, 11, 12]);
        assert_eq!(f.ethertype(), ETHERTYPE_IPV4);
        assert_eq!(f.check_ipv4(), Ok(()));
    }

    #[test]
    fn setters() {
        let mut buf = FRAME;
        let mut f = Frame::new_checked(&mut buf[..]).unwrap();
        f.set_dst_addr([0xaa; 6]);
        f.set_src_addr([0xbb; 6]);
        assert_eq!(
            &buf[..12],
            &[0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb]
        );
    }

    #[test]
    fn truncated() {
        for n in 0..HEADER_LEN {
            assert_eq!(
                Frame::new_checked(&FRAME[..n]).err(),
                Some(DropReason::TruncatedEthernet)
            );
        }
    }

    #[test]
    fn classify() {
        let mut buf = FRAME;
        for (et, r) in [
            (0x8100u16, Err(DropReason::VlanTagged)),
            (0x88a8, Err(DropReason::VlanTagged)),
            (0x86dd, Err(DropReason::Ipv6)),
            (0x0806, Err(DropReason::NotIpv4)),
            (0x0800, Ok(())),
        ] {
            buf[12..14].copy_from_slice(&et.to_be_bytes());
            assert_eq!(Frame::new_checked(&buf[..]).unwrap().check_ipv4(), r);
        }
    }
}
