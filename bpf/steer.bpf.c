// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* dispatchd's steering program: one object attached to the front and the back
 * interface. It only decides *whether* a frame belongs to dispatchd; every rewrite
 * but the reply's Ethernet addresses happens in user space on the AF_XDP socket.
 *
 * front: IPv4/TCP and UDP frames to a configured
 *        (VIP, port, protocol)                         -> front XSK of the rx queue
 *        ICMP errors to a VIP quoting a service's reply -> front XSK (the loop finds
 *                                                        the connection's daemon)
 * back:  IPv4/TCP and UDP frames from a configured daemon that
 *        the kernel would route out of the front (and,
 *        with reply_mode "tracked", of a tracked
 *        connection)                                   -> back XSK of the rx queue,
 *        with Ethernet addresses set from the kernel's FIB for the client;
 *        one too big for the front path is answered with
 *        "fragmentation needed" instead                -> XDP_TX back to the daemon
 *        ICMP errors the kernel would route out of the
 *        front quoting a segment to a daemon           -> back XSK, FIB addresses
 * front: IPv6 TCP/UDP frames to a (VIP, port, protocol)
 *        of services6                                  -> front XSK of the rx queue
 *        ICMPv6 errors to a VIP quoting a service's
 *        reply                                         -> front XSK
 * back:  IPv6 TCP/UDP from a daemon of daemons6, as
 *        IPv4 (FIB with AF_INET6, tracked6, "packet
 *        too big" answered in place), and ICMPv6
 *        errors quoting a segment to a daemon          -> back XSK / XDP_TX
 *        IPv6 to a VIP whose next header is an
 *        extension header                              -> XDP_DROP, counted
 * anything else                                        -> XDP_PASS (ARP, ping, ssh, the
 *        host's own conversations with the daemons, IPv6 neighbour discovery and
 *        router advertisements, ICMPv6 echo, ...)
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "steer.h"

#ifndef AF_INET
#define AF_INET 2
#endif

/* An ICMP error's header (RFC 792, RFC 1191): <linux/icmp.h> pulls in libc
 * headers the BPF target lacks. */
struct icmp_error_hdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be16 unused;
	__be16 mtu; /* "fragmentation needed": the next hop's MTU */
};
#define ICMP_DEST_UNREACH 3
#define ICMP_FRAG_NEEDED 4 /* a code of ICMP_DEST_UNREACH */
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

/* Set by user space before load; the verifier then prunes the other branch. */
const volatile __u32 front_ifindex = 0;
const volatile __u32 back_ifindex = 0;
/* reply_mode "tracked": only replies of connections in `tracked` are taken. */
const volatile __u8 track_replies = 0;
/* Benchmark only (`--bare-xdp-redirect`): a frame the program would steer to a
 * socket leaves by the other interface instead, untouched, by XDP_REDIRECT: no
 * worker, no copy into a UMEM. The ceiling of forwarding in XDP itself, beside
 * the bare forwarder's of the sockets. */
const volatile __u8 bare_xdp_redirect = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SERVICES);
	__type(key, struct endpoint);
	__type(value, __u32);
} services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_DAEMONS);
	__type(key, struct endpoint);
	__type(value, struct daemon_info);
} daemons SEC(".maps");

/* The VIPs alone (any port), with the protocols of their services (VIP_TCP,
 * VIP_UDP): frames of such a protocol to them that cannot be matched to a
 * service because they are malformed are dropped and counted, not passed. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SERVICES);
	__type(key, __u32);
	__type(value, __u8);
} vip_addrs SEC(".maps");

/* IPv6 services, as `services` for IPv4 (the value is the service's index). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SERVICES);
	__type(key, struct endpoint6);
	__type(value, __u32);
} services6 SEC(".maps");

/* The IPv6 VIPs alone: frames to them that cannot be matched to a service (an
 * extension header first, cut before the ports) are dropped and counted. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SERVICES);
	__type(key, struct in6_addr);
	__type(value, __u8);
} vip6_addrs SEC(".maps");

/* IPv6 daemons, as `daemons` for IPv4: (address, port, protocol) -> their
 * service's VIP6 and port. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_DAEMONS);
	__type(key, struct endpoint6);
	__type(value, struct daemon_info6);
} daemons6 SEC(".maps");

/* Next hops towards IPv6 clients with no neighbour entry, as unresolved_hops
 * (often a router's link-local address: the loop resolves it on the front). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_UNRESOLVED_HOPS);
	__type(key, struct in6_addr);
	__type(value, __u8);
} unresolved_hops6 SEC(".maps");

/* reply_mode "tracked", IPv6 connections: as `tracked`, sized by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, struct reply_key6);
	__type(value, __u8);
} tracked6 SEC(".maps");

/* This host's IPv6 address on the back (all zero until user space sets it):
 * the source of the "packet too big" the program answers daemons with. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct in6_addr);
} icmp_source6 SEC(".maps");

/* Next hops towards clients that had no neighbour entry when a reply needed
 * one (network byte order): the management loop takes them out and asks the
 * kernel to resolve each. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_UNRESOLVED_HOPS);
	__type(key, __u32);
	__type(value, __u8);
} unresolved_hops SEC(".maps");

/* reply_mode "tracked": the connections the workers hold records for. Sized by
 * user space before load like the flow tables together (1 entry otherwise),
 * and allocated in full at load like them: no allocation when a connection
 * opens, which halves what the workers' batched updates cost. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, struct reply_key);
	__type(value, __u8);
} tracked SEC(".maps");

/* This host's address on the back (one entry; 0 until user space sets it): the
 * source of the "fragmentation needed" the program answers daemons with. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} icmp_source SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 2 * MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline int count(__u32 which, int verdict)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &which);

	if (c)
		*c += 1;
	return verdict;
}

/* Where the walk to the TCP or UDP ports ended. */
enum walk {
	WALK_OK,        /* iph and tcph (first four bytes) readable */
	WALK_NOT_OURS,  /* not IPv4/TCP or UDP, or unreadable: the kernel's business */
	WALK_MALFORMED, /* IPv4/TCP or UDP with IHL < 5 or cut before the ports */
	WALK_FRAGMENT,  /* a non-first fragment: no ports to match */
	WALK_IPV6,      /* an IPv6 frame: steer_front6's, or the host's */
};

