/* lib/ipcache.h - address -> identity (and hosting node) lookups, and the node's settings.
 *
 * API:
 *   ipcache_lookup4(addr)   longest-prefix entry for addr, or NULL
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

static __always_inline struct node_config *node_config(void)
{
	__u32 zero = 0;

	return dp_node_config.lookup(&zero);
}

#endif /* DP_LIB_IPCACHE_H */
