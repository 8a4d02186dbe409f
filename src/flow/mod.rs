//! Flow key, record and the per-worker flow table.
use std::net::{Ipv4Addr, SocketAddrV4};

mod state;
mod table;

pub use state::{tcp_flags, RstWindow, TcpState};
pub use table::{
    Change, FlowHash, FlowRecord, FlowTable, InsertError, MAX_CAPACITY, RECORD_BYTES, SLOT_BYTES,
};

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

#[cfg(test)]
mod tests {
    use super::*;

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
