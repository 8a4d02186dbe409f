//! The XDP steering program (bpf/steer.bpf.c) on its own, through
//! BPF_PROG_TEST_RUN: one row per frame class, each with the interface and rx
//! queue it arrives on, the verdict, the counters it moves (the whole counters
//! array is compared before and after, so a row that bumps a wrong counter fails)
//! and, where the program rewrites it, the frame it leaves.
//!
//! Everything runs in a private network namespace that the test creates and
//! always deletes: a front veth with more rx queues than the program's
//! MAX_QUEUES (a test run refuses a queue the device lacks), a back veth, a
//! third interface (another veth) with a network of its own, the DESIGN.md
//! addresses plus one routed to loopback, a permanent neighbour towards one
//! client and none towards another, a route through a gateway without a
//! neighbour, a blackhole route, and real AF_XDP sockets on queue 0 of both
//! sides, queue 1 left without. The program is loaded once per reply mode:
//! stateless for the main table, tracked (with one connection in its map) for
//! the second. Nothing is attached: a test run looks the interface up in the
//! calling thread's namespace and needs no program on it. Needs root; fails,
//! never skips, without it or without BPF.
//!
//! ICMP errors come from the test kit's encoder around quotes of the segments
//! it builds; the "fragmentation needed" the program builds in place is compared
//! byte for byte with the one the encoder builds from the same reply.
//!
//! What a test run cannot reach, and where it stays covered:
//! - `truncated` for a frame shorter than an Ethernet header: the kernel refuses a
//!   test run of fewer than 14 bytes (EINVAL, pinned below), and no such frame
//!   reaches XDP on veth either (AF_PACKET pads a short frame to 14 bytes). The
//!   branch stays for the verifier, which needs the bounds check anyway. The
//!   `truncated` counter is reached here by a cut IPv4 header, and end to end by
//!   e2e_hardening's `malformed_frames_are_counted_by_reason_and_never_forwarded`.
//! - Delivery of a redirect: a test run returns XDP_REDIRECT having picked the
//!   socket, without putting the frame on its ring. Frames reaching the sockets are
//!   covered by e2e_dataplane's `connections_spread_evenly_and_echo_intact` and
//!   `two_queues_both_carry_traffic`.
use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
    process::Command,
};

use dispatchd::{
    config::{Protocol, MAX_QUEUES, VIP_TCP, VIP_UDP},
    queues::WorkerQueues,
    xdp::{
        reply_key, reply_key6, HandedKeys, Interface, Replies, Side, Steering, SteeringTable,
        COUNTER_NAMES,
    },
    xsk::{self, Bind, SocketOptions, WorkerSockets},
};
use dispatchd_testkit::{
    frame::{tcp_flags, Frame, FrameSpec, IcmpKind, IcmpSpec},
    require_root, text, NetNsGuard,
};
use etherparse::{EtherType, Ethernet2Header, PacketBuilder, VlanId};
use libbpf_sys::{XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX};

const FRONT: &str = "front";
const BACK: &str = "back";
/// More than MAX_QUEUES, so that the program's own bound on the queue is reachable.
const FRONT_QUEUES: u32 = MAX_QUEUES + 8;
const BACK_QUEUES: u32 = 2;

const FRONT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xf0, 0x01];
const FRONT_PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xf0, 0x02];
const BACK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xb0, 0x01];
const BACK_PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xb0, 0x02];
/// The permanent neighbour entry of `CLIENT` on the front.
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xc1, 0x02];

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const SERVICE: SocketAddrV4 = SocketAddrV4::new(VIP, 80);
/// A UDP service on another port of the VIP (TCP to it is the host's; UDP to
/// `SERVICE`'s port, TCP only, too).
const UDP_SERVICE: SocketAddrV4 = SocketAddrV4::new(VIP, 53);
const UDP_DAEMON: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 21), 5353);
/// A VIP with a TCP service only: what of UDP cannot be matched is the host's.
const TCP_ONLY_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 101);
/// The IP protocol numbers the tracked maps' keys carry.
const TCP: u8 = libc::IPPROTO_TCP as u8;
const UDP: u8 = libc::IPPROTO_UDP as u8;
const DAEMONS: [SocketAddrV4; 2] = [
    SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 11), 8080),
    SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 12), 8080),
];
/// On the front's subnet, with a permanent neighbour entry.
const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 40000);
/// On the front's subnet, with no neighbour entry.
const UNRESOLVED: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 3), 40000);
/// In no subnet of the namespace, which has no default route.
const UNROUTED: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 9, 9), 40000);
/// The back's own address (a health probe's source).
const BACK_ADDR: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
/// Behind `CLIENT` as a gateway, on a route whose MTU is locked at `NARROW_MTU`:
/// bpf_fib_lookup reports a larger packet as "fragmentation needed".
const NARROW: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 5, 2), 40000);
const NARROW_MTU: u16 = 1280;
/// A router on either side, the source of ICMP errors.
const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// The front's own address.
const FRONT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// A /32 on loopback: local, on no interface of the program's.
const LOOPBACK_ROUTED: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 1);
/// The network of the third interface, and a host on it.
const OTHER_NET: &str = "198.18.50.1/24";
const OTHER_HOST: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 50, 9), 40000);
/// A host on the back's network (a monitoring host talking to a daemon).
const BACK_HOST: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 50), 40000);
/// A client network behind a gateway on the front that has no neighbour entry.
const BEHIND_GATEWAY: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 64, 5), 40000);
const GATEWAY_NET: &str = "198.18.64.0/24";
const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
/// A blackholed client network.
const BLACKHOLED: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 99, 5), 40000);
const BLACKHOLED_NET: &str = "198.18.99.0/24";
/// The IPv6 VIP (documentation prefix: a test run sends nothing anywhere), with
/// a TCP service on port 80 and a UDP service on port 53.
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);
const SERVICE6: SocketAddrV6 = SocketAddrV6::new(VIP6, 80, 0, 0);
const UDP_SERVICE6: SocketAddrV6 = SocketAddrV6::new(VIP6, 53, 0, 0);
const CLIENT6: SocketAddrV6 =
    SocketAddrV6::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2), 40000, 0, 0);
/// The IPv6 back path's lab, in the benchmark prefix 2001:2::/48 (RFC 5180):
/// front 2001:2:0:1::1/64, back 2001:2:0:2::1/64 (the "packet too big"
/// source), a VIP with a TCP service on 80 and a UDP service on 53.
const FRONT_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 1);
const BACK_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 1);
const VIP6B: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 0x100);
const SERVICE6B: SocketAddrV6 = SocketAddrV6::new(VIP6B, 80, 0, 0);
const UDP_SERVICE6B: SocketAddrV6 = SocketAddrV6::new(VIP6B, 53, 0, 0);
const DAEMON6: SocketAddrV6 =
    SocketAddrV6::new(Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 0x11), 8080, 0, 0);
const UDP_DAEMON6: SocketAddrV6 =
    SocketAddrV6::new(Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 0x21), 5353, 0, 0);
/// On the front's subnet with a permanent neighbour entry (`CLIENT_MAC`).
const CLIENT6B: SocketAddrV6 =
    SocketAddrV6::new(Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 2), 40000, 0, 0);
/// On the front's subnet, no neighbour entry.
const UNRESOLVED6: SocketAddrV6 =
    SocketAddrV6::new(Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 3), 40000, 0, 0);
/// Behind `CLIENT6B` on a route locked at `NARROW_MTU` (the IPv6 minimum).
const NARROW6: SocketAddrV6 =
    SocketAddrV6::new(Ipv6Addr::new(0x2001, 2, 0, 5, 0, 0, 0, 2), 40000, 0, 0);
/// Behind a link-local router on the front that has no neighbour entry.
const BEHIND_ROUTER6: SocketAddrV6 =
    SocketAddrV6::new(Ipv6Addr::new(0x2001, 2, 0, 0x64, 0, 0, 0, 5), 40000, 0, 0);
const ROUTER6_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0xfe);
const BLACKHOLED6: SocketAddrV6 =
    SocketAddrV6::new(Ipv6Addr::new(0x2001, 2, 0, 0x99, 0, 0, 0, 5), 40000, 0, 0);
/// In no route of the namespace.
const UNROUTED6: SocketAddrV6 =
    SocketAddrV6::new(Ipv6Addr::new(0x2001, 2, 0, 9, 0, 0, 0, 9), 40000, 0, 0);
const LOOPBACK_ROUTED6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0x200, 0, 0, 0, 1);
const OTHER_HOST6: SocketAddrV6 =
    SocketAddrV6::new(Ipv6Addr::new(0x2001, 2, 0, 0x50, 0, 0, 0, 9), 40000, 0, 0);
/// A router on the back, the source of ICMPv6 errors there.
const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 0xfe);

/// Runs `ip ARGS`, panicking with its output if it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ip {args:?}: {e}"));
    assert!(out.status.success(), "ip {args:?}:\n{}", text(&out));
}

