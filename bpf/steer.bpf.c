// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* dispatchd's steering program: one object attached to the front and the back
 * interface. It only decides *whether* a frame belongs to dispatchd; every rewrite
 * but the reply's Ethernet addresses happens in user space on the AF_XDP socket.
 *
 * front: IPv4/TCP frames to a configured (VIP, port)   -> front XSK of the rx queue
 * back:  IPv4/TCP frames from a configured daemon, not
 *        addressed to this host                        -> back XSK of the rx queue,
 *        with Ethernet addresses set from the kernel's FIB for the client
 * anything else                                        -> XDP_PASS (ARP, ICMP, ssh, ...)
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

/* This host's own addresses on the back side: a daemon's answer to one of them
 * (a health probe, an ssh session) is the host's traffic, not a reply to a client. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u8);
} local_addrs SEC(".maps");

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

static __always_inline int steer_back(struct xdp_md *ctx, struct ethhdr *eth,
				      struct iphdr *iph, struct tcphdr *tcph)
{
	struct endpoint key = { .addr = iph->saddr, .port = tcph->source };
	struct bpf_fib_lookup fib = {};
	struct daemon_info *daemon;
	__u32 daddr = iph->daddr;
	int rc;

	daemon = bpf_map_lookup_elem(&daemons, &key);
	if (!daemon || bpf_map_lookup_elem(&local_addrs, &daddr))
		return count(CNT_PASSED, XDP_PASS);

	/* The reply leaves through the front towards the client: ask the kernel's
	 * route and neighbour tables for that hop. OUTPUT makes the lookup from the
	 * egress side, so it cannot pick the back. The kernel still answers only if
	 * the front forwards IPv4 (BPF_FIB_LKUP_RET_FWD_DISABLED otherwise, counted
	 * as fib_failed), which dispatchd checks at start-up. */
	fib.family = AF_INET;
	fib.l4_protocol = IPPROTO_TCP;
	fib.tot_len = bpf_ntohs(iph->tot_len);
	fib.ipv4_src = daemon->service.addr;
	fib.ipv4_dst = daddr;
	fib.ifindex = front_ifindex;
	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return count(CNT_FIB_NO_NEIGH, XDP_DROP);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return count(CNT_FIB_FAILED, XDP_DROP);
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
