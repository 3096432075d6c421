/* lib/policy.h - identity policy on the packet path, as Cilium enforces it.
 *
 * Every packet of a flow's forward direction is checked, new and established alike (a deny
 * added later stops an established flow); replies, and ICMP errors about a tracked flow of the
 * endpoint's (RELATED: the error quotes a packet the endpoint sent, on ingress, or received, on
 * egress), pass on conntrack alone. The decision is two LPM lookups in cilium_policy_v2:
 * L1 = {endpoint, peer identity, direction, protocol, dport} and L2 = the same with identity 0
 * (any peer). A deny entry in either drops (DROP_POLICY_DENY); else a match in either allows;
 * else DROP_POLICY. The deciding entry (the deny one; on allow L1 if it matched, else L2) counts
 * the packet and its bytes (plain adds, see policy_can_access). An endpoint that does not
 * enforce a direction has one allow-all entry {ep, 0, dir} of prefix POLICY_PREFIX_BASE, so no
 * entry at all means deny.
 *
 * Ports: TCP, UDP and SCTP ports; ICMP echo: the identifier as the source port of a request and
 * as the destination port of a reply (the policy key of any ICMP carries dport 0); other
 * protocols: 0. A datagram's first fragment records its ports in cilium_ipv4_frag_datagrams
 * once policy let it through (a denied one leaves no entry; Cilium records it before the
 * decision); later fragments take them from there (none: DROP_FRAG_NOT_FOUND).
 *
 * Conntrack (lib/conntrack.h's maps and lifetimes; src_sec_id = the peer's identity) keys a
 * policy-tracked flow in its forward orientation: TUPLE_F_POLICY | TUPLE_F_OUT when the endpoint
 * opened it (made on egress), TUPLE_F_POLICY | TUPLE_F_IN when a peer did (made on ingress). A
 * packet whose reversed tuple is the other direction's entry is a reply; a TCP SYN on a closed
 * entry starts over (Cilium's CT_NEW).
 *
 * Verdict cache: a forward entry remembers the dp_policy_revision at which policy allowed the
 * flow (ct_entry.policy_rev) and the peer identity it was decided for (src_sec_id). While the
 * agent's revision (bumped after every policy map change) and the peer's identity are still
 * those, an established packet passes on that one conntrack lookup, without the LPM lookups;
 * any change sends its next packet through the full decision again (a removed allow or a new
 * deny drops it there). Revision 0 (the agent never wrote one) caches nothing. The deciding
 * policy entry counts the packets that were decided; the flow's conntrack entry counts all.
 *
 * Verdict events (lib/policy_log.h): a decision that allows a new or reopened flow, and every
 * one that denies, is reported when the endpoint enforces that direction, as Cilium does. A
 * denied packet is also marked as the deciding endpoint's drop in that direction (lib/trace.h
 * trace_policy_drop): a pod's ingress policy denying a packet from a pod on the same node is
 * an ingress drop of the destination, although the sender's program carries it out.
 *
 * API:
 *   policy_egress4(skb, ep_id, dst_identity)   endpoint ep_id sends the packet (valid IPv4
 *                                              header, the endpoint's address as its source)
 *                                              to dst_identity: 0 to go on, or a negative
 *                                              DROP_*
 *   policy_ingress4(skb, ep_id, src_identity)  endpoint ep_id receives it (the endpoint's
 *                                              address as its destination) from src_identity:
 *                                              the same
 *   policy_can_access(ep_id, identity, dir, proto, dport, bytes, &match)
 *                                              the decision alone, counted in the deciding
 *                                              entry: 0, -DROP_POLICY or -DROP_POLICY_DENY;
 *                                              match: how it was made (struct policy_match)
 *   policy_parse4(skb, &pkt)                   the packet's policy view (struct policy_pkt):
 *                                              0 or a negative DROP_*
 *   policy_ct4_lb(skb, lb_pkt, ep_id, identity, dir, now)
 *                                              the same decision for a packet already parsed
 *                                              by lb4_parse (TCP/UDP, not a fragment), the
 *                                              clock read once (ct_now()) by the caller: 0,
 *                                              POLICY_ESTABLISHED (a forward packet of a
 *                                              tracked flow) or a negative DROP_*
 */
