use super::*;
use std::net::{Ipv4Addr, SocketAddrV4};

const S: u64 = 1_000_000_000;
const T: Timeouts = Timeouts {
    syn: Duration::from_secs(10),
    idle: Duration::from_secs(300),
    linger: Duration::from_secs(2),
    rst_linger: Duration::from_secs(10),
    udp_idle: Duration::from_secs(300),
};

fn key(i: u32) -> FlowKey {
    FlowKey::new(
        SocketAddrV4::new(Ipv4Addr::from(0x0a00_0000 + i), 1024 + (i % 50_000) as u16),
        SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 80),
        6,
    )
}

fn daemon(b: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 8000 + b)
}

/// An `Opened`; [`ev`] stamps it (and every event) with the time it applies it.
fn opened(worker: u16, i: u32, backend: u16) -> Event {
    Event::Opened {
        worker: WorkerId(worker),
        key: key(i),
        daemon: daemon(backend),
        at_ns: 0,
    }
}

/// A `Recovered`: a record made for a mid-connection segment.
fn recovered(worker: u16, i: u32, backend: u16) -> Event {
    Event::Recovered {
        worker: WorkerId(worker),
        key: key(i),
        daemon: daemon(backend),
        at_ns: 0,
    }
}

/// `e` as seen by a worker at `at` (`Active` carries its own time).
fn seen_at(e: Event, at: u64) -> Event {
    match e {
        Event::Opened {
            worker,
            key,
            daemon,
            ..
        } => Event::Opened {
            worker,
            key,
            daemon,
            at_ns: at,
        },
        Event::Recovered {
            worker,
            key,
            daemon,
            ..
        } => Event::Recovered {
            worker,
            key,
            daemon,
            at_ns: at,
        },
        Event::Established { key, .. } => Event::Established { key, at_ns: at },
        Event::Fin {
            key, from_client, ..
        } => Event::Fin {
            key,
            from_client,
            at_ns: at,
        },
        Event::Reset { key, .. } => Event::Reset { key, at_ns: at },
        Event::DaemonRst { key, seq, .. } => Event::DaemonRst {
            key,
            seq,
            at_ns: at,
        },
        Event::Removed { key, .. } => Event::Removed { key, at_ns: at },
        Event::Active { .. } => e,
    }
}

/// An [`Order`] as one flat value, so that an expectation reads as one literal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    Remove {
        worker: u16,
        key: FlowKey,
        opened_ns: u64,
    },
    RemoveIfIdle {
        worker: u16,
        key: FlowKey,
        idle_since_ns: u64,
    },
    CheckRst {
        worker: u16,
        key: FlowKey,
        seq: u32,
        at_ns: u64,
    },
}

fn flat((WorkerId(worker), command): Order) -> Command {
    match command {
        FlowCommand::Remove { key, opened_ns } => Command::Remove {
            worker,
            key,
            opened_ns,
        },
        FlowCommand::RemoveIfIdle { key, idle_since_ns } => Command::RemoveIfIdle {
            worker,
            key,
            idle_since_ns,
        },
        FlowCommand::CheckRst { key, seq, at_ns } => Command::CheckRst {
            worker,
            key,
            seq,
            at_ns,
        },
    }
}

/// Applies `e` at `now`, as seen by its worker at `now`, and returns the commands.
fn ev(t: &mut ConnTracker, e: Event, now: u64) -> Vec<Command> {
    ev_seen(t, e, now, now)
}

/// Applies `e` at `now`, as seen by its worker at `at`.
fn ev_seen(t: &mut ConnTracker, e: Event, at: u64, now: u64) -> Vec<Command> {
    let mut out = Vec::new();
    t.on_event(seen_at(e, at), now, &mut out);
    out.into_iter().map(flat).collect()
}

fn exp(t: &mut ConnTracker, now: u64) -> Vec<Command> {
    let mut out = Vec::new();
    t.expire(now, &mut out);
    out.into_iter().map(flat).collect()
}

/// The per-daemon counts by walking every connection: what the tracker keeps
/// up to date as they change.
fn recount(t: &ConnTracker) -> AHashMap<(SocketAddrV4, u8), BackendConns> {
    let mut counts = AHashMap::<(SocketAddrV4, u8), BackendConns>::new();
    for c in t.iter() {
        let e = counts.entry((c.daemon, c.key.protocol)).or_default();
        if is_active(c.phase) {
            e.active += 1;
        } else {
            e.inactive += 1;
        }
    }
    counts
}

/// What only the tests ask of the tracker.
impl ConnTracker {
    fn get(&self, key: &FlowKey) -> Option<ConnInfo> {
        self.conns.get(&key.packed()).map(|c| c.info)
    }

    /// The earliest armed deadline: exact, since stale entries never stay on top.
    fn next_deadline(&self) -> Option<u64> {
        self.timers.heap.peek().map(|Reverse((d, _, _))| *d)
    }
}

impl Default for ConnTracker {
    fn default() -> Self {
        Self::new(Timeouts::default())
    }
}

fn established(t: &mut ConnTracker, worker: u16, i: u32, now: u64) {
    assert!(ev(t, opened(worker, i, 0), now).is_empty());
    assert!(ev(
        t,
        Event::Established {
            key: key(i),
            at_ns: 0
        },
        now
    )
    .is_empty());
}

#[test]
fn defaults() {
    assert_eq!(
        Timeouts::default(),
        Timeouts {
            syn: Duration::from_secs(10),
            idle: Duration::from_secs(300),
            linger: Duration::from_secs(2),
            rst_linger: Duration::from_secs(10),
            udp_idle: Duration::from_secs(300),
        }
    );
    let t = ConnTracker::default();
    assert!(t.is_empty() && t.next_deadline().is_none());
}

