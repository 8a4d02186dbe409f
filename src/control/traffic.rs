//! Each daemon's traffic and new connections, by address and protocol (one
//! ADDR:PORT may serve a TCP and a UDP service: two daemons), for /metrics.
//!
//! Workers count a daemon's frames and bytes in their plane's bank, indexed by
//! [`BackendId`](crate::ids::BackendId), which is a daemon's place in the
//! configuration: a reload that adds, removes or reorders daemons gives the
//! same id to another daemon. So every plane comes with a bank of its own, and
//! the loop sums the banks by address: the banks of the running planes as they
//! count, plus what the banks of replaced planes had counted by the time their
//! worker let go of them (folded once no worker holds them, so no count is lost
//! or read twice). A daemon that leaves the configuration loses its counts; if
//! it comes back it starts from zero, however late an old plane is let go of.
use std::{net::SocketAddr, sync::Arc};

use ahash::{AHashMap, AHashSet};

use crate::stats::BackendTraffic;

/// A daemon: its address and its service's IP protocol number.
pub type Daemon = (SocketAddr, u8);

/// One daemon's counts, summed over the workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub to_packets: u64,
    pub to_bytes: u64,
    pub from_packets: u64,
    pub from_bytes: u64,
    /// Connections opened to it (from the workers' `Opened` events).
    pub new_connections: u64,
}

impl Totals {
    fn add_bank(&mut self, c: &BackendTraffic) {
        self.to_packets += c.to_packets.get();
        self.to_bytes += c.to_bytes.get();
        self.from_packets += c.from_packets.get();
        self.from_bytes += c.from_bytes.get();
    }
}

/// A plane's bank and the daemon each of its ids stood for.
struct Bank {
    generation: u64,
    daemons: Arc<[Daemon]>,
    counters: Arc<[BackendTraffic]>,
}

#[derive(Default)]
pub struct TrafficBook {
    /// Bumped by every new set of daemons.
    generation: u64,
    /// The daemons of the running set, with the generation that brought each
    /// in: a bank older than that counted an earlier stay of the address.
    joined: AHashMap<Daemon, u64>,
    /// The services of the running set (address, IP protocol number), for
    /// their new-connection counts.
    services: AHashSet<(SocketAddr, u8)>,
    live: Vec<Bank>,
    /// What let-go banks counted, and the new connections, by daemon.
    settled: AHashMap<Daemon, Totals>,
    /// New connections by service: kept while the service is configured,
    /// whichever daemons come and go.
    service_opened: AHashMap<(SocketAddr, u8), u64>,
}

impl TrafficBook {
    /// A new running set: `daemons` in id order (configured, then retired)
    /// and `services`. Counts of daemons and services not in it are dropped.
    /// Returns the list to give [`track`](Self::track) with each plane's bank.
    pub fn install(
        &mut self,
        daemons: impl Iterator<Item = Daemon>,
        services: impl Iterator<Item = (SocketAddr, u8)>,
    ) -> Arc<[Daemon]> {
        self.generation += 1;
        let daemons: Arc<[Daemon]> = daemons.collect();
        let joined = daemons
            .iter()
            .map(|a| (*a, self.joined.get(a).copied().unwrap_or(self.generation)))
            .collect();
        self.joined = joined;
        self.services = services.collect();
        self.settled.retain(|a, _| self.joined.contains_key(a));
        self.service_opened.retain(|s, _| self.services.contains(s));
        daemons
    }

    /// A plane's bank, counting for the daemons of the last
    /// [`install`](Self::install).
    pub fn track(&mut self, daemons: Arc<[Daemon]>, counters: Arc<[BackendTraffic]>) {
        self.live.push(Bank {
            generation: self.generation,
            daemons,
            counters,
        });
    }

