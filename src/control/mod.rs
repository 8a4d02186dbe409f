//! Pure logic of the management thread: the connection close state machine with its
//! timers ([`conntrack`]) and health-check rise/fall ([`health`]).
//!
//! No I/O, no threads: the io_uring loop feeds events and the current monotonic time
//! (`u64` nanoseconds) in, and sends the returned commands to the workers.

pub mod conntrack;
pub mod health;
