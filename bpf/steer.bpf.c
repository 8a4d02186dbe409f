// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* dispatchd's steering program: one object attached to the front and the back
 * interface. It only decides *whether* a frame belongs to dispatchd; every rewrite
 * but the reply's Ethernet addresses happens in user space on the AF_XDP socket.
 *
 * front: IPv4/TCP frames to a configured (VIP, port)   -> front XSK of the rx queue
 * back:  IPv4/TCP frames from a configured daemon that
 *        the kernel would route out of the front (and,
 *        with reply_mode "tracked", of a tracked
 *        connection)                                   -> back XSK of the rx queue,
 *        with Ethernet addresses set from the kernel's FIB for the client
 * anything else                                        -> XDP_PASS (ARP, ICMP, ssh, the
 *        host's own conversations with the daemons, ...)
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "steer.h"

#ifndef AF_INET
#define AF_INET 2
#endif

/* Set by user space before load; the verifier then prunes the other branch. */
const volatile __u32 front_ifindex = 0;
const volatile __u32 back_ifindex = 0;
/* reply_mode "tracked": only replies of connections in `tracked` are taken. */
const volatile __u8 track_replies = 0;

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

/* The VIPs alone (any port): TCP frames to them that cannot be matched to a
 * service because they are malformed are dropped and counted, not passed. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SERVICES);
	__type(key, __u32);
	__type(value, __u8);
} vip_addrs SEC(".maps");

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

/* Where the walk to the TCP ports ended. */
enum walk {
	WALK_OK,        /* iph and tcph (first four bytes) readable */
	WALK_NOT_OURS,  /* not IPv4/TCP, or unreadable: the kernel's business */
	WALK_MALFORMED, /* IPv4/TCP with IHL < 5 or cut before the ports */
	WALK_FRAGMENT,  /* a non-first fragment: no ports to match */
};

/* Bounds-checked walk to the TCP ports. Frames with IP options or first
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
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		count(CNT_IPV6, 0);
		return WALK_NOT_OURS;
	}
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return WALK_NOT_OURS;
	iph = (void *)(eth + 1);
	if ((void *)(iph + 1) > data_end) {
		count(CNT_TRUNCATED, 0);
		return WALK_NOT_OURS;
	}
	*iph_out = iph;
	if (iph->protocol != IPPROTO_TCP)
		return WALK_NOT_OURS;
	if (iph->frag_off & bpf_htons(0x1fff))
		return WALK_FRAGMENT;
	ihl_bytes = iph->ihl * 4;
	if (ihl_bytes < sizeof(*iph))
		return WALK_MALFORMED;
	tcph = (void *)iph + ihl_bytes;
	/* The ports are the first four bytes of the TCP header. */
	if ((void *)tcph + 4 > data_end)
		return WALK_MALFORMED;
	*tcph_out = tcph;
	return WALK_OK;
}

static __always_inline int to_socket(__u32 slot, __u32 steered)
{
	/* The default action (low bits of flags) applies when the slot is empty:
	 * dropping lets the client retransmit instead of the kernel answering a
	 * service SYN with a RST before the sockets are in place. */
	int verdict = bpf_redirect_map(&xsks, slot, XDP_DROP);

	return count(verdict == XDP_REDIRECT ? steered : CNT_NO_SOCKET, verdict);
}

static __always_inline int steer_front(struct xdp_md *ctx, struct iphdr *iph, struct tcphdr *tcph)
{
	struct endpoint key = { .addr = iph->daddr, .port = tcph->dest };

	if (!bpf_map_lookup_elem(&services, &key))
		return count(CNT_PASSED, XDP_PASS);
	return to_socket(ctx->rx_queue_index, CNT_FRONT_STEERED);
}

/* Passed to the kernel, with the reason counted beside `passed`. */
static __always_inline int pass_back(__u32 reason)
{
	count(reason, 0);
	return count(CNT_PASSED, XDP_PASS);
}

/* reply_mode "tracked": is this daemon frame a reply of a connection a worker
 * holds a record for? Anything else from the daemon's address and port (a host
 * that reaches the daemon directly, through this one or not) stays the host's. */
static __always_inline int reply_tracked(struct iphdr *iph, struct tcphdr *tcph)
{
	struct reply_key key = {
		.client_addr = iph->daddr,
		.daemon_addr = iph->saddr,
		.client_port = tcph->dest,
		.daemon_port = tcph->source,
	};

	return bpf_map_lookup_elem(&tracked, &key) != 0;
}

/* Where the kernel would send this frame: the lookup its forwarding path makes
 * for a frame arriving on the back (no output interface), so `fib->ifindex` is
 * the route's true egress and a local destination (any address of this host:
 * every interface's, the VIPs, loopback-routed ones) comes back NOT_FWDED. Not
 * BPF_FIB_LOOKUP_OUTPUT with the front as ifindex: that sets the front as the
 * flow's output interface, and fib_table_lookup then skips every next hop on
 * another interface (fib_lookup_good_nhc), so a destination routed elsewhere
 * falls through to a shorter prefix through the front (a default route) or to
 * no route at all. The kernel answers only if the back forwards IPv4
 * (FWD_DISABLED otherwise). The source is the VIP the reply leaves with, so
 * `from VIP` policy rules pick its route; the reply's ports feed a multipath
 * hash. */
static __always_inline int reply_route(struct xdp_md *ctx, struct iphdr *iph,
				       struct tcphdr *tcph, struct daemon_info *daemon,
				       struct bpf_fib_lookup *fib)
{
	fib->family = AF_INET;
	fib->l4_protocol = IPPROTO_TCP;
	fib->sport = daemon->service.port;
	fib->dport = tcph->dest;
	fib->tot_len = bpf_ntohs(iph->tot_len);
	fib->ipv4_src = daemon->service.addr;
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

static __always_inline int steer_back(struct xdp_md *ctx, struct ethhdr *eth,
				      struct iphdr *iph, struct tcphdr *tcph)
{
	struct endpoint key = { .addr = iph->saddr, .port = tcph->source };
	struct bpf_fib_lookup fib = {};
	struct daemon_info *daemon;
	int rc;

	daemon = bpf_map_lookup_elem(&daemons, &key);
	if (!daemon)
		return count(CNT_PASSED, XDP_PASS);
	if (track_replies && !reply_tracked(iph, tcph))
		return pass_back(CNT_BACK_UNTRACKED);

	rc = reply_route(ctx, iph, tcph, daemon, &fib);
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
	return to_socket(MAX_QUEUES + ctx->rx_queue_index, CNT_BACK_STEERED);
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

	if (ctx->rx_queue_index >= MAX_QUEUES)
		return count(CNT_PASSED, XDP_PASS);
	w = walk(data, data_end, &iph, &tcph);
	if (ctx->ingress_ifindex == front_ifindex && iph && w != WALK_NOT_OURS) {
		daddr = iph->daddr;
		if (w == WALK_OK)
			return steer_front(ctx, iph, tcph);
		if (bpf_map_lookup_elem(&vip_addrs, &daddr))
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
