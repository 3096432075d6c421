/* lib/ipcache.h - address -> identity (and hosting node) lookups, and the node's settings.
 *
 * API:
 *   ipcache_lookup4(addr)   longest-prefix entry for addr, or NULL
 *   ipcache_identity4(addr) the security identity of addr: its entry's, IDENTITY_WORLD without one
 *   identity_is_world(id)   world, or a CIDR identity (IDENTITY_SCOPE_LOCAL): outside the cluster
 *   node_config()           this node's settings (dp_node_config[0]), or NULL before the agent
 *                           wrote them
 */
#ifndef DP_LIB_IPCACHE_H
#define DP_LIB_IPCACHE_H

#include "maps.h"

static __always_inline struct remote_endpoint_info *ipcache_lookup4(__be32 addr)
{
	struct ipcache_key key = {};

	key.lpm_key_prefixlen = IPCACHE_PREFIX_BASE + 32;
	key.family = ENDPOINT_KEY_IPV4;
	key.ip4 = addr;
	return cilium_ipcache.lookup(&key);
}

static __always_inline __u32 ipcache_identity4(__be32 addr)
{
	struct remote_endpoint_info *info = ipcache_lookup4(addr);

	return info ? info->sec_identity : IDENTITY_WORLD;
}

static __always_inline int identity_is_world(__u32 identity)
{
	return identity == IDENTITY_WORLD || (identity & IDENTITY_SCOPE_LOCAL);
}

static __always_inline struct node_config *node_config(void)
{
	__u32 zero = 0;

	return dp_node_config.lookup(&zero);
}

#endif /* DP_LIB_IPCACHE_H */
