//! Small libc wrappers: signals, capabilities (through the caps crate), memory
//! advice, the eventfd and a raw IPv4 sender.
#![allow(unsafe_code)] // signal masks, no_new_privs, madvise, sockets; each block says why it is sound

use std::{
    ffi::CStr,
    io,
    mem::MaybeUninit,
    net::{Ipv4Addr, Ipv6Addr},
};

use caps::{CapSet, Capability};

const HUGE_PAGE: usize = 2 << 20;

/// Asks the kernel to back the 2 MiB-aligned part of `memory` (not yet touched, so
/// no page is mapped) with transparent huge pages. Tables indexed by a hash touch
/// pages at random: with 4 KiB pages almost every lookup in a large table also
/// misses the TLB. Advice only: where THP is off the memory stays as it was, which
/// is correct, just slower, so a refusal is not an error.
pub fn advise_huge_pages<T>(memory: &mut [MaybeUninit<T>]) {
    let start = memory.as_mut_ptr() as usize;
    let end = start + std::mem::size_of_val(memory);
    let aligned_start = start.next_multiple_of(HUGE_PAGE);
    let aligned_end = end - end % HUGE_PAGE;
    if aligned_end <= aligned_start {
        return;
    }
    // SAFETY: the range lies inside `memory`, which this call borrows exclusively,
    // and is page-aligned. MADV_HUGEPAGE changes only which page size backs the
    // range, never its contents or whether it is mapped, so no reference to this
    // memory (ours or anyone's) is invalidated.
    unsafe {
        libc::madvise(
            aligned_start as *mut libc::c_void,
            aligned_end - aligned_start,
            libc::MADV_HUGEPAGE,
        );
    }
}

/// The calling thread under SCHED_FIFO at `priority` (1..=99) until this is
/// dropped, then under SCHED_OTHER again. Threads it creates meanwhile keep
/// the policy (pthread's default, PTHREAD_INHERIT_SCHED): that is how workers
/// get it once no thread holds CAP_SYS_NICE, since taking SCHED_FIFO needs
/// the capability and going back to SCHED_OTHER does not.
pub struct FifoWhileSpawning(());

impl FifoWhileSpawning {
    pub fn new(priority: u8) -> io::Result<Self> {
        set_thread_policy(libc::SCHED_FIFO, libc::c_int::from(priority))?;
        Ok(Self(()))
    }
}

impl Drop for FifoWhileSpawning {
    fn drop(&mut self) {
        if let Err(e) = set_thread_policy(libc::SCHED_OTHER, 0) {
            tracing::error!("the management thread could not leave SCHED_FIFO: {e}");
        }
    }
}

