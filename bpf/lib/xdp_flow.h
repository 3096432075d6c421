/* lib/xdp_flow.h - the XDP NodePort flow cache: one lookup carries everything an established
 * packet of a NodePort flow needs (backend, SNAT address and port, egress device and MACs, the
 * two checksum differences, local or remote), so it is rewritten and sent without the service,
 * conntrack, NAT, endpoint and FIB lookups of the slow path (lib/nodeport_xdp.h).
 *
 * Owns dp_xdp_flow4: an LRU with per-CPU lists (BPF_F_NO_COMMON_LRU), keyed by the flow as it
 * arrives, and dp_xdp_flow_stats, per-CPU counters of hits and fills. The slow path fills an
 * entry only for a flow's established packets (a TCP packet without SYN, FIN or RST; a UDP
 * datagram of a flow conntrack has already seen), so a new flow pays no extra insert. The
 * caller looks the frontend up first (a packet for no frontend never pays for the cache, and a
 * deleted service's flows stop at once). A hit is used only when:
 *   - the packet is TCP without SYN, FIN or RST, or UDP (a SYN, FIN or RST finding an entry
 *     deletes it and takes the slow path: a reused tuple picks its backend again, a closing
 *     flow's conntrack and NAT entries get their closing lifetimes there);
 *   - it arrives on the device the entry was filled for;
 *   - the entry is younger than XDP_FLOW_REVALIDATE_NS (1 s): the first packet after that takes
 *     the slow path, which refreshes the flow's conntrack and NAT entries (so the reply path
 *     finds them and the agent's GC never expires a flow in use), re-checks the service, the
 *     backend and the route, and refills the entry; a state write at most once a second;
 *   - its backend id still names the same address and port in cilium_lb4_backends_v3 (a
 *     removed or changed backend is never used again);
 *   - remote backend: the node is not in tunnel mode and TTL > 1.
 * The coarse clock is the only clock read on a hit.
 *
 * API:
 *   xdp_flow_fast(ctx, pkt, ip, l4, cfg, &fill)
 *                        a hit: the packet rewritten, returns XDP_PASS (local backend), XDP_TX,
 *                        a redirect or a negative DROP_*; XDP_FLOW_MISS: the slow path decides,
 *                        and may fill the cache afterwards when *fill is set
 *   xdp_flow_fill(ctx, pkt, ip, l4, old_ttl_word, flags, egress_ifindex, smac, dmac)
 *                        after the slow path rewrote an established packet (ip, l4: the
 *                        rewritten headers), cache the flow
 */
#ifndef DP_LIB_XDP_FLOW_H
#define DP_LIB_XDP_FLOW_H

#include "lb.h"
#include "csum.h"

#define XDP_FLOW_MISS (-1000)           /* not a verdict and not a DROP_* */

/* dp_xdp_flow4: NodePort flow -> its cached rewrite and next hop (LRU, per-CPU lists) */
DP_MAP_F("lru_hash", struct xdp_flow4_key, struct xdp_flow4, dp_xdp_flow4, XDP_FLOW_MAP_SIZE,
	 BPF_F_NO_COMMON_LRU);

/* dp_xdp_flow_stats: per-CPU counters, XDP_FLOW_STAT_* (hits, fills) */
DP_MAP("percpu_array", __u32, __u64, dp_xdp_flow_stats, XDP_FLOW_STATS);

static __always_inline void xdp_flow_count(__u32 stat)
{
	__u64 *v = dp_xdp_flow_stats.lookup(&stat);

	if (v)
		*v += 1;        /* per-CPU: no other CPU writes it */
}

/* bpf_ktime_get_coarse_ns (kernel 5.11): a clock read without touching the clocksource */
static __u64 (*xdp_flow_now)(void) = (void *)BPF_FUNC_ktime_get_coarse_ns;

static __always_inline void xdp_flow_key(struct xdp_flow4_key *key, const struct lb4_pkt *pkt)
{
	key->saddr = pkt->saddr;
	key->daddr = pkt->daddr;
	key->sport = pkt->sport;
	key->dport = pkt->dport;
	key->proto = pkt->proto;
}

/* A TCP packet without SYN, FIN or RST, or a UDP datagram: may use and fill the cache. */
static __always_inline int xdp_flow_eligible(const struct lb4_pkt *pkt)
{
	return pkt->proto != IPPROTO_TCP ||
	       !(pkt->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_FIN | TCP_FLAG_RST));
}

/* One's complement differences (not folded) of a 32-bit and a 16-bit field changing. */
static __always_inline __u32 xdp_flow_diff4(__u32 from, __u32 to)
{
	__u32 f = ~from;

	return (f & 0xffff) + (f >> 16) + (to & 0xffff) + (to >> 16);
}

static __always_inline __u32 xdp_flow_diff2(__u16 from, __u16 to)
{
	return (__u16)~from + (__u32)to;
}

static __always_inline __u16 xdp_flow_fold(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	return (s & 0xffff) + (s >> 16);
}

/* Add a folded difference to a checksum in place (RFC 1624, eqn. 3); a UDP checksum of 0 (none)
 * stays 0, and a computed 0 is sent as 0xffff. */
