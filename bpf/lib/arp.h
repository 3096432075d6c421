/* lib/arp.h - ARP responder on the host side of a pod's veth: a request from the pod for any
 * address but its own (its gateway, in practice) is answered with the lxc MAC, so the pod needs
 * no neighbour entry on the node and the node's stack never sees the request.
 *
 * API:
 *   arp_respond(skb, ep)   returns CTX_ACT_REDIRECT (reply sent back to the pod),
 *                          CTX_ACT_OK (not a request we answer) or -DROP_INVALID (truncated)
 */
#ifndef DP_LIB_ARP_H
#define DP_LIB_ARP_H

#include "common.h"

/* ARP for IPv4 over Ethernet, as it follows struct arphdr on the wire */
struct arp_eth_ipv4 {
	__u8   sha[ETH_ALEN];
	__be32 sip;
	__u8   tha[ETH_ALEN];
	__be32 tip;
} __attribute__((packed));

#define ARP_PKT_LEN (ETH_HLEN + sizeof(struct arphdr) + sizeof(struct arp_eth_ipv4))

static __always_inline int arp_respond(struct __sk_buff *skb, const struct endpoint_info *ep)
{
	struct ethhdr *eth;
	struct arphdr *arp;
	struct arp_eth_ipv4 *body;
	__u8 smac[ETH_ALEN];
	__be32 sip, tip;
	int ret = ctx_pull(skb, ARP_PKT_LEN);

	if (ret < 0)
		return ret;
	eth = ctx_data(skb);
	arp = (void *)(eth + 1);
	body = (void *)(arp + 1);
	if ((void *)(body + 1) > ctx_data_end(skb))
		return -DROP_INVALID;
	if (arp->ar_hrd != bpf_htons(ARPHRD_ETHER) || arp->ar_pro != bpf_htons(ETH_P_IP) ||
	    arp->ar_hln != ETH_ALEN || arp->ar_pln != 4 || arp->ar_op != bpf_htons(ARPOP_REQUEST))
		return CTX_ACT_OK;
	tip = body->tip;
	sip = body->sip;
	if (tip == ep->ip4 || tip == 0)
		return CTX_ACT_OK;      /* duplicate-address probes and the pod's own address */

	__builtin_memcpy(smac, body->sha, ETH_ALEN);
	arp->ar_op = bpf_htons(ARPOP_REPLY);
	__builtin_memcpy(body->tha, smac, ETH_ALEN);
	body->tip = sip;
	__builtin_memcpy(body->sha, ep->node_mac, ETH_ALEN);
	body->sip = tip;
	__builtin_memcpy(eth->h_dest, smac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, ep->node_mac, ETH_ALEN);
	return bpf_redirect(skb->ifindex, 0);
}

#endif /* DP_LIB_ARP_H */