#[test]
fn half_open_expires_with_remove() {
    let mut t = ConnTracker::new(T);
    assert!(ev(&mut t, opened(3, 1, 7), 100).is_empty());
    let info = t.get(&key(1)).unwrap();
    assert_eq!(
        (info.phase, info.worker, info.opened_ns, info.daemon),
        (Phase::SynSent, WorkerId(3), 100, daemon(7))
    );
    assert_eq!(t.next_deadline(), Some(100 + 10 * S));
    assert!(exp(&mut t, 100 + 10 * S - 1).is_empty());
    assert_eq!(
        exp(&mut t, 100 + 10 * S),
        [Command::Remove {
            worker: 3,
            key: key(1),
            opened_ns: 100
        }]
    );
    assert!(t.is_empty() && t.next_deadline().is_none());
    assert!(exp(&mut t, u64::MAX).is_empty());
}

#[test]
fn a_recovered_record_lives_like_a_half_open_one_until_the_client_proves_it() {
    let mut t = ConnTracker::new(T);
    // Unproven: a FIN does not buy it the idle timeout, the syn deadline removes it.
    assert!(ev(&mut t, recovered(2, 1, 7), 100).is_empty());
    let fin = Event::Fin {
        key: key(1),
        from_client: true,
        at_ns: 0,
    };
    assert!(ev(&mut t, fin, 200).is_empty());
    let info = t.get(&key(1)).unwrap();
    assert_eq!((info.phase, info.daemon), (Phase::Recovered, daemon(7)));
    assert_eq!(t.per_daemon()[&(daemon(7), 6)].inactive, 1);
    assert_eq!(
        exp(&mut t, 100 + 10 * S),
        [Command::Remove {
            worker: 2,
            key: key(1),
            opened_ns: 100
        }]
    );
    assert_eq!(
        t.recovery(),
        RecoveryCounts {
            confirmed: 0,
            expired: 1
        }
    );
    assert!(t.is_empty() && t.per_daemon().is_empty());

    // Proven: tracked as established, probed when idle, never expired unproven.
    ev(&mut t, recovered(2, 2, 7), 20 * S);
    let proven = Event::Established {
        key: key(2),
        at_ns: 0,
    };
    assert!(ev(&mut t, proven, 21 * S).is_empty());
    assert_eq!(t.get(&key(2)).unwrap().phase, Phase::Established);
    assert_eq!(t.per_daemon()[&(daemon(7), 6)].active, 1);
    assert!(exp(&mut t, 40 * S).is_empty());
    assert_eq!(t.next_deadline(), Some(21 * S + 300 * S));
    assert_eq!(
        t.recovery(),
        RecoveryCounts {
            confirmed: 1,
            expired: 1
        }
    );
}

#[test]
fn reopen_replaces_record_and_its_timer() {
    let mut t = ConnTracker::new(T);
    ev(&mut t, opened(1, 1, 0), 0);
    // Same worker: replaced silently, the old syn deadline is dead.
    assert!(ev(&mut t, opened(1, 1, 2), 5 * S).is_empty());
    assert_eq!(t.len(), 1);
    assert_eq!(t.get(&key(1)).unwrap().daemon, daemon(2));
    assert_eq!(t.next_deadline(), Some(15 * S));
    assert!(exp(&mut t, 14 * S).is_empty());
    // Another worker: the old owner is told to drop its copy.
    assert_eq!(
        ev(&mut t, opened(4, 1, 2), 14 * S),
        [Command::Remove {
            worker: 1,
            key: key(1),
            opened_ns: 5 * S
        }]
    );
    assert_eq!(
        exp(&mut t, 24 * S),
        [Command::Remove {
            worker: 4,
            key: key(1),
            opened_ns: 14 * S
        }]
    );
}

#[test]
fn established_is_probed_when_idle_and_rechecked_without_answer() {
    let mut t = ConnTracker::new(T);
    established(&mut t, 2, 1, 0);
    assert_eq!(t.get(&key(1)).unwrap().phase, Phase::Established);
    assert_eq!(t.next_deadline(), Some(300 * S));
    assert!(exp(&mut t, 299 * S).is_empty());
    let probe = |now: u64| Command::RemoveIfIdle {
        worker: 2,
        key: key(1),
        idle_since_ns: now - 300 * S,
    };
    assert_eq!(exp(&mut t, 300 * S + 7), [probe(300 * S + 7)]);
    assert_eq!(t.next_deadline(), Some(301 * S + 7));
    // No answer (command queue full): re-sent at the recheck deadline.
    assert!(exp(&mut t, 301 * S).is_empty());
    assert_eq!(exp(&mut t, 301 * S + 7), [probe(301 * S + 7)]);
    // The record was busy: new deadline from its last activity, phase unchanged.
    let active = Event::Active {
        key: key(1),
        last_seen_ns: 250 * S,
    };
    assert!(ev(&mut t, active, 302 * S).is_empty());
    assert_eq!(t.get(&key(1)).unwrap().phase, Phase::Established);
    assert_eq!(t.next_deadline(), Some(550 * S));
    assert_eq!(exp(&mut t, 550 * S), [probe(550 * S)]);
    // The worker removed it.
    assert!(ev(
        &mut t,
        Event::Removed {
            key: key(1),
            at_ns: 0
        },
        551 * S
    )
    .is_empty());
    assert!(t.is_empty() && t.next_deadline().is_none());
    assert!(exp(&mut t, u64::MAX).is_empty());
    assert_eq!(t.ignored_events(), 0);
}

#[test]
fn duplicate_established_refreshes_idle_deadline() {
    let mut t = ConnTracker::new(T);
    established(&mut t, 0, 1, 0);
    ev(
        &mut t,
        Event::Established {
            key: key(1),
            at_ns: 0,
        },
        10 * S,
    );
    assert_eq!(t.next_deadline(), Some(310 * S));
}

