//! Next hops towards clients that the kernel has no neighbour entry for.
//!
//! The XDP program takes the Ethernet addresses of every reply from the
//! kernel's FIB. When the hop towards the client has no neighbour entry (it
//! expired and the client never ARPs: a permanent entry for its own gateway),
//! the program drops the reply and notes the hop; nothing else on this host
//! would ever send to it, so nothing would resolve it. Each round of the
//! management loop takes the noted hops and makes the kernel resolve each by
//! sending it one ICMP echo request from this host through the front: the
//! kernel creates the neighbour entry and ARPs for it, as for any packet it
//! sends. Later replies then find the entry; TCP resends the dropped ones.
//!
//! Why an echo request and not `RTM_NEWNEIGH` with `NTF_USE` (what `ip neigh
//! ... use` sends, which starts resolution without sending anything): rtnetlink
//! checks CAP_NET_ADMIN both against the socket's opener *and* against the
//! task sending the request (`__netlink_ns_capable`: `file_ns_capable(...) &&
//! ns_capable(...)`), so after dispatchd drops its capabilities the kernel
//! refuses it (EPERM, measured on 6.18). A raw IPv4 socket checks CAP_NET_RAW
//! only when it is created: one opened at start-up sends without any.
//!
//! Each hop is probed at most once per [`PROBE_INTERVAL_NS`], however many
//! replies are dropped meanwhile (the kernel itself retries its ARP requests
//! for an entry being resolved).
use std::{collections::HashMap, fmt, hash::Hash, io, net::Ipv4Addr};

use serde::Serialize;

use crate::packet::checksum;

/// Least time between two probes of one hop.
pub const PROBE_INTERVAL_NS: u64 = 1_000_000_000;
/// What the probe carries, for whoever captures it.
const PAYLOAD: &[u8; 24] = b"dispatchd next-hop probe";
/// ICMP echo identifier of every probe ("dp").
const ECHO_ID: u16 = 0x6470;
const IP_HEADER: usize = 20;
const ICMP_HEADER: usize = 8;
pub const PROBE_LEN: usize = IP_HEADER + ICMP_HEADER + PAYLOAD.len();

/// What the prober did, since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HopStats {
    /// Echo requests sent to unresolved hops.
    pub probes_sent: u64,
    /// Hops noted again within [`PROBE_INTERVAL_NS`] of their last probe.
    pub probes_suppressed: u64,
    /// Probes the kernel refused to send (no route through the front, ...).
    pub probe_errors: u64,
}

