/* abi.h - the one contract between the BPF programs and Python.
 *
 * Owns: every struct a map holds or an event carries, the enums, the drop reasons and the map
 * sizes. datapath/abi.py mirrors all of it; tests/bpf/test_abi.py checks every size, field offset
 * and constant against what BCC compiled from this file. No bitfields: each field has an offset.
 */
#ifndef DP_ABI_H
#define DP_ABI_H

/* ---- map sizes (override with -D) ---- */
#ifndef ENDPOINTS_MAP_SIZE
#define ENDPOINTS_MAP_SIZE 65535
#endif
#ifndef METRICS_MAP_SIZE
#define METRICS_MAP_SIZE 1024   /* METRICS_INDEX of every reason (8 bits) in 4 directions */
#endif
#ifndef IPCACHE_MAP_SIZE
#define IPCACHE_MAP_SIZE 512000
#endif
#ifndef LB_SERVICE_MAP_MAX_ENTRIES
#define LB_SERVICE_MAP_MAX_ENTRIES 65536
#endif
#ifndef LB_BACKENDS_MAP_MAX_ENTRIES
#define LB_BACKENDS_MAP_MAX_ENTRIES 65536
#endif
#ifndef LB_REV_NAT_MAP_MAX_ENTRIES
#define LB_REV_NAT_MAP_MAX_ENTRIES 65536
#endif
#ifndef SNAT_MAPPING_IPV4_SIZE
#define SNAT_MAPPING_IPV4_SIZE 524288
#endif
#ifndef IPMASQ_MAP_SIZE
#define IPMASQ_MAP_SIZE 16384
#endif
/* SNAT source ports: [NODEPORT_PORT_MIN_NAT, NODEPORT_PORT_MAX_NAT], Cilium's default range */
#ifndef NODEPORT_PORT_MIN_NAT
#define NODEPORT_PORT_MIN_NAT 32768
#endif
#ifndef NODEPORT_PORT_MAX_NAT
#define NODEPORT_PORT_MAX_NAT 65535
#endif
#ifndef SNAT_COLLISION_RETRIES
#define SNAT_COLLISION_RETRIES 32
#endif
#ifndef LB_AFFINITY_MAP_MAX_ENTRIES
#define LB_AFFINITY_MAP_MAX_ENTRIES 65536
#endif
#ifndef LB_MAGLEV_MAP_MAX_ENTRIES
#define LB_MAGLEV_MAP_MAX_ENTRIES 65536
#endif
/* Maglev lookup table size M (maglev.tableSize, a prime; -D from the agent) */
#ifndef LB_MAGLEV_LUT_SIZE
#define LB_MAGLEV_LUT_SIZE 16381
#endif
#ifndef L2_RESPONDER_MAP4_SIZE
#define L2_RESPONDER_MAP4_SIZE 4096
#endif
#ifndef NETDEV_MAP_SIZE
#define NETDEV_MAP_SIZE 256
#endif
#ifndef CT_MAP_SIZE_TCP
#define CT_MAP_SIZE_TCP 524288
#endif
#ifndef CT_MAP_SIZE_ANY
#define CT_MAP_SIZE_ANY 262144
#endif
#ifndef POLICY_MAP_SIZE
#define POLICY_MAP_SIZE 65536            /* all endpoints' entries together (-D to change) */
#endif
#ifndef IPV4_FRAG_DATAGRAMS_MAP_SIZE
#define IPV4_FRAG_DATAGRAMS_MAP_SIZE 8192
#endif

/* ---- conntrack lifetimes in seconds (Cilium's current defaults; -D to change) ---- */
#ifndef CT_SYN_TIMEOUT
#define CT_SYN_TIMEOUT 60
#endif
#ifndef CT_CONNECTION_LIFETIME_TCP
#define CT_CONNECTION_LIFETIME_TCP 8000
#endif
#ifndef CT_CLOSE_TIMEOUT
#define CT_CLOSE_TIMEOUT 10
#endif
#ifndef CT_CONNECTION_LIFETIME_NONTCP
#define CT_CONNECTION_LIFETIME_NONTCP 60
#endif

/* ---- tc verdicts as the kernel numbers them (TC_ACT_*) ---- */
#define CTX_ACT_OK        0
#define CTX_ACT_DROP      2
#define CTX_ACT_REDIRECT  7

