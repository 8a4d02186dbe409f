//! Per-connection TCP state as the dispatcher observes it (both directions pass here).

/// TCP flag bits as they appear in byte 13 of the TCP header.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// What the dispatcher has seen of a connection, as a bit set.
///
/// This is an observer's view, not a TCP state machine: it exists to pick expiry
/// timeouts (short for half-open and closed flows, long for established ones).
///
/// * [`SYN_SEEN`](Self::SYN_SEEN): a client SYN passed.
/// * [`ESTABLISHED`](Self::ESTABLISHED): a client ACK (without SYN) after a SYN.
/// * [`FIN_CLIENT`](Self::FIN_CLIENT) / [`FIN_DAEMON`](Self::FIN_DAEMON): that side sent FIN.
/// * [`RST`](Self::RST): either side sent RST.
/// * [`CLOSED`](Self::CLOSED): RST seen, or FIN seen from both sides.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpState(pub u8);

impl TcpState {
    pub const NONE: Self = Self(0);
    pub const SYN_SEEN: Self = Self(1 << 0);
    pub const ESTABLISHED: Self = Self(1 << 1);
    pub const FIN_CLIENT: Self = Self(1 << 2);
    pub const FIN_DAEMON: Self = Self(1 << 3);
    pub const RST: Self = Self(1 << 4);
    pub const CLOSED: Self = Self(1 << 5);

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

    #[inline]
    pub const fn is_closed(self) -> bool {
        self.contains(Self::CLOSED)
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
        self.on_common(flags);
    }

    /// Records a segment from the daemon with the given TCP flag byte.
    #[inline]
    pub fn on_daemon_segment(&mut self, flags: u8) {
        if flags & tcp_flags::FIN != 0 {
            self.insert(Self::FIN_DAEMON);
        }
        self.on_common(flags);
    }

    #[inline]
    fn on_common(&mut self, flags: u8) {
        if flags & tcp_flags::RST != 0 {
            self.insert(Self::RST);
        }
        if self.contains(Self::RST) || self.contains(Self(Self::FIN_CLIENT.0 | Self::FIN_DAEMON.0))
        {
            self.insert(Self::CLOSED);
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
        s.on_daemon_segment(SYN | ACK);
        assert!(!s.is_established());
        s.on_client_segment(ACK);
        assert!(s.is_established());
        s.on_client_segment(FIN | ACK);
        assert!(s.contains(TcpState::FIN_CLIENT) && !s.is_closed());
        s.on_daemon_segment(FIN | ACK);
        assert!(s.is_closed());
    }

    #[test]
    fn ack_without_syn_is_not_established_and_rst_closes() {
        let mut s = TcpState::default();
        s.on_client_segment(ACK);
        assert!(!s.is_established());
        s.on_daemon_segment(RST);
        assert!(s.contains(TcpState::RST) && s.is_closed());
        s.remove(TcpState::CLOSED);
        assert!(!s.is_closed());
    }
}