/// One ICMP echo request to `hop` as a whole IPv4 packet, for a raw socket that
/// takes the IP header from its caller: the kernel fills in the source address,
/// the id, the total length and the header checksum.
pub fn echo_request(hop: Ipv4Addr, seq: u16) -> [u8; PROBE_LEN] {
    let mut p = [0u8; PROBE_LEN];
    p[0] = 0x45; // version 4, 5 words
    p[2..4].copy_from_slice(&(PROBE_LEN as u16).to_be_bytes());
    p[6] = 0x40; // don't fragment
    p[8] = 64; // TTL
    p[9] = 1; // ICMP
    p[16..20].copy_from_slice(&hop.octets());
    let icmp = &mut p[IP_HEADER..];
    icmp[0] = 8; // echo request, code 0
    icmp[4..6].copy_from_slice(&ECHO_ID.to_be_bytes());
    icmp[6..8].copy_from_slice(&seq.to_be_bytes());
    icmp[ICMP_HEADER..].copy_from_slice(PAYLOAD);
    let sum = checksum::checksum(icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// Decides which noted hops to probe and sends the probes: IPv4 hops (`A` =
/// `Ipv4Addr`, the probe [`echo_request`]) or IPv6 ones (the probe
/// [`crate::neigh::echo6_request`] on a raw ICMPv6 socket, where the kernel
/// writes the IPv6 header and the checksum).
#[derive(Debug)]
pub struct HopProber<A = Ipv4Addr> {
    /// When each recently probed hop was probed.
    last: HashMap<A, u64>,
    seq: u16,
    pub stats: HopStats,
    /// The first failure is reported; later ones are only counted.
    reported: bool,
}

impl<A> Default for HopProber<A> {
    fn default() -> Self {
        Self {
            last: HashMap::new(),
            seq: 0,
            stats: HopStats::default(),
            reported: false,
        }
    }
}

impl HopStats {
    /// Both families' counts together.
    pub fn plus(self, other: HopStats) -> HopStats {
        HopStats {
            probes_sent: self.probes_sent + other.probes_sent,
            probes_suppressed: self.probes_suppressed + other.probes_suppressed,
            probe_errors: self.probe_errors + other.probe_errors,
        }
    }
}

impl HopProber<Ipv4Addr> {
    /// Probes each of `hops` that was not probed within [`PROBE_INTERVAL_NS`]
    /// of `now_ns`, through `send` (the packet and the hop to send it to).
    pub fn run(
        &mut self,
        hops: &[Ipv4Addr],
        now_ns: u64,
        send: impl FnMut(&[u8], Ipv4Addr) -> io::Result<()>,
    ) {
        self.run_with(hops, now_ns, echo_request, send);
    }
}

impl<A: Copy + Eq + Hash + fmt::Display> HopProber<A> {
    /// [`run`](HopProber::run) with the probe `packet` builds for a hop and
    /// a sequence number.
    pub fn run_with<P: AsRef<[u8]>>(
        &mut self,
        hops: &[A],
        now_ns: u64,
        packet: impl Fn(A, u16) -> P,
        mut send: impl FnMut(&[u8], A) -> io::Result<()>,
    ) {
        self.last
            .retain(|_, at| now_ns.saturating_sub(*at) < PROBE_INTERVAL_NS);
        for &hop in hops {
            if self.last.contains_key(&hop) {
                self.stats.probes_suppressed += 1;
                continue;
            }
            self.last.insert(hop, now_ns);
            self.seq = self.seq.wrapping_add(1);
            match send(packet(hop, self.seq).as_ref(), hop) {
                Ok(()) => self.stats.probes_sent += 1,
                Err(e) => {
                    self.stats.probe_errors += 1;
                    if !std::mem::replace(&mut self.reported, true) {
                        tracing::warn!(
                            "resolving next hop {hop} through the front: {e} \
                             (counted as probe_errors; further failures are only counted)"
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_is_an_echo_request_with_a_valid_checksum() {
        let hop = Ipv4Addr::new(198, 18, 0, 2);
        let p = echo_request(hop, 7);
        let ip = etherparse::Ipv4HeaderSlice::from_slice(&p).expect("an IPv4 header");
        assert_eq!(ip.destination_addr(), hop);
        assert_eq!(ip.protocol(), etherparse::IpNumber::ICMP);
        assert_eq!(usize::from(ip.total_len()), PROBE_LEN);
        assert!(ip.dont_fragment());
        let icmp = etherparse::Icmpv4Slice::from_slice(&p[IP_HEADER..]).expect("ICMP");
        assert_eq!(
            icmp.icmp_type(),
            etherparse::Icmpv4Type::EchoRequest(etherparse::IcmpEchoHeader {
                id: ECHO_ID,
                seq: 7
            })
        );
        assert_eq!(icmp.payload(), PAYLOAD);
        assert!(checksum::verify(&p[IP_HEADER..]), "ICMP checksum");
    }

    #[test]
    fn each_hop_is_probed_at_most_once_per_interval() {
        let (a, b) = (Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 0, 3));
        let mut prober = HopProber::default();
        let mut sent = Vec::new();
        let mut run = |p: &mut HopProber, hops: &[Ipv4Addr], now: u64| {
            p.run(hops, now, |packet, hop| {
                assert_eq!(&packet[16..20], &hop.octets());
                sent.push((hop, now));
                Ok(())
            });
        };
        run(&mut prober, &[a, b], 0);
        run(&mut prober, &[a], 100_000_000);
        run(&mut prober, &[a, b], PROBE_INTERVAL_NS - 1);
        run(&mut prober, &[a], PROBE_INTERVAL_NS);
        run(&mut prober, &[], 3 * PROBE_INTERVAL_NS);
        assert_eq!(sent, [(a, 0), (b, 0), (a, PROBE_INTERVAL_NS)]);
        assert_eq!(
            prober.stats,
            HopStats {
                probes_sent: 3,
                probes_suppressed: 3,
                probe_errors: 0
            }
        );
        // Nothing is kept of hops not seen for an interval.
        assert!(prober.last.is_empty());
    }

    #[test]
    fn ipv6_hops_are_probed_with_the_icmpv6_echo_once_per_interval() {
        let a: std::net::Ipv6Addr = "2001:2:0:1::2".parse().unwrap();
        let b: std::net::Ipv6Addr = "fe80::1".parse().unwrap();
        let mut prober = HopProber::default();
        let mut sent = Vec::new();
        let mut run = |p: &mut HopProber<std::net::Ipv6Addr>, hops: &[std::net::Ipv6Addr], now| {
            p.run_with(
                hops,
                now,
                |_, seq| crate::neigh::echo6_request(seq),
                |packet, hop| {
                    assert_eq!(packet[0], 128, "an ICMPv6 echo request");
                    sent.push((hop, u16::from_be_bytes([packet[6], packet[7]])));
                    Ok(())
                },
            );
        };
        run(&mut prober, &[a, b, a], 0);
        run(&mut prober, &[a], PROBE_INTERVAL_NS - 1);
        run(&mut prober, &[a], PROBE_INTERVAL_NS);
        assert_eq!(sent, [(a, 1), (b, 2), (a, 3)]);
        assert_eq!(prober.stats.probes_sent, 3);
        assert_eq!(prober.stats.probes_suppressed, 2);
        assert_eq!(
            prober.stats.plus(HopStats {
                probes_sent: 1,
                probes_suppressed: 0,
                probe_errors: 4
            }),
            HopStats {
                probes_sent: 4,
                probes_suppressed: 2,
                probe_errors: 4
            }
        );
    }

    #[test]
    fn a_refused_probe_is_counted_and_retried_after_the_interval() {
        let hop = Ipv4Addr::new(198, 18, 9, 9);
        let mut prober = HopProber::default();
        let refuse = |_: &[u8], _| Err(io::Error::from_raw_os_error(libc::ENETUNREACH));
        prober.run(&[hop], 0, refuse);
        prober.run(&[hop], 1, refuse);
        prober.run(&[hop], PROBE_INTERVAL_NS, refuse);
        assert_eq!(prober.stats.probe_errors, 2);
        assert_eq!(prober.stats.probes_suppressed, 1);
        assert_eq!(prober.stats.probes_sent, 0);
    }
}
