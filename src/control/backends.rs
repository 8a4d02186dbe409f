//! Every configured daemon as the loop sees it: health, drain flag, whether its
//! next hop is known, its probe schedule, and the state the workers were last
//! told. Pure: the loop feeds in probe results, times and operator requests, and
//! sends the workers what [`Backends::news`] returns.
use std::net::SocketAddr;

use super::health::{Health, HealthState};
use crate::{
    balance::BackendState,
    config::{Config, Protocol, ServiceHealth},
    dataplane::Retired,
    ids::BackendId,
};

/// Probe results of one daemon since it was first configured (kept across
/// reloads, as its health is).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeCounts {
    pub passed: u64,
    pub failed: u64,
}

/// One daemon.
#[derive(Clone, Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    pub service: SocketAddr,
    /// Its service's protocol. A UDP service's daemons are never probed
    /// (there is no connection to make): they stay Up unless drained.
    pub protocol: Protocol,
    pub health: HealthState,
    /// Its service's check (a retired daemon's is never used).
    pub check: ServiceHealth,
    pub probes: ProbeCounts,
    pub draining: bool,
    /// Whether the kernel has told us the MAC of its next hop: a daemon is not
    /// offered new connections before (a freshly added one, say), since the
    /// workers could not send them anywhere.
    pub next_hop_known: bool,
    /// Removed by a reload, kept until its last connection ends
    /// (`on_remove = "finish"`): never offered a new one, never probed.
    pub retired: bool,
    told: BackendState,
    probing: bool,
    next_probe_ns: u64,
}

impl Backend {
    /// Where its probes connect: its address, on its service's check port if
    /// one is set.
    pub fn probe_target(&self) -> SocketAddr {
        SocketAddr::new(self.addr.ip(), self.check.port.unwrap_or(self.addr.port()))
    }

    /// Whether the daemon takes new connections, all things considered.
    pub fn effective(&self) -> BackendState {
        if self.retired {
            BackendState::Draining
        } else if self.health.health() == Health::Down || !self.next_hop_known {
            BackendState::Down
        } else if self.draining {
            BackendState::Draining
        } else {
            BackendState::Up
        }
    }
}

/// The daemons of the running configuration, indexed by [`BackendId`].
#[derive(Debug, Default)]
pub struct Backends {
    list: Vec<Backend>,
    /// Which configuration the list belongs to: probes in flight for an older one
    /// are ignored when they complete.
    generation: u64,
}