/* ---- metric directions (Cilium's metricsmap dir values) ---- */
#define METRIC_DIR_UNKNOWN 0
#define METRIC_INGRESS     1
#define METRIC_EGRESS      2
#define METRIC_SERVICE     3
/* cilium_metrics slot of {reason (REASON_FORWARDED or DROP_*), direction (METRIC_*)} */
#define METRICS_DIR_SHIFT  8
#define METRICS_INDEX(reason, dir) (((__u32)(dir) << METRICS_DIR_SHIFT) | (__u8)(reason))

/* ---- reasons: 0 is forwarded; drops are Cilium's numbers (>= 130). Datapath functions return
 * them negated (-DROP_*); only the entry point turns them into a verdict and counts them. ---- */
#define REASON_FORWARDED        0
#define DROP_INVALID_SMAC       130
#define DROP_INVALID_SIP        132
#define DROP_POLICY             133
#define DROP_INVALID            134
#define DROP_CT_INVALID_HDR     135
#define DROP_FRAG_NEEDED        136
#define DROP_CT_UNKNOWN_PROTO   137
#define DROP_UNKNOWN_L3         139
#define DROP_MISSED_TAIL_CALL   140
#define DROP_WRITE_ERROR        141
#define DROP_UNKNOWN_L4         142
#define DROP_UNROUTABLE         151
#define DROP_CSUM_L3            153
#define DROP_CSUM_L4            154
#define DROP_CT_CREATE_FAILED   155
#define DROP_FRAG_NOSUPPORT     157
#define DROP_NO_SERVICE         158
#define DROP_NO_TUNNEL_ENDPOINT 160
#define DROP_UNKNOWN_CT         163
#define DROP_NO_CONFIG          165
#define DROP_UNSUPPORTED_L2     166
#define DROP_NAT_NO_MAPPING     167
#define DROP_NAT_UNSUPP_PROTO   168
#define DROP_NO_FIB             169
#define DROP_INVALID_IDENTITY   171
#define DROP_UNKNOWN_SENDER     172
#define DROP_IS_CLUSTER_IP      174
#define DROP_FRAG_NOT_FOUND     175
#define DROP_POLICY_DENY        181
#define DROP_TTL_EXCEEDED       196
#define DROP_NO_TUNNEL_KEY      147

/* ---- reserved security identities (Cilium's numbers) ---- */
#define IDENTITY_HOST           1
#define IDENTITY_WORLD          2
#define IDENTITY_UNMANAGED      3
#define IDENTITY_HEALTH         4
#define IDENTITY_INIT           5
#define IDENTITY_REMOTE_NODE    6
#define IDENTITY_KUBE_APISERVER 7
#define IDENTITY_INGRESS        8
#define IDENTITY_SCOPE_LOCAL    (1 << 24)   /* CIDR identities: 16777216 and up (world-like) */

/* ---- node_config.flags ---- */
#define NODE_CFG_F_TUNNEL       1   /* routingMode tunnel: remote pods through the VXLAN device */
#define NODE_CFG_F_HOST_ROUTING 2   /* native: remote pods via bpf_fib_lookup + redirect */
#define NODE_CFG_F_MASQUERADE   4   /* bpf.masquerade: SNAT pods' traffic leaving the cluster */
#define NODE_CFG_F_XDP_L2_ONLY  8   /* XDP runs for L2 announcements only: NodePort stays in tc */

/* ---- NAT directions (the flags of a cilium_snat_v4_external tuple) ---- */
#define NAT_DIR_EGRESS          0
#define NAT_DIR_INGRESS         1
#define NAT_F_CLOSING           1   /* a FIN or RST was seen: the mapping only ages out now */
#define NAT_F_SEEN_NON_SYN      2   /* a TCP packet without SYN passed: established lifetime */

/* ---- ipcache key: prefixlen counts the 32 bits before the address (as Cilium's) ---- */
#define IPCACHE_PREFIX_BASE     32
#define TUNNEL_PORT             8472

