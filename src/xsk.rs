//! AF_XDP sockets: one UMEM per queue, shared by that queue's front and back socket.
//!
//! A frame received on one socket is rewritten in place and transmitted on the other
//! as the same descriptor, so user space never copies packet data. Frame ownership
//! follows xsk-rs's rule: a descriptor handed to a fill or TX ring belongs to the
//! kernel until it comes back on an RX or completion ring; the worker holds every
//! other descriptor in exactly one place (its free list or a batch).
#![allow(unsafe_code)] // socket creation and raw poll/getsockopt; each block says why it is sound

use std::{
    num::NonZeroU32,
    os::fd::{AsRawFd, RawFd},
};

use anyhow::{anyhow, Context, Result};
use xsk_rs::{
    config::{BindFlags, LibxdpFlags, QueueSize, SocketConfig, UmemConfig},
    CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem,
};

use crate::{config::BindMode, xdp::Interface};

/// The four rings of one socket.
pub struct Rings {
    pub tx: TxQueue,
    pub rx: RxQueue,
    pub fill: FillQueue,
    pub comp: CompQueue,
    pub zerocopy: bool,
}

impl Rings {
    pub fn fd(&self) -> RawFd {
        self.rx.fd().as_raw_fd()
    }

    /// The kernel's counters for this socket, as (rx ring full, fill ring empty,
    /// other rx drops, invalid descriptors rx + tx).
    pub fn kernel_drops(&self) -> std::io::Result<[u64; 4]> {
        let s = self.rx.fd().xdp_statistics()?;
        Ok([
            s.rx_ring_full(),
            s.rx_fill_ring_empty_descs(),
            s.rx_dropped(),
            s.rx_invalid_descs() + s.tx_invalid_descs(),
        ])
    }

    /// Hands frames from the end of `free` to the fill ring, as many as it has
    /// room for; the ones handed over leave `free`.
    pub fn refill(&mut self, free: &mut Vec<FrameDesc>) {
        let room = self.fill.nb_free(free.len() as u32) as usize;
        let give = room.min(free.len());
        if give == 0 {
            return;
        }
        let start = free.len() - give;
        // SAFETY: the frames on the free list are owned by user space (not on any
        // ring) and belong to this UMEM, the only one these rings were created
        // with; a produce takes all of them or none, and after a successful one
        // they are dropped from the free list, so each frame is in one place only.
        let produced = unsafe { self.fill.produce(&free[start..]) };
        if produced == give {
            free.truncate(start);
        }
    }
}

/// Everything a worker needs for its queue: the UMEM, its frames that are not on
/// a fill ring yet, and the front and back sockets bound to it.
pub struct QueueSockets {
    pub umem: Umem,
    pub frames: Vec<FrameDesc>,
    pub front: Rings,
    pub back: Rings,
}

/// Ring sizes for each of the four rings of both sockets. Frames in flight are
/// bounded by the fill rings plus the TX rings, so the UMEM holds twice that.
pub fn ring_size(frames_per_queue: u32) -> u32 {
    (frames_per_queue / 4).max(64)
}

pub fn open_queue(
    front: &Interface,
    back: &Interface,
    queue: u32,
    frames_per_queue: u32,
    bind: BindMode,
) -> Result<QueueSockets> {
    let ring =
        QueueSize::new(ring_size(frames_per_queue)).map_err(|e| anyhow!("ring size: {e}"))?;
    let umem_config = UmemConfig::builder()
        .fill_queue_size(ring)
        .comp_queue_size(ring)
        .build()
        .map_err(|e| anyhow!("UMEM config: {e}"))?;
    let count = NonZeroU32::new(frames_per_queue).context("frames_per_queue is zero")?;
    let (umem, frames) = Umem::new(umem_config, count, false)
        .map_err(|e| {
            anyhow!("creating the UMEM of queue {queue}: {e} (registering it needs CAP_IPC_LOCK or a large RLIMIT_MEMLOCK)")
        })?;

    let mut bind_flags = BindFlags::XDP_USE_NEED_WAKEUP;
    match bind {
        BindMode::Auto => {}
        BindMode::Copy => bind_flags |= BindFlags::XDP_COPY,
        BindMode::Zerocopy => bind_flags |= BindFlags::XDP_ZEROCOPY,
    }
    let socket_config = SocketConfig::builder()
        .rx_queue_size(ring)
        .tx_queue_size(ring)
        // Our own program steers to these sockets through its XSKMAP.
        .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
        .bind_flags(bind_flags)
        .build();

    let open = |iface: &Interface| -> Result<Rings> {
        let name = iface
            .name
            .parse()
            .map_err(|_| anyhow!("interface name {}", iface.name))?;
        // SAFETY: every (interface, queue) pair is bound once, and with
        // XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD as xsk-rs requires for shared UMEMs.
        let (tx, rx, fill_comp) =
            unsafe { xsk_rs::Socket::new(socket_config, &umem, &name, queue) }.map_err(|e| {
                anyhow!(
                    "binding an AF_XDP socket to {} queue {queue} ({bind:?} mode): {e}{}",
                    iface.name,
                    if bind == BindMode::Zerocopy {
                        " (the driver may not support zero-copy; try --bind-mode copy)"
                    } else {
                        ""
                    }
                )
            })?;
        let (fill, comp) = fill_comp.context(
            "a fresh (interface, queue) pair always gets its own fill and completion rings",
        )?;
        let zerocopy = is_zerocopy(rx.fd().as_raw_fd())?;
        Ok(Rings {
            tx,
            rx,
            fill,
            comp,
            zerocopy,
        })
    };
    let mut front_rings = open(front)?;
    let mut back_rings = open(back)?;
    // Filled now, before any steering points at these sockets: frames that
    // arrive while the worker is still starting wait in the RX rings instead of
    // being dropped for want of a frame.
    let mut frames = frames;
    front_rings.refill(&mut frames);
    back_rings.refill(&mut frames);
    Ok(QueueSockets {
        umem,
        frames,
        front: front_rings,
        back: back_rings,
    })
}

fn is_zerocopy(fd: RawFd) -> Result<bool> {
    const SOL_XDP: libc::c_int = 283;
    const XDP_OPTIONS: libc::c_int = 8;
    const XDP_OPTIONS_ZEROCOPY: u32 = 1;
    let mut flags: u32 = 0;
    let mut len = size_of::<u32>() as libc::socklen_t;
    // SAFETY: flags and len are valid for writes of the sizes given, for the call.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            SOL_XDP,
            XDP_OPTIONS,
            (&mut flags as *mut u32).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("getsockopt(XDP_OPTIONS)");
    }
    Ok(flags & XDP_OPTIONS_ZEROCOPY != 0)
}

/// Sleeps until either socket has something to receive, or `timeout_ms` passes.
/// Also kicks the kernel for fill rings that asked for a wakeup (POLLIN does that
/// in the kernel's xsk_poll).
pub fn poll_readable(fds: [RawFd; 2], timeout_ms: i32) {
    let mut pfds = fds.map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    // SAFETY: pfds is a valid array of two pollfd for the duration of the call.
    // EINTR and the like only end the sleep early, which the caller tolerates.
    unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
}