impl Backends {
    /// The daemons of `config`, then the `retired` ones, keeping the health and
    /// drain state of the ones `old` knew (by address): a reload changes the
    /// list, not what is known of a daemon. Each takes its service's check:
    /// new rise and fall apply to the streak it has; a changed probe (kind,
    /// port, path, status, Host) restarts the streak from the current state.
    /// Every configured daemon is due a probe at `now_ns`, and is taken as
    /// told what the workers' new planes hold once they took over from the
    /// old ones (`Dataplane::take_over`): what `old` told them of a daemon
    /// that stays configured, `Draining` for the retired, `Up` for the rest.
    pub fn new(
        config: &Config,
        retired: &[Retired],
        old: &Backends,
        next_hop_known: impl Fn(BackendId) -> bool,
        now_ns: u64,
    ) -> Self {
        // In the order of `Config::daemons` then `Config::daemons6`, which
        // gives the ids.
        let configured = config
            .services
            .iter()
            .flat_map(|s| {
                s.backends.iter().map(move |b| {
                    let (addr, service) = (b.addr.into(), s.address.into());
                    (addr, service, s.protocol, s.health.clone(), false)
                })
            })
            .chain(config.services6.iter().flat_map(|s| {
                s.backends.iter().map(move |b| {
                    let (addr, service) = (b.addr.into(), s.address.into());
                    (addr, service, s.protocol, s.health.clone(), false)
                })
            }));
        let retired_check = ServiceHealth {
            schedule: config.control.health,
            ..ServiceHealth::default()
        };
        let retired = retired
            .iter()
            .map(|r| (r.daemon, r.service, r.protocol, retired_check.clone(), true));
        let list = configured
            .chain(retired)
            .enumerate()
            .map(|(i, (addr, service, protocol, check, retired))| {
                let previous = old.find(addr, protocol).map(|i| &old.list[i.index()]);
                let probed = !retired && protocol == Protocol::Tcp;
                let health = match previous {
                    // Not probed: whatever its TCP service's probes said is gone.
                    _ if !probed && !retired => HealthState::new(&check.schedule),
                    Some(o) => {
                        let mut h = o.health.clone();
                        h.retune(&check.schedule, !o.check.same_probe(&check));
                        h
                    }
                    None => HealthState::new(&check.schedule),
                };
                Backend {
                    addr,
                    service,
                    protocol,
                    health,
                    check,
                    probes: previous.map(|o| o.probes).unwrap_or_default(),
                    draining: previous.is_some_and(|o| o.draining),
                    next_hop_known: next_hop_known(BackendId(i as u16)),
                    retired,
                    told: if retired {
                        BackendState::Draining
                    } else {
                        previous
                            .filter(|o| !o.retired)
                            .map_or(BackendState::Up, |o| o.told)
                    },
                    probing: false,
                    next_probe_ns: if probed { now_ns } else { u64::MAX },
                }
            })
            .collect();
        Self {
            list,
            generation: old.generation + 1,
        }
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn get(&self, id: BackendId) -> &Backend {
        &self.list[id.index()]
    }

    pub fn ids(&self) -> impl Iterator<Item = BackendId> {
        (0..self.list.len()).map(|i| BackendId(i as u16))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Backend> {
        self.list.iter()
    }

    /// The retired daemons (see [`Backend::retired`]).
    pub fn retired(&self) -> impl Iterator<Item = Retired> + '_ {
        self.list.iter().filter(|b| b.retired).map(|b| Retired {
            daemon: b.addr,
            service: b.service,
            protocol: b.protocol,
        })
    }

    /// The id of the daemon at `addr` of a service of `protocol` (one
    /// ADDR:PORT may serve a TCP and a UDP service: two daemons).
    pub fn find(&self, addr: impl Into<SocketAddr>, protocol: Protocol) -> Option<BackendId> {
        let addr = addr.into();
        self.list
            .iter()
            .position(|b| b.addr == addr && b.protocol == protocol)
            .map(|i| BackendId(i as u16))
    }

    /// The ids of every daemon at `addr`, whatever its service's protocol:
    /// what ctl and the state file name by ADDR:PORT.
    pub fn at(&self, addr: impl Into<SocketAddr>) -> impl Iterator<Item = BackendId> + '_ {
        let addr = addr.into();
        (self.list.iter().enumerate())
            .filter(move |(_, b)| b.addr == addr)
            .map(|(i, _)| BackendId(i as u16))
    }

    pub fn set_draining(&mut self, id: BackendId, draining: bool) {
        self.list[id.index()].draining = draining;
    }

    /// The workers' planes were built with `id` draining (an operator's
    /// drain read at start): what they were told.
    pub fn built_draining(&mut self, id: BackendId) {
        let b = &mut self.list[id.index()];
        b.draining = true;
        b.told = BackendState::Draining;
    }

    pub fn set_next_hop_known(&mut self, id: BackendId, known: bool) {
        self.list[id.index()].next_hop_known = known;
    }

    /// The daemons due a probe at `now_ns` (none of them has one in flight); each
    /// is marked as probing and next due one interval of its service later.
    pub fn due_probes(&mut self, now_ns: u64) -> Vec<BackendId> {
        let mut due = Vec::new();
        for (i, b) in self.list.iter_mut().enumerate() {
            if !b.probing && !b.retired && b.next_probe_ns <= now_ns {
                b.probing = true;
                let interval = b.check.schedule.interval.as_nanos();
                b.next_probe_ns = now_ns.saturating_add(interval.try_into().unwrap_or(u64::MAX));
                due.push(BackendId(i as u16));
            }
        }
        due
    }

    /// A probe [`due_probes`](Self::due_probes) handed out that could not
    /// start: no outcome, and the next one is due on the daemon's schedule.
    pub fn probe_not_started(&mut self, id: BackendId, generation: u64) {
        if generation != self.generation {
            return;
        }
        if let Some(b) = self.list.get_mut(id.index()) {
            b.probing = false;
        }
    }

    /// Records a probe's outcome; returns the daemon's new health if it flipped.
    /// A probe of an older configuration's list (`generation`) is ignored.
    pub fn probe_done(&mut self, id: BackendId, generation: u64, ok: bool) -> Option<Health> {
        if generation != self.generation {
            return None;
        }
        let b = self.list.get_mut(id.index())?;
        b.probing = false;
        if ok {
            b.probes.passed += 1;
        } else {
            b.probes.failed += 1;
        }
        b.health.record(ok)
    }

