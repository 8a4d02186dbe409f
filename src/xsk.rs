//! AF_XDP sockets: one UMEM per worker, shared (XDP_SHARED_UMEM) by all its
//! sockets, front and back, one per (interface, queue) it serves.
//!
//! A frame received on one socket is rewritten in place and transmitted on a
//! socket of the other side as the same descriptor, so user space never copies
//! packet data. Every (interface, queue) pair has its own fill and completion
//! ring (the kernel requires that of a shared UMEM; xsk-rs hands them out), all
//! drawing on the worker's one pool of frames. Frame ownership follows xsk-rs's
//! rule: a descriptor handed to a fill or TX ring belongs to the kernel until it
//! comes back on an RX or completion ring; the worker holds every other
//! descriptor in exactly one place (its free list or a batch).
#![allow(unsafe_code)] // socket creation and raw poll/getsockopt/setsockopt; each block says why it is sound

use std::{
    num::NonZeroU32,
    os::fd::{AsRawFd, RawFd},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use xsk_rs::{
    config::{BindFlags, FrameSize, LibxdpFlags, QueueSize, SocketConfig, UmemConfig},
    CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem,
};

use crate::{
    config::BindMode,
    queues::WorkerQueues,
    xdp::{Interface, ZerocopySupport},
};

/// Bytes of a UMEM frame: one page, single-buffer (a frame holds a whole
/// packet; interfaces whose MTU does not fit are refused at start).
pub const FRAME_SIZE: u32 = 4096;
/// Bytes user space reserves at the start of each frame (none: the rewrite
/// happens in place, nothing is prepended).
pub const FRAME_HEADROOM: u32 = 0;
/// Descriptors the kernel sends per TX kick in copy mode unless told otherwise
/// (TX_BATCH_SIZE of net/xdp/xsk.c): its generic transmit path stops there and
/// returns EAGAIN, so a larger batch needs more kicks.
pub const COPY_MODE_TX_BUDGET: usize = 32;

/// How a worker binds its sockets. A UMEM is bound in one mode: the first
/// socket's bind decides, and the kernel binds every socket that shares it the
/// same way (`xp_assign_dev_shared`), failing one whose device cannot. So
/// front and back sockets must agree, and the choice is made for both
/// interfaces before any socket exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bind {
    /// XDP_COPY.
    Copy,
    /// XDP_ZEROCOPY: fail rather than copy.
    Zerocopy,
    /// No flag: the kernel binds zero-copy where the driver can, else copy.
    PreferZerocopy,
}

/// Chooses the bind for `mode` from what each interface advertises; returns
/// it and, when the choice needs saying, a line that says why.
pub fn decide_bind(
    mode: BindMode,
    front: (&str, ZerocopySupport),
    back: (&str, ZerocopySupport),
) -> Result<(Bind, Option<String>)> {
    let lacking: Vec<&str> = [front, back]
        .iter()
        .filter(|(_, zc)| *zc != Some(true))
        .map(|(name, _)| *name)
        .collect();
    let unknown = [front, back].iter().any(|(_, zc)| zc.is_none());
    Ok(match mode {
        BindMode::Copy => (Bind::Copy, None),
        BindMode::Zerocopy => {
            if let Some((name, _)) = [front, back].iter().find(|(_, zc)| *zc == Some(false)) {
                bail!(
                    "bind_mode = zerocopy, but {name} does not advertise AF_XDP zero-copy \
                     (NETDEV_XDP_ACT_XSK_ZEROCOPY); use bind_mode auto or copy"
                );
            }
            let note = unknown.then(|| {
                "the kernel does not report XDP features; binding zero-copy as configured".into()
            });
            (Bind::Zerocopy, note)
        }
        BindMode::Auto if lacking.is_empty() => (Bind::PreferZerocopy, None),
        BindMode::Auto => (
            Bind::Copy,
            Some(format!(
                "{} {} not advertise AF_XDP zero-copy{}: every socket binds in copy mode \
                 (a worker's front and back sockets share one UMEM, which binds in one mode)",
                lacking.join(" and "),
                if lacking.len() == 1 { "does" } else { "do" },
                if unknown {
                    " (or the kernel does not say)"
                } else {
                    ""
                },
            )),
        ),
    })
}