fn mac(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

/// A network namespace of the test's own that the test thread is in; on drop the
/// thread goes back where it came from and the namespace is deleted, with every
/// interface in it, also when the test panics.
struct NetNs {
    name: String,
    inside: Option<NetNsGuard>,
}

impl NetNs {
    fn enter(name: String) -> Self {
        ip(&["netns", "add", &name]);
        let mut ns = NetNs { name, inside: None };
        ns.inside = Some(
            NetNsGuard::enter(&ns.name).unwrap_or_else(|e| panic!("entering {}: {e}", ns.name)),
        );
        ns
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        drop(self.inside.take());
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The program loaded for this namespace's front and back, its maps filled as
/// dispatchd's start-up fills them, and the sockets of queue 0 registered.
struct Lab {
    steering: Steering,
    sockets: WorkerSockets,
    front: Interface,
    back: Interface,
    other: Interface,
    /// Last, so that the program and the sockets go before their namespace.
    ns: NetNs,
}

impl Lab {
    fn up(tag: &str, replies: Replies) -> Self {
        require_root();
        let ns = NetNs::enter(format!("dxp{tag}{}", std::process::id() % 100_000));
        let n = ns.name.clone();
        let (fq, bq) = (FRONT_QUEUES, BACK_QUEUES);
        let (f, fp, b, bp) = (
            mac(FRONT_MAC),
            mac(FRONT_PEER_MAC),
            mac(BACK_MAC),
            mac(BACK_PEER_MAC),
        );
        // A test run refuses a queue the device lacks; with numrxqueues given, veth
        // makes them all real (without, it has one).
        for cmd in [
            format!("link add {FRONT} address {f} numtxqueues {fq} numrxqueues {fq} type veth peer name fpeer address {fp} numtxqueues {fq} numrxqueues {fq}"),
            format!("link add {BACK} address {b} numtxqueues {bq} numrxqueues {bq} type veth peer name bpeer address {bp} numtxqueues {bq} numrxqueues {bq}"),
            format!("addr add 198.18.0.1/24 dev {FRONT}"),
            format!("addr add {VIP}/32 dev {FRONT}"),
            format!("addr add {BACK_ADDR}/24 dev {BACK}"),
            format!("addr add {LOOPBACK_ROUTED}/32 dev lo"),
            "link add other0 type veth peer name opeer".into(),
            format!("addr add {OTHER_NET} dev other0"),
            "link set lo up".into(),
            format!("link set {FRONT} up"),
            "link set fpeer up".into(),
            format!("link set {BACK} up"),
            "link set bpeer up".into(),
            "link set other0 up".into(),
            // For the FIB-success rows; `UNRESOLVED` has none, `UNROUTED` no route.
            format!("neigh add {} lladdr {} dev {FRONT} nud permanent", CLIENT.ip(), mac(CLIENT_MAC)),
            format!("route add 198.18.5.0/24 via {} dev {FRONT} mtu lock {NARROW_MTU}", CLIENT.ip()),
            format!("route add {GATEWAY_NET} via {GATEWAY} dev {FRONT}"),
            format!("route add blackhole {BLACKHOLED_NET}"),
            // IPv6, without duplicate address detection (tentative addresses
            // are not used as sources nor routed to).
            format!("addr add {FRONT_ADDR6}/64 dev {FRONT} nodad"),
            format!("addr add {BACK_ADDR6}/64 dev {BACK} nodad"),
            format!("addr add {VIP6B}/128 dev {FRONT} nodad"),
            format!("addr add {LOOPBACK_ROUTED6}/128 dev lo"),
            "addr add 2001:2:0:50::1/64 dev other0 nodad".into(),
            format!("-6 neigh add {} lladdr {} dev {FRONT} nud permanent", CLIENT6B.ip(), mac(CLIENT_MAC)),
            format!("-6 route add 2001:2:0:5::/64 via {} dev {FRONT} mtu lock {NARROW_MTU}", CLIENT6B.ip()),
            format!("-6 route add 2001:2:0:64::/64 via {ROUTER6_LL} dev {FRONT}"),
            "-6 route add blackhole 2001:2:0:99::/64".into(),
        ] {
            let mut args = vec!["-n", &n];
            args.extend(cmd.split_whitespace());
            ip(&args);
        }
        // As dispatchd requires: the reply's FIB lookup needs it.
        set_forwarding(&n, BACK, true);
        set_forwarding6(&n, BACK, true);

        let front = Interface::lookup(FRONT).expect("front in the namespace");
        let back = Interface::lookup(BACK).expect("back in the namespace");
        let other = Interface::lookup("lo").expect("lo in the namespace");
        let mut steering = Steering::load(&front, &back, replies)
            .unwrap_or_else(|e| panic!("loading the XDP program (is BPF available?): {e:#}"));
        let mut table = SteeringTable {
            services: [
                ((SERVICE, Protocol::Tcp), 0),
                ((UDP_SERVICE, Protocol::Udp), 1),
                ((SocketAddrV4::new(TCP_ONLY_VIP, 80), Protocol::Tcp), 2),
            ]
            .into(),
            daemons: DAEMONS
                .map(|d| ((d, Protocol::Tcp), SERVICE))
                .into_iter()
                .chain([((UDP_DAEMON, Protocol::Udp), UDP_SERVICE)])
                .collect(),
            vips: [
                (VIP, (VIP_TCP | VIP_UDP) as u8),
                (TCP_ONLY_VIP, VIP_TCP as u8),
            ]
            .into(),
            ..Default::default()
        };
        table.add_service6(SERVICE6, Protocol::Tcp, 0, []);
        table.add_service6(UDP_SERVICE6, Protocol::Udp, 1, []);
        table.add_service6(SERVICE6B, Protocol::Tcp, 2, [DAEMON6]);
        table.add_service6(UDP_SERVICE6B, Protocol::Udp, 3, [UDP_DAEMON6]);
        steering.sync(&table).expect("services and daemons");
        steering
            .set_icmp_source(BACK_ADDR)
            .expect("the source of ICMP errors");
        steering
            .set_icmp_source6(BACK_ADDR6)
            .expect("the source of ICMPv6 errors");
        let queue_0 = WorkerQueues {
            core: None,
            front: vec![0],
            back: vec![0],
        };
        let opts = SocketOptions {
            bind: Bind::Copy,
            frames_per_queue: 256,
            batch: 64,
            busy_poll: false,
        };
        let sockets = xsk::open_worker(&front, &back, &queue_0, &opts)
            .unwrap_or_else(|e| panic!("AF_XDP sockets on queue 0: {e:#}"));
        steering
            .register_socket(Side::Front, 0, sockets.front[0].fd())
            .expect("front socket");
        steering
            .register_socket(Side::Back, 0, sockets.back[0].fd())
            .expect("back socket");
        Lab {
            steering,
            sockets,
            front,
            back,
            other,
            ns,
        }
    }

    fn ifindex(&self, iface: Iface) -> u32 {
        match iface {
            Iface::Front => self.front.index,
            Iface::Back => self.back.index,
            Iface::Other => self.other.index,
        }
    }

    fn counters(&self) -> [u64; COUNTER_NAMES.len()] {
        self.steering.counters().expect("reading the counters")
    }
}

fn set_forwarding(ns: &str, iface: &str, on: bool) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sysctl", "-qw"])
        .arg(format!(
            "net.ipv4.conf.{iface}.forwarding={}",
            if on { 1 } else { 0 }
        ))
        .output()
        .expect("running sysctl");
    assert!(out.status.success(), "sysctl:\n{}", text(&out));
}

/// Sets `net.ipv6.conf.<iface>.forwarding`: the setting bpf_ipv6_fib_lookup
/// checks, on the device the lookup is made for (the back), whatever `all` says.
fn set_forwarding6(ns: &str, iface: &str, on: bool) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sysctl", "-qw"])
        .arg(format!(
            "net.ipv6.conf.{iface}.forwarding={}",
            if on { 1 } else { 0 }
        ))
        .output()
        .expect("running sysctl");
    assert!(out.status.success(), "sysctl:\n{}", text(&out));
}

// Frames. IPv4 TCP and UDP come from the test kit's builder, like every other
// test's; ICMP, ARP, IPv6 and double tags, which it does not encode, from
// etherparse directly.

/// (source, destination) Ethernet addresses.
type Macs = ([u8; 6], [u8; 6]);
const FROM_CLIENT: Macs = (FRONT_PEER_MAC, FRONT_MAC);
const FROM_DAEMON: Macs = (BACK_PEER_MAC, BACK_MAC);
/// What the FIB gives a reply towards `CLIENT`: the front's address and the neighbour's.
const TO_CLIENT: Macs = (FRONT_MAC, CLIENT_MAC);

fn spec(macs: Macs, from: SocketAddrV4, to: SocketAddrV4) -> FrameSpec {
    FrameSpec {
        src_mac: macs.0,
        dst_mac: macs.1,
        dont_fragment: false,
        tcp_flags: tcp_flags::SYN,
        seq: 1,
        window: 64240,
        ..FrameSpec::tcp(from, to)
    }
}

/// A TCP SYN from `from` to `to`, its built frame then edited by `edit`.
fn tcp_with(
    macs: Macs,
    from: SocketAddrV4,
    to: SocketAddrV4,
    edit: impl FnOnce(&mut FrameSpec) -> Frame,
) -> Vec<u8> {
    edit(&mut spec(macs, from, to)).into_bytes()
}

fn tcp(macs: Macs, from: SocketAddrV4, to: SocketAddrV4) -> Vec<u8> {
    spec(macs, from, to).build().into_bytes()
}

fn udp(macs: Macs, from: SocketAddrV4, to: SocketAddrV4) -> Vec<u8> {
    FrameSpec {
        src_mac: macs.0,
        dst_mac: macs.1,
        payload: b"ping".to_vec(),
        ..FrameSpec::udp(from, to)
    }
    .build()
    .into_bytes()
}

fn icmp_echo(macs: Macs, from: Ipv4Addr, to: Ipv4Addr) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(from.octets(), to.octets(), 64)
        .icmpv4_echo_request(1, 1);
    let mut f = Vec::with_capacity(b.size(4));
    b.write(&mut f, b"ping").expect("writing an ICMP frame");
    f
}

/// An ICMP error of `kind` from `from` to `to` quoting the first `quoted` bytes
/// of `about`'s IPv4 packet.
fn icmp_error(
    macs: Macs,
    from: Ipv4Addr,
    to: Ipv4Addr,
    kind: IcmpKind,
    about: &[u8],
    quoted: usize,
) -> Vec<u8> {
    let about = Frame::from_bytes(about.to_vec());
    let packet = about.ip_packet();
    IcmpSpec {
        src_mac: macs.0,
        dst_mac: macs.1,
        src: from,
        dst: to,
        ttl: 64,
        tos: 0xc0,
        kind,
        quote: packet[..quoted.min(packet.len())].to_vec(),
    }
    .build()
    .into_bytes()
}

/// A full-size data segment (1460 bytes of payload, DF set) from `from` to `to`.
fn full_size(macs: Macs, from: SocketAddrV4, to: SocketAddrV4) -> FrameSpec {
    FrameSpec {
        tcp_flags: tcp_flags::ACK | tcp_flags::PSH,
        payload: vec![0x5a; 1460],
        dont_fragment: true,
        ..spec(macs, from, to)
    }
}

/// The TCP SYN of `tcp`, tagged once (802.1Q) or twice (802.1ad outside).
fn tcp_vlan(macs: Macs, from: SocketAddrV4, to: SocketAddrV4, double: bool) -> Vec<u8> {
    const ID: u16 = 7;
    if !double {
        return FrameSpec {
            vlan: Some(ID),
            ..spec(macs, from, to)
        }
        .build()
        .into_bytes();
    }
    let id = VlanId::try_new(ID).expect("a valid VLAN id");
    let b = PacketBuilder::ethernet2(macs.0, macs.1)
        .double_vlan(id, id)
        .ipv4(from.ip().octets(), to.ip().octets(), 64)
        .tcp(from.port(), to.port(), 1, 64240)
        .syn();
    let mut f = Vec::with_capacity(b.size(0));
    b.write(&mut f, &[]).expect("writing a tagged frame");
    f
}

/// A TCP SYN over IPv6 between the IPv4-mapped forms of `from` and `to`.
fn tcp6(macs: Macs, from: SocketAddrV4, to: SocketAddrV4) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv6(
            from.ip().to_ipv6_mapped().octets(),
            to.ip().to_ipv6_mapped().octets(),
            64,
        )
        .tcp(from.port(), to.port(), 1, 64240)
        .syn();
    let mut f = Vec::with_capacity(b.size(0));
    b.write(&mut f, &[]).expect("writing an IPv6 frame");
    f
}

/// A TCP SYN (or a UDP datagram) over IPv6.
fn l4_6(macs: Macs, from: SocketAddrV6, to: SocketAddrV6, udp: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(macs.0, macs.1).ipv6(from.ip().octets(), to.ip().octets(), 64);
    let mut f = Vec::new();
    if udp {
        b.udp(from.port(), to.port()).write(&mut f, b"query")
    } else {
        b.tcp(from.port(), to.port(), 1, 64240)
            .syn()
            .write(&mut f, &[])
    }
    .expect("writing an IPv6 frame");
    f
}

/// A TCP data segment over IPv6 with `payload` bytes.
fn tcp6_data(macs: Macs, from: SocketAddrV6, to: SocketAddrV6, payload: usize) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv6(from.ip().octets(), to.ip().octets(), 64)
        .tcp(from.port(), to.port(), 1, 64240)
        .ack(1)
        .write(&mut f, &vec![0x5a; payload])
        .expect("writing an IPv6 frame");
    f
}

/// An ICMPv6 error of `kind` from `from` to `to` quoting `about`'s IPv6 packet
/// (cut to `quoted` bytes).
fn icmp6_error(
    macs: Macs,
    from: Ipv6Addr,
    to: Ipv6Addr,
    kind: etherparse::Icmpv6Type,
    about: &[u8],
    quoted: usize,
) -> Vec<u8> {
    let packet = &about[14..];
    let mut f = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv6(from.octets(), to.octets(), 64)
        .icmpv6(kind)
        .write(&mut f, &packet[..quoted.min(packet.len())])
        .expect("writing an ICMPv6 error");
    f
}

/// An ICMPv6 message of `icmp_type` carrying `body` (neighbour discovery is not
/// among etherparse 0.16's types; the program reads only the IPv6 header).
fn icmp6(macs: Macs, from: Ipv6Addr, to: Ipv6Addr, icmp_type: u8, body: &[u8]) -> Vec<u8> {
    let kind = etherparse::Icmpv6Type::Unknown {
        type_u8: icmp_type,
        code_u8: 0,
        bytes5to8: [0; 4],
    };
    let mut f = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv6(from.octets(), to.octets(), 255)
        .icmpv6(kind)
        .write(&mut f, body)
        .expect("writing an ICMPv6 frame");
    f
}

/// `frame` (IPv6, no extension header) with an 8-byte extension header of type
/// `next` (hop-by-hop, destination options, fragment, ...) inserted before its
/// upper-layer header; next header and payload length follow.
fn with_ext_header(frame: &[u8], next: u8) -> Vec<u8> {
    let upper = frame[20];
    let mut f = frame[..54].to_vec();
    f[20] = next;
    let len = u16::from_be_bytes([f[18], f[19]]) + 8;
    f[18..20].copy_from_slice(&len.to_be_bytes());
    // Next header, then six bytes (a PadN option or a fragment's offset and id).
    f.extend_from_slice(&[upper, 0, 1, 4, 0, 0, 0, 0]);
    f.extend_from_slice(&frame[54..]);
    f
}

/// An ARP request from `from` for `to` (etherparse 0.16 builds no ARP).
fn arp_request(macs: Macs, from: Ipv4Addr, to: Ipv4Addr) -> Vec<u8> {
    let eth = Ethernet2Header {
        source: macs.0,
        destination: [0xff; 6],
        ether_type: EtherType::ARP,
    };
    let mut f = eth.to_bytes().to_vec();
    // Ethernet, IPv4, 6- and 4-byte addresses, request.
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&macs.0);
    f.extend_from_slice(&from.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&to.octets());
    f
}

/// `frame` with the IPv4 header length field (in 32-bit words) set to `ihl`.
fn with_ihl(frame: Vec<u8>, ihl: u8) -> Vec<u8> {
    Frame::from_bytes(frame).set_ihl(ihl).as_bytes().to_vec()
}

/// The first `len` bytes of `frame`.
fn cut(frame: Vec<u8>, len: usize) -> Vec<u8> {
    Frame::from_bytes(frame).truncate(len).as_bytes().to_vec()
}

/// A non-first fragment: offset 185 (1480 bytes in), more to come.
fn later_fragment(spec: &mut FrameSpec) -> Frame {
    let mut f = spec.build();
    f.set_fragment(true, 185).reseal_ip_checksum();
    f
}

/// The first fragment: offset 0, more to come; its TCP ports are there.
fn first_fragment(spec: &mut FrameSpec) -> Frame {
    let mut f = spec.build();
    f.set_fragment(true, 0).reseal_ip_checksum();
    f
}

/// Four bytes of IP options (no-ops and an end), IHL 6.
fn ip_options(spec: &mut FrameSpec) -> Frame {
    spec.ip_options = vec![1, 1, 1, 0];
    spec.build()
}

#[derive(Clone, Copy, Debug)]
enum Iface {
    Front,
    Back,
    /// In the namespace but neither front nor back: its loopback.
    Other,
}

