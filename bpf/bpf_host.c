/* bpf_host.c - programs on the node's native devices (`devices`, e.g. eth1).
 *
 * cil_from_netdev (tc ingress): a packet from the network for a pod on this node is delivered
 * straight into the pod's netns (no forwarding by the node's stack); everything else, including
 * VXLAN to this node, continues to the stack. One exit: every verdict is counted in
 * cilium_metrics under METRIC_INGRESS.
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/metrics.h"
#include "lib/eth.h"
#include "lib/local_delivery.h"

static __always_inline int handle_from_netdev(struct __sk_buff *skb)
{
	__u16 proto;
	int ret = parse_eth(skb, &proto);

	if (ret < 0)
		return ret;
	if (proto != ETH_P_IP)
		return CTX_ACT_OK;
	return ipv4_deliver_if_local(skb);
}

int cil_from_netdev(struct __sk_buff *skb)
{
	__u32 len = skb->len;

	return finish(len, handle_from_netdev(skb), METRIC_INGRESS);
}
