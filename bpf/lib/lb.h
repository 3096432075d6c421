/* lib/lb.h - the service load balancer on the packet path (kube-proxy replacement).
 *
 * A TCP/UDP packet to a service frontend (cilium_lb4_services_v2 slot 0) gets a backend: the one
 * its conntrack entry remembers while that backend still exists (terminating backends finish
 * their flows), else a random active slot 1..count. The packet is DNATed to the backend with
 * L3/L4 checksums fixed incrementally, and a reply entry is created so the client's node turns
 * the backend's replies back into the frontend (lb4_rev_nat, run on local delivery); an
 * established flow checks that entry again only with a SYN or once a second. The reply entry
 * of a TCP flow has the flow's lifetime: CT_SYN_TIMEOUT until the client's first packet without
 * SYN establishes it with the service entry (CT_CONNECTION_LIFETIME_TCP). A pod that
 * reaches itself through a service (hairpin) is also SNATed to IPV4_LOOPBACK, so its own stack
 * sees a peer; the reply to IPV4_LOOPBACK is turned back into frontend -> pod. A service with
 * SVC_FLAG_AFFINITY (ClientIP) sends a client's new flows to its last backend while that is
 * active and was used within the timeout kept in the frontend slot's backend_id. An ICMP error
 * (unreachable, time exceeded) about a load-balanced flow is translated back too: the quoted
 * packet's destination becomes the frontend again (inner IP checksum and ICMP checksum fixed)
 * and, when the backend itself sent the error, so does the outer source.
 *
 * A frontend reached from outside (NodePort, LoadBalancer IP, externalIP; from-netdev) marks
 * its reply entry CT_F_NODEPORT; a ClusterIP reached from outside is dropped. A two-scope
 * frontend (a Local traffic policy that differs between outside and pods) gives pods its INT
 * slots. A frontend whose algorithm is Maglev picks a new flow's backend from its lookup table
 * (cilium_lb4_maglev) at jhash(saddr, ports, proto), so every node picks the same one.
 *
 * API:
 *   lb4_decide(pkt, src_identity, internal, &backend, &loopback)
 *                                  the hook-independent decision (tc and XDP); returns
 *                                  LB_XLATED, 0 or a negative DROP_*
 *   lb4_parse(skb, &pkt)           the L4 view (struct lb4_pkt) of a TCP/UDP packet that is not
 *                                  a fragment: 1, 0 (load balancing does not apply) or a
 *                                  negative DROP_*
 *   lb4_xlate(skb, src_identity, internal)
 *                                  returns LB_XLATED, 0 (not a service), -DROP_NO_SERVICE (no
 *                                  backend), -DROP_IS_CLUSTER_IP, or another negative DROP_*
 *   lb4_xlate_pkt(skb, &pkt, src_identity, internal)
 *                                  the same for a packet lb4_parse took; pkt follows the rewrite
 *   lb4_rev_nat(skb, nodeport_only)
 *                                  a reply, or an ICMP error about the flow; returns LB_XLATED,
 *                                  0 (not of a service flow; with nodeport_only, of a
 *                                  CT_F_NODEPORT flow) or a negative DROP_*
 *   lb4_is_loopback(daddr)         whether a packet is a hairpin reply (to IPV4_LOOPBACK)
 */
#ifndef DP_LIB_LB_H
#define DP_LIB_LB_H

#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>

#include "maps.h"
#include "conntrack.h"
#include "icmp.h"
#include "csum.h"

#define IP_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))
#define IP_DADDR_OFF (ETH_HLEN + offsetof(struct iphdr, daddr))
#define IP_SADDR_OFF (ETH_HLEN + offsetof(struct iphdr, saddr))

/* The L4 view of an IPv4 packet that load balancing needs. */
struct lb4_pkt {
	__u32  l4_off;
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8   proto;
	__u8   tcp_flags;
	__u32  len;
};

/* Returns 1 when the packet is TCP/UDP and not a fragment (pkt filled), 0 when load balancing
 * does not apply, or -DROP_INVALID / -DROP_CT_INVALID_HDR. */
