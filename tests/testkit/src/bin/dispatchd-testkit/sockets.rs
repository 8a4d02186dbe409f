//! The socket facilities std lacks: a TCP connect that tells the local address
//! even when it fails, a TCP close that sends a RST, a sending rate, and a raw
//! AF_PACKET socket for hand-made frames.
#![allow(unsafe_code)] // socket, connect, poll, get/setsockopt, getsockname, bind, send; each block says why it is sound

use std::{
    ffi::CString,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::OnceLock,
    time::Duration,
};

use anyhow::{bail, Context, Result};

/// The local address every IPv4 client connection is made from (`--bind`),
/// when set: a host with several addresses connecting from a chosen one.
static BIND: OnceLock<Ipv4Addr> = OnceLock::new();

/// The local port every client connection is made from (`--src-port`), when
/// set: a chosen 4-tuple, e.g. one a closed connection to another address
/// used a moment ago.
static SRC_PORT: OnceLock<u16> = OnceLock::new();

/// Makes every later [`connect`] to an IPv4 address bind its socket to `addr`
/// (any port, unless [`connect_from_port`] chose one) first.
pub fn bind_clients_to(addr: Ipv4Addr) {
    let _ = BIND.set(addr);
}

/// Makes every later [`connect`] bind its socket to `port` first, with
/// SO_REUSEADDR, so that a connection of that port in TIME_WAIT does not
/// refuse it.
pub fn connect_from_port(port: u16) {
    let _ = SRC_PORT.set(port);
}

/// The address [`bind_clients_to`] set, if any.
pub fn client_bind() -> Option<Ipv4Addr> {
    BIND.get().copied()
}

/// Connects to `to` within `timeout`. The local address the kernel picked comes
/// back whatever the outcome, so that a failed connection can still be named by
/// its 4-tuple (std's connect forgets it on failure).
pub fn connect(to: SocketAddr, timeout: Duration) -> (Option<SocketAddr>, io::Result<TcpStream>) {
    let family = match to {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain socket(2); a non-negative result is a new fd we own.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return (None, Err(io::Error::last_os_error()));
    }
    // SAFETY: fd is fresh and owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let port = SRC_PORT.get().copied();
    let from = match to {
        SocketAddr::V4(_) => BIND
            .get()
            .map(|&ip| SocketAddr::from((ip, port.unwrap_or(0)))),
        SocketAddr::V6(_) => None,
    }
    .or_else(|| port.map(|p| SocketAddr::new(unspecified(to), p)));
    if let Some(from) = from {
        if let Err(e) = bind(fd, from, port.is_some()) {
            return (None, Err(e));
        }
    }
    let remote = RawAddr::of(to);
    // SAFETY: remote holds an initialised sockaddr of the length passed;
    // connect only reads it.
    let rc = unsafe { libc::connect(fd, remote.ptr(), remote.len()) };
    let started = if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINPROGRESS) {
            Ok(())
        } else {
            Err(e)
        }
    };
    // The port is bound by the connect call itself, before any answer comes.
    let local = local_addr(fd);
    let result = started.and_then(|()| finish_connect(owned, timeout));
    (local, result)
}

fn unspecified(like: SocketAddr) -> IpAddr {
    match like {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    }
}

