//! The NETLINK_ROUTE socket: open, subscribe, send a request, receive a
//! datagram. Nothing here needs a capability once the socket is open: the
//! kernel answers RTM_GET* requests from anyone, and the groups dispatchd
//! joins are open to every listener (NL_CFG_F_NONROOT_RECV), so both keep
//! working after start-up drops every capability.
#![allow(unsafe_code)] // socket(2), bind, setsockopt, sendto, recvfrom, if_indextoname; each block says why it is sound

use std::{
    ffi::CStr,
    io,
    mem::{size_of, zeroed},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    time::Duration,
};

/// One datagram received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// Bytes in the buffer (at most its length).
    pub len: usize,
    /// The datagram was longer than the buffer: its tail is lost.
    pub truncated: bool,
    /// Sent by the kernel (port 0), not by another process.
    pub from_kernel: bool,
}

#[derive(Debug)]
pub struct NlSocket(OwnedFd);

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn kernel_address(groups: u32) -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain data for which all zeroes is valid (its
    // padding field is private, hence no struct literal).
    let mut addr: libc::sockaddr_nl = unsafe { zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = groups;
    addr
}

impl NlSocket {
    /// A NETLINK_ROUTE socket, bound to a port the kernel picks and
    /// subscribed to `groups` (RTMGRP_* bits; 0 for none). Non-blocking if
    /// `nonblocking`.
    pub fn open(groups: u32, nonblocking: bool) -> io::Result<Self> {
        let mut kind = libc::SOCK_RAW | libc::SOCK_CLOEXEC;
        if nonblocking {
            kind |= libc::SOCK_NONBLOCK;
        }
        // SAFETY: plain socket(2); a non-negative result is a new fd we own.
        let fd = check(unsafe { libc::socket(libc::AF_NETLINK, kind, libc::NETLINK_ROUTE) })?;
        // SAFETY: fd is a fresh descriptor owned by nobody else.
        let sock = Self(unsafe { OwnedFd::from_raw_fd(fd) });
        let addr = kernel_address(groups);
        // SAFETY: bind reads a sockaddr_nl of the size given, live for the call.
        check(unsafe {
            libc::bind(
                fd,
                (&addr as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        })?;
        Ok(sock)
    }

    fn set_option(&self, name: libc::c_int, value: &[u8]) -> io::Result<()> {
        // SAFETY: setsockopt reads `value.len()` bytes during the call.
        check(unsafe {
            libc::setsockopt(
                self.raw(),
                libc::SOL_SOCKET,
                name,
                value.as_ptr().cast(),
                value.len() as libc::socklen_t,
            )
        })
        .map(drop)
    }

    /// A blocking receive gives up after `timeout` (EAGAIN): the kernel answers
    /// requests at once, so a longer wait is a fault, not a slow answer.
    pub fn set_receive_timeout(&self, timeout: Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: a timeval is plain data; its bytes are what SO_RCVTIMEO reads.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&tv as *const libc::timeval).cast::<u8>(),
                size_of::<libc::timeval>(),
            )
        };
        self.set_option(libc::SO_RCVTIMEO, bytes)
    }

    /// Asks for a receive buffer of `bytes`: beyond `net.core.rmem_max` while
    /// the process has CAP_NET_ADMIN (SO_RCVBUFFORCE, at start-up), else as
    /// far as rmem_max allows. A bigger buffer makes a burst of notifications
    /// less likely to overflow it (which costs a resynchronisation).
    pub fn set_receive_buffer(&self, bytes: usize) -> io::Result<()> {
        let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        let value = value.to_ne_bytes();
        self.set_option(libc::SO_RCVBUFFORCE, &value)
            .or_else(|_| self.set_option(libc::SO_RCVBUF, &value))
    }

    /// Sends one request to the kernel.
    pub fn send(&self, msg: &[u8]) -> io::Result<()> {
        let addr = kernel_address(0);
        // SAFETY: msg and addr are live for the call, of the lengths given.
        let n = unsafe {
            libc::sendto(
                self.raw(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != msg.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "netlink request sent in part",
            ));
        }
        Ok(())
    }

    /// Receives one datagram into `buf` (waiting, unless the socket is
    /// non-blocking). ENOBUFS means notifications were lost (the buffer
    /// overflowed); EAGAIN that nothing is there (or the timeout passed).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Datagram> {
        loop {
            let mut from = kernel_address(0);
            let mut from_len = size_of::<libc::sockaddr_nl>() as libc::socklen_t;
            // SAFETY: buf, from and from_len are live and writable for the
            // call, of the lengths given; MSG_TRUNC makes the kernel return a
            // datagram's full length but still write at most buf.len() bytes.
            let n = unsafe {
                libc::recvfrom(
                    self.raw(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_TRUNC,
                    (&mut from as *mut libc::sockaddr_nl).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let n = n as usize;
            return Ok(Datagram {
                len: n.min(buf.len()),
                truncated: n > buf.len(),
                from_kernel: from.nl_pid == 0,
            });
        }
    }

    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// The name of interface `index`, if there is one.
pub fn interface_name(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes, as if_indextoname requires; on
    // success it holds a NUL-terminated name.
    let name = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if name.is_null() {
        return None;
    }
    // SAFETY: if_indextoname succeeded, so buf holds a NUL-terminated string.
    let name = unsafe { CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}
