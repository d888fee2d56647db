// SPDX-License-Identifier: (LGPL-2.1-only OR BSD-2-Clause)
/*
 * xdpblast receiver steering program.
 *
 * Parses Ethernet (up to two VLAN tags), IPv4 or IPv6, and UDP. A UDP datagram
 * for the configured data port (and, if set, the configured IPv4 or IPv6
 * address) is redirected into the AF_XDP socket bound to the queue it arrived
 * on. A receiver listening on an address of one IP version takes nothing of
 * the other. Every
 * other frame is passed to the kernel stack untouched, so ARP, SSH and our own
 * control socket keep working.
 *
 * A test knob in the config map drops data packets with a given probability,
 * because this kind of host has no tc netem. Another turns the program into a
 * drop sink that counts what it drops.
 *
 * The program is attached through a bpf_link owned by the receiver process: the
 * kernel detaches it when the last reference to the link goes away, which is
 * also what happens when the process is killed with SIGKILL.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* Keep in sync with src/afxdp/program.rs (XdpCounters). */
enum xb_counter {
	XB_REDIRECTED = 0,   /* data packet handed to the XSK */
	XB_PASSED = 1,       /* not ours: given to the kernel stack */
	XB_MALFORMED = 2,    /* truncated or inconsistent L2/L3/L4 header */
	XB_LOSS_DROPPED = 3, /* dropped by the loss-injection knob */
	XB_NO_SOCKET = 4,    /* data packet but no XSK on this queue: passed */
	XB_SUNK = 5,         /* data packet dropped by the sink (XB_FLAG_SINK) */
	XB_SUNK_BYTES = 6,   /* their bytes, from the Ethernet header on */
	XB_OVER_CAPACITY = 7, /* dropped by the capacity knob */
	XB_NR_COUNTERS = 8,
};

/* Keep in sync with src/afxdp/program.rs (Steering::load). All multi-byte fields in network order
 * except loss_threshold, which is compared with bpf_get_prandom_u32(). */
struct xb_config {
	__u32 loss_threshold; /* drop when prandom < threshold; 0 disables */
	__u32 dst_ip4;        /* 0 = any address */
	__u16 data_port;      /* 0 = steer nothing */
	__u16 flags;          /* XB_FLAG_* */
	__u32 capacity_pps;   /* test knob: take at most this many data packets
	                       * per second (per CPU), drop the rest; 0 = off */
	__u32 dst_ip6[4];     /* with XB_FLAG_DST6: the IPv6 address to take */
};

/* Token bucket for capacity_pps, one per CPU (no lock on the fast path). */
struct xb_bucket {
	__u64 last_ns;
	__u64 tokens; /* in 1e-9 packets */
};

/* Drop every data packet, counted: a native-XDP drop sink for packet-rate
 * measurements (`xdpblast sink`). */
#define XB_FLAG_SINK 1
/* Take only datagrams for dst_ip6 (and no IPv4). */
#define XB_FLAG_DST6 2

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xb_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xb_bucket);
} bucket SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XB_NR_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

static __always_inline int count(__u32 idx, int verdict)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &idx);
	if (c)
		*c += 1;
	return verdict;
}

#define NS_PER_SEC 1000000000ULL
/* Up to this many packets may arrive back to back, like a receive ring. */
#define BUCKET_BURST 256ULL

/* A receiver that can take only `pps` packets per second: 1 when this packet
 * fits, 0 when it is over. */
static __always_inline int take_token(__u32 pps)
{
	__u32 key = 0;
	struct xb_bucket *b = bpf_map_lookup_elem(&bucket, &key);
	if (!b)
		return 1;
	__u64 now = bpf_ktime_get_ns();
	__u64 elapsed = now - b->last_ns;
	if (elapsed > NS_PER_SEC)
		elapsed = NS_PER_SEC;
	b->last_ns = now;
	__u64 tokens = b->tokens + elapsed * pps;
	if (tokens > BUCKET_BURST * NS_PER_SEC)
		tokens = BUCKET_BURST * NS_PER_SEC;
	if (tokens < NS_PER_SEC) {
		b->tokens = tokens;
		return 0;
	}
	b->tokens = tokens - NS_PER_SEC;
	return 1;
}