fn bind(fd: libc::c_int, from: SocketAddr, reuse: bool) -> io::Result<()> {
    if reuse {
        let on: libc::c_int = 1;
        // SAFETY: setsockopt reads `on` (valid, of the size given) during the call.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&on as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let local = RawAddr::of(from);
    // SAFETY: local holds an initialised sockaddr of the length passed; bind
    // only reads it.
    if unsafe { libc::bind(fd, local.ptr(), local.len()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A socket address as the kernel takes it.
enum RawAddr {
    V4(libc::sockaddr_in),
    V6(libc::sockaddr_in6),
}

impl RawAddr {
    fn of(addr: SocketAddr) -> Self {
        match addr {
            SocketAddr::V4(a) => Self::V4(libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            }),
            SocketAddr::V6(a) => Self::V6(libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            }),
        }
    }

    fn ptr(&self) -> *const libc::sockaddr {
        match self {
            Self::V4(sin) => (sin as *const libc::sockaddr_in).cast(),
            Self::V6(sin6) => (sin6 as *const libc::sockaddr_in6).cast(),
        }
    }

    fn len(&self) -> libc::socklen_t {
        (match self {
            Self::V4(_) => size_of::<libc::sockaddr_in>(),
            Self::V6(_) => size_of::<libc::sockaddr_in6>(),
        }) as libc::socklen_t
    }
}

fn local_addr(fd: libc::c_int) -> Option<SocketAddr> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: ss and len are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockname(
            fd,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return None;
    }
    let addr = match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in (its family says so),
            // which sockaddr_storage is large and aligned enough to hold.
            let sin =
                unsafe { &*(&ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            SocketAddr::from((
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for a sockaddr_in6.
            let sin6 =
                unsafe { &*(&ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            SocketAddr::from((
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
            ))
        }
        _ => return None,
    };
    (addr.port() != 0).then_some(addr)
}

/// Waits for a non-blocking connect to finish and returns the blocking stream.
fn finish_connect(fd: OwnedFd, timeout: Duration) -> io::Result<TcpStream> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    loop {
        // SAFETY: pfd is one valid pollfd for the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            break;
        }
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::TimedOut));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let mut err: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: err and len are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if err != 0 {
        return Err(io::Error::from_raw_os_error(err));
    }
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Makes the next close of `stream` send a RST (SO_LINGER with a zero timeout).
pub fn abort_on_close(stream: &TcpStream) -> std::io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads `linger` (valid, of the size given) during the call.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Paces what `stream` sends to `bytes_per_s` (SO_MAX_PACING_RATE: TCP's
/// own pacing, no qdisc needed): a sender that keeps sending on its timer
/// between acknowledgments, not only as they come.
pub fn pace(stream: &TcpStream, bytes_per_s: u64) -> std::io::Result<()> {
    // SAFETY: setsockopt reads `bytes_per_s` (valid, of the size given)
    // during the call; the kernel takes the rate as a u64 since 4.20.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MAX_PACING_RATE,
            (&bytes_per_s as *const u64).cast(),
            size_of::<u64>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A raw socket bound to `iface`: what is sent on it leaves the interface as
/// is, with no header added or checksum fixed by the kernel.
pub fn raw_socket(iface: &str) -> Result<OwnedFd> {
    let name = CString::new(iface)?;
    // SAFETY: a valid NUL-terminated name for the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        bail!("no interface {iface}");
    }
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); a non-negative result is a new fd we own.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .context("AF_PACKET socket (needs CAP_NET_RAW)");
    }
    // SAFETY: fd is fresh and owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid sockaddr_ll; the fields we need are set below.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = index as i32;
    // SAFETY: sll is initialised and its size is passed.
    let rc = unsafe {
        libc::bind(
            fd,
            (&sll as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("binding the AF_PACKET socket");
    }
    Ok(owned)
}

/// Receives one frame into `buf` (an AF_PACKET socket sees every frame the
/// interface sends or receives) within `timeout`; its length, or None if none
/// came.
pub fn recv(fd: &OwnedFd, buf: &mut [u8], timeout: Duration) -> Result<Option<usize>> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: pfd is one valid pollfd for the call.
    let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
    if ready <= 0 {
        return Ok(None);
    }
    // SAFETY: buf is a live, writable buffer of the length given.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error()).context("receiving a raw frame");
    }
    Ok(Some(n as usize))
}

/// Sends one frame, waiting out a full device queue (ENOBUFS) rather than
/// losing the frame.
pub fn send(fd: &OwnedFd, frame: &[u8]) -> Result<()> {
    loop {
        // SAFETY: frame is a live buffer of the length given.
        let n = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n >= 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOBUFS) {
            return Err(e).context("sending a raw frame");
        }
        std::thread::yield_now();
    }
}