/* ---- conntrack tuple flags (Cilium's TUPLE_F_*) and entry flags ---- */
#define TUPLE_F_OUT             0
#define TUPLE_F_IN              1
#define TUPLE_F_RELATED         2
#define TUPLE_F_SERVICE         4
/* ours: a policy-tracked flow of a local endpoint, with TUPLE_F_OUT (the endpoint opened it) or
 * TUPLE_F_IN (a peer opened it) */
#define TUPLE_F_POLICY          8
#define CT_F_RX_CLOSING         1
#define CT_F_TX_CLOSING         2
#define CT_F_SEEN_NON_SYN       4
#define CT_F_LB_LOOPBACK        8   /* hairpin: a pod reached itself through a service */
#define CT_F_NODEPORT           16  /* a flow from outside to a NodePort/LB/external IP */

/* ---- Maglev's flow hash seed (jhash_3words, as Cilium's hash_from_tuple_v4) ---- */
#ifndef HASH_INIT4_SEED
#define HASH_INIT4_SEED         51966
#endif

/* ---- the source a hairpinned request gets (Cilium's IPV4_LOOPBACK, 169.254.42.1) ---- */
#define IPV4_LOOPBACK_HOST      0xA9FE2A01

/* ---- load balancer: service flags (lb4_service.flags, Cilium's) and backend states ---- */
#define SVC_FLAG_EXTERNAL_IP    1
#define SVC_FLAG_NODEPORT       2
#define SVC_FLAG_EXT_LOCAL_SCOPE 4
#define SVC_FLAG_AFFINITY       16
#define SVC_FLAG_LOADBALANCER   32
#define SVC_FLAG_ROUTABLE       64
#define SVC_FLAG2_INT_LOCAL_SCOPE 16  /* lb4_service.flags2 */
#define SVC_FLAG2_TWO_SCOPES    32
/* lb4_key.scope: EXT from outside, INT from pods on this node (two-scope services only) */
#define LB_LOOKUP_SCOPE_EXT     0
#define LB_LOOKUP_SCOPE_INT     1
/* the frontend slot's backend_id: the algorithm in bits 31..24, the affinity timeout below */
#define LB_ALGORITHM_SHIFT      24
#define LB_ALGORITHM_RANDOM     1
#define LB_ALGORITHM_MAGLEV     2
#define LB_AFFINITY_TIMEOUT_MASK 16777215
#define BE_STATE_ACTIVE         0
#define BE_STATE_TERMINATING    1
#define BE_STATE_QUARANTINED    2
#define BE_STATE_MAINTENANCE    3

/* ---- identity policy (cilium_policy_v2): directions and LPM prefix lengths ---- */
#define POLICY_INGRESS          0
#define POLICY_EGRESS           1
#define POLICY_PREFIX_BASE      56  /* bits of sec_label + endpoint_id + egress: always matched */
#define POLICY_FULL_PREFIX      80  /* + protocol (8) + dport (16) */

/* ---- endpoint key families (Cilium's ENDPOINT_KEY_*) ---- */
#define ENDPOINT_KEY_IPV4 1
#define ENDPOINT_KEY_IPV6 2

/* ---- endpoint_info.flags ---- */
#define ENDPOINT_F_HOST 1

/* cilium_lxc key: one local endpoint address */
struct endpoint_key {
	__be32 ip4;
	__u8   family;          /* ENDPOINT_KEY_IPV4 */
	__u8   pad[3];
};

/* cilium_lxc value: how to deliver to a local endpoint */
struct endpoint_info {
	__u32  ifindex;         /* host-side veth (lxc...) in the node's netns */
	__u16  lxc_id;          /* endpoint id */
	__u16  flags;           /* ENDPOINT_F_* */
	__u8   mac[6];          /* the pod's MAC (destination on delivery) */
	__u8   node_mac[6];     /* the lxc MAC (source on delivery, answer in ARP replies) */
	__u32  sec_id;          /* security identity of the endpoint */
	__be32 ip4;             /* the endpoint's address */
};

/* dp_ep_ifindex key: the host-side ifindex a from-container program runs on */
struct ep_ifindex_key {
	__u32 ifindex;
};

/* cilium_metrics value (per CPU): packets and bytes counted for one {reason, direction}; the
 * map is a per-CPU array indexed by METRICS_INDEX(reason, dir) */
struct metrics_value {
	__u64 count;
	__u64 bytes;
};