static __always_inline int lb4_parse(struct __sk_buff *skb, struct lb4_pkt *pkt)
{
	struct iphdr *ip = ctx_data(skb) + ETH_HLEN;
	__be16 ports[2];
	__u8 *l4;

	if ((void *)(ip + 1) > ctx_data_end(skb))
		return -DROP_INVALID;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return 0;
	if (ip->frag_off & bpf_htons(0x3FFF))
		return 0;               /* fragments are not load-balanced */
	pkt->l4_off = ETH_HLEN + ip->ihl * 4;
	pkt->saddr = ip->saddr;
	pkt->daddr = ip->daddr;
	pkt->proto = ip->protocol;
	pkt->len = skb->len;
	pkt->tcp_flags = 0;
	/* the first 14 bytes of a TCP header (to its flags), 4 of a UDP one: read in place when
	 * the linear part holds them, through the helper otherwise (same result, same errors) */
	l4 = (__u8 *)ip + ip->ihl * 4;
	if ((void *)(l4 + 14) <= ctx_data_end(skb)) {
		pkt->sport = *(__be16 *)l4;
		pkt->dport = *(__be16 *)(l4 + 2);
		if (pkt->proto == IPPROTO_TCP)
			pkt->tcp_flags = l4[13];
		return 1;
	}
	if (bpf_skb_load_bytes(skb, pkt->l4_off, ports, sizeof(ports)) < 0)
		return -DROP_CT_INVALID_HDR;
	pkt->sport = ports[0];
	pkt->dport = ports[1];
	if (pkt->proto == IPPROTO_TCP &&
	    bpf_skb_load_bytes(skb, pkt->l4_off + 13, &pkt->tcp_flags, 1) < 0)
		return -DROP_CT_INVALID_HDR;
	return 1;
}

/* The packet's own tuple, in the orientation it travels, with the given TUPLE_F_* flags. */
static __always_inline void lb4_tuple(struct ipv4_ct_tuple *tuple, const struct lb4_pkt *pkt,
				      __u8 flags)
{
	tuple->daddr = pkt->daddr;
	tuple->saddr = pkt->saddr;
	tuple->dport = pkt->dport;
	tuple->sport = pkt->sport;
	tuple->nexthdr = pkt->proto;
	tuple->flags = flags;
}

/* Write len bytes at off: in place when the linear part holds them, else with the helper. */
static __always_inline int lb4_store(struct __sk_buff *skb, __u32 off, const void *from,
				     __u32 len)
{
	__u8 *p;

	if (off < 256) {        /* a header offset: bounded for the verifier */
		__u64 o = off;

		asm volatile("%0 &= 0xff" : "+r"(o));
		p = ctx_data(skb) + o;
		if (len == 4 && p + 4 <= (__u8 *)ctx_data_end(skb)) {
			__builtin_memcpy(p, from, 4);
			return 0;
		}
		if (len == 2 && p + 2 <= (__u8 *)ctx_data_end(skb)) {
			__builtin_memcpy(p, from, 2);
			return 0;
		}
	}
	return bpf_skb_store_bytes(skb, off, from, len, 0) < 0 ? -DROP_WRITE_ERROR : 0;
}

/* The IP header checksum for an address change: computed in place (the IP checksum is never
 * offloaded, so this is what bpf_l3_csum_replace would write), else by the helper. */
static __always_inline int lb4_l3_csum(struct __sk_buff *skb, __be32 from, __be32 to)
{
	struct iphdr *ip = ctx_data(skb) + ETH_HLEN;
	__u16 sum;

	if ((void *)(ip + 1) <= ctx_data_end(skb)) {
		sum = ip->check;
		dp_csum_replace4(&sum, from, to);
		ip->check = sum;
		return 0;
	}
	return bpf_l3_csum_replace(skb, IP_CSUM_OFF, from, to, 4) < 0 ? -DROP_CSUM_L3 : 0;
}

/* Rewrite one address (at addr_off) and one port (at l4_off + port_off) with checksums: the
 * TCP/UDP checksum through bpf_l4_csum_replace (it knows the skb's checksum state: partial,
 * complete, none), the IP checksum and the bytes in place. */
