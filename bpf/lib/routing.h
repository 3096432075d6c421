/* lib/routing.h - sending a packet to a pod on another node, in the node's routing mode.
 *
 * API:
 *   ipv4_forward_remote(skb, daddr, src_identity)
 *       tunnel mode: TTL - 1, VXLAN to the hosting node with VNI = src_identity;
 *       native mode: FIB lookup + redirect to the next hop;
 *       returns CTX_ACT_REDIRECT, CTX_ACT_OK (not a remote pod, or no settings yet: the stack
 *       decides) or a negative DROP_*
 */
#ifndef DP_LIB_ROUTING_H
#define DP_LIB_ROUTING_H

#include "ipcache.h"
#include "encap.h"
#include "fib.h"

static __always_inline int ipv4_forward_remote(struct __sk_buff *skb, __be32 daddr,
					       __u32 src_identity)
{
	struct node_config *cfg = node_config();
	struct remote_endpoint_info *info;
	__be32 tunnel_endpoint;
	__u32 tunnel_ifindex;
	int ret;

	if (!cfg)
		return CTX_ACT_OK;
	info = ipcache_lookup4(daddr);
	if (!info || !info->tunnel_endpoint || info->tunnel_endpoint == cfg->node_ip)
		return CTX_ACT_OK;
	if (cfg->flags & NODE_CFG_F_TUNNEL) {
		tunnel_endpoint = info->tunnel_endpoint;
		tunnel_ifindex = cfg->tunnel_ifindex;
		ret = ipv4_dec_ttl(skb);
		if (ret < 0)
			return ret;
		return encap_and_redirect(skb, tunnel_endpoint, src_identity, tunnel_ifindex);
	}
	if (cfg->flags & NODE_CFG_F_HOST_ROUTING)
		return fib_redirect_v4(skb);
	return CTX_ACT_OK;
}

#endif /* DP_LIB_ROUTING_H */