/// The four rings of one socket, and what the worker needs to drive it.
pub struct Rings {
    pub tx: TxQueue,
    pub rx: RxQueue,
    pub fill: FillQueue,
    pub comp: CompQueue,
    /// The queue of its interface it is bound to.
    pub queue: u32,
    pub zerocopy: bool,
    /// Frames one TX kick sends: unbounded in zero-copy mode (the driver's
    /// NAPI drains the ring), the generic path's budget in copy mode.
    pub tx_budget: usize,
    /// Entries of the TX ring.
    pub tx_size: u32,
    /// When the TX ring's left frames are kicked again (see the worker's
    /// `resend`).
    pub tx_retry: TxRetry,
    /// Busy polling: whether an empty RX ring is polled through recvfrom(),
    /// which runs the device's NAPI in this thread.
    pub busy_poll: BusyPoll,
    /// The interface's name, for what the worker reports about this socket.
    pub iface: String,
}

/// The backoff of a TX ring whose kicks send nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxRetry {
    /// Not before this time (ns, the worker's clock).
    pub at_ns: u64,
    /// The last wait (ms); 0 after a kick that sent something.
    pub backoff_ms: u64,
}

/// Busy polling of one socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusyPoll {
    Off,
    /// Set up, not known to work yet: the socket learns its queue's NAPI id
    /// from its first received frame, and a device whose XDP receive has none
    /// (copy mode on veth) leaves it 0, where recvfrom() polls nothing.
    Unproven,
    /// The socket has a NAPI id: recvfrom() runs that NAPI.
    On,
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

    /// Frames on the TX ring the kernel has not taken yet. A device that
    /// pushes back (its queue stopped) makes the kernel's transmit leave them
    /// there for user space to send again: only another kick sends them.
    pub fn tx_waiting(&mut self) -> u32 {
        self.tx_size.saturating_sub(self.tx.nb_free_exact())
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

    /// The NAPI id the socket learnt from its received frames (0: none, so
    /// busy polling it does nothing).
    pub fn napi_id(&self) -> std::io::Result<i32> {
        get_int_option(self.fd(), SO_INCOMING_NAPI_ID)
    }

    /// Busy-polls the device for this socket: recvfrom() on an AF_XDP socket
    /// runs the NAPI of its queue in this thread (sk_busy_loop), which is how
    /// the kernel gets to run it when SO_PREFER_BUSY_POLL defers it to us.
    pub fn poll_device(&self) {
        // SAFETY: a zero-length receive into no buffer; the kernel writes
        // nothing. Errors (EAGAIN and the like) only mean nothing was done.
        unsafe {
            libc::recvfrom(
                self.fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
    }
}

/// Everything a worker needs for its queues: the UMEM, its frames that are not
/// on a fill ring yet, and the sockets bound to it, front and back, in the
/// order of the worker's queues.
pub struct WorkerSockets {
    pub umem: Umem,
    pub frames: Vec<FrameDesc>,
    pub pages: UmemPages,
    pub front: Vec<Rings>,
    pub back: Vec<Rings>,
}

/// Ring sizes for each of the four rings of every socket.
pub fn ring_size(frames_per_queue: u32) -> u32 {
    (frames_per_queue / 4).max(64)
}

/// UMEM frames of a worker with `sockets` sockets: `frames_per_queue` per
/// queue pair (a front and a back socket), so half of it per socket. That
/// fills every fill ring (a quarter each) and leaves as many again for frames
/// in the RX, TX and completion rings.
pub fn umem_frames(frames_per_queue: u32, sockets: usize) -> u32 {
    (frames_per_queue / 2).saturating_mul(sockets as u32)
}

/// How the sockets of every worker are opened.
#[derive(Clone, Copy, Debug)]
pub struct SocketOptions {
    pub bind: Bind,
    pub frames_per_queue: u32,
    /// Descriptors per ring operation: the copy-mode TX budget is raised to
    /// it, so one kick sends a whole batch.
    pub batch: usize,
    /// Set SO_PREFER_BUSY_POLL, SO_BUSY_POLL and SO_BUSY_POLL_BUDGET.
    pub busy_poll: bool,
}

/// Busy-poll time per call (µs), as xdp-tools' xdpsock sets it; the budget
/// is the batch size, as there.
const BUSY_POLL_USECS: libc::c_int = 20;
const SO_PREFER_BUSY_POLL: libc::c_int = 69;
const SO_BUSY_POLL_BUDGET: libc::c_int = 70;
const SO_INCOMING_NAPI_ID: libc::c_int = 56;

/// Opens a worker's sockets: one UMEM, then a socket for each of its front and
/// back queues, each filled before any steering points at it, so that frames
/// arriving while the worker is still starting wait in the RX rings instead of
/// being dropped for want of a frame.
pub fn open_worker(
    front: &Interface,
    back: &Interface,
    queues: &WorkerQueues,
    opts: &SocketOptions,
) -> Result<WorkerSockets> {
    bind_worker(
        make_umem(queues, opts)?,
        front,
        back,
        queues,
        opts,
        Duration::ZERO,
    )
    .map(|(sockets, _)| sockets)
}

/// A worker's UMEM and all its frames, no socket bound yet: the part of
/// opening a worker that takes time (the memory is mapped and pinned), which
/// a takeover does before its switch.
pub struct WorkerUmem {
    umem: Umem,
    frames: Vec<FrameDesc>,
    pages: UmemPages,
}

/// What backs a worker's UMEM. The worker reads every frame's headers through
/// its own mapping, one 4 KiB frame per page: on small pages that is a TLB
/// miss per frame, on huge pages one entry covers 512 frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UmemPages {
    /// hugetlbfs pages of this size (bytes), from the pool the administrator
    /// reserved (`vm.nr_hugepages`).
    Huge(u64),
    /// Ordinary pages: no huge page was free, or the UMEM is not a whole
    /// number of them.
    Small,
}

impl UmemPages {
    /// The huge pages' size, 0 for ordinary pages (as the statistics say it).
    pub fn huge_page_bytes(self) -> u64 {
        match self {
            UmemPages::Huge(size) => size,
            UmemPages::Small => 0,
        }
    }
}

impl std::fmt::Display for UmemPages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UmemPages::Huge(size) => write!(f, "{} MiB huge pages", size >> 20),
            UmemPages::Small => f.write_str("4 KiB pages"),
        }
    }
}