static __always_inline int lb4_rewrite(struct __sk_buff *skb, const struct lb4_pkt *pkt,
				       __u32 addr_off, __be32 old_addr, __be32 new_addr,
				       __u32 port_off, __be16 old_port, __be16 new_port)
{
	__u32 csum_off = pkt->l4_off + (pkt->proto == IPPROTO_TCP ?
					offsetof(struct tcphdr, check) :
					offsetof(struct udphdr, check));
	__u64 mangled0 = pkt->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	int ret;

	if (old_addr != new_addr) {
		if (bpf_l4_csum_replace(skb, csum_off, old_addr, new_addr,
					BPF_F_PSEUDO_HDR | mangled0 | 4) < 0)
			return -DROP_CSUM_L4;
	}
	if (old_port != new_port) {
		if (bpf_l4_csum_replace(skb, csum_off, old_port, new_port, mangled0 | 2) < 0)
			return -DROP_CSUM_L4;
	}
	if (old_addr != new_addr) {
		ret = lb4_l3_csum(skb, old_addr, new_addr);
		if (ret < 0)
			return ret;
		ret = lb4_store(skb, addr_off, &new_addr, 4);
		if (ret < 0)
			return ret;
	}
	if (old_port != new_port)
		return lb4_store(skb, pkt->l4_off + port_off, &new_port, 2);
	return 0;
}

static __always_inline int lb4_is_loopback(__be32 daddr)
{
	return daddr == bpf_htonl(IPV4_LOOPBACK_HOST);
}

static __always_inline struct lb4_backend *lb4_backend(__u32 backend_id)
{
	struct lb4_backend_key key = { .backend_id = backend_id };

	return cilium_lb4_backends_v3.lookup(&key);
}

/* The client's affinity backend, if still active and used within the timeout; else 0. */
static __always_inline __u32 lb4_affinity_backend(const struct lb4_service *svc, __be32 client,
						  __u16 rev_nat_index)
{
	struct lb4_affinity_key key = { .client_ip = client, .rev_nat_id = rev_nat_index };
	struct lb_affinity_val *val;
	struct lb4_backend *backend;

	if (!(svc->flags & SVC_FLAG_AFFINITY))
		return 0;
	val = cilium_lb4_affinity.lookup(&key);
	if (!val || val->last_used + (svc->backend_id & LB_AFFINITY_TIMEOUT_MASK) < ct_now())
		return 0;
	backend = lb4_backend(val->backend_id);
	if (!backend || backend->flags != BE_STATE_ACTIVE)
		return 0;
	return val->backend_id;
}

static __always_inline void lb4_affinity_update(const struct lb4_service *svc, __be32 client,
						__u16 rev_nat_index, __u32 backend_id)
{
	struct lb4_affinity_key key = { .client_ip = client, .rev_nat_id = rev_nat_index };
	struct lb_affinity_val val = { .last_used = ct_now(), .backend_id = backend_id };

	if (svc->flags & SVC_FLAG_AFFINITY)
		cilium_lb4_affinity.update(&key, &val);
}

/* Linux's jhash_3words (lookup3 final mix), for Maglev's flow hash. */
static __always_inline __u32 lb_rol32(__u32 w, __u32 s)
{
	return (w << s) | (w >> (32 - s));
}

static __always_inline __u32 lb_jhash_3words(__u32 a, __u32 b, __u32 c, __u32 initval)
{
	initval += 0xdeadbeef + (3 << 2);
	a += initval;
	b += initval;
	c += initval;
	c ^= b; c -= lb_rol32(b, 14);
	a ^= c; a -= lb_rol32(c, 11);
	b ^= a; b -= lb_rol32(a, 25);
	c ^= b; c -= lb_rol32(b, 16);
	a ^= c; a -= lb_rol32(c, 4);
	b ^= a; b -= lb_rol32(a, 14);
	c ^= b; c -= lb_rol32(b, 24);
	return c;
}

/* A new flow's backend id: Maglev (the frontend's lookup table at the flow's hash; the
 * destination is left out of the hash, as Cilium does) or a random slot. Returns 0 when there
 * is none. */