/* Frags-aware: on a link whose MTU exceeds one page (jumbo frames on a NIC,
 * up to 64 KiB on veth) a packet arrives as a chain of buffers. Every header
 * we look at is in the first one; the rest is payload, which an XSK bound
 * with XDP_USE_SG receives as a descriptor chain. */
SEC("xdp.frags")
int xdpblast_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 key = 0;
	struct xb_config *cfg = bpf_map_lookup_elem(&config, &key);
	if (!cfg || cfg->data_port == 0)
		return count(XB_PASSED, XDP_PASS);

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return count(XB_MALFORMED, XDP_PASS);
	__be16 proto = eth->h_proto;
	void *cursor = eth + 1;

#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		struct vlan_hdr *vh = cursor;
		if ((void *)(vh + 1) > data_end)
			return count(XB_MALFORMED, XDP_PASS);
		proto = vh->proto;
		cursor = vh + 1;
	}

	struct udphdr *udp;
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = cursor;
		if ((void *)(ip + 1) > data_end)
			return count(XB_MALFORMED, XDP_PASS);
		if (ip->ihl < 5)
			return count(XB_MALFORMED, XDP_PASS);
		if (ip->protocol != IPPROTO_UDP)
			return count(XB_PASSED, XDP_PASS);
		/* Fragments go to the kernel: only it can reassemble them. */
		if (ip->frag_off & bpf_htons(0x3fff))
			return count(XB_PASSED, XDP_PASS);
		if (cfg->flags & XB_FLAG_DST6)
			return count(XB_PASSED, XDP_PASS);
		if (cfg->dst_ip4 && ip->daddr != cfg->dst_ip4)
			return count(XB_PASSED, XDP_PASS);
		udp = (void *)ip + ip->ihl * 4;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = cursor;
		if ((void *)(ip6 + 1) > data_end)
			return count(XB_MALFORMED, XDP_PASS);
		if (ip6->nexthdr != IPPROTO_UDP)
			return count(XB_PASSED, XDP_PASS);
		if (cfg->dst_ip4)
			return count(XB_PASSED, XDP_PASS);
		if ((cfg->flags & XB_FLAG_DST6) &&
		    (ip6->daddr.in6_u.u6_addr32[0] != cfg->dst_ip6[0] ||
		     ip6->daddr.in6_u.u6_addr32[1] != cfg->dst_ip6[1] ||
		     ip6->daddr.in6_u.u6_addr32[2] != cfg->dst_ip6[2] ||
		     ip6->daddr.in6_u.u6_addr32[3] != cfg->dst_ip6[3]))
			return count(XB_PASSED, XDP_PASS);
		udp = (void *)(ip6 + 1);
	} else {
		return count(XB_PASSED, XDP_PASS);
	}

	if ((void *)(udp + 1) > data_end)
		return count(XB_MALFORMED, XDP_PASS);
	if (udp->dest != cfg->data_port)
		return count(XB_PASSED, XDP_PASS);

	if (cfg->flags & XB_FLAG_SINK) {
		__u32 idx = XB_SUNK_BYTES;
		__u64 *b = bpf_map_lookup_elem(&counters, &idx);
		if (b)
			*b += bpf_xdp_get_buff_len(ctx); /* every fragment */
		return count(XB_SUNK, XDP_DROP);
	}
	if (cfg->capacity_pps && !take_token(cfg->capacity_pps))
		return count(XB_OVER_CAPACITY, XDP_DROP);
	if (cfg->loss_threshold && bpf_get_prandom_u32() < cfg->loss_threshold)
		return count(XB_LOSS_DROPPED, XDP_DROP);

	/* With XDP_PASS as the fallback, a queue without a socket (for example
	 * the UDP-socket receiver, which loads us only for the loss knob) hands
	 * the packet to the kernel stack. */
	int verdict = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
	if (verdict == XDP_REDIRECT)
		return count(XB_REDIRECTED, verdict);
	return count(XB_NO_SOCKET, verdict);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