/* cilium_ipcache key (LPM): an IPv4 prefix; lpm_key_prefixlen = IPCACHE_PREFIX_BASE + bits */
struct ipcache_key {
	__u32  lpm_key_prefixlen;
	__u16  cluster_id;
	__u8   pad1;
	__u8   family;          /* ENDPOINT_KEY_IPV4 */
	__be32 ip4;
};

/* cilium_ipcache value: who an address is and which node holds it */
struct remote_endpoint_info {
	__u32  sec_identity;
	__be32 tunnel_endpoint; /* node IP hosting the address, 0 when not a cluster pod */
	__u16  node_id;
	__u8   key;
	__u8   flags;
};

/* dp_node_config value (array, index 0): this node's runtime settings */
struct node_config {
	__u32  flags;           /* NODE_CFG_F_* */
	__u32  tunnel_ifindex;  /* the collect-metadata VXLAN device */
	__be32 node_ip;         /* this node's IP on the native device */
	__u32  pad;
};

/* cilium_lb4_services_v2 key: a frontend (slot 0) or one of its backend slots (1..count) */
struct lb4_key {
	__be32 address;         /* service IP */
	__be16 dport;           /* service port */
	__u16  backend_slot;    /* 0 = the frontend entry */
	__u8   proto;           /* IPPROTO_TCP / IPPROTO_UDP */
	__u8   scope;           /* 0 external, 1 internal */
	__u8   pad[2];
};

/* cilium_lb4_services_v2 value: slot 0 holds count/rev_nat/flags, slots 1.. hold backend ids */
struct lb4_service {
	__u32  backend_id;      /* backend slots; the affinity timeout (s) on the frontend slot */
	__u16  count;           /* number of backends (frontend slot) */
	__u16  rev_nat_index;   /* service id, key of cilium_lb4_reverse_nat */
	__u8   flags;           /* SVC_FLAG_* */
	__u8   flags2;
	__u16  qcount;          /* terminating backends kept after the active ones */
};

/* cilium_lb4_backends_v3 value: where a backend id points */
struct lb4_backend {
	__be32 address;
	__be16 port;
	__u8   proto;
	__u8   flags;           /* BE_STATE_* */
	__u16  cluster_id;
	__u8   zone;
	__u8   pad;
};

/* cilium_lb4_backends_v3 key */
struct lb4_backend_key {
	__u32 backend_id;
};

/* cilium_lb4_reverse_nat key */
struct lb4_reverse_nat_key {
	__u16 rev_nat_index;
	__u16 pad;
};

/* cilium_lb4_reverse_nat value: the frontend replies are rewritten back to */
struct lb4_reverse_nat {
	__be32 address;
	__be16 port;
	__u16  pad;
};

/* cilium_lb4_maglev value (key: lb4_reverse_nat_key): a frontend's Maglev lookup table */
struct lb4_maglev_lut {
	__u32 backend_ids[LB_MAGLEV_LUT_SIZE];
};

/* cilium_lb4_affinity key: one client of one service (ClientIP session affinity) */
struct lb4_affinity_key {
	__be32 client_ip;
	__u16  rev_nat_id;
	__u16  pad;
};

/* cilium_lb4_affinity value: the client's backend and when it was last used */
struct lb_affinity_val {
	__u64 last_used;        /* seconds of the monotonic clock */
	__u32 backend_id;
	__u32 pad;
};

/* cilium_snat_v4_external value: what the tuple is translated to (egress: the node's address
 * and allocated port; ingress: the pod's address and port), and when the mapping expires */
struct ipv4_nat_entry {
	__u64  created;         /* seconds of the monotonic clock */
	__u32  lifetime;
	__be32 to_addr;
	__be16 to_port;
	__u16  flags;           /* NAT_F_* */
	__u32  pad2;
};

/* cilium_ipmasq_v4 key (LPM): a destination prefix never masqueraded */
struct ipmasq_key {
	__u32  lpm_key_prefixlen;
	__be32 ip4;
};

/* cilium_ct4_global / cilium_ct_any4_global key: a flow in one orientation */
struct ipv4_ct_tuple {
	__be32 daddr;
	__be32 saddr;
	__be16 dport;
	__be16 sport;
	__u8   nexthdr;
	__u8   flags;           /* TUPLE_F_* */
	__u16  pad;
};

