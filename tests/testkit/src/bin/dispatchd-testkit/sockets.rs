//! The socket facilities std lacks: a TCP connect that tells the local address
//! even when it fails, a TCP close that sends a RST, and a raw AF_PACKET socket
//! for hand-made frames.
#![allow(unsafe_code)] // socket, connect, poll, get/setsockopt, bind, send; each block says why it is sound

use std::{
    ffi::CString,
    io,
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::OnceLock,
    time::Duration,
};

use anyhow::{bail, Context, Result};

/// The local address every client connection is made from (`--bind`), when set:
/// a host with several addresses connecting from a chosen one.
static BIND: OnceLock<Ipv4Addr> = OnceLock::new();

/// Makes every later [`connect`] bind its socket to `addr` (any port) first.
pub fn bind_clients_to(addr: Ipv4Addr) {
    let _ = BIND.set(addr);
}

/// The address [`bind_clients_to`] set, if any.
pub fn client_bind() -> Option<Ipv4Addr> {
    BIND.get().copied()
}

/// Connects to `to` within `timeout`. The local address the kernel picked comes
/// back whatever the outcome, so that a failed connection can still be named by
/// its 4-tuple (std's connect forgets it on failure).
pub fn connect(
    to: SocketAddrV4,
    timeout: Duration,
) -> (Option<SocketAddrV4>, io::Result<TcpStream>) {
    // SAFETY: plain socket(2); a non-negative result is a new fd we own.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return (None, Err(io::Error::last_os_error()));
    }
    // SAFETY: fd is fresh and owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Some(from) = BIND.get() {
        let local = sockaddr(SocketAddrV4::new(*from, 0));
        // SAFETY: local is initialised and its size is passed; bind only reads it.
        let rc = unsafe {
            libc::bind(
                fd,
                (&local as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return (None, Err(io::Error::last_os_error()));
        }
    }
    let sin = sockaddr(to);
    // SAFETY: sin is initialised and its size is passed; connect only reads it.
    let rc = unsafe {
        libc::connect(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
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

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn local_addr(fd: libc::c_int) -> Option<SocketAddrV4> {
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: sin and len are valid for writes of the sizes given.
    let rc =
        unsafe { libc::getsockname(fd, (&mut sin as *mut libc::sockaddr_in).cast(), &mut len) };
    (rc == 0 && sin.sin_port != 0).then(|| {
        SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
            u16::from_be(sin.sin_port),
        )
    })
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
