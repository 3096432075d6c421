/* lib/nat.h - masquerade (SNAT to the node's address) of pod traffic leaving the cluster.
 *
 * On the native device's egress a TCP, UDP or ICMP echo packet from a local pod to a
 * destination outside the cluster gets the node's address and a port from
 * [NODEPORT_PORT_MIN_NAT, NODEPORT_PORT_MAX_NAT] (the pod's own port when free; else random, then
 * the next one, at most SNAT_COLLISION_RETRIES times; exhaustion drops with
 * DROP_NAT_NO_MAPPING). Each mapping is two entries in cilium_snat_v4_external: egress (pod
 * tuple -> node addr:port) and ingress (reply tuple -> pod addr:port), the ingress one inserted
 * first and only if free, so two flows never share a port towards one peer. Replies are
 * translated back on the native device's ingress before delivery. Nothing in the cluster is ever
 * masqueraded: destinations in cilium_ipmasq_v4 (native-routing CIDR, nonMasqueradeCIDRs,
 * link-local) and destinations the ipcache knows as cluster members keep the pod's address
 * (world and the CIDR identities policies give outside prefixes are not members).
 * An ICMP error about a masqueraded flow (unreachable, time exceeded) finds the pod too: the
 * outer destination and the quoted source address and port are translated back.
 *
 * The same engine SNATs NodePort flows sent on to a backend on another node.
 *
 * Lifetimes follow Cilium's conntrack (ct_update_timeout's seen_non_syn): a TCP mapping lives
 * CT_SYN_TIMEOUT (60 s) until a packet without SYN passes it, so a SYN flood's half-open flows
 * give their ports back after a minute; then CT_CONNECTION_LIFETIME_TCP; CT_CLOSE_TIMEOUT after
 * a FIN or RST. The first packet without SYN through either entry establishes both, and the
 * first FIN or RST closes both (the other entry is looked up by its tuple), so a pair lives and
 * ends together. Entries are shared by CPUs: flags change atomically (nat_refresh).
 *
 * API:
 *   snat_v4_mapping(pkt, cfg, &addr, &port)  the hook-independent mapping (tc and XDP);
 *                               returns 0 or a negative DROP_*
 *   snat_v4_egress(skb, cfg)    returns 0 (translated or not masqueraded) or a negative DROP_*
 *   snat_v4_nodeport(skb, cfg)  SNAT regardless of masquerading; returns 0 or a negative DROP_*
 *   snat_v4_ingress(skb, cfg)   returns 0 (reverse-translated or not ours) or a negative DROP_*
 */
#ifndef DP_LIB_NAT_H
#define DP_LIB_NAT_H

#include <uapi/linux/icmp.h>

#include "maps.h"
#include "conntrack.h"
#include "icmp.h"
#include "lb.h"
#include "ipcache.h"
#include "local_delivery.h"

#define NAT_PORT_SPAN (NODEPORT_PORT_MAX_NAT - NODEPORT_PORT_MIN_NAT + 1)

/* The L4 identity of a packet for NAT: ports, or the ICMP echo id as both. Returns 1 when
 * the packet can be translated, 0 when NAT does not apply, or a negative DROP_*. */
static __always_inline int nat_parse(struct __sk_buff *skb, struct lb4_pkt *pkt, int egress)
{
	struct iphdr *ip = ctx_data(skb) + ETH_HLEN;
	struct icmphdr icmp;

	if ((void *)(ip + 1) > ctx_data_end(skb))
		return -DROP_INVALID;
	if (ip->protocol != IPPROTO_ICMP)
		return lb4_parse(skb, pkt);
	if (ip->frag_off & bpf_htons(0x3FFF))
		return 0;
	pkt->l4_off = ETH_HLEN + ip->ihl * 4;
	pkt->saddr = ip->saddr;
	pkt->daddr = ip->daddr;
	pkt->proto = IPPROTO_ICMP;
	pkt->len = skb->len;
	pkt->tcp_flags = 0;
	if (bpf_skb_load_bytes(skb, pkt->l4_off, &icmp, sizeof(icmp)) < 0)
		return -DROP_CT_INVALID_HDR;
	if (icmp.type != (egress ? ICMP_ECHO : ICMP_ECHOREPLY))
		return 0;               /* other ICMP: not translated here */
	pkt->sport = pkt->dport = icmp.un.echo.id;
	return 1;
}

