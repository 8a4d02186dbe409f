//! The workers' IPv6 flow tables, when a reload brings the first IPv6 service
//! to a process started without any (which holds none: at the default
//! capacity a table is 193 MB per worker).
//!
//! Allocating and writing such a table takes tens to hundreds of
//! milliseconds. Neither a worker (whose RX, IPv4's too, would stop
//! meanwhile) nor the management loop (whose workers' events would pile up)
//! may spend them: a helper thread allocates one table per worker, away from
//! the workers' cores where it can, and hands each over as it is done; the
//! loop sends it to its worker ([`Command::Table6`](crate::protocol::Command::Table6)),
//! which only swaps it in. Until then the worker's IPv6 table has no room, so
//! a new IPv6 connection is refused and counted (`table_full`), never passed
//! to the host.
//!
//! Tables are allocated once per process: a reload that removes the IPv6
//! services keeps them, one that brings them back, or a second reload while
//! the first one's tables are on their way, allocates nothing.
use std::{
    sync::{
        mpsc::{channel, Receiver, TryRecvError},
        Arc,
    },
    thread,
};

use crate::{flow::FlowTable6, ids::WorkerId, protocol::Wake, sys};

/// What [`Tables6`] needs to know of the process.
pub struct Tables6Plan {
    /// `flow_capacity`: each table's capacity.
    pub capacity: usize,
    /// Whether the workers have their tables already (IPv6 services at start).
    pub present: bool,
    pub workers: usize,
    /// Where the helper thread may run: the management thread's cores less
    /// the workers'; empty where none is left (it then runs where the
    /// management thread may).
    pub cores: Vec<usize>,
}

/// Of the cores the management thread may run on (`available`), those no
/// worker is pinned to: where the helper's long work takes no time from a
/// worker.
pub fn cores_beside(
    available: &[usize],
    workers: impl Iterator<Item = Option<usize>>,
) -> Vec<usize> {
    let taken: Vec<usize> = workers.flatten().collect();
    (available.iter().copied())
        .filter(|c| !taken.contains(c))
        .collect()
}

/// Whether the workers have their IPv6 tables, and the ones on their way.
pub struct Tables6 {
    plan: Tables6Plan,
    state: State,
    /// Each worker's: whether it has its table, or it was sent.
    sent: Vec<bool>,
    wake: Arc<Wake>,
}

enum State {
    /// Some worker has no table, and none is being made.
    Absent,
    /// The helper thread hands tables over on `ready`; `left` are to come.
    Allocating {
        ready: Receiver<(WorkerId, Box<FlowTable6>)>,
        left: usize,
    },
    /// Every worker has its table, or it was sent.
    Present,
}

impl Tables6 {
    /// `wake` is the loop's: the helper wakes it when a table is done.
    pub fn new(plan: Tables6Plan, wake: Arc<Wake>) -> Self {
        let state = if plan.present {
            State::Present
        } else {
            State::Absent
        };
        let sent = vec![plan.present; plan.workers];
        Self {
            plan,
            state,
            sent,
            wake,
        }
    }

    /// For a configuration about to run, with IPv6 services or not (`needed`):
    /// starts making the tables if it needs them and the workers have none
    /// (nor are they on their way). Whether it started.
    pub fn provide(&mut self, needed: bool) -> bool {
        if !needed || !matches!(self.state, State::Absent) {
            return false;
        }
        // All of them but after a helper that died midway: those it sent are
        // not made again (a worker refuses a table no larger than its own,
        // and would free it on its own thread).
        let missing: Vec<WorkerId> = (self.sent.iter().enumerate())
            .filter(|(_, sent)| !**sent)
            .map(|(w, _)| WorkerId(w as u16))
            .collect();
        if missing.is_empty() {
            self.state = State::Present;
            return false;
        }
        let (sender, ready) = channel();
        let capacity = self.plan.capacity;
        let workers = missing.len();
        let cores = self.plan.cores.clone();
        let wake = self.wake.clone();
        let spawned = thread::Builder::new()
            .name("dispatchd-table6".into())
            .spawn(move || {
                if !cores.is_empty() {
                    if let Err(e) = sys::set_thread_cores(&cores) {
                        tracing::warn!("IPv6 flow tables: cannot keep off the workers' cores: {e}");
                    }
                }
                for w in missing {
                    let table = FlowTable6::with_capacity(capacity);
                    if sender.send((w, Box::new(table))).is_err() {
                        // The loop has ended.
                        return;
                    }
                    wake.eventfd.notify();
                }
            });
        match spawned {
            Ok(_) => {
                tracing::info!(
                    workers,
                    capacity,
                    mib_each = FlowTable6::memory_for(capacity) >> 20,
                    "allocating the IPv6 flow tables for the first IPv6 service, off the workers"
                );
                self.state = State::Allocating {
                    ready,
                    left: workers,
                };
                true
            }
            Err(e) => {
                tracing::error!(
                    "IPv6 flow tables: cannot start their thread ({e}); IPv6 connections \
                     are refused (table_full) until a reload tries again"
                );
                false
            }
        }
    }