fn set_thread_policy(policy: libc::c_int, priority: libc::c_int) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: pid 0 is the calling thread; `param` is live for the call and
    // the kernel only reads it.
    let rc = unsafe { libc::sched_setscheduler(0, policy, &param) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Allocations at least this large get pages of their own from the kernel.
const OWN_PAGES_FROM: libc::c_int = 256 << 10;

/// Confines the calling thread to `cores` (those at or beyond the kernel's
/// CPU set size are left out).
pub fn set_thread_cores(cores: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &core in cores.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
        // SAFETY: `core` is below CPU_SETSIZE, so the bit lies inside `set`.
        unsafe { libc::CPU_SET(core, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread; `set` is live for the call and its
    // size is the one passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes every allocation of [`OWN_PAGES_FROM`] or more get pages of its own
/// (mmap), given back to the kernel when it is freed. glibc would otherwise raise
/// that threshold each time such a block is freed and serve the next ones from
/// its heap, which it rarely returns: the connection tracker's tables, which grow
/// and shrink with the number of connections, would leave resident memory at its
/// highest point for good.
pub fn give_back_large_allocations() {
    // SAFETY: mallopt only sets an allocator parameter; it is called before any
    // thread that allocates is started.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, OWN_PAGES_FROM) };
}

/// Runs `f` with the process's file mode creation mask set to `mask`, so that
/// what `f` creates never exists with wider permissions; the mask is restored
/// afterwards. The mask is process-wide: call this only while no other thread
/// creates files.
pub fn with_umask<T>(mask: libc::mode_t, f: impl FnOnce() -> T) -> T {
    // SAFETY: umask only swaps the process's mask; it cannot fail.
    let old = unsafe { libc::umask(mask) };
    let result = f();
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    result
}

/// CLOCK_MONOTONIC in microseconds: the clock systemd compares a reload's
/// `MONOTONIC_USEC` with (`now_ns` counts from this process's start instead).
pub fn monotonic_usec() -> u64 {
    let mut ts = MaybeUninit::<libc::timespec>::uninit();
    // SAFETY: clock_gettime writes a whole timespec through the pointer, which
    // is valid for the call; CLOCK_MONOTONIC always exists on Linux, so the
    // value is initialised when it returns 0.
    let ts = unsafe {
        if libc::clock_gettime(libc::CLOCK_MONOTONIC, ts.as_mut_ptr()) != 0 {
            return 0;
        }
        ts.assume_init()
    };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

/// A send-only raw IPv4 socket bound to one interface: the caller writes whole
/// IPv4 packets (IPPROTO_RAW implies IP_HDRINCL; the kernel fills in a zero
/// source address, a zero id, the total length and the header checksum) and
/// nothing is ever received on it. Opening needs CAP_NET_RAW (and binding to
/// the device may); sending does not, so one opened at start-up keeps working
/// after [`drop_all_capabilities`]. A packet sent to an address the kernel has
/// no neighbour entry for makes the kernel resolve it, as any local packet does.
#[derive(Debug)]
pub struct RawIpSender(std::os::fd::OwnedFd);

impl RawIpSender {
    pub fn open(device: &str) -> io::Result<Self> {
        // SAFETY: plain socket(2); a non-negative result is a new fd we own.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::IPPROTO_RAW,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor owned by nobody else.
        let sock = Self(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) });
        bind_to_device(fd, device)?;
        Ok(sock)
    }

    /// Sends `packet` (a whole IPv4 packet) to `dst` without waiting.
    pub fn send_to(&self, packet: &[u8], dst: Ipv4Addr) -> io::Result<()> {
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(dst).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: packet and sin are live for the call, of the lengths given.
        let n = unsafe {
            libc::sendto(
                std::os::fd::AsRawFd::as_raw_fd(&self.0),
                packet.as_ptr().cast(),
                packet.len(),
                libc::MSG_DONTWAIT,
                (&sin as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A send-only raw ICMPv6 socket bound to one interface (the front): the
/// IPv6 twin of [`RawIpSender`] for the IPv6 next-hop probes. The caller
/// writes ICMPv6 messages; the kernel adds the IPv6 header (source from the
/// device, hop limit) and the ICMPv6 checksum, and solicits a destination it
/// has no neighbour entry for, as for any packet it sends. Opening needs
/// CAP_NET_RAW; sending does not.
#[derive(Debug)]
pub struct RawIcmp6Sender {
    fd: std::os::fd::OwnedFd,
    ifindex: u32,
}

impl RawIcmp6Sender {
    /// `ifindex` is `device`'s: the scope of a link-local destination.
    pub fn open(device: &str, ifindex: u32) -> io::Result<Self> {
        // SAFETY: plain socket(2); a non-negative result is a new fd we own.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET6,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::IPPROTO_ICMPV6,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor owned by nobody else.
        let owned: std::os::fd::OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
        // Nothing is read from it: a filter that blocks every type keeps the
        // kernel from queueing the ICMPv6 traffic of the host on it.
        let block_all = [u32::MAX; 8];
        // SAFETY: setsockopt reads the 32-byte filter during the call.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_ICMPV6,
                1, // ICMP6_FILTER
                block_all.as_ptr().cast(),
                size_of_val(&block_all) as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        bind_to_device(fd, device)?;
        Ok(Self { fd: owned, ifindex })
    }

    /// Sends `message` (an ICMPv6 message) to `dst` without waiting.
    pub fn send_to(&self, message: &[u8], dst: std::net::Ipv6Addr) -> io::Result<()> {
        let sin6 = libc::sockaddr_in6 {
            sin6_family: libc::AF_INET6 as libc::sa_family_t,
            sin6_port: 0,
            sin6_flowinfo: 0,
            sin6_addr: libc::in6_addr {
                s6_addr: dst.octets(),
            },
            // A link-local hop (a router's) is only unique on its link.
            sin6_scope_id: if dst.is_unicast_link_local() {
                self.ifindex
            } else {
                0
            },
        };
        // SAFETY: message and sin6 are live for the call, of the lengths given.
        let n = unsafe {
            libc::sendto(
                std::os::fd::AsRawFd::as_raw_fd(&self.fd),
                message.as_ptr().cast(),
                message.len(),
                libc::MSG_DONTWAIT,
                (&sin6 as *const libc::sockaddr_in6).cast(),
                size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Binds socket `fd` to interface `device` (SO_BINDTODEVICE).
fn bind_to_device(fd: std::os::fd::RawFd, device: &str) -> io::Result<()> {
    // SAFETY: setsockopt reads `device.len()` bytes of the name during the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            device.as_ptr().cast(),
            device.len() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// This host's IPv4 addresses on `device`.
pub fn ipv4_addrs(device: &str) -> io::Result<Vec<Ipv4Addr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: head is a valid out-pointer; on success it owns a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) };
        if !ifa.ifa_addr.is_null() && name.to_bytes() == device.as_bytes() {
            // SAFETY: ifa_addr is non-null and points to a sockaddr of the family it
            // declares; only AF_INET ones are read as sockaddr_in.
            let family = unsafe { (*ifa.ifa_addr).sa_family };
            if i32::from(family) == libc::AF_INET {
                let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                out.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: head came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// This host's global IPv6 addresses on `device` (none if IPv6 is off),
/// those past duplicate address detection first.
pub fn ipv6_addrs(device: &str) -> io::Result<Vec<Ipv6Addr>> {
    match std::fs::read_to_string("/proc/net/if_inet6") {
        Ok(text) => Ok(parse_if_inet6(&text, device)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The global addresses of `device` in `/proc/net/if_inet6` (per line: the
/// address in 32 hex digits, ifindex, prefix length, scope, flags, name),
/// without the ones that failed duplicate address detection; tentative ones
/// last.
fn parse_if_inet6(text: &str, device: &str) -> Vec<Ipv6Addr> {
    const SCOPE_GLOBAL: u32 = 0;
    const IFA_F_DADFAILED: u32 = 0x08;
    const IFA_F_TENTATIVE: u32 = 0x40;
    let mut found: Vec<(bool, Ipv6Addr)> = text
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [addr, _, _, scope, flags, name] = f.as_slice() else {
                return None;
            };
            let scope = u32::from_str_radix(scope, 16).ok()?;
            let flags = u32::from_str_radix(flags, 16).ok()?;
            if *name != device || scope != SCOPE_GLOBAL || flags & IFA_F_DADFAILED != 0 {
                return None;
            }
            let ip = Ipv6Addr::from(u128::from_str_radix(addr, 16).ok()?);
            Some((flags & IFA_F_TENTATIVE != 0, ip))
        })
        .collect();
    found.sort_by_key(|(tentative, _)| *tentative);
    found.into_iter().map(|(_, ip)| ip).collect()
}

/// The signals the daemon handles itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Terminate,
    Interrupt,
    Hangup,
}

fn handled_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the set they are given.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread and every thread it
/// spawns afterwards, so that they reach the process only through a [`SignalFd`],
/// which the management loop reads.
pub fn block_signals() -> io::Result<()> {
    let set = handled_set();
    // SAFETY: set is initialised; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// The capabilities dispatchd needs for set-up (found by starting it with a
/// reduced bounding set): CAP_NET_ADMIN attaches XDP and binds AF_XDP sockets,
/// CAP_BPF with CAP_PERFMON loads the program (the verifier wants both for its
/// packet-pointer arithmetic), CAP_NET_RAW opens AF_XDP sockets, CAP_IPC_LOCK
/// pins the UMEM beyond RLIMIT_MEMLOCK.
pub const NEEDED_CAPS: [Capability; 5] = [
    Capability::CAP_NET_ADMIN,
    Capability::CAP_BPF,
    Capability::CAP_PERFMON,
    Capability::CAP_NET_RAW,
    Capability::CAP_IPC_LOCK,
];

/// The needed capabilities this thread lacks in its effective set.
pub fn missing_capabilities() -> io::Result<Vec<Capability>> {
    let effective = caps::read(None, CapSet::Effective).map_err(caps_error)?;
    Ok(NEEDED_CAPS
        .into_iter()
        .filter(|c| !effective.contains(c))
        .collect())
}

/// The caps crate's errors are strings that already name the failing call.
fn caps_error(e: caps::errors::CapsError) -> io::Error {
    io::Error::other(e.to_string())
}

/// Raises this process's soft limit of open descriptors to its hard one, as
/// systemd advises for a service that needs more than the soft default of
/// 1024 (a health probe per daemon, up to thousands, each needs one while it
/// runs, beside the sockets, maps and clients). Returns the limit now in force.
pub fn raise_descriptor_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: limit is a live rlimit the kernel writes.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: limit is a live, initialised rlimit the kernel reads.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// An eventfd: workers write the loop's to wake it (the loop reads it through
/// io_uring), and the loop writes a worker's to wake it (the worker reads it
/// back with [`clear`](Self::clear)).
#[derive(Debug)]
pub struct EventFd(std::os::fd::OwnedFd);

impl EventFd {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; a non-negative result is a new fd we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor owned by nobody else.
        Ok(Self(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }))
    }

    /// Adds one to the counter. EAGAIN (counter saturated) still leaves it
    /// readable, which is all a wake-up needs.
    pub fn notify(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our own fd.
        unsafe {
            libc::write(
                std::os::fd::AsRawFd::as_raw_fd(&self.0),
                one.as_ptr().cast(),
                8,
            )
        };
    }

    /// Reads the counter back to zero, so the fd is no longer readable.
    /// EAGAIN (already zero) is the same outcome.
    pub fn clear(&self) {
        let mut count = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live buffer of 8 from our own fd.
        unsafe {
            libc::read(
                std::os::fd::AsRawFd::as_raw_fd(&self.0),
                count.as_mut_ptr().cast(),
                8,
            )
        };
    }

    pub fn raw(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.0)
    }
}

/// A signalfd for SIGTERM, SIGINT and SIGHUP (which [`block_signals`] blocked).
#[derive(Debug)]
pub struct SignalFd(std::os::fd::OwnedFd);

impl SignalFd {
    pub fn new() -> io::Result<Self> {
        let set = handled_set();
        // SAFETY: set is initialised; -1 asks for a new fd, which we then own.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor owned by nobody else.
        Ok(Self(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }))
    }

    pub fn raw(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.0)
    }

    /// The signal in a `signalfd_siginfo` read from this fd.
    pub fn decode(buf: &[u8]) -> Option<Signal> {
        let signo = u32::from_ne_bytes(buf.get(..4)?.try_into().ok()?) as i32;
        match signo {
            libc::SIGTERM => Some(Signal::Terminate),
            libc::SIGINT => Some(Signal::Interrupt),
            libc::SIGHUP => Some(Signal::Hangup),
            _ => None,
        }
    }
}

/// Size of the `signalfd_siginfo` the kernel hands back per signal.
pub const SIGINFO_LEN: usize = 128;

/// Gives up every capability for good: the bounding set (when this process
/// may: it takes CAP_SETPCAP), the ambient set, and the inheritable, effective
/// and permitted sets of the calling thread (threads created afterwards
/// inherit the empty sets), and sets no_new_privs so no exec can get them
/// back. Called once set-up is done: from then on dispatchd only uses
/// descriptors it already holds (sockets, BPF maps and links, io_uring), which
/// need no capability.
pub fn drop_all_capabilities() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only; it changes a flag of this
    // thread (inherited by those it creates) and touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // The bounding set first, while CAP_SETPCAP is still effective. A process
    // started with only the capabilities it needs lacks CAP_SETPCAP and keeps
    // its bounding set: with no_new_privs and empty permitted sets nothing can
    // be regained from it.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).map_err(caps_error)? {
        // Those of the crate's list the running kernel has (up to
        // cap_last_cap): all of Linux's as of 6.18, the newest being
        // CAP_CHECKPOINT_RESTORE (5.9).
        let supported = caps::runtime::procfs_all_supported(None).map_err(caps_error)?;
        for cap in supported {
            caps::drop(None, CapSet::Bounding, cap).map_err(caps_error)?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(caps_error)?;
    // Inheritable and effective before permitted: the kernel refuses a
    // permitted set that no longer covers the other two.
    for set in [CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
        caps::clear(None, set).map_err(caps_error)?;
    }
    Ok(())
}

/// Most descriptors one [`send_fds`] carries (the bpf_links of a takeover).
pub const MAX_PASSED_FDS: usize = 4;

/// Sends `data` on the Unix stream socket `sock` with `fds` attached
/// (SCM_RIGHTS): the receiver gets its own descriptors for the same open
/// files. All of `data` goes in one sendmsg or it is an error (it is a short
/// line).
pub fn send_fds(
    sock: std::os::fd::BorrowedFd<'_>,
    data: &[u8],
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if fds.len() > MAX_PASSED_FDS {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many fds"));
    }
    let raw: Vec<libc::c_int> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let payload = std::mem::size_of_val(raw.as_slice()) as u32;
    // u64 elements keep the control buffer aligned for struct cmsghdr.
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: all-zero is a valid msghdr; the pointers set below point at
    // iov and control, which outlive the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        // SAFETY: CMSG_SPACE is arithmetic on its argument.
        let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
        debug_assert!(space <= size_of_val(&control));
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` zeroed bytes, room for one
        // header and `raw` (MAX_PASSED_FDS ints fit the 64 bytes), so
        // CMSG_FIRSTHDR is non-null and CMSG_DATA has `payload` bytes after it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as _;
            std::ptr::copy_nonoverlapping(
                raw.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                payload as usize,
            );
        }
    }
    let sent = loop {
        // SAFETY: msg and everything it points at are initialised and live.
        let sent = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if sent >= 0 {
            break sent;
        }
        let e = io::Error::last_os_error();
        // Nothing was sent: try again (io_uring's task work interrupts).
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    if sent as usize != data.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short sendmsg"));
    }
    Ok(())
}

/// Receives up to `buf.len()` bytes on the Unix stream socket `sock`, and the
/// descriptors attached to them (at most [`MAX_PASSED_FDS`]; more, or a
/// truncated control message, is an error after the ones received are
/// closed). Returns the byte count (0 at end of stream) and the descriptors.
pub fn recv_fds(
    sock: std::os::fd::BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Vec<std::os::fd::OwnedFd>)> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: all-zero is a valid msghdr; its pointers are set to iov and
    // control, which outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control) as _;
    // SAFETY: msg points at live buffers of the sizes it states;
    // MSG_CMSG_CLOEXEC keeps the received fds out of any child.
    let got = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel wrote msg_controllen bytes of well-formed control
    // messages into `control`; CMSG_FIRSTHDR/CMSG_NXTHDR stay within them.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg);
                for i in 0..bytes / size_of::<libc::c_int>() {
                    let fd = std::ptr::read_unaligned(data.cast::<libc::c_int>().add(i));
                    // Each is a new descriptor the kernel installed for us.
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 || fds.len() > MAX_PASSED_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "more descriptors than expected",
        ));
    }
    Ok((got as usize, fds))
}

/// Ends this process at once with SIGKILL, as an operator's `kill -9` would:
/// no destructor runs, no core is dumped; the kernel closes every descriptor.
pub fn kill_self() -> ! {
    // SAFETY: plain syscalls on this process; SIGKILL cannot be caught or
    // blocked, so kill does not return.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_global_ipv6_addresses_of_a_device_are_read_settled_first() {
        let text = "\
fe800000000000000000000000000001 03 40 20 80   back0
20010002000000020000000000000001 03 40 00 c0   back0
20010002000000020000000000000002 03 40 00 80   back0
20010002000000020000000000000003 03 40 00 88   back0
20010002000000010000000000000001 02 40 00 80  front0
00000000000000000000000000000001 01 80 10 80       lo
";
        assert_eq!(
            parse_if_inet6(text, "back0"),
            [
                "2001:2:0:2::2".parse::<Ipv6Addr>().unwrap(),
                "2001:2:0:2::1".parse().unwrap()
            ],
            "link-local and DAD-failed left out, the tentative one last"
        );
        assert!(parse_if_inet6(text, "back1").is_empty());
        assert!(parse_if_inet6("garbage\n", "back0").is_empty());
    }

    /// The `Cap*:` lines of a task's status file, as the e2e tests read them.
    fn cap_lines(status: &str) -> Vec<(&str, &str)> {
        ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"]
            .into_iter()
            .map(|key| {
                let value = status.lines().find_map(|l| l.strip_prefix(key));
                (key, value.expect(key).trim())
            })
            .collect()
    }

    #[test]
    fn a_thread_that_drops_them_has_no_capability_left_and_says_which_it_misses() {
        assert!(
            missing_capabilities().unwrap().is_empty(),
            "this test needs root (the five set-up capabilities) to have something to drop"
        );
        // A thread of its own: capability sets and no_new_privs are per thread,
        // so the test process keeps its own.
        let (missing, status) = std::thread::spawn(|| {
            drop_all_capabilities().unwrap();
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            (missing_capabilities().unwrap(), status)
        })
        .join()
        .unwrap();
        assert_eq!(missing, NEEDED_CAPS.to_vec());
        for (key, value) in cap_lines(&status) {
            assert_eq!(value, "0000000000000000", "{key}");
        }
        let no_new_privs = status.lines().find_map(|l| l.strip_prefix("NoNewPrivs:"));
        assert_eq!(no_new_privs.map(str::trim), Some("1"));
        assert!(
            missing_capabilities().unwrap().is_empty(),
            "the test's own thread keeps them"
        );
    }
}