/* Rewrite the source (egress) or destination (ingress) address and port / echo id. */
static __always_inline int nat_rewrite(struct __sk_buff *skb, const struct lb4_pkt *pkt,
				       int egress, __be32 to_addr, __be16 to_port)
{
	__u32 addr_off = egress ? IP_SADDR_OFF : IP_DADDR_OFF;
	__be32 old_addr = egress ? pkt->saddr : pkt->daddr;
	__be16 old_port = egress ? pkt->sport : pkt->dport;
	__u32 csum_off = pkt->l4_off + 2;           /* icmphdr.checksum */

	if (pkt->proto != IPPROTO_ICMP)
		return lb4_rewrite(skb, pkt, addr_off, old_addr, to_addr,
				   egress ? offsetof(struct tcphdr, source) :
					    offsetof(struct tcphdr, dest), old_port, to_port);
	/* ICMP: no pseudo header; the echo id is covered by the ICMP checksum */
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_addr, to_addr, 4) < 0)
		return -DROP_CSUM_L3;
	if (bpf_skb_store_bytes(skb, addr_off, &to_addr, 4, 0) < 0)
		return -DROP_WRITE_ERROR;
	if (old_port != to_port) {
		if (bpf_l4_csum_replace(skb, csum_off, old_port, to_port, 2) < 0)
			return -DROP_CSUM_L4;
		if (bpf_skb_store_bytes(skb, pkt->l4_off + 4, &to_port, 2, 0) < 0)
			return -DROP_WRITE_ERROR;
	}
	return 0;
}

/* Extend a mapping entry for this packet, as conntrack's ct_refresh_at (Cilium's
 * ct_update_timeout): TCP lives CT_SYN_TIMEOUT until a packet without SYN passed the entry
 * (NAT_F_SEEN_NON_SYN), then CT_CONNECTION_LIFETIME_TCP; a FIN or RST leaves it only
 * CT_CLOSE_TIMEOUT, a mark that sticks until a SYN opens a new connection on the tuple (as
 * ct_reopen: the new connection starts over as a SYN); the rest CT_CONNECTION_LIFETIME_NONTCP.
 * Returns what the mapping's other entry must learn (the caller passes it to nat_sync):
 * NAT_SYNC_ESTABLISH when this packet is the entry's first without SYN, NAT_SYNC_CLOSE when it
 * is the first FIN or RST, else 0. Flags are written only when they change, so an
 * established flow's packets store the lifetime alone; they change by atomic OR / AND (lib/
 * common.h DP_ATOMIC_U16_*), so a mark one CPU sets is never lost to another CPU's, and of CPUs
 * racing the first packet without SYN (or FIN) exactly one sees it first. */
