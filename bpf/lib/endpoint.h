/* lib/endpoint.h - the local endpoint lookups (cilium_lxc, dp_ep_ifindex), apart from delivery so
 * that the event code (lib/events.h) can name endpoints without pulling delivery in.
 *
 * API:
 *   lookup_ip4_endpoint(ip4)          returns the cilium_lxc entry for a local address, or NULL
 *   lookup_ifindex_endpoint(ifindex)  returns the endpoint behind a host-side veth (dp_ep_ifindex
 *                                     holds a copy of its cilium_lxc entry), or NULL
 */
#ifndef DP_LIB_ENDPOINT_H
#define DP_LIB_ENDPOINT_H

#include "maps.h"

static __always_inline struct endpoint_info *lookup_ip4_endpoint(__be32 ip4)
{
	struct endpoint_key key = {};

	key.ip4 = ip4;
	key.family = ENDPOINT_KEY_IPV4;
	return cilium_lxc.lookup(&key);
}

static __always_inline struct endpoint_info *lookup_ifindex_endpoint(__u32 ifindex)
{
	struct ep_ifindex_key ikey = { .ifindex = ifindex };

	return dp_ep_ifindex.lookup(&ikey);
}

#endif /* DP_LIB_ENDPOINT_H */
