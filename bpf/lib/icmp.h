/* lib/icmp.h - ICMP errors that quote a translated packet (destination unreachable, time
 * exceeded): parsing the quoted header and rewriting it with every checksum kept right.
 *
 * API:
 *   icmp_err_parse(skb, &err)   returns 1 with err filled for an error quoting TCP/UDP, 0 when
 *                               the packet is not such an error, or a negative DROP_*
 *   icmp_err_load(skb, icmp_off, &err)
 *                               the quote of the ICMP error at icmp_off, whatever it quotes: err
 *                               filled (sport/dport: the quoted L4 header's first 4 bytes);
 *                               returns 1, or 0 when the error is too short to quote a header
 *   icmp_err_rewrite_inner(skb, &err, addr_off, old, new, port_off, old_port, new_port)
 *                               rewrite the quoted address (IP header offset addr_off) and
 *                               port (L4 offset port_off), fixing the quoted IP checksum, the
 *                               quoted TCP/UDP checksum when the quote holds it (so the quote
 *                               is the packet its receiver sent, as Linux's NAT leaves it) and
 *                               the ICMP checksum; returns 0 or a negative DROP_*
 *   icmp_err_reply_tuple(&tuple, &err, flags)
 *                               the tuple of the quoted flow's replies (peer -> quoted source)
 *   icmp_err_rewrite_outer(skb, addr_off, old, new)
 *                               rewrite the outer address (no pseudo header in ICMP)
 */
#ifndef DP_LIB_ICMP_H
#define DP_LIB_ICMP_H

#include <uapi/linux/icmp.h>

#include "common.h"

struct icmp_err {
	struct iphdr inner;     /* the quoted IP header */
	__u32  icmp_csum;       /* offset of the ICMP checksum */
	__u32  in_off;          /* offset of the quoted IP header */
	__u32  in_l4;           /* offset of the quoted L4 header */
	__be16 sport;           /* quoted ports */
	__be16 dport;
};

static __always_inline int icmp_err_load(struct __sk_buff *skb, __u32 icmp_off,
					 struct icmp_err *err)
{
	__be16 ports[2];

	err->icmp_csum = icmp_off + 2;
	err->in_off = icmp_off + 8;
	if (bpf_skb_load_bytes(skb, err->in_off, &err->inner, sizeof(err->inner)) < 0)
		return 0;
	err->in_l4 = err->in_off + err->inner.ihl * 4;
	if (bpf_skb_load_bytes(skb, err->in_l4, ports, sizeof(ports)) < 0)
		return 0;
	err->sport = ports[0];
	err->dport = ports[1];
	return 1;
}

static __always_inline int icmp_err_parse(struct __sk_buff *skb, struct icmp_err *err)
{
	struct iphdr *ip = ctx_data(skb) + ETH_HLEN;
	__u32 icmp_off;
	__u8 type;

	if ((void *)(ip + 1) > ctx_data_end(skb))
		return -DROP_INVALID;
	if (ip->protocol != IPPROTO_ICMP || (ip->frag_off & bpf_htons(0x3FFF)))
		return 0;
	icmp_off = ETH_HLEN + ip->ihl * 4;
	if (bpf_skb_load_bytes(skb, icmp_off, &type, 1) < 0)
		return -DROP_CT_INVALID_HDR;
	if (type != ICMP_DEST_UNREACH && type != ICMP_TIME_EXCEEDED)
		return 0;
	if (!icmp_err_load(skb, icmp_off, err))
		return 0;               /* too short to quote a header: leave it to the stack */
	if (err->inner.protocol != IPPROTO_TCP && err->inner.protocol != IPPROTO_UDP)
		return 0;
	return 1;
}

static __always_inline void icmp_err_reply_tuple(struct ipv4_ct_tuple *tuple,
						 const struct icmp_err *err, __u8 flags)
{
	tuple->daddr = err->inner.saddr;
	tuple->saddr = err->inner.daddr;
	tuple->dport = err->sport;
	tuple->sport = err->dport;
	tuple->nexthdr = err->inner.protocol;
	tuple->flags = flags;
}