#define NAT_SYNC_ESTABLISH 1
#define NAT_SYNC_CLOSE     2
static __always_inline int nat_refresh(struct ipv4_nat_entry *e, const struct lb4_pkt *pkt,
				       __u32 now)
{
	__u16 flags, old, set = 0;
	__u32 life;

	if (pkt->proto != IPPROTO_TCP) {
		e->lifetime = now + CT_CONNECTION_LIFETIME_NONTCP;
		return 0;
	}
	flags = old = e->flags;
	if ((pkt->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST | TCP_FLAG_SYN)) == TCP_FLAG_SYN &&
	    (flags & NAT_F_CLOSING)) {                  /* a new connection */
		old = DP_ATOMIC_U16_CLEAR(e, flags, NAT_F_CLOSING | NAT_F_SEEN_NON_SYN);
		flags = old & ~(NAT_F_CLOSING | NAT_F_SEEN_NON_SYN);
	}
	if (pkt->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
		set |= NAT_F_CLOSING;
	if (!(pkt->tcp_flags & TCP_FLAG_SYN))
		set |= NAT_F_SEEN_NON_SYN;
	if ((flags | set) != flags) {
		old = DP_ATOMIC_U16_OR(e, flags, set);
		flags = old | set;
	}
	if (flags & NAT_F_CLOSING)
		life = CT_CLOSE_TIMEOUT;
	else if (flags & NAT_F_SEEN_NON_SYN)
		life = CT_CONNECTION_LIFETIME_TCP;
	else
		life = CT_SYN_TIMEOUT;
	e->lifetime = now + life;
	if ((flags & NAT_F_CLOSING) && !(old & NAT_F_CLOSING))
		return NAT_SYNC_CLOSE;
	return (flags & NAT_F_SEEN_NON_SYN) && !(old & NAT_F_SEEN_NON_SYN) &&
	       !(flags & NAT_F_CLOSING) ? NAT_SYNC_ESTABLISH : 0;
}

/* The mapping's other entry (tuple) learns what the packet through the entry the caller
 * refreshed did to the connection, so the pair lives and ends together (Cilium keeps one
 * conntrack entry for both directions). NAT_SYNC_ESTABLISH: its first packet without SYN
 * passed; without this, an idle connection whose server sent nothing but its SYN-ACK would lose
 * its reverse entry after CT_SYN_TIMEOUT while the forward one lives on (and the other way
 * round). NAT_SYNC_CLOSE: its first FIN or RST passed; without this, a connection reset from
 * one side (an RST is not answered) would hold its port through the other entry for
 * CT_CONNECTION_LIFETIME_TCP. Flags are set atomically, so a CPU refreshing the other entry at
 * the same moment keeps its own marks; the lifetime is not moved when that CPU's mark got
 * there first. */
static __always_inline void nat_sync(struct ipv4_ct_tuple *tuple, __u32 now, int sync)
{
	struct ipv4_nat_entry *e = cilium_snat_v4_external.lookup(tuple);
	__u16 old;

	if (!e || (e->flags & NAT_F_CLOSING))
		return;
	if (sync == NAT_SYNC_CLOSE) {
		old = DP_ATOMIC_U16_OR(e, flags, NAT_F_CLOSING);
		if (!(old & NAT_F_CLOSING))
			e->lifetime = now + CT_CLOSE_TIMEOUT;
		return;
	}
	if (e->flags & NAT_F_SEEN_NON_SYN)
		return;
	old = DP_ATOMIC_U16_OR(e, flags, NAT_F_SEEN_NON_SYN);
	if (!(old & (NAT_F_SEEN_NON_SYN | NAT_F_CLOSING)))
		e->lifetime = now + CT_CONNECTION_LIFETIME_TCP;
}

/* Whether a packet from a local pod to daddr leaves the cluster and must be masqueraded. */
static __always_inline int snat_v4_needed(__be32 saddr, __be32 daddr)
{
	struct ipmasq_key mkey = { .lpm_key_prefixlen = 32, .ip4 = daddr };
	struct remote_endpoint_info *info;
	struct endpoint_info *ep = lookup_ip4_endpoint(saddr);

	if (!ep || (ep->flags & ENDPOINT_F_HOST))
		return 0;               /* only local pods are masqueraded */
	if (cilium_ipmasq_v4.lookup(&mkey))
		return 0;               /* native-routing CIDR, nonMasqueradeCIDRs, link-local */
	info = ipcache_lookup4(daddr);
	if (info && !identity_is_world(info->sec_identity))
		return 0;               /* a pod, a node or this host: inside the cluster */
	return 1;
}

/* The node address and port a parsed packet leaves with: the flow's mapping, or a new one
 * (hook-independent: tc and XDP). Returns 0 with *to_addr / *to_port set, or a negative DROP_*. */
