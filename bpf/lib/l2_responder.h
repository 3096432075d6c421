/* lib/l2_responder.h - L2 announcements: this node answers ARP for the LoadBalancer and external
 * IPs it announces (the agent writes them, per native device, into cilium_l2_responder_v4 while
 * it holds their leases), from XDP on the native device, with the device's MAC (dp_netdev).
 * Only while the agent's heartbeat is fresh (dp_agent_liveness): a node whose agent is gone
 * stops answering by itself, and another node, whose agent takes the lease over, answers.
 *
 * API:
 *   l2_respond(ctx)   XDP_TX: the request was turned into the reply and responses_sent counted;
 *                     XDP_PASS, packet untouched: anything else (not ARP, not a request, a
 *                     gratuitous ARP, an address not announced on this device, a stale agent,
 *                     a truncated frame)
 */
#ifndef DP_LIB_L2_RESPONDER_H
#define DP_LIB_L2_RESPONDER_H

#include "common.h"
#include "maps.h"
#include "arp.h"

static __always_inline int l2_agent_alive(void)
{
	__u32 zero = 0;
	struct agent_liveness *live = dp_agent_liveness.lookup(&zero);

	if (!live || !live->max_age)
		return 0;
	return bpf_ktime_get_ns() - live->last_seen <= live->max_age;
}

static __always_inline int l2_respond(struct xdp_md *ctx)
{
	struct l2_responder_v4_key key = {};
	struct l2_responder_v4_stats *stats;
	struct netdev_info *dev;
	struct arp_request req;
	__u32 ifindex = ctx->ingress_ifindex;
	void *data = xdp_data(ctx);

	if (data + ETH_HLEN > xdp_data_end(ctx) ||
	    ((struct ethhdr *)data)->h_proto != bpf_htons(ETH_P_ARP))
		return XDP_PASS;
	dev = dp_netdev.lookup(&ifindex);
	if (!dev)
		return XDP_PASS;
	if (arp_parse_request(data, xdp_data_end(ctx), dev->mac, &req) != 1)
		return XDP_PASS;
	key.ip4 = req.tip;
	key.ifindex = ifindex;
	stats = cilium_l2_responder_v4.lookup(&key);
	if (!stats || !l2_agent_alive())
		return XDP_PASS;
	arp_make_reply(data, &req, dev->mac);
	__sync_fetch_and_add(&stats->responses_sent, 1);
	return XDP_TX;
}

#endif /* DP_LIB_L2_RESPONDER_H */