#[test]
fn both_fins_linger_then_remove() {
    for client_first in [true, false] {
        let mut t = ConnTracker::new(T);
        established(&mut t, 5, 1, 0);
        let fin = |from_client| Event::Fin {
            key: key(1),
            from_client,
            at_ns: 0,
        };
        assert!(ev(&mut t, fin(client_first), 10 * S).is_empty());
        assert_eq!(
            t.get(&key(1)).unwrap().phase,
            Phase::HalfClosed {
                client_fin: client_first,
                daemon_fin: !client_first
            }
        );
        // Half-closed keeps the idle deadline; a retransmitted FIN changes nothing.
        assert_eq!(t.next_deadline(), Some(300 * S));
        ev(&mut t, fin(client_first), 11 * S);
        assert_eq!(t.next_deadline(), Some(300 * S));
        assert!(ev(&mut t, fin(!client_first), 20 * S).is_empty());
        assert_eq!(t.get(&key(1)).unwrap().phase, Phase::Closing);
        assert_eq!(t.next_deadline(), Some(22 * S));
        // FINs (and Established, Active) while lingering do not extend it.
        ev(&mut t, fin(true), 21 * S);
        ev(
            &mut t,
            Event::Established {
                key: key(1),
                at_ns: 0,
            },
            21 * S,
        );
        let active = Event::Active {
            key: key(1),
            last_seen_ns: 21 * S,
        };
        ev(&mut t, active, 21 * S);
        assert!(exp(&mut t, 22 * S - 1).is_empty());
        assert_eq!(
            exp(&mut t, 22 * S),
            [Command::Remove {
                worker: 5,
                key: key(1),
                opened_ns: 0
            }]
        );
        assert!(t.is_empty() && t.next_deadline().is_none());
        assert!(exp(&mut t, u64::MAX).is_empty());
    }
}

#[test]
fn half_closed_idle_is_probed() {
    let mut t = ConnTracker::new(T);
    established(&mut t, 0, 1, 0);
    ev(
        &mut t,
        Event::Fin {
            key: key(1),
            from_client: false,
            at_ns: 0,
        },
        S,
    );
    assert_eq!(
        exp(&mut t, 300 * S),
        [Command::RemoveIfIdle {
            worker: 0,
            key: key(1),
            idle_since_ns: 0
        }]
    );
}

#[test]
fn an_accepted_reset_lingers_then_removes_via_the_owner() {
    for phase_steps in 0..=3 {
        let mut t = ConnTracker::new(T);
        ev(&mut t, opened(6, 1, 0), 0);
        let steps = [
            Event::Established {
                key: key(1),
                at_ns: 0,
            },
            Event::Fin {
                key: key(1),
                from_client: true,
                at_ns: 0,
            },
            Event::Fin {
                key: key(1),
                from_client: false,
                at_ns: 0,
            },
        ];
        for e in &steps[..phase_steps] {
            ev(&mut t, *e, S);
        }
        let reset = Event::Reset {
            key: key(1),
            at_ns: 0,
        };
        assert!(ev(&mut t, reset, 2 * S).is_empty());
        assert_eq!(t.get(&key(1)).unwrap().phase, Phase::Reset);
        // Segments still in flight pass while the reset lingers; another reset,
        // a FIN or an Established change nothing.
        assert_eq!(t.next_deadline(), Some(12 * S));
        ev(&mut t, reset, 3 * S);
        ev(&mut t, steps[0], 3 * S);
        ev(&mut t, steps[1], 3 * S);
        assert_eq!(t.next_deadline(), Some(12 * S));
        assert!(exp(&mut t, 12 * S - 1).is_empty());
        assert_eq!(
            exp(&mut t, 12 * S),
            [Command::Remove {
                worker: 6,
                key: key(1),
                opened_ns: 0
            }]
        );
        assert!(t.is_empty() && t.next_deadline().is_none());
    }
}

#[test]
fn a_daemon_reset_goes_to_the_owner_to_judge() {
    let mut t = ConnTracker::new(T);
    established(&mut t, 3, 1, 0);
    let rst = Event::DaemonRst {
        key: key(1),
        seq: 77,
        at_ns: 0,
    };
    assert_eq!(
        ev(&mut t, rst, 5 * S),
        [Command::CheckRst {
            worker: 3,
            key: key(1),
            seq: 77,
            at_ns: 5 * S
        }]
    );
    // Nothing changes until the owner accepts it.
    assert_eq!(t.get(&key(1)).unwrap().phase, Phase::Established);
    let reset = Event::Reset {
        key: key(1),
        at_ns: 0,
    };
    ev(&mut t, reset, 5 * S);
    // Once reset, further daemon resets are not sent on.
    assert!(ev(&mut t, rst, 6 * S).is_empty());
}

/// The loop drains the workers one after the other, so an event a worker saw
/// earlier can arrive after one another worker saw later. An event from before
/// the connection it names was opened is about an older connection on the same
/// ports: it must not touch the newer one.
#[test]
fn an_event_from_before_the_connection_opened_is_ignored() {
    let mut t = ConnTracker::new(T);
    // The client reuses the port at 10 s; worker 1 saw the old connection's
    // daemon reset, FIN and removal earlier, and they are drained after.
    ev(&mut t, opened(0, 1, 0), 10 * S);
    let stale = [
        Event::DaemonRst {
            key: key(1),
            seq: 1,
            at_ns: 0,
        },
        Event::Reset {
            key: key(1),
            at_ns: 0,
        },
        Event::Fin {
            key: key(1),
            from_client: false,
            at_ns: 0,
        },
        Event::Established {
            key: key(1),
            at_ns: 0,
        },
        Event::Removed {
            key: key(1),
            at_ns: 0,
        },
    ];
    for e in stale {
        let out = ev_seen(&mut t, e, 9 * S, 11 * S);
        assert!(out.is_empty(), "{e:?} gave {out:?}");
    }
    let info = t.get(&key(1)).unwrap();
    assert_eq!((info.phase, info.opened_ns), (Phase::SynSent, 10 * S));
    assert_eq!(t.ignored_events(), 5);
    // An Opened older than the tracked one is a stale copy too.
    assert!(ev_seen(&mut t, opened(1, 1, 2), 9 * S, 11 * S).is_empty());
    assert_eq!(t.get(&key(1)).unwrap().daemon, daemon(0));
    // Events of the connection itself apply, from its opening on.
    let established = Event::Established {
        key: key(1),
        at_ns: 0,
    };
    ev_seen(&mut t, established, 10 * S, 11 * S);
    assert_eq!(t.get(&key(1)).unwrap().phase, Phase::Established);
}