static __always_inline int snat_v4_mapping(const struct lb4_pkt *p,
					   const struct node_config *cfg, __be32 *to_addr,
					   __be16 *to_port)
{
	struct ipv4_ct_tuple otuple = {}, rtuple = {};
	struct ipv4_nat_entry *fwd, ostate = {}, rstate = {};
	struct lb4_pkt pkt = *p;
	__u32 now, port;
	int i, sync;

	lb4_tuple(&otuple, &pkt, NAT_DIR_EGRESS);
	now = ct_now();
	fwd = cilium_snat_v4_external.lookup(&otuple);
	if (fwd) {
		*to_addr = fwd->to_addr;
		*to_port = fwd->to_port;
		sync = nat_refresh(fwd, &pkt, now);
		if (sync) {
			/* established or closing: the reply entry (peer -> node:port) too */
			rtuple.daddr = *to_addr;
			rtuple.saddr = pkt.daddr;
			rtuple.dport = *to_port;
			rtuple.sport = pkt.dport;
			rtuple.nexthdr = pkt.proto;
			rtuple.flags = NAT_DIR_INGRESS;
			nat_sync(&rtuple, now, sync);
		}
		return 0;
	}
	/* a new mapping: the reply tuple must be free for the port we pick */
	rstate.created = ostate.created = now;
	nat_refresh(&rstate, &pkt, now);
	nat_refresh(&ostate, &pkt, now);
	rstate.to_addr = pkt.saddr;
	rstate.to_port = pkt.sport;
	ostate.to_addr = cfg->node_ip;
	rtuple.daddr = cfg->node_ip;
	rtuple.saddr = pkt.daddr;
	rtuple.sport = pkt.dport;
	rtuple.nexthdr = pkt.proto;
	rtuple.flags = NAT_DIR_INGRESS;
	if (pkt.proto == IPPROTO_ICMP)
		rtuple.sport = 0;       /* echo replies carry only the id */
	port = bpf_ntohs(pkt.sport);
	if (port < NODEPORT_PORT_MIN_NAT || port > NODEPORT_PORT_MAX_NAT)
		port = NODEPORT_PORT_MIN_NAT + bpf_get_prandom_u32() % NAT_PORT_SPAN;
	for (i = 0; i < SNAT_COLLISION_RETRIES; i++) {
		rtuple.dport = bpf_htons(port);
		if (pkt.proto == IPPROTO_ICMP)
			rtuple.sport = rtuple.dport;
		if (cilium_snat_v4_external.insert(&rtuple, &rstate) == 0) {
			ostate.to_port = rtuple.dport;
			if (cilium_snat_v4_external.update(&otuple, &ostate) < 0) {
				cilium_snat_v4_external.delete(&rtuple);
				return -DROP_NAT_NO_MAPPING;
			}
			*to_addr = ostate.to_addr;
			*to_port = ostate.to_port;
			return 0;
		}
		port = i == 0 ? NODEPORT_PORT_MIN_NAT + bpf_get_prandom_u32() % NAT_PORT_SPAN :
			(port >= NODEPORT_PORT_MAX_NAT ? NODEPORT_PORT_MIN_NAT : port + 1);
	}
	return -DROP_NAT_NO_MAPPING;
}

/* SNAT one parsed packet to the node's address. The L4 header must hold what the rewrite
 * touches (up to the TCP checksum, the whole UDP or ICMP header) before a mapping is made: a
 * packet cut short is dropped without leaving one (the fuzzer found such packets leaving a
 * mapping behind their DROP_CSUM_L4). Returns 0 or a negative DROP_*. */
static __always_inline int snat_v4_translate(struct __sk_buff *skb, const struct lb4_pkt *pkt,
					     const struct node_config *cfg)
{
	__u32 need = pkt->l4_off + (pkt->proto == IPPROTO_TCP ? 18 : 8);
	__be32 to_addr = 0;
	__be16 to_port = 0;
	int ret;

	if (skb->len < need)
		return -DROP_CT_INVALID_HDR;
	ret = snat_v4_mapping(pkt, cfg, &to_addr, &to_port);
	if (ret < 0)
		return ret;
	return nat_rewrite(skb, pkt, 1, to_addr, to_port);
}