#ifndef DP_LIB_POLICY_H
#define DP_LIB_POLICY_H

#include <uapi/linux/icmp.h>

#include "maps.h"
#include "conntrack.h"
#include "icmp.h"
#include "lb.h"
#include "policy_log.h"
#include "trace.h"

#define POLICY_ESTABLISHED 1   /* policy_ct4_*: a forward packet of a tracked flow, passed */

#define IP_MF_FLAG   0x2000
#define IP_FRAG_OFF  0x1FFF
#define ICMP_PARAMETERPROB_TYPE 12

/* A packet as policy sees it. */
struct policy_pkt {
	struct ipv4_ct_tuple tuple;     /* as it travels: daddr, saddr, dport, sport, nexthdr */
	struct ipv4_ct_tuple quoted;    /* an ICMP error's quoted packet, when related is set */
	__u32 len;
	__u8  tcp_flags;
	__u8  related;                  /* an ICMP error that quotes a header */
	__u8  frag_first;               /* a datagram's first fragment: frag_id to record once
					 * policy let it through */
	__u8  pad;
	struct ipv4_frag_id frag_id;
};

/* How a decision was made, for its verdict event. */
struct policy_match {
	__u8 type;      /* POLICY_MATCH_* */
	__u8 report;    /* 1: the direction is enforced, a verdict event is due */
};

static __always_inline int policy_has_ports(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP ||
	       proto == IPPROTO_ICMP;
}

/* The policy ports of the L4 header at off into ports[0] (source) and ports[1] (destination).
 * Returns the ICMP type for ICMP, 0 for anything else, or -DROP_CT_INVALID_HDR (cut short). */
static __always_inline int policy_l4_ports(struct __sk_buff *skb, __u32 off, __u8 proto,
					   __be16 *ports)
{
	struct icmphdr icmp;

	ports[0] = ports[1] = 0;
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP) {
		__be16 *l4 = ctx_data(skb) + off;

		if ((void *)(l4 + 2) <= ctx_data_end(skb)) {    /* linear: no helper call */
			ports[0] = l4[0];
			ports[1] = l4[1];
			return 0;
		}
		if (bpf_skb_load_bytes(skb, off, ports, 4) < 0)
			return -DROP_CT_INVALID_HDR;
		return 0;
	}
	if (proto != IPPROTO_ICMP)
		return 0;
	if (bpf_skb_load_bytes(skb, off, &icmp, sizeof(icmp)) < 0)
		return -DROP_CT_INVALID_HDR;
	if (icmp.type == ICMP_ECHO)
		ports[0] = icmp.un.echo.id;
	else if (icmp.type == ICMP_ECHOREPLY)
		ports[1] = icmp.un.echo.id;
	return icmp.type;
}

/* An ICMP error (at icmp_off): its quoted packet's tuple; related stays 0 when it quotes too
 * little to know the flow. */
static __always_inline void policy_parse_quote(struct __sk_buff *skb, __u32 icmp_off,
					       struct policy_pkt *pkt)
{
	struct icmp_err err = {};
	__be16 ports[2] = {};

	if (!icmp_err_load(skb, icmp_off, &err))
		return;
	if (err.inner.protocol == IPPROTO_ICMP) {
		if (policy_l4_ports(skb, err.in_l4, IPPROTO_ICMP, ports) < 0)
			return;
	} else if (policy_has_ports(err.inner.protocol)) {
		ports[0] = err.sport;
		ports[1] = err.dport;
	}
	pkt->quoted.daddr = err.inner.daddr;
	pkt->quoted.saddr = err.inner.saddr;
	pkt->quoted.dport = ports[1];
	pkt->quoted.sport = ports[0];
	pkt->quoted.nexthdr = err.inner.protocol;
	pkt->related = 1;
}

