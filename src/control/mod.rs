//! The management thread.
//!
//! Pure parts, which do no I/O and take the monotonic time (`u64` nanoseconds) as
//! an argument: the connection close state machine with its timers
//! ([`conntrack`]), health-check rise/fall ([`health`]), every daemon's state
//! ([`backends`]), control requests ([`ctl`]), the probing of clients' next hops
//! the kernel forgot ([`nexthops`]), the operator's overrides ([`state`], with
//! the file that keeps them), readiness ([`ready`]), each daemon's traffic by
//! address across reloads ([`traffic`]) and the rendering of statistics
//! ([`report`], [`metrics`]). Around them: the io_uring slab ([`uring`]), the one path from a
//! configuration to the running state ([`apply`]), the helper thread that makes the
//! workers' IPv6 tables a reload's first IPv6 service needs ([`table6`]), and the loop that drives it all
//! ([`manager`]).

pub mod apply;
pub mod backends;
pub mod conntrack;
pub mod ctl;
pub mod health;
pub mod icmp;
pub mod manager;
pub mod metrics;
pub mod nexthops;
pub mod ready;
pub mod report;
pub mod state;
pub mod table6;
pub mod takeover;
pub mod traffic;
pub mod uring;
