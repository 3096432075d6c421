/* bpf_xdp.c - the XDP program on the node's native devices.
 *
 * cil_xdp_entry: with loadBalancer.acceleration native, requests to NodePort, LoadBalancer and
 * external IPs are load-balanced here, before the stack allocates an skb
 * (lib/nodeport_xdp.h). Everything else passes to tc. A drop is counted under METRIC_INGRESS,
 * a packet sent back out as forwarded.
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/metrics.h"
#include "lib/nodeport_xdp.h"

int cil_xdp_entry(struct xdp_md *ctx)
{
	__u32 len = ctx->data_end - ctx->data;
	int ret = nodeport_lb4_xdp(ctx);

	if (ret < 0) {
		update_metrics(len, METRIC_INGRESS, (__u8)-ret);
		return XDP_DROP;
	}
	if (ret != XDP_PASS)
		update_metrics(len, METRIC_INGRESS, REASON_FORWARDED);
	return ret;
}
