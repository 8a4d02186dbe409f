//! Flow key, record and the per-worker flow table.
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

mod state;
mod table;

pub use state::{tcp_flags, RstWindow, TcpState};
pub use table::{
    Change, FlowHash, FlowRecord, FlowRecord6, FlowTable, FlowTable6, InsertError, Record, Table,
    MAX_CAPACITY, RECORD6_BYTES, RECORD_BYTES, SLOT6_BYTES, SLOT_BYTES,
};

/// What the worker↔loop protocol and the loop's tracker need of a flow key of
/// either family: the type of a daemon's address, and the key as one value to
/// hash and order. Implemented by [`FlowKey`] and [`FlowKey6`]; everything
/// generic over it is monomorphised, so the IPv4 code is what it was.
pub trait KeyFamily: Copy + Eq + std::fmt::Debug + Send + 'static {
    /// A daemon's address in this family.
    type Daemon: Copy
        + Eq
        + std::hash::Hash
        + std::fmt::Debug
        + std::fmt::Display
        + Into<std::net::SocketAddr>
        + Send
        + 'static;
    /// The key packed for hashing and ordering: distinct keys, distinct values.
    type Packed: Copy + Ord + std::hash::Hash + std::fmt::Debug;
    fn pack(&self) -> Self::Packed;
    /// IP protocol number (6 TCP, 17 UDP).
    fn protocol(&self) -> u8;
    /// The client's address and port, of either family (for reports).
    fn client_addr(&self) -> std::net::SocketAddr;
    /// The service's address and port, of either family (for reports).
    fn service_addr(&self) -> std::net::SocketAddr;
}

impl KeyFamily for FlowKey {
    type Daemon = SocketAddrV4;
    type Packed = u128;
    #[inline(always)]
    fn pack(&self) -> u128 {
        self.packed()
    }
    #[inline(always)]
    fn protocol(&self) -> u8 {
        self.protocol
    }
    fn client_addr(&self) -> std::net::SocketAddr {
        self.client().into()
    }
    fn service_addr(&self) -> std::net::SocketAddr {
        self.service().into()
    }
}

impl KeyFamily for FlowKey6 {
    type Daemon = SocketAddrV6;
    type Packed = (u128, u128, u64);
    #[inline(always)]
    fn pack(&self) -> (u128, u128, u64) {
        self.packed()
    }
    #[inline(always)]
    fn protocol(&self) -> u8 {
        self.protocol
    }
    fn client_addr(&self) -> std::net::SocketAddr {
        self.client().into()
    }
    fn service_addr(&self) -> std::net::SocketAddr {
        self.service().into()
    }
}

/// The client side 5-tuple of a connection as it arrives at the front: the key of
/// the per-worker table and the input of the consistent-hash policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub client_ip: Ipv4Addr,
    pub service_ip: Ipv4Addr,
    pub client_port: u16,
    pub service_port: u16,
    /// IP protocol number (6 TCP, 17 UDP).
    pub protocol: u8,
}

impl FlowKey {
    pub fn new(client: SocketAddrV4, service: SocketAddrV4, protocol: u8) -> Self {
        Self {
            client_ip: *client.ip(),
            service_ip: *service.ip(),
            client_port: client.port(),
            service_port: service.port(),
            protocol,
        }
    }

    pub fn client(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.client_ip, self.client_port)
    }

    pub fn service(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.service_ip, self.service_port)
    }

    /// The 13 bytes of the tuple in wire (big-endian) order: client ip, service ip,
    /// client port, service port, protocol. The input of
    /// [`flow_hash`](crate::balance::flow_hash).
    #[inline]
    pub fn to_bytes(&self) -> [u8; 13] {
        let c = self.client_ip.octets();
        let s = self.service_ip.octets();
        let cp = self.client_port.to_be_bytes();
        let sp = self.service_port.to_be_bytes();
        [
            c[0],
            c[1],
            c[2],
            c[3],
            s[0],
            s[1],
            s[2],
            s[3],
            cp[0],
            cp[1],
            sp[0],
            sp[1],
            self.protocol,
        ]
    }

    /// The tuple packed into the low 104 bits of a `u128`, in the order of
    /// [`to_bytes`](Self::to_bytes) (client ip in the most significant position).
    /// Distinct keys give distinct values.
    #[inline(always)]
    pub fn packed(&self) -> u128 {
        (u128::from(u32::from(self.client_ip)) << 72)
            | (u128::from(u32::from(self.service_ip)) << 40)
            | (u128::from(self.client_port) << 24)
            | (u128::from(self.service_port) << 8)
            | u128::from(self.protocol)
    }
}

