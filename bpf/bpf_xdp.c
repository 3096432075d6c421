/* bpf_xdp.c - the XDP program on the node's native devices (`devices`, e.g. eth1), attached
 * when l2announcements.enabled.
 *
 * cil_xdp_entry: an ARP request for an address this node announces on this device is answered
 * right here (lib/l2_responder.h, XDP_TX); everything else goes on to tc (XDP_PASS), where
 * cil_from_netdev handles it. Only drops are counted in cilium_metrics (as Cilium's XDP exit
 * does): a passed packet is counted once, by tc.
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/metrics.h"
#include "lib/l2_responder.h"

static __always_inline int handle_xdp(struct xdp_md *ctx)
{
	int ret = l2_respond(ctx);

	if (ret != XDP_PASS)
		return ret;

	/* ---- NodePort / LoadBalancer fast path (loadBalancer.acceleration) goes here: the
	 * lib/nodeport.h lookup, returning XDP_TX / XDP_REDIRECT, or a negative DROP_* ---- */

	return XDP_PASS;
}

int cil_xdp_entry(struct xdp_md *ctx)
{
	__u32 len = xdp_data_end(ctx) - xdp_data(ctx);
	int ret = handle_xdp(ctx);

	if (ret < 0) {
		update_metrics(len, METRIC_INGRESS, (__u8)-ret);
		return XDP_DROP;
	}
	return ret;
}