/* conntrack value */
struct ct_entry {
	__u64 backend_id;       /* service entries: the chosen backend */
	__u64 packets;
	__u64 bytes;
	__u32 lifetime;         /* expiry, in seconds of bpf_ktime_get_ns() (monotonic) */
	__u16 rev_nat_index;    /* reply entries: the service to translate back to */
	__u16 flags;            /* CT_F_* */
	__u32 src_sec_id;
	__u32 policy_rev;       /* policy-tracked forward entries: the dp_policy_revision at which
				 * policy last allowed the flow (0: not cached) */
	__u8  tx_flags_seen;    /* monitor aggregation (Cilium's): TCP flags (of
				 * MONITOR_AGGREGATION_FLAGS) seen in the entry's own direction */
	__u8  rx_flags_seen;    /* the same for the other direction (entries that count both) */
	__u16 pad1;
	__u32 last_tx_report;   /* ct_now() when a packet of this direction was last traced */
	__u32 last_rx_report;   /* the same for the other direction */
	__u32 pad2;
};

/* cilium_l2_responder_v4 key: an address this node announces on one native device */
struct l2_responder_v4_key {
	__be32 ip4;
	__u32  ifindex;         /* the device the ARP request must arrive on */
};

/* cilium_l2_responder_v4 value: counted by the datapath, never written by the agent */
struct l2_responder_v4_stats {
	__u64 responses_sent;
};

/* dp_netdev value (key: the device's __u32 ifindex): a native device as the datapath needs it */
struct netdev_info {
	__u8  mac[6];           /* the device's MAC: the answer of the L2 responder */
	__u16 pad;
};

/* dp_agent_liveness value (array, index 0): the agent's heartbeat. The L2 responder answers
 * only while now - last_seen <= max_age, so a node whose agent died stops announcing (as
 * Cilium's l2_announcements_max_liveness does). */
struct agent_liveness {
	__u64 last_seen;        /* ns of the monotonic clock (bpf_ktime_get_ns) */
	__u64 max_age;          /* ns; 0: never answer */
};

/* cilium_policy_v2 key (LPM trie, one map for every endpoint) */
struct policy_key {
	__u32  lpm_key_prefixlen;   /* POLICY_PREFIX_BASE, + 8 with a protocol, + port bits */
	__u32  sec_label;           /* the peer's security identity; 0 = any peer */
	__u16  endpoint_id;         /* the local endpoint (endpoint_info.lxc_id) */
	__u8   egress;              /* POLICY_INGRESS or POLICY_EGRESS */
	__u8   protocol;            /* IPPROTO_*, matched only when the prefix covers it */
	__be16 dport;               /* destination port, matched on the prefix's port bits */
	__u16  pad;
};

/* cilium_policy_v2 value.flags: what the entry's key matches (the policy verdict's match type)
 * and whether its direction is enforced (verdicts reported, Cilium's policy verdict log filter) */
#define POLICY_ENTRY_F_PROTO    1   /* the key names a protocol */
#define POLICY_ENTRY_F_PORT     2   /* the key names a port (or a port range) */
#define POLICY_ENTRY_F_LOG      4   /* the endpoint enforces this direction: report verdicts */

/* cilium_policy_v2 value */
struct policy_entry {
	__be16 proxy_port;          /* L7 proxy redirection (Cilium's); always 0 here */
	__u8   deny;                /* 1: deny */
	__u8   flags;               /* POLICY_ENTRY_F_* */
	__u32  pad1;
	__u64  packets;             /* forward packets this entry decided */
	__u64  bytes;
};

/* dp_policy_revision value (array, index 0): bumped by the agent after every change it
 * writes to cilium_policy_v2. A flow's forward entry caches the revision its policy verdict was
 * taken at (ct_entry.policy_rev); established packets skip the policy lookups while it still
 * matches. 0 (never written): nothing is cached, every packet is decided. */
struct policy_revision {
	__u32 revision;
	__u32 pad;
};

/* cilium_ipv4_frag_datagrams key: one fragmented datagram */
struct ipv4_frag_id {
	__be32 daddr;
	__be32 saddr;
	__be16 id;
	__u8   proto;
	__u8   pad;
};