struct Row {
    name: &'static str,
    iface: Iface,
    queue: u32,
    frame: Vec<u8>,
    verdict: u32,
    /// Counters that go up by one; every other stays.
    counts: &'static [&'static str],
    /// The frame the program leaves, where it rewrites; unchanged otherwise.
    out: Option<Vec<u8>>,
}

fn row(
    name: &'static str,
    iface: Iface,
    queue: u32,
    frame: Vec<u8>,
    verdict: u32,
    counts: &'static [&'static str],
) -> Row {
    Row {
        name,
        iface,
        queue,
        frame,
        verdict,
        counts,
        out: None,
    }
}

impl Row {
    fn leaves(mut self, out: Vec<u8>) -> Row {
        self.out = Some(out);
        self
    }
}

// One row a line or two: name, interface, rx queue; frame; verdict, counters
// moved by one; the frame left, where the program rewrites it.
#[rustfmt::skip]
fn table() -> Vec<Row> {
    use Iface::{Back, Front, Other};
    let other_port = SocketAddrV4::new(VIP, 22);
    let elsewhere = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 80);
    let daemon = DAEMONS[0];
    let stranger = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 99), 8080);
    let probe = SocketAddrV4::new(BACK_ADDR, 50000);
    let syn = tcp(FROM_CLIENT, CLIENT, SERVICE);
    let with_options = tcp_with(FROM_CLIENT, CLIENT, SERVICE, ip_options);
    let reply = tcp(FROM_DAEMON, daemon, CLIENT);
    let rewritten = tcp(TO_CLIENT, daemon, CLIENT);
    // ICMP errors: the quoted segments, as the network saw them.
    let seen_reply = tcp(FROM_CLIENT, SERVICE, CLIENT);
    let seen_forwarded = tcp(FROM_DAEMON, CLIENT, daemon);
    let frag = IcmpKind::FragNeeded { mtu: 1280 };
    let to_vip = |kind, about: &[u8], quoted| icmp_error(FROM_CLIENT, ROUTER, VIP, kind, about, quoted);
    let on_back = |to: Ipv4Addr, kind, about: &[u8]| icmp_error(FROM_DAEMON, ROUTER, to, kind, about, 28);
    // A reply that does not fit the narrow route, and the answer the program
    // must build from it: back to the daemon, from the back's address, quoting
    // the reply's IPv4 header and 8 bytes.
    let too_big = full_size(FROM_DAEMON, daemon, NARROW).build().into_bytes();
    let frag_needed = IcmpSpec {
        src_mac: BACK_MAC,
        dst_mac: BACK_PEER_MAC,
        src: BACK_ADDR,
        dst: *daemon.ip(),
        ttl: 64,
        tos: 0xc0,
        kind: IcmpKind::FragNeeded { mtu: NARROW_MTU },
        quote: Frame::from_bytes(too_big.clone()).ip_packet()[..28].to_vec(),
    }
    .build()
    .into_bytes();
    let too_big_no_df = FrameSpec { dont_fragment: false, ..full_size(FROM_DAEMON, daemon, NARROW) }.build().into_bytes();
    let too_big_options = FrameSpec { ip_options: vec![1, 1, 1, 0], ..full_size(FROM_DAEMON, daemon, NARROW) }.build().into_bytes();
    let fits_narrow = FrameSpec { payload: vec![0x5a; 1240], ..full_size(FROM_DAEMON, daemon, NARROW) };
    // The program sets the Ethernet addresses of an error towards the client,
    // as of a reply; the rest is the worker's.
    let towards_client = |mut f: Vec<u8>| {
        f[..6].copy_from_slice(&TO_CLIENT.1);
        f[6..12].copy_from_slice(&TO_CLIENT.0);
        f
    };
    let error_to_client = on_back(*CLIENT.ip(), frag, &seen_forwarded);
    let time_exceeded = on_back(*CLIENT.ip(), IcmpKind::TimeExceeded, &seen_forwarded);
    // UDP: a datagram to the UDP service, its daemon's reply, and errors about them.
    let datagram = udp(FROM_CLIENT, CLIENT, UDP_SERVICE);
    let udp_reply = udp(FROM_DAEMON, UDP_DAEMON, CLIENT);
    let udp_unreachable = on_back(*CLIENT.ip(), IcmpKind::PortUnreachable, &udp(FROM_DAEMON, CLIENT, UDP_DAEMON));
    let udp_fragment = |to| {
        let mut f = FrameSpec { src_mac: FROM_CLIENT.0, dst_mac: FROM_CLIENT.1, payload: b"ping".to_vec(), ..FrameSpec::udp(CLIENT, to) }.build();
        f.set_fragment(true, 185).reseal_ip_checksum();
        f.into_bytes()
    };
    let bad_udp_len = |len| {
        let mut f = Frame::from_bytes(datagram.clone());
        f.set_udp_len(len);
        f.into_bytes()
    };
    let syn6 = l4_6(FROM_CLIENT, CLIENT6, SERVICE6, false);
    let solicited_node = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 0x100);
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let all_routers = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
    let router_ll = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
    // The IPv6 back path.
    use etherparse::{Icmpv6Type as T6, icmpv6::{DestUnreachableCode as Unreach6, TimeExceededCode}};
    let reply6 = l4_6(FROM_DAEMON, DAEMON6, CLIENT6B, false);
    let rewritten6 = l4_6(TO_CLIENT, DAEMON6, CLIENT6B, false);
    let reply6_to = |to: SocketAddrV6| l4_6(FROM_DAEMON, DAEMON6, to, false);
    let too_big6 = tcp6_data(FROM_DAEMON, DAEMON6, NARROW6, 1300);
    let packet_too_big = icmp6_error((BACK_MAC, BACK_PEER_MAC), BACK_ADDR6, *DAEMON6.ip(), T6::PacketTooBig { mtu: NARROW_MTU.into() }, &too_big6, 48);
    let fits_narrow6 = |macs| tcp6_data(macs, DAEMON6, NARROW6, usize::from(NARROW_MTU) - 40 - 20);
    let forwarded6 = l4_6(FROM_DAEMON, CLIENT6B, DAEMON6, false);
    let on_back6 = |to: Ipv6Addr, kind, about: &[u8]| icmp6_error(FROM_DAEMON, ROUTER6, to, kind, about, 48);
    let unreachable6 = on_back6(*CLIENT6B.ip(), T6::DestinationUnreachable(Unreach6::Address), &forwarded6);
    let udp_unreachable6 = on_back6(*CLIENT6B.ip(), T6::DestinationUnreachable(Unreach6::Port), &l4_6(FROM_DAEMON, CLIENT6B, UDP_DAEMON6, true));
    let to_vip6 = |kind, about: &[u8], quoted| icmp6_error(FROM_CLIENT, *CLIENT6B.ip(), VIP6B, kind, about, quoted);
    let seen_reply6 = l4_6(FROM_CLIENT, SERVICE6B, CLIENT6B, false);
    vec![
        // IPv6 on the back: daemons6, the FIB with AF_INET6.
        row("IPv6 daemon's reply, route and neighbour", Back, 0, reply6.clone(),
            XDP_REDIRECT, &["back6_steered"]).leaves(rewritten6.clone()),
        row("IPv6 UDP daemon's reply", Back, 0, l4_6(FROM_DAEMON, UDP_DAEMON6, CLIENT6B, true),
            XDP_REDIRECT, &["back6_steered"]).leaves(l4_6(TO_CLIENT, UDP_DAEMON6, CLIENT6B, true)),
        row("IPv6 daemon's reply on a queue without socket", Back, 1, reply6.clone(),
            XDP_DROP, &["no_socket"]).leaves(rewritten6),
        row("IPv6 daemon's reply, no neighbour", Back, 0, reply6_to(UNRESOLVED6),
            XDP_DROP, &["fib_no_neigh"]),
        row("IPv6 daemon's reply via a link-local router without neighbour", Back, 0, reply6_to(BEHIND_ROUTER6),
            XDP_DROP, &["fib_no_neigh"]),
        row("IPv6 daemon's reply to a blackholed network", Back, 0, reply6_to(BLACKHOLED6),
            XDP_DROP, &["fib_failed"]),
        row("IPv6 daemon's reply, no route", Back, 0, reply6_to(UNROUTED6),
            XDP_PASS, &["back_to_host", "passed"]),
        row("IPv6 daemon's reply to the back's own address", Back, 0, reply6_to(SocketAddrV6::new(BACK_ADDR6, 50000, 0, 0)),
            XDP_PASS, &["back_to_host", "passed"]),
        row("IPv6 daemon's reply to the VIP", Back, 0, reply6_to(SocketAddrV6::new(VIP6B, 50000, 0, 0)),
            XDP_PASS, &["back_to_host", "passed"]),
        row("IPv6 daemon's reply to an address routed to loopback", Back, 0, reply6_to(SocketAddrV6::new(LOOPBACK_ROUTED6, 50000, 0, 0)),
            XDP_PASS, &["back_to_host", "passed"]),
        row("IPv6 daemon's reply to a link-local address", Back, 0, reply6_to(SocketAddrV6::new(router_ll, 50000, 0, 0)),
            XDP_PASS, &["back_to_host", "passed"]),
        row("IPv6 daemon's reply to a host on the back's network", Back, 0, reply6_to(SocketAddrV6::new(ROUTER6, 50000, 0, 0)),
            XDP_PASS, &["back_not_front", "passed"]),
        row("IPv6 daemon's reply to a network of a third interface", Back, 0, reply6_to(OTHER_HOST6),
            XDP_PASS, &["back_not_front", "passed"]),
        row("IPv6 reply from a non-daemon address", Back, 0, l4_6(FROM_DAEMON, SocketAddrV6::new(ROUTER6, 8080, 0, 0), CLIENT6B, false),
            XDP_PASS, &["ipv6", "passed"]),
        row("IPv6 TCP from the UDP daemon's address and port", Back, 0, l4_6(FROM_DAEMON, UDP_DAEMON6, CLIENT6B, false),
            XDP_PASS, &["ipv6", "passed"]),
        row("IPv6 daemon's reply behind a hop-by-hop header", Back, 0, with_ext_header(&reply6, 0),
            XDP_PASS, &["ipv6", "passed"]),
        row("IPv6 daemon's reply cut before the ports", Back, 0, cut(reply6.clone(), 14 + 40 + 3),
            XDP_PASS, &["ipv6", "passed"]),
        row("IPv6 header cut on the back", Back, 0, cut(reply6.clone(), 14 + 39),
            XDP_PASS, &["truncated", "passed"]),
        row("IPv6 reply that fits the narrow route", Back, 0, fits_narrow6(FROM_DAEMON),
            XDP_REDIRECT, &["back6_steered"]).leaves(fits_narrow6(TO_CLIENT)),
        row("IPv6 reply too big for the narrow route", Back, 0, too_big6,
            XDP_TX, &["packet_too_big_sent"]).leaves(packet_too_big),
        row("neighbour solicitation from a daemon", Back, 0, icmp6(FROM_DAEMON, *DAEMON6.ip(), solicited_node, 135, &[0; 20]),
            XDP_PASS, &["ipv6", "passed"]),
        row("ICMPv6 echo from a daemon", Back, 0, icmp6(FROM_DAEMON, *DAEMON6.ip(), *CLIENT6B.ip(), 128, &[0; 4]),
            XDP_PASS, &["ipv6", "passed"]),
        // ICMPv6 errors on the back about a segment to a daemon: the reply's way.
        row("ICMPv6 unreachable about a client's segment", Back, 0, unreachable6.clone(),
            XDP_REDIRECT, &["icmp6_back_steered"]).leaves(towards_client(unreachable6)),
        row("ICMPv6 port unreachable about a datagram to the UDP daemon", Back, 0, udp_unreachable6.clone(),
            XDP_REDIRECT, &["icmp6_back_steered"]).leaves(towards_client(udp_unreachable6)),
        row("ICMPv6 error about a client's segment, no neighbour", Back, 0, on_back6(*UNRESOLVED6.ip(), T6::TimeExceeded(TimeExceededCode::HopLimitExceeded), &l4_6(FROM_DAEMON, UNRESOLVED6, DAEMON6, false)),
            XDP_DROP, &["fib_no_neigh"]),
        row("ICMPv6 error about a health probe, to the back's address", Back, 0, on_back6(BACK_ADDR6, T6::DestinationUnreachable(Unreach6::Port), &l4_6(FROM_DAEMON, SocketAddrV6::new(BACK_ADDR6, 50000, 0, 0), DAEMON6, false)),
            XDP_PASS, &["back_to_host", "passed"]),
        row("ICMPv6 error about a segment to a non-daemon", Back, 0, on_back6(*CLIENT6B.ip(), T6::DestinationUnreachable(Unreach6::Port), &l4_6(FROM_DAEMON, CLIENT6B, SocketAddrV6::new(ROUTER6, 8080, 0, 0), false)),
            XDP_PASS, &["ipv6", "passed"]),
        row("ICMPv6 error quoting fewer than 8 bytes of TCP", Back, 0, icmp6_error(FROM_DAEMON, ROUTER6, *CLIENT6B.ip(), T6::DestinationUnreachable(Unreach6::Address), &forwarded6, 44),
            XDP_PASS, &["ipv6", "passed"]),
        // ICMPv6 errors on the front about a service's reply: the loop's.
        row("ICMPv6 packet too big about a service's reply", Front, 0, to_vip6(T6::PacketTooBig { mtu: 1280 }, &seen_reply6, 48),
            XDP_REDIRECT, &["icmp6_front_steered"]),
        row("ICMPv6 port unreachable about a UDP service's reply", Front, 0, to_vip6(T6::DestinationUnreachable(Unreach6::Port), &l4_6(FROM_CLIENT, UDP_SERVICE6B, CLIENT6B, true), 48),
            XDP_REDIRECT, &["icmp6_front_steered"]),
        row("ICMPv6 error about a reply, queue without socket", Front, 1, to_vip6(T6::PacketTooBig { mtu: 1280 }, &seen_reply6, 48),
            XDP_DROP, &["no_socket"]),
        row("ICMPv6 error about a reply from another port of the VIP", Front, 0, to_vip6(T6::PacketTooBig { mtu: 1280 }, &l4_6(FROM_CLIENT, SocketAddrV6::new(VIP6B, 22, 0, 0), CLIENT6B, false), 48),
            XDP_PASS, &["ipv6", "passed"]),
        row("ICMPv6 error about a reply, quote cut", Front, 0, to_vip6(T6::PacketTooBig { mtu: 1280 }, &seen_reply6, 40),
            XDP_PASS, &["ipv6", "passed"]),
        row("ICMPv6 packet too big about a reply, on another interface", Other, 0, to_vip6(T6::PacketTooBig { mtu: 1280 }, &seen_reply6, 48),
            XDP_PASS, &["ipv6", "passed"]),

        // UDP on the front: steered only to a UDP service; the length field is
        // the workers' to judge (counted there by reason).
        row("UDP to the UDP service", Front, 0, datagram.clone(),
            XDP_REDIRECT, &["front_steered"]),
        row("UDP to the UDP service, queue without socket", Front, 1, datagram.clone(),
            XDP_DROP, &["no_socket"]),
        row("TCP to the UDP-only port", Front, 0, tcp(FROM_CLIENT, CLIENT, UDP_SERVICE),
            XDP_PASS, &["passed"]),
        row("UDP with a length field beyond the frame", Front, 0, bad_udp_len(400),
            XDP_REDIRECT, &["front_steered"]),
        row("UDP with a length field below its header", Front, 0, bad_udp_len(3),
            XDP_REDIRECT, &["front_steered"]),
        row("UDP cut inside its header, after the ports", Front, 0, cut(datagram.clone(), 14 + 20 + 5),
            XDP_REDIRECT, &["front_steered"]),
        row("UDP to the VIP cut before the ports", Front, 0, cut(datagram.clone(), 14 + 20 + 3),
            XDP_DROP, &["vip_malformed"]),
        row("non-first UDP fragment to the VIP", Front, 0, udp_fragment(UDP_SERVICE),
            XDP_DROP, &["vip_fragment"]),
        row("non-first UDP fragment to a VIP without UDP services", Front, 0, udp_fragment(SocketAddrV4::new(TCP_ONLY_VIP, 53)),
            XDP_PASS, &["passed"]),
        row("UDP cut before the ports, to a VIP without UDP services", Front, 0, cut(udp(FROM_CLIENT, CLIENT, SocketAddrV4::new(TCP_ONLY_VIP, 80)), 14 + 20 + 3),
            XDP_PASS, &["passed"]),
        row("port unreachable about a UDP reply", Front, 0, to_vip(IcmpKind::PortUnreachable, &udp(FROM_CLIENT, UDP_SERVICE, CLIENT), 28),
            XDP_REDIRECT, &["icmp_front_steered"]),
        // UDP on the back.
        row("UDP daemon's reply", Back, 0, udp_reply.clone(),
            XDP_REDIRECT, &["back_steered"]).leaves(udp(TO_CLIENT, UDP_DAEMON, CLIENT)),
        row("TCP from the UDP daemon's address and port", Back, 0, tcp(FROM_DAEMON, UDP_DAEMON, CLIENT),
            XDP_PASS, &["passed"]),
        row("UDP daemon's reply, no neighbour", Back, 0, udp(FROM_DAEMON, UDP_DAEMON, UNRESOLVED),
            XDP_DROP, &["fib_no_neigh"]),
        row("port unreachable about a datagram to the UDP daemon", Back, 0, udp_unreachable.clone(),
            XDP_REDIRECT, &["icmp_back_steered"]).leaves(towards_client(udp_unreachable)),

        // The front.
        row("service SYN", Front, 0, syn.clone(),
            XDP_REDIRECT, &["front_steered"]),
        row("service SYN with IP options", Front, 0, with_options.clone(),
            XDP_REDIRECT, &["front_steered"]),
        row("first fragment to the service", Front, 0, tcp_with(FROM_CLIENT, CLIENT, SERVICE, first_fragment),
            XDP_REDIRECT, &["front_steered"]),
        row("service SYN on a queue without socket", Front, 1, syn.clone(),
            XDP_DROP, &["no_socket"]),
        row("service SYN on queue MAX_QUEUES - 1, without socket", Front, MAX_QUEUES - 1, syn.clone(),
            XDP_DROP, &["no_socket"]),
        row("service SYN on queue MAX_QUEUES", Front, MAX_QUEUES, syn.clone(),
            XDP_PASS, &["passed"]),
        row("service SYN on the device's last queue", Front, FRONT_QUEUES - 1, syn.clone(),
            XDP_PASS, &["passed"]),
        row("TCP to a non-VIP address", Front, 0, tcp(FROM_CLIENT, CLIENT, elsewhere),
            XDP_PASS, &["passed"]),
        row("TCP to the VIP, another port", Front, 0, tcp(FROM_CLIENT, CLIENT, other_port),
            XDP_PASS, &["passed"]),
        row("UDP to the VIP's service port", Front, 0, udp(FROM_CLIENT, CLIENT, SERVICE),
            XDP_PASS, &["passed"]),
        row("ICMP echo to the VIP", Front, 0, icmp_echo(FROM_CLIENT, *CLIENT.ip(), VIP),
            XDP_PASS, &["passed"]),
        row("ARP request for the VIP", Front, 0, arp_request(FROM_CLIENT, *CLIENT.ip(), VIP),
            XDP_PASS, &["passed"]),
        row("daemon reply arriving on the front", Front, 0, tcp(FROM_CLIENT, daemon, CLIENT),
            XDP_PASS, &["passed"]),
        row("IHL 4 to the VIP", Front, 0, with_ihl(syn.clone(), 4),
            XDP_DROP, &["vip_malformed"]),
        row("IHL 0 to the VIP", Front, 0, with_ihl(syn.clone(), 0),
            XDP_DROP, &["vip_malformed"]),
        row("VIP frame cut before the ports", Front, 0, cut(syn.clone(), 14 + 20 + 3),
            XDP_DROP, &["vip_malformed"]),
        row("VIP frame with options cut before the ports", Front, 0, cut(with_options, 14 + 24 + 3),
            XDP_DROP, &["vip_malformed"]),
        row("non-first fragment to the VIP", Front, 0, tcp_with(FROM_CLIENT, CLIENT, SERVICE, later_fragment),
            XDP_DROP, &["vip_fragment"]),
        row("IHL 4 to a non-VIP address", Front, 0, with_ihl(tcp(FROM_CLIENT, CLIENT, elsewhere), 4),
            XDP_PASS, &["passed"]),
        row("non-VIP frame cut before the ports", Front, 0, cut(tcp(FROM_CLIENT, CLIENT, elsewhere), 14 + 20 + 3),
            XDP_PASS, &["passed"]),
        row("non-first fragment to a non-VIP address", Front, 0, tcp_with(FROM_CLIENT, CLIENT, elsewhere, later_fragment),
            XDP_PASS, &["passed"]),
        // A reason and `passed` both: the reason says why, `passed` counts every
        // XDP_PASS.
        row("Ethernet header alone, IPv4 type", Front, 0, cut(syn.clone(), 14),
            XDP_PASS, &["truncated", "passed"]),
        row("IPv4 header cut before the addresses", Front, 0, cut(syn.clone(), 14 + 12),
            XDP_PASS, &["truncated", "passed"]),
        row("IPv4 header one byte short", Front, 0, cut(syn.clone(), 14 + 19),
            XDP_PASS, &["truncated", "passed"]),
        row("802.1Q-tagged service SYN", Front, 0, tcp_vlan(FROM_CLIENT, CLIENT, SERVICE, false),
            XDP_PASS, &["vlan", "passed"]),
        row("802.1ad-tagged service SYN", Front, 0, tcp_vlan(FROM_CLIENT, CLIENT, SERVICE, true),
            XDP_PASS, &["vlan", "passed"]),
        row("IPv6 TCP to the service port", Front, 0, tcp6(FROM_CLIENT, CLIENT, SERVICE),
            XDP_PASS, &["ipv6", "passed"]),
        // IPv6: services6 and the VIPs of IPv6 services; the rest is the host's.
        row("IPv6 service SYN", Front, 0, syn6.clone(),
            XDP_REDIRECT, &["front6_steered"]),
        row("IPv6 UDP to the UDP service", Front, 0, l4_6(FROM_CLIENT, CLIENT6, UDP_SERVICE6, true),
            XDP_REDIRECT, &["front6_steered"]),
        row("IPv6 service SYN on a queue without socket", Front, 1, syn6.clone(),
            XDP_DROP, &["no_socket"]),
        row("IPv6 service SYN on queue MAX_QUEUES", Front, MAX_QUEUES, syn6.clone(),
            XDP_PASS, &["passed"]),
        row("IPv6 UDP to the TCP service's port", Front, 0, l4_6(FROM_CLIENT, CLIENT6, SERVICE6, true),
            XDP_PASS, &["ipv6", "passed"]),
        row("IPv6 TCP to the UDP service's port", Front, 0, l4_6(FROM_CLIENT, CLIENT6, UDP_SERVICE6, false),
            XDP_PASS, &["ipv6", "passed"]),
        row("IPv6 TCP to the VIP, another port", Front, 0, l4_6(FROM_CLIENT, CLIENT6, SocketAddrV6::new(VIP6, 22, 0, 0), false),
            XDP_PASS, &["ipv6", "passed"]),
        row("IPv6 TCP to a non-VIP address", Front, 0, l4_6(FROM_CLIENT, CLIENT6, SocketAddrV6::new(*CLIENT6.ip(), 80, 0, 0), false),
            XDP_PASS, &["ipv6", "passed"]),
        row("neighbour solicitation for the VIP (solicited-node multicast)", Front, 0, icmp6(FROM_CLIENT, *CLIENT6.ip(), solicited_node, 135, &VIP6.octets()),
            XDP_PASS, &["ipv6", "passed"]),
        row("neighbour solicitation to the VIP (unicast, unreachability detection)", Front, 0, icmp6(FROM_CLIENT, *CLIENT6.ip(), VIP6, 135, &VIP6.octets()),
            XDP_PASS, &["ipv6", "passed"]),
        row("neighbour advertisement to the VIP", Front, 0, icmp6(FROM_CLIENT, *CLIENT6.ip(), VIP6, 136, &CLIENT6.ip().octets()),
            XDP_PASS, &["ipv6", "passed"]),
        row("router advertisement", Front, 0, icmp6(FROM_CLIENT, router_ll, all_nodes, 134, &[0; 8]),
            XDP_PASS, &["ipv6", "passed"]),
        row("router solicitation", Front, 0, icmp6(FROM_CLIENT, *CLIENT6.ip(), all_routers, 133, &[0; 4]),
            XDP_PASS, &["ipv6", "passed"]),
        row("ICMPv6 echo to the VIP", Front, 0, icmp6(FROM_CLIENT, *CLIENT6.ip(), VIP6, 128, &[0, 1, 0, 1]),
            XDP_PASS, &["ipv6", "passed"]),
        row("IPv6 packet too big to the VIP", Front, 0, icmp6(FROM_CLIENT, *CLIENT6.ip(), VIP6, 2, &syn6[14..]),
            XDP_PASS, &["ipv6", "passed"]),
        row("IPv6 service SYN behind a hop-by-hop header", Front, 0, with_ext_header(&syn6, 0),
            XDP_DROP, &["vip6_ext_header"]),
        row("IPv6 service SYN behind a fragment header", Front, 0, with_ext_header(&syn6, 44),
            XDP_DROP, &["vip6_ext_header"]),
        row("IPv6 UDP service behind destination options", Front, 0, with_ext_header(&l4_6(FROM_CLIENT, CLIENT6, UDP_SERVICE6, true), 60),
            XDP_DROP, &["vip6_ext_header"]),
        row("IPv6 extension header to a non-VIP address", Front, 0, with_ext_header(&l4_6(FROM_CLIENT, CLIENT6, SocketAddrV6::new(*CLIENT6.ip(), 80, 0, 0), false), 0),
            XDP_PASS, &["ipv6", "passed"]),
        row("IPv6 no next header to the VIP", Front, 0, { let mut f = syn6.clone(); f[20] = 59; f },
            XDP_PASS, &["ipv6", "passed"]),
        row("IPv6 to the VIP cut before the ports", Front, 0, cut(syn6.clone(), 14 + 40 + 3),
            XDP_DROP, &["vip_malformed"]),
        row("IPv6 header cut", Front, 0, cut(syn6.clone(), 14 + 39),
            XDP_PASS, &["truncated", "passed"]),
        row("IPv6 service SYN on the back", Back, 0, syn6.clone(),
            XDP_PASS, &["ipv6", "passed"]),
        row("IPv6 service SYN on another interface", Other, 0, syn6,
            XDP_PASS, &["ipv6", "passed"]),
        // ICMP errors to the VIP: about a service's reply, to the front socket.
        row("fragmentation needed about a reply", Front, 0, to_vip(frag, &seen_reply, 28),
            XDP_REDIRECT, &["icmp_front_steered"]),
        row("time exceeded about a reply, whole reply quoted", Front, 0, to_vip(IcmpKind::TimeExceeded, &seen_reply, 1500),
            XDP_REDIRECT, &["icmp_front_steered"]),
        row("port unreachable about a reply", Front, 0, to_vip(IcmpKind::PortUnreachable, &seen_reply, 28),
            XDP_REDIRECT, &["icmp_front_steered"]),
        row("parameter problem about a reply", Front, 0, to_vip(IcmpKind::ParameterProblem { pointer: 8 }, &seen_reply, 28),
            XDP_REDIRECT, &["icmp_front_steered"]),
        row("fragmentation needed about a reply, queue without socket", Front, 1, to_vip(frag, &seen_reply, 28),
            XDP_DROP, &["no_socket"]),
        row("source quench about a reply", Front, 0, to_vip(IcmpKind::SourceQuench, &seen_reply, 28),
            XDP_PASS, &["passed"]),
        row("error quoting 7 bytes of TCP", Front, 0, to_vip(frag, &seen_reply, 27),
            XDP_PASS, &["passed"]),
        row("error about the VIP's other port", Front, 0, to_vip(frag, &tcp(FROM_CLIENT, other_port, CLIENT), 28),
            XDP_PASS, &["passed"]),
        row("error about UDP from the service port", Front, 0, to_vip(frag, &udp(FROM_CLIENT, SERVICE, CLIENT), 28),
            XDP_PASS, &["passed"]),
        row("error quoting a header with options", Front, 0, to_vip(frag, &tcp_with(FROM_CLIENT, SERVICE, CLIENT, ip_options), 32),
            XDP_PASS, &["passed"]),
        row("error quoting a later fragment", Front, 0, to_vip(frag, &tcp_with(FROM_CLIENT, SERVICE, CLIENT, later_fragment), 28),
            XDP_PASS, &["passed"]),
        row("error about a reply, to a non-VIP address", Front, 0, icmp_error(FROM_CLIENT, ROUTER, *elsewhere.ip(), frag, &seen_reply, 28),
            XDP_PASS, &["passed"]),
        row("error about a reply, outer header with options", Front, 0, with_outer_options(&to_vip(frag, &seen_reply, 28)),
            XDP_PASS, &["passed"]),
        // The back.
        row("daemon reply, route and neighbour", Back, 0, reply.clone(),
            XDP_REDIRECT, &["back_steered"]).leaves(rewritten.clone()),
        row("second daemon's reply", Back, 0, tcp(FROM_DAEMON, DAEMONS[1], CLIENT),
            XDP_REDIRECT, &["back_steered"]).leaves(tcp(TO_CLIENT, DAEMONS[1], CLIENT)),
        row("daemon reply on a queue without socket", Back, 1, reply.clone(),
            XDP_DROP, &["no_socket"]).leaves(rewritten),
        // Noted for the loop to resolve: the client itself, or its gateway.
        row("daemon reply, no neighbour", Back, 0, tcp(FROM_DAEMON, daemon, UNRESOLVED),
            XDP_DROP, &["fib_no_neigh"]),
        row("daemon reply via a gateway without neighbour", Back, 0, tcp(FROM_DAEMON, daemon, BEHIND_GATEWAY),
            XDP_DROP, &["fib_no_neigh"]),
        row("daemon reply to a blackholed network", Back, 0, tcp(FROM_DAEMON, daemon, BLACKHOLED),
            XDP_DROP, &["fib_failed"]),
        // The host's own: whatever the kernel would not route out.
        row("daemon reply, no route", Back, 0, tcp(FROM_DAEMON, daemon, UNROUTED),
            XDP_PASS, &["back_to_host", "passed"]),
        row("daemon reply to the back's own address", Back, 0, tcp(FROM_DAEMON, daemon, probe),
            XDP_PASS, &["back_to_host", "passed"]),
        row("daemon reply to the front's own address", Back, 0, tcp(FROM_DAEMON, daemon, SocketAddrV4::new(FRONT_ADDR, 50000)),
            XDP_PASS, &["back_to_host", "passed"]),
        row("daemon reply to the VIP", Back, 0, tcp(FROM_DAEMON, daemon, SocketAddrV4::new(VIP, 50000)),
            XDP_PASS, &["back_to_host", "passed"]),
        row("daemon reply to an address routed to loopback", Back, 0, tcp(FROM_DAEMON, daemon, SocketAddrV4::new(LOOPBACK_ROUTED, 50000)),
            XDP_PASS, &["back_to_host", "passed"]),
        row("daemon reply to 127.0.0.1", Back, 0, tcp(FROM_DAEMON, daemon, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 50000)),
            XDP_PASS, &["back_to_host", "passed"]),
        // Routed out of another interface: hosts that talk to the daemon directly.
        row("daemon reply to a host on the back's network", Back, 0, tcp(FROM_DAEMON, daemon, BACK_HOST),
            XDP_PASS, &["back_not_front", "passed"]),
        row("daemon reply to a network of a third interface", Back, 0, tcp(FROM_DAEMON, daemon, OTHER_HOST),
            XDP_PASS, &["back_not_front", "passed"]),
        row("reply from a non-daemon address", Back, 0, tcp(FROM_DAEMON, stranger, CLIENT),
            XDP_PASS, &["passed"]),
        row("reply from a daemon's address, another port", Back, 0, tcp(FROM_DAEMON, SocketAddrV4::new(*daemon.ip(), 9999), CLIENT),
            XDP_PASS, &["passed"]),
        row("daemon UDP", Back, 0, udp(FROM_DAEMON, daemon, CLIENT),
            XDP_PASS, &["passed"]),
        row("daemon reply cut before the ports", Back, 0, cut(reply.clone(), 14 + 20 + 3),
            XDP_PASS, &["passed"]),
        row("daemon reply, non-first fragment", Back, 0, tcp_with(FROM_DAEMON, daemon, CLIENT, later_fragment),
            XDP_PASS, &["passed"]),
        row("802.1Q-tagged daemon reply", Back, 0, tcp_vlan(FROM_DAEMON, daemon, CLIENT, false),
            XDP_PASS, &["vlan", "passed"]),
        // Replies and the front route's MTU.
        row("reply that fits the narrow route", Back, 0, fits_narrow.build().into_bytes(),
            XDP_REDIRECT, &["back_steered"]).leaves(FrameSpec { src_mac: TO_CLIENT.0, dst_mac: TO_CLIENT.1, ..fits_narrow }.build().into_bytes()),
        row("reply too big for the narrow route", Back, 0, too_big,
            XDP_TX, &["frag_needed_sent"]).leaves(frag_needed),
        row("reply too big for the narrow route, DF clear", Back, 0, too_big_no_df,
            XDP_DROP, &["too_big"]),
        row("reply too big for the narrow route, IP options", Back, 0, too_big_options,
            XDP_DROP, &["too_big"]),
        // ICMP errors on the back: about a segment to a daemon, to the back socket.
        row("fragmentation needed about a client's segment", Back, 0, error_to_client.clone(),
            XDP_REDIRECT, &["icmp_back_steered"]).leaves(towards_client(error_to_client.clone())),
        row("time exceeded about a client's segment", Back, 0, time_exceeded.clone(),
            XDP_REDIRECT, &["icmp_back_steered"]).leaves(towards_client(time_exceeded)),
        row("error about a client's segment, no neighbour", Back, 0, on_back(*UNRESOLVED.ip(), frag, &tcp(FROM_DAEMON, UNRESOLVED, daemon)),
            XDP_DROP, &["fib_no_neigh"]),
        // As a reply with no route: the kernel's (which answers it, or not).
        row("error about a client's segment, no route", Back, 0, on_back(*UNROUTED.ip(), frag, &tcp(FROM_DAEMON, UNROUTED, daemon)),
            XDP_PASS, &["back_to_host", "passed"]),
        row("error about a health probe, to the back's address", Back, 0, on_back(BACK_ADDR, frag, &tcp(FROM_DAEMON, probe, daemon)),
            XDP_PASS, &["back_to_host", "passed"]),
        row("error about a segment to a non-daemon", Back, 0, on_back(*CLIENT.ip(), frag, &tcp(FROM_DAEMON, CLIENT, stranger)),
            XDP_PASS, &["passed"]),
        row("source quench about a client's segment", Back, 0, on_back(*CLIENT.ip(), IcmpKind::SourceQuench, &seen_forwarded),
            XDP_PASS, &["passed"]),
        row("ICMP echo on the back", Back, 0, icmp_echo(FROM_DAEMON, *daemon.ip(), *CLIENT.ip()),
            XDP_PASS, &["passed"]),
        row("service SYN arriving on the back", Back, 0, syn.clone(),
            XDP_PASS, &["passed"]),
        // Neither front nor back.
        row("service SYN on another interface", Other, 0, syn,
            XDP_PASS, &["passed"]),
        row("non-first fragment to the VIP on another interface", Other, 0, tcp_with(FROM_CLIENT, CLIENT, SERVICE, later_fragment),
            XDP_PASS, &["passed"]),
        row("daemon reply on another interface", Other, 0, reply,
            XDP_PASS, &["passed"]),
        row("error about a reply on another interface", Other, 0, to_vip(frag, &seen_reply, 28),
            XDP_PASS, &["passed"]),
    ]
}