static __always_inline __u32 lb4_select(const struct lb4_service *svc, struct lb4_key *key,
					const struct lb4_pkt *pkt)
{
	struct lb4_reverse_nat_key mkey = { .rev_nat_index = svc->rev_nat_index };
	struct lb4_maglev_lut *lut;
	struct lb4_service *slot;
	__u32 index;

	if ((svc->backend_id >> LB_ALGORITHM_SHIFT) == LB_ALGORITHM_MAGLEV &&
	    key->scope == LB_LOOKUP_SCOPE_EXT) {
		lut = cilium_lb4_maglev.lookup(&mkey);
		if (!lut)
			return 0;
		index = lb_jhash_3words(pkt->saddr, ((__u32)pkt->dport << 16) | pkt->sport,
					pkt->proto, HASH_INIT4_SEED) % LB_MAGLEV_LUT_SIZE;
		asm volatile("" : "+r"(index));   /* keep the bound check for the verifier */
		if (index >= LB_MAGLEV_LUT_SIZE)
			return 0;
		return lut->backend_ids[index];
	}
	key->backend_slot = (bpf_get_prandom_u32() % svc->count) + 1;
	slot = cilium_lb4_services_v2.lookup(key);
	return slot ? slot->backend_id : 0;
}

/* The frontend a packet is for. A pod (internal) sees the INT scope of a two-scope service;
 * from outside only frontends reachable from outside count (a ClusterIP: -DROP_IS_CLUSTER_IP).
 * Returns the frontend entry, NULL (not a service) with *err 0, or NULL with *err < 0. */
static __always_inline struct lb4_service *lb4_lookup(struct lb4_key *key,
						      const struct lb4_pkt *pkt, int internal,
						      int *err)
{
	struct lb4_service *svc;

	*err = 0;
	key->address = pkt->daddr;
	key->dport = pkt->dport;
	key->proto = pkt->proto;
	key->scope = LB_LOOKUP_SCOPE_EXT;
	svc = cilium_lb4_services_v2.lookup(key);
	if (!svc)
		return NULL;
	if (!internal && !(svc->flags & SVC_FLAG_ROUTABLE)) {
		*err = -DROP_IS_CLUSTER_IP;
		return NULL;
	}
	if (internal && (svc->flags2 & SVC_FLAG2_TWO_SCOPES)) {
		struct lb4_service *int_svc;

		key->scope = LB_LOOKUP_SCOPE_INT;
		int_svc = cilium_lb4_services_v2.lookup(key);
		if (int_svc)
			svc = int_svc;
		else            /* the INT head is being written: the EXT set serves meanwhile */
			key->scope = LB_LOOKUP_SCOPE_EXT;
	}
	if (svc->count == 0) {
		*err = -DROP_NO_SERVICE;
		return NULL;
	}
	return svc;
}

/* A pod opening a flow straight to an address and port (not a service) that was its backend
 * through a service a moment ago, from the same source port: the service flow is over (one
 * socket cannot hold both), so its reply entry goes, or the new flow's replies would be turned
 * into the frontend. Only on a flow's first packet: a TCP SYN, or any UDP datagram. */
static __always_inline void lb4_forget_service_reply(const struct lb4_pkt *pkt)
{
	struct ipv4_ct_tuple reply = {};
	struct ct_entry *ct;

	if (pkt->proto == IPPROTO_TCP && (pkt->tcp_flags & (TCP_FLAG_SYN | 0x10)) != TCP_FLAG_SYN)
		return;
	reply.daddr = pkt->saddr;
	reply.saddr = pkt->daddr;
	reply.dport = pkt->sport;
	reply.sport = pkt->dport;
	reply.nexthdr = pkt->proto;
	reply.flags = TUPLE_F_IN;
	ct = ct_lookup(&reply);
	if (ct && ct->rev_nat_index && !(ct->flags & CT_F_LB_LOOPBACK))
		ct_delete(&reply);
}

/* The load-balancing decision for a parsed packet, independent of the hook (tc or XDP): the
 * frontend, the flow's backend (conntrack, affinity, Maglev or random) and the reply entry.
 * Returns LB_XLATED with *out set to the backend and *loopback to whether the client is its own
 * backend (hairpin), 0 (not a service) or a negative DROP_*. internal: the packet comes from a
 * pod on this node (from outside: CT_F_NODEPORT flows). */