#[test]
fn events_for_unknown_keys_are_ignored_and_counted() {
    let mut t = ConnTracker::new(T);
    ev(&mut t, opened(0, 1, 0), 0);
    let k = key(2);
    let events = [
        Event::Established { key: k, at_ns: 0 },
        Event::Fin {
            key: k,
            from_client: true,
            at_ns: 0,
        },
        Event::Reset { key: k, at_ns: 0 },
        Event::DaemonRst {
            key: k,
            seq: 0,
            at_ns: 0,
        },
        Event::Active {
            key: k,
            last_seen_ns: 0,
        },
        Event::Removed { key: k, at_ns: 0 },
    ];
    for e in events {
        assert!(ev(&mut t, e, S).is_empty());
    }
    assert_eq!(t.ignored_events(), 6);
    assert_eq!(t.len(), 1);
    assert_eq!(t.next_deadline(), Some(10 * S));
}

#[test]
fn set_timeouts_applies_to_new_deadlines_only() {
    let mut t = ConnTracker::new(T);
    ev(&mut t, opened(0, 1, 0), 0);
    t.set_timeouts(Timeouts {
        syn: Duration::from_secs(1),
        ..T
    });
    assert_eq!(t.timeouts.syn, Duration::from_secs(1));
    ev(&mut t, opened(0, 2, 0), 0);
    assert_eq!(t.get(&key(1)).unwrap().deadline_ns, 10 * S);
    assert_eq!(t.get(&key(2)).unwrap().deadline_ns, S);
    assert_eq!(
        exp(&mut t, S),
        [Command::Remove {
            worker: 0,
            key: key(2),
            opened_ns: 0
        }]
    );
}

#[test]
fn listing_and_per_daemon_counts() {
    let mut t = ConnTracker::new(T);
    ev(&mut t, opened(0, 1, 1), 0); // SynSent, backend 1
    ev(&mut t, opened(1, 2, 1), 0);
    ev(
        &mut t,
        Event::Established {
            key: key(2),
            at_ns: 0,
        },
        0,
    ); // active, backend 1
    ev(&mut t, opened(2, 3, 2), 0);
    ev(
        &mut t,
        Event::Established {
            key: key(3),
            at_ns: 0,
        },
        0,
    );
    for from_client in [true, false] {
        ev(
            &mut t,
            Event::Fin {
                key: key(3),
                from_client,
                at_ns: 0,
            },
            0,
        ); // Closing, backend 2
    }
    assert_eq!(t.iter().count(), 3);
    let counts = t.per_daemon();
    assert_eq!(
        counts[&(daemon(1), 6)],
        BackendConns {
            active: 1,
            inactive: 1
        }
    );
    assert_eq!(
        counts[&(daemon(2), 6)],
        BackendConns {
            active: 0,
            inactive: 1
        }
    );
    assert_eq!(counts[&(daemon(1), 6)].total(), 2);
    assert!(!counts.contains_key(&(daemon(3), 6)));
    let mut of1: Vec<_> = t.connections_of(daemon(1), 6).collect();
    of1.sort_by_key(FlowKey::packed);
    assert_eq!(of1, [key(1), key(2)]);
    assert_eq!(t.connections_of(daemon(3), 6).count(), 0);
}

#[test]
fn thousand_connections_close_cleanly() {
    let mut t = ConnTracker::new(T);
    let mut out = Vec::new();
    for i in 0..1000u32 {
        let now = u64::from(i) * 1000;
        let k = key(i);
        t.on_event(opened((i % 4) as u16, i, (i % 8) as u16), now, &mut out);
        t.on_event(Event::Established { key: k, at_ns: 0 }, now + 1, &mut out);
        let fin = |from_client| Event::Fin {
            key: k,
            from_client,
            at_ns: 0,
        };
        t.on_event(fin(true), now + 2, &mut out);
        t.on_event(fin(false), now + 3, &mut out);
    }
    assert!(out.is_empty());
    assert_eq!(t.len(), 1000);
    assert!(t.per_daemon().values().all(|c| c.inactive == 125));
    let last = 999 * 1000 + 3;
    t.expire(last + 2 * S, &mut out);
    assert_eq!(out.len(), 1000);
    assert!(out
        .iter()
        .all(|(_, c)| matches!(c, FlowCommand::Remove { .. })));
    assert!(t.is_empty() && t.next_deadline().is_none());
    assert_eq!(t.timer_entries(), 0);
    out.clear();
    t.expire(u64::MAX, &mut out);
    assert!(out.is_empty());
}