/* Bounds-checked walk to the TCP or UDP ports (the first four bytes of either
 * header, so `tcph` stands for both and only its ports are read). A UDP
 * length field is not checked here: a frame of a service with a wrong one
 * reaches user space, which counts it by reason. Frames with IP options or first
 * fragments still reach user space when they hit a service, so that they are
 * counted there by reason rather than silently handed to the kernel; what cannot
 * be matched to a service is counted here. */
static __always_inline enum walk walk(void *data, void *data_end, struct iphdr **iph_out,
				      struct tcphdr **tcph_out)
{
	struct ethhdr *eth = data;
	struct iphdr *iph;
	struct tcphdr *tcph;
	__u32 ihl_bytes;

	if ((void *)(eth + 1) > data_end) {
		count(CNT_TRUNCATED, 0);
		return WALK_NOT_OURS;
	}
	if (eth->h_proto == bpf_htons(ETH_P_8021Q) || eth->h_proto == bpf_htons(ETH_P_8021AD)) {
		count(CNT_VLAN, 0);
		return WALK_NOT_OURS;
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return WALK_IPV6;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return WALK_NOT_OURS;
	iph = (void *)(eth + 1);
	if ((void *)(iph + 1) > data_end) {
		count(CNT_TRUNCATED, 0);
		return WALK_NOT_OURS;
	}
	*iph_out = iph;
	if (iph->protocol != IPPROTO_TCP && iph->protocol != IPPROTO_UDP)
		return WALK_NOT_OURS;
	if (iph->frag_off & bpf_htons(0x1fff))
		return WALK_FRAGMENT;
	ihl_bytes = iph->ihl * 4;
	if (ihl_bytes < sizeof(*iph))
		return WALK_MALFORMED;
	tcph = (void *)iph + ihl_bytes;
	/* The ports are the first four bytes of the TCP and the UDP header. */
	if ((void *)tcph + 4 > data_end)
		return WALK_MALFORMED;
	*tcph_out = tcph;
	return WALK_OK;
}

static __always_inline int to_socket(__u32 slot, __u32 steered)
{
	int verdict;

	if (bare_xdp_redirect)
		return count(steered,
			     bpf_redirect(slot < MAX_QUEUES ? back_ifindex : front_ifindex, 0));
	/* The default action (low bits of flags) applies when the slot is empty:
	 * dropping lets the client retransmit instead of the kernel answering a
	 * service SYN with a RST before the sockets are in place. */
	verdict = bpf_redirect_map(&xsks, slot, XDP_DROP);
	return count(verdict == XDP_REDIRECT ? steered : CNT_NO_SOCKET, verdict);
}

static __always_inline void direct_syn(void *data_end, struct iphdr *iph, struct tcphdr *tcph);

static __always_inline int steer_front(struct xdp_md *ctx, struct iphdr *iph, struct tcphdr *tcph)
{
	struct endpoint key = { .addr = iph->daddr, .port = tcph->dest, .protocol = iph->protocol };

	/* A VIP port with a service of the other protocol only is the host's. */
	if (!bpf_map_lookup_elem(&services, &key)) {
		if (track_replies)
			direct_syn((void *)(long)ctx->data_end, iph, tcph);
		return count(CNT_PASSED, XDP_PASS);
	}
	return to_socket(ctx->rx_queue_index, CNT_FRONT_STEERED);
}

/* IPv4 flags/fragment-offset word (host order), as in the kernel's net/ip.h. */
#define IP_DF 0x4000
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

/* The quote of an ICMP error that TCP and UDP act on (destination unreachable,
 * time exceeded, parameter problem; not the deprecated source quench, which
 * hosts ignore): an option-less IPv4 header of a TCP segment or UDP datagram
 * that carries its ports, and the 8 bytes of L4 header RFC 792 promises. The outer header must have no
 * options and not be a fragment (an error of at most 576 bytes never is).
 * Returns the quoted IPv4 header and its ports, or 0: not one to translate, and
 * the kernel's business. */
static __always_inline struct iphdr *icmp_quote(void *data_end, struct iphdr *iph,
						__be16 **ports)
{
	struct icmp_error_hdr *icmp;
	struct iphdr *quote;
	__be16 *p;

	if (iph->ihl != 5 || (iph->frag_off & bpf_htons(IP_MF | IP_OFFSET)))
		return 0;
	icmp = (void *)(iph + 1);
	if ((void *)(icmp + 1) > data_end)
		return 0;
	if (icmp->type != ICMP_DEST_UNREACH && icmp->type != ICMP_TIME_EXCEEDED &&
	    icmp->type != ICMP_PARAMETERPROB)
		return 0;
	quote = (void *)(icmp + 1);
	if ((void *)(quote + 1) > data_end)
		return 0;
	if (quote->ihl != 5 || (quote->protocol != IPPROTO_TCP && quote->protocol != IPPROTO_UDP) ||
	    (quote->frag_off & bpf_htons(IP_OFFSET)))
		return 0;
	p = (void *)(quote + 1);
	if ((void *)p + 8 > data_end)
		return 0;
	*ports = p;
	return quote;
}

/* An error to a VIP quoting a reply from a service (VIP:port -> client): the
 * reply's daemon must hear of it, and only the management loop knows which that
 * is, so user space takes it. */
static __always_inline int steer_front_icmp(struct xdp_md *ctx, void *data_end, struct iphdr *iph)
{
	struct endpoint key = {};
	struct iphdr *quote;
	__be16 *ports = 0;
	__u32 daddr = iph->daddr;

	if (!bpf_map_lookup_elem(&vip_addrs, &daddr))
		return count(CNT_PASSED, XDP_PASS);
	quote = icmp_quote(data_end, iph, &ports);
	if (!quote || !ports)
		return count(CNT_PASSED, XDP_PASS);
	key.addr = quote->saddr;
	key.port = ports[0];
	key.protocol = quote->protocol;
	if (!bpf_map_lookup_elem(&services, &key))
		return count(CNT_PASSED, XDP_PASS);
	return to_socket(ctx->rx_queue_index, CNT_ICMP_FRONT_STEERED);
}

static __always_inline __u16 csum_fold(__s64 partial)
{
	__u32 sum = (__u32)partial;

	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* The answer: Ethernet, IPv4, ICMP, the reply's IPv4 header and 8 bytes. */
#define FRAG_NEEDED_LEN                                                                    \
	(sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct icmp_error_hdr) +           \
	 sizeof(struct iphdr) + 8)

/* A reply larger than the front path's MTU: what a router on the way would do,
 * in place. The daemon gets "fragmentation needed" with the route's MTU, quoting
 * the reply as it sent it, from this host's back address, and lowers its path
 * MTU for the client; the reply itself is dropped (XDP cannot fragment, and a
 * sender that sets DF asked not to be). */
static __always_inline int frag_needed(struct xdp_md *ctx, __u16 mtu)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *reply = (void *)(eth + 1);
	unsigned char to[ETH_ALEN], from[ETH_ALEN];
	struct icmp_error_hdr *icmp;
	struct iphdr *iph;
	__u32 zero = 0, saddr, daddr, *src;
	int len;