#define LB_XLATED 1
static __always_inline int lb4_decide(const struct lb4_pkt *p, __u32 src_identity,
				      int internal, struct lb4_backend **out, int *loopback_out)
{
	struct lb4_key key = {};
	struct lb4_service *svc;
	struct lb4_backend *backend = NULL;
	struct ipv4_ct_tuple tuple = {}, reply = {};
	struct ct_entry *ct, *rct, entry = {};
	struct lb4_pkt pkt = *p;
	__u32 backend_id = 0, now, lifetime = 0;
	__u16 rev_nat_index, seen;
	__u8 rflags;
	int loopback, ret;

	svc = lb4_lookup(&key, &pkt, internal, &ret);
	if (!svc) {
		if (!ret && internal)
			lb4_forget_service_reply(&pkt);
		return ret;
	}
	/* the L4 header must hold what the DNAT rewrites (up to the TCP checksum, the whole UDP
	 * header) before any state is made: a packet cut short is dropped without conntrack
	 * entries (the fuzzer found such packets leaving both behind a DROP_CSUM_L4) */
	if (pkt.len < pkt.l4_off + (pkt.proto == IPPROTO_TCP ? 18 : 8))
		return -DROP_CT_INVALID_HDR;
	rev_nat_index = svc->rev_nat_index;
	now = ct_now();         /* one clock read for the flow's entries */

	lb4_tuple(&tuple, &pkt, TUPLE_F_SERVICE);
	ct = ct_lookup(&tuple);
	if (ct) {
		backend = lb4_backend(ct->backend_id);
		/* a terminating backend finishes its flows, but a new SYN goes elsewhere */
		if (backend && backend->flags != BE_STATE_ACTIVE &&
		    (pkt.tcp_flags & (TCP_FLAG_SYN | 0x10)) == TCP_FLAG_SYN)
			backend = NULL;
		if (backend)
			backend_id = ct->backend_id;
	}
	if (!backend) {
		backend_id = lb4_affinity_backend(svc, pkt.saddr, rev_nat_index);
		if (!backend_id)
			backend_id = lb4_select(svc, &key, &pkt);
		backend = lb4_backend(backend_id);
		if (!backend)
			return -DROP_NO_SERVICE;
		entry.backend_id = backend_id;
		entry.rev_nat_index = rev_nat_index;
		entry.src_sec_id = src_identity;
		ct_refresh_at(&entry, pkt.tcp_flags, pkt.proto == IPPROTO_TCP, pkt.len, now,
			      CT_TRACE(CT_TRACE_TX, TRACE_REASON_POLICY));
		ret = ct_create(&tuple, &entry);
		if (ret < 0)
			return ret;
		ct = NULL;
	} else {
		lifetime = ct->lifetime;
		/* a new connection on a closed flow's tuple keeps the backend, not the close */
		if (pkt.proto == IPPROTO_TCP && ct_tcp_reopens(ct, pkt.tcp_flags))
			ct_reopen(ct);
		ct_refresh_at(ct, pkt.tcp_flags, pkt.proto == IPPROTO_TCP, pkt.len, now,
			      CT_TRACE(CT_TRACE_TX, TRACE_REASON_CT_ESTABLISHED));
	}
	lb4_affinity_update(svc, pkt.saddr, rev_nat_index, backend_id);

	/* the reply orientation, for lb4_rev_nat on the way back; a hairpin answers IPV4_LOOPBACK */
	loopback = internal && backend->address == pkt.saddr;
	/* an established flow's reply entry was made with its first packet: it is checked again
	 * only with a SYN or when the flow's lifetime moves on (once a second at most) */
	if (ct && ct->lifetime == lifetime && !(pkt.tcp_flags & TCP_FLAG_SYN)) {
		*out = backend;
		*loopback_out = loopback;
		return LB_XLATED;
	}
	reply.daddr = loopback ? bpf_htonl(IPV4_LOOPBACK_HOST) : pkt.saddr;
	reply.saddr = backend->address;
	reply.dport = pkt.sport;
	reply.sport = backend->port;
	reply.nexthdr = pkt.proto;
	reply.flags = TUPLE_F_IN;
	/* a new flow writes its reply entry without looking first: whatever an earlier flow left
	 * on this tuple is the old flow's */
	rct = ct ? ct_lookup(&reply) : NULL;
	rflags = loopback ? CT_F_LB_LOOPBACK : (internal ? 0 : CT_F_NODEPORT);
	/* the service entry's state: established once a packet without SYN passed it */
	seen = (ct ? ct->flags : entry.flags) & CT_F_SEEN_NON_SYN;
	/* a new entry, or one left by an earlier flow on this tuple through another frontend, or
	 * one a new connection finds closed */
	if (!rct || rct->rev_nat_index != rev_nat_index || rct->backend_id != backend_id ||
	    (rct->flags & (CT_F_LB_LOOPBACK | CT_F_NODEPORT)) != rflags ||
	    (pkt.proto == IPPROTO_TCP && ct_tcp_reopens(rct, pkt.tcp_flags))) {
		struct ct_entry rev = {};

		rev.rev_nat_index = rev_nat_index;
		rev.backend_id = backend_id;
		rev.flags = rflags;
		rev.src_sec_id = src_identity;
		ct_refresh_at(&rev, 0, 0, 0, now, CT_TRACE_SKIP);
		/* TCP: the flow's lifetime, not the established one for a SYN (a SYN flood's reply
		 * entries go after CT_SYN_TIMEOUT, as Cilium's) */
		if (pkt.proto == IPPROTO_TCP) {
			rev.flags |= seen;
			rev.lifetime = now + (seen ? CT_CONNECTION_LIFETIME_TCP : CT_SYN_TIMEOUT);
		}
		ret = ct_create(&reply, &rev);
		if (ret < 0)
			return ret;
	} else if (seen && !(rct->flags & (CT_F_SEEN_NON_SYN | CT_F_RX_CLOSING |
					   CT_F_TX_CLOSING))) {
		/* the client's first packet without SYN establishes the reply entry too: an idle
		 * connection whose backend sent only its SYN-ACK keeps it (the flag is set
		 * atomically: a CPU refreshing the entry at this moment loses none of its own) */
		DP_ATOMIC_U16_OR(rct, flags, CT_F_SEEN_NON_SYN);
		rct->lifetime = now + CT_CONNECTION_LIFETIME_TCP;
	}
	*out = backend;
	*loopback_out = loopback;
	return LB_XLATED;
}

