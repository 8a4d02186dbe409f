//! Flow key, record and the per-queue flow table.
use std::net::{Ipv4Addr, SocketAddrV4};

/// The client side 5-tuple of a connection as it arrives at the front: the key of
/// the per-queue table and the input of the consistent-hash policy.
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
}