	if ((void *)(reply + 1) + 8 > data_end)
		return count(CNT_TOO_BIG, XDP_DROP);
	/* RFC 1191: only a sender that set DF is told; one that did not expects
	 * fragmentation. With options the quote would not have a fixed length. */
	if (reply->ihl != 5 || !(reply->frag_off & bpf_htons(IP_DF)))
		return count(CNT_TOO_BIG, XDP_DROP);
	src = bpf_map_lookup_elem(&icmp_source, &zero);
	if (!src || !*src)
		return count(CNT_TOO_BIG, XDP_DROP);
	saddr = *src;
	daddr = reply->saddr;
	/* Back the way the reply came: to the hop that sent it, from the back. */
	__builtin_memcpy(to, eth->h_source, ETH_ALEN);
	__builtin_memcpy(from, eth->h_dest, ETH_ALEN);

	/* The new IPv4 and ICMP headers take the place of the reply's Ethernet
	 * header and the headroom before it, so the reply's IPv4 header and its
	 * first 8 bytes stay where they are as the quote; the rest is cut. */
	if (bpf_xdp_adjust_head(ctx, -(int)(sizeof(struct iphdr) + sizeof(struct icmp_error_hdr))))
		return count(CNT_TOO_BIG, XDP_DROP);
	len = (int)((long)ctx->data_end - (long)ctx->data);
	if (bpf_xdp_adjust_tail(ctx, (int)FRAG_NEEDED_LEN - len))
		return count(CNT_TOO_BIG, XDP_DROP);
	/* Both helpers invalidate every packet pointer: check again. */
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	iph = (void *)(eth + 1);
	icmp = (void *)(iph + 1);
	if (data + FRAG_NEEDED_LEN > data_end)
		return count(CNT_TOO_BIG, XDP_DROP);

	__builtin_memcpy(eth->h_dest, to, ETH_ALEN);
	__builtin_memcpy(eth->h_source, from, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);
	iph->version = 4;
	iph->ihl = 5;
	/* As the kernel's own errors: internetwork control, DF clear, a fresh TTL. */
	iph->tos = 0xc0;
	iph->tot_len = bpf_htons(FRAG_NEEDED_LEN - sizeof(struct ethhdr));
	iph->id = 0;
	iph->frag_off = 0;
	iph->ttl = 64;
	iph->protocol = IPPROTO_ICMP;
	iph->check = 0;
	iph->saddr = saddr;
	iph->daddr = daddr;
	icmp->type = ICMP_DEST_UNREACH;
	icmp->code = ICMP_FRAG_NEEDED;
	icmp->checksum = 0;
	icmp->unused = 0;
	icmp->mtu = bpf_htons(mtu);
	/* Sizes are multiples of 4, as bpf_csum_diff requires. */
	icmp->checksum = csum_fold(bpf_csum_diff(0, 0, (__be32 *)icmp,
						 sizeof(*icmp) + sizeof(struct iphdr) + 8, 0));
	iph->check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)iph, sizeof(*iph), 0));
	return count(CNT_FRAG_NEEDED_SENT, XDP_TX);
}

/* Passed to the kernel, with the reason counted beside `passed`. */
static __always_inline int pass_back(__u32 reason)
{
	count(reason, 0);
	return count(CNT_PASSED, XDP_PASS);
}

/* reply_mode "tracked": who owns a tracked 4-tuple at the daemon (the value of
 * `tracked` and `tracked6`). User space writes TRACKED_BY_WORKER when a worker
 * opens a connection, or one that reuses a closing connection's port. A client
 * may then reach the daemon directly (routed through this host) from the port
 * of a VIP connection whose record still lingers: at the daemon that is the
 * same 4-tuple. Its SYN marks the key DIRECT_PROBED on the way; if the daemon
 * answers with a SYN-ACK, it accepted a new connection, so no live one had the
 * 4-tuple: the key becomes DIRECT_OWNED and its frames are the host's, as
 * conntrack lets a SYN reopen a closed entry. Any other answer means the
 * tracked connection still lives there (a spoofed SYN gets a challenge ACK):
 * the key goes back to TRACKED_BY_WORKER, so a SYN alone takes nothing over. */
#define TRACKED_BY_WORKER 1
#define DIRECT_PROBED 2
#define DIRECT_OWNED 3

#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

/* The TCP flags byte, if the header is readable that far (-1 otherwise). */
static __always_inline int tcp_flags(void *data_end, struct tcphdr *tcph)
{
	__u8 *flags = (__u8 *)tcph + 13;

	if ((void *)(flags + 1) > data_end)
		return -1;
	return *flags;
}