    /// The state to tell the workers about `id`, if it differs from what they
    /// were last told; from then on they count as told.
    pub fn news(&mut self, id: BackendId) -> Option<BackendState> {
        let b = &mut self.list[id.index()];
        let state = b.effective();
        (state != b.told).then(|| {
            b.told = state;
            state
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(daemons: &[&str]) -> Config {
        let list: Vec<String> = daemons.iter().map(|d| format!("{d:?}")).collect();
        Config::from_toml_str(&format!(
            "front = \"l0\"\nback = \"l1\"\n[health]\nrise = 2\nfall = 2\n\
             [[service]]\naddress = \"198.18.0.100:80\"\nbackends = [{}]\n",
            list.join(", ")
        ))
        .expect("a valid config")
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const A: &str = "198.19.0.11:8080";
    const B: &str = "198.19.0.12:8080";
    const C: &str = "198.19.0.13:8080";

    #[test]
    fn a_daemon_without_a_next_hop_is_down_until_it_has_one() {
        let mut b = Backends::new(
            &config(&[A, B]),
            &[],
            &Backends::default(),
            |id| id.0 == 0,
            0,
        );
        assert_eq!(b.news(BackendId(0)), None, "up, as the workers start");
        assert_eq!(b.news(BackendId(1)), Some(BackendState::Down));
        assert_eq!(b.news(BackendId(1)), None, "told once");
        b.set_next_hop_known(BackendId(1), true);
        assert_eq!(b.news(BackendId(1)), Some(BackendState::Up));
    }

    #[test]
    fn health_flips_after_fall_and_rise_and_draining_is_apart_from_it() {
        let mut b = Backends::new(&config(&[A]), &[], &Backends::default(), |_| true, 0);
        let (id, gen) = (BackendId(0), b.generation());
        assert_eq!(b.probe_done(id, gen, false), None);
        assert_eq!(b.probe_done(id, gen, false), Some(Health::Down));
        assert_eq!(b.news(id), Some(BackendState::Down));
        b.set_draining(id, true);
        assert_eq!(b.news(id), None, "down outranks draining");
        assert_eq!(b.probe_done(id, gen, true), None);
        assert_eq!(b.probe_done(id, gen, true), Some(Health::Up));
        assert_eq!(b.news(id), Some(BackendState::Draining));
        b.set_draining(id, false);
        assert_eq!(b.news(id), Some(BackendState::Up));
    }

    #[test]
    fn probes_are_due_once_per_interval_and_never_two_at_a_time() {
        let s = 1_000_000_000;
        let mut b = Backends::new(&config(&[A, B]), &[], &Backends::default(), |_| true, 10);
        assert_eq!(b.due_probes(5), [], "not before the list's start");
        assert_eq!(b.due_probes(10), [BackendId(0), BackendId(1)]);
        assert_eq!(b.due_probes(10 + 2 * s), [], "still in flight");
        let gen = b.generation();
        b.probe_done(BackendId(0), gen, true);
        assert_eq!(b.due_probes(10 + 2 * s), [BackendId(0)]);
        assert_eq!(b.due_probes(10 + 2 * s + 1), []);
    }

    #[test]
    fn a_reload_keeps_what_is_known_of_a_daemon_by_address() {
        let mut old = Backends::new(&config(&[A, B, C]), &[], &Backends::default(), |_| true, 0);
        let gen = old.generation();
        for _ in 0..2 {
            old.probe_done(BackendId(1), gen, false);
        }
        old.set_draining(BackendId(2), true);

        // B and C swap places, A goes.
        let new = Backends::new(&config(&[C, B]), &[], &old, |_| true, 0);
        assert_eq!(new.generation(), gen + 1);
        let c = new.find(addr(C), Protocol::Tcp).unwrap();
        let b = new.find(addr(B), Protocol::Tcp).unwrap();
        assert_eq!((c, b), (BackendId(0), BackendId(1)));
        assert!(new.get(c).draining && new.get(c).health.health() == Health::Up);
        assert!(!new.get(b).draining && new.get(b).health.health() == Health::Down);
        assert_eq!(new.find(addr(A), Protocol::Tcp), None);
    }

    fn parse(text: &str) -> Config {
        Config::from_toml_str(text).expect("a valid config")
    }

    /// Two services: S1 with A and B, S2 with C; `s1` and `s2` are their
    /// `[service.health]` bodies.
    fn two_services(s1: &str, s2: &str) -> Config {
        parse(&format!(
            "front = \"l0\"\nback = \"l1\"\n[health]\nrise = 2\nfall = 3\n\
             [[service]]\naddress = \"198.18.0.100:80\"\nbackends = [{A:?}, {B:?}]\n\
             [service.health]\n{s1}\n\
             [[service]]\naddress = \"198.18.0.101:80\"\nbackends = [{C:?}]\n\
             [service.health]\n{s2}\n"
        ))
    }

    #[test]
    fn each_daemon_is_probed_on_its_own_services_interval() {
        let ms = 1_000_000;
        let config = two_services("interval_ms = 100", "interval_ms = 300");
        let mut b = Backends::new(&config, &[], &Backends::default(), |_| true, 0);
        let gen = b.generation();
        let (a, bb, c) = (BackendId(0), BackendId(1), BackendId(2));
        assert_eq!(b.due_probes(0), [a, bb, c]);
        for id in [a, bb, c] {
            b.probe_done(id, gen, true);
        }
        assert_eq!(b.due_probes(99 * ms), []);
        assert_eq!(b.due_probes(100 * ms), [a, bb]);
        b.probe_done(a, gen, true);
        b.probe_done(bb, gen, true);
        assert_eq!(b.due_probes(200 * ms), [a, bb]);
        b.probe_done(a, gen, true);
        b.probe_done(bb, gen, true);
        assert_eq!(b.due_probes(300 * ms), [a, bb, c]);
    }

    #[test]
    fn a_reload_applies_new_thresholds_to_the_streak_a_daemon_has() {
        let old_config = two_services("fall = 3", "");
        let mut old = Backends::new(&old_config, &[], &Backends::default(), |_| true, 0);
        let gen = old.generation();
        let a = BackendId(0);
        assert_eq!(old.probe_done(a, gen, false), None);
        assert_eq!(old.probe_done(a, gen, false), None);

        let mut new = Backends::new(&two_services("fall = 1", ""), &[], &old, |_| true, 0);
        let gen = new.generation();
        assert_eq!(new.get(a).health.health(), Health::Up, "the state stays");
        assert_eq!(new.get(a).check.schedule.fall, 1);
        assert_eq!(new.probe_done(a, gen, false), Some(Health::Down));

        // The other way: fall raised while failing, the streak counts on.
        let mut old = Backends::new(&old_config, &[], &Backends::default(), |_| true, 0);
        let gen = old.generation();
        old.probe_done(a, gen, false);
        old.probe_done(a, gen, false);
        let mut new = Backends::new(&two_services("fall = 4", ""), &[], &old, |_| true, 0);
        let gen = new.generation();
        assert_eq!(new.probe_done(a, gen, false), None, "3 of 4");
        assert_eq!(new.probe_done(a, gen, false), Some(Health::Down));
    }

    #[test]
    fn a_reload_of_the_global_defaults_reaches_the_services_that_inherit_them() {
        let with_fall = |fall: u32| {
            parse(&format!(
                "front = \"l0\"\nback = \"l1\"\n[health]\nfall = {fall}\n\
                 [[service]]\naddress = \"198.18.0.100:80\"\nbackends = [{A:?}]\n\
                 [service.health]\nkind = \"http\"\n\
                 [[service]]\naddress = \"198.18.0.101:80\"\nbackends = [{C:?}]\n\
                 [service.health]\nfall = 5\n"
            ))
        };
        let old = Backends::new(&with_fall(3), &[], &Backends::default(), |_| true, 0);
        let new = Backends::new(&with_fall(1), &[], &old, |_| true, 0);
        assert_eq!(new.get(BackendId(0)).check.schedule.fall, 1, "inherited");
        assert_eq!(new.get(BackendId(1)).check.schedule.fall, 5, "its own");
    }

    #[test]
    fn a_changed_probe_restarts_the_streak_from_the_current_state() {
        let mut old = Backends::new(
            &two_services("", ""),
            &[],
            &Backends::default(),
            |_| true,
            0,
        );
        let gen = old.generation();
        let a = BackendId(0);
        old.probe_done(a, gen, false);
        old.probe_done(a, gen, false);
        let http = "kind = \"http\"\npath = \"/health\"";
        let mut new = Backends::new(&two_services(http, ""), &[], &old, |_| true, 0);
        let gen = new.generation();
        assert_eq!(
            new.probe_done(a, gen, false),
            None,
            "1 of 3 for the new check"
        );
        assert_eq!(new.probe_done(a, gen, false), None);
        assert_eq!(new.probe_done(a, gen, false), Some(Health::Down));

        // Only the schedule changes: the streak goes on.
        let mut old = Backends::new(
            &two_services(http, ""),
            &[],
            &Backends::default(),
            |_| true,
            0,
        );
        let gen = old.generation();
        old.probe_done(a, gen, false);
        old.probe_done(a, gen, false);
        let slower = format!("{http}\ninterval_ms = 2000");
        let mut new = Backends::new(&two_services(&slower, ""), &[], &old, |_| true, 0);
        let gen = new.generation();
        assert_eq!(new.probe_done(a, gen, false), Some(Health::Down));
    }

    #[test]
    fn a_daemon_moved_to_another_service_takes_its_check() {
        let old = Backends::new(
            &two_services("", "kind = \"http\"\nport = 8081"),
            &[],
            &Backends::default(),
            |_| true,
            0,
        );
        let moved = parse(&format!(
            "front = \"l0\"\nback = \"l1\"\n\
             [[service]]\naddress = \"198.18.0.100:80\"\nbackends = [{B:?}]\n\
             [[service]]\naddress = \"198.18.0.101:80\"\nbackends = [{C:?}, {A:?}]\n\
             [service.health]\nkind = \"http\"\nport = 8081\n"
        ));
        let new = Backends::new(&moved, &[], &old, |_| true, 0);
        let a = new.get(new.find(addr(A), Protocol::Tcp).unwrap());
        assert_eq!(a.service, addr("198.18.0.101:80"));
        assert_eq!(
            a.check,
            new.get(new.find(addr(C), Protocol::Tcp).unwrap()).check
        );
        assert_eq!(a.check.port, Some(8081));
    }

    /// The workers' planes carry a kept daemon's state over a reload: one
    /// drained before it and undrained with it must be told so.
    #[test]
    fn a_daemon_undrained_by_a_reload_is_told_up_again() {
        let mut old = Backends::new(&config(&[A, B]), &[], &Backends::default(), |_| true, 0);
        let a = old.find(addr(A), Protocol::Tcp).unwrap();
        old.set_draining(a, true);
        assert_eq!(old.news(a), Some(BackendState::Draining));
        let mut new = Backends::new(&config(&[A, B]), &[], &old, |_| true, 0);
        assert_eq!(new.news(a), None, "the workers carried Draining");
        new.set_draining(a, false);
        assert_eq!(new.news(a), Some(BackendState::Up));
    }

    #[test]
    fn a_probe_of_the_previous_list_is_ignored() {
        let old = Backends::new(&config(&[A]), &[], &Backends::default(), |_| true, 0);
        let mut new = Backends::new(&config(&[B]), &[], &old, |_| true, 0);
        new.due_probes(0);
        for _ in 0..3 {
            assert_eq!(new.probe_done(BackendId(0), old.generation(), false), None);
        }
        assert_eq!(new.get(BackendId(0)).health.health(), Health::Up);
        assert_eq!(new.due_probes(5), [], "its own probe is still in flight");
    }

    #[test]
    fn a_retired_daemon_follows_the_configured_ones_and_is_never_probed_or_offered() {
        let retired = [Retired {
            daemon: addr(A),
            service: addr("198.18.0.100:80"),
            protocol: crate::config::Protocol::Tcp,
        }];
        let old = Backends::new(&config(&[A, B]), &[], &Backends::default(), |_| true, 0);
        let mut new = Backends::new(&config(&[B]), &retired, &old, |_| true, 0);
        let a = new
            .find(addr(A), Protocol::Tcp)
            .expect("kept while retired");
        assert_eq!(a, BackendId(1), "after the configured daemons");
        assert!(new.get(a).retired);
        assert_eq!(new.retired().collect::<Vec<_>>(), retired);
        assert_eq!(new.due_probes(0), [BackendId(0)], "only B is probed");
        assert_eq!(new.news(a), None, "the workers build it draining");
        new.set_draining(a, false);
        assert_eq!(new.get(a).effective(), BackendState::Draining);
    }

    #[test]
    fn ipv6_daemons_follow_the_ipv4_ones_and_retired_ones_follow_both() {
        let dual = Config::from_toml_str(
            "front = \"l0\"\nback = \"l1\"\n\
             [[service]]\naddress = \"[2001:2:0:1::100]:80\"\n\
             backends = [\"[2001:2:0:2::11]:8080\"]\n\
             [service.health]\nport = 9000\n\
             [[service]]\naddress = \"198.18.0.100:80\"\nbackends = [\"198.19.0.11:8080\"]\n",
        )
        .unwrap();
        let retired = [Retired {
            daemon: addr("[2001:2:0:2::12]:8080"),
            service: addr("[2001:2:0:1::100]:80"),
            protocol: crate::config::Protocol::Tcp,
        }];
        let mut b = Backends::new(&dual, &retired, &Backends::default(), |_| true, 0);
        let order: Vec<String> = b.iter().map(|d| d.addr.to_string()).collect();
        assert_eq!(
            order,
            [
                "198.19.0.11:8080",
                "[2001:2:0:2::11]:8080",
                "[2001:2:0:2::12]:8080"
            ],
            "the ids of Config::daemons, then daemons6, then the retired"
        );
        let v6 = b
            .find(addr("[2001:2:0:2::11]:8080"), Protocol::Tcp)
            .unwrap();
        assert_eq!(v6, BackendId(1));
        assert_eq!(b.get(v6).service, addr("[2001:2:0:1::100]:80"));
        assert_eq!(
            b.get(v6).probe_target(),
            addr("[2001:2:0:2::11]:9000"),
            "its service's check port"
        );
        assert_eq!(b.due_probes(0), [BackendId(0), BackendId(1)]);
        assert_eq!(b.retired().collect::<Vec<_>>(), retired);
    }

    /// One ADDR:PORT behind a TCP and a UDP service is two daemons: found by
    /// protocol, both named by the address; only the TCP one is probed, and
    /// its failing probes leave the UDP one up; a reload that reorders them
    /// keeps each one's state.
    #[test]
    fn a_tcp_and_a_udp_daemon_at_one_address_are_two() {
        let both = |udp_first: bool| {
            let tcp =
                "[[service]]\naddress = \"198.18.0.100:53\"\nbackends = [\"198.19.0.11:53\"]\n\
                       [service.health]\nrise = 1\nfall = 1\n";
            let udp = "[[service]]\naddress = \"198.18.0.100:53\"\nprotocol = \"udp\"\n\
                       backends = [\"198.19.0.11:53\"]\n";
            let (a, b) = if udp_first { (udp, tcp) } else { (tcp, udp) };
            Config::from_toml_str(&format!("front = \"l0\"\nback = \"l1\"\n{a}{b}")).unwrap()
        };
        let d = addr("198.19.0.11:53");
        let mut old = Backends::new(&both(false), &[], &Backends::default(), |_| true, 0);
        let (tcp, udp) = (
            old.find(d, Protocol::Tcp).unwrap(),
            old.find(d, Protocol::Udp).unwrap(),
        );
        assert_eq!((tcp, udp), (BackendId(0), BackendId(1)));
        assert_eq!(old.at(d).collect::<Vec<_>>(), [tcp, udp]);
        assert_eq!(old.due_probes(0), [tcp], "a UDP daemon is not probed");
        let gen = old.generation();
        assert_eq!(old.probe_done(tcp, gen, false), Some(Health::Down));
        assert_eq!(old.get(tcp).effective(), BackendState::Down);
        assert_eq!(
            old.get(udp).effective(),
            BackendState::Up,
            "not the TCP probe's"
        );

        let new = Backends::new(&both(true), &[], &old, |_| true, 0);
        let (tcp, udp) = (
            new.find(d, Protocol::Tcp).unwrap(),
            new.find(d, Protocol::Udp).unwrap(),
        );
        assert_eq!((tcp, udp), (BackendId(1), BackendId(0)));
        assert_eq!(
            new.get(tcp).health.health(),
            Health::Down,
            "kept by address and protocol"
        );
        assert_eq!(new.get(tcp).probes.failed, 1);
        assert_eq!(new.get(udp).health.health(), Health::Up);
        assert_eq!(new.get(udp).probes, ProbeCounts::default());
    }
}
