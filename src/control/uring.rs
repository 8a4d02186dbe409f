//! The management loop's io_uring: a slab of in-flight operations and safe
//! constructors for the few kinds the loop submits.
//!
//! Every in-flight operation is a slot, its index the `user_data`; the slot owns
//! whatever buffer, timespec, address or descriptor the kernel is using until the
//! completion comes back, so nothing the kernel may touch is freed or moved early.
//! Each operation carries a caller's `Tag` that comes back with its completion.
#![allow(unsafe_code)] // io_uring submissions and new socket descriptors; each block says why it is sound

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    time::Duration,
};

use anyhow::{Context, Result};
use io_uring::{opcode, squeue, types, IoUring};

/// What the kernel may be reading or writing while an operation is in flight.
/// Heap allocations, so that moving a slot (the slab grows) moves no byte the
/// kernel points at.
enum Held {
    Nothing,
    /// A poll: nothing the kernel touches, and no descriptor in its result.
    Poll,
    Buffer(Box<[u8]>),
    Timespec(Box<types::Timespec>),
    Socket {
        fd: OwnedFd,
        buf: Box<[u8]>,
        /// For a send, how much of `buf` an earlier send already took.
        from: usize,
    },
    Connect {
        /// Kept open until the connect completes, then handed back with the
        /// completion (closed when dropped).
        fd: OwnedFd,
        addr: Box<ConnectAddr>,
    },
}

/// A connect's destination as the kernel reads it, of either family.
enum ConnectAddr {
    V4(libc::sockaddr_in),
    V6(libc::sockaddr_in6),
}

impl ConnectAddr {
    fn of(addr: SocketAddr) -> Self {
        match addr {
            SocketAddr::V4(a) => ConnectAddr::V4(libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            }),
            SocketAddr::V6(a) => ConnectAddr::V6(libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            }),
        }
    }

    fn family(&self) -> libc::c_int {
        match self {
            ConnectAddr::V4(_) => libc::AF_INET,
            ConnectAddr::V6(_) => libc::AF_INET6,
        }
    }

    /// The address and its length, for connect(2).
    fn raw(&self) -> (*const libc::sockaddr, libc::socklen_t) {
        match self {
            ConnectAddr::V4(a) => (
                (a as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ),
            ConnectAddr::V6(a) => (
                (a as *const libc::sockaddr_in6).cast(),
                size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            ),
        }
    }
}

struct Slot<Tag> {
    /// `None` for the linked timeout of a connect, whose completion is of no use.
    tag: Option<Tag>,
    held: Held,
}

/// A completed operation: its tag, the kernel's result (negative: `-errno`) and
/// what the slot held, handed back.
pub struct Completion<Tag> {
    pub tag: Tag,
    pub result: i32,
    /// A read's or receive's buffer, or a send's (all of it).
    pub buf: Option<Box<[u8]>>,
    /// The socket a receive, send or connect used, or the one an accept created.
    pub fd: Option<OwnedFd>,
    /// For a send or receive: the bytes of `buf` sent or filled so far, this
    /// completion's included.
    pub sent: usize,
}

impl<Tag> Completion<Tag> {
    /// The result as an error, when it is one.
    pub fn error(&self) -> Option<io::Error> {
        (self.result < 0).then(|| io::Error::from_raw_os_error(-self.result))
    }
}

pub struct Uring<Tag> {
    ring: IoUring,
    slots: Vec<Option<Slot<Tag>>>,
    free: Vec<usize>,
}

/// `entry`, linked to the timeout pushed right after it when there is one.
/// Which way a socket operation moves bytes.
#[derive(Clone, Copy)]
enum Way {
    Recv,
    Send,
}

fn linked(entry: squeue::Entry, timeout: Option<Duration>) -> squeue::Entry {
    match timeout {
        Some(_) => entry.flags(squeue::Flags::IO_LINK),
        None => entry,
    }
}

fn timespec(d: Duration) -> Box<types::Timespec> {
    Box::new(
        types::Timespec::new()
            .sec(d.as_secs())
            .nsec(d.subsec_nanos()),
    )
}

