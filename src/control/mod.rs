//! The management thread. Pure logic: the connection close state machine with its
//! timers ([`conntrack`]) and health-check rise/fall ([`health`]); the io_uring loop
//! that drives them ([`manager`]); rendering of statistics ([`report`]).
//!
//! The pure parts do no I/O: the io_uring loop feeds events and the current monotonic time
//! (`u64` nanoseconds) in, and sends the returned commands to the workers.

pub mod conntrack;
pub mod health;
pub mod manager;
pub mod report;