/* lb4_xlate for a packet lb4_parse took: pkt follows the rewrite (destination, and the source
 * of a hairpin). Returns LB_XLATED, 0 (not a service) or a negative DROP_*. */
static __always_inline int lb4_xlate_pkt(struct __sk_buff *skb, struct lb4_pkt *pkt,
					 __u32 src_identity, int internal)
{
	struct lb4_backend *backend = NULL;
	__be32 baddr;
	__be16 bport;
	int loopback = 0, ret;

	ret = lb4_decide(pkt, src_identity, internal, &backend, &loopback);
	if (ret != LB_XLATED || !backend)
		return ret;
	baddr = backend->address;
	bport = backend->port;
	ret = lb4_rewrite(skb, pkt, IP_DADDR_OFF, pkt->daddr, baddr,
			  offsetof(struct tcphdr, dest), pkt->dport, bport);
	if (ret < 0)
		return ret;
	pkt->daddr = baddr;
	pkt->dport = bport;
	if (loopback) {
		ret = lb4_rewrite(skb, pkt, IP_SADDR_OFF, pkt->saddr,
				  bpf_htonl(IPV4_LOOPBACK_HOST), offsetof(struct tcphdr, source),
				  pkt->sport, pkt->sport);
		pkt->saddr = bpf_htonl(IPV4_LOOPBACK_HOST);
	}
	return ret < 0 ? ret : LB_XLATED;
}

/* Returns LB_XLATED (DNATed to a backend), 0 (not a service) or a negative DROP_*. */
static __always_inline int lb4_xlate(struct __sk_buff *skb, __u32 src_identity, int internal)
{
	struct lb4_pkt pkt = {};
	int ret = lb4_parse(skb, &pkt);

	if (ret <= 0)
		return ret;
	return lb4_xlate_pkt(skb, &pkt, src_identity, internal);
}