static __always_inline int is_bare_syn(void *data_end, struct tcphdr *tcph)
{
	int flags = tcp_flags(data_end, tcph);

	return flags >= 0 && (flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

static __always_inline void direct_probe(__u8 *owner)
{
	if (owner && *owner == TRACKED_BY_WORKER)
		*owner = DIRECT_PROBED;
}

/* What untracked() answers for a frame of the tracked connection: no reason
 * to pass it (CNT_FRONT_STEERED is never one). */
#define TRACKED_REPLY 0

/* reply_mode "tracked": why a daemon frame whose 4-tuple has the key `owner`
 * (0: none) is passed to the host, or TRACKED_REPLY if it is the tracked
 * connection's. */
static __always_inline __u32 untracked(void *data_end, __u8 *owner, __u8 protocol,
				       struct tcphdr *tcph)
{
	int flags;

	if (!owner)
		return CNT_BACK_UNTRACKED;
	if (*owner == TRACKED_BY_WORKER)
		return TRACKED_REPLY;
	if (*owner == DIRECT_OWNED)
		return CNT_BACK_UNTRACKED;
	flags = protocol == IPPROTO_TCP ? tcp_flags(data_end, tcph) : -1;
	if (flags >= 0 && (flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == (TCP_FLAG_SYN | TCP_FLAG_ACK)) {
		*owner = DIRECT_OWNED;
		return CNT_DIRECT_TOOK_OVER;
	}
	*owner = TRACKED_BY_WORKER;
	return TRACKED_REPLY;
}

/* reply_mode "tracked": why an error quoting a client's segment to a daemon,
 * whose 4-tuple has the key `owner` (0: none), is passed to the host, or
 * TRACKED_REPLY if it is about the tracked connection. A key the direct-SYN
 * probe marked stays the tracked connection's, as in untracked(), but an error
 * is no answer to the probe and leaves it as it is. */
static __always_inline __u32 quote_untracked(__u8 *owner)
{
	if (!owner || *owner == DIRECT_OWNED)
		return CNT_BACK_UNTRACKED;
	return TRACKED_REPLY;
}

/* reply_mode "tracked": is this daemon frame a reply of a connection a worker
 * holds a record for? Anything else from the daemon's address and port (a host
 * that reaches the daemon directly, through this one or not) stays the host's:
 * the reason it is passed, or TRACKED_REPLY. */
static __always_inline __u32 reply_untracked(void *data_end, struct iphdr *iph,
					     struct tcphdr *tcph)
{
	struct reply_key key = {
		.client_addr = iph->daddr,
		.daemon_addr = iph->saddr,
		.client_port = tcph->dest,
		.daemon_port = tcph->source,
		.protocol = iph->protocol,
	};

	return untracked(data_end, bpf_map_lookup_elem(&tracked, &key), iph->protocol, tcph);
}

/* A client's TCP SYN (no ACK) passing through the front to a daemon's own
 * address (a direct connection) whose 4-tuple a tracked connection holds. */
static __always_inline void direct_syn(void *data_end, struct iphdr *iph, struct tcphdr *tcph)
{
	struct reply_key key = {
		.client_addr = iph->saddr,
		.daemon_addr = iph->daddr,
		.client_port = tcph->source,
		.daemon_port = tcph->dest,
		.protocol = IPPROTO_TCP,
	};

	if (iph->protocol != IPPROTO_TCP || !is_bare_syn(data_end, tcph))
		return;
	direct_probe(bpf_map_lookup_elem(&tracked, &key));
}

/* Where the kernel would send a frame from a daemon to `iph`'s destination (a
 * client), leaving as from `src` (the VIP it answers for) with ports `sport`,
 * `dport` (0 for an ICMP error): the lookup its forwarding path makes for a
 * frame arriving on the back (no output interface), so `fib->ifindex` is the
 * route's true egress and a local destination (any address of this host: every
 * interface's, the VIPs, loopback-routed ones) comes back NOT_FWDED. Not
 * BPF_FIB_LOOKUP_OUTPUT with the front as ifindex: that sets the front as the
 * flow's output interface, and fib_table_lookup then skips every next hop on
 * another interface (fib_lookup_good_nhc), so a destination routed elsewhere
 * falls through to a shorter prefix through the front (a default route) or to
 * no route at all. The kernel answers only if the back forwards IPv4
 * (FWD_DISABLED otherwise). The source makes `from VIP` policy rules pick the
 * route; the ports feed a multipath hash. A frame larger than the route's MTU
 * gets FRAG_NEEDED and the MTU in `fib->mtu_result`, before the kernel says
 * the egress: `with_len` 0 asks again without the length. */
static __always_inline int reply_route(struct xdp_md *ctx, struct iphdr *iph, __u32 src,
				       __be16 sport, __be16 dport, int with_len,
				       struct bpf_fib_lookup *fib)
{
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->family = AF_INET;
	fib->l4_protocol = iph->protocol;
	fib->sport = sport;
	fib->dport = dport;
	fib->tot_len = with_len ? bpf_ntohs(iph->tot_len) : 0;
	fib->ipv4_src = src;
	fib->ipv4_dst = iph->daddr;
	fib->ifindex = back_ifindex;
	return bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
}

/* The kernel has no neighbour entry for the hop towards the client (the lookup
 * left that hop in ipv4_dst): note it for the management loop, which makes the
 * kernel resolve it, and drop the reply meanwhile; TCP sends it again. Passing
 * it instead would make the host forward it with the daemon's source, and the
 * client's RST would reset the daemon's connection. */
static __always_inline int unresolved_hop(struct bpf_fib_lookup *fib)
{
	__u32 hop = fib->ipv4_dst;
	__u8 one = 1;

	/* A burst of replies to one hop updates it once. */
	if (!bpf_map_lookup_elem(&unresolved_hops, &hop))
		bpf_map_update_elem(&unresolved_hops, &hop, &one, BPF_ANY);
	return count(CNT_FIB_NO_NEIGH, XDP_DROP);
}

/* Sets the Ethernet addresses of a daemon's frame (a reply, or an error about a
 * client's segment) for the hop towards the client, if the kernel would send
 * it out of the front; `sport`, `dport` as for reply_route. Returns 0 when
 * the frame is ready for a back socket, else the frame's verdict: passed to the
 * host (not for a client), dropped (no route, no neighbour yet), or, with
 * `answer_too_big`, turned into "fragmentation needed" for the daemon. */
static __always_inline int to_client(struct xdp_md *ctx, struct ethhdr *eth, struct iphdr *iph,
				     __u32 src, __be16 sport, __be16 dport, int answer_too_big)
{
	struct bpf_fib_lookup fib;
	__u16 mtu = 0;
	int rc;

	rc = reply_route(ctx, iph, src, sport, dport, 1, &fib);
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED) {
		/* Too big for the route; whether it is the front's route (ours to
		 * answer) or another's (the host's, which answers it itself) the
		 * kernel only says when asked without the length. */
		mtu = fib.mtu_result;
		rc = reply_route(ctx, iph, src, sport, dport, 0, &fib);
		if (rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
			if (fib.ifindex != front_ifindex)
				return pass_back(CNT_BACK_NOT_FRONT);
			if (answer_too_big)
				return frag_needed(ctx, mtu);
			/* An error is at most 576 bytes: a front route with a
			 * smaller MTU, below IPv4's minimum, is a failed lookup. */
			return count(CNT_FIB_FAILED, XDP_DROP);
		}
	}
	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		/* Clients are reached through the front; a route out of any
		 * other interface is to a host the daemon talks to directly. */
		if (fib.ifindex != front_ifindex)
			return pass_back(CNT_BACK_NOT_FRONT);
		if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
			return unresolved_hop(&fib);
		break;
	case BPF_FIB_LKUP_RET_NOT_FWDED:
		return pass_back(CNT_BACK_TO_HOST);
	case BPF_FIB_LKUP_RET_FWD_DISABLED:
		/* The kernel cannot forward it either: what is local still gets
		 * delivered (health probes), the rest is dropped there. */
		return pass_back(CNT_FWD_DISABLED);
	default:
		return count(CNT_FIB_FAILED, XDP_DROP);
	}
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	return 0;
}

static __always_inline int steer_back(struct xdp_md *ctx, struct ethhdr *eth,
				      struct iphdr *iph, struct tcphdr *tcph)
{
	struct endpoint key = { .addr = iph->saddr, .port = tcph->source, .protocol = iph->protocol };
	struct daemon_info *daemon;
	int verdict;

	daemon = bpf_map_lookup_elem(&daemons, &key);
	if (!daemon)
		return count(CNT_PASSED, XDP_PASS);
	if (track_replies) {
		__u32 reason = reply_untracked((void *)(long)ctx->data_end, iph, tcph);

		if (reason != TRACKED_REPLY)
			return pass_back(reason);
	}
	verdict = to_client(ctx, eth, iph, daemon->service.addr, daemon->service.port,
			    tcph->dest, 1);
	if (verdict)
		return verdict;
	return to_socket(MAX_QUEUES + ctx->rx_queue_index, CNT_BACK_STEERED);
}

/* An error on the back quoting a client's segment as forwarded (client ->
 * daemon:port), on its way to the client: translated towards the client like a
 * reply, so it takes the reply's way out. One for this host (NOT_FWDED) is the
 * host's. */
static __always_inline int steer_back_icmp(struct xdp_md *ctx, struct ethhdr *eth,
					   void *data_end, struct iphdr *iph)
{
	struct endpoint key = {};
	struct daemon_info *daemon;
	struct iphdr *quote;
	__be16 *ports = 0;
	int verdict;

	quote = icmp_quote(data_end, iph, &ports);
	if (!quote || !ports)
		return count(CNT_PASSED, XDP_PASS);
	key.addr = quote->daddr;
	key.port = ports[1];
	key.protocol = quote->protocol;
	daemon = bpf_map_lookup_elem(&daemons, &key);
	if (!daemon)
		return count(CNT_PASSED, XDP_PASS);
	if (track_replies) {
		/* An error about a direct connection to the daemon is the host's,
		 * as that connection's frames are. */
		struct reply_key tk = {
			.client_addr = quote->saddr,
			.daemon_addr = quote->daddr,
			.client_port = ports[0],
			.daemon_port = ports[1],
			.protocol = quote->protocol,
		};
		__u32 reason = quote_untracked(bpf_map_lookup_elem(&tracked, &tk));

		if (reason != TRACKED_REPLY)
			return pass_back(reason);
	}
	verdict = to_client(ctx, eth, iph, daemon->service.addr, 0, 0, 0);
	if (verdict)
		return verdict;
	return to_socket(MAX_QUEUES + ctx->rx_queue_index, CNT_ICMP_BACK_STEERED);
}

/* An IPv6 extension header (RFC 8200 section 4, the IANA registry; ESP too, as
 * nothing after it is readable): hop-by-hop, routing, fragment, ESP, AH,
 * destination options, mobility, HIP, shim6, experimental. The same list as
 * `is_extension_header` in src/packet/ipv6.rs. */
static __always_inline int ipv6_ext_header(__u8 next)
{
	switch (next) {
	case 0: case 43: case 44: case 50: case 51: case 60:
	case 135: case 139: case 140: case 253: case 254:
		return 1;
	default:
		return 0;
	}
}

/* An IPv6 frame on the front. Only frames to a VIP of services6 are looked at:
 * everything else (neighbour discovery and router advertisements, which go to
 * multicast or link-local addresses, the host's own traffic) is the host's at the
 * cost of one lookup. To a VIP: TCP or UDP to a service goes to the front socket;
 * ICMPv6 (neighbour solicitations for the VIP, echo) and other ports and
 * protocols are the host's. An extension header is dropped and counted rather
 * than walked: the workers drop them by policy (DropReason::Ipv6ExtensionHeader),
 * and passed, a segment with one would reach the host's stack, which owns the
 * VIP and would answer a service port it does not listen on with a reset for the
 * client's connection (the IPv4 side drops what it cannot match to a service on
 * a VIP for the same reason). */
static __always_inline int steer_front_icmp6(struct xdp_md *ctx, void *data_end,
					     struct ipv6hdr *ip6);

/* direct_syn's IPv6 twin: a TCP SYN to an address that is no VIP. */
static __always_inline void direct_syn6(void *data_end, struct ipv6hdr *ip6)
{
	struct reply_key6 key = { .protocol = IPPROTO_TCP };
	struct tcphdr *tcph = (void *)(ip6 + 1);

	if (ip6->nexthdr != IPPROTO_TCP || !is_bare_syn(data_end, tcph))
		return;
	__builtin_memcpy(key.client_addr, &ip6->saddr, 16);
	__builtin_memcpy(key.daemon_addr, &ip6->daddr, 16);
	key.client_port = tcph->source;
	key.daemon_port = tcph->dest;
	direct_probe(bpf_map_lookup_elem(&tracked6, &key));
}

static __always_inline int steer_front6(struct xdp_md *ctx, void *data, void *data_end)
{
	struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
	struct endpoint6 key = {};
	__be16 *ports;
	__u8 next;

	if ((void *)(ip6 + 1) > data_end)
		return pass_back(CNT_TRUNCATED);
	if (!bpf_map_lookup_elem(&vip6_addrs, &ip6->daddr)) {
		if (track_replies)
			direct_syn6(data_end, ip6);
		return pass_back(CNT_IPV6);
	}
	next = ip6->nexthdr;
	if (ipv6_ext_header(next))
		return count(CNT_VIP6_EXT_HEADER, XDP_DROP);
	if (next == IPPROTO_ICMPV6)
		return steer_front_icmp6(ctx, data_end, ip6);
	if (next != IPPROTO_TCP && next != IPPROTO_UDP)
		return pass_back(CNT_IPV6);
	ports = (void *)(ip6 + 1);
	if ((void *)ports + 4 > data_end)
		return count(CNT_VIP_MALFORMED, XDP_DROP);
	__builtin_memcpy(key.addr, &ip6->daddr, sizeof(key.addr));
	key.port = ports[1];
	key.protocol = next;
	if (!bpf_map_lookup_elem(&services6, &key))
		return pass_back(CNT_IPV6);
	return to_socket(ctx->rx_queue_index, CNT_FRONT6_STEERED);
}

/* An ICMPv6 error's header (RFC 4443): the last word is the MTU of "packet too
 * big", the pointer of "parameter problem", unused otherwise. */
struct icmp6_error_hdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be32 mtu;
};
#ifndef IPPROTO_ICMPV6
#define IPPROTO_ICMPV6 58
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_PKT_TOOBIG 2
#define ICMPV6_TIME_EXCEED 3
#define ICMPV6_PARAMPROB 4