/// `frame` (an IPv4 frame without options) with four bytes of IPv4 options
/// (no-ops and an end) inserted, IHL, total length and header checksum
/// resealed: the ICMP behind them is left as it was.
fn with_outer_options(frame: &[u8]) -> Vec<u8> {
    let mut f = frame[..34].to_vec();
    f.extend_from_slice(&[1, 1, 1, 0]);
    f.extend_from_slice(&frame[34..]);
    let total = u16::from_be_bytes([f[16], f[17]]) + 4;
    let mut fr = Frame::from_bytes(f);
    fr.set_ihl(6).set_total_len(total);
    let mut f = fr.into_bytes();
    f[24..26].copy_from_slice(&[0, 0]);
    let header = etherparse::Ipv4HeaderSlice::from_slice(&f[14..38]).expect("an IPv4 header");
    let ck = header.to_header().calc_header_checksum();
    f[24..26].copy_from_slice(&ck.to_be_bytes());
    f
}

fn verdict_name(v: u32) -> String {
    match v {
        XDP_PASS => "XDP_PASS".into(),
        XDP_DROP => "XDP_DROP".into(),
        XDP_REDIRECT => "XDP_REDIRECT".into(),
        XDP_TX => "XDP_TX".into(),
        v => format!("verdict {v}"),
    }
}