/* An ICMP error about a load-balanced flow: the quoted packet is client -> backend (with
 * nodeport_only, a flow from outside). Returns LB_XLATED, 0 (not such an error) or a negative
 * DROP_*. */
static __always_inline int lb4_rev_nat_icmp_error(struct __sk_buff *skb, int nodeport_only)
{
	struct iphdr *ip = ctx_data(skb) + ETH_HLEN;
	struct ipv4_ct_tuple tuple = {};
	struct lb4_reverse_nat_key rkey = {};
	struct lb4_reverse_nat *rn;
	struct ct_entry *ct;
	struct icmp_err err = {};
	__be32 outer_saddr, backend_ip;
	int ret;

	if ((void *)(ip + 1) > ctx_data_end(skb))
		return -DROP_INVALID;
	outer_saddr = ip->saddr;
	ret = icmp_err_parse(skb, &err);
	if (ret <= 0)
		return ret;
	icmp_err_reply_tuple(&tuple, &err, TUPLE_F_IN);   /* backend -> client */
	ct = ct_lookup(&tuple);
	if (!ct || !ct->rev_nat_index || (ct->flags & CT_F_LB_LOOPBACK) ||
	    (nodeport_only && !(ct->flags & CT_F_NODEPORT)))
		return 0;
	rkey.rev_nat_index = ct->rev_nat_index;
	rn = cilium_lb4_reverse_nat.lookup(&rkey);
	if (!rn)
		return 0;
	backend_ip = err.inner.daddr;
	ret = icmp_err_rewrite_inner(skb, &err, offsetof(struct iphdr, daddr), backend_ip,
				     rn->address, offsetof(struct tcphdr, dest), err.dport, rn->port);
	if (ret < 0)
		return ret;
	/* the outer source too, when the backend itself reported the error */
	if (outer_saddr == backend_ip)
		ret = icmp_err_rewrite_outer(skb, offsetof(struct iphdr, saddr), backend_ip,
					     rn->address);
	return ret < 0 ? ret : LB_XLATED;
}

static __always_inline int lb4_rev_nat(struct __sk_buff *skb, int nodeport_only)
{
	struct ipv4_ct_tuple tuple = {};
	struct lb4_reverse_nat_key rkey = {};
	struct lb4_reverse_nat *rn;
	struct ct_entry *ct;
	struct lb4_pkt pkt = {};
	struct iphdr *ip = ctx_data(skb) + ETH_HLEN;
	int ret;

	if ((void *)(ip + 1) > ctx_data_end(skb))
		return -DROP_INVALID;
	if (ip->protocol == IPPROTO_ICMP)
		return lb4_rev_nat_icmp_error(skb, nodeport_only);
	ret = lb4_parse(skb, &pkt);
	if (ret <= 0)
		return ret;
	lb4_tuple(&tuple, &pkt, TUPLE_F_IN);
	ct = ct_lookup(&tuple);
	if (!ct || !ct->rev_nat_index || (nodeport_only && !(ct->flags & CT_F_NODEPORT)))
		return 0;
	rkey.rev_nat_index = ct->rev_nat_index;
	rn = cilium_lb4_reverse_nat.lookup(&rkey);
	if (!rn)
		return 0;
	ct_refresh(ct, pkt.tcp_flags, pkt.proto == IPPROTO_TCP, pkt.len,
		   CT_TRACE(CT_TRACE_TX, TRACE_REASON_CT_REPLY));   /* the reply entry's own way */
	if (ct->flags & CT_F_LB_LOOPBACK) {      /* hairpin: back to the pod that asked */
		ret = lb4_rewrite(skb, &pkt, IP_DADDR_OFF, pkt.daddr, pkt.saddr,
				  offsetof(struct tcphdr, dest), pkt.dport, pkt.dport);
		if (ret < 0)
			return ret;
	}
	ret = lb4_rewrite(skb, &pkt, IP_SADDR_OFF, pkt.saddr, rn->address,
			  offsetof(struct tcphdr, source), pkt.sport, rn->port);
	return ret < 0 ? ret : LB_XLATED;
}

#endif /* DP_LIB_LB_H */