static __always_inline void xdp_flow_csum(__u16 *sum, __u16 diff, int udp)
{
	if (udp && *sum == 0)
		return;
	*sum = dp_csum_fold_neg((__u32)(__u16)~*sum + diff);
	if (udp && *sum == 0)
		*sum = 0xffff;
}

static __always_inline int xdp_flow_fast(struct xdp_md *ctx, const struct lb4_pkt *pkt,
					 struct iphdr *ip, void *l4,
					 const struct node_config *cfg, int *fill)
{
	struct xdp_flow4_key key = {};
	struct lb4_backend_key bkey = {};
	struct lb4_backend *backend;
	struct tcphdr *tcp = l4;
	struct ethhdr *eth;
	struct xdp_flow4 *f;
	int udp = pkt->proto == IPPROTO_UDP;
	__u16 *l4sum = udp ? &((struct udphdr *)l4)->check : &tcp->check;

	*fill = xdp_flow_eligible(pkt);
	xdp_flow_key(&key, pkt);
	f = dp_xdp_flow4.lookup(&key);
	if (!f)
		return XDP_FLOW_MISS;
	if (!*fill) {           /* SYN, FIN, RST: the slow path, with nothing cached */
		dp_xdp_flow4.delete(&key);
		return XDP_FLOW_MISS;
	}
	if (f->ifindex != ctx->ingress_ifindex ||
	    xdp_flow_now() - f->filled_ns >= XDP_FLOW_REVALIDATE_NS)
		return XDP_FLOW_MISS;
	bkey.backend_id = f->backend_id;
	backend = cilium_lb4_backends_v3.lookup(&bkey);
	if (!backend || backend->address != f->backend_addr || backend->port != f->backend_port)
		return XDP_FLOW_MISS;
	if (!(f->flags & XDP_FLOW_F_LOCAL)) {
		if ((cfg->flags & NODE_CFG_F_TUNNEL) || ip->ttl <= 1)
			return XDP_FLOW_MISS;
		ip->ttl--;      /* in l3_diff: TTL - 1 changes the checksum alike for any TTL */
		ip->saddr = f->nat_addr;
		tcp->source = f->nat_port;  /* TCP and UDP ports lie at the same offsets */
	}
	ip->daddr = f->backend_addr;
	tcp->dest = f->backend_port;
	xdp_flow_csum(&ip->check, f->l3_diff, 0);
	xdp_flow_csum(l4sum, f->l4_diff, udp);
	xdp_flow_count(XDP_FLOW_STAT_HIT);
	if (f->flags & XDP_FLOW_F_LOCAL)
		return XDP_PASS;        /* tc delivers it into the pod */
	eth = xdp_data(ctx);
	if ((void *)(eth + 1) > xdp_data_end(ctx))
		return -DROP_INVALID;
	__builtin_memcpy(eth->h_dest, f->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, f->smac, ETH_ALEN);
	if (f->egress_ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(f->egress_ifindex, 0);
}

/* Cache a flow after the slow path rewrote one of its established packets: pkt is the packet
 * as it arrived, ip and l4 its rewritten headers, old_ttl_word the IP TTL/protocol word before
 * (remote: TTL - 1). A UDP flow is cached from its second datagram on (conntrack counts). */
static __always_inline void xdp_flow_fill(struct xdp_md *ctx, const struct lb4_pkt *pkt,
					  const struct iphdr *ip, const void *l4,
					  __u16 old_ttl_word, __u8 flags, __u32 egress_ifindex,
					  const __u8 *smac, const __u8 *dmac)
{
	const struct tcphdr *tcp = l4;
	struct ipv4_ct_tuple tuple = {};
	struct xdp_flow4_key key = {};
	struct xdp_flow4 f = {};
	struct ct_entry *ct;
	__u32 l3, l4d;

	lb4_tuple(&tuple, pkt, TUPLE_F_SERVICE);
	ct = ct_lookup(&tuple);
	if (!ct || (pkt->proto == IPPROTO_UDP && ct->packets < 2))
		return;
	f.filled_ns = xdp_flow_now();
	f.backend_id = ct->backend_id;
	f.ifindex = ctx->ingress_ifindex;
	f.egress_ifindex = egress_ifindex;
	f.backend_addr = ip->daddr;
	f.backend_port = tcp->dest;
	f.nat_addr = ip->saddr;
	f.nat_port = tcp->source;
	f.flags = flags;
	l3 = xdp_flow_diff4(pkt->daddr, ip->daddr) + xdp_flow_diff4(pkt->saddr, ip->saddr);
	l4d = l3 + xdp_flow_diff2(pkt->dport, tcp->dest) + xdp_flow_diff2(pkt->sport, tcp->source);
	if (!(flags & XDP_FLOW_F_LOCAL))
		l3 += xdp_flow_diff2(old_ttl_word, *(__u16 *)&ip->ttl);
	f.l3_diff = xdp_flow_fold(l3);
	f.l4_diff = xdp_flow_fold(l4d);
	if (!(flags & XDP_FLOW_F_LOCAL)) {
		__builtin_memcpy(f.dmac, dmac, ETH_ALEN);
		__builtin_memcpy(f.smac, smac, ETH_ALEN);
	}
	xdp_flow_key(&key, pkt);
	if (dp_xdp_flow4.update(&key, &f) == 0)
		xdp_flow_count(XDP_FLOW_STAT_FILL);
}

#endif /* DP_LIB_XDP_FLOW_H */
