//! A worker's UMEM goes on huge pages when the administrator reserved them
//! (`vm.nr_hugepages`), and on ordinary pages when none is free: the test
//! reserves exactly one worker's worth, so of two workers the first gets them
//! and the second falls back, and both carry connections. Needs root; it
//! changes `vm.nr_hugepages` and puts it back, even on failure.
use std::time::Duration;

use dispatchd::{
    config::DEFAULT_FRAMES_PER_QUEUE,
    xsk::{umem_frames, FRAME_SIZE},
};
use dispatchd_testkit::{json::u64_at, text, Topology, VIP};

const DISPATCHD: &str = env!("CARGO_BIN_EXE_dispatchd");
const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

fn meminfo(field: &str) -> u64 {
    dispatchd_testkit::meminfo(field).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Puts `vm.nr_hugepages` back as it was.
struct Reserved(String);

impl Reserved {
    /// Reserves huge pages so that exactly `free` can be mapped (free and
    /// not promised to another mapping).
    fn exactly_free(free: u64) -> Self {
        let was = std::fs::read_to_string(NR_HUGEPAGES).expect("reading vm.nr_hugepages");
        let available = || meminfo("HugePages_Free") - meminfo("HugePages_Rsvd");
        let taken = meminfo("HugePages_Total") - available();
        let guard = Reserved(was);
        std::fs::write(NR_HUGEPAGES, (taken + free).to_string())
            .expect("writing vm.nr_hugepages (root)");
        assert_eq!(
            available(),
            free,
            "the kernel could not reserve {free} huge pages"
        );
        guard
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        let _ = std::fs::write(NR_HUGEPAGES, self.0.trim());
    }
}

#[test]
fn the_umem_is_on_huge_pages_when_reserved_and_on_small_ones_when_not() {
    let huge_page = meminfo("Hugepagesize") * 1024;
    assert_eq!(
        huge_page,
        2 << 20,
        "this test sizes its reservation for 2 MiB default huge pages"
    );
    // A worker with one front and one back queue, at the default size.
    let umem_bytes = u64::from(umem_frames(DEFAULT_FRAMES_PER_QUEUE, 2)) * u64::from(FRAME_SIZE);
    let umem_pages = umem_bytes / huge_page;
    let topo = Topology::up(DISPATCHD, "huge", 4, 2);
    let _servers = topo.serve(4);
    let _reserved = Reserved::exactly_free(umem_pages);

    let mut flags = Topology::default_flags(4);
    flags.extend(["--queues", "2", "--cores", "0,1"].map(String::from));
    let lb = topo.dispatchd(&flags);
    let stats = topo.stats();
    assert_eq!(
        (
            u64_at(&stats, "/workers/0/umem_huge_page_bytes"),
            u64_at(&stats, "/workers/1/umem_huge_page_bytes")
        ),
        (huge_page, 0),
        "worker 0 takes the reserved pages, worker 1 finds none: {stats}"
    );
    assert_eq!(
        meminfo("HugePages_Free") - meminfo("HugePages_Rsvd"),
        0,
        "worker 0 holds them all"
    );

    let out = topo.client_run(&[
        "connect",
        "--to",
        VIP,
        "--connections",
        "300",
        "--concurrency",
        "6",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let stats = topo.stats();
    for w in 0..2 {
        for counter in ["new_flows", "rx_back"] {
            assert!(
                u64_at(&stats, &format!("/workers/{w}/{counter}")) > 0,
                "worker {w}: no {counter}: {stats}"
            );
        }
    }
    let carried = u64_at(&stats, "/workers/0/new_flows") + u64_at(&stats, "/workers/1/new_flows");
    assert_eq!(carried, 300, "{stats}");
    drop(lb);
    // The pages go back to the pool with the process.
    dispatchd_testkit::wait_until(Duration::from_secs(5), "the pages freed", || {
        meminfo("HugePages_Free") - meminfo("HugePages_Rsvd") == umem_pages
    });
}