static __always_inline int policy_parse4(struct __sk_buff *skb, struct policy_pkt *pkt)
{
	struct iphdr *ip = ctx_data(skb) + ETH_HLEN;
	struct ipv4_frag_id frag_id = {};
	struct ipv4_frag_l4ports *first;
	__be16 ports[2];
	__u16 frag;
	__u32 off;
	__u8 proto;
	int ret;

	if ((void *)(ip + 1) > ctx_data_end(skb))
		return -DROP_INVALID;
	proto = ip->protocol;
	frag = bpf_ntohs(ip->frag_off);
	off = ETH_HLEN + ip->ihl * 4;
	pkt->tuple.daddr = frag_id.daddr = ip->daddr;
	pkt->tuple.saddr = frag_id.saddr = ip->saddr;
	pkt->tuple.nexthdr = frag_id.proto = proto;
	frag_id.id = ip->id;
	pkt->len = skb->len;
	if ((frag & IP_FRAG_OFF) && policy_has_ports(proto)) {
		/* a later fragment: no L4 header, the first one's ports */
		first = cilium_ipv4_frag_datagrams.lookup(&frag_id);
		if (!first)
			return -DROP_FRAG_NOT_FOUND;
		pkt->tuple.sport = first->sport;
		pkt->tuple.dport = first->dport;
		return 0;
	}
	if (frag & IP_FRAG_OFF)
		return 0;
	ret = policy_l4_ports(skb, off, proto, ports);
	if (ret < 0)
		return ret;
	pkt->tuple.sport = ports[0];
	pkt->tuple.dport = ports[1];
	if ((frag & IP_MF_FLAG) && policy_has_ports(proto)) {
		pkt->frag_first = 1;
		pkt->frag_id = frag_id;
	}
	if (proto == IPPROTO_TCP) {
		__u8 *flags = ctx_data(skb) + off + 13;

		if ((void *)(flags + 1) <= ctx_data_end(skb))
			pkt->tcp_flags = *flags;
		else if (bpf_skb_load_bytes(skb, off + 13, &pkt->tcp_flags, 1) < 0)
			return -DROP_CT_INVALID_HDR;
	}
	if (proto == IPPROTO_ICMP && (ret == ICMP_DEST_UNREACH || ret == ICMP_TIME_EXCEEDED ||
				      ret == ICMP_PARAMETERPROB_TYPE))
		policy_parse_quote(skb, off, pkt);
	return 0;
}

static __always_inline int policy_can_access(__u16 ep_id, __u32 identity, __u8 dir, __u8 proto,
					     __be16 dport, __u32 bytes, struct policy_match *m)
{
	struct policy_key key = {};
	struct policy_entry *l1, *l2, *hit;

	key.lpm_key_prefixlen = POLICY_FULL_PREFIX;
	key.sec_label = identity;
	key.endpoint_id = ep_id;
	key.egress = dir;
	key.protocol = proto;
	key.dport = dport;
	hit = l1 = cilium_policy_v2.lookup(&key);
	if (!l1 || !l1->deny) {
		key.sec_label = 0;
		l2 = cilium_policy_v2.lookup(&key);
		if (l2 && (l2->deny || !l1))
			hit = l2;
	}
	if (!hit) {
		m->type = POLICY_MATCH_NONE;
		m->report = 1;          /* no allow-all entry: the direction is enforced */
		return -DROP_POLICY;
	}
	m->type = policy_match_type(hit == l1 && identity, hit->flags);
	m->report = !!(hit->flags & POLICY_ENTRY_F_LOG);
	/* plain adds: an LPM trie keeps its values only 4-byte aligned (after the 12 bytes of key
	 * data), so a 64-bit atomic add would be a misaligned locked operation, a split lock on
	 * x86 whenever the counter straddles a cache line (measured: about 1 us a packet, and a
	 * bus lock for every CPU) and a fault on arm64. Two CPUs counting one entry at the same
	 * moment may lose a count. */
	hit->packets += 1;
	hit->bytes += bytes;
	return hit->deny ? -DROP_POLICY_DENY : 0;
}

