//! dispatchd: binds many server daemons to one service address.
//!
//! The pure parts (packet views, flow table, selection policies, config) run and are
//! tested without privileges; the parts that touch the kernel (XDP program, AF_XDP
//! sockets, workers, syscalls) are thin and are the only modules allowed `unsafe`.
#![deny(unsafe_code)]

pub mod balance;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod flow;
pub mod ids;
pub mod kernel;
pub mod log;
pub mod neigh;
pub mod netlink;
pub mod notify;
pub mod packet;
pub mod prefetch;
pub mod protocol;
pub mod queues;
pub mod stats;
pub mod sys;
pub mod tracked;
pub mod worker;
pub mod xdp;
pub mod xsk;
