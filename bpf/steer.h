/* Map key and value layouts shared by the XDP program and user space.
 * The Rust side uses the skeleton's generated types for these structs, so this
 * header is the only definition. Addresses and ports are in network byte order,
 * exactly as they sit in the packet, so the program never swaps bytes. */
#ifndef DISPATCHD_STEER_H
#define DISPATCHD_STEER_H

/* Limits user space validates the config against; build.rs reads these lines, so
 * keep each a plain `#define NAME number`. */
/* XSKMAP slots: front queue q at q, back queue q at MAX_QUEUES + q. */
#define MAX_QUEUES 64
/* Entries of the services and VIP maps. */
#define MAX_SERVICES 1024
/* Entries of the daemons map. */
#define MAX_DAEMONS 4096
/* Most entries of the tracked map (reply_mode "tracked"): the kernel refuses a
 * hash map with more than 2^27 (its bucket array would pass 4 GiB). */
#define MAX_TRACKED 134217728
/* Next hops towards clients noted unresolved between two rounds of the
 * management loop (100 ms); the oldest give way. */
#define MAX_UNRESOLVED_HOPS 1024

/* The value of a VIP in the vip_addrs map: which protocols it has services
 * of, so that a malformed frame or a fragment of the other protocol is still
 * the host's. */
#define VIP_TCP 1
#define VIP_UDP 2

/* (VIP, port, protocol) of a service, or (address, port, protocol) of a
 * daemon: a VIP:port may have a TCP and a UDP service. */
struct endpoint {
	__u32 addr;
	__u16 port;
	__u8 protocol; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad;      /* zero: keys are compared as bytes */
};

/* (VIP, port, protocol) of an IPv6 service: the key of the services6 map. The
 * protocol is part of it from the start (a VIP:port may serve TCP and UDP). */
struct endpoint6 {
	__u8 addr[16];
	__u16 port;
	__u8 protocol; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad;      /* zero: keys are compared as bytes */
};

/* What a daemon's replies are rewritten to: its service's VIP and port. */
struct daemon_info {
	struct endpoint service;
};

/* The same for an IPv6 daemon (key: its endpoint6): its service's VIP6 and port. */
struct daemon_info6 {
	struct endpoint6 service;
};

/* A connection as its daemon's replies show it, all four fields as the reply
 * carries them: the key of the tracked map (reply_mode "tracked"), which the
 * workers fill. Keyed by the daemon rather than the VIP, so a host that talks
 * to the daemon directly from the same address and port as one of its VIP
 * connections (to another daemon) is still told apart. */
struct reply_key {
	__u32 client_addr;
	__u32 daemon_addr;
	__u16 client_port;
	__u16 daemon_port;
	/* A daemon ADDR:PORT may serve a TCP and a UDP service: one client
	 * port's flows of both protocols to it are two connections. */
	__u8 protocol; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad[3];   /* zero: keys are compared as bytes */
};

/* reply_key for IPv6 connections: the key of the tracked6 map. */
struct reply_key6 {
	__u8 client_addr[16];
	__u8 daemon_addr[16];
	__u16 client_port;
	__u16 daemon_port;
	__u8 protocol; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad[3];   /* zero: keys are compared as bytes */
};

/* The key sizes, which user space asserts its types against and which a
 * takeover reads off the running process's map to tell its layout: before
 * the protocol was part of it, struct reply_key had 12 bytes
 * (REPLY_KEY_V0_SIZE: the same fields up to daemon_port). */
#define REPLY_KEY_SIZE 16
#define REPLY_KEY6_SIZE 40
#define REPLY_KEY_V0_SIZE 12
_Static_assert(sizeof(struct reply_key) == REPLY_KEY_SIZE, "struct reply_key changed size");
_Static_assert(sizeof(struct reply_key6) == REPLY_KEY6_SIZE, "struct reply_key6 changed size");

/* Every verdict the program reaches is counted in a per-CPU array. */
enum steer_counter {
	CNT_FRONT_STEERED = 0, /* service frame redirected to a front socket */
	CNT_BACK_STEERED,      /* daemon reply redirected to a back socket */
	CNT_PASSED,            /* not ours: handed to the kernel */
	CNT_NO_SOCKET,         /* ours, but no socket on this queue: dropped */
	CNT_FIB_NO_NEIGH,      /* reply to a client whose next hop is unresolved: the
				* hop noted for resolution, the reply dropped */
	CNT_FIB_FAILED,        /* reply the kernel would drop (blackhole, unreachable,
				* prohibit, beyond the egress MTU): dropped */
	CNT_TRUNCATED,         /* too short to read the IPv4 addresses: passed */
	CNT_VLAN,              /* VLAN-tagged: passed (dispatchd serves untagged frames) */
	CNT_IPV6,              /* IPv6, not to an IPv6 service: passed */
	CNT_VIP_MALFORMED,     /* TCP or UDP to a VIP with IHL < 5 or cut before the ports: dropped */
	CNT_VIP_FRAGMENT,      /* non-first TCP or UDP fragment to a VIP: dropped */
	CNT_ICMP_FRONT_STEERED, /* ICMP error to a VIP about a service's reply: to a front socket */
	CNT_ICMP_BACK_STEERED, /* ICMP error on the back about a segment to a daemon: to a back socket */
	CNT_FRAG_NEEDED_SENT,  /* reply larger than the front path's MTU: answered with
				* "fragmentation needed" back to the daemon (XDP_TX) */
	CNT_TOO_BIG,           /* reply larger than the front path's MTU that cannot be answered
				* (DF clear, IP options, no source address set): dropped */
	CNT_BACK_TO_HOST,      /* daemon frame the kernel would not route out (a local
				* destination, or none): passed */
	CNT_BACK_NOT_FRONT,    /* daemon frame routed out of another interface: passed */
	CNT_BACK_UNTRACKED,    /* reply_mode "tracked": daemon frame of no tracked
				* connection: passed */
	CNT_FWD_DISABLED,      /* daemon frame while the back does not forward: passed */
	CNT_FRONT6_STEERED,    /* IPv6 service frame redirected to a front socket */
	CNT_VIP6_EXT_HEADER,   /* IPv6 to a VIP with an extension header: dropped */
	CNT_BACK6_STEERED,     /* IPv6 daemon reply redirected to a back socket */
	CNT_ICMP6_FRONT_STEERED, /* ICMPv6 error to a VIP about a service's reply: to a front socket */
	CNT_ICMP6_BACK_STEERED, /* ICMPv6 error on the back about a segment to a daemon: to a back socket */
	CNT_PACKET_TOO_BIG_SENT, /* IPv6 reply larger than the front path's MTU: answered
				  * with "packet too big" back to the daemon (XDP_TX) */
	CNT_DIRECT_TOOK_OVER,  /* reply_mode "tracked": the daemon's SYN-ACK to a direct
				* connection from a tracked connection's client port:
				* passed, as that 4-tuple's frames are from then on */
	CNT_MAX,
};

#endif