/// Whether a UMEM of `bytes` should ask for huge pages of `huge_page` bytes
/// (the system's default size, 0 when it has none): only when it fills them
/// exactly. A mapping that ends inside a huge page could not be unmapped by
/// its own length (the kernel refuses to split a huge page), and a 16 MiB UMEM
/// would waste most of a 1 GiB page.
pub fn fits_huge_pages(bytes: u64, huge_page: u64) -> bool {
    huge_page != 0 && bytes >= huge_page && bytes.is_multiple_of(huge_page)
}

/// The system's default huge page size (`Hugepagesize` in /proc/meminfo), the
/// size MAP_HUGETLB maps; 0 if it says none.
fn default_huge_page_size() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| huge_page_size_in(&text))
        .unwrap_or(0)
}

/// `vm.nr_hugepages`: the huge pages the administrator reserved (0 if unknown).
fn reserved_huge_pages() -> u64 {
    std::fs::read_to_string("/proc/sys/vm/nr_hugepages")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

fn huge_page_size_in(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("Hugepagesize:"))?;
    let mut words = line.split_whitespace().skip(1);
    let kib: u64 = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(kib * 1024)
}

/// The first half of [`open_worker`].
pub fn make_umem(queues: &WorkerQueues, opts: &SocketOptions) -> Result<WorkerUmem> {
    let ring =
        QueueSize::new(ring_size(opts.frames_per_queue)).map_err(|e| anyhow!("ring size: {e}"))?;
    let umem_config = UmemConfig::builder()
        .frame_size(FrameSize::new(FRAME_SIZE).map_err(|e| anyhow!("frame size: {e}"))?)
        .frame_headroom(FRAME_HEADROOM)
        .fill_queue_size(ring)
        .comp_queue_size(ring)
        .build()
        .map_err(|e| anyhow!("UMEM config: {e}"))?;
    let sockets = queues.front.len() + queues.back.len();
    let count = NonZeroU32::new(umem_frames(opts.frames_per_queue, sockets))
        .context("a worker's UMEM would have no frames")?;
    let huge_page = default_huge_page_size();
    // Huge pages come from the reserved pool or not at all: with none free the
    // mapping fails at once (it reserves them up front), and the UMEM goes on
    // ordinary pages as it would have without them.
    if fits_huge_pages(u64::from(count.get()) * u64::from(FRAME_SIZE), huge_page) {
        match Umem::new(umem_config, count, true) {
            Ok((umem, frames)) => {
                return Ok(WorkerUmem {
                    umem,
                    frames,
                    pages: UmemPages::Huge(huge_page),
                })
            }
            // None reserved is the usual case, not worth a word; reserved ones
            // that could not be had (all taken, a cgroup's limit) are.
            Err(e) if reserved_huge_pages() > 0 => tracing::warn!(
                "a UMEM of {count} frames could not go on the reserved huge pages ({e}): \
                 ordinary pages instead"
            ),
            Err(_) => {}
        }
    }
    let (umem, frames) = Umem::new(umem_config, count, false).map_err(|e| {
        anyhow!(
            "creating a UMEM of {count} frames: {e} (registering it needs CAP_IPC_LOCK or a large RLIMIT_MEMLOCK)"
        )
    })?;
    Ok(WorkerUmem {
        umem,
        frames,
        pages: UmemPages::Small,
    })
}