#[test]
fn stale_timer_entries_stay_bounded() {
    let mut t = ConnTracker::new(T);
    established(&mut t, 0, 1, 0);
    // Each Active re-arms and leaves one stale entry behind.
    for i in 0..100_000u64 {
        let e = Event::Active {
            key: key(1),
            last_seen_ns: i,
        };
        ev(&mut t, e, i);
        assert!(t.timer_entries() <= 3 * t.len() + COMPACT_SLACK);
    }
    assert_eq!(t.next_deadline(), Some(99_999 + 300 * S));
    // Many connections removed by their workers out of deadline order.
    let mut t = ConnTracker::new(T);
    for i in 0..10_000u32 {
        ev(&mut t, opened(0, i, 0), u64::from(10_000 - i));
    }
    for i in 0..10_000u32 {
        let removed = Event::Removed {
            key: key(i),
            at_ns: 0,
        };
        ev(&mut t, removed, S);
        assert!(t.timer_entries() <= 3 * t.len() + COMPACT_SLACK);
    }
    assert_eq!(t.timer_entries(), 0);
}

/// Naive reference: same rules, deadlines found by scanning.
mod model {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    const ALT: Timeouts = Timeouts {
        syn: Duration::from_secs(3),
        idle: Duration::from_secs(5),
        linger: Duration::ZERO,
        rst_linger: Duration::from_secs(1),
        udp_idle: Duration::from_secs(300),
    };
    const SMALL: Timeouts = Timeouts {
        syn: Duration::from_secs(10),
        idle: Duration::from_secs(30),
        linger: Duration::from_secs(2),
        rst_linger: Duration::from_secs(4),
        udp_idle: Duration::from_secs(300),
    };

    #[derive(Clone, Copy, Debug)]
    struct MConn {
        worker: u16,
        phase: Phase,
        deadline: u64,
        opened: u64,
    }

    #[derive(Default)]
    struct Model {
        t: Option<Timeouts>,
        conns: HashMap<u32, MConn>,
    }

    fn idx(k: &FlowKey) -> u32 {
        u32::from(k.client_ip) - 0x0a00_0000
    }

    impl Model {
        fn t(&self) -> Timeouts {
            self.t.unwrap_or(SMALL)
        }

        /// The connection `key` names if it was opened no later than `at`.
        fn current(&mut self, key: &FlowKey, at: u64) -> Option<&mut MConn> {
            self.conns.get_mut(&idx(key)).filter(|c| c.opened <= at)
        }

        fn apply(&mut self, e: Event, now: u64) -> Vec<Command> {
            let t = self.t();
            let mut out = Vec::new();
            match e {
                Event::Opened {
                    worker: WorkerId(worker),
                    key,
                    at_ns,
                    ..
                }
                | Event::Recovered {
                    worker: WorkerId(worker),
                    key,
                    at_ns,
                    ..
                } => {
                    if self.conns.get(&idx(&key)).is_some_and(|c| c.opened > at_ns) {
                        return out;
                    }
                    let phase = if matches!(e, Event::Recovered { .. }) {
                        Phase::Recovered
                    } else {
                        Phase::SynSent
                    };
                    let new = MConn {
                        worker,
                        phase,
                        deadline: now + nanos(t.syn),
                        opened: at_ns,
                    };
                    if let Some(old) = self.conns.insert(idx(&key), new) {
                        if old.worker != worker {
                            out.push(Command::Remove {
                                worker: old.worker,
                                key,
                                opened_ns: old.opened,
                            });
                        }
                    }
                }
                Event::Established { key, at_ns } => {
                    if let Some(c) = self.current(&key, at_ns) {
                        if matches!(
                            c.phase,
                            Phase::SynSent | Phase::Recovered | Phase::Established
                        ) {
                            c.phase = Phase::Established;
                            c.deadline = now + nanos(t.idle);
                        }
                    }
                }
                Event::Fin {
                    key,
                    from_client,
                    at_ns,
                } => {
                    if let Some(c) = self.current(&key, at_ns) {
                        let (cf, df) = match c.phase {
                            Phase::HalfClosed {
                                client_fin,
                                daemon_fin,
                            } => (client_fin, daemon_fin),
                            Phase::Closing | Phase::Reset | Phase::Recovered => return out,
                            _ => (false, false),
                        };
                        let (cf, df) = (cf || from_client, df || !from_client);
                        if cf && df {
                            c.phase = Phase::Closing;
                            c.deadline = now + nanos(t.linger);
                        } else {
                            c.phase = Phase::HalfClosed {
                                client_fin: cf,
                                daemon_fin: df,
                            };
                        }
                    }
                }
                Event::Reset { key, at_ns } => {
                    if let Some(c) = self.current(&key, at_ns) {
                        if c.phase != Phase::Reset {
                            c.phase = Phase::Reset;
                            c.deadline = now + nanos(t.rst_linger);
                        }
                    }
                }
                Event::DaemonRst { key, seq, at_ns } => {
                    if let Some(c) = self.current(&key, at_ns) {
                        if c.phase != Phase::Reset {
                            out.push(Command::CheckRst {
                                worker: c.worker,
                                key,
                                seq,
                                at_ns,
                            });
                        }
                    }
                }
                Event::Active { key, last_seen_ns } => {
                    if let Some(c) = self.current(&key, last_seen_ns) {
                        if matches!(c.phase, Phase::Established | Phase::HalfClosed { .. }) {
                            c.deadline = last_seen_ns + nanos(t.idle);
                        }
                    }
                }
                Event::Removed { key, at_ns } => {
                    if self.current(&key, at_ns).is_some() {
                        self.conns.remove(&idx(&key));
                    }
                }
            }
            out
        }

