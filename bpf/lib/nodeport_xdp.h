/* lib/nodeport_xdp.h - the NodePort / LoadBalancer / externalIP path in XDP on the native
 * device (loadBalancer.acceleration native): the same decision code as tc (lb4_decide in
 * lib/lb.h, snat_v4_mapping in lib/nat.h), with the rewrites done through direct packet access.
 *
 * A request to a frontend reachable from outside is decided here. A local backend: the packet
 * is DNATed and passed up; tc's from-netdev then delivers it into the pod. A backend on another
 * node, native routing, next hop resolved: DNAT + SNAT to this node, TTL - 1, new MACs, and out
 * again (XDP_TX or redirect) without ever reaching the stack. Anything else (tunnel mode, no
 * neighbour yet, IP options, fragments, not a service) passes untouched: the flow's conntrack
 * entry already names its backend, so tc finishes the job with the same choice. Replies take
 * the tc path. A drop is counted in cilium_metrics under METRIC_INGRESS; passed packets are
 * counted by tc, sent ones here.
 *
 * A packet that is not for a frontend passes after one lookup, as before the flow cache. Then
 * the flow cache (lib/xdp_flow.h): a hit is one lookup (plus its backend's) and one checksum
 * difference each for IP and TCP/UDP; the slow path below runs for new flows, misses and once a
 * second per flow, and fills the cache for established packets. The packet is parsed once
 * (xdp_lb4_parse) and the parsed view passed down.
 *
 * API:
 *   nodeport_lb4_xdp(ctx)   returns XDP_PASS, XDP_TX, a redirect, or a negative DROP_*
 */
#ifndef DP_LIB_NODEPORT_XDP_H
#define DP_LIB_NODEPORT_XDP_H

#include "lb.h"
#include "nat.h"
#include "csum.h"
#include "xdp_flow.h"

#ifndef AF_INET
#define AF_INET 2
#endif

/* Returns 1 with pkt, ip and l4 set for a plain (no options, not fragmented) TCP/UDP packet in
 * bounds, else 0. */
static __always_inline int xdp_lb4_parse(struct xdp_md *ctx, struct lb4_pkt *pkt,
					 struct iphdr **ipp, void **l4p)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + ETH_HLEN;
	struct tcphdr *tcp;

	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return 0;
	if (ip->version != 4 || ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3FFF)))
		return 0;
	tcp = (void *)(ip + 1);
	if (ip->protocol == IPPROTO_TCP) {
		if ((void *)(tcp + 1) > end)
			return 0;
		pkt->tcp_flags = ((__u8 *)tcp)[13];
	} else if (ip->protocol == IPPROTO_UDP) {
		if ((void *)tcp + sizeof(struct udphdr) > end)
			return 0;
		pkt->tcp_flags = 0;
	} else {
		return 0;
	}
	pkt->l4_off = ETH_HLEN + sizeof(struct iphdr);
	pkt->saddr = ip->saddr;
	pkt->daddr = ip->daddr;
	pkt->sport = tcp->source;       /* TCP and UDP ports lie at the same offsets */
	pkt->dport = tcp->dest;
	pkt->proto = ip->protocol;
	pkt->len = end - data;
	*ipp = ip;
	*l4p = tcp;
	return 1;
}

/* Rewrite the destination (and with snat, the source) address and port, checksums updated. */
static __always_inline void xdp_lb4_rewrite(struct iphdr *ip, void *l4, int udp,
					    __be32 daddr, __be16 dport, int snat,
					    __be32 saddr, __be16 sport)
{
	struct tcphdr *tcp = l4;
	__u16 *l4sum = udp ? &((struct udphdr *)l4)->check : &tcp->check;

	dp_csum_replace4(&ip->check, ip->daddr, daddr);
	dp_csum_replace4_l4(l4sum, udp, ip->daddr, daddr);
	dp_csum_replace2_l4(l4sum, udp, tcp->dest, dport);
	ip->daddr = daddr;
	tcp->dest = dport;
	if (!snat)
		return;
	dp_csum_replace4(&ip->check, ip->saddr, saddr);
	dp_csum_replace4_l4(l4sum, udp, ip->saddr, saddr);
	dp_csum_replace2_l4(l4sum, udp, tcp->source, sport);
	ip->saddr = saddr;
	tcp->source = sport;
}

