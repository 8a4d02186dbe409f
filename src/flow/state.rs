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
/// * [`RECOVERED`](Self::RECOVERED): the record was made for a mid-connection
///   segment (no SYN seen here); it becomes established once a later client
///   segment moves its sequence or acknowledgment number past the first one's.
/// * [`RST`](Self::RST): a reset from either side was accepted (its sequence
///   number was in the window); set by the worker, not by `on_client_segment`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpState(pub u8);

impl TcpState {
    pub const NONE: Self = Self(0);
    pub const SYN_SEEN: Self = Self(1 << 0);
    pub const ESTABLISHED: Self = Self(1 << 1);
    pub const FIN_CLIENT: Self = Self(1 << 2);
    pub const RECOVERED: Self = Self(1 << 3);
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

    /// The client has closed (FIN) or either side reset: a SYN from the
    /// client's port now opens a new connection, not a retransmission.
    #[inline]
    pub const fn is_closing(self) -> bool {
        self.contains(Self::FIN_CLIENT) || self.contains(Self::RST)
    }

    /// Records a segment from the client with the given TCP flag byte (a reset
    /// is the caller's to judge).
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
    }
}

/// Where a reset's sequence number must lie, around the value the record
/// expects, for the reset to end the connection. A blind reset (someone off
/// the path who knows the 4-tuple, not the sequence numbers) must guess inside
/// this window; a genuine one is at the expected value, or ahead of it by what
/// is in flight. The daemon's and client's kernels still judge the reset
/// themselves (RFC 5961); this keeps a blind one from ending the mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RstWindow {
    /// How far before the expected value (reordering).
    pub before: u32,
    /// How far after it.
    pub after: u32,
}

impl RstWindow {
    /// A client's reset carries its next sequence number, which the record knows
    /// exactly (every client segment passes the owner): 64 KiB either way, about
    /// one chance in 32,768 for a blind guess.
    pub const CLIENT: RstWindow = RstWindow {
        before: 1 << 16,
        after: 1 << 16,
    };
    /// A daemon's reset carries its next sequence number, ahead of the client's
    /// last acknowledgment by what the daemon has in flight (as much as the
    /// client's window): up to 16 MiB ahead, about one chance in 256.
    pub const DAEMON: RstWindow = RstWindow {
        before: 1 << 16,
        after: 1 << 24,
    };

    /// Whether `seq` lies in the window around `expected`, modulo 2^32.
    #[inline]
    pub fn admits(self, seq: u32, expected: u32) -> bool {
        let ahead = seq.wrapping_sub(expected);
        ahead < self.after || ahead.wrapping_neg() <= self.before
    }
}

#[cfg(test)]
mod tests {
    use super::{tcp_flags::*, RstWindow, TcpState};

    #[test]
    fn reset_windows_wrap_around() {
        let w = RstWindow::DAEMON;
        for expected in [0u32, 1000, u32::MAX - 10] {
            assert!(w.admits(expected, expected));
            assert!(w.admits(expected.wrapping_add((1 << 24) - 1), expected));
            assert!(!w.admits(expected.wrapping_add(1 << 24), expected));
            assert!(w.admits(expected.wrapping_sub(1 << 16), expected));
            assert!(!w.admits(expected.wrapping_sub((1 << 16) + 1), expected));
            assert!(!w.admits(expected.wrapping_add(1 << 31), expected));
        }
        assert!(!RstWindow::CLIENT.admits(1000 + (1 << 16), 1000));
    }

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
    fn ack_without_syn_is_not_established_and_rst_is_not_taken_on_its_word() {
        let mut s = TcpState::default();
        s.on_client_segment(ACK);
        assert!(!s.is_established());
        s.on_client_segment(RST | ACK);
        assert_eq!(s, TcpState::NONE);
        s.insert(TcpState::RST);
        s.remove(TcpState::RST);
        assert_eq!(s, TcpState::NONE);
    }
}