/// The second half of [`open_worker`]: the sockets bound on `umem`. A queue
/// that still has another socket (EBUSY) is tried again for up to
/// `busy_wait`: a takeover's new process binds the queues the old one has
/// just closed, which the kernel lets go of a little later (deferred to a
/// work queue). Returns the sockets and how many binds were refused so.
pub fn bind_worker(
    umem: WorkerUmem,
    front: &Interface,
    back: &Interface,
    queues: &WorkerQueues,
    opts: &SocketOptions,
    busy_wait: Duration,
) -> Result<(WorkerSockets, u32)> {
    let deadline = Instant::now() + busy_wait;
    let busy = std::cell::Cell::new(0);
    let WorkerUmem {
        umem,
        mut frames,
        pages,
    } = umem;
    let ring =
        QueueSize::new(ring_size(opts.frames_per_queue)).map_err(|e| anyhow!("ring size: {e}"))?;

    let mut bind_flags = BindFlags::XDP_USE_NEED_WAKEUP;
    match opts.bind {
        Bind::PreferZerocopy => {}
        Bind::Copy => bind_flags |= BindFlags::XDP_COPY,
        Bind::Zerocopy => bind_flags |= BindFlags::XDP_ZEROCOPY,
    }
    let socket_config = SocketConfig::builder()
        .rx_queue_size(ring)
        .tx_queue_size(ring)
        // Our own program steers to these sockets through its XSKMAP.
        .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
        .bind_flags(bind_flags)
        .build();

    let open = |iface: &Interface, queue: u32| -> Result<Rings> {
        let name = iface
            .name
            .parse()
            .map_err(|_| anyhow!("interface name {}", iface.name))?;
        let (tx, rx, fill_comp) = loop {
            // SAFETY: every (interface, queue) pair is bound once (a refused
            // bind binds nothing), and with XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD
            // as xsk-rs requires for shared UMEMs.
            match unsafe { xsk_rs::Socket::new(socket_config, &umem, &name, queue) } {
                Err(e) if is_busy(&e) && Instant::now() < deadline => {
                    busy.set(busy.get() + 1);
                    std::thread::sleep(Duration::from_millis(1));
                }
                other => break other,
            }
        }
        .map_err(|e| {
            let cause = std::error::Error::source(&e)
                .map(|c| format!(": {c}"))
                .unwrap_or_default();
            anyhow!(
                "binding an AF_XDP socket to {} queue {queue} ({:?}): {e}{cause}{}",
                iface.name,
                opts.bind,
                if opts.bind == Bind::Copy {
                    ""
                } else {
                    " (the driver may not support zero-copy on every queue; try --bind-mode copy)"
                }
            )
        })?;
        let (fill, comp) = fill_comp.context(
            "a fresh (interface, queue) pair always gets its own fill and completion rings",
        )?;
        let fd = rx.fd().as_raw_fd();
        let zerocopy = is_zerocopy(fd)?;
        let tx_budget = if zerocopy {
            usize::MAX
        } else {
            copy_mode_tx_budget(fd, opts.batch.min(ring.get() as usize))
        };
        if opts.busy_poll {
            set_busy_poll(fd, opts.batch)
                .with_context(|| format!("busy poll options on {} queue {queue}", iface.name))?;
        }
        Ok(Rings {
            tx,
            rx,
            fill,
            comp,
            queue,
            zerocopy,
            tx_budget,
            tx_size: ring.get(),
            tx_retry: TxRetry::default(),
            busy_poll: if opts.busy_poll {
                BusyPoll::Unproven
            } else {
                BusyPoll::Off
            },
            iface: iface.name.clone(),
        })
    };
    let mut open_side = |iface: &Interface, queues: &[u32]| -> Result<Vec<Rings>> {
        queues
            .iter()
            .map(|&q| {
                let mut rings = open(iface, q)?;
                rings.refill(&mut frames);
                Ok(rings)
            })
            .collect()
    };
    let front_rings = open_side(front, &queues.front)?;
    let back_rings = open_side(back, &queues.back)?;
    let sockets = WorkerSockets {
        umem,
        frames,
        pages,
        front: front_rings,
        back: back_rings,
    };
    Ok((sockets, busy.get()))
}

