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

/* (VIP, port) of a service, or (address, port) of a daemon. */
struct endpoint {
	__u32 addr;
	__u16 port;
	__u16 pad; /* zero: keys are compared as bytes */
};

/* What a daemon's replies are rewritten to: its service's VIP and port. */
struct daemon_info {
	struct endpoint service;
};

/* Every verdict the program reaches is counted in a per-CPU array. */
enum steer_counter {
	CNT_FRONT_STEERED = 0, /* service frame redirected to a front socket */
	CNT_BACK_STEERED,      /* daemon reply redirected to a back socket */
	CNT_PASSED,            /* not ours: handed to the kernel */
	CNT_NO_SOCKET,         /* ours, but no socket on this queue: dropped */
	CNT_FIB_NO_NEIGH,      /* reply to a client whose next hop is unresolved */
	CNT_FIB_FAILED,        /* reply to a client the kernel cannot route */
	CNT_TRUNCATED,         /* too short to read the IPv4 addresses: passed */
	CNT_VLAN,              /* VLAN-tagged: passed (dispatchd serves untagged frames) */
	CNT_IPV6,              /* IPv6: passed */
	CNT_VIP_MALFORMED,     /* TCP to a VIP with IHL < 5 or cut before the ports: dropped */
	CNT_VIP_FRAGMENT,      /* non-first TCP fragment to a VIP: dropped */
	CNT_ICMP_FRONT_STEERED, /* ICMP error to a VIP about a service's reply: to a front socket */
	CNT_ICMP_BACK_STEERED, /* ICMP error on the back about a segment to a daemon: to a back socket */
	CNT_FRAG_NEEDED_SENT,  /* reply larger than the front path's MTU: answered with
				* "fragmentation needed" back to the daemon (XDP_TX) */
	CNT_TOO_BIG,           /* reply larger than the front path's MTU that cannot be answered
				* (DF clear, IP options, no source address set): dropped */
	CNT_MAX,
};

#endif
