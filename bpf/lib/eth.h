/* lib/eth.h - Ethernet and IPv4 parsing with full bounds checks, in the style of xdp-tutorial's
 * parsing helpers, plus the L2/L3 rewrites done when routing a packet one hop.
 *
 * API:
 *   parse_eth(skb, &proto)           returns 0 (proto = host-order ethertype) or -DROP_INVALID
 *   eth_addr_equal(a, b)             1 when the two 6-byte MAC addresses are the same
 *   eth_src_is(skb, mac)             1 when the frame's source MAC is mac (after parse_eth)
 *   parse_ipv4(skb, &ip)             returns 0 with ip pointing at a validated IPv4 header,
 *                                    or -DROP_INVALID (truncated, bad version/ihl/length)
 *   eth_rewrite(skb, smac, dmac)     returns 0 or -DROP_WRITE_ERROR
 *   ipv4_dec_ttl(skb)                returns 0, -DROP_TTL_EXCEEDED or -DROP_INVALID
 */
#ifndef DP_LIB_ETH_H
#define DP_LIB_ETH_H

#include "common.h"

static __always_inline int parse_eth(struct __sk_buff *skb, __u16 *proto)
{
	struct ethhdr *eth;
	int ret = ctx_pull(skb, ETH_HLEN);

	if (ret < 0)
		return ret;
	eth = ctx_data(skb);
	if ((void *)(eth + 1) > ctx_data_end(skb))
		return -DROP_INVALID;
	*proto = bpf_ntohs(eth->h_proto);
	return 0;
}

static __always_inline int eth_addr_equal(const __u8 *a, const __u8 *b)
{
	int same = 1;

#pragma unroll
	for (int i = 0; i < ETH_ALEN; i++)
		same &= a[i] == b[i];
	return same;
}

static __always_inline int eth_src_is(struct __sk_buff *skb, const __u8 *mac)
{
	struct ethhdr *eth = ctx_data(skb);

	if ((void *)(eth + 1) > ctx_data_end(skb))
		return 0;
	return eth_addr_equal(eth->h_source, mac);
}

/* Validates the IPv4 header that follows the Ethernet header. The pointer stays valid until the
 * next helper that may move packet data. */
static __always_inline int parse_ipv4(struct __sk_buff *skb, struct iphdr **ipp)
{
	struct iphdr *ip;
	__u32 ihl_len;
	int ret = ctx_pull(skb, ETH_HLEN + sizeof(struct iphdr));

	if (ret < 0)
		return ret;
	ip = ctx_data(skb) + ETH_HLEN;
	if ((void *)(ip + 1) > ctx_data_end(skb))
		return -DROP_INVALID;
	if (ip->version != 4)
		return -DROP_INVALID;
	ihl_len = ip->ihl * 4;
	if (ihl_len < sizeof(struct iphdr))
		return -DROP_INVALID;
	if (bpf_ntohs(ip->tot_len) < ihl_len)
		return -DROP_INVALID;
	if (skb->len < ETH_HLEN + bpf_ntohs(ip->tot_len))
		return -DROP_INVALID;
	*ipp = ip;
	return 0;
}

static __always_inline int eth_rewrite(struct __sk_buff *skb, const __u8 *smac, const __u8 *dmac)
{
	struct ethhdr *eth = ctx_data(skb);

	if ((void *)(eth + 1) <= ctx_data_end(skb)) {  /* in place: no helper call */
		__builtin_memcpy(eth->h_dest, dmac, ETH_ALEN);
		__builtin_memcpy(eth->h_source, smac, ETH_ALEN);
		return 0;
	}
	if (bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_dest), dmac, ETH_ALEN, 0) < 0)
		return -DROP_WRITE_ERROR;
	if (bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_source), smac, ETH_ALEN, 0) < 0)
		return -DROP_WRITE_ERROR;
	return 0;
}

/* One routed hop: TTL - 1 with the header checksum fixed incrementally (RFC 1624, as the
 * kernel's ip_decrease_ttl does). */
static __always_inline int ipv4_dec_ttl(struct __sk_buff *skb)
{
	struct iphdr *ip = ctx_data(skb) + ETH_HLEN;
	__u32 check;

	if ((void *)(ip + 1) > ctx_data_end(skb))
		return -DROP_INVALID;
	if (ip->ttl <= 1)
		return -DROP_TTL_EXCEEDED;
	check = ip->check;
	check += bpf_htons(0x0100);
	ip->check = (__u16)(check + (check >= 0xFFFF));
	ip->ttl--;
	return 0;
}

#endif /* DP_LIB_ETH_H */
