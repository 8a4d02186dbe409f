//! Entering a named network namespace from the current thread (as aya's test
//! helpers do), for tests that need a namespace's interfaces in-process, such
//! as loading BPF onto a topology's veth.
#![allow(unsafe_code)] // setns(2); each block says why it is sound

use std::{fs::File, io, marker::PhantomData, os::fd::AsRawFd, path::Path};

/// While alive, the current thread is in the named network namespace; dropping
/// it puts the thread back where it was. setns changes only the calling
/// thread, so the guard is not Send: it must be dropped where it was made.
pub struct NetNsGuard {
    original: File,
    _same_thread: PhantomData<*const ()>,
}

impl NetNsGuard {
    /// Enters the namespace `ip netns add NAME` made (`/run/netns/NAME`).
    pub fn enter(name: &str) -> io::Result<NetNsGuard> {
        let original = File::open("/proc/thread-self/ns/net")?;
        let target = File::open(Path::new("/run/netns").join(name))?;
        set_net_ns(&target)?;
        Ok(NetNsGuard {
            original,
            _same_thread: PhantomData,
        })
    }
}

impl Drop for NetNsGuard {
    fn drop(&mut self) {
        if let Err(e) = set_net_ns(&self.original) {
            // Going on in the wrong namespace would send a test's traffic where
            // it must not go; a panic while unwinding would abort instead.
            if std::thread::panicking() {
                eprintln!("NetNsGuard: leaving the namespace failed: {e}");
            } else {
                panic!("NetNsGuard: leaving the namespace failed: {e}");
            }
        }
    }
}

fn set_net_ns(ns: &File) -> io::Result<()> {
    // SAFETY: setns only reads the descriptor, which `ns` keeps open for the
    // call; CLONE_NEWNET makes the kernel refuse anything but a network
    // namespace.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::MetadataExt, process::Command};

    use super::*;
    use crate::process::require_root;

    fn current_ns() -> u64 {
        std::fs::metadata("/proc/thread-self/ns/net")
            .expect("own netns")
            .ino()
    }

    /// Deletes the namespace on drop, also when the test fails.
    struct Named(String);

    impl Drop for Named {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    #[test]
    fn enters_the_named_namespace_and_restores_the_original() {
        require_root();
        let name = Named(format!("dtkitns{}", std::process::id() % 100_000));
        let made = Command::new("ip")
            .args(["netns", "add", &name.0])
            .status()
            .expect("ip netns add");
        assert!(made.success(), "ip netns add {}", name.0);
        let named = std::fs::metadata(Path::new("/run/netns").join(&name.0))
            .expect("the named namespace")
            .ino();
        let before = current_ns();
        assert_ne!(before, named);
        {
            let _inside = NetNsGuard::enter(&name.0).expect("entering");
            assert_eq!(current_ns(), named);
        }
        assert_eq!(current_ns(), before);
        assert!(NetNsGuard::enter("dtkit-no-such-namespace").is_err());
    }
}
