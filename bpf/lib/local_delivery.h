/* lib/local_delivery.h - endpoint lookups and delivery straight into a local pod's netns.
 *
 * API (and lib/endpoint.h's lookup_ip4_endpoint, lookup_ifindex_endpoint):
 *   ipv4_deliver_if_local(skb, src_identity)
 *                                     an IPv4 packet (Ethernet header validated) for a local
 *                                     pod is delivered (ipv4_local_delivery) from src_identity,
 *                                     0 meaning the source address's identity in the ipcache;
 *                                     returns CTX_ACT_REDIRECT, CTX_ACT_OK (not for a local pod:
 *                                     the stack decides) or a negative DROP_*
 *   ipv4_local_delivery(skb, ep, src_identity)
 *                                     ingress policy of ep for a packet from src_identity
 *                                     (lib/policy.h), then ipv4_deliver_to_ep; returns
 *                                     CTX_ACT_REDIRECT or a negative DROP_*
 *   ipv4_local_delivery_pkt(skb, ep, src_identity, &lb_pkt, now)
 *                                     the same for a packet lb4_parse took (parsed once, the
 *                                     clock read once)
 *   ipv4_deliver_to_ep(skb, ep, src_identity)
 *                                     without policy (only a hairpin, the pod reaching itself):
 *                                     replies of a load-balanced flow get their frontend back
 *                                     (lb4_rev_nat), TTL - 1, MACs set to lxc -> pod,
 *                                     bpf_redirect_peer into the pod (a to-endpoint trace
 *                                     point, lib/events.h); returns CTX_ACT_REDIRECT or a
 *                                     negative DROP_*
 */
#ifndef DP_LIB_LOCAL_DELIVERY_H
#define DP_LIB_LOCAL_DELIVERY_H

#include "maps.h"
#include "endpoint.h"
#include "events.h"
#include "eth.h"
#include "lb.h"
#include "ipcache.h"
#include "policy.h"

/* The last hop into a pod: TTL, the pod's MACs, straight into its namespace (a to-endpoint
 * trace point, from src_identity: 0 is the source address's). */
static __always_inline int ipv4_redirect_to_ep(struct __sk_buff *skb,
					       const struct endpoint_info *ep, __u32 src_identity)
{
	int ret = ipv4_dec_ttl(skb);

	if (ret < 0)
		return ret;
	ret = eth_rewrite(skb, ep->node_mac, ep->mac);
	if (ret < 0)
		return ret;
	send_trace_notify(skb, TRACE_TO_LXC, src_identity, ep->ifindex);
	return bpf_redirect_peer(ep->ifindex, 0);
}

static __always_inline int ipv4_deliver_to_ep(struct __sk_buff *skb,
					      const struct endpoint_info *ep, __u32 src_identity)
{
	int ret = lb4_rev_nat(skb, 0);

	if (ret < 0)
		return ret;
	return ipv4_redirect_to_ep(skb, ep, src_identity);
}

static __always_inline int ipv4_local_delivery(struct __sk_buff *skb,
					       const struct endpoint_info *ep, __u32 src_identity)
{
	int ret = policy_ingress4(skb, ep->lxc_id, src_identity);

	if (ret < 0)
		return ret;
	return ipv4_deliver_to_ep(skb, ep, src_identity);
}

/* ipv4_local_delivery for a packet lb4_parse took. A forward packet of a flow tracked into the
 * pod is no service reply (that would be the same socket pair the other way round), so it
 * skips lb4_rev_nat's lookup. */
static __always_inline int ipv4_local_delivery_pkt(struct __sk_buff *skb,
						   const struct endpoint_info *ep,
						   __u32 src_identity, const struct lb4_pkt *pkt,
						   __u32 now)
{
	int ret = policy_ct4_lb(skb, pkt, ep->lxc_id, src_identity, POLICY_INGRESS, now);

	if (ret < 0)
		return ret;
	if (ret != POLICY_ESTABLISHED)
		return ipv4_deliver_to_ep(skb, ep, src_identity);
	return ipv4_redirect_to_ep(skb, ep, src_identity);
}

static __always_inline int ipv4_deliver_if_local(struct __sk_buff *skb, __u32 src_identity)
{
	struct endpoint_info *dst;
	struct iphdr *ip;
	int ret = parse_ipv4(skb, &ip);

	if (ret < 0)
		return ret;
	dst = lookup_ip4_endpoint(ip->daddr);
	if (!dst || (dst->flags & ENDPOINT_F_HOST))
		return CTX_ACT_OK;
	if (!src_identity)
		src_identity = ipcache_identity4(ip->saddr);
	return ipv4_local_delivery(skb, dst, src_identity);
}

#endif /* DP_LIB_LOCAL_DELIVERY_H */