/* cilium_ipv4_frag_datagrams value: the ports its first fragment carried */
struct ipv4_frag_l4ports {
	__be16 sport;
	__be16 dport;
};

/* ---- XDP NodePort flow cache (lib/xdp_flow.h; the XDP path's own block) ---- */

/* dp_xdp_flow4 entries (an LRU with per-CPU lists: an entry only caches, losing one costs a
 * slow-path packet) */
#ifndef XDP_FLOW_MAP_SIZE
#define XDP_FLOW_MAP_SIZE 65536
#endif

/* how long a cached flow is used before one packet takes the slow path again (ns of the coarse
 * clock): it refreshes conntrack and NAT, re-checks the service and the route, refills it */
#ifndef XDP_FLOW_REVALIDATE_NS
#define XDP_FLOW_REVALIDATE_NS 1000000000
#endif

#define XDP_FLOW_F_LOCAL 1              /* the backend is a local pod: DNAT only, then XDP_PASS */

/* dp_xdp_flow_stats indexes (per-CPU __u64 counters) */
#define XDP_FLOW_STAT_HIT 0             /* packets sent from the cache */
#define XDP_FLOW_STAT_FILL 1            /* entries filled (or refilled) by the slow path */
#define XDP_FLOW_STATS 2

/* dp_xdp_flow4 key: a NodePort flow as it arrives (client -> frontend) */
struct xdp_flow4_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8   proto;
	__u8   pad[3];
};

/* dp_xdp_flow4 value: everything an established packet of the flow needs */
struct xdp_flow4 {
	__u64  filled_ns;           /* coarse clock when the slow path last filled it */
	__u32  backend_id;          /* checked against cilium_lb4_backends_v3 on every packet */
	__u32  ifindex;             /* the device the flow arrives on */
	__u32  egress_ifindex;      /* where it leaves (remote backend) */
	__be32 backend_addr;        /* new destination */
	__be32 nat_addr;            /* new source (remote backend; local: the client's own) */
	__be16 backend_port;
	__be16 nat_port;
	__u16  l3_diff;             /* folded one's complement difference for the IP checksum */
	__u16  l4_diff;             /* the same for the TCP/UDP checksum */
	__u8   dmac[6];             /* next hop */
	__u8   smac[6];             /* egress device */
	__u8   flags;               /* XDP_FLOW_F_* */
	__u8   pad[3];
};

/* ---- monitor events (lib/events.h): records in cilium_events, a BPF ring buffer (Cilium's
 * cilium_events is a perf event array: one buffer here keeps every CPU's events in order) ---- */
#ifndef EVENTS_RING_SIZE
#define EVENTS_RING_SIZE (1 << 20)      /* bytes: a power of 2 and a multiple of the page */
#endif
#define CILIUM_NOTIFY_DROP  1           /* Cilium's monitor message types */
#define NOTIFY_CAPTURE_VER  1
#define TRACE_PAYLOAD_LEN   128         /* packet bytes an event carries at most */
#define EVENT_STAT_SENT     0           /* dp_event_stats slots */
#define EVENT_STAT_LOST     1           /* the ring buffer was full */
#define EVENT_STATS         2
/* the program that sent an event (drop_notify.hook) */
#define EVENT_HOOK_FROM_CONTAINER 1
#define EVENT_HOOK_TO_CONTAINER   2
#define EVENT_HOOK_FROM_NETDEV    3
#define EVENT_HOOK_TO_NETDEV      4
#define EVENT_HOOK_FROM_OVERLAY   5
#define EVENT_HOOK_XDP            6