        fn expire(&mut self, now: u64) -> Vec<Command> {
            let idle = nanos(self.t().idle);
            let mut out = Vec::new();
            self.conns.retain(|&i, c| {
                if c.deadline > now {
                    return true;
                }
                match c.phase {
                    Phase::Established | Phase::HalfClosed { .. } => {
                        out.push(Command::RemoveIfIdle {
                            worker: c.worker,
                            key: key(i),
                            idle_since_ns: now - idle,
                        });
                        c.deadline = now + nanos(RECHECK_INTERVAL);
                        true
                    }
                    Phase::SynSent | Phase::Recovered | Phase::Closing | Phase::Reset => {
                        out.push(Command::Remove {
                            worker: c.worker,
                            key: key(i),
                            opened_ns: c.opened,
                        });
                        false
                    }
                }
            });
            out
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// An event seen by its worker this many seconds before the loop applies
        /// it (0 mostly; more makes events about older connections).
        Event(Event, u64),
        /// Advance the clock by this many ns, then expire.
        Advance(u64),
        SetTimeouts(bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        let k = (0u32..6).prop_map(key);
        let dt = prop::sample::select(vec![0, S / 2, S, 2 * S, 3 * S, 5 * S, 10 * S, 30 * S]);
        let back = prop::sample::select(vec![0u64, 0, 0, 1, 3, 10]);
        prop_oneof![
            3 => (0u32..6, 0u16..3, 0u16..3, back.clone())
                .prop_map(|(i, w, b, back)| Op::Event(opened(w, i, b), back)),
            2 => (0u32..6, 0u16..3, 0u16..3, back.clone())
                .prop_map(|(i, w, b, back)| Op::Event(recovered(w, i, b), back)),
            3 => (k.clone(), back.clone())
                .prop_map(|(key, back)| Op::Event(Event::Established { key, at_ns: 0 }, back)),
            3 => (k.clone(), any::<bool>(), back.clone()).prop_map(|(key, from_client, back)| {
                Op::Event(Event::Fin { key, from_client, at_ns: 0 }, back)
            }),
            1 => (k.clone(), back.clone())
                .prop_map(|(key, back)| Op::Event(Event::Reset { key, at_ns: 0 }, back)),
            1 => (k.clone(), any::<u32>(), back.clone()).prop_map(|(key, seq, back)| {
                Op::Event(Event::DaemonRst { key, seq, at_ns: 0 }, back)
            }),
            // Active's last_seen is resolved from `back` when applied.
            2 => (k.clone(), 0u64..40)
                .prop_map(|(key, back)| Op::Event(Event::Active { key, last_seen_ns: 0 }, back)),
            1 => (k, back).prop_map(|(key, back)| Op::Event(Event::Removed { key, at_ns: 0 }, back)),
            5 => dt.prop_map(Op::Advance),
            1 => any::<bool>().prop_map(Op::SetTimeouts),
        ]
    }

    fn sorted(mut v: Vec<Command>) -> Vec<Command> {
        v.sort_by_key(|c| match *c {
            Command::Remove {
                worker,
                key,
                opened_ns,
            } => (0, worker, key.packed(), opened_ns),
            Command::RemoveIfIdle {
                worker,
                key,
                idle_since_ns,
            } => (1, worker, key.packed(), idle_since_ns),
            Command::CheckRst {
                worker, key, at_ns, ..
            } => (2, worker, key.packed(), at_ns),
        });
        v
    }

    fn check(t: &ConnTracker, m: &Model) {
        assert_eq!(t.len(), m.conns.len());
        assert_eq!(*t.per_daemon(), recount(t), "per-daemon counts kept right");
        assert_eq!(
            t.next_deadline(),
            m.conns.values().map(|c| c.deadline).min()
        );
        assert!(t.timer_entries() <= 3 * t.len() + COMPACT_SLACK);
        for (&i, c) in &m.conns {
            let info = t.get(&key(i)).expect("tracked in model");
            assert_eq!(
                (info.worker, info.phase, info.deadline_ns),
                (WorkerId(c.worker), c.phase, c.deadline)
            );
        }
    }

    /// Every command names a key tracked before the step, with its owner.
    fn targets_tracked(cmds: &[Command], before: &HashMap<u32, MConn>) {
        for c in cmds {
            let (Command::Remove { worker, key, .. }
            | Command::RemoveIfIdle { worker, key, .. }
            | Command::CheckRst { worker, key, .. }) = *c;
            let owner = before.get(&idx(&key)).map(|c| c.worker);
            assert_eq!(owner, Some(worker), "command for a forgotten key: {c:?}");
        }
    }

    proptest! {
        #[test]
        fn matches_model_and_drains(ops in prop::collection::vec(op(), 0..200)) {
            let mut t = ConnTracker::new(SMALL);
            let mut m = Model::default();
            let mut now = 1000 * S;
            for op in ops {
                let before = m.conns.clone();
                let (got, want) = match op {
                    Op::Event(e, back) => {
                        let at = now - back * S;
                        let e = match seen_at(e, at) {
                            Event::Active { key, .. } => Event::Active { key, last_seen_ns: at },
                            e => e,
                        };
                        (ev_seen(&mut t, e, at, now), m.apply(e, now))
                    }
                    Op::Advance(dt) => {
                        now += dt;
                        (exp(&mut t, now), m.expire(now))
                    }
                    Op::SetTimeouts(alt) => {
                        let to = if alt { ALT } else { SMALL };
                        t.set_timeouts(to);
                        m.t = Some(to);
                        (Vec::new(), Vec::new())
                    }
                };
                targets_tracked(&got, &before);
                prop_assert_eq!(sorted(got), sorted(want));
                check(&t, &m);
            }
            // Close everything: a reset for even keys, both FINs for odd ones.
            let tracked: Vec<u32> = m.conns.keys().copied().collect();
            let n_tracked = tracked.len();
            let mut removed = Vec::new();
            for i in tracked {
                let k = key(i);
                let events = if i % 2 == 0 {
                    vec![Event::Reset { key: k, at_ns: now }]
                } else {
                    vec![
                        Event::Fin { key: k, from_client: true, at_ns: now },
                        Event::Fin { key: k, from_client: false, at_ns: now },
                    ]
                };
                for e in events {
                    let got = ev(&mut t, e, now);
                    prop_assert_eq!(sorted(got.clone()), sorted(m.apply(e, now)));
                    removed.extend(got);
                }
            }
            now += [SMALL, ALT]
                .iter()
                // (A recovered record ignores FINs: its syn deadline ends it.)
                .map(|t| nanos(t.linger.max(t.rst_linger).max(t.syn)))
                .max()
                .unwrap_or(0);
            removed.extend(exp(&mut t, now));
            prop_assert_eq!(t.len(), 0);
            prop_assert!(t.next_deadline().is_none());
            prop_assert_eq!(t.timer_entries(), 0);
            let all_removes = removed.iter().all(|c| matches!(c, Command::Remove { .. }));
            prop_assert!(all_removes);
            prop_assert_eq!(removed.len(), n_tracked);
            prop_assert!(exp(&mut t, u64::MAX).is_empty());
        }
    }
}

#[test]
fn memory_follows_the_connections_down() {
    let mut t = ConnTracker::new(T);
    for i in 0..20_000 {
        ev(&mut t, opened(0, i, 0), u64::from(i));
    }
    assert!(t.conns.capacity() >= 20_000 && t.timers.heap.capacity() >= 20_000);
    // All but the last ten expire half-open: each leaves with its own timer
    // entry, so no stale entry is left to trigger a rebuild of the heap.
    assert_eq!(exp(&mut t, 10 * S + 19_989).len(), 19_990);
    assert_eq!((t.len(), t.timer_entries()), (10, 10));
    assert!(
        t.conns.capacity() <= 4 * 10 + COMPACT_SLACK,
        "map capacity {}",
        t.conns.capacity()
    );
    assert!(
        t.timers.heap.capacity() <= 4 * 10 + COMPACT_SLACK,
        "heap capacity {}",
        t.timers.heap.capacity()
    );
}

/// A UDP flow's key: the same tuple as [`key`], protocol 17.
fn udp_key(i: u32) -> FlowKey {
    FlowKey {
        protocol: 17,
        ..key(i)
    }
}

#[test]
fn a_udp_flow_is_established_at_once_and_ends_when_idle_for_its_own_timeout() {
    let t_udp = Timeouts {
        udp_idle: Duration::from_secs(30),
        ..T
    };
    let mut t = ConnTracker::new(t_udp);
    for (i, e) in [
        opened(1, 1, 0),
        // Recovery of a datagram of a flow another instance started: the
        // same, with no short proving deadline (no handshake to prove).
        recovered(1, 2, 0),
    ]
    .into_iter()
    .enumerate()
    {
        let e = match e {
            Event::Opened {
                worker,
                daemon,
                at_ns,
                ..
            } => Event::Opened {
                worker,
                key: udp_key(1),
                daemon,
                at_ns,
            },
            Event::Recovered {
                worker,
                daemon,
                at_ns,
                ..
            } => Event::Recovered {
                worker,
                key: udp_key(2),
                daemon,
                at_ns,
            },
            other => other,
        };
        assert!(ev(&mut t, e, i as u64).is_empty());
    }
    for k in [udp_key(1), udp_key(2)] {
        assert_eq!(t.get(&k).unwrap().phase, Phase::Established);
    }
    assert_eq!(t.per_daemon()[&(daemon(0), 17)].active, 2);
    assert_eq!(t.udp_len(), 2);
    // The UDP idle timeout, not syn's (10 s) nor TCP's idle (300 s).
    assert!(exp(&mut t, 29 * S).is_empty());
    let probe = |k: FlowKey, now: u64| Command::RemoveIfIdle {
        worker: 1,
        key: k,
        idle_since_ns: now - 30 * S,
    };
    assert_eq!(exp(&mut t, 30 * S), [probe(udp_key(1), 30 * S)]);
    // Busy: re-armed from its last datagram with the UDP timeout.
    let active = Event::Active {
        key: udp_key(1),
        last_seen_ns: 25 * S,
    };
    assert!(ev(&mut t, active, 30 * S).is_empty());
    assert_eq!(t.get(&udp_key(1)).unwrap().deadline_ns, 55 * S);
    // Idle: the worker removed it, the tracker forgets it.
    let removed = Event::Removed {
        key: udp_key(2),
        at_ns: 31 * S,
    };
    assert_eq!(exp(&mut t, 30 * S + 1), [probe(udp_key(2), 30 * S + 1)]);
    assert!(ev(&mut t, removed, 31 * S).is_empty());
    assert_eq!((t.len(), t.udp_len()), (1, 1));
    // A TCP connection beside it is not one.
    assert!(ev(&mut t, opened(1, 3, 0), 32 * S).is_empty());
    assert_eq!((t.len(), t.udp_len()), (2, 1));
    assert_eq!(
        t.recovery(),
        RecoveryCounts::default(),
        "not a TCP recovery"
    );
}

mod ipv6 {
    //! The IPv6 tracker: the same machine on IPv6 keys, whose packed form is
    //! three integers; keys that differ only in the last bits of an address
    //! stay apart.
    use std::net::{Ipv6Addr, SocketAddrV6};