fn counter_index(name: &str) -> usize {
    COUNTER_NAMES
        .iter()
        .position(|n| *n == name)
        .unwrap_or_else(|| panic!("no counter {name} in COUNTER_NAMES"))
}

/// The counters that moved, by name and delta.
fn moved(delta: &[i128]) -> String {
    let parts: Vec<String> = COUNTER_NAMES
        .iter()
        .zip(delta)
        .filter(|(_, d)| **d != 0)
        .map(|(n, d)| format!("{n} {d:+}"))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// Where two frames first differ, for a failure message.
fn frame_diff(got: &[u8], want: &[u8]) -> String {
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let show = |f: &[u8]| {
        f[at.min(f.len())..f.len().min(at + 8)]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "frames differ at byte {at} (lengths {} and {}): got [{}], expected [{}]",
        got.len(),
        want.len(),
        show(got),
        show(want)
    )
}

/// Rows only the tracked mode reaches, for a program whose tracked map holds
/// one connection: `CLIENT` with `DAEMONS[0]`.
#[rustfmt::skip]
fn tracked_table() -> Vec<Row> {
    use etherparse::{icmpv6::DestUnreachableCode, Icmpv6Type};
    use Iface::Back;
    let tracked = tcp(FROM_DAEMON, DAEMONS[0], CLIENT);
    let probe = SocketAddrV4::new(BACK_ADDR, 50000);
    let direct_port = SocketAddrV4::new(*CLIENT.ip(), 40001);
    // Errors from a router on the back about a client's segment to the daemon,
    // of the tracked connection or of a direct one from another client port.
    let frag = IcmpKind::FragNeeded { mtu: 1280 };
    let error_about = |from| icmp_error(FROM_DAEMON, ROUTER, *CLIENT.ip(), frag, &tcp(FROM_DAEMON, from, DAEMONS[0]), 28);
    let unreachable = Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Address);
    let error6_about = |from| icmp6_error(FROM_DAEMON, ROUTER6, *CLIENT6B.ip(), unreachable, &l4_6(FROM_DAEMON, from, DAEMON6, false), 48);
    let direct_port6 = SocketAddrV6::new(*CLIENT6B.ip(), 40001, 0, 0);
    let towards_client = |mut f: Vec<u8>| {
        f[..6].copy_from_slice(&TO_CLIENT.1);
        f[6..12].copy_from_slice(&TO_CLIENT.0);
        f
    };
    vec![
        row("error about the tracked connection's segment", Back, 0, error_about(CLIENT),
            XDP_REDIRECT, &["icmp_back_steered"]).leaves(towards_client(error_about(CLIENT))),
        row("error about a direct connection's segment", Back, 0, error_about(direct_port),
            XDP_PASS, &["back_untracked", "passed"]),
        row("IPv6 error about the tracked connection's segment", Back, 0, error6_about(CLIENT6B),
            XDP_REDIRECT, &["icmp6_back_steered"]).leaves(towards_client(error6_about(CLIENT6B))),
        row("IPv6 error about a direct connection's segment", Back, 0, error6_about(direct_port6),
            XDP_PASS, &["back_untracked", "passed"]),
        row("reply of the tracked connection", Back, 0, tracked,
            XDP_REDIRECT, &["back_steered"]).leaves(tcp(TO_CLIENT, DAEMONS[0], CLIENT)),
        // The same client and VIP, another daemon: a direct connection.
        row("another daemon's frame to the tracked client", Back, 0, tcp(FROM_DAEMON, DAEMONS[1], CLIENT),
            XDP_PASS, &["back_untracked", "passed"]),
        row("the daemon's frame to another port of the client", Back, 0, tcp(FROM_DAEMON, DAEMONS[0], SocketAddrV4::new(*CLIENT.ip(), 40001)),
            XDP_PASS, &["back_untracked", "passed"]),
        row("the daemon's frame to the back's own address", Back, 0, tcp(FROM_DAEMON, DAEMONS[0], probe),
            XDP_PASS, &["back_untracked", "passed"]),
        row("frame from a non-daemon address", Back, 0, tcp(FROM_DAEMON, SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 99), 8080), CLIENT),
            XDP_PASS, &["passed"]),
        // IPv6: tracked6 holds CLIENT6B with DAEMON6.
        row("IPv6 reply of the tracked connection", Back, 0, l4_6(FROM_DAEMON, DAEMON6, CLIENT6B, false),
            XDP_REDIRECT, &["back6_steered"]).leaves(l4_6(TO_CLIENT, DAEMON6, CLIENT6B, false)),
        row("IPv6 daemon's frame to another port of the tracked client", Back, 0, l4_6(FROM_DAEMON, DAEMON6, SocketAddrV6::new(*CLIENT6B.ip(), 40001, 0, 0), false),
            XDP_PASS, &["back_untracked", "passed"]),
        row("IPv6 UDP daemon's untracked reply", Back, 0, l4_6(FROM_DAEMON, UDP_DAEMON6, CLIENT6B, true),
            XDP_PASS, &["back_untracked", "passed"]),
    ]
}

