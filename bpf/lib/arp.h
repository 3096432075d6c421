/* lib/arp.h - ARP replies built in place from the request, for the two responders: the one on
 * the host side of a pod's veth (a request from the pod for any address but its own, its
 * gateway in practice, is answered with the lxc MAC, so the pod needs no neighbour entry on the
 * node and the node's stack never sees the request) and the L2 announcement responder in XDP
 * (lib/l2_responder.h). The helpers work on packet pointers, so tc and XDP share them. Also the
 * pod's ARP anti-spoofing: ARP from a pod must speak for that pod, so no pod can claim another's
 * address (a gratuitous ARP) or teach the node a MAC that is not its own. Cilium has no ARP
 * reason of its own: a wrong sender MAC is its DROP_INVALID_SMAC, a wrong sender IP its
 * DROP_INVALID_SIP, as for IPv4.
 *
 * API:
 *   arp_parse_request(data, data_end, mac, &req)
 *                          1: an IPv4-over-Ethernet ARP request, to broadcast or to `mac`, that
 *                          is not gratuitous (sender IP == target IP); req holds the sender and
 *                          the target. 0: any other ARP. -DROP_INVALID: truncated.
 *   arp_make_reply(data, &req, mac)
 *                          turn that request, in place, into the reply "req.tip is-at mac" to
 *                          its sender (call only after arp_parse_request returned 1)
 *   arp_check_sender(data, data_end, ep)
 *                          0 when an ARP from the pod's veth speaks for endpoint ep: sender MAC
 *                          ep->mac (else -DROP_INVALID_SMAC), sender IP ep->ip4 or the 0.0.0.0
 *                          of a duplicate-address probe (else -DROP_INVALID_SIP). ARP whose
 *                          addresses are not 6 and 4 bytes long is not checked (an Ethernet
 *                          device's kernel drops it). -DROP_INVALID: truncated.
 *   arp_respond(skb, ep)   the pod's ARP: its sender checked (arp_check_sender), then
 *                          CTX_ACT_REDIRECT (reply sent back to the pod), CTX_ACT_OK (not a
 *                          request we answer: to the node's stack) or a negative DROP_*
 */
#ifndef DP_LIB_ARP_H
#define DP_LIB_ARP_H

#include "common.h"
#include "eth.h"

/* ARP for IPv4 over Ethernet, as it follows struct arphdr on the wire */
struct arp_eth_ipv4 {
	__u8   sha[ETH_ALEN];
	__be32 sip;
	__u8   tha[ETH_ALEN];
	__be32 tip;
} __attribute__((packed));

#define ARP_PKT_LEN (ETH_HLEN + sizeof(struct arphdr) + sizeof(struct arp_eth_ipv4))

/* what a reply needs of the request */
struct arp_request {
	__u8   smac[ETH_ALEN];
	__be32 sip;
	__be32 tip;
};

static __always_inline int arp_is_for(const __u8 *dmac, const __u8 *mac)
{
	int bcast = 1, mine = 1;

#pragma unroll
	for (int i = 0; i < ETH_ALEN; i++) {
		bcast &= dmac[i] == 0xff;
		mine &= dmac[i] == mac[i];
	}
	return bcast || mine;
}

static __always_inline int arp_parse_request(void *data, void *data_end, const __u8 *mac,
					     struct arp_request *req)
{
	struct ethhdr *eth = data;
	struct arphdr *arp = (void *)(eth + 1);
	struct arp_eth_ipv4 *body = (void *)(arp + 1);

	if ((void *)(body + 1) > data_end)
		return -DROP_INVALID;
	if (eth->h_proto != bpf_htons(ETH_P_ARP) || arp->ar_hrd != bpf_htons(ARPHRD_ETHER) ||
	    arp->ar_pro != bpf_htons(ETH_P_IP) || arp->ar_hln != ETH_ALEN || arp->ar_pln != 4 ||
	    arp->ar_op != bpf_htons(ARPOP_REQUEST) || !arp_is_for(eth->h_dest, mac))
		return 0;
	if (body->sip == body->tip)
		return 0;               /* gratuitous: an announcement, nothing to answer */
	__builtin_memcpy(req->smac, body->sha, ETH_ALEN);
	req->sip = body->sip;
	req->tip = body->tip;
	return 1;
}

static __always_inline void arp_make_reply(void *data, const struct arp_request *req,
					   const __u8 *mac)
{
	struct ethhdr *eth = data;
	struct arphdr *arp = (void *)(eth + 1);
	struct arp_eth_ipv4 *body = (void *)(arp + 1);

	arp->ar_op = bpf_htons(ARPOP_REPLY);
	__builtin_memcpy(body->tha, req->smac, ETH_ALEN);
	body->tip = req->sip;
	__builtin_memcpy(body->sha, mac, ETH_ALEN);
	body->sip = req->tip;
	__builtin_memcpy(eth->h_dest, req->smac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);
}

static __always_inline int arp_check_sender(void *data, void *data_end,
					    const struct endpoint_info *ep)
{
	struct arphdr *arp = data + ETH_HLEN;
	struct arp_eth_ipv4 *body = (void *)(arp + 1);

	if ((void *)(body + 1) > data_end)
		return -DROP_INVALID;
	if (arp->ar_hln != ETH_ALEN || arp->ar_pln != 4)
		return 0;
	if (!eth_addr_equal(body->sha, ep->mac))
		return -DROP_INVALID_SMAC;
	if (body->sip != ep->ip4 && body->sip != 0)
		return -DROP_INVALID_SIP;
	return 0;
}

static __always_inline int arp_respond(struct __sk_buff *skb, const struct endpoint_info *ep)
{
	struct arp_request req;
	void *data;
	int ret = ctx_pull(skb, ARP_PKT_LEN);

	if (ret < 0)
		return ret;
	data = ctx_data(skb);
	ret = arp_check_sender(data, ctx_data_end(skb), ep);
	if (ret < 0)
		return ret;
	ret = arp_parse_request(data, ctx_data_end(skb), ep->node_mac, &req);
	if (ret <= 0)
		return ret;
	if (req.tip == ep->ip4 || req.tip == 0)
		return CTX_ACT_OK;      /* duplicate-address probes and the pod's own address */
	arp_make_reply(data, &req, ep->node_mac);
	return bpf_redirect(skb->ifindex, 0);
}

#endif /* DP_LIB_ARP_H */