static __always_inline int nodeport_lb4_xdp(struct xdp_md *ctx)
{
	struct bpf_fib_lookup fib = {};
	struct node_config *cfg = node_config();
	struct lb4_backend *backend = NULL;
	struct endpoint_info *ep;
	struct lb4_pkt pkt = {}, natted;
	struct lb4_key skey = {};
	struct iphdr *ip;
	struct ethhdr *eth;
	void *l4;
	__be32 to_addr = 0;
	__be16 to_port = 0;
	__u16 old_ttl;
	int loopback = 0, fill = 0, ret;

	if (!cfg || !xdp_lb4_parse(ctx, &pkt, &ip, &l4))
		return XDP_PASS;
	/* not a frontend: the one lookup everything else pays, as before the cache */
	skey.address = pkt.daddr;
	skey.dport = pkt.dport;
	skey.proto = pkt.proto;
	if (!cilium_lb4_services_v2.lookup(&skey))
		return XDP_PASS;
	ret = xdp_flow_fast(ctx, &pkt, ip, l4, cfg, &fill);
	if (ret != XDP_FLOW_MISS)
		return ret;
	ret = lb4_decide(&pkt, IDENTITY_WORLD, 0, &backend, &loopback);
	if (ret != LB_XLATED || !backend)
		return ret < 0 ? ret : XDP_PASS;
	ep = lookup_ip4_endpoint(backend->address);
	if (ep && !(ep->flags & ENDPOINT_F_HOST)) {
		xdp_lb4_rewrite(ip, l4, pkt.proto == IPPROTO_UDP, backend->address, backend->port,
				0, 0, 0);
		if (fill)
			xdp_flow_fill(ctx, &pkt, ip, l4, 0, XDP_FLOW_F_LOCAL, 0, NULL, NULL);
		return XDP_PASS;        /* tc delivers it into the pod */
	}
	if (cfg->flags & NODE_CFG_F_TUNNEL)
		return XDP_PASS;        /* encapsulation is tc's */
	fib.family = AF_INET;
	fib.tos = ip->tos;
	fib.l4_protocol = pkt.proto;
	fib.tot_len = bpf_ntohs(ip->tot_len);
	fib.ipv4_src = cfg->node_ip;
	fib.ipv4_dst = backend->address;
	fib.ifindex = ctx->ingress_ifindex;
	if (bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return XDP_PASS;        /* no neighbour yet: tc and the stack resolve it */
	if (ip->ttl <= 1)
		return XDP_PASS;        /* tc's TTL check drops it, counted */
	natted = pkt;
	natted.daddr = backend->address;
	natted.dport = backend->port;
	ret = snat_v4_mapping(&natted, cfg, &to_addr, &to_port);
	if (ret < 0)
		return ret;
	xdp_lb4_rewrite(ip, l4, pkt.proto == IPPROTO_UDP, backend->address, backend->port,
			1, to_addr, to_port);
	old_ttl = *(__u16 *)&ip->ttl;
	ip->ttl--;
	dp_csum_replace2(&ip->check, old_ttl, *(__u16 *)&ip->ttl);
	eth = (void *)(long)ctx->data;
	if ((void *)(eth + 1) > (void *)(long)ctx->data_end)
		return -DROP_INVALID;
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	if (fill)
		xdp_flow_fill(ctx, &pkt, ip, l4, old_ttl, 0, fib.ifindex, fib.smac, fib.dmac);
	if (fib.ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(fib.ifindex, 0);
}

#endif /* DP_LIB_NODEPORT_XDP_H */
