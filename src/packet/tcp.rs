//! TCP header view (smoltcp style). Only the fields NAT needs are exposed.

use super::{checksum::Incremental, DropReason, TcpFlags};

/// Byte offsets/ranges of the fixed TCP header.
pub(crate) mod field {
    use core::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const SEQ_NUM: Range<usize> = 4..8;
    pub const ACK_NUM: Range<usize> = 8..12;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT: Range<usize> = 18..20;
}

/// Length of the TCP header without options (data offset 5).
pub const HEADER_LEN: usize = 20;

/// A view over a TCP segment. Invariant: `buffer.len() >= HEADER_LEN`, so no accessor
/// can panic. The buffer should end where the IP payload ends (not at the end of the
/// Ethernet frame), so that [`Segment::check_offset`] checks against the right length.
#[derive(Debug)]
pub struct Segment<T: AsRef<[u8]>> {
    buffer: T,
}

#[inline(always)]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline(always)]
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl<T: AsRef<[u8]>> Segment<T> {
    /// Wraps the IP payload `buffer` and validates the header: length, then data offset.
    #[inline(always)]
    pub fn new_checked(buffer: T) -> Result<Self, DropReason> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(DropReason::TruncatedTcp);
        }
        let s = Self { buffer };
        s.check_offset()?;
        Ok(s)
    }

    /// Caller guarantees `buffer.len() >= HEADER_LEN`.
    #[inline(always)]
    pub(crate) fn new_unchecked(buffer: T) -> Self {
        debug_assert!(buffer.as_ref().len() >= HEADER_LEN);
        Self { buffer }
    }

    /// Data offset must be at least 5 words and within the segment.
    #[inline(always)]
    pub fn check_offset(&self) -> Result<(), DropReason> {
        let hl = self.header_len();
        if hl < HEADER_LEN {
            Err(DropReason::TcpOffsetTooSmall)
        } else if hl > self.buffer.as_ref().len() {
            Err(DropReason::TcpOffsetPastEnd)
        } else {
            Ok(())
        }
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

    #[inline(always)]
    pub fn seq_number(&self) -> u32 {
        be32(self.buffer.as_ref(), field::SEQ_NUM.start)
    }

    #[inline(always)]
    pub fn ack_number(&self) -> u32 {
        be32(self.buffer.as_ref(), field::ACK_NUM.start)
    }

    /// Header length in bytes (data offset * 4).
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFF] >> 4) * 4
    }

    #[inline(always)]
    pub fn flags(&self) -> TcpFlags {
        TcpFlags(self.buffer.as_ref()[field::FLAGS])
    }

    #[inline(always)]
    pub fn window(&self) -> u16 {
        be16(self.buffer.as_ref(), field::WINDOW.start)
    }

    #[inline(always)]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    #[inline(always)]
    pub fn urgent(&self) -> u16 {
        be16(self.buffer.as_ref(), field::URGENT.start)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Segment<T> {
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

/// Option kinds (RFC 9293).
pub const OPTION_END: u8 = 0;
pub const OPTION_NOP: u8 = 1;
pub const OPTION_MSS: u8 = 2;

/// Where the value of the MSS option lies in `header` (a TCP header, options
/// included, cut at its data offset): the offset of its two bytes. `None` if
/// there is none, or if the options before it are malformed (a length below 2
/// or past the header): then nothing can be trusted to be an option.
pub fn mss_option(header: &[u8]) -> Option<usize> {
    let mut at = HEADER_LEN;
    while at < header.len() {
        match header[at] {
            OPTION_END => return None,
            OPTION_NOP => at += 1,
            kind => {
                let len = usize::from(*header.get(at + 1)?);
                if len < 2 || at + len > header.len() {
                    return None;
                }
                if kind == OPTION_MSS {
                    return (len == 4).then_some(at + 2);
                }
                at += len;
            }
        }
    }
    None
}

/// Lowers the MSS option of `segment` (a validated TCP segment: header, options and
/// payload, data offset within it) to `max` if larger, updating the checksum
/// incrementally; true if it did. Shared by both IP versions: the option and the
/// checksum live in the segment, the pseudo-header does not change. Options are
/// walked within the data offset; a malformed option list ends the walk with
/// nothing changed.
pub(crate) fn clamp_mss(segment: &mut [u8], max: u16) -> bool {
    if segment.len() < HEADER_LEN {
        return false;
    }
    let header_len = Segment::new_unchecked(&*segment).header_len();
    let Some(at) = segment.get(..header_len).and_then(mss_option) else {
        return false;
    };
    let old = u16::from_be_bytes([segment[at], segment[at + 1]]);
    if old <= max {
        return false;
    }
    // The checksum sums 16-bit words from the segment's start; an option may
    // start at any byte, so an odd offset puts the value across two words.
    let word = |s: &[u8], i: usize| u16::from_be_bytes([s[i], s.get(i + 1).copied().unwrap_or(0)]);
    let first = at & !1;
    let last = (at + 1) & !1;
    let old_words = (word(segment, first), word(segment, last));
    segment[at..at + 2].copy_from_slice(&max.to_be_bytes());
    let new_words = (word(segment, first), word(segment, last));
    let mut ck = Incremental::new(Segment::new_unchecked(&*segment).checksum())
        .replace16(old_words.0, new_words.0);
    if last != first {
        ck = ck.replace16(old_words.1, new_words.1);
    }
    Segment::new_unchecked(segment).set_checksum(ck.finish());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mss_option_is_found_among_others() {
        let mut h = SEG.to_vec();
        // NOP, NOP, timestamps (10 bytes), MSS 1460, window scale 7, end.
        h.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        h.extend_from_slice(&[2, 4, 0x05, 0xb4, 3, 3, 7, 0]);
        assert_eq!(mss_option(&h), Some(20 + 12 + 2));
        // An odd offset: one NOP only.
        let mut odd = SEG.to_vec();
        odd.extend_from_slice(&[1, 2, 4, 0x05, 0xb4, 0, 0, 0]);
        assert_eq!(mss_option(&odd), Some(23));
        // None at all, after an end, or after a malformed option.
        assert_eq!(mss_option(&SEG), None);
        let mut ended = SEG.to_vec();
        ended.extend_from_slice(&[0, 2, 4, 0x05, 0xb4, 0, 0, 0]);
        assert_eq!(mss_option(&ended), None);
        for bad in [[8, 0, 2, 4], [8, 1, 2, 4], [8, 9, 2, 4], [2, 5, 5, 0xb4]] {
            let mut b = SEG.to_vec();
            b.extend_from_slice(&bad);
            assert_eq!(mss_option(&b), None, "{bad:?}");
        }
        // A kind without its length byte at the very end.
        let mut cut = SEG.to_vec();
        cut.extend_from_slice(&[1, 1, 1, 2]);
        assert_eq!(mss_option(&cut), None);
    }

    const SEG: [u8; 20] = [
        0x30, 0x39, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 2, 0x50, 0x12, 0xff, 0xff, 0xab, 0xcd, 0, 0,
    ];

    #[test]
    fn accessors() {
        let s = Segment::new_checked(&SEG[..]).unwrap();
        assert_eq!(s.src_port(), 12345);
        assert_eq!(s.dst_port(), 80);
        assert_eq!(s.seq_number(), 1);
        assert_eq!(s.ack_number(), 2);
        assert_eq!(s.header_len(), 20);
        assert_eq!(s.flags(), TcpFlags(TcpFlags::SYN | TcpFlags::ACK));
        assert_eq!(s.window(), 0xffff);
        assert_eq!(s.checksum(), 0xabcd);
        assert_eq!(s.urgent(), 0);
    }

    #[test]
    fn setters() {
        let mut b = SEG;
        let mut s = Segment::new_checked(&mut b[..]).unwrap();
        s.set_src_port(1);
        s.set_dst_port(2);
        s.set_checksum(3);
        assert_eq!((s.src_port(), s.dst_port(), s.checksum()), (1, 2, 3));
    }

    #[test]
    fn validation() {
        for n in 0..HEADER_LEN {
            assert_eq!(
                Segment::new_checked(&SEG[..n]).err(),
                Some(DropReason::TruncatedTcp)
            );
        }
        let mut b = SEG;
        b[12] = 0x40;
        assert_eq!(
            Segment::new_checked(&b[..]).err(),
            Some(DropReason::TcpOffsetTooSmall)
        );
        b[12] = 0x60;
        assert_eq!(
            Segment::new_checked(&b[..]).err(),
            Some(DropReason::TcpOffsetPastEnd)
        );
        let mut long = [0u8; 24];
        long[..20].copy_from_slice(&b);
        assert!(Segment::new_checked(&long[..]).is_ok());
    }
}