    /// The tables done since the last call, for their workers.
    pub fn arrived(&mut self) -> Vec<(WorkerId, Box<FlowTable6>)> {
        let State::Allocating { ready, left } = &mut self.state else {
            return Vec::new();
        };
        let mut done = Vec::new();
        loop {
            match ready.try_recv() {
                Ok((worker, table)) => {
                    if let Some(sent) = self.sent.get_mut(worker.index()) {
                        *sent = true;
                    }
                    done.push((worker, table));
                    *left -= 1;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    if *left > 0 {
                        tracing::error!(
                            "IPv6 flow tables: their thread ended with {left} to make; \
                             a reload tries again"
                        );
                        self.state = State::Absent;
                        return done;
                    }
                    break;
                }
            }
        }
        if matches!(self.state, State::Allocating { left: 0, .. }) {
            self.state = State::Present;
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::sys::EventFd;

    fn tables6(present: bool) -> Tables6 {
        let plan = Tables6Plan {
            capacity: 64,
            present,
            workers: 2,
            cores: Vec::new(),
        };
        Tables6::new(plan, Arc::new(Wake::new(EventFd::new().unwrap())))
    }

    /// Every table the helper makes, waited for.
    fn all_arrived(t: &mut Tables6, n: usize) -> Vec<(WorkerId, Box<FlowTable6>)> {
        let until = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        while got.len() < n && Instant::now() < until {
            got.extend(t.arrived());
            std::thread::sleep(Duration::from_millis(1));
        }
        got
    }

    #[test]
    fn the_first_ipv6_service_gets_one_table_per_worker_once() {
        let mut t = tables6(false);
        assert!(!t.provide(false), "no IPv6 service: nothing to make");
        assert!(t.arrived().is_empty());
        assert!(t.provide(true));
        // A second reload while they are made, or the same one again.
        assert!(!t.provide(true));
        let got = all_arrived(&mut t, 2);
        let workers: Vec<WorkerId> = got.iter().map(|(w, _)| *w).collect();
        assert_eq!(workers, [WorkerId(0), WorkerId(1)]);
        for (_, table) in &got {
            assert_eq!(table.capacity(), 64);
            assert!(table.is_empty());
        }
        std::thread::sleep(Duration::from_millis(20));
        assert!(t.arrived().is_empty(), "no third table");
        // The services removed, then brought back: the tables are there.
        assert!(!t.provide(false));
        assert!(!t.provide(true));
        assert!(t.arrived().is_empty());
    }

    #[test]
    fn the_helper_keeps_off_the_workers_cores_where_one_is_left() {
        let workers = || [Some(1), None, Some(3)].into_iter();
        assert_eq!(cores_beside(&[0, 1, 2, 3], workers()), [0, 2]);
        assert_eq!(cores_beside(&[1, 3], workers()), Vec::<usize>::new());
        assert_eq!(cores_beside(&[0, 1], [None].into_iter()), [0, 1]);
    }

    #[test]
    fn workers_started_with_ipv6_services_get_no_other_table() {
        let mut t = tables6(true);
        assert!(!t.provide(true));
        assert!(t.arrived().is_empty());
    }
}