    /// A connection (or UDP flow) of IP protocol `protocol` opened to
    /// `daemon` of `service` (a worker's event).
    pub fn opened(
        &mut self,
        service: impl Into<SocketAddr>,
        protocol: u8,
        daemon: impl Into<SocketAddr>,
    ) {
        let (service, daemon) = (service.into(), (daemon.into(), protocol));
        if self.joined.contains_key(&daemon) {
            self.settled.entry(daemon).or_default().new_connections += 1;
        }
        if self.services.contains(&(service, protocol)) {
            *self.service_opened.entry((service, protocol)).or_default() += 1;
        }
    }

    /// Folds the banks no plane holds any more (their worker replaced the
    /// plane and dropped it) into the settled counts.
    pub fn settle(&mut self) {
        let mut i = 0;
        while i < self.live.len() {
            // Unique: the worker dropped its plane, and the drop's release
            // ordering makes its last counts visible to this acquire.
            if Arc::get_mut(&mut self.live[i].counters).is_some() {
                let bank = self.live.swap_remove(i);
                for (addr, c) in bank.daemons.iter().zip(bank.counters.iter()) {
                    if self.counts(addr, bank.generation) {
                        self.settled.entry(*addr).or_default().add_bank(c);
                    }
                }
            } else {
                i += 1;
            }
        }
    }

    fn counts(&self, addr: &Daemon, generation: u64) -> bool {
        self.joined.get(addr).is_some_and(|&g| generation >= g)
    }

    /// Every daemon of the running set with its counts so far.
    pub fn totals(&self) -> AHashMap<Daemon, Totals> {
        let mut out: AHashMap<Daemon, Totals> = self
            .joined
            .keys()
            .map(|a| (*a, self.settled.get(a).copied().unwrap_or_default()))
            .collect();
        for bank in &self.live {
            for (addr, c) in bank.daemons.iter().zip(bank.counters.iter()) {
                if self.counts(addr, bank.generation) {
                    if let Some(t) = out.get_mut(addr) {
                        t.add_bank(c);
                    }
                }
            }
        }
        out
    }