/* The quote of an ICMPv6 error TCP and UDP act on (types 1-4): an IPv6 header
 * of a TCP segment or UDP datagram with no extension header, and the 8 bytes of
 * L4 header that hold its ports. The outer header must have no extension
 * header either. Returns the quoted header and its ports, or 0: the kernel's. */
static __always_inline struct ipv6hdr *icmp6_quote(void *data_end, struct ipv6hdr *ip6,
						  __be16 **ports)
{
	struct icmp6_error_hdr *icmp;
	struct ipv6hdr *quote;
	__be16 *p;

	if (ip6->nexthdr != IPPROTO_ICMPV6)
		return 0;
	icmp = (void *)(ip6 + 1);
	if ((void *)(icmp + 1) > data_end)
		return 0;
	if (icmp->type < ICMPV6_DEST_UNREACH || icmp->type > ICMPV6_PARAMPROB)
		return 0;
	quote = (void *)(icmp + 1);
	if ((void *)(quote + 1) > data_end)
		return 0;
	if (quote->nexthdr != IPPROTO_TCP && quote->nexthdr != IPPROTO_UDP)
		return 0;
	p = (void *)(quote + 1);
	if ((void *)p + 8 > data_end)
		return 0;
	*ports = p;
	return quote;
}

/* An ICMPv6 error to a VIP (steer_front6 checked it is one) quoting a reply
 * from a service: the loop finds the daemon, as for IPv4. */
