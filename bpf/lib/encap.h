/* lib/encap.h - VXLAN encapsulation through the collect-metadata device: the tunnel key names
 * the remote node and carries the source security identity as the VNI, as Cilium does.
 *
 * API:
 *   encap_and_redirect(skb, tunnel_endpoint, src_identity, tunnel_ifindex)
 *       a to-overlay trace point (lib/events.h); returns CTX_ACT_REDIRECT or
 *       -DROP_WRITE_ERROR / -DROP_NO_TUNNEL_ENDPOINT
 *   tunnel_src_identity(skb, &identity)
 *       reads the VNI of a packet the VXLAN device decapsulated; 0 or -DROP_NO_TUNNEL_KEY
 */
#ifndef DP_LIB_ENCAP_H
#define DP_LIB_ENCAP_H

#include "common.h"
#include "events.h"

static __always_inline int encap_and_redirect(struct __sk_buff *skb, __be32 tunnel_endpoint,
					      __u32 src_identity, __u32 tunnel_ifindex)
{
	struct bpf_tunnel_key key = {};

	if (!tunnel_endpoint || !tunnel_ifindex)
		return -DROP_NO_TUNNEL_ENDPOINT;
	key.remote_ipv4 = bpf_ntohl(tunnel_endpoint);
	key.tunnel_id = src_identity;
	key.tunnel_ttl = 64;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return -DROP_WRITE_ERROR;
	send_trace_notify(skb, TRACE_TO_OVERLAY, src_identity, tunnel_ifindex);
	return bpf_redirect(tunnel_ifindex, 0);
}

static __always_inline int tunnel_src_identity(struct __sk_buff *skb, __u32 *identity)
{
	struct bpf_tunnel_key key = {};

	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return -DROP_NO_TUNNEL_KEY;
	*identity = key.tunnel_id;
	return 0;
}

#endif /* DP_LIB_ENCAP_H */