    use super::T;
    use crate::{
        control::conntrack::{BackendConns, ConnTracker6, Order6, Phase},
        flow::FlowKey6,
        ids::WorkerId,
        protocol::{Event6, FlowCommand6},
    };

    const S: u64 = 1_000_000_000;

    fn key(i: u16, protocol: u8) -> FlowKey6 {
        FlowKey6::new(
            SocketAddrV6::new(Ipv6Addr::new(0x2001, 2, 0, 0xc, 0, 0, 0, i), 40000, 0, 0),
            SocketAddrV6::new(Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 0x100), 80, 0, 0),
            protocol,
        )
    }

    fn daemon(i: u16) -> SocketAddrV6 {
        SocketAddrV6::new(
            Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 0x11 + i),
            8080,
            0,
            0,
        )
    }

    fn opened(worker: u16, k: FlowKey6, d: u16, at_ns: u64) -> Event6 {
        Event6::Opened {
            worker: WorkerId(worker),
            key: k,
            daemon: daemon(d),
            at_ns,
        }
    }

    #[test]
    fn an_ipv6_connection_goes_through_its_phases_and_is_removed_by_its_owner() {
        let mut t = ConnTracker6::new(T);
        let mut out: Vec<Order6> = Vec::new();
        let (a, b) = (key(1, 6), key(2, 6));
        t.on_event(opened(1, a, 0, 0), 0, &mut out);
        t.on_event(opened(0, b, 1, 0), 0, &mut out);
        assert_eq!(t.len(), 2, "keys one bit apart are two connections");
        assert_eq!(t.daemon_of(a), Some(daemon(0)));
        t.on_event(Event6::Established { key: a, at_ns: 1 }, 1, &mut out);
        let conns = t.per_daemon();
        assert_eq!(
            conns[&(daemon(0), 6)],
            BackendConns {
                active: 1,
                inactive: 0
            }
        );
        assert_eq!(
            conns[&(daemon(1), 6)],
            BackendConns {
                active: 0,
                inactive: 1
            }
        );
        // The daemon's reset is judged by the owner, worker 1.
        let rst = Event6::DaemonRst {
            key: a,
            seq: 7,
            at_ns: 2,
        };
        t.on_event(rst, 2, &mut out);
        assert_eq!(
            std::mem::take(&mut out),
            [(
                WorkerId(1),
                FlowCommand6::CheckRst {
                    key: a,
                    seq: 7,
                    at_ns: 2
                }
            )]
        );
        for from_client in [true, false] {
            t.on_event(
                Event6::Fin {
                    key: a,
                    from_client,
                    at_ns: 3,
                },
                3,
                &mut out,
            );
        }
        assert_eq!(t.iter().find(|c| c.key == a).unwrap().phase, Phase::Closing);
        // b never completes its handshake: removed at the syn deadline; a at
        // the linger deadline, each by its own owner.
        t.expire(T.syn.as_nanos() as u64 + 1, &mut out);
        assert_eq!(
            std::mem::take(&mut out),
            [
                (
                    WorkerId(1),
                    FlowCommand6::Remove {
                        key: a,
                        opened_ns: 0
                    }
                ),
                (
                    WorkerId(0),
                    FlowCommand6::Remove {
                        key: b,
                        opened_ns: 0
                    }
                ),
            ]
        );
        assert!(t.is_empty() && t.per_daemon().is_empty());
    }