/// A TCP segment from `from` to `to` with `flags`.
fn tcp_flagged(macs: Macs, from: SocketAddrV4, to: SocketAddrV4, flags: u8) -> Vec<u8> {
    tcp_with(macs, from, to, |s| {
        s.tcp_flags = flags;
        s.build()
    })
}

/// [`tcp_flagged`] over IPv6 (SYN, ACK and RST are what the rows use).
fn tcp6_flagged(macs: Macs, from: SocketAddrV6, to: SocketAddrV6, flags: u8) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(macs.0, macs.1).ipv6(from.ip().octets(), to.ip().octets(), 64);
    let mut tcp = b.tcp(from.port(), to.port(), 1, 64240);
    if flags & tcp_flags::SYN != 0 {
        tcp = tcp.syn();
    }
    if flags & tcp_flags::ACK != 0 {
        tcp = tcp.ack(1);
    }
    if flags & tcp_flags::RST != 0 {
        tcp = tcp.rst();
    }
    let mut f = Vec::new();
    tcp.write(&mut f, &[]).expect("writing an IPv6 frame");
    f
}

/// reply_mode "tracked", in order, with the tracked maps holding CLIENT with
/// DAEMONS[0] and CLIENT6B with DAEMON6: a direct connection from a tracked
/// connection's client port (the same 4-tuple at the daemon) gets the
/// daemon's frames once the daemon accepts its SYN with a SYN-ACK; any other
/// answer (a live connection's challenge ACK, after a spoofed SYN) keeps them
/// the tracked connection's.
#[rustfmt::skip]
fn direct_takeover_rows() -> Vec<Row> {
    use tcp_flags::{ACK, RST, SYN};
    use Iface::{Back, Front};
    let direct_syn = || tcp_flagged(FROM_CLIENT, CLIENT, DAEMONS[0], SYN);
    let from_daemon = |flags| tcp_flagged(FROM_DAEMON, DAEMONS[0], CLIENT, flags);
    let taken = |flags| tcp_flagged(TO_CLIENT, DAEMONS[0], CLIENT, flags);
    let direct_syn6 = || tcp6_flagged(FROM_CLIENT, CLIENT6B, DAEMON6, SYN);
    let from_daemon6 = |flags| tcp6_flagged(FROM_DAEMON, DAEMON6, CLIENT6B, flags);
    vec![
        row("a client's SYN-ACK towards the daemon is no direct SYN", Front, 0, tcp_flagged(FROM_CLIENT, CLIENT, DAEMONS[0], SYN | ACK),
            XDP_PASS, &["passed"]),
        row("the daemon's SYN-ACK with no direct SYN before: the tracked connection's", Back, 0, from_daemon(SYN | ACK),
            XDP_REDIRECT, &["back_steered"]).leaves(taken(SYN | ACK)),
        row("a direct SYN from the tracked client port", Front, 0, direct_syn(),
            XDP_PASS, &["passed"]),
        row("the daemon's challenge ACK: a live tracked connection keeps its frames", Back, 0, from_daemon(ACK),
            XDP_REDIRECT, &["back_steered"]).leaves(taken(ACK)),
        row("and its next SYN-ACK too", Back, 0, from_daemon(SYN | ACK),
            XDP_REDIRECT, &["back_steered"]).leaves(taken(SYN | ACK)),
        row("a direct SYN again", Front, 0, direct_syn(),
            XDP_PASS, &["passed"]),
        row("the daemon accepts it with a SYN-ACK: the host's", Back, 0, from_daemon(SYN | ACK),
            XDP_PASS, &["direct_took_over", "passed"]),
        row("the direct connection's next frames are the host's", Back, 0, from_daemon(ACK),
            XDP_PASS, &["back_untracked", "passed"]),
        row("and its reset", Back, 0, from_daemon(RST),
            XDP_PASS, &["back_untracked", "passed"]),
        row("and an error about its segment", Back, 0,
            icmp_error(FROM_DAEMON, ROUTER, *CLIENT.ip(), IcmpKind::FragNeeded { mtu: 1280 }, &tcp(FROM_DAEMON, CLIENT, DAEMONS[0]), 28),
            XDP_PASS, &["back_untracked", "passed"]),
        row("IPv6: a direct SYN from the tracked client port", Front, 0, direct_syn6(),
            XDP_PASS, &["ipv6", "passed"]),
        row("IPv6: the daemon's challenge ACK keeps its frames tracked", Back, 0, from_daemon6(ACK),
            XDP_REDIRECT, &["back6_steered"]).leaves(tcp6_flagged(TO_CLIENT, DAEMON6, CLIENT6B, ACK)),
        row("IPv6: a direct SYN again", Front, 0, direct_syn6(),
            XDP_PASS, &["ipv6", "passed"]),
        row("IPv6: the daemon accepts it: the host's", Back, 0, from_daemon6(SYN | ACK),
            XDP_PASS, &["direct_took_over", "passed"]),
        row("IPv6: the direct connection's next frame", Back, 0, from_daemon6(ACK),
            XDP_PASS, &["back_untracked", "passed"]),
    ]
}

/// Runs every row through the program: the failures, one line each.
fn run_rows(lab: &Lab, rows: &[Row]) -> Vec<String> {
    let mut failures = Vec::new();
    for r in rows {
        let before = lab.counters();
        let run = lab
            .steering
            .test_run(&r.frame, lab.ifindex(r.iface), r.queue);
        let after = lab.counters();
        let (verdict, out) = match run {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!("{}: {e:#}", r.name));
                continue;
            }
        };
        let delta: Vec<i128> = after
            .iter()
            .zip(before)
            .map(|(a, b)| i128::from(*a) - i128::from(b))
            .collect();
        let mut want = vec![0i128; COUNTER_NAMES.len()];
        for name in r.counts {
            want[counter_index(name)] += 1;
        }
        println!(
            "{:?} q{} {}: {} / {}",
            r.iface,
            r.queue,
            r.name,
            verdict_name(verdict),
            moved(&delta)
        );
        if verdict != r.verdict {
            failures.push(format!(
                "{}: {}, expected {}",
                r.name,
                verdict_name(verdict),
                verdict_name(r.verdict)
            ));
        }
        if delta != want {
            failures.push(format!(
                "{}: counters moved: {}; expected: {}",
                r.name,
                moved(&delta),
                moved(&want)
            ));
        }
        let want_out = r.out.as_ref().unwrap_or(&r.frame);
        if out != *want_out {
            failures.push(format!("{}: {}", r.name, frame_diff(&out, want_out)));
        }
    }
    failures
}