/* The entry of a policy-tracked flow: tuple t (reversed or not) with TUPLE_F_POLICY | flags
 * (TUPLE_F_OUT or TUPLE_F_IN); key is left holding that key. */
static __always_inline struct ct_entry *policy_ct_find(const struct ipv4_ct_tuple *t, int reverse,
						       __u8 flags, struct ipv4_ct_tuple *key)
{
	key->daddr = reverse ? t->saddr : t->daddr;
	key->saddr = reverse ? t->daddr : t->saddr;
	key->dport = reverse ? t->sport : t->dport;
	key->sport = reverse ? t->dport : t->sport;
	key->nexthdr = t->nexthdr;
	key->flags = TUPLE_F_POLICY | flags;
	return ct_lookup(key);
}

/* A TCP SYN (no ACK) meeting a closed entry: a new connection on an old tuple. */
static __always_inline int policy_ct_restarts(const struct ct_entry *ct,
					      const struct policy_pkt *pkt)
{
	return pkt->tuple.nexthdr == IPPROTO_TCP && ct_tcp_reopens(ct, pkt->tcp_flags);
}

/* The agent's policy revision, 0 when it never wrote one (nothing is cached then). */
static __always_inline __u32 policy_revision(void)
{
	__u32 zero = 0;
	struct policy_revision *rev = dp_policy_revision.lookup(&zero);

	return rev ? rev->revision : 0;
}

/* The endpoint's side of a flow in direction dir, for a parsed packet: its related errors and
 * replies pass, the forward direction is decided by policy (or by the verdict its entry
 * caches) and tracked. Returns 0, POLICY_ESTABLISHED or a negative DROP_*. */
static __always_inline int policy_ct4_pkt(struct __sk_buff *skb, const struct policy_pkt *pkt,
					  __u16 ep_id, __u32 peer_id, __u8 dir, __u32 now)
{
	struct ipv4_ct_tuple key = {}, rkey = {};
	struct ct_entry *ct, *own, entry = {};
	struct policy_match m = {};
	__be16 dport;
	__u8 owndir = dir == POLICY_EGRESS ? TUPLE_F_OUT : TUPLE_F_IN;
	__u8 other = owndir ^ TUPLE_F_IN;
	__u32 rev;
	int is_tcp = pkt->tuple.nexthdr == IPPROTO_TCP, ret;

	/* RELATED: the quote is the endpoint's own packet (on ingress one it sent: quoted source =
	 * the outer destination; on egress one it received: quoted destination = the outer
	 * source), of a tracked flow, either way round. Without the address check an error
	 * quoting any endpoint's flow on this node would pass into (or out of) this one. */
	if (pkt->related &&
	    (dir == POLICY_EGRESS ? pkt->quoted.daddr == pkt->tuple.saddr :
				    pkt->quoted.saddr == pkt->tuple.daddr) &&
	    (policy_ct_find(&pkt->quoted, 1, owndir, &rkey) ||
	     policy_ct_find(&pkt->quoted, 0, other, &rkey))) {
		trace_note(TRACE_REASON_CT_RELATED);    /* errors are rare: always traced */
		return 0;
	}
	/* ESTABLISHED with a cached verdict still valid: one lookup */
	rev = policy_revision();
	own = policy_ct_find(&pkt->tuple, 0, owndir, &key);
	if (own && rev && own->policy_rev == rev && own->src_sec_id == peer_id &&
	    !policy_ct_restarts(own, pkt)) {
		ct_refresh_at(own, pkt->tcp_flags, is_tcp, pkt->len, now,
			      CT_TRACE(CT_TRACE_TX, TRACE_REASON_CT_ESTABLISHED));
		return POLICY_ESTABLISHED;
	}
	ct = policy_ct_find(&pkt->tuple, 1, other, &rkey);
	if (ct && !policy_ct_restarts(ct, pkt)) {               /* REPLY */
		ct_refresh_at(ct, pkt->tcp_flags, is_tcp, pkt->len, now,
			      CT_TRACE(CT_TRACE_RX, TRACE_REASON_CT_REPLY));
		return 0;
	}
	dport = pkt->tuple.nexthdr == IPPROTO_ICMP ? 0 : pkt->tuple.dport;
	ret = policy_can_access(ep_id, peer_id, dir, pkt->tuple.nexthdr, dport, pkt->len, &m);
	/* reported: a denial, a new flow, a reopened one (not an established flow re-decided) */
	if (m.report && (ret < 0 || !own || policy_ct_restarts(own, pkt)))
		send_policy_verdict_notify(skb, ep_id, peer_id, dport, pkt->tuple.nexthdr, dir,
					   ret, m.type);
	if (ret < 0) {
		trace_policy_drop(dir == POLICY_EGRESS ? METRIC_EGRESS : METRIC_INGRESS, ep_id);
		return ret;
	}
	if (own) {                                              /* ESTABLISHED, decided */
		if (policy_ct_restarts(own, pkt)) {
			own->flags = 0;
			ct_reopen(own);         /* the monitor's flags too */
		}
		ct_refresh_at(own, pkt->tcp_flags, is_tcp, pkt->len, now,
			      CT_TRACE(CT_TRACE_TX, TRACE_REASON_CT_ESTABLISHED));
		own->src_sec_id = peer_id;
		own->policy_rev = rev;  /* read before the decision: a later bump re-decides */
		return POLICY_ESTABLISHED;
	}
	entry.src_sec_id = peer_id;                             /* NEW */
	entry.policy_rev = rev;
	ct_refresh_at(&entry, pkt->tcp_flags, is_tcp, pkt->len, now,
		      CT_TRACE(CT_TRACE_TX, TRACE_REASON_POLICY));
	return ct_create(&key, &entry);
}

