/* bpf_overlay.c - programs on the collect-metadata VXLAN device (cilium_vxlan).
 *
 * cil_from_overlay (tc ingress): a decapsulated packet. The VNI is the sender's security
 * identity (HOST, another node's own traffic, becomes REMOTE_NODE); a packet for a local pod is
 * delivered straight into its netns through the pod's ingress policy on that identity; the
 * rest continues to the stack. One exit: every verdict counted under METRIC_INGRESS, a drop
 * also reported in cilium_events (lib/events.h).
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/metrics.h"
#include "lib/eth.h"
#include "lib/encap.h"
#include "lib/local_delivery.h"

static __always_inline int handle_from_overlay(struct __sk_buff *skb)
{
	__u32 src_identity = 0;
	__u16 proto;
	int ret = parse_eth(skb, &proto);

	if (ret < 0)
		return ret;
	if (proto != ETH_P_IP)
		return CTX_ACT_OK;
	ret = tunnel_src_identity(skb, &src_identity);
	if (ret < 0)
		return ret;
	if (src_identity == 0)
		return -DROP_INVALID_IDENTITY;
	if (src_identity == IDENTITY_HOST)
		src_identity = IDENTITY_REMOTE_NODE;    /* another node's host, as Cilium's */
	skb->cb[0] = src_identity;      /* the source identity travels with the packet (policy) */
	send_trace_notify(skb, TRACE_FROM_OVERLAY, src_identity, skb->ifindex);    /* none only */
	return ipv4_deliver_if_local(skb, src_identity);
}

int cil_from_overlay(struct __sk_buff *skb)
{
	__u32 len = skb->len;

	trace_begin(EVENT_HOOK_FROM_OVERLAY);
	return finish(skb, len, handle_from_overlay(skb), METRIC_INGRESS,
		      EVENT_HOOK_FROM_OVERLAY);
}
