//! UDP header view (smoltcp style).

use super::DropReason;

/// Byte ranges of the UDP header.
pub(crate) mod field {
    use core::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
}

/// Length of the UDP header.
pub const HEADER_LEN: usize = 8;

/// A view over a UDP datagram. Invariant: `buffer.len() >= HEADER_LEN`, so no accessor
/// can panic. The buffer should end where the IP payload ends.
#[derive(Debug)]
pub struct Datagram<T: AsRef<[u8]>> {
    buffer: T,
}

#[inline(always)]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

impl<T: AsRef<[u8]>> Datagram<T> {
    /// Wraps the IP payload `buffer` and validates the header: length, then the UDP
    /// length field (`8 <= length <= buffer.len()`).
    #[inline(always)]
    pub fn new_checked(buffer: T) -> Result<Self, DropReason> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(DropReason::TruncatedUdp);
        }
        let d = Self { buffer };
        let len = usize::from(d.len());
        if len < HEADER_LEN || len > d.buffer.as_ref().len() {
            return Err(DropReason::BadUdpLength);
        }
        Ok(d)
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
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::SRC_PORT.start)
    }

    #[inline(always)]
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::DST_PORT.start)
    }

    /// The UDP length field (header + payload).
    #[allow(clippy::len_without_is_empty)]
    #[inline(always)]
    pub fn len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH.start)
    }

    /// The checksum field; 0 means "no checksum" (RFC 768).
    #[inline(always)]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM.start)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Datagram<T> {
    #[inline(always)]
    pub fn set_src_port(&mut self, v: u16) {
        self.buffer.as_mut()[field::SRC_PORT].copy_from_slice(&v.to_be_bytes());
    }

    #[inline(always)]
    pub fn set_dst_port(&mut self, v: u16) {
        self.buffer.as_mut()[field::DST_PORT].copy_from_slice(&v.to_be_bytes());
    }

    #[inline(always)]
    pub fn set_checksum(&mut self, v: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&v.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DGRAM: [u8; 10] = [0x04, 0xd2, 0x00, 0x35, 0x00, 0x0a, 0x12, 0x34, 0x61, 0x62];

    #[test]
    fn accessors_setters() {
        let mut b = DGRAM;
        let mut d = Datagram::new_checked(&mut b[..]).unwrap();
        assert_eq!(
            (d.src_port(), d.dst_port(), d.len(), d.checksum()),
            (1234, 53, 10, 0x1234)
        );
        d.set_src_port(1);
        d.set_dst_port(2);
        d.set_checksum(3);
        assert_eq!((d.src_port(), d.dst_port(), d.checksum()), (1, 2, 3));
    }

    #[test]
    fn validation() {
        for n in 0..HEADER_LEN {
            assert_eq!(
                Datagram::new_checked(&DGRAM[..n]).err(),
                Some(DropReason::TruncatedUdp)
            );
        }
        let mut b = DGRAM;
        b[5] = 7;
        assert_eq!(
            Datagram::new_checked(&b[..]).err(),
            Some(DropReason::BadUdpLength)
        );
        b[5] = 11;
        assert_eq!(
            Datagram::new_checked(&b[..]).err(),
            Some(DropReason::BadUdpLength)
        );
        b[5] = 8; // shorter than the IP payload: allowed
        assert!(Datagram::new_checked(&b[..]).is_ok());
    }
}