static __always_inline int steer_front_icmp6(struct xdp_md *ctx, void *data_end,
					     struct ipv6hdr *ip6)
{
	struct endpoint6 key = {};
	struct ipv6hdr *quote;
	__be16 *ports = 0;

	quote = icmp6_quote(data_end, ip6, &ports);
	if (!quote || !ports)
		return pass_back(CNT_IPV6);
	__builtin_memcpy(key.addr, &quote->saddr, sizeof(key.addr));
	key.port = ports[0];
	key.protocol = quote->nexthdr;
	if (!bpf_map_lookup_elem(&services6, &key))
		return pass_back(CNT_IPV6);
	return to_socket(ctx->rx_queue_index, CNT_ICMP6_FRONT_STEERED);
}

/* reply_route for IPv6: the forwarding path's lookup for a frame arriving on
 * the back, from `src` (the VIP6) to the frame's destination. The kernel
 * (bpf_ipv6_fib_lookup, net/core/filter.c) answers FWD_DISABLED unless the
 * device of `fib->ifindex`, the back, forwards IPv6 (its own
 * net.ipv6.conf.<back>.forwarding, not `all`), NOT_FWDED for link-local,
 * multicast and loopback addresses, local destinations and no route, and
 * checks `tot_len` (the whole IPv6 packet) against the route's MTU before it
 * picks the next hop. */
static __always_inline int reply_route6(struct xdp_md *ctx, struct ipv6hdr *ip6, const __u8 *src,
					__be16 sport, __be16 dport, int with_len,
					struct bpf_fib_lookup *fib)
{
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->family = AF_INET6;
	/* Traffic class and flow label (the flow label feeds a multipath hash). */
	fib->flowinfo = *(__be32 *)ip6 & bpf_htonl(0x0fffffff);
	fib->l4_protocol = ip6->nexthdr;
	fib->sport = sport;
	fib->dport = dport;
	fib->tot_len = with_len ? sizeof(*ip6) + bpf_ntohs(ip6->payload_len) : 0;
	__builtin_memcpy(fib->ipv6_src, src, 16);
	__builtin_memcpy(fib->ipv6_dst, &ip6->daddr, 16);
	fib->ifindex = back_ifindex;
	return bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
}

/* As unresolved_hop: the lookup left the hop (the client, or its router) in
 * ipv6_dst. */
static __always_inline int unresolved_hop6(struct bpf_fib_lookup *fib)
{
	struct in6_addr hop;
	__u8 one = 1;

	__builtin_memcpy(&hop, fib->ipv6_dst, sizeof(hop));
	if (!bpf_map_lookup_elem(&unresolved_hops6, &hop))
		bpf_map_update_elem(&unresolved_hops6, &hop, &one, BPF_ANY);
	return count(CNT_FIB_NO_NEIGH, XDP_DROP);
}