fn assert_rows_pass(failures: &[String], rows: usize) {
    assert!(
        failures.is_empty(),
        "{} of {rows} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A daemon's reply while the back does not forward, then while the front
/// does not (see `a_daemon_frame_is_passed_while_the_back_does_not_forward`).
fn forwarding_rows() -> [Row; 4] {
    let reply = tcp(FROM_DAEMON, DAEMONS[0], CLIENT);
    let reply6 = l4_6(FROM_DAEMON, DAEMON6, CLIENT6B, false);
    [
        row(
            "IPv6 reply while the back does not forward IPv6",
            Iface::Back,
            0,
            reply6.clone(),
            XDP_PASS,
            &["fwd_disabled", "passed"],
        ),
        row(
            "IPv6 reply while only the back forwards IPv6",
            Iface::Back,
            0,
            reply6,
            XDP_REDIRECT,
            &["back6_steered"],
        )
        .leaves(l4_6(TO_CLIENT, DAEMON6, CLIENT6B, false)),
        row(
            "reply while the back does not forward",
            Iface::Back,
            0,
            reply.clone(),
            XDP_PASS,
            &["fwd_disabled", "passed"],
        ),
        row(
            "reply while the front does not forward",
            Iface::Back,
            0,
            reply,
            XDP_REDIRECT,
            &["back_steered"],
        )
        .leaves(tcp(TO_CLIENT, DAEMONS[0], CLIENT)),
    ]
}

/// The tables together reach every counter of bpf/steer.h and every verdict.
#[test]
fn every_counter_and_verdict_has_a_row() {
    let rows: Vec<Row> = table()
        .into_iter()
        .chain(tracked_table())
        .chain(direct_takeover_rows())
        .chain(forwarding_rows())
        .collect();
    for name in COUNTER_NAMES {
        assert!(
            rows.iter().any(|r| r.counts.contains(&name)),
            "no row moves the counter {name}"
        );
    }
    for v in [XDP_PASS, XDP_DROP, XDP_REDIRECT, XDP_TX] {
        assert!(
            rows.iter().any(|r| r.verdict == v),
            "no row expects {}",
            verdict_name(v)
        );
    }
}

#[test]
fn every_frame_class_gets_its_verdict_counters_and_frame() {
    let mut lab = Lab::up("t", Replies::Stateless);
    let rows = table();
    let failures = run_rows(&lab, &rows);
    assert_rows_pass(&failures, rows.len());

    // The replies that found no neighbour left their next hop for the loop:
    // the client itself, or the gateway it is behind. Taking them forgets them.
    let mut hops = Vec::new();
    lab.steering
        .take_unresolved_hops(&mut hops)
        .expect("the unresolved hops");
    hops.sort();
    assert_eq!(hops, [*UNRESOLVED.ip(), GATEWAY]);
    hops.clear();
    lab.steering.take_unresolved_hops(&mut hops).unwrap();
    assert!(hops.is_empty(), "{hops:?}");
    // The IPv6 ones: the client, the link-local router it is behind.
    let mut hops6 = Vec::new();
    lab.steering
        .take_unresolved_hops6(&mut hops6)
        .expect("the unresolved IPv6 hops");
    hops6.sort();
    assert_eq!(hops6, [*UNRESOLVED6.ip(), ROUTER6_LL]);
    hops6.clear();
    lab.steering.take_unresolved_hops6(&mut hops6).unwrap();
    assert!(hops6.is_empty(), "{hops6:?}");

    // A test run decides a redirect and stops there: nothing reached the sockets.
    for (side, rings) in [
        ("front", &mut lab.sockets.front[0]),
        ("back", &mut lab.sockets.back[0]),
    ] {
        assert_eq!(
            rings.rx.nb_avail(64),
            0,
            "frames on the {side} socket's RX ring"
        );
    }
}

/// The IPv6 half of the steering table follows what it is synced to: a
/// service removed stops being steered, a VIP without services is forgotten,
/// a daemon removed is the host's again; the IPv4 half is left alone.
#[test]
fn ipv6_services_sync_adds_and_removes() {
    let mut lab = Lab::up("6", Replies::Stateless);
    let full = lab.steering.contents().expect("the maps");
    assert_eq!(
        full.services6,
        [
            ((SERVICE6, Protocol::Tcp), 0),
            ((UDP_SERVICE6, Protocol::Udp), 1),
            ((SERVICE6B, Protocol::Tcp), 2),
            ((UDP_SERVICE6B, Protocol::Udp), 3)
        ]
        .into()
    );
    assert_eq!(
        full.daemons6,
        [
            ((DAEMON6, Protocol::Tcp), SERVICE6B),
            ((UDP_DAEMON6, Protocol::Udp), UDP_SERVICE6B)
        ]
        .into()
    );
    let both = (VIP_TCP | VIP_UDP) as u8;
    assert_eq!(full.vips6, [(VIP6, both), (VIP6B, both)].into());
    let syn6 = l4_6(FROM_CLIENT, CLIENT6, SERVICE6, false);
    let reply6 = l4_6(FROM_DAEMON, DAEMON6, CLIENT6B, false);
    let steered = [
        row(
            "IPv6 service SYN",
            Iface::Front,
            0,
            syn6.clone(),
            XDP_REDIRECT,
            &["front6_steered"],
        ),
        row(
            "IPv6 daemon's reply",
            Iface::Back,
            0,
            reply6.clone(),
            XDP_REDIRECT,
            &["back6_steered"],
        )
        .leaves(l4_6(TO_CLIENT, DAEMON6, CLIENT6B, false)),
    ];
    assert_rows_pass(&run_rows(&lab, &steered), 2);

    // Only the UDP service of the first VIP left: TCP to port 80 is the
    // host's, and so is the TCP daemon's reply.
    let mut want = SteeringTable {
        services: full.services.clone(),
        daemons: full.daemons.clone(),
        vips: full.vips.clone(),
        ..Default::default()
    };
    want.add_service6(UDP_SERVICE6, Protocol::Udp, 0, []);
    lab.steering.sync(&want).expect("syncing");
    let now = lab.steering.contents().unwrap();
    assert_eq!(now, want);
    let passed = [
        row(
            "IPv6 SYN to a removed service",
            Iface::Front,
            0,
            syn6.clone(),
            XDP_PASS,
            &["ipv6", "passed"],
        ),
        row(
            "IPv6 reply of a removed daemon",
            Iface::Back,
            0,
            reply6,
            XDP_PASS,
            &["ipv6", "passed"],
        ),
    ];
    assert_rows_pass(&run_rows(&lab, &passed), 2);

    // None: the VIP is forgotten, so an extension header to it is the host's;
    // the IPv4 services stay.
    want.services6.clear();
    want.vips6.clear();
    lab.steering.sync(&want).unwrap();
    let now = lab.steering.contents().unwrap();
    assert!(now.services6.is_empty() && now.vips6.is_empty(), "{now:?}");
    assert_eq!(now.services, full.services);
    let ext = row(
        "extension header to a former VIP",
        Iface::Front,
        0,
        with_ext_header(&syn6, 0),
        XDP_PASS,
        &["ipv6", "passed"],
    );
    assert_rows_pass(&run_rows(&lab, &[ext]), 1);
}

/// reply_mode "tracked": only replies of connections in the map are taken, and
/// one that leaves the map is the host's again.
#[test]
fn tracked_replies_are_taken_and_the_rest_passed() {
    let lab = Lab::up(
        "r",
        Replies::Tracked {
            capacity: 64,
            capacity6: 64,
        },
    );
    let map = lab.steering.tracked_map().expect("the tracked map");
    let key = reply_key(CLIENT, DAEMONS[0], TCP);
    let outcome = map.insert(&[key]);
    assert_eq!((outcome.done, outcome.error.is_none()), (1, true));
    assert!(map.contains(&key));
    let map6 = lab.steering.tracked6_map().expect("the IPv6 tracked map");
    let key6 = reply_key6(CLIENT6B, DAEMON6, TCP);
    let outcome = map6.insert(&[key6]);
    assert_eq!((outcome.done, outcome.error.is_none()), (1, true));
    assert!(map6.contains(&key6));
    let rows = tracked_table();
    let failures = run_rows(&lab, &rows);
    assert_rows_pass(&failures, rows.len());

    let outcome = map.remove(&[key, key]);
    assert_eq!(outcome.done, 1, "the second removal finds no key");
    assert_eq!(
        outcome.error.and_then(|e| e.raw_os_error()),
        Some(libc::ENOENT)
    );
    let gone = [row(
        "a reply after its connection left the map",
        Iface::Back,
        0,
        tcp(FROM_DAEMON, DAEMONS[0], CLIENT),
        XDP_PASS,
        &["back_untracked", "passed"],
    )];
    assert_rows_pass(&run_rows(&lab, &gone), 1);
}

/// reply_mode "tracked": a direct connection from a tracked connection's
/// client port takes the 4-tuple's frames only once the daemon accepts it, and
/// the key a worker writes again (a VIP connection reusing the port) takes
/// them back.
#[test]
fn a_direct_connection_takes_a_tracked_4_tuple_only_when_the_daemon_accepts_it() {
    let lab = Lab::up(
        "dt",
        Replies::Tracked {
            capacity: 64,
            capacity6: 64,
        },
    );
    let map = lab.steering.tracked_map().expect("the tracked map");
    let map6 = lab.steering.tracked6_map().expect("the IPv6 tracked map");
    let key = reply_key(CLIENT, DAEMONS[0], TCP);
    let key6 = reply_key6(CLIENT6B, DAEMON6, TCP);
    assert_eq!(map.insert(&[key]).done, 1);
    assert_eq!(map6.insert(&[key6]).done, 1);
    let rows = direct_takeover_rows();
    assert_rows_pass(&run_rows(&lab, &rows), rows.len());

    assert_eq!(map.insert(&[key]).done, 1);
    assert_eq!(map6.insert(&[key6]).done, 1);
    let written_again = [
        row(
            "the key written again: the tracked connection's",
            Iface::Back,
            0,
            tcp_flagged(FROM_DAEMON, DAEMONS[0], CLIENT, tcp_flags::ACK),
            XDP_REDIRECT,
            &["back_steered"],
        )
        .leaves(tcp_flagged(TO_CLIENT, DAEMONS[0], CLIENT, tcp_flags::ACK)),
        row(
            "IPv6: the key written again",
            Iface::Back,
            0,
            tcp6_flagged(FROM_DAEMON, DAEMON6, CLIENT6B, tcp_flags::ACK),
            XDP_REDIRECT,
            &["back6_steered"],
        )
        .leaves(tcp6_flagged(TO_CLIENT, DAEMON6, CLIENT6B, tcp_flags::ACK)),
    ];
    assert_rows_pass(&run_rows(&lab, &written_again), written_again.len());
}

/// reply_mode "tracked" with a daemon ADDR:PORT behind a TCP and a UDP
/// service: one client port's TCP connection and UDP flow to it are two
/// entries, each taking only its own protocol's replies, and the end of one
/// leaves the other's (the key carries the protocol).
#[test]
fn one_client_ports_tcp_and_udp_to_one_daemon_are_tracked_apart() {
    let mut lab = Lab::up(
        "tk",
        Replies::Tracked {
            capacity: 64,
            capacity6: 64,
        },
    );
    let mut both = lab.steering.contents().expect("the maps");
    both.daemons
        .insert((DAEMONS[0], Protocol::Udp), UDP_SERVICE);
    both.daemons6
        .insert((DAEMON6, Protocol::Udp), UDP_SERVICE6B);
    lab.steering
        .sync(&both)
        .expect("the UDP service of the TCP daemons");
    let map = lab.steering.tracked_map().expect("the tracked map");
    let map6 = lab.steering.tracked6_map().expect("the IPv6 tracked map");
    let tcp_key = reply_key(CLIENT, DAEMONS[0], TCP);
    let udp_key = reply_key(CLIENT, DAEMONS[0], UDP);
    let tcp_key6 = reply_key6(CLIENT6B, DAEMON6, TCP);
    let udp_key6 = reply_key6(CLIENT6B, DAEMON6, UDP);
    let tcp_reply = tcp(FROM_DAEMON, DAEMONS[0], CLIENT);
    let udp_reply = udp(FROM_DAEMON, DAEMONS[0], CLIENT);
    let tcp_reply6 = l4_6(FROM_DAEMON, DAEMON6, CLIENT6B, false);
    let udp_reply6 = l4_6(FROM_DAEMON, DAEMON6, CLIENT6B, true);
    let taken = |name: &'static str, frame: &Vec<u8>, out: Vec<u8>, counter: &'static str| {
        let counts: &'static [&'static str] = match counter {
            "back6_steered" => &["back6_steered"],
            _ => &["back_steered"],
        };
        row(name, Iface::Back, 0, frame.clone(), XDP_REDIRECT, counts).leaves(out)
    };
    let passed = |name: &'static str, frame: &Vec<u8>| {
        row(
            name,
            Iface::Back,
            0,
            frame.clone(),
            XDP_PASS,
            &["back_untracked", "passed"],
        )
    };

    // Only the TCP connection: the UDP replies from the same daemon to the
    // same client port are not its.
    assert!(map.insert(&[tcp_key]).error.is_none());
    assert!(map6.insert(&[tcp_key6]).error.is_none());
    let tcp_only = [
        taken(
            "TCP reply of the tracked TCP connection",
            &tcp_reply,
            tcp(TO_CLIENT, DAEMONS[0], CLIENT),
            "back_steered",
        ),
        passed("UDP reply to the TCP connection's client port", &udp_reply),
        taken(
            "IPv6 TCP reply of the tracked TCP connection",
            &tcp_reply6,
            l4_6(TO_CLIENT, DAEMON6, CLIENT6B, false),
            "back6_steered",
        ),
        passed(
            "IPv6 UDP reply to the TCP connection's client port",
            &udp_reply6,
        ),
    ];
    assert_rows_pass(&run_rows(&lab, &tcp_only), tcp_only.len());

    // Both, then the TCP connection ends: the UDP flow's replies go on.
    assert!(map.insert(&[udp_key]).error.is_none());
    assert!(map6.insert(&[udp_key6]).error.is_none());
    let both_rows = [
        taken(
            "TCP reply beside the UDP flow",
            &tcp_reply,
            tcp(TO_CLIENT, DAEMONS[0], CLIENT),
            "back_steered",
        ),
        taken(
            "UDP reply beside the TCP connection",
            &udp_reply,
            udp(TO_CLIENT, DAEMONS[0], CLIENT),
            "back_steered",
        ),
        taken(
            "IPv6 UDP reply beside the TCP connection",
            &udp_reply6,
            l4_6(TO_CLIENT, DAEMON6, CLIENT6B, true),
            "back6_steered",
        ),
    ];
    assert_rows_pass(&run_rows(&lab, &both_rows), both_rows.len());
    assert_eq!(map.remove(&[tcp_key]).done, 1);
    assert_eq!(map6.remove(&[tcp_key6]).done, 1);
    assert!(map.contains(&udp_key) && map6.contains(&udp_key6));
    let udp_only = [
        passed("TCP reply after its connection ended", &tcp_reply),
        taken(
            "UDP reply after the TCP connection ended",
            &udp_reply,
            udp(TO_CLIENT, DAEMONS[0], CLIENT),
            "back_steered",
        ),
        passed("IPv6 TCP reply after its connection ended", &tcp_reply6),
        taken(
            "IPv6 UDP reply after the TCP connection ended",
            &udp_reply6,
            l4_6(TO_CLIENT, DAEMON6, CLIENT6B, true),
            "back6_steered",
        ),
    ];
    assert_rows_pass(&run_rows(&lab, &udp_only), udp_only.len());
}

/// A takeover reads the running process's tracked map in the layout its key
/// size says: this version's (16 bytes) as it is, an older one's (12 bytes,
/// no protocol) as old keys to convert, any other refused.
#[test]
fn a_running_processs_tracked_map_is_read_in_its_own_layout() {
    use libbpf_rs::MapCore;
    use std::os::fd::AsFd;
    let lab = Lab::up(
        "tkv",
        Replies::Tracked {
            capacity: 64,
            capacity6: 64,
        },
    );
    let map_of = |key_size: u32| {
        let opts = libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _,
            ..Default::default()
        };
        libbpf_rs::MapHandle::create(
            libbpf_rs::MapType::Hash,
            Some("tracked"),
            key_size,
            1,
            16,
            &opts,
        )
        .expect("a map")
    };
    let old: Vec<[u8; 12]> = (0..3u16)
        .map(|i| {
            let mut k = [0u8; 12];
            k[..4].copy_from_slice(&CLIENT.ip().octets());
            k[4..8].copy_from_slice(&DAEMONS[0].ip().octets());
            k[8..10].copy_from_slice(&(40000 + i).to_be_bytes());
            k[10..].copy_from_slice(&DAEMONS[0].port().to_be_bytes());
            k
        })
        .collect();
    let v0 = map_of(12);
    for k in &old {
        v0.update(k, &[1], libbpf_rs::MapFlags::ANY)
            .expect("an old key");
    }
    match lab.steering.handed_tracked_keys(v0.as_fd()) {
        Ok(HandedKeys::WithoutProtocol(mut keys)) => {
            keys.sort();
            assert_eq!(keys, old);
        }
        other => panic!("an old map read as {other:?}"),
    }
    let current = map_of(16);
    let key = reply_key(CLIENT, DAEMONS[0], UDP);
    let bytes: Vec<u8> = [
        &key.client_addr.to_ne_bytes()[..],
        &key.daemon_addr.to_ne_bytes(),
        &key.client_port.to_ne_bytes(),
        &key.daemon_port.to_ne_bytes(),
        &[key.protocol, 0, 0, 0],
    ]
    .concat();
    current
        .update(&bytes, &[1], libbpf_rs::MapFlags::ANY)
        .expect("a key");
    match lab.steering.handed_tracked_keys(current.as_fd()) {
        Ok(HandedKeys::Current(keys)) => {
            assert_eq!(keys.len(), 1);
            assert_eq!(keys[0].protocol, UDP);
            assert_eq!(keys[0].client_port, key.client_port);
        }
        other => panic!("a current map read as {other:?}"),
    }
    let e = lab
        .steering
        .handed_tracked_keys(map_of(20).as_fd())
        .unwrap_err();
    assert!(format!("{e:#}").contains("20 bytes"), "{e:#}");
}