#define CILIUM_NOTIFY_TRACE 4           /* trace_notify.type */
/* trace observation points (trace_notify.subtype): Cilium's enum trace_point */
#define TRACE_TO_LXC        0           /* delivered into a local endpoint ("to-endpoint") */
#define TRACE_TO_PROXY      1
#define TRACE_TO_HOST       2
#define TRACE_TO_STACK      3           /* handed to the node's stack */
#define TRACE_TO_OVERLAY    4           /* encapsulated to another node */
#define TRACE_FROM_LXC      5           /* sent by a local endpoint ("from-endpoint") */
#define TRACE_FROM_PROXY    6
#define TRACE_FROM_HOST     7
#define TRACE_FROM_STACK    8
#define TRACE_FROM_OVERLAY  9           /* decapsulated from another node */
#define TRACE_FROM_NETWORK  10          /* arrived on a native device */
#define TRACE_TO_NETWORK    11          /* out a native device */
/* trace_notify.reason: the conntrack state (Cilium's TRACE_REASON_*, CT_NEW.. order) */
#define TRACE_REASON_POLICY          0  /* a new flow ("new") */
#define TRACE_REASON_CT_ESTABLISHED  1
#define TRACE_REASON_CT_REPLY        2
#define TRACE_REASON_CT_RELATED      3
#define TRACE_REASON_CT_REOPENED     4
#define TRACE_REASON_UNKNOWN         5  /* no conntrack state at that point */
#define TRACE_NOTIFY_FLAG_IPV6       1  /* trace_notify.flags (Cilium's) */
#define TRACE_NOTIFY_FLAG_L3_DEVICE  2
/* monitor aggregation levels (bpf.monitorAggregation, Cilium's numbers) */
#define MONITOR_AGGREGATION_NONE     0  /* every packet at every trace point */
#define MONITOR_AGGREGATION_LOWEST   1  /* no from-* trace points */
#define MONITOR_AGGREGATION_LOW      2  /* the same (Cilium's LOW adds nothing for traces) */
#define MONITOR_AGGREGATION_MEDIUM   3  /* + only a flow's new, flag-change or interval packets */
#define MONITOR_AGGREGATION_MAX      4
#ifndef MONITOR_AGGREGATION
#define MONITOR_AGGREGATION MONITOR_AGGREGATION_MEDIUM
#endif
/* bpf.monitorInterval: seconds between two traces of an established flow (medium and up) */
#ifndef MONITOR_INTERVAL
#define MONITOR_INTERVAL 5
#endif
/* the TCP flags whose first sighting in a direction is traced (Cilium's default: syn,fin,rst) */
#ifndef MONITOR_AGGREGATION_FLAGS
#define MONITOR_AGGREGATION_FLAGS 7
#endif

/* cilium_events record of a drop: Cilium's drop_notify (version 1), a clock and the hook, then
 * the packet's first len_cap bytes as it was when dropped (from its Ethernet header) */
struct drop_notify {
	__u8  type;             /* CILIUM_NOTIFY_DROP */
	__u8  subtype;          /* the drop reason (DROP_*) */
	__u16 source;           /* the local endpoint it came from or was going to (0: none) */
	__u32 hash;             /* skb->hash (0 in XDP) */
	__u32 len_orig;         /* the packet's length */
	__u16 len_cap;          /* bytes of it in data[] */
	__u16 version;          /* NOTIFY_CAPTURE_VER */
	__u32 src_label;        /* source identity (0: unknown) */
	__u32 dst_label;        /* destination identity (0: unknown) */
	__u32 dst_id;           /* destination endpoint id (0: not a local endpoint) */
	__u16 line;             /* source line of the drop (0: not recorded) */
	__u8  file;             /* source file of the drop (0: not recorded) */
	__s8  ext_error;
	__u32 ifindex;          /* the device the program runs on */
	__u8  dir;              /* METRIC_* of the entry point */
	__u8  hook;             /* EVENT_HOOK_* */
	__u16 pad;
	__u64 ktime_ns;         /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) when dropped */
	__u8  data[TRACE_PAYLOAD_LEN];
};

/* dp_trace_state value (per CPU, index 0): the packet being processed (lib/trace.h) */
struct trace_state {
	__u8  monitor;          /* 1: aggregation lets it be traced (its CT entry said so) */
	__u8  reason;           /* TRACE_REASON_*: its conntrack state */
	__u8  hook;             /* EVENT_HOOK_* of the running program */
	__u8  drop_dir;         /* METRIC_* a drop is counted and reported in (0: the entry's) */
	__u16 drop_source;      /* the endpoint whose policy dropped it (drop_dir set) */
	__u16 pad;              /* a per-CPU value of 8 bytes (BCC's per-CPU tables need it) */
};

/* cilium_events record of a trace point: Cilium's trace_notify (version 1: the original address
 * as a 16-byte field), then a clock and the hook, then the packet's first len_cap bytes as it
 * was at that point (from its Ethernet header) */
