//! Internet checksum: RFC 1071 full computation and RFC 1624 incremental update.
//!
//! The full computation ([`sum`], [`fold`], [`checksum`], [`pseudo_header_ipv4`]) is
//! used for validation of the 20-byte IPv4 header and by tests/utilities; the hot path
//! (NAT rewrite) only uses [`Incremental`] / [`update16`] / [`update32`].
//!
//! # Incremental update (RFC 1624, eqn. 3)
//!
//! `HC' = ~(~HC + ~m + m')`, in one's complement arithmetic, applied once per replaced
//! 16-bit word (a 32-bit field is two words). This is what the Linux kernel's
//! `csum_replace2`/`csum_replace4` (and xdp-tutorial's `csum_replace2`) do.
//!
//! ## Representation of zero
//!
//! One's complement has two zeros, `0x0000` and `0xFFFF`. A full RFC 1071 computation
//! over data containing at least one non-zero 16-bit word never yields `0xFFFF` (the
//! folded sum of non-zero data lies in `1..=0xFFFF`, its complement in
//! `0x0000..=0xFFFE`). Eqn. 3 yields `0xFFFF` only in the degenerate case where every
//! addend is zero (old checksum `0xFFFF`, old words `0xFFFF`, new words `0x0000`), and
//! there the equivalent canonical value is `0x0000`. [`Incremental::finish`] therefore
//! maps `0xFFFF` to `0x0000`, so an incremental update is bit-for-bit identical to a
//! full recomputation for any data that is not all zeros (always true for IPv4 headers:
//! version nibble 4; and for TCP/UDP: the pseudo-header carries the protocol number).
//! UDP's own convention (0 means "no checksum", a computed 0 is sent as `0xFFFF`,
//! RFC 768) is applied by the caller on top of this.

use std::net::{Ipv4Addr, Ipv6Addr};

/// One's complement sum (RFC 1071) of `data` read as big-endian 16-bit words, added to
/// `initial`; an odd trailing byte is padded with a zero byte. The result is unfolded;
/// pass it to [`fold`]. Sums may be chained (`sum(b, sum(a, 0))`) if every chunk but the
/// last has even length.
///
/// The `u64` accumulator cannot overflow for any slice shorter than 2^48 bytes.
#[inline(always)]
pub fn sum(data: &[u8], initial: u64) -> u64 {
    let mut acc = initial;
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(u16::from_be_bytes([*last, 0]));
    }
    acc
}

/// Folds a one's complement accumulator to 16 bits with end-around carry.
#[inline(always)]
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xFFFF {
        acc = (acc & 0xFFFF) + (acc >> 16);
    }
    // The loop guarantees acc <= 0xFFFF.
    acc as u16
}

/// RFC 1071 Internet checksum of `data`: the complement of the folded sum.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data, 0))
}

/// True if `data` (which contains its own checksum field) sums to one's complement
/// zero. Accepts both representations of zero in the checksum field.
#[inline(always)]
pub fn verify(data: &[u8]) -> bool {
    fold(sum(data, 0)) == 0xFFFF
}

/// Unfolded sum of the IPv4 pseudo-header used by TCP and UDP checksums
/// (RFC 793 / RFC 768): source, destination, zero, protocol, L4 length.
pub fn pseudo_header_ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, l4_len: u16) -> u64 {
    let s = src.octets();
    let d = dst.octets();
    let mut acc = 0u64;
    acc += u64::from(u16::from_be_bytes([s[0], s[1]]));
    acc += u64::from(u16::from_be_bytes([s[2], s[3]]));
    acc += u64::from(u16::from_be_bytes([d[0], d[1]]));
    acc += u64::from(u16::from_be_bytes([d[2], d[3]]));
    acc += u64::from(protocol);
    acc += u64::from(l4_len);
    acc
}

/// Full TCP/UDP checksum over IPv4: pseudo-header plus `segment` (L4 header, with its
/// checksum field set to zero, and payload). Does not apply UDP's `0 -> 0xFFFF` rule.
pub fn l4_checksum_ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, segment: &[u8]) -> u16 {
    // Length truncated to 16 bits as on the wire; callers pass segments from IPv4
    // packets, which are < 65536 bytes.
    let len = segment.len() as u16;
    !fold(sum(segment, pseudo_header_ipv4(src, dst, protocol, len)))
}

/// Unfolded sum of the IPv6 pseudo-header used by TCP, UDP and ICMPv6 checksums
/// (RFC 8200 section 8.1): source, destination, upper-layer length (32 bits), three
/// zero bytes, next header. A sum is order-free, so the 32-bit length is added as
/// its two words.
pub fn pseudo_header_ipv6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, l4_len: u32) -> u64 {
    let acc = sum(&src.octets(), 0);
    let acc = sum(&dst.octets(), acc);
    acc + u64::from(l4_len >> 16) + u64::from(l4_len & 0xFFFF) + u64::from(next_header)
}