impl<Tag> Uring<Tag> {
    pub fn new(entries: u32) -> Result<Self> {
        Ok(Self {
            ring: IoUring::new(entries).context("creating an io_uring (kernel 5.6 or later)")?,
            slots: Vec::new(),
            free: Vec::new(),
        })
    }

    /// Stores the slot and queues the entry `build` makes from what it holds.
    ///
    /// # Safety
    /// Every pointer in the entry must point into `held` (its heap parts), and
    /// every descriptor must be owned by `held` or outlive the operation.
    unsafe fn push(
        &mut self,
        tag: Option<Tag>,
        held: Held,
        build: impl FnOnce(&mut Held) -> squeue::Entry,
    ) -> Result<()> {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        let slot = self.slots[index].insert(Slot { tag, held });
        let entry = build(&mut slot.held).user_data(index as u64);
        loop {
            // SAFETY: the caller promised that the entry refers only to what the
            // slot holds, and the slot is freed only when the completion arrives.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return Ok(());
            }
            // A full submission queue: hand what is queued to the kernel first.
            self.ring.submit().context("submitting to the io_uring")?;
        }
    }

    /// Hands what is queued to the kernel unless `n` more entries fit. An
    /// operation and its linked timeout must go in one submission: split by a
    /// full queue, the operation would run unbounded (a connect to a silent
    /// host for minutes) and the timeout would fail alone.
    fn reserve(&mut self, n: usize) -> Result<()> {
        let free = {
            let sq = self.ring.submission();
            sq.capacity() - sq.len()
        };
        if free < n {
            self.ring.submit().context("submitting to the io_uring")?;
        }
        Ok(())
    }

    /// Reads up to `len` bytes from `fd`, which must stay open until completion
    /// (the loop's own eventfd and signalfd do).
    pub fn read(&mut self, tag: Tag, fd: RawFd, len: usize) -> Result<()> {
        let held = Held::Buffer(vec![0; len].into_boxed_slice());
        // SAFETY: the entry points at the slot's own buffer, of the length given.
        unsafe {
            self.push(Some(tag), held, |held| {
                let Held::Buffer(buf) = held else {
                    unreachable!("just stored")
                };
                opcode::Read::new(types::Fd(fd), buf.as_mut_ptr(), buf.len() as u32).build()
            })
        }
    }

    /// Completes after `after`.
    pub fn timeout(&mut self, tag: Tag, after: Duration) -> Result<()> {
        // SAFETY: the entry points at the slot's own timespec.
        unsafe {
            self.push(Some(tag), Held::Timespec(timespec(after)), |held| {
                let Held::Timespec(ts) = held else {
                    unreachable!("just stored")
                };
                opcode::Timeout::new(&**ts as *const types::Timespec).build()
            })
        }
    }

    /// Completes once `fd` is readable (one shot: poll again for more). `fd`
    /// must stay open until completion (the loop's own sockets do).
    pub fn poll_readable(&mut self, tag: Tag, fd: RawFd) -> Result<()> {
        // SAFETY: a poll points at nothing; the descriptor outlives it.
        unsafe {
            self.push(Some(tag), Held::Poll, |_| {
                opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32).build()
            })
        }
    }

    /// Accepts one connection on `listener`, which must stay open until completion.
    pub fn accept(&mut self, tag: Tag, listener: RawFd) -> Result<()> {
        // SAFETY: null address pointers ask for no peer address; nothing else is
        // pointed at.
        unsafe {
            self.push(Some(tag), Held::Nothing, |_| {
                opcode::Accept::new(
                    types::Fd(listener),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
                .flags(libc::SOCK_CLOEXEC)
                .build()
            })
        }
    }

    /// Receives into `buf[from..]` on `fd` (more of a request whose start is
    /// in `buf[..from]`), cancelled after `timeout` (the completion's result
    /// is then `-ECANCELED`); both come back with the completion, whose `sent`
    /// says how far the buffer is filled.
    pub fn recv_within(
        &mut self,
        tag: Tag,
        fd: OwnedFd,
        buf: Box<[u8]>,
        from: usize,
        timeout: Duration,
    ) -> Result<()> {
        self.socket_op(Way::Recv, tag, fd, buf, from, Some(timeout))
    }

    /// A receive into, or a send from, `buf[from..]` on `fd`, both held by the
    /// slot until its completion.
    fn socket_op(
        &mut self,
        way: Way,
        tag: Tag,
        fd: OwnedFd,
        buf: Box<[u8]>,
        from: usize,
        timeout: Option<Duration>,
    ) -> Result<()> {
        self.reserve(1 + usize::from(timeout.is_some()))?;
        let raw = types::Fd(fd.as_raw_fd());
        let from = from.min(buf.len());
        let held = Held::Socket { fd, buf, from };
        // SAFETY: the entry points into the slot's own buffer, within its
        // length, and the descriptor is the slot's own.
        unsafe {
            self.push(Some(tag), held, |held| {
                let Held::Socket { buf, from, .. } = held else {
                    unreachable!("just stored")
                };
                let rest = &mut buf[*from..];
                let (ptr, len) = (rest.as_mut_ptr(), rest.len() as u32);
                let entry = match way {
                    Way::Recv => opcode::Recv::new(raw, ptr, len).build(),
                    Way::Send => opcode::Send::new(raw, ptr, len)
                        // A peer that closed must fail the send, not kill us
                        // with SIGPIPE.
                        .flags(libc::MSG_NOSIGNAL)
                        .build(),
                };
                linked(entry, timeout)
            })?;
        }
        self.link_timeout(timeout)
    }

    /// Sends `buf[from..]` on `fd`; both come back with the completion, whose
    /// `sent` says how far the buffer is sent.
    pub fn send(&mut self, tag: Tag, fd: OwnedFd, buf: Box<[u8]>, from: usize) -> Result<()> {
        self.socket_op(Way::Send, tag, fd, buf, from, None)
    }

    /// [`Uring::send`] cancelled after `timeout` (the completion's result is
    /// then `-ECANCELED`).
    pub fn send_within(
        &mut self,
        tag: Tag,
        fd: OwnedFd,
        buf: Box<[u8]>,
        from: usize,
        timeout: Duration,
    ) -> Result<()> {
        self.socket_op(Way::Send, tag, fd, buf, from, Some(timeout))
    }

    /// The linked timeout that follows an entry [`linked`] flagged, if any:
    /// its completion is of no use (the operation's own says `-ECANCELED`).
    fn link_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        let Some(timeout) = timeout else {
            return Ok(());
        };
        // SAFETY: the entry points at the slot's own timespec.
        unsafe {
            self.push(None, Held::Timespec(timespec(timeout)), |held| {
                let Held::Timespec(ts) = held else {
                    unreachable!("just stored")
                };
                opcode::LinkTimeout::new(&**ts as *const types::Timespec).build()
            })
        }
    }

    /// A TCP connect to `addr` from a new socket, cancelled after `timeout`: the
    /// completion's result is 0 (connected), `-ECONNREFUSED` and the like, or
    /// `-ECANCELED` when the timeout fired first.
    pub fn connect(&mut self, tag: Tag, addr: SocketAddr, timeout: Duration) -> Result<()> {
        let sin = Box::new(ConnectAddr::of(addr));
        // SAFETY: plain socket(2); a non-negative result is a new fd we own.
        let raw = unsafe {
            libc::socket(
                sin.family(),
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error()).context("creating a probe socket");
        }
        // SAFETY: raw is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        self.reserve(2)?;
        // SAFETY: the entry points at the slot's own address, of its size, and
        // the descriptor is the slot's own.
        unsafe {
            self.push(Some(tag), Held::Connect { fd, addr: sin }, |held| {
                let Held::Connect { addr, .. } = held else {
                    unreachable!("just stored")
                };
                let (addr, len) = addr.raw();
                opcode::Connect::new(types::Fd(raw), addr, len)
                    .build()
                    .flags(squeue::Flags::IO_LINK)
            })?;
            // SAFETY: the entry points at the slot's own timespec.
            self.push(None, Held::Timespec(timespec(timeout)), |held| {
                let Held::Timespec(ts) = held else {
                    unreachable!("just stored")
                };
                opcode::LinkTimeout::new(&**ts as *const types::Timespec).build()
            })
        }
    }

    /// Submits what is queued and waits for at least one completion; returns every
    /// completion there is. A signal that interrupts the wait (SIGSTOP/SIGCONT, a
    /// debugger attaching) loses nothing: the next call waits again.
    pub fn wait(&mut self) -> Result<Vec<Completion<Tag>>> {
        match self.ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("waiting on the io_uring"),
        }
        let done: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        Ok(done
            .into_iter()
            .filter_map(|(index, result)| self.complete(index as usize, result))
            .collect())
    }

    fn complete(&mut self, index: usize, result: i32) -> Option<Completion<Tag>> {
        let slot = self.slots.get_mut(index)?.take()?;
        self.free.push(index);
        let tag = slot.tag?;
        let mut done = Completion {
            tag,
            result,
            buf: None,
            fd: None,
            sent: 0,
        };
        match slot.held {
            Held::Nothing if result >= 0 => {
                // SAFETY: only an accept holds nothing, and a successful accept
                // returns a new descriptor that we now own.
                done.fd = Some(unsafe { OwnedFd::from_raw_fd(result) });
            }
            Held::Nothing | Held::Poll | Held::Timespec(_) => {}
            Held::Connect { fd, .. } => done.fd = Some(fd),
            Held::Buffer(buf) => done.buf = Some(buf),
            Held::Socket { fd, buf, from } => {
                done.sent = from + result.max(0) as usize;
                done.fd = Some(fd);
                done.buf = Some(buf);
            }
        }
        Some(done)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{TcpListener, TcpStream},
        time::Instant,
    };

    use super::*;

    #[derive(Debug, PartialEq)]
    enum T {
        Guard,
        Connect,
    }

    /// A connect to a listener whose accept queue is full hangs (the SYN is
    /// dropped); its linked timeout must cancel it even when the submission
    /// queue fills between the two entries.
    #[test]
    fn a_linked_timeout_is_never_split_from_its_connect() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        // SAFETY: plain listen(2) on a socket we own: a backlog of one.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
        let addr = match listener.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            other => panic!("{other}"),
        };
        // Fill the accept queue (never accepted).
        let _queued: Vec<TcpStream> = (0..2)
            .filter_map(|_| {
                TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200)).ok()
            })
            .collect();

        let mut ring: Uring<T> = Uring::new(2).unwrap();
        // One slot left of two: the pair must not be split across submissions.
        ring.timeout(T::Guard, Duration::from_secs(3)).unwrap();
        let start = Instant::now();
        ring.connect(T::Connect, addr.into(), Duration::from_millis(100))
            .unwrap();
        loop {
            let done = ring.wait().unwrap();
            if let Some(c) = done.iter().find(|c| c.tag == T::Connect) {
                assert_eq!(c.result, -libc::ECANCELED, "cancelled by its timeout");
                assert!(
                    start.elapsed() < Duration::from_secs(1),
                    "{:?}",
                    start.elapsed()
                );
                break;
            }
            assert!(
                done.iter().all(|c| c.tag != T::Guard),
                "the connect outlived its 100 ms timeout by seconds"
            );
        }
    }

    /// Health probes of an IPv6 daemon: the connect goes over AF_INET6 and
    /// says whether something listens.
    #[test]
    fn a_connect_reaches_an_ipv6_listener_and_is_refused_by_a_closed_port() {
        let listener = TcpListener::bind("[::1]:0").expect("IPv6 on lo");
        let open = listener.local_addr().unwrap();
        let closed = {
            let l = TcpListener::bind("[::1]:0").unwrap();
            l.local_addr().unwrap()
        };
        let mut ring: Uring<T> = Uring::new(8).unwrap();
        for (addr, want) in [(open, 0), (closed, -libc::ECONNREFUSED)] {
            ring.connect(T::Connect, addr, Duration::from_secs(2))
                .unwrap();
            let result = loop {
                let done = ring.wait().unwrap();
                if let Some(c) = done.iter().find(|c| c.tag == T::Connect) {
                    break c.result;
                }
            };
            assert_eq!(result, want, "{addr}");
        }
        let (_, peer) = listener.accept().unwrap();
        assert!(peer.is_ipv6(), "{peer}");
    }
}