static __always_inline int snat_v4_egress(struct __sk_buff *skb, const struct node_config *cfg)
{
	struct lb4_pkt pkt = {};
	int ret;

	if (!(cfg->flags & NODE_CFG_F_MASQUERADE))
		return 0;
	ret = nat_parse(skb, &pkt, 1);
	if (ret <= 0)
		return ret;
	if (!snat_v4_needed(pkt.saddr, pkt.daddr))
		return 0;
	return snat_v4_translate(skb, &pkt, cfg);
}

/* A NodePort flow to a backend on another node leaves with the node's address, so the reply
 * comes back through this node. Returns 0 or a negative DROP_*. */
static __always_inline int snat_v4_nodeport(struct __sk_buff *skb, const struct node_config *cfg)
{
	struct lb4_pkt pkt = {};
	int ret = nat_parse(skb, &pkt, 1);

	if (ret <= 0)
		return ret;
	return snat_v4_translate(skb, &pkt, cfg);
}

/* An ICMP error quoting node:port -> peer: back to the pod. Returns 0 or a negative DROP_*. */
static __always_inline int snat_v4_ingress_icmp_error(struct __sk_buff *skb,
						      const struct node_config *cfg)
{
	struct ipv4_ct_tuple rtuple = {};
	struct ipv4_nat_entry *rev;
	struct icmp_err err = {};
	int ret = icmp_err_parse(skb, &err);

	if (ret <= 0 || err.inner.saddr != cfg->node_ip)
		return ret < 0 ? ret : 0;
	icmp_err_reply_tuple(&rtuple, &err, NAT_DIR_INGRESS);   /* peer -> node:port */
	rev = cilium_snat_v4_external.lookup(&rtuple);
	if (!rev)
		return 0;
	ret = icmp_err_rewrite_inner(skb, &err, offsetof(struct iphdr, saddr), cfg->node_ip,
				     rev->to_addr, offsetof(struct tcphdr, source), err.sport,
				     rev->to_port);
	if (ret < 0)
		return ret;
	return icmp_err_rewrite_outer(skb, offsetof(struct iphdr, daddr), cfg->node_ip,
				      rev->to_addr);
}

static __always_inline int snat_v4_ingress(struct __sk_buff *skb, const struct node_config *cfg)
{
	struct ipv4_ct_tuple rtuple = {}, otuple = {};
	struct ipv4_nat_entry *rev;
	struct iphdr *ip = ctx_data(skb) + ETH_HLEN;
	struct lb4_pkt pkt = {};
	__u32 now;
	int ret;

	if ((void *)(ip + 1) > ctx_data_end(skb))
		return -DROP_INVALID;
	if (ip->protocol == IPPROTO_ICMP && ip->daddr == cfg->node_ip) {
		ret = snat_v4_ingress_icmp_error(skb, cfg);
		if (ret < 0)
			return ret;
	}
	ret = nat_parse(skb, &pkt, 0);
	if (ret <= 0 || pkt.daddr != cfg->node_ip)
		return ret < 0 ? ret : 0;
	lb4_tuple(&rtuple, &pkt, NAT_DIR_INGRESS);
	rev = cilium_snat_v4_external.lookup(&rtuple);
	if (!rev)
		return 0;               /* the node's own traffic */
	now = ct_now();
	ret = nat_refresh(rev, &pkt, now);
	if (ret) {
		/* established or closing: the forward entry (pod -> peer) too */
		otuple.saddr = rev->to_addr;
		otuple.daddr = pkt.saddr;
		otuple.sport = rev->to_port;
		otuple.dport = pkt.sport;
		otuple.nexthdr = pkt.proto;
		otuple.flags = NAT_DIR_EGRESS;
		nat_sync(&otuple, now, ret);
	}
	return nat_rewrite(skb, &pkt, 0, rev->to_addr, rev->to_port);
}

#endif /* DP_LIB_NAT_H */
