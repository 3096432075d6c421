/* lib/maps.h - every map the programs share, declared once. Sizes come from abi.h (-D to change).
 * Pinned under DP_PIN_DIR when the agent builds for a node, so state survives agent restarts.
 */
#ifndef DP_LIB_MAPS_H
#define DP_LIB_MAPS_H

#include "common.h"

/* cilium_lxc: local endpoint address -> delivery info (veth ifindex, MACs, identity) */
DP_MAP("hash", struct endpoint_key, struct endpoint_info, cilium_lxc, ENDPOINTS_MAP_SIZE);

/* dp_ep_ifindex: host-side veth ifindex -> a copy of the endpoint's cilium_lxc entry (the sender's
 * own config in one lookup) */
DP_MAP("hash", struct ep_ifindex_key, struct endpoint_info, dp_ep_ifindex, ENDPOINTS_MAP_SIZE);

/* cilium_metrics: per-CPU packets and bytes, slot METRICS_INDEX(reason, direction) (an array:
 * the lookup is inlined, no hashing) */
DP_MAP("percpu_array", __u32, struct metrics_value, cilium_metrics, METRICS_MAP_SIZE);

/* cilium_ipcache: IPv4 prefix -> identity and hosting node (LPM trie) */
DP_MAP_F("lpm_trie", struct ipcache_key, struct remote_endpoint_info, cilium_ipcache,
	 IPCACHE_MAP_SIZE, BPF_F_NO_PREALLOC);

/* dp_node_config: one entry (index 0) of this node's runtime settings */
DP_MAP("array", __u32, struct node_config, dp_node_config, 1);

/* cilium_lb4_services_v2: frontend and backend slots of every service */
DP_MAP("hash", struct lb4_key, struct lb4_service, cilium_lb4_services_v2, LB_SERVICE_MAP_MAX_ENTRIES);

/* cilium_lb4_backends_v3: backend id -> address, port, state */
DP_MAP("hash", struct lb4_backend_key, struct lb4_backend, cilium_lb4_backends_v3,
       LB_BACKENDS_MAP_MAX_ENTRIES);

/* cilium_lb4_reverse_nat: service id -> frontend, for replies */
DP_MAP("hash", struct lb4_reverse_nat_key, struct lb4_reverse_nat, cilium_lb4_reverse_nat,
       LB_REV_NAT_MAP_MAX_ENTRIES);

/* cilium_lb4_maglev: service id -> its Maglev lookup table (replaced whole; no prealloc: the
 * tables are large and only maglev frontends have one) */
DP_MAP_F("hash", struct lb4_reverse_nat_key, struct lb4_maglev_lut, cilium_lb4_maglev,
	 LB_MAGLEV_MAP_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/* cilium_lb4_affinity: ClientIP session affinity, client -> backend (LRU) */
DP_MAP("lru_hash", struct lb4_affinity_key, struct lb_affinity_val, cilium_lb4_affinity,
       LB_AFFINITY_MAP_MAX_ENTRIES);

/* cilium_snat_v4_external: masquerade mappings, both directions (LRU) */
DP_MAP("lru_hash", struct ipv4_ct_tuple, struct ipv4_nat_entry, cilium_snat_v4_external,
       SNAT_MAPPING_IPV4_SIZE);

/* cilium_ipmasq_v4: destinations that keep the pod's address (LPM) */
DP_MAP_F("lpm_trie", struct ipmasq_key, __u8, cilium_ipmasq_v4, IPMASQ_MAP_SIZE,
	 BPF_F_NO_PREALLOC);

/* cilium_ct4_global: TCP conntrack (LRU) */
DP_MAP("lru_hash", struct ipv4_ct_tuple, struct ct_entry, cilium_ct4_global, CT_MAP_SIZE_TCP);

/* cilium_ct_any4_global: non-TCP conntrack (LRU) */
DP_MAP("lru_hash", struct ipv4_ct_tuple, struct ct_entry, cilium_ct_any4_global, CT_MAP_SIZE_ANY);

/* cilium_l2_responder_v4: {announced IPv4, native ifindex} -> ARP replies sent (Cilium's) */
DP_MAP_F("hash", struct l2_responder_v4_key, struct l2_responder_v4_stats, cilium_l2_responder_v4,
	 L2_RESPONDER_MAP4_SIZE, BPF_F_NO_PREALLOC);

/* dp_netdev: native device ifindex -> its MAC */
DP_MAP("hash", __u32, struct netdev_info, dp_netdev, NETDEV_MAP_SIZE);

/* cilium_policy_v2: {endpoint, peer identity, direction, protocol, port} -> allow or deny (LPM) */
DP_MAP_F("lpm_trie", struct policy_key, struct policy_entry, cilium_policy_v2, POLICY_MAP_SIZE,
	 BPF_F_NO_PREALLOC);

/* cilium_ipv4_frag_datagrams: a fragmented datagram -> its first fragment's ports (LRU) */
DP_MAP("lru_hash", struct ipv4_frag_id, struct ipv4_frag_l4ports, cilium_ipv4_frag_datagrams,
       IPV4_FRAG_DATAGRAMS_MAP_SIZE);

/* dp_policy_revision: one entry (index 0), bumped by the agent after each policy map change */
DP_MAP("array", __u32, struct policy_revision, dp_policy_revision, 1);

/* dp_agent_liveness: one entry (index 0), the agent's heartbeat */
DP_MAP("array", __u32, struct agent_liveness, dp_agent_liveness, 1);

#endif /* DP_LIB_MAPS_H */