struct trace_notify {
	__u8  type;             /* CILIUM_NOTIFY_TRACE */
	__u8  subtype;          /* the observation point (TRACE_*) */
	__u16 source;           /* the local endpoint it came from or goes to (0: none) */
	__u32 hash;             /* skb->hash */
	__u32 len_orig;         /* the packet's length */
	__u16 len_cap;          /* bytes of it in data[] */
	__u16 version;          /* NOTIFY_CAPTURE_VER */
	__u32 src_label;        /* source identity (0: unknown) */
	__u32 dst_label;        /* destination identity (0: unknown) */
	__u16 dst_id;           /* destination endpoint id (0: not a local endpoint) */
	__u8  reason;           /* TRACE_REASON_* */
	__u8  flags;            /* TRACE_NOTIFY_FLAG_* */
	__u32 ifindex;          /* the device it goes out (to-*) or came in (from-*); 0: unknown */
	__be32 orig_ip4;        /* the original address before a translation (0: none) */
	__u32 orig_pad1;        /* Cilium's union with the IPv6 address */
	__u32 orig_pad2;
	__u32 orig_pad3;
	__u8  hook;             /* EVENT_HOOK_* of the program that sent it */
	__u8  pad1;
	__u16 pad2;
	__u32 pad3;
	__u64 ktime_ns;         /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) at the trace point */
	__u8  data[TRACE_PAYLOAD_LEN];
};

#define CILIUM_NOTIFY_POLICY_VERDICT 5   /* policy_verdict_notify.type */
/* policy_verdict_notify.match_type: which kind of entry decided (Cilium's POLICY_MATCH_*) */
#define POLICY_MATCH_NONE        0      /* no entry: denied by default */
#define POLICY_MATCH_L3_ONLY     1      /* the peer's identity, any protocol */
#define POLICY_MATCH_L3_L4       2      /* the peer's identity and a port */
#define POLICY_MATCH_L4_ONLY     3      /* any peer, a port */
#define POLICY_MATCH_ALL         4      /* any peer, anything */
#define POLICY_MATCH_L3_PROTO    5      /* the peer's identity and a protocol, any port */
#define POLICY_MATCH_PROTO_ONLY  6      /* any peer, a protocol, any port */
/* policy_verdict_notify.flags: Cilium's bit fields dir:2, ipv6:1, match_type:3, audited:1 */
#define POLICY_VERDICT_DIR_INGRESS  1   /* flags & POLICY_VERDICT_DIR_MASK (Cilium's numbers) */
#define POLICY_VERDICT_DIR_EGRESS   2
#define POLICY_VERDICT_DIR_MASK     3
#define POLICY_VERDICT_F_IPV6       4
#define POLICY_VERDICT_MATCH_SHIFT  3   /* match type in bits 3-5 */
#define POLICY_VERDICT_MATCH_MASK   0x38
#define POLICY_VERDICT_F_AUDITED    0x40

/* cilium_events record of a policy decision on a new flow or a denied packet, for an endpoint
 * that enforces that direction: Cilium's policy_verdict_notify (its 40-byte header; a clock where
 * Cilium has its cookie), then the packet's first len_cap bytes as policy saw it */
struct policy_verdict_notify {
	__u8  type;             /* CILIUM_NOTIFY_POLICY_VERDICT */
	__u8  subtype;          /* 0 */
	__u16 source;           /* the local endpoint whose policy decided */
	__u32 hash;             /* skb->hash */
	__u32 len_orig;         /* the packet's length */
	__u16 len_cap;          /* bytes of it in data[] */
	__u16 version;          /* NOTIFY_CAPTURE_VER */
	__u32 remote_label;     /* the peer's identity */
	__s32 verdict;          /* 0: allowed; a negative DROP_*: denied */
	__u16 dst_port;         /* the destination port policy matched on (host order) */
	__u8  proto;            /* IPPROTO_* */
	__u8  flags;            /* POLICY_VERDICT_DIR_* | POLICY_VERDICT_F_* | match type << 3 */
	__u8  auth_type;        /* 0: no authentication */
	__u8  hook;             /* EVENT_HOOK_* of the program that decided */
	__u16 pad;
	__u64 ktime_ns;         /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) at the decision */
	__u8  data[TRACE_PAYLOAD_LEN];
};

#endif /* DP_ABI_H */
