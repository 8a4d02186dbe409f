//! Hashes that must agree across hosts, processes, architectures and Rust versions.
//!
//! Everything here is spelled out in terms of fixed integer operations (no `std::hash`
//! `Hasher`, no ahash, no per-process seeds), so every dispatcher host behind ECMP
//! computes the same values and therefore the same Maglev picks.
use std::net::{SocketAddrV4, SocketAddrV6};

use crate::flow::{FlowKey, FlowKey6};

/// Seed of [`flow_hash`] (2^64 / golden ratio).
pub const FLOW_SEED: u64 = 0x9e37_79b9_7f4a_7c15;
/// Seeds of the two daemon-address hashes used for Maglev offset and skip.
pub const OFFSET_SEED: u64 = 0x243f_6a88_85a3_08d3; // pi fraction
pub const SKIP_SEED: u64 = 0x1319_8a2e_0370_7344; // pi fraction, next 64 bits

/// MurmurHash3's 64-bit finalizer: a bijection on `u64` with full avalanche.
#[inline]
pub const fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// Stable hash of a flow's 13-byte tuple ([`FlowKey::to_bytes`], big-endian fields).
///
/// With `a` = bytes 0..8 (client ip, service ip) as a big-endian `u64` and `b` =
/// bytes 8..13 (client port, service port, protocol) as a big-endian 40-bit integer:
///
/// ```text
/// flow_hash = fmix64(fmix64(a ^ FLOW_SEED) ^ b)
/// ```
///
/// For a fixed `a` this is injective in `b` (fmix64 is a bijection).
#[inline]
pub fn flow_hash(key: &FlowKey) -> u64 {
    let a = (u64::from(u32::from(key.client_ip)) << 32) | u64::from(u32::from(key.service_ip));
    let b = (u64::from(key.client_port) << 24)
        | (u64::from(key.service_port) << 8)
        | u64::from(key.protocol);
    fmix64(fmix64(a ^ FLOW_SEED) ^ b)
}

/// Stable hash of an IPv6 flow's 37-byte tuple ([`FlowKey6::to_bytes`]): the IPv4
/// hash's construction extended by one fmix64 round per further 64-bit word. With
/// `c1, c2` the client address and `s1, s2` the service address as big-endian
/// `u64` halves and `b` bytes 32..37 (ports, protocol) as a 40-bit integer:
///
/// ```text
/// flow_hash6 = fmix64(fmix64(fmix64(fmix64(fmix64(c1 ^ FLOW_SEED) ^ c2) ^ s1) ^ s2) ^ b)
/// ```
///
/// Each round is a bijection of its input, so for fixed earlier words the hash is
/// injective in the last one and every byte counts.
#[inline]
pub fn flow_hash6(key: &FlowKey6) -> u64 {
    let (c, s, b) = key.packed();
    let h = fmix64((c >> 64) as u64 ^ FLOW_SEED);
    let h = fmix64(h ^ c as u64);
    let h = fmix64(h ^ (s >> 64) as u64);
    let h = fmix64(h ^ s as u64);
    fmix64(h ^ b)
}

/// The two stable hashes of a daemon's address that seed its Maglev permutation:
/// with `x = ip << 16 | port` (48 bits, big-endian order),
/// `(fmix64(x ^ OFFSET_SEED), fmix64(x ^ SKIP_SEED))`.
#[inline]
pub fn addr_hashes(addr: SocketAddrV4) -> (u64, u64) {
    let x = (u64::from(u32::from(*addr.ip())) << 16) | u64::from(addr.port());
    (fmix64(x ^ OFFSET_SEED), fmix64(x ^ SKIP_SEED))
}

/// [`addr_hashes`] of an IPv6 daemon: the 128-bit address folded into 64 bits
/// by the murmur3 finalizer (high half, then low half, as [`flow_hash6`] does),
/// then the port, each seed as for IPv4. Stable across hosts: every instance
/// with the same daemons builds the same Maglev table. Flow label and scope are
/// not part of it.
#[inline]
pub fn addr_hashes6(addr: SocketAddrV6) -> (u64, u64) {
    let ip = u128::from(*addr.ip());
    let folded = fmix64(fmix64((ip >> 64) as u64) ^ ip as u64);
    let x = fmix64(folded ^ u64::from(addr.port()));
    (fmix64(x ^ OFFSET_SEED), fmix64(x ^ SKIP_SEED))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn fmix64_known_values() {
        // Independent of this crate: the murmur3 finalizer maps 0 to 0 and is a bijection.
        assert_eq!(fmix64(0), 0);
        assert_ne!(fmix64(1), fmix64(2));
    }

    #[test]
    fn flow_hash6_uses_every_byte() {
        use std::net::{Ipv6Addr, SocketAddrV6};
        let k = FlowKey6::new(
            SocketAddrV6::new("2001:db8::7".parse().unwrap(), 40000, 0, 0),
            SocketAddrV6::new("2001:db8:1::100".parse().unwrap(), 443, 0, 0),
            6,
        );
        let base = flow_hash6(&k);
        let bytes = k.to_bytes();
        for i in 0..37 {
            for bit in 0..8 {
                let mut b = bytes;
                b[i] ^= 1 << bit;
                let k2 = FlowKey6 {
                    client_ip: Ipv6Addr::from(<[u8; 16]>::try_from(&b[..16]).unwrap()),
                    service_ip: Ipv6Addr::from(<[u8; 16]>::try_from(&b[16..32]).unwrap()),
                    client_port: u16::from_be_bytes([b[32], b[33]]),
                    service_port: u16::from_be_bytes([b[34], b[35]]),
                    protocol: b[36],
                };
                let d = (flow_hash6(&k2) ^ base).count_ones();
                assert!(
                    (12..=52).contains(&d),
                    "byte {i} bit {bit}: {d} bits differ"
                );
            }
        }
    }

    #[test]
    fn flow_hash_uses_every_byte() {
        let k = FlowKey::new(
            SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 7), 40000),
            SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 443),
            6,
        );
        let base = flow_hash(&k);
        let bytes = k.to_bytes();
        for i in 0..13 {
            for bit in 0..8 {
                let mut b = bytes;
                b[i] ^= 1 << bit;
                let k2 = FlowKey {
                    client_ip: Ipv4Addr::new(b[0], b[1], b[2], b[3]),
                    service_ip: Ipv4Addr::new(b[4], b[5], b[6], b[7]),
                    client_port: u16::from_be_bytes([b[8], b[9]]),
                    service_port: u16::from_be_bytes([b[10], b[11]]),
                    protocol: b[12],
                };
                let d = (flow_hash(&k2) ^ base).count_ones();
                assert!(
                    (12..=52).contains(&d),
                    "byte {i} bit {bit}: {d} bits differ"
                );
            }
        }
    }
}
