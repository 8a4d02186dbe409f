//! Next-hop MAC addresses from the kernel's own tables.
//!
//! A daemon's frames leave through the back interface to the daemon itself or, if
//! the kernel routes it via a gateway, to that gateway. Both answers come from the
//! kernel: the main routing table (`/proc/net/route`) names the next hop and the
//! neighbour table (`/proc/net/arp`) its MAC. When the MAC is not known yet, a TCP
//! connection attempt to the daemon makes the kernel resolve it (any answer, even
//! a refusal, leaves a complete neighbour entry behind).
use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use anyhow::{bail, Context, Result};

/// A daemon's next-hop MAC, packed in the low 48 bits; 0 while unresolved. The
/// loop writes it from the kernel's tables, every worker reads it per packet
/// without a lock.
#[derive(Debug, Default)]
pub struct NextHop(AtomicU64);

impl NextHop {
    pub fn set(&self, mac: Option<[u8; 6]>) {
        let packed = mac.map_or(0, |m| {
            let mut b = [0u8; 8];
            b[..6].copy_from_slice(&m);
            u64::from_le_bytes(b)
        });
        self.0.store(packed, Relaxed);
    }

    #[inline]
    pub fn get(&self) -> Option<[u8; 6]> {
        let packed = self.0.load(Relaxed);
        (packed != 0).then(|| {
            let b = packed.to_le_bytes();
            [b[0], b[1], b[2], b[3], b[4], b[5]]
        })
    }
}

/// The hop a packet to `dst` goes to first, and out of which interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub next_hop: Ipv4Addr,
    pub device: String,
}

fn hex_ip(field: &str) -> Option<Ipv4Addr> {
    // /proc/net/route prints addresses as the in-memory u32 (network order bytes
    // read as a native-endian integer).
    u32::from_str_radix(field, 16)
        .ok()
        .map(|v| Ipv4Addr::from(v.to_ne_bytes()))
}

/// Longest-prefix match over the kernel's main IPv4 table as printed in
/// /proc/net/route. Policy routing rules are not consulted.
pub fn route_from_table(table: &str, dst: Ipv4Addr) -> Option<Route> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    let mut best: Option<(u32, Route)> = None;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [device, dest, gateway, flags, _, _, metric, mask, ..] = f[..] else {
            continue;
        };
        let (Some(dest), Some(gateway), Some(mask)) = (hex_ip(dest), hex_ip(gateway), hex_ip(mask))
        else {
            continue;
        };
        let (Ok(flags), Ok(_metric)) = (u32::from_str_radix(flags, 16), metric.parse::<u32>())
        else {
            continue;
        };
        if flags & RTF_UP == 0 || u32::from(dst) & u32::from(mask) != u32::from(dest) {
            continue;
        }
        let prefix = u32::from(mask).count_ones();
        if best.as_ref().is_some_and(|(p, _)| *p >= prefix) {
            continue;
        }
        let next_hop = if flags & RTF_GATEWAY != 0 {
            gateway
        } else {
            dst
        };
        best = Some((
            prefix,
            Route {
                next_hop,
                device: device.to_owned(),
            },
        ));
    }
    best.map(|(_, r)| r)
}

/// The MAC of a complete neighbour entry for `ip` on `device`, from /proc/net/arp.
pub fn mac_from_arp(table: &str, ip: Ipv4Addr, device: &str) -> Option<[u8; 6]> {
    const ATF_COM: u32 = 0x2;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [addr, _hw_type, flags, mac, _mask, dev] = f[..] else {
            continue;
        };
        let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).unwrap_or(0);
        if dev != device || addr.parse::<Ipv4Addr>().ok() != Some(ip) || flags & ATF_COM == 0 {
            continue;
        }
        return parse_mac(mac).filter(|m| *m != [0; 6]);
    }
    None
}

pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The MAC of one of this host's interfaces.
pub fn interface_mac(device: &str) -> Result<[u8; 6]> {
    let path = format!("/sys/class/net/{device}/address");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_mac(&text).with_context(|| format!("{path} holds no MAC address: {text:?}"))
}

