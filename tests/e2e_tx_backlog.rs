//! Frames a worker put on its TX ring leave even when the device could not
//! take them at the time. In copy mode a device that pushes back (its queue
//! stopped: a NIC with a full TX ring, or veth with a qdisc and its peer's
//! ring full) makes the kernel's transmit stop and leave the rest of the
//! frames on the ring for user space to send again; a worker that kicks only
//! for frames it has just queued holds them until the next traffic comes.
//! Here the daemons' side receives in a NAPI of its own on the other core,
//! so veth pushes back while a SYN flood lasts; every frame the worker queued
//! must have left its ring (reached s0, or been dropped by the device) soon
//! after. Needs root.
use std::time::{Duration, Instant};

use dispatchd_testkit::{json::u64_at, text, wait_until_steady, Topology, VIP};

const DISPATCHD: &str = env!("CARGO_BIN_EXE_dispatchd");
const FLOOD: u64 = 200_000;

/// The flood's frames s0's ingress rule counted (and dropped, so that
/// nothing answers them).
fn arrived(topo: &Topology) -> u64 {
    topo.nft_counter(&topo.daemons(), "netdev", "txb", "flood")
        .expect("the flood's counter")
}

/// Frames l1 dropped on transmit (veth's peer ring full, no push-back).
fn dropped_by_l1(topo: &Topology) -> u64 {
    topo.exec(
        &topo.dispatcher(),
        "cat",
        &["/sys/class/net/l1/statistics/tx_dropped"],
    )
    .expect("l1's tx_dropped")
    .trim()
    .parse()
    .expect("a number")
}

fn sh(topo: &Topology, ns: &str, line: &str) {
    let out = topo.run(ns, "sh", &["-c", line]);
    assert!(out.status.success(), "{line}: {}", text(&out));
}

#[test]
fn frames_left_on_a_tx_ring_leave_without_new_traffic() {
    let topo = Topology::up(DISPATCHD, "txb", 2, 1);
    let _servers = topo.serve(2);
    let daemons = topo.daemons();
    // s0 receives in its own NAPI (GRO on), threaded and on core 0 with the
    // flood's sender, away from the worker's core 1: its ring of 256 fills
    // while the worker sends. With a qdisc on l1, veth then stops l1's queue
    // and refuses the frame (NETDEV_TX_BUSY) instead of dropping it.
    sh(
        &topo,
        &daemons,
        "ethtool -K s0 gro on && echo 1 > /sys/class/net/s0/threaded",
    );
    sh(
        &topo,
        &topo.dispatcher(),
        "tc qdisc replace dev l1 root pfifo",
    );
    let pin = std::process::Command::new("sh")
        .args([
            "-c",
            "for p in $(pgrep '^napi/s0-'); do taskset -p -c 0 $p; done",
        ])
        .output()
        .expect("pinning s0's NAPI kthread");
    assert!(pin.status.success(), "{}", text(&pin));
    let rules = "table netdev txb {\n counter flood { }\n chain in {\n \
                 type filter hook ingress device \"s0\" priority 0; policy accept;\n \
                 ip saddr 198.18.128.0/17 counter name flood drop\n }\n}\n";
    sh(&topo, &daemons, &format!("echo '{rules}' | nft -f -"));

    let mut flags = Topology::default_flags(2);
    flags.extend(["--cores", "1", "--syn-timeout-ms", "600000"].map(String::from));
    let _lb = topo.dispatchd(&flags);
    // Each flood may or may not leave frames behind (it depends on where
    // the push-back falls); two make a held frame likely to show.
    for round in 1..=2 {
        let mut flood = topo.cmd(&topo.client(), "taskset");
        flood
            .args(["-c", "0"])
            .arg(&topo.programs().testkit)
            .args(topo.inject_args("198.18.0.2", VIP, "syn-flood", FLOOD));
        let out = flood.output().expect("inject");
        assert!(out.status.success(), "flood: {}", text(&out));

        // The worker has taken all it will once its receive count stands.
        wait_until_steady(
            Duration::from_secs(10),
            "the worker's receive to settle",
            Duration::ZERO,
            || u64_at(&topo.stats(), "/workers/0/rx_front"),
        );
        let queued = u64_at(&topo.stats(), "/workers/0/tx_back");
        assert!(queued > 0, "the worker forwarded nothing");
        let since = Instant::now();
        let left = || arrived(&topo) + dropped_by_l1(&topo);
        let mut out_of_ring = left();
        // The daemons' NAPI drains its ring of 256 in well under a millisecond once
        // the flood stops; a worker that waits for new traffic would leave the
        // rest for its poll timeout's trickle (100 ms for each 64 frames).
        while out_of_ring < queued && since.elapsed() < Duration::from_millis(50) {
            std::thread::sleep(Duration::from_millis(20));
            out_of_ring = left();
        }
        println!(
            "round {round}: queued {queued}: arrived at s0 {}, dropped by l1 {}, {:?} after the flood; worker: {}",
            arrived(&topo),
            dropped_by_l1(&topo),
            since.elapsed(),
            topo.stats()["workers"][0]
        );
        assert_eq!(
            out_of_ring,
            queued,
            "frames the worker queued were still on its TX ring {:?} after the flood",
            since.elapsed()
        );
    }
    // The device did push back: the worker found frames left on its ring.
    let resent = u64_at(&topo.stats(), "/workers/0/tx_resent_kicks");
    assert!(
        resent > 0,
        "no frame was ever left on the TX ring: nothing tested"
    );
}