/* The quoted TCP/UDP checksum covers the quoted address (pseudo header) and port: update it
 * for their change when the quote holds it (a UDP checksum of 0 means none), and the ICMP
 * checksum for its own change. Not BPF_F_PSEUDO_HDR: these bytes are all inside the ICMP
 * message, whose checksum balances them. Returns 0 or a negative DROP_*. */
static __always_inline int icmp_err_rewrite_inner_l4_csum(struct __sk_buff *skb,
							  const struct icmp_err *err,
							  __be32 old_addr, __be32 new_addr,
							  __be16 old_port, __be16 new_port)
{
	struct iphdr *ip = (void *)(long)skb->data + ETH_HLEN;
	int udp = err->inner.protocol == IPPROTO_UDP;
	__u32 csum_at = err->in_l4 + (udp ? offsetof(struct udphdr, check) :
					    offsetof(struct tcphdr, check));
	__u64 mangled0 = udp ? BPF_F_MARK_MANGLED_0 : 0;
	__be16 old_csum, new_csum;

	if ((void *)(ip + 1) > (void *)(long)skb->data_end)
		return -DROP_INVALID;
	if (csum_at + 2 > ETH_HLEN + bpf_ntohs(ip->tot_len) ||
	    bpf_skb_load_bytes(skb, csum_at, &old_csum, 2) < 0 || (udp && !old_csum))
		return 0;               /* cut off in the quote, or no checksum */
	if (bpf_l4_csum_replace(skb, csum_at, old_addr, new_addr, mangled0 | 4) < 0 ||
	    bpf_l4_csum_replace(skb, csum_at, old_port, new_port, mangled0 | 2) < 0)
		return -DROP_CSUM_L4;
	if (bpf_skb_load_bytes(skb, csum_at, &new_csum, 2) < 0)
		return -DROP_CT_INVALID_HDR;
	if (bpf_l4_csum_replace(skb, err->icmp_csum, old_csum, new_csum, 2) < 0)
		return -DROP_CSUM_L4;
	return 0;
}

static __always_inline int icmp_err_rewrite_inner(struct __sk_buff *skb, const struct icmp_err *err,
						  __u32 addr_off, __be32 old_addr, __be32 new_addr,
						  __u32 port_off, __be16 old_port, __be16 new_port)
{
	__u32 csum_at = err->in_off + offsetof(struct iphdr, check);
	__be16 old_csum, new_csum;

	if (bpf_skb_load_bytes(skb, csum_at, &old_csum, 2) < 0)
		return -DROP_CT_INVALID_HDR;
	if (bpf_l3_csum_replace(skb, csum_at, old_addr, new_addr, 4) < 0)
		return -DROP_CSUM_L3;
	if (bpf_skb_store_bytes(skb, err->in_off + addr_off, &new_addr, 4, 0) < 0)
		return -DROP_WRITE_ERROR;
	if (bpf_skb_load_bytes(skb, csum_at, &new_csum, 2) < 0)
		return -DROP_CT_INVALID_HDR;
	/* the ICMP checksum covers the quoted header: its address and its checksum changed */
	if (bpf_l4_csum_replace(skb, err->icmp_csum, old_addr, new_addr, 4) < 0 ||
	    bpf_l4_csum_replace(skb, err->icmp_csum, old_csum, new_csum, 2) < 0)
		return -DROP_CSUM_L4;
	if (old_port != new_port) {
		if (bpf_skb_store_bytes(skb, err->in_l4 + port_off, &new_port, 2, 0) < 0)
			return -DROP_WRITE_ERROR;
		if (bpf_l4_csum_replace(skb, err->icmp_csum, old_port, new_port, 2) < 0)
			return -DROP_CSUM_L4;
	}
	return icmp_err_rewrite_inner_l4_csum(skb, err, old_addr, new_addr, old_port, new_port);
}

static __always_inline int icmp_err_rewrite_outer(struct __sk_buff *skb, __u32 addr_off,
						  __be32 old_addr, __be32 new_addr)
{
	if (bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), old_addr, new_addr,
				4) < 0)
		return -DROP_CSUM_L3;
	if (bpf_skb_store_bytes(skb, ETH_HLEN + addr_off, &new_addr, 4, 0) < 0)
		return -DROP_WRITE_ERROR;
	return 0;
}

#endif /* DP_LIB_ICMP_H */
