/* lib/nodeport.h - services reached from outside the cluster on the native device: NodePort
 * (this node's IP), LoadBalancer IPs and externalIPs (kube-proxy replacement).
 *
 * A new flow to such a frontend is load-balanced by lib/lb.h (scope EXT: with
 * externalTrafficPolicy Local only this node's backends, none -> "Service backend not found").
 * A local backend gets the packet straight into its pod with the client's address kept; its
 * reply is given the frontend back when it leaves the pod for another pod (from-container,
 * before a tunnel could hide it) or on the native device's egress. A backend on another node
 * gets the packet SNATed to this node (lib/nat.h) and sent there in the routing mode, from this
 * node's host (VNI HOST in tunnel mode), so that its ingress policy sees remote-node in both
 * modes; its reply comes back to this node, is reverse-SNATed, given the frontend back and sent
 * to the client.
 *
 * API:
 *   nodeport_lb4(skb, cfg)         returns 0 (no service frontend: go on), CTX_ACT_REDIRECT /
 *                                  CTX_ACT_OK (sent on) or a negative DROP_*; a local backend's
 *                                  ingress policy sees the client's identity in the ipcache
 *   nodeport_icmp_error_ingress(skb)
 *                                  an ICMP error from outside about a local backend's reply:
 *                                  to the backend's pod (RELATED for its ingress policy);
 *                                  returns 0 (not such an error), CTX_ACT_REDIRECT or a
 *                                  negative DROP_*
 *   nodeport_rev_nat_ingress(skb)  a remote backend's reply, already reverse-SNATed: the
 *                                  frontend back, then to the client (through the tunnel to a
 *                                  pod on another node in tunnel mode, else by the FIB);
 *                                  returns 0 (not such a reply), CTX_ACT_REDIRECT /
 *                                  CTX_ACT_OK or a negative DROP_*
 *   nodeport_rev_nat_egress(skb)   a local backend's reply leaving (from-container towards a
 *                                  pod on another node, or to-netdev): the frontend back;
 *                                  returns 0 or a negative DROP_*
 */
#ifndef DP_LIB_NODEPORT_H
#define DP_LIB_NODEPORT_H

#include "lb.h"
#include "nat.h"
#include "local_delivery.h"
#include "routing.h"
#include "fib.h"

static __always_inline int nodeport_lb4(struct __sk_buff *skb, const struct node_config *cfg)
{
	struct endpoint_info *ep;
	struct iphdr *ip;
	__be32 daddr;
	int ret = lb4_xlate(skb, IDENTITY_WORLD, 0);

	if (ret <= 0)
		return ret;
	ret = parse_ipv4(skb, &ip);
	if (ret < 0)
		return ret;
	daddr = ip->daddr;
	ep = lookup_ip4_endpoint(daddr);
	if (ep && !(ep->flags & ENDPOINT_F_HOST))       /* the client's identity, world by default */
		return ipv4_local_delivery(skb, ep, ipcache_identity4(ip->saddr));
	if (daddr == cfg->node_ip)
		return CTX_ACT_OK;      /* a host-network backend on this node: its stack */
	/* it could not be forwarded, so it takes no NAT port: dropped here as the forwarding
	 * below would (Cilium's ipv4_l3 too), also when the FIB would have left it to the stack */
	if (ip->ttl <= 1)
		return -DROP_TTL_EXCEEDED;
	ret = snat_v4_nodeport(skb, cfg);
	if (ret < 0)
		return ret;
	/* SNATed to this node: it comes from this node's host, VNI HOST in tunnel mode (the
	 * backend's node checks it as remote-node, as the ipcache names this node's address in
	 * native routing) */
	ret = ipv4_forward_remote(skb, daddr, IDENTITY_HOST);
	if (ret != CTX_ACT_OK)
		return ret;
	/* not a pod (a node, or an address outside the cluster): route it here, since the stack
	 * would take the node's own source address on a received packet for a martian */
	return fib_redirect_v4(skb);
}

/* An ICMP error from outside about what a local backend sent to a client through a frontend
 * (a router's "fragmentation needed" or "port unreachable" quoting frontend -> client): the
 * quoted source and the outer destination become the backend, so the error reaches the pod's
 * socket. Returns 0 (not such an error), CTX_ACT_REDIRECT or a negative DROP_*. */
static __always_inline int nodeport_icmp_error_ingress(struct __sk_buff *skb)
{
	struct iphdr *ip = ctx_data(skb) + ETH_HLEN;
	struct ipv4_ct_tuple tuple = {};
	struct lb4_backend *backend;
	struct endpoint_info *ep;
	struct icmp_err err = {};
	struct ct_entry *ct;
	__be32 frontend;
	__u32 src_identity;
	int ret;

	if ((void *)(ip + 1) > ctx_data_end(skb))
		return -DROP_INVALID;
	if (ip->protocol != IPPROTO_ICMP)
		return 0;
	ret = icmp_err_parse(skb, &err);
	if (ret <= 0)
		return ret;
	/* the flow's service entry, in the client's orientation: client -> frontend */
	icmp_err_reply_tuple(&tuple, &err, TUPLE_F_SERVICE);
	ct = ct_lookup(&tuple);
	if (!ct)
		return 0;
	backend = lb4_backend(ct->backend_id);
	if (!backend)
		return 0;
	ep = lookup_ip4_endpoint(backend->address);
	if (!ep || (ep->flags & ENDPOINT_F_HOST))
		return 0;               /* only local backends: a remote one's flow left SNATed */
	frontend = err.inner.saddr;
	ret = icmp_err_rewrite_inner(skb, &err, offsetof(struct iphdr, saddr), frontend,
				     backend->address, offsetof(struct tcphdr, source), err.sport,
				     backend->port);
	if (ret < 0)
		return ret;
	ip = ctx_data(skb) + ETH_HLEN;
	if ((void *)(ip + 1) > ctx_data_end(skb))
		return -DROP_INVALID;
	src_identity = ipcache_identity4(ip->saddr);
	if (ip->daddr == frontend) {
		ret = icmp_err_rewrite_outer(skb, offsetof(struct iphdr, daddr), frontend,
					     backend->address);
		if (ret < 0)
			return ret;
	}
	return ipv4_local_delivery(skb, ep, src_identity);
}

static __always_inline int nodeport_rev_nat_ingress(struct __sk_buff *skb)
{
	struct iphdr *ip;
	int ret = lb4_rev_nat(skb, 1);

	if (ret != LB_XLATED)
		return ret;
	/* a client in another node's pod network in tunnel mode (a pod that asked this node's
	 * NodePort): through the tunnel, from this node's host as the request was SNATed; the
	 * node's routes do not reach it */
	ret = parse_ipv4(skb, &ip);
	if (ret < 0)
		return ret;
	ret = ipv4_forward_remote(skb, ip->daddr, IDENTITY_HOST);
	if (ret != CTX_ACT_OK)
		return ret;
	return fib_redirect_v4(skb);
}

static __always_inline int nodeport_rev_nat_egress(struct __sk_buff *skb)
{
	int ret = lb4_rev_nat(skb, 1);

	return ret < 0 ? ret : 0;
}

#endif /* DP_LIB_NODEPORT_H */