static __always_inline int policy_ct4(struct __sk_buff *skb, __u16 ep_id, __u32 peer_id,
				      __u8 dir)
{
	struct policy_pkt pkt = {};
	int ret = policy_parse4(skb, &pkt);

	if (ret < 0)
		return ret;
	ret = policy_ct4_pkt(skb, &pkt, ep_id, peer_id, dir, ct_now());
	if (ret < 0)
		return ret;
	if (pkt.frag_first) {           /* allowed: the later fragments get its ports */
		struct ipv4_frag_l4ports ports = {
			.sport = pkt.tuple.sport, .dport = pkt.tuple.dport,
		};

		cilium_ipv4_frag_datagrams.update(&pkt.frag_id, &ports);
	}
	return 0;
}

/* A packet lb4_parse took (TCP/UDP, not a fragment): its policy view needs no second parse. */
static __always_inline int policy_ct4_lb(struct __sk_buff *skb, const struct lb4_pkt *p,
					 __u16 ep_id, __u32 peer_id, __u8 dir, __u32 now)
{
	struct policy_pkt pkt = {};

	pkt.tuple.daddr = p->daddr;
	pkt.tuple.saddr = p->saddr;
	pkt.tuple.dport = p->dport;
	pkt.tuple.sport = p->sport;
	pkt.tuple.nexthdr = p->proto;
	pkt.len = p->len;
	pkt.tcp_flags = p->tcp_flags;
	return policy_ct4_pkt(skb, &pkt, ep_id, peer_id, dir, now);
}

static __always_inline int policy_egress4(struct __sk_buff *skb, __u16 ep_id, __u32 dst_identity)
{
	return policy_ct4(skb, ep_id, dst_identity, POLICY_EGRESS);
}

static __always_inline int policy_ingress4(struct __sk_buff *skb, __u16 ep_id, __u32 src_identity)
{
	return policy_ct4(skb, ep_id, src_identity, POLICY_INGRESS);
}

#endif /* DP_LIB_POLICY_H */