/// Whether a bind was refused because the queue has a socket already.
fn is_busy(e: &xsk_rs::socket::SocketCreateError) -> bool {
    std::error::Error::source(e)
        .and_then(|c| c.downcast_ref::<std::io::Error>())
        .and_then(std::io::Error::raw_os_error)
        == Some(libc::EBUSY)
}

/// `setsockopt(fd, level, name, value)` for an int-sized option.
fn set_int_option(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: value is a valid c_int for the duration of the call and its size
    // is passed; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

const SOL_XDP: libc::c_int = 283;

/// Raises the copy-mode TX budget to `batch` (XDP_MAX_TX_SKB_BUDGET, Linux
/// 6.17+), so one kick sends a whole batch; returns the budget in force. The
/// kernel takes 32..=TX ring size; older kernels refuse the option, and keep
/// 32.
fn copy_mode_tx_budget(fd: RawFd, batch: usize) -> usize {
    const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;
    if batch <= COPY_MODE_TX_BUDGET {
        return COPY_MODE_TX_BUDGET;
    }
    match set_int_option(fd, SOL_XDP, XDP_MAX_TX_SKB_BUDGET, batch as libc::c_int) {
        Ok(()) => batch,
        Err(_) => COPY_MODE_TX_BUDGET,
    }
}

/// SO_PREFER_BUSY_POLL, SO_BUSY_POLL and SO_BUSY_POLL_BUDGET, as xdpsock sets
/// them in its busy-poll mode: the device's NAPI for this queue runs in the
/// worker's own syscalls (and, with the device's napi_defer_hard_irqs and
/// gro_flush_timeout set, no longer in softirq while the worker polls). Values
/// above net.core.busy_read and net.core.busy_poll need CAP_NET_ADMIN, which
/// start-up still holds.
fn set_busy_poll(fd: RawFd, batch: usize) -> std::io::Result<()> {
    set_int_option(fd, libc::SOL_SOCKET, SO_PREFER_BUSY_POLL, 1)?;
    set_int_option(fd, libc::SOL_SOCKET, libc::SO_BUSY_POLL, BUSY_POLL_USECS)?;
    set_int_option(
        fd,
        libc::SOL_SOCKET,
        SO_BUSY_POLL_BUDGET,
        batch as libc::c_int,
    )
}

/// The busy-poll options as the kernel reports them: SO_PREFER_BUSY_POLL and
/// SO_BUSY_POLL (µs). (It has no getsockopt for SO_BUSY_POLL_BUDGET.)
pub fn busy_poll_options(fd: RawFd) -> std::io::Result<(i32, i32)> {
    Ok((
        get_int_option(fd, SO_PREFER_BUSY_POLL)?,
        get_int_option(fd, libc::SO_BUSY_POLL)?,
    ))
}

/// An integer SOL_SOCKET option of `fd`.
fn get_int_option(fd: RawFd, name: libc::c_int) -> std::io::Result<i32> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn is_zerocopy(fd: RawFd) -> Result<bool> {
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

/// Sleeps until any socket of `fds` has something to receive, or `timeout_ms`
/// passes. Also kicks the kernel for fill rings that asked for a wakeup (POLLIN
/// does that in the kernel's xsk_poll). `fds` is the worker's own array, built
/// once; only `revents` is written.
pub fn poll_readable(fds: &mut [libc::pollfd], timeout_ms: i32) {
    // SAFETY: fds is a valid, exclusively borrowed array of pollfd for the
    // duration of the call. EINTR and the like only end the sleep early, which
    // the caller tolerates.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
}

/// The pollfd array [`poll_readable`] takes, for these sockets.
pub fn pollfds<'a>(rings: impl Iterator<Item = &'a Rings>) -> Vec<libc::pollfd> {
    rings
        .map(|r| libc::pollfd {
            fd: r.fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_pages_are_asked_for_only_when_the_umem_fills_them() {
        const MIB: u64 = 1 << 20;
        assert!(fits_huge_pages(64 * MIB, 2 * MIB));
        assert!(fits_huge_pages(2 * MIB, 2 * MIB));
        // Ends inside a huge page: it could not be unmapped by its length.
        assert!(!fits_huge_pages(3 * MIB, 2 * MIB));
        // Would waste most of a 1 GiB page.
        assert!(!fits_huge_pages(64 * MIB, 1024 * MIB));
        assert!(!fits_huge_pages(64 * MIB, 0));
    }

    #[test]
    fn the_default_huge_page_size_is_read_from_meminfo() {
        let meminfo = "HugePages_Free:        0\nHugepagesize:       2048 kB\nHugetlb: 0 kB\n";
        assert_eq!(huge_page_size_in(meminfo), Some(2 << 20));
        assert_eq!(
            huge_page_size_in("Hugepagesize: 1048576 kB\n"),
            Some(1 << 30)
        );
        assert_eq!(huge_page_size_in("MemTotal: 1 kB\n"), None);
        assert_eq!(huge_page_size_in("Hugepagesize: lots\n"), None);
    }

    #[test]
    fn auto_binds_zero_copy_only_when_both_interfaces_can() {
        let both = decide_bind(BindMode::Auto, ("l0", Some(true)), ("l1", Some(true))).unwrap();
        assert_eq!(both, (Bind::PreferZerocopy, None));
        let (bind, note) =
            decide_bind(BindMode::Auto, ("l0", Some(true)), ("l1", Some(false))).unwrap();
        assert_eq!(bind, Bind::Copy);
        let note = note.expect("the fallback is said");
        assert!(
            note.starts_with("l1 does not advertise") && note.contains("copy mode"),
            "{note}"
        );
        let (bind, note) = decide_bind(BindMode::Auto, ("l0", Some(false)), ("l1", None)).unwrap();
        assert_eq!(bind, Bind::Copy);
        assert!(note.unwrap().starts_with("l0 and l1 do not advertise"));
    }

    #[test]
    fn zerocopy_is_refused_when_an_interface_cannot() {
        let e = decide_bind(BindMode::Zerocopy, ("l0", Some(true)), ("l1", Some(false)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("l1 does not advertise AF_XDP zero-copy"), "{e}");
        assert_eq!(
            decide_bind(BindMode::Zerocopy, ("l0", Some(true)), ("l1", Some(true))).unwrap(),
            (Bind::Zerocopy, None)
        );
        assert_eq!(
            decide_bind(BindMode::Copy, ("l0", Some(true)), ("l1", Some(true))).unwrap(),
            (Bind::Copy, None)
        );
    }

    #[test]
    fn a_umem_holds_half_a_queue_pair_per_socket() {
        assert_eq!(umem_frames(16384, 2), 16384);
        assert_eq!(umem_frames(16384, 8), 65536);
        assert_eq!(umem_frames(16384, 6), 49152);
        // Enough to fill every fill ring at start.
        for sockets in 2..10 {
            assert!(umem_frames(4096, sockets) >= ring_size(4096) * sockets as u32);
        }
    }
}