    /// New connections of a configured service since it was configured.
    pub fn service_opened(&self, service: impl Into<SocketAddr>, protocol: u8) -> u64 {
        self.service_opened
            .get(&(service.into(), protocol))
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use super::*;

    /// The TCP daemon at 198.19.0.`last`:8080.
    fn addr(last: u8) -> Daemon {
        (
            SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, last), 8080).into(),
            6,
        )
    }

    const VIP: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 80));

    fn count(bank: &[BackendTraffic], id: usize, packets: u64) {
        bank[id].to_packets.add(packets);
        bank[id].to_bytes.add(packets * 100);
        bank[id].from_packets.add(packets * 2);
        bank[id].from_bytes.add(packets * 200);
    }

    /// A reload reorders the daemons (ids swap), adds one and removes one,
    /// while the old plane still counts: every total follows its address.
    #[test]
    fn totals_follow_the_address_across_a_reordering_reload() {
        let mut book = TrafficBook::default();
        let first = book.install(
            [addr(1), addr(2), addr(3)].into_iter(),
            [(VIP, 6)].into_iter(),
        );
        let old = BackendTraffic::bank(3);
        book.track(first, old.clone());
        count(&old, 0, 10); // addr 1
        count(&old, 1, 20); // addr 2
        count(&old, 2, 30); // addr 3
        book.opened(VIP, 6, addr(1).0);
        book.opened(VIP, 6, addr(3).0);

        // Reordered: 2 then 1, 3 gone, 4 new.
        let second = book.install(
            [addr(2), addr(1), addr(4)].into_iter(),
            [(VIP, 6)].into_iter(),
        );
        let new = BackendTraffic::bank(3);
        book.track(second, new.clone());
        // The worker has not switched yet: the old bank still counts.
        count(&old, 0, 1); // addr 1
        book.settle();
        let t = book.totals();
        assert_eq!(t[&addr(1)].to_packets, 11);
        assert_eq!(t[&addr(2)].to_packets, 20);
        assert_eq!(t[&addr(4)].to_packets, 0);
        assert!(!t.contains_key(&addr(3)), "a daemon that left is dropped");
        assert_eq!(t[&addr(1)].new_connections, 1);

        // The worker switches: the new ids count, the old bank is let go of.
        count(&new, 0, 5); // addr 2
        count(&new, 1, 7); // addr 1
        count(&new, 2, 9); // addr 4
        drop(old);
        book.settle();
        assert_eq!(book.live.len(), 1, "the let-go bank is folded");
        let t = book.totals();
        assert_eq!(
            t[&addr(1)],
            Totals {
                to_packets: 18,
                to_bytes: 1800,
                from_packets: 36,
                from_bytes: 3600,
                new_connections: 1
            }
        );
        assert_eq!(t[&addr(2)].to_packets, 25);
        assert_eq!(t[&addr(4)].to_packets, 9);
        assert_eq!(book.service_opened(VIP, 6), 2, "a service keeps its count");
    }

    /// One ADDR:PORT behind a TCP and a UDP service is two daemons, counted
    /// apart, in traffic and in new connections, across a reload that swaps
    /// their ids.
    #[test]
    fn a_tcp_and_a_udp_daemon_at_one_address_count_apart() {
        let mut book = TrafficBook::default();
        let (tcp, udp) = (addr(1), (addr(1).0, 17));
        let services = || [(VIP, 6), (VIP, 17)].into_iter();
        let first = book.install([tcp, udp].into_iter(), services());
        let old = BackendTraffic::bank(2);
        book.track(first, old.clone());
        count(&old, 0, 3);
        count(&old, 1, 40);
        book.opened(VIP, 6, tcp.0);
        book.opened(VIP, 17, udp.0);
        book.opened(VIP, 17, udp.0);
        let second = book.install([udp, tcp].into_iter(), services());
        let new = BackendTraffic::bank(2);
        book.track(second, new.clone());
        count(&new, 0, 2);
        drop(old);
        book.settle();
        let t = book.totals();
        assert_eq!((t[&tcp].to_packets, t[&udp].to_packets), (3, 42));
        assert_eq!((t[&tcp].new_connections, t[&udp].new_connections), (1, 2));
        assert_eq!(
            (book.service_opened(VIP, 6), book.service_opened(VIP, 17)),
            (1, 2)
        );
    }

    /// A daemon removed and added back starts from zero, even when a plane
    /// from before its removal is let go of only afterwards.
    #[test]
    fn a_daemon_that_comes_back_starts_from_zero() {
        let mut book = TrafficBook::default();
        let first = book.install([addr(1), addr(2)].into_iter(), [(VIP, 6)].into_iter());
        let old = BackendTraffic::bank(2);
        book.track(first, old.clone());
        count(&old, 1, 50);
        let second = book.install([addr(1)].into_iter(), [(VIP, 6)].into_iter());
        book.track(second, BackendTraffic::bank(1));
        let third = book.install([addr(1), addr(2)].into_iter(), [(VIP, 6)].into_iter());
        book.track(third, BackendTraffic::bank(2));
        assert_eq!(book.totals()[&addr(2)].to_packets, 0);
        drop(old);
        book.settle();
        assert_eq!(book.totals()[&addr(2)].to_packets, 0);
    }

    /// Summing a thousand daemons over a few banks is cheap enough to do per
    /// scrape.
    #[test]
    fn totals_of_a_thousand_daemons() {
        let mut book = TrafficBook::default();
        let daemons: Vec<Daemon> = (0..1000u16)
            .map(|i| {
                let a = SocketAddrV4::new(Ipv4Addr::new(198, 19, (i >> 8) as u8, i as u8), 8080);
                (a.into(), 6)
            })
            .collect();
        let list = book.install(daemons.iter().copied(), [(VIP, 6)].into_iter());
        let banks: Vec<_> = (0..2).map(|_| BackendTraffic::bank(1000)).collect();
        for b in &banks {
            book.track(list.clone(), b.clone());
            count(b, 999, 1);
        }
        let t = book.totals();
        assert_eq!(t.len(), 1000);
        assert_eq!(t[&daemons[999]].to_packets, 2);
    }
}