/// The client side 5-tuple of an IPv6 connection as it arrives at the front: the
/// IPv6 counterpart of [`FlowKey`], kept apart so that the IPv4 key and record do
/// not grow (a table per family; see the IPv6 plan in the issue note). Flow label
/// and scope are not part of it: a client may change its flow label mid-connection
/// (RFC 6437 lets it), and the front's addresses are global.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey6 {
    pub client_ip: Ipv6Addr,
    pub service_ip: Ipv6Addr,
    pub client_port: u16,
    pub service_port: u16,
    /// IP protocol number (6 TCP, 17 UDP).
    pub protocol: u8,
}

impl FlowKey6 {
    pub fn new(client: SocketAddrV6, service: SocketAddrV6, protocol: u8) -> Self {
        Self {
            client_ip: *client.ip(),
            service_ip: *service.ip(),
            client_port: client.port(),
            service_port: service.port(),
            protocol,
        }
    }

    pub fn client(&self) -> SocketAddrV6 {
        SocketAddrV6::new(self.client_ip, self.client_port, 0, 0)
    }

    pub fn service(&self) -> SocketAddrV6 {
        SocketAddrV6::new(self.service_ip, self.service_port, 0, 0)
    }

    /// The 37 bytes of the tuple in wire (big-endian) order: client ip, service
    /// ip, client port, service port, protocol, as [`FlowKey::to_bytes`] lays out
    /// the IPv4 one. The input of [`flow_hash6`](crate::balance::flow_hash6).
    #[inline]
    pub fn to_bytes(&self) -> [u8; 37] {
        let mut b = [0u8; 37];
        b[..16].copy_from_slice(&self.client_ip.octets());
        b[16..32].copy_from_slice(&self.service_ip.octets());
        b[32..34].copy_from_slice(&self.client_port.to_be_bytes());
        b[34..36].copy_from_slice(&self.service_port.to_be_bytes());
        b[36] = self.protocol;
        b
    }

    /// The tuple as three integers in the order of [`to_bytes`](Self::to_bytes):
    /// client ip, service ip, and ports and protocol in the low 40 bits. Distinct
    /// keys give distinct triples: what a flow table hashes and compares.
    #[inline(always)]
    pub fn packed(&self) -> (u128, u128, u64) {
        (
            u128::from(self.client_ip),
            u128::from(self.service_ip),
            (u64::from(self.client_port) << 24)
                | (u64::from(self.service_port) << 8)
                | u64::from(self.protocol),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_bytes_and_packed_agree() {
        let c: Ipv6Addr = "2001:db8::1:2:3:4".parse().unwrap();
        let s: Ipv6Addr = "2001:db8:ffff::7".parse().unwrap();
        let k = FlowKey6::new(
            SocketAddrV6::new(c, 0x0506, 0xabcde, 3),
            SocketAddrV6::new(s, 0x0b0c, 0, 0),
            17,
        );
        let b = k.to_bytes();
        assert_eq!(b[..16], c.octets());
        assert_eq!(b[16..32], s.octets());
        assert_eq!(b[32..], [5, 6, 11, 12, 17]);
        let (pc, ps, rest) = k.packed();
        assert_eq!(pc.to_be_bytes(), c.octets());
        assert_eq!(ps.to_be_bytes(), s.octets());
        let mut wide = [0u8; 8];
        wide[3..].copy_from_slice(&b[32..]);
        assert_eq!(rest, u64::from_be_bytes(wide));
        // Flow label and scope are not part of the flow.
        assert_eq!(k.client(), SocketAddrV6::new(c, 0x0506, 0, 0));
        assert_eq!(k.service().port(), 0x0b0c);
        assert_eq!(k, FlowKey6::new(k.client(), k.service(), 17));
    }

    #[test]
    fn bytes_and_packed_agree() {
        let k = FlowKey::new(
            SocketAddrV4::new(Ipv4Addr::new(1, 2, 3, 4), 0x0506),
            SocketAddrV4::new(Ipv4Addr::new(7, 8, 9, 10), 0x0b0c),
            13,
        );
        assert_eq!(k.to_bytes(), [1, 2, 3, 4, 7, 8, 9, 10, 5, 6, 11, 12, 13]);
        let mut wide = [0u8; 16];
        wide[3..].copy_from_slice(&k.to_bytes());
        assert_eq!(k.packed(), u128::from_be_bytes(wide));
        assert_eq!(
            (k.client(), k.service().port()),
            (SocketAddrV4::new(Ipv4Addr::new(1, 2, 3, 4), 0x0506), 0x0b0c)
        );
    }
}