/// Full TCP/UDP/ICMPv6 checksum over IPv6: pseudo-header plus `segment` (with its
/// checksum field set to zero). Does not apply UDP's `0 -> 0xFFFF` rule.
pub fn l4_checksum_ipv6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, segment: &[u8]) -> u16 {
    // A segment of an IPv6 packet without a jumbo option is < 65536 bytes.
    let len = segment.len() as u32;
    !fold(sum(segment, pseudo_header_ipv6(src, dst, next_header, len)))
}

/// RFC 1624 incremental checksum update accumulating several replaced words before a
/// single complement. The words are summed without folding, and folded once at the
/// end: the same one's complement result, with a dependency chain of a few adds
/// instead of a fold per word. No allocation, no panics: each replaced word adds
/// less than 2^17 to a `u64`, which no caller can repeat 2^47 times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "call finish() to obtain the updated checksum"]
pub struct Incremental {
    acc: u64,
}

impl Incremental {
    /// Starts from the checksum currently stored in the header (`HC`).
    #[inline(always)]
    pub fn new(old_checksum: u16) -> Self {
        Self {
            acc: u64::from(!old_checksum),
        }
    }

    /// Accounts for one 16-bit word changing from `old` to `new` (`+ ~m + m'`).
    #[inline(always)]
    pub fn replace16(self, old: u16, new: u16) -> Self {
        Self {
            acc: self.acc + u64::from(!old) + u64::from(new),
        }
    }

    /// Accounts for a 32-bit field (two 16-bit words) changing from `old` to `new`.
    #[inline(always)]
    pub fn replace32(self, old: u32, new: u32) -> Self {
        self.replace16((old >> 16) as u16, (new >> 16) as u16)
            .replace16(old as u16, new as u16)
    }

    /// Accounts for a 128-bit field (eight 16-bit words, e.g. an IPv6 address in a
    /// pseudo-header) changing from `old` to `new`.
    #[inline(always)]
    pub fn replace128(self, old: u128, new: u128) -> Self {
        // ~m + m' per word, summed as two 64-bit halves of four words each: the
        // complement of a whole half is the four complemented words side by side.
        let half = |x: u64| (x >> 48) + ((x >> 32) & 0xFFFF) + ((x >> 16) & 0xFFFF) + (x & 0xFFFF);
        let (old_hi, old_lo) = ((old >> 64) as u64, old as u64);
        let (new_hi, new_lo) = ((new >> 64) as u64, new as u64);
        Self {
            acc: self.acc + half(!old_hi) + half(!old_lo) + half(new_hi) + half(new_lo),
        }
    }

    /// The updated checksum `HC'`, in the canonical representation of zero (see the
    /// module docs): never `0xFFFF`.
    #[inline(always)]
    pub fn finish(self) -> u16 {
        match !fold(self.acc) {
            0xFFFF => 0x0000,
            c => c,
        }
    }
}

/// Checksum after one 16-bit word of the covered data changes from `old` to `new`
/// (RFC 1624 eqn. 3; the `csum_replace2` of the Linux kernel).
#[inline]
pub fn update16(checksum: u16, old: u16, new: u16) -> u16 {
    Incremental::new(checksum).replace16(old, new).finish()
}