/// bpf_fib_lookup answers only if the interface the lookup is made for (the
/// back, where replies arrive) forwards IPv4, which is why dispatchd refuses to
/// start without it. Meanwhile a daemon's frames go to the kernel, which still
/// delivers what is addressed to the host (health probes) and, not forwarding
/// either, drops the rest. Forwarding on the front does not matter.
#[test]
fn a_daemon_frame_is_passed_while_the_back_does_not_forward() {
    let lab = Lab::up("f", Replies::Stateless);
    let [back6_off, back6_only, back_off, front_off] = forwarding_rows();
    // IPv6: the back's own setting, not `all` (0 in a new namespace) nor the
    // front's.
    set_forwarding6(&lab.ns.name, BACK, false);
    assert_rows_pass(&run_rows(&lab, &[back6_off]), 1);
    set_forwarding6(&lab.ns.name, BACK, true);
    set_forwarding6(&lab.ns.name, FRONT, false);
    let all = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns.name,
            "sysctl",
            "-n",
            "net.ipv6.conf.all.forwarding",
        ])
        .output()
        .expect("running sysctl");
    assert_eq!(String::from_utf8_lossy(&all.stdout).trim(), "0");
    assert_rows_pass(&run_rows(&lab, &[back6_only]), 1);
    set_forwarding(&lab.ns.name, BACK, false);
    assert_rows_pass(&run_rows(&lab, &[back_off]), 1);
    set_forwarding(&lab.ns.name, BACK, true);
    set_forwarding(&lab.ns.name, FRONT, false);
    assert_rows_pass(&run_rows(&lab, &[front_off]), 1);
}

/// The lookup is the one the kernel makes for a frame arriving on the back,
/// with no output interface. The program's earlier lookup (BPF_FIB_LOOKUP_OUTPUT
/// with the front as ifindex) made the front the output interface, and
/// fib_table_lookup skips next hops on any other (fib_lookup_good_nhc): with a
/// default route through the front, a destination routed out of a third
/// interface fell through to that default and was sent out of the front.
#[test]
fn a_route_out_of_another_interface_wins_over_a_default_through_the_front() {
    let lab = Lab::up("d", Replies::Stateless);
    let n = &lab.ns.name;
    let gw_mac = [0x02, 0, 0, 0, 0xc1, 0xfe];
    ip(&[
        "-n",
        n,
        "neigh",
        "add",
        &GATEWAY.to_string(),
        "lladdr",
        &mac(gw_mac),
        "dev",
        FRONT,
        "nud",
        "permanent",
    ]);
    ip(&[
        "-n",
        n,
        "route",
        "add",
        "default",
        "via",
        &GATEWAY.to_string(),
        "dev",
        FRONT,
    ]);
    let rows = [
        row(
            "daemon reply to a network of a third interface",
            Iface::Back,
            0,
            tcp(FROM_DAEMON, DAEMONS[0], OTHER_HOST),
            XDP_PASS,
            &["back_not_front", "passed"],
        ),
        row(
            "daemon reply to a client behind the default route",
            Iface::Back,
            0,
            tcp(FROM_DAEMON, DAEMONS[0], UNROUTED),
            XDP_REDIRECT,
            &["back_steered"],
        )
        .leaves(tcp((FRONT_MAC, gw_mac), DAEMONS[0], UNROUTED)),
    ];
    assert_rows_pass(&run_rows(&lab, &rows), rows.len());
}

/// Without a source address for it (the back has none), a reply too big for the
/// front route cannot be answered: it is dropped and counted as `too_big`.
#[test]
fn a_reply_too_big_is_dropped_while_no_source_address_is_set() {
    let lab = Lab::up("s", Replies::Stateless);
    let daemon = DAEMONS[0];
    let too_big = full_size(FROM_DAEMON, daemon, NARROW).build().into_bytes();
    let too_big_counter = counter_index("too_big");
    let sent_counter = counter_index("frag_needed_sent");

    lab.steering
        .set_icmp_source(Ipv4Addr::UNSPECIFIED)
        .expect("clearing the source");
    let before = lab.counters();
    let (verdict, out) = lab
        .steering
        .test_run(&too_big, lab.back.index, 0)
        .expect("test run");
    let after = lab.counters();
    assert_eq!(verdict_name(verdict), verdict_name(XDP_DROP));
    assert_eq!(out, too_big, "a dropped reply is left as it came");
    let mut want = before;
    want[too_big_counter] += 1;
    assert_eq!(after, want, "only too_big moves");

    lab.steering.set_icmp_source(BACK_ADDR).expect("the source");
    let (verdict, _) = lab
        .steering
        .test_run(&too_big, lab.back.index, 0)
        .expect("test run");
    assert_eq!(verdict_name(verdict), verdict_name(XDP_TX));
    assert_eq!(lab.counters()[sent_counter], after[sent_counter] + 1);

    // IPv6: no "packet too big" without icmp_source6.
    let too_big6 = tcp6_data(FROM_DAEMON, DAEMON6, NARROW6, 1300);
    let sent6_counter = counter_index("packet_too_big_sent");
    lab.steering
        .set_icmp_source6(Ipv6Addr::UNSPECIFIED)
        .expect("clearing the source");
    let before = lab.counters();
    let (verdict, out) = lab
        .steering
        .test_run(&too_big6, lab.back.index, 0)
        .expect("test run");
    let after = lab.counters();
    assert_eq!(verdict_name(verdict), verdict_name(XDP_DROP));
    assert_eq!(out, too_big6, "a dropped reply is left as it came");
    let mut want = before;
    want[too_big_counter] += 1;
    assert_eq!(after, want, "only too_big moves");
    lab.steering
        .set_icmp_source6(BACK_ADDR6)
        .expect("the source");
    let (verdict, _) = lab
        .steering
        .test_run(&too_big6, lab.back.index, 0)
        .expect("test run");
    assert_eq!(verdict_name(verdict), verdict_name(XDP_TX));
    assert_eq!(lab.counters()[sent6_counter], after[sent6_counter] + 1);
}

/// What the kernel refuses before the program runs: these rows cannot be in the
/// table, and the program's counters do not move.
#[test]
fn test_run_refuses_runts_and_queues_the_device_lacks() {
    let lab = Lab::up("k", Replies::Stateless);
    let syn = tcp(FROM_CLIENT, CLIENT, SERVICE);
    let before = lab.counters();
    let invalid = |frame: &[u8], ifindex: u32, queue: u32, what: &str| {
        let e = lab
            .steering
            .test_run(frame, ifindex, queue)
            .err()
            .unwrap_or_else(|| panic!("{what}: the kernel ran the program"));
        let kind = e
            .downcast_ref::<libbpf_rs::Error>()
            .map(libbpf_rs::Error::kind);
        assert_eq!(
            kind,
            Some(libbpf_rs::ErrorKind::InvalidInput),
            "{what}: {e:#}"
        );
    };
    invalid(&syn[..13], lab.front.index, 0, "a frame of 13 bytes");
    invalid(&[], lab.front.index, 0, "an empty frame");
    invalid(
        &syn,
        lab.front.index,
        FRONT_QUEUES,
        "the front's queue count",
    );
    invalid(&syn, lab.back.index, BACK_QUEUES, "the back's queue count");
    invalid(&syn, lab.other.index, 1, "lo's queue 1");
    assert!(
        lab.steering.test_run(&syn, 999_999, 0).is_err(),
        "an interface that does not exist"
    );
    assert_eq!(lab.counters(), before, "no program ran");
}

/// What the program costs per frame of the classes that matter for the reply
/// modes, as the kernel times it (the average of 200,000 runs of each): printed
/// for the README's comparison, checked only to be a plausible time. In the
/// tracked mode the map holds 100,000 other connections besides the one
/// replied to.
#[test]
fn the_cost_per_frame_of_each_reply_mode() {
    const RUNS: u32 = 200_000;
    let reply = tcp(FROM_DAEMON, DAEMONS[0], CLIENT);
    let to_host = tcp(FROM_DAEMON, DAEMONS[0], SocketAddrV4::new(BACK_ADDR, 50000));
    let syn = tcp(FROM_CLIENT, CLIENT, SERVICE);
    let reply6 = l4_6(FROM_DAEMON, DAEMON6, CLIENT6B, false);
    let syn6 = l4_6(FROM_CLIENT, CLIENT6B, SERVICE6B, false);
    for (mode, replies) in [
        ("stateless", Replies::Stateless),
        (
            "tracked",
            Replies::Tracked {
                capacity: 1 << 20,
                capacity6: 1 << 10,
            },
        ),
    ] {
        let lab = Lab::up(&mode[..1], replies);
        if let Replies::Tracked { .. } = replies {
            let map = lab.steering.tracked_map().expect("the tracked map");
            let others: Vec<_> = (0..100_000u32)
                .map(|i| {
                    let c = SocketAddrV4::new(Ipv4Addr::from(0x0a00_0000 | i), 40000);
                    reply_key(c, DAEMONS[1], TCP)
                })
                .chain([reply_key(CLIENT, DAEMONS[0], TCP)])
                .collect();
            assert!(map.insert(&others).error.is_none());
            let map6 = lab.steering.tracked6_map().expect("the IPv6 tracked map");
            assert!(map6
                .insert(&[reply_key6(CLIENT6B, DAEMON6, TCP)])
                .error
                .is_none());
        }
        for (name, frame, iface) in [
            ("daemon reply to a client", &reply, lab.back.index),
            ("daemon frame to the host", &to_host, lab.back.index),
            ("service SYN", &syn, lab.front.index),
            ("IPv6 daemon reply to a client", &reply6, lab.back.index),
            ("IPv6 service SYN", &syn6, lab.front.index),
        ] {
            let t = lab
                .steering
                .time_run(frame, iface, 0, RUNS)
                .expect("a timed run");
            println!("{mode}: {name}: {} ns per frame", t.as_nanos());
            assert!(
                t.as_nanos() > 0 && t.as_micros() < 100,
                "{mode} {name}: {t:?}"
            );
        }
    }
}

/// The benchmark's XDP ceiling (`--bare-xdp-redirect`): a frame the program
/// would steer to a socket it redirects to the other interface instead,
/// untouched, with or without a socket on its queue, and what is not a
/// service's it still passes to the kernel.
#[test]
fn the_bare_redirect_sends_a_service_frame_on_untouched_and_passes_the_rest() {
    let lab = Lab::up("b", Replies::Stateless);
    // Its own program and maps beside the lab's, in the lab's namespace.
    let mut bare = Steering::load_bare_redirect(&lab.front, &lab.back, Replies::Stateless)
        .unwrap_or_else(|e| panic!("loading the bare-redirect program: {e:#}"));
    bare.sync(&SteeringTable {
        services: [((SERVICE, Protocol::Tcp), 0)].into(),
        vips: [(VIP, VIP_TCP as u8)].into(),
        ..Default::default()
    })
    .expect("the service");
    let counter = |name: &str| bare.counters().expect("counters")[counter_index(name)];
    let steered_before = counter("front_steered");

    // Queue 1 has no socket: the deployed program drops a service's frame
    // there, the bare one never looks.
    let syn = tcp(FROM_CLIENT, CLIENT, SERVICE);
    let (verdict, _) = lab
        .steering
        .test_run(&syn, lab.front.index, 1)
        .expect("a run");
    assert_eq!(
        verdict_name(verdict),
        verdict_name(XDP_DROP),
        "the deployed program"
    );
    let (verdict, out) = bare.test_run(&syn, lab.front.index, 1).expect("a run");
    assert_eq!(
        verdict_name(verdict),
        verdict_name(XDP_REDIRECT),
        "a service's SYN"
    );
    assert_eq!(out, syn, "the frame leaves untouched");
    assert_eq!(counter("front_steered"), steered_before + 1);

    let elsewhere = tcp(FROM_CLIENT, CLIENT, SocketAddrV4::new(VIP, 81));
    let (verdict, out) = bare
        .test_run(&elsewhere, lab.front.index, 1)
        .expect("a run");
    assert_eq!(
        verdict_name(verdict),
        verdict_name(XDP_PASS),
        "no service on port 81"
    );
    assert_eq!(out, elsewhere);
}
