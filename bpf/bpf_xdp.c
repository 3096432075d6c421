/* bpf_xdp.c - the XDP program on the node's native devices, attached when
 * loadBalancer.acceleration is native or l2announcements.enabled.
 *
 * cil_xdp_entry: an ARP request for an address this node announces on this device is answered
 * right here (lib/l2_responder.h). Then, unless the node runs XDP for L2 announcements only
 * (NODE_CFG_F_XDP_L2_ONLY: acceleration disabled), requests to NodePort, LoadBalancer and
 * external IPs are load-balanced before the stack allocates an skb (lib/nodeport_xdp.h).
 * Everything else passes to tc. A drop is counted under METRIC_INGRESS and reported in
 * cilium_events (lib/events.h), a packet sent back out counted as forwarded.
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/metrics.h"
#include "lib/l2_responder.h"
#include "lib/nodeport_xdp.h"

static __always_inline int handle_xdp(struct xdp_md *ctx)
{
	struct node_config *cfg;
	int ret = l2_respond(ctx);

	if (ret != XDP_PASS)
		return ret;
	cfg = node_config();
	if (cfg && (cfg->flags & NODE_CFG_F_XDP_L2_ONLY))
		return XDP_PASS;
	return nodeport_lb4_xdp(ctx);
}

int cil_xdp_entry(struct xdp_md *ctx)
{
	__u32 len = ctx->data_end - ctx->data;
	int ret = handle_xdp(ctx);

	if (ret < 0) {
		update_metrics(len, METRIC_INGRESS, (__u8)-ret);
		send_drop_notify_xdp(ctx, (__u8)-ret, METRIC_INGRESS, EVENT_HOOK_XDP);
		return XDP_DROP;
	}
	if (ret != XDP_PASS)
		update_metrics(len, METRIC_INGRESS, REASON_FORWARDED);
	return ret;
}