/// Checksum after one 32-bit field of the covered data changes from `old` to `new`
/// (e.g. an IPv4 address; `csum_replace4`).
#[inline]
pub fn update32(checksum: u16, old: u32, new: u32) -> u16 {
    Incremental::new(checksum).replace32(old, new).finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 1071 section 3 example: 00 01 f2 03 f4 f5 f6 f7 sums to 0xddf2.
    #[test]
    fn rfc1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data, 0)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(fold(sum(&[0x12, 0x34, 0x56], 0)), 0x1234 + 0x5600);
        assert_eq!(checksum(&[]), 0xFFFF);
        assert_eq!(checksum(&[0, 0, 0]), 0xFFFF);
    }

    #[test]
    fn fold_end_around_carry() {
        assert_eq!(fold(0x1_FFFF), 0x0001);
        assert_eq!(fold(0xFFFF), 0xFFFF);
        assert_eq!(fold(0x1_0000), 0x0001);
        assert_eq!(fold(0), 0);
        assert_eq!(fold(u64::MAX), 0xFFFF);
    }

    // A real IPv4 header (Wikipedia example), checksum 0xb861.
    const IP_HDR: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    #[test]
    fn ipv4_header_checksum() {
        assert!(verify(&IP_HDR));
        let mut h = IP_HDR;
        h[10] = 0;
        h[11] = 0;
        assert_eq!(checksum(&h), 0xb861);
    }

    #[test]
    fn verify_accepts_both_zeros() {
        // Data whose checksum is 0x0000: sum of other words must be 0xFFFF.
        let mut d = [0x12, 0x34, 0xED, 0xCB, 0x00, 0x00];
        assert_eq!(checksum(&d), 0x0000);
        assert!(verify(&d));
        d[4] = 0xFF;
        d[5] = 0xFF;
        assert!(verify(&d));
    }

    fn brute_update(data: &mut [u8], at: usize, new: u16) -> (u16, u16) {
        // data[0..2] is the checksum field.
        let old_ck = u16::from_be_bytes([data[0], data[1]]);
        let old = u16::from_be_bytes([data[at], data[at + 1]]);
        data[at..at + 2].copy_from_slice(&new.to_be_bytes());
        data[0] = 0;
        data[1] = 0;
        let full = checksum(data);
        (update16(old_ck, old, new), full)
    }

    #[test]
    fn incremental_matches_full_exhaustive_word() {
        let base = [0u8, 0, 0x45, 0x00, 0x12, 0x34, 0xAB, 0xCD];
        for new in 0..=u16::MAX {
            let mut d = base;
            let ck = checksum(&d);
            d[0..2].copy_from_slice(&ck.to_be_bytes());
            let (inc, full) = brute_update(&mut d, 4, new);
            assert_eq!(inc, full, "new word {new:#06x}");
        }
    }

    #[test]
    fn incremental_degenerate_case_is_canonical_zero() {
        // Old checksum 0xFFFF (the "-0" representation), word 0xFFFF -> 0x0000.
        // Eqn. 3 gives ~(0 + 0 + 0) = 0xFFFF; canonical is 0x0000.
        assert_eq!(update16(0xFFFF, 0xFFFF, 0x0000), 0x0000);
        // Replacing a word by itself is the identity, except for the -0 -> +0 mapping.
        assert_eq!(update16(0x1234, 0xABCD, 0xABCD), 0x1234);
        assert_eq!(update16(0x0000, 0xABCD, 0xABCD), 0x0000);
        assert_eq!(update16(0xFFFF, 0xABCD, 0xABCD), 0x0000);
    }

    #[test]
    fn update32_is_two_update16() {
        let cases = [
            (0x1c46u16, 0xc0a8_0001u32, 0x0a00_0002u32),
            (0x0000, 0xffff_ffff, 0x0000_0000),
            (0xffff, 0x0000_0000, 0xffff_ffff),
            (0x8000, 0x0102_0304, 0xfffe_fdfc),
        ];
        for (ck, old, new) in cases {
            let two = update16(
                update16(ck, (old >> 16) as u16, (new >> 16) as u16),
                old as u16,
                new as u16,
            );
            assert_eq!(update32(ck, old, new), two);
        }
    }

    #[test]
    fn incremental_ip_address_change_matches_full() {
        let mut h = IP_HDR;
        let new_dst = [10u8, 1, 2, 3];
        let old = u32::from_be_bytes([h[16], h[17], h[18], h[19]]);
        let inc = update32(0xb861, old, u32::from_be_bytes(new_dst));
        h[16..20].copy_from_slice(&new_dst);
        h[10] = 0;
        h[11] = 0;
        assert_eq!(inc, checksum(&h));
    }

    #[test]
    fn replace128_is_eight_replace16() {
        let cases = [
            (
                0x1c46u16,
                0x2001_0db8_0000_0000_0000_0000_0000_0001u128,
                u128::MAX,
            ),
            (0x0000, u128::MAX, 0),
            (0xffff, 0, u128::MAX),
            (
                0x8000,
                0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10,
                0xfffe_fdfc_fbfa_f9f8_f7f6_f5f4_f3f2_f1f0,
            ),
        ];
        for (ck, old, new) in cases {
            let mut by_word = Incremental::new(ck);
            for i in (0..8).rev() {
                by_word = by_word.replace16((old >> (16 * i)) as u16, (new >> (16 * i)) as u16);
            }
            assert_eq!(
                Incremental::new(ck).replace128(old, new).finish(),
                by_word.finish()
            );
        }
    }

    #[test]
    fn pseudo_header_ipv6_example() {
        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8:ffff::2".parse().unwrap();
        let seg = [0x04, 0xd2, 0x16, 0x2e, 0x00, 0x0a, 0x00, 0x00, 0x61, 0x62];
        let mut manual = Vec::new();
        manual.extend_from_slice(&src.octets());
        manual.extend_from_slice(&dst.octets());
        manual.extend_from_slice(&[0, 0, 0, 10, 0, 0, 0, 17]);
        manual.extend_from_slice(&seg);
        assert_eq!(l4_checksum_ipv6(src, dst, 17, &seg), checksum(&manual));
    }

    #[test]
    fn pseudo_header_udp_example() {
        // UDP over IPv4: checksum computed fully equals summing pseudo-header + segment.
        let src = Ipv4Addr::new(192, 168, 0, 1);
        let dst = Ipv4Addr::new(192, 168, 0, 199);
        let seg = [0x04, 0xd2, 0x16, 0x2e, 0x00, 0x0a, 0x00, 0x00, 0x61, 0x62];
        let mut manual = Vec::new();
        manual.extend_from_slice(&src.octets());
        manual.extend_from_slice(&dst.octets());
        manual.extend_from_slice(&[0, 17, 0, 10]);
        manual.extend_from_slice(&seg);
        assert_eq!(l4_checksum_ipv4(src, dst, 17, &seg), checksum(&manual));
    }
}
