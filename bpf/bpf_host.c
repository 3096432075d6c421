/* bpf_host.c - programs on the node's native devices (`devices`, e.g. eth1).
 *
 * cil_from_netdev (tc ingress): a new or established flow to a NodePort, LoadBalancer IP or
 * externalIP is load-balanced (lib/nodeport.h); a reply to a masqueraded or NodePort-SNATed
 * flow gets its pod or client back (reverse SNAT, then reverse DNAT); a packet for a pod on
 * this node is delivered straight into the pod's netns (no forwarding by the node's stack);
 * everything else, including VXLAN to this node, continues to the stack. A pod's ingress policy
 * sees the source address's identity in the ipcache (pods, remote-node, host, world or a CIDR
 * identity). Every verdict is counted in cilium_metrics under METRIC_INGRESS, a drop also
 * reported in cilium_events (lib/events.h).
 *
 * cil_to_netdev (tc egress): a local backend's reply to a NodePort client gets the frontend
 * back; then, with bpf.masquerade, a pod's packet leaving the cluster gets the node's address
 * and a NAT port (lib/nat.h). cil_to_netdev_nomasq is the same without masquerading, for
 * devices egressMasqueradeInterfaces leaves out. Every verdict is counted under METRIC_EGRESS,
 * a drop reported.
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/metrics.h"
#include "lib/eth.h"
#include "lib/local_delivery.h"
#include "lib/nat.h"
#include "lib/nodeport.h"

/* The start of both directions: a valid IPv4 packet and this node's settings. Returns 1 to go
 * on (cfg set, possibly NULL before the agent wrote it), CTX_ACT_OK for anything but IPv4, or a
 * negative DROP_*. */
static __always_inline int host_ipv4(struct __sk_buff *skb, struct node_config **cfg)
{
	struct iphdr *ip;
	__u16 proto;
	int ret = parse_eth(skb, &proto);

	if (ret < 0)
		return ret;
	if (proto != ETH_P_IP)
		return CTX_ACT_OK;
	ret = parse_ipv4(skb, &ip);
	if (ret < 0)
		return ret;
	*cfg = node_config();
	return 1;
}

static __always_inline int handle_from_netdev(struct __sk_buff *skb)
{
	struct node_config *cfg = NULL;
	int ret = host_ipv4(skb, &cfg);

	if (ret != 1)
		return ret;
	if (cfg) {
		ret = nodeport_lb4(skb, cfg);
		if (ret != 0)
			return ret;
		ret = nodeport_icmp_error_ingress(skb);
		if (ret != 0)
			return ret;
		ret = snat_v4_ingress(skb, cfg);
		if (ret < 0)
			return ret;
		ret = nodeport_rev_nat_ingress(skb);
		if (ret != 0)
			return ret;
	}
	return ipv4_deliver_if_local(skb, 0);  /* the source's identity from the ipcache */
}

static __always_inline int handle_to_netdev(struct __sk_buff *skb, int masquerade)
{
	struct node_config *cfg = NULL;
	int ret = host_ipv4(skb, &cfg);

	if (ret != 1)
		return ret;
	ret = nodeport_rev_nat_egress(skb);
	if (ret < 0)
		return ret;
	if (cfg && masquerade) {
		ret = snat_v4_egress(skb, cfg);
		if (ret < 0)
			return ret;
	}
	return CTX_ACT_OK;
}

int cil_from_netdev(struct __sk_buff *skb)
{
	__u32 len = skb->len;

	trace_begin(EVENT_HOOK_FROM_NETDEV);
	send_trace_notify(skb, TRACE_FROM_NETWORK, 0, skb->ifindex);  /* none only */
	return finish(skb, len, handle_from_netdev(skb), METRIC_INGRESS,
		      EVENT_HOOK_FROM_NETDEV);
}

int cil_to_netdev(struct __sk_buff *skb)
{
	__u32 len = skb->len;

	trace_begin(EVENT_HOOK_TO_NETDEV);
	return finish(skb, len, handle_to_netdev(skb, 1), METRIC_EGRESS,
		      EVENT_HOOK_TO_NETDEV);
}

int cil_to_netdev_nomasq(struct __sk_buff *skb)
{
	__u32 len = skb->len;

	trace_begin(EVENT_HOOK_TO_NETDEV);
	return finish(skb, len, handle_to_netdev(skb, 0), METRIC_EGRESS,
		      EVENT_HOOK_TO_NETDEV);
}