/* The answer: Ethernet, IPv6, ICMPv6, then the quote: the reply's IPv6 header
 * and the 8 bytes of TCP or UDP header after it. RFC 4443 asks for as much of
 * the packet as fits in 1280 bytes; 8 bytes are what a receiver needs (Linux
 * reads the ports and the sequence number) and keep the checksum one fixed
 * bpf_csum_diff, as the IPv4 answer's. */
#define PTB_QUOTE_LEN (sizeof(struct ipv6hdr) + 8)
#define PTB_ICMP_LEN (sizeof(struct icmp6_error_hdr) + PTB_QUOTE_LEN)
#define PACKET_TOO_BIG_LEN (sizeof(struct ethhdr) + sizeof(struct ipv6hdr) + PTB_ICMP_LEN)

/* frag_needed for IPv6: routers never fragment IPv6, so every sender of a
 * packet too big for the next link is told, whatever its flags. */
static __always_inline int packet_too_big(struct xdp_md *ctx, __u32 mtu)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *reply = (void *)(eth + 1);
	unsigned char to[ETH_ALEN], from[ETH_ALEN];
	struct icmp6_error_hdr *icmp;
	struct in6_addr saddr, daddr, *src;
	struct ipv6hdr *ip6;
	__be32 pseudo[2];
	__u32 zero = 0;
	__s64 sum;
	int len;

	if ((void *)reply + PTB_QUOTE_LEN > data_end)
		return count(CNT_TOO_BIG, XDP_DROP);
	src = bpf_map_lookup_elem(&icmp_source6, &zero);
	if (!src || !(src->in6_u.u6_addr32[0] | src->in6_u.u6_addr32[1] |
		      src->in6_u.u6_addr32[2] | src->in6_u.u6_addr32[3]))
		return count(CNT_TOO_BIG, XDP_DROP);
	saddr = *src;
	__builtin_memcpy(&daddr, &reply->saddr, sizeof(daddr));
	__builtin_memcpy(to, eth->h_source, ETH_ALEN);
	__builtin_memcpy(from, eth->h_dest, ETH_ALEN);

	/* As frag_needed: the new headers go before the reply's IPv6 header,
	 * which stays in place as the quote; the rest is cut. */
	if (bpf_xdp_adjust_head(ctx, -(int)(sizeof(struct ipv6hdr) + sizeof(struct icmp6_error_hdr))))
		return count(CNT_TOO_BIG, XDP_DROP);
	len = (int)((long)ctx->data_end - (long)ctx->data);
	if (bpf_xdp_adjust_tail(ctx, (int)PACKET_TOO_BIG_LEN - len))
		return count(CNT_TOO_BIG, XDP_DROP);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	ip6 = (void *)(eth + 1);
	icmp = (void *)(ip6 + 1);
	if (data + PACKET_TOO_BIG_LEN > data_end)
		return count(CNT_TOO_BIG, XDP_DROP);

	__builtin_memcpy(eth->h_dest, to, ETH_ALEN);
	__builtin_memcpy(eth->h_source, from, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IPV6);
	/* Version 6, traffic class and flow label 0. */
	*(__be32 *)ip6 = bpf_htonl(0x60000000);
	ip6->payload_len = bpf_htons(PTB_ICMP_LEN);
	ip6->nexthdr = IPPROTO_ICMPV6;
	ip6->hop_limit = 64;
	__builtin_memcpy(&ip6->saddr, &saddr, sizeof(saddr));
	__builtin_memcpy(&ip6->daddr, &daddr, sizeof(daddr));
	icmp->type = ICMPV6_PKT_TOOBIG;
	icmp->code = 0;
	icmp->checksum = 0;
	icmp->mtu = bpf_htonl(mtu);
	/* Over the pseudo-header (addresses, upper-layer length, next header)
	 * and the message; every size a multiple of 4, as bpf_csum_diff needs. */
	pseudo[0] = bpf_htonl(PTB_ICMP_LEN);
	pseudo[1] = bpf_htonl(IPPROTO_ICMPV6);
	sum = bpf_csum_diff(0, 0, (__be32 *)&ip6->saddr, 32, 0);
	sum = bpf_csum_diff(0, 0, pseudo, sizeof(pseudo), (__u32)sum);
	sum = bpf_csum_diff(0, 0, (__be32 *)icmp, PTB_ICMP_LEN, (__u32)sum);
	icmp->checksum = csum_fold(sum);
	return count(CNT_PACKET_TOO_BIG_SENT, XDP_TX);
}

/* to_client for IPv6: the Ethernet addresses of a daemon's frame towards the
 * client from the FIB, or the frame's verdict. The same outcomes and counters
 * as IPv4. */
static __always_inline int to_client6(struct xdp_md *ctx, struct ethhdr *eth, struct ipv6hdr *ip6,
				      const __u8 *src, __be16 sport, __be16 dport, int answer_too_big)
{
	struct bpf_fib_lookup fib;
	__u32 mtu = 0;
	int rc;

	rc = reply_route6(ctx, ip6, src, sport, dport, 1, &fib);
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED) {
		mtu = fib.mtu_result;
		rc = reply_route6(ctx, ip6, src, sport, dport, 0, &fib);
		if (rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
			if (fib.ifindex != front_ifindex)
				return pass_back(CNT_BACK_NOT_FRONT);
			if (answer_too_big)
				return packet_too_big(ctx, mtu);
			/* An ICMPv6 error fits the IPv6 minimum MTU; a route below it
			 * is a failed lookup. */
			return count(CNT_FIB_FAILED, XDP_DROP);
		}
	}
	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		if (fib.ifindex != front_ifindex)
			return pass_back(CNT_BACK_NOT_FRONT);
		if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
			return unresolved_hop6(&fib);
		break;
	case BPF_FIB_LKUP_RET_NOT_FWDED:
		return pass_back(CNT_BACK_TO_HOST);
	case BPF_FIB_LKUP_RET_FWD_DISABLED:
		return pass_back(CNT_FWD_DISABLED);
	default:
		return count(CNT_FIB_FAILED, XDP_DROP);
	}
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	return 0;
}

