// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* dispatchd's steering program: one object attached to the front and the back
 * interface. It only decides *whether* a frame belongs to dispatchd; every rewrite
 * but the reply's Ethernet addresses happens in user space on the AF_XDP socket.
 *
 * front: IPv4/TCP frames to a configured (VIP, port)   -> front XSK of the rx queue
 *        ICMP errors to a VIP quoting a service's reply -> front XSK (the loop finds
 *                                                        the connection's daemon)
 * back:  IPv4/TCP frames from a configured daemon, not
 *        addressed to this host                        -> back XSK of the rx queue,
 *        with Ethernet addresses set from the kernel's FIB for the client;
 *        one too big for the front path is answered with
 *        "fragmentation needed" instead                -> XDP_TX back to the daemon
 *        ICMP errors not addressed to this host quoting
 *        a segment to a daemon                         -> back XSK, FIB addresses
 * anything else                                        -> XDP_PASS (ARP, ping, ssh, ...)
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

/* IPv4 flags/fragment-offset word (host order), as in the kernel's net/ip.h. */
#define IP_DF 0x4000
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

/* The quote of an ICMP error that TCP acts on (destination unreachable, time
 * exceeded, parameter problem; not the deprecated source quench, which hosts
 * ignore): an option-less IPv4 header of a TCP segment that carries its ports,
 * and the 8 bytes of TCP header RFC 792 promises. The outer header must have no
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
	if (quote->ihl != 5 || quote->protocol != IPPROTO_TCP ||
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
	if (!bpf_map_lookup_elem(&services, &key))
		return count(CNT_PASSED, XDP_PASS);
	return to_socket(ctx->rx_queue_index, CNT_ICMP_FRONT_STEERED);
}

/* Asks the kernel's route and neighbour tables for the hop towards `iph`'s
 * destination (a client) through the front, as a packet from `src`, and on
 * success writes it into the Ethernet header. OUTPUT makes the lookup from the
 * egress side, so it cannot pick the back. The kernel still answers only if the
 * front forwards IPv4 (BPF_FIB_LKUP_RET_FWD_DISABLED otherwise, counted as
 * fib_failed), which dispatchd checks at start-up. A packet larger than the
 * route's MTU gets BPF_FIB_LKUP_RET_FRAG_NEEDED and the MTU in *mtu. */
static __always_inline int client_hop(struct xdp_md *ctx, struct ethhdr *eth, struct iphdr *iph,
				      __u32 src, __u16 *mtu)
{
	struct bpf_fib_lookup fib = {};
	int rc;

	fib.family = AF_INET;
	fib.l4_protocol = iph->protocol;
	fib.tot_len = bpf_ntohs(iph->tot_len);
	fib.ipv4_src = src;
	fib.ipv4_dst = iph->daddr;
	fib.ifindex = front_ifindex;
	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
		__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	} else if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED) {
		*mtu = fib.mtu_result;
	}
	return rc;
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

static __always_inline int steer_back(struct xdp_md *ctx, struct ethhdr *eth,
				      struct iphdr *iph, struct tcphdr *tcph)
{
	struct endpoint key = { .addr = iph->saddr, .port = tcph->source };
	struct daemon_info *daemon;
	__u32 daddr = iph->daddr;
	__u16 mtu = 0;
	int rc;

	daemon = bpf_map_lookup_elem(&daemons, &key);
	if (!daemon || bpf_map_lookup_elem(&local_addrs, &daddr))
		return count(CNT_PASSED, XDP_PASS);
	/* The reply leaves through the front towards the client. */
	rc = client_hop(ctx, eth, iph, daemon->service.addr, &mtu);
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return frag_needed(ctx, mtu);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return count(CNT_FIB_NO_NEIGH, XDP_DROP);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return count(CNT_FIB_FAILED, XDP_DROP);
	return to_socket(MAX_QUEUES + ctx->rx_queue_index, CNT_BACK_STEERED);
}

/* An error on the back, not for this host, quoting a client's segment as
 * forwarded (client -> daemon:port): translated towards the client like a
 * reply, so it takes the reply's way out. */
static __always_inline int steer_back_icmp(struct xdp_md *ctx, struct ethhdr *eth,
					   void *data_end, struct iphdr *iph)
{
	struct endpoint key = {};
	struct daemon_info *daemon;
	struct iphdr *quote;
	__be16 *ports = 0;
	__u32 daddr = iph->daddr;
	__u16 mtu = 0;
	int rc;

	if (bpf_map_lookup_elem(&local_addrs, &daddr))
		return count(CNT_PASSED, XDP_PASS);
	quote = icmp_quote(data_end, iph, &ports);
	if (!quote || !ports)
		return count(CNT_PASSED, XDP_PASS);
	key.addr = quote->daddr;
	key.port = ports[1];
	daemon = bpf_map_lookup_elem(&daemons, &key);
	if (!daemon)
		return count(CNT_PASSED, XDP_PASS);
	/* An error is at most 576 bytes: a front route with a smaller MTU, below
	 * IPv4's minimum, is counted as a failed lookup. */
	rc = client_hop(ctx, eth, iph, daemon->service.addr, &mtu);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return count(CNT_FIB_NO_NEIGH, XDP_DROP);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return count(CNT_FIB_FAILED, XDP_DROP);
	return to_socket(MAX_QUEUES + ctx->rx_queue_index, CNT_ICMP_BACK_STEERED);
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