/// Resolves `daemon`'s next hop on `back`. Errors name what the kernel said.
pub struct Resolver {
    pub back: String,
    pub probe_timeout: Duration,
}

impl Resolver {
    /// The route to `daemon`, checked to leave through the back interface.
    pub fn route(&self, daemon: Ipv4Addr) -> Result<Route> {
        let table = fs::read_to_string("/proc/net/route").context("reading /proc/net/route")?;
        let Some(route) = route_from_table(&table, daemon) else {
            bail!("no route to daemon {daemon}");
        };
        if route.device != self.back {
            bail!(
                "daemon {daemon} is routed via {}, not the back interface {}",
                route.device,
                self.back
            );
        }
        Ok(route)
    }

    /// The next-hop MAC for `daemon`, if the kernel knows it now.
    pub fn lookup(&self, daemon: Ipv4Addr) -> Result<Option<[u8; 6]>> {
        let route = self.route(daemon)?;
        let arp = fs::read_to_string("/proc/net/arp").context("reading /proc/net/arp")?;
        Ok(mac_from_arp(&arp, route.next_hop, &route.device))
    }

    /// Like [`Resolver::lookup`], but first makes the kernel resolve the hop with a
    /// TCP connection attempt to the daemon if it is not known.
    pub fn resolve(&self, daemon: SocketAddrV4) -> Result<Option<[u8; 6]>> {
        if let Some(mac) = self.lookup(*daemon.ip())? {
            return Ok(Some(mac));
        }
        // Refused or accepted, either answer completes the neighbour entry.
        let _ = TcpStream::connect_timeout(&SocketAddr::V4(daemon), self.probe_timeout);
        self.lookup(*daemon.ip())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
l1\t00000000\t010013C6\t0003\t0\t0\t0\t00000000\t0\t0\t0
l1\t000013C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
l0\t000012C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
";

    #[test]
    fn on_link_destination_is_its_own_next_hop() {
        let r = route_from_table(ROUTE, "198.19.0.11".parse().unwrap()).unwrap();
        assert_eq!(
            r,
            Route {
                next_hop: "198.19.0.11".parse().unwrap(),
                device: "l1".into()
            }
        );
        let r = route_from_table(ROUTE, "198.18.0.2".parse().unwrap()).unwrap();
        assert_eq!(r.device, "l0");
    }

    #[test]
    fn off_link_destination_goes_to_the_gateway() {
        let r = route_from_table(ROUTE, "203.0.113.9".parse().unwrap()).unwrap();
        assert_eq!(
            r,
            Route {
                next_hop: "198.19.0.1".parse().unwrap(),
                device: "l1".into()
            }
        );
        assert_eq!(
            route_from_table("header\n", "203.0.113.9".parse().unwrap()),
            None
        );
    }

    #[test]
    fn arp_entries_must_be_complete_and_on_the_device() {
        let arp = "IP address       HW type     Flags       HW address            Mask     Device
198.19.0.11      0x1         0x2         aa:bb:cc:dd:ee:01     *        l1
198.19.0.12      0x1         0x0         00:00:00:00:00:00     *        l1
198.19.0.13      0x1         0x2         aa:bb:cc:dd:ee:03     *        l0
";
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            mac_from_arp(arp, ip("198.19.0.11"), "l1"),
            Some([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 1])
        );
        assert_eq!(mac_from_arp(arp, ip("198.19.0.12"), "l1"), None);
        assert_eq!(mac_from_arp(arp, ip("198.19.0.13"), "l1"), None);
    }

    #[test]
    fn mac_parsing_rejects_malformed_text() {
        assert_eq!(parse_mac("02:00:00:00:00:0a\n"), Some([2, 0, 0, 0, 0, 10]));
        assert_eq!(parse_mac("02:00:00:00:00"), None);
        assert_eq!(parse_mac("02:00:00:00:00:0a:01"), None);
        assert_eq!(parse_mac("zz:00:00:00:00:0a"), None);
    }
}
