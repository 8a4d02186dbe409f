//! The two socket facilities std lacks: a TCP close that sends a RST, and a raw
//! AF_PACKET socket for hand-made frames.
#![allow(unsafe_code)] // setsockopt, socket, bind, send; each block says why it is sound

use std::{
    ffi::CString,
    net::TcpStream,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{bail, Context, Result};

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
