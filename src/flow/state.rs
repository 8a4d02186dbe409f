//! Per-connection TCP state as a worker observes it on the client's side: the
//! reverse path is stateless (a reply may arrive on any queue, and its record on
//! another worker), so what the daemon sends reaches the loop as events instead.

/// TCP flag bits as they appear in byte 13 of the TCP header.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// What a worker has seen of a connection's client side, as a bit set.
///
/// This is an observer's view, not a TCP state machine: its changes are what the
/// worker reports to the loop (established, FIN, RST), and a SYN that reuses the
/// port of a closing record restarts it.
///
/// * [`SYN_SEEN`](Self::SYN_SEEN): a client SYN passed.
/// * [`ESTABLISHED`](Self::ESTABLISHED): a client ACK (without SYN) after a SYN.
/// * [`FIN_CLIENT`](Self::FIN_CLIENT): the client sent FIN.
/// * [`RST`](Self::RST): the client sent RST.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpState(pub u8);

impl TcpState {
    pub const NONE: Self = Self(0);
    pub const SYN_SEEN: Self = Self(1 << 0);
    pub const ESTABLISHED: Self = Self(1 << 1);
    pub const FIN_CLIENT: Self = Self(1 << 2);
    pub const RST: Self = Self(1 << 4);

    /// All bits of `other` are set in `self`.
    #[inline]
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    #[inline]
    pub fn insert(&mut self, other: Self) {
        self.0 |= other.0;
    }

    #[inline]
    pub fn remove(&mut self, other: Self) {
        self.0 &= !other.0;
    }

    #[inline]
    pub const fn is_established(self) -> bool {
        self.contains(Self::ESTABLISHED)
    }

    /// Records a segment from the client with the given TCP flag byte.
    #[inline]
    pub fn on_client_segment(&mut self, flags: u8) {
        if flags & tcp_flags::SYN != 0 {
            self.insert(Self::SYN_SEEN);
        } else if flags & tcp_flags::ACK != 0 && self.contains(Self::SYN_SEEN) {
            self.insert(Self::ESTABLISHED);
        }
        if flags & tcp_flags::FIN != 0 {
            self.insert(Self::FIN_CLIENT);
        }
        if flags & tcp_flags::RST != 0 {
            self.insert(Self::RST);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{tcp_flags::*, TcpState};

    #[test]
    fn handshake_and_close() {
        let mut s = TcpState::default();
        s.on_client_segment(SYN);
        assert!(s.contains(TcpState::SYN_SEEN) && !s.is_established());
        s.on_client_segment(ACK);
        assert!(s.is_established());
        s.on_client_segment(FIN | ACK);
        assert!(s.contains(TcpState::FIN_CLIENT) && !s.contains(TcpState::RST));
    }

    #[test]
    fn ack_without_syn_is_not_established_and_rst_is_recorded() {
        let mut s = TcpState::default();
        s.on_client_segment(ACK);
        assert!(!s.is_established());
        s.on_client_segment(RST | ACK);
        assert!(s.contains(TcpState::RST));
        s.remove(TcpState::RST);
        assert_eq!(s, TcpState::NONE);
    }
}
