//! dispatchd's end-to-end test kit: the harness shared by the dispatchd package's
//! tests and the end-to-end benchmark (the DESIGN.md topology, process guards,
//! a network-namespace guard, several instances behind a BGP-fed ECMP router), and the one frame builder that the tests, the
//! `dispatchd-testkit inject` command and the benchmark's packet generator use.
//!
//! The harness needs root (namespaces, XDP, AF_XDP); without it, it fails with
//! a message saying so and never skips.
#![deny(unsafe_code)]

pub mod frame;
pub mod json;
pub mod netns;
pub mod outcome;
pub mod process;
pub mod scaleout;
pub mod topology;

pub use netns::NetNsGuard;
pub use process::{
    ensure_root, meminfo, output_of, require_root, text, wait_until, wait_until_steady, Proc,
};
pub use topology::{
    daemon_addr, daemon_addr6, per_daemon, testkit_bin, Programs, Router, Topology, VIP, VIP6,
};
