/* bpf_lxc.c - programs on the host side of a pod's veth (lxc...).
 *
 * cil_from_container (tc ingress): everything the pod sends. Anti-spoofing first: ARP and
 * IPv4 must carry the endpoint's own source MAC (DROP_INVALID_SMAC), IPv4 its own source address
 * (DROP_INVALID_SIP) and ARP its own sender MAC and IP (lib/arp.h). ARP for its gateway is
 * answered here; a service frontend is translated to one of its backends (lib/lb.h); the pod's
 * egress policy is checked on the destination's identity and port (lib/policy.h: the local
 * endpoint's, else the ipcache's, world without one; not for a hairpin, the pod reaching itself
 * through a service); then a destination that is a local endpoint is delivered straight into
 * that pod's netns, through its ingress policy; a pod on another node is sent there (VXLAN in
 * tunnel mode, FIB redirect in native mode), in tunnel mode a NodePort backend's reply first
 * getting its frontend back; anything else continues to the node's stack. One exit: every verdict is counted in cilium_metrics under METRIC_EGRESS
 * (leaving the pod), a drop also reported in cilium_events (lib/events.h). A TCP/UDP packet is
 * parsed once (lb4_parse) and that view, kept in step with the DNAT, serves load balancing and
 * both ends' policy, with one clock read.
 *
 * cil_to_container (tc egress): what the node's stack routes into the pod (the host's own
 * processes, say): the pod's ingress policy on the source address's identity in the ipcache.
 * ARP, IPv6 and the rest pass. One exit: every verdict counted under METRIC_INGRESS, a drop
 * reported.
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/metrics.h"
#include "lib/eth.h"
#include "lib/arp.h"
#include "lib/lb.h"
#include "lib/ipcache.h"
#include "lib/policy.h"
#include "lib/local_delivery.h"
#include "lib/routing.h"

static __always_inline int handle_ipv4_from_lxc(struct __sk_buff *skb,
						const struct endpoint_info *self)
{
	struct remote_endpoint_info *info;
	struct endpoint_info *dst;
	struct node_config *cfg;
	struct lb4_pkt pkt = {};
	struct iphdr *ip;
	__be32 saddr, daddr;
	__u32 now = 0;
	int hairpin, local, l4;
	int ret = parse_ipv4(skb, &ip);

	if (ret < 0)
		return ret;
	if (ip->saddr != self->ip4)
		return -DROP_INVALID_SIP;
	saddr = ip->saddr;
	daddr = ip->daddr;
	/* TCP and UDP (not fragments) are parsed once here and the view passed down (pkt follows
	 * the rewrites); anything else takes each step's own parse */
	l4 = lb4_parse(skb, &pkt);
	if (l4 < 0)
		return l4;
	if (l4) {
		ret = lb4_xlate_pkt(skb, &pkt, self->sec_id, 1);
		if (ret < 0)
			return ret;
		saddr = pkt.saddr;
		daddr = pkt.daddr;
	}
	hairpin = lb4_is_loopback(saddr);   /* a hairpin request, SNATed by lb4_xlate */
	if (lb4_is_loopback(daddr)) {       /* a hairpin reply: frontend -> the pod again */
		hairpin = 1;
		ret = lb4_rev_nat(skb, 0);
		if (ret < 0)
			return ret;
		ret = parse_ipv4(skb, &ip);
		if (ret < 0)
			return ret;
		daddr = ip->daddr;
		if (l4) {
			l4 = lb4_parse(skb, &pkt);
			if (l4 < 0)
				return l4;
		}
	}
	dst = lookup_ip4_endpoint(daddr);
	local = dst && !(dst->flags & ENDPOINT_F_HOST);
	if (hairpin && local)
		return ipv4_deliver_to_ep(skb, dst, self->sec_id); /* no policy, as Cilium */
	if (l4) {
		now = ct_now();         /* one clock read for both ends' conntrack */
		ret = policy_ct4_lb(skb, &pkt, self->lxc_id,
				    dst ? dst->sec_id : ipcache_identity4(daddr), POLICY_EGRESS, now);
	} else
		ret = policy_egress4(skb, self->lxc_id,
				     dst ? dst->sec_id : ipcache_identity4(daddr));
	if (ret < 0)
		return ret;
	if (local)
		return l4 ? ipv4_local_delivery_pkt(skb, dst, self->sec_id, &pkt, now) :
			    ipv4_local_delivery(skb, dst, self->sec_id);
	cfg = node_config();
	if (cfg && (cfg->flags & NODE_CFG_F_TUNNEL)) {
		/* a NodePort backend answering a pod on another node: the frontend back now, since
		 * the tunnel carries the reply past the native device's egress, where native
		 * routing gets it (rev-NAT changes the source only: daddr stays) */
		info = ipcache_lookup4(daddr);
		if (info && info->tunnel_endpoint) {
			ret = lb4_rev_nat(skb, 1);
			if (ret < 0)
				return ret;
		}
	}
	return ipv4_forward_remote(skb, daddr, self->sec_id);
}

static __always_inline int handle_from_container(struct __sk_buff *skb)
{
	struct endpoint_info *self;
	__u16 proto;
	int ret = parse_eth(skb, &proto);

	if (ret < 0)
		return ret;
	if (proto != ETH_P_IP && proto != ETH_P_ARP)
		return CTX_ACT_OK;      /* IPv6 and the rest: the node's stack decides, for now */
	self = lookup_ifindex_endpoint(skb->ifindex);
	if (!self)
		return -DROP_UNKNOWN_SENDER;
	if (!eth_src_is(skb, self->mac))
		return -DROP_INVALID_SMAC;
	if (proto == ETH_P_ARP)
		return arp_respond(skb, self);
	return handle_ipv4_from_lxc(skb, self);
}

static __always_inline int handle_to_container(struct __sk_buff *skb)
{
	struct endpoint_info *ep;
	struct iphdr *ip;
	__be32 saddr;
	__u16 proto;
	int ret = parse_eth(skb, &proto);

	if (ret < 0)
		return ret;
	if (proto != ETH_P_IP)
		return CTX_ACT_OK;      /* ARP, IPv6 and the rest pass */
	ret = parse_ipv4(skb, &ip);
	if (ret < 0)
		return ret;
	saddr = ip->saddr;
	ep = lookup_ifindex_endpoint(skb->ifindex);
	if (!ep)
		return -DROP_NO_CONFIG;         /* no endpoint, no policy to decide with */
	ret = policy_ingress4(skb, ep->lxc_id, ipcache_identity4(saddr));
	return ret < 0 ? ret : CTX_ACT_OK;
}

int cil_from_container(struct __sk_buff *skb)
{
	__u32 len = skb->len;

	trace_begin(EVENT_HOOK_FROM_CONTAINER);
	send_trace_notify(skb, TRACE_FROM_LXC, 0, skb->ifindex);       /* none only */
	return finish(skb, len, handle_from_container(skb), METRIC_EGRESS,
		      EVENT_HOOK_FROM_CONTAINER);
}

int cil_to_container(struct __sk_buff *skb)
{
	__u32 len = skb->len;

	trace_begin(EVENT_HOOK_TO_CONTAINER);
	return finish(skb, len, handle_to_container(skb), METRIC_INGRESS,
		      EVENT_HOOK_TO_CONTAINER);
}