    #[test]
    fn an_ipv6_udp_flow_lives_until_idle_and_a_reused_key_moves_to_its_new_worker() {
        let mut t = ConnTracker6::new(T);
        let mut out = Vec::new();
        let k = key(9, 17);
        t.on_event(opened(0, k, 0, 0), 0, &mut out);
        assert_eq!(t.udp_len(), 1);
        assert_eq!(t.iter().next().unwrap().phase, Phase::Established);
        let idle = T.udp_idle.as_nanos() as u64;
        t.expire(idle, &mut out);
        assert_eq!(
            std::mem::take(&mut out),
            [(
                WorkerId(0),
                FlowCommand6::RemoveIfIdle {
                    key: k,
                    idle_since_ns: 0
                }
            )]
        );
        // Still active: re-armed from its last packet.
        t.on_event(
            Event6::Active {
                key: k,
                last_seen_ns: 5 * S,
            },
            idle,
            &mut out,
        );
        t.expire(idle + 4 * S, &mut out);
        assert!(out.is_empty());
        // The same key opens on another worker: the old owner drops its copy.
        t.on_event(opened(1, k, 1, idle + 5 * S), idle + 5 * S, &mut out);
        assert_eq!(
            std::mem::take(&mut out),
            [(
                WorkerId(0),
                FlowCommand6::Remove {
                    key: k,
                    opened_ns: 0
                }
            )]
        );
        assert_eq!(t.daemon_of(k), Some(daemon(1)));
        // A late event about the old flow is ignored.
        let late = Event6::Removed {
            key: k,
            at_ns: idle,
        };
        t.on_event(late, idle + 6 * S, &mut out);
        assert_eq!((t.len(), t.ignored_events()), (1, 1));
        t.on_event(
            Event6::Removed {
                key: k,
                at_ns: idle + 7 * S,
            },
            idle + 7 * S,
            &mut out,
        );
        assert!(t.is_empty());
        assert_eq!(t.udp_len(), 0);
        assert_eq!(t.connections_of(daemon(1), 17).count(), 0);
    }
}

/// One ADDR:PORT behind a TCP and a UDP service is two daemons: each counts
/// its own protocol's connections, and resetting one leaves the other's.
#[test]
fn a_tcp_and_a_udp_daemon_at_one_address_count_apart() {
    let mut t = ConnTracker::new(T);
    ev(&mut t, opened(0, 1, 5), 1);
    ev(&mut t, opened(0, 2, 5), 1);
    let udp = Event::Opened {
        worker: WorkerId(0),
        key: udp_key(3),
        daemon: daemon(5),
        at_ns: 0,
    };
    ev(&mut t, udp, 1);
    let tcp_conns = BackendConns {
        active: 0,
        inactive: 2,
    };
    let udp_conns = BackendConns {
        active: 1,
        inactive: 0,
    };
    assert_eq!(t.per_daemon()[&(daemon(5), 6)], tcp_conns);
    assert_eq!(t.per_daemon()[&(daemon(5), 17)], udp_conns);
    assert_eq!(*t.per_daemon(), recount(&t));
    let mut tcp: Vec<_> = t.connections_of(daemon(5), 6).collect();
    tcp.sort_by_key(FlowKey::packed);
    assert_eq!(tcp, [key(1), key(2)]);
    assert_eq!(
        t.connections_of(daemon(5), 17).collect::<Vec<_>>(),
        [udp_key(3)]
    );
}