/* An ICMPv6 error on the back quoting a client's segment as forwarded (client
 * -> daemon:port): towards the client like a reply, as steer_back_icmp. */
static __always_inline int steer_back_icmp6(struct xdp_md *ctx, struct ethhdr *eth,
					    void *data_end, struct ipv6hdr *ip6)
{
	struct endpoint6 key = {};
	struct daemon_info6 *daemon;
	struct ipv6hdr *quote;
	__be16 *ports = 0;
	int verdict;

	quote = icmp6_quote(data_end, ip6, &ports);
	if (!quote || !ports)
		return pass_back(CNT_IPV6);
	__builtin_memcpy(key.addr, &quote->daddr, sizeof(key.addr));
	key.port = ports[1];
	key.protocol = quote->nexthdr;
	daemon = bpf_map_lookup_elem(&daemons6, &key);
	if (!daemon)
		return pass_back(CNT_IPV6);
	if (track_replies) {
		struct reply_key6 tk = {
			.client_port = ports[0],
			.daemon_port = ports[1],
			.protocol = quote->nexthdr,
		};
		__u32 reason;

		__builtin_memcpy(tk.client_addr, &quote->saddr, 16);
		__builtin_memcpy(tk.daemon_addr, &quote->daddr, 16);
		reason = quote_untracked(bpf_map_lookup_elem(&tracked6, &tk));
		if (reason != TRACKED_REPLY)
			return pass_back(reason);
	}
	verdict = to_client6(ctx, eth, ip6, daemon->service.addr, 0, 0, 0);
	if (verdict)
		return verdict;
	return to_socket(MAX_QUEUES + ctx->rx_queue_index, CNT_ICMP6_BACK_STEERED);
}

/* An IPv6 frame on the back: a reply from a daemon of daemons6 (with reply_mode
 * "tracked", of a tracked connection) that the kernel would route out of the
 * front -> back socket with the FIB's Ethernet addresses (the worker rewrites
 * the source to the VIP6); one too big for the front path -> "packet too big"
 * to the daemon; an ICMPv6 error about a segment to a daemon -> back socket.
 * Everything else (neighbour discovery, the host's own conversations, a reply
 * with an extension header, which the workers would drop) is the host's. */
static __always_inline int steer_back6(struct xdp_md *ctx, void *data, void *data_end)
{
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
	struct endpoint6 key = {};
	struct daemon_info6 *daemon;
	__be16 *ports;
	int verdict;

	if ((void *)(ip6 + 1) > data_end)
		return pass_back(CNT_TRUNCATED);
	if (ip6->nexthdr == IPPROTO_ICMPV6)
		return steer_back_icmp6(ctx, eth, data_end, ip6);
	if (ip6->nexthdr != IPPROTO_TCP && ip6->nexthdr != IPPROTO_UDP)
		return pass_back(CNT_IPV6);
	ports = (void *)(ip6 + 1);
	if ((void *)ports + 4 > data_end)
		return pass_back(CNT_IPV6);
	__builtin_memcpy(key.addr, &ip6->saddr, sizeof(key.addr));
	key.port = ports[0];
	key.protocol = ip6->nexthdr;
	daemon = bpf_map_lookup_elem(&daemons6, &key);
	if (!daemon)
		return pass_back(CNT_IPV6);
	if (track_replies) {
		struct reply_key6 tk = {
			.client_port = ports[1],
			.daemon_port = ports[0],
			.protocol = ip6->nexthdr,
		};

		__u32 reason;

		__builtin_memcpy(tk.client_addr, &ip6->daddr, 16);
		__builtin_memcpy(tk.daemon_addr, &ip6->saddr, 16);
		reason = untracked(data_end, bpf_map_lookup_elem(&tracked6, &tk), ip6->nexthdr,
				   (void *)ports);
		if (reason != TRACKED_REPLY)
			return pass_back(reason);
	}
	verdict = to_client6(ctx, eth, ip6, daemon->service.addr, daemon->service.port,
			     ports[1], 1);
	if (verdict)
		return verdict;
	return to_socket(MAX_QUEUES + ctx->rx_queue_index, CNT_BACK6_STEERED);
}

SEC("xdp")
int dispatchd_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *iph = 0;
	struct tcphdr *tcph = 0;
	enum walk w;
	__u32 daddr;
	__u8 *kinds;

	if (ctx->rx_queue_index >= MAX_QUEUES)
		return count(CNT_PASSED, XDP_PASS);
	w = walk(data, data_end, &iph, &tcph);
	if (w == WALK_IPV6) {
		if (ctx->ingress_ifindex == front_ifindex)
			return steer_front6(ctx, data, data_end);
		if (ctx->ingress_ifindex == back_ifindex)
			return steer_back6(ctx, data, data_end);
		return pass_back(CNT_IPV6);
	}
	if (iph && iph->protocol == IPPROTO_ICMP) {
		if (ctx->ingress_ifindex == front_ifindex)
			return steer_front_icmp(ctx, data_end, iph);
		if (ctx->ingress_ifindex == back_ifindex)
			return steer_back_icmp(ctx, data, data_end, iph);
		return count(CNT_PASSED, XDP_PASS);
	}
	if (ctx->ingress_ifindex == front_ifindex && iph && w != WALK_NOT_OURS) {
		daddr = iph->daddr;
		if (w == WALK_OK)
			return steer_front(ctx, iph, tcph);
		kinds = bpf_map_lookup_elem(&vip_addrs, &daddr);
		if (kinds && (*kinds & (iph->protocol == IPPROTO_UDP ? VIP_UDP : VIP_TCP)))
			return count(w == WALK_FRAGMENT ? CNT_VIP_FRAGMENT : CNT_VIP_MALFORMED, XDP_DROP);
		return count(CNT_PASSED, XDP_PASS);
	}
	if (w != WALK_OK || !iph || !tcph)
		return count(CNT_PASSED, XDP_PASS);
	if (ctx->ingress_ifindex == back_ifindex)
		return steer_back(ctx, data, iph, tcph);
	return count(CNT_PASSED, XDP_PASS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
