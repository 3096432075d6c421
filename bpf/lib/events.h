/* lib/events.h - monitor events: the ring buffer the datapath reports through (cilium_events),
 * its counters (dp_event_stats) and the send helpers: drops (always sent) and trace points
 * (Cilium's TRACE_*, sent as monitor aggregation allows: lib/trace.h holds the packet's state,
 * lib/conntrack.h decides). Policy verdicts are other records in the same ring (lib/policy_log.h,
 * through events_reserve/events_submit). On the forwarding path a trace point costs one per-CPU array
 * read when aggregation says no.
 *
 * API:
 *   send_drop_notify(skb, reason, dir, hook)      a tc program's drop: a struct drop_notify with
 *                                                 the packet's first TRACE_PAYLOAD_LEN bytes (its
 *                                                 endpoint: the policy's that dropped it, else
 *                                                 the program's own in bpf_lxc)
 *   send_drop_notify_xdp(ctx, reason, dir, hook)  the same from XDP (hash 0)
 *   send_trace_notify(skb, obs, src_identity, ifindex)
 *                                the packet at observation point obs (TRACE_*), leaving by (to-*)
 *                                or arrived on (from-*) ifindex, from src_identity (0: the
 *                                source address's); the destination's identity and endpoint from
 *                                its address, the reason (CT state) and the hook from
 *                                lib/trace.h. Sent when trace_emits says so: at
 *                                MONITOR_AGGREGATION none always; lowest and low: no from-*
 *                                points; medium and up: only a packet conntrack marked
 *                                (Cilium's emit_trace_notify). A from-* point compiles to
 *                                nothing at lowest and up.
 *   send_trace_verdict(skb, verdict, hook)   at a tc program's exit: a CTX_ACT_OK continues to
 *                                the stack (to-stack from from-container, from-netdev,
 *                                from-overlay), out the device (to-network from to-netdev) or
 *                                into the pod (to-endpoint from to-container)
 *   events_reserve(size)         a record of `size` (a constant) in cilium_events, or NULL when
 *                                the ring is full (counted as EVENT_STAT_LOST)
 *   events_submit(rec)           hand the record to the reader (counted as EVENT_STAT_SENT)
 *   -DEVENTS_DISABLED            every send compiles to nothing (the maps stay declared)
 */
#ifndef DP_LIB_EVENTS_H
#define DP_LIB_EVENTS_H

#include "maps.h"
#include "ipcache.h"
#include "endpoint.h"
#include "trace.h"

/* cilium_events: every event record, in the order sent, for the agent's monitor (one ring for
 * all CPUs; Cilium's is a per-CPU perf event array) */
DP_RINGBUF(cilium_events, EVENTS_RING_SIZE);

/* dp_event_stats: per-CPU counters, EVENT_STAT_* (records sent, records lost to a full ring) */
DP_MAP("percpu_array", __u32, __u64, dp_event_stats, EVENT_STATS);

static __always_inline void events_count(__u32 stat)
{
	__u64 *n = dp_event_stats.lookup(&stat);

	if (n)
		*n += 1;        /* per-CPU slot: no other CPU writes it */
}

static __always_inline void *events_reserve(__u64 size)
{
	void *rec = cilium_events.ringbuf_reserve(size);

	if (!rec)
		events_count(EVENT_STAT_LOST);
	return rec;
}

static __always_inline void events_submit(void *rec)
{
	cilium_events.ringbuf_submit(rec, 0);
	events_count(EVENT_STAT_SENT);
}

/* The captured length: min(len, TRACE_PAYLOAD_LEN), clamped in one register so the verifier
 * sees the bound on the very register handed to the load helper (clang would otherwise test a
 * copy). */
static __always_inline __u64 events_cap_len(__u32 len)
{
	__u64 cap = len;

	asm volatile("if %[cap] <= %[max] goto +1\n\t"
		     "%[cap] = %[max]"
		     : [cap] "+r"(cap) : [max] "i"(TRACE_PAYLOAD_LEN));
	return cap;
}

/* Everything but the packet bytes and the identities. */
static __always_inline void drop_notify_init(struct drop_notify *n, __u8 reason, __u32 len,
					     __u32 ifindex, __u32 hash, __u8 dir, __u8 hook)
{
	n->type = CILIUM_NOTIFY_DROP;
	n->subtype = reason;
	n->source = 0;
	n->hash = hash;
	n->len_orig = len;
	n->len_cap = 0;
	n->version = NOTIFY_CAPTURE_VER;
	n->src_label = 0;
	n->dst_label = 0;
	n->dst_id = 0;
	n->line = 0;
	n->file = 0;
	n->ext_error = 0;
	n->ifindex = ifindex;
	n->dir = dir;
	n->hook = hook;
	n->pad = 0;
	n->ktime_ns = bpf_ktime_get_ns();
}

/* Identities and endpoint ids from the captured IPv4 header (non-IPv4: left 0); self_id is the
 * endpoint the program serves (from/to-container), negative elsewhere. Ids stay scalars: clang
 * would otherwise merge the endpoint pointers in ways the verifier refuses. */
static __always_inline void drop_notify_identities(struct drop_notify *n, int self_id)
{
	struct endpoint_info *ep;
	__be32 saddr, daddr;
	__u32 src_ep = 0, dst_ep = 0;
	__u16 proto;

	if (n->len_cap < ETH_HLEN + sizeof(struct iphdr))
		goto out;
	__builtin_memcpy(&proto, &n->data[offsetof(struct ethhdr, h_proto)], sizeof(proto));
	if (proto != bpf_htons(ETH_P_IP) || (n->data[ETH_HLEN] >> 4) != 4)
		goto out;
	__builtin_memcpy(&saddr, &n->data[ETH_HLEN + offsetof(struct iphdr, saddr)], 4);
	__builtin_memcpy(&daddr, &n->data[ETH_HLEN + offsetof(struct iphdr, daddr)], 4);
	ep = lookup_ip4_endpoint(saddr);
	if (ep) {
		n->src_label = ep->sec_id;
		src_ep = ep->lxc_id;
	} else {
		n->src_label = ipcache_identity4(saddr);
	}
	ep = lookup_ip4_endpoint(daddr);
	if (ep) {
		n->dst_label = ep->sec_id;
		dst_ep = ep->lxc_id;
	} else {
		n->dst_label = ipcache_identity4(daddr);
	}
	n->dst_id = dst_ep;
	n->source = dst_ep ? dst_ep : src_ep;
out:
	if (self_id >= 0)
		n->source = self_id;
}

static __always_inline int events_hook_is_lxc(__u8 hook)
{
	return hook == EVENT_HOOK_FROM_CONTAINER || hook == EVENT_HOOK_TO_CONTAINER;
}

static __always_inline void send_drop_notify(struct __sk_buff *skb, __u8 reason, __u8 dir,
					     __u8 hook)
{
#ifndef EVENTS_DISABLED
	struct endpoint_info *self;
	struct drop_notify *n;
	int self_id = -1;
	__u32 len = skb->len;
	__u64 cap;

	n = events_reserve(sizeof(*n));
	if (!n)
		return;
	drop_notify_init(n, reason, len, skb->ifindex, skb->hash, dir, hook);
	cap = events_cap_len(len);
	if (cap && bpf_skb_load_bytes(skb, 0, n->data, cap) == 0)
		n->len_cap = cap;
	self_id = trace_drop_source(reason);    /* a policy's drop: its endpoint */
	if (self_id < 0 && events_hook_is_lxc(hook)) {
		self = lookup_ifindex_endpoint(skb->ifindex);
		self_id = self ? self->lxc_id : 0;
	}
	drop_notify_identities(n, self_id);
	events_submit(n);
#endif
}

static __always_inline void send_drop_notify_xdp(struct xdp_md *ctx, __u8 reason, __u8 dir,
						 __u8 hook)
{
#ifndef EVENTS_DISABLED
	struct drop_notify *n;
	__u32 len = xdp_data_end(ctx) - xdp_data(ctx);
	__u64 cap;

	n = events_reserve(sizeof(*n));
	if (!n)
		return;
	drop_notify_init(n, reason, len, ctx->ingress_ifindex, 0, dir, hook);
	cap = events_cap_len(len);
	if (cap && bpf_xdp_load_bytes(ctx, 0, n->data, cap) == 0)
		n->len_cap = cap;
	drop_notify_identities(n, -1);
	events_submit(n);
#endif
}

/* Cilium's emit_trace_notify: whether aggregation lets a packet be traced at obs (the from-*
 * test folds away for a constant obs). */
static __always_inline int trace_emits(__u8 obs, __u8 monitor)
{
#if MONITOR_AGGREGATION >= MONITOR_AGGREGATION_LOWEST
	if (trace_obs_is_from(obs))
		return 0;
#endif
#if MONITOR_AGGREGATION >= MONITOR_AGGREGATION_MEDIUM
	if (!monitor)
		return 0;
#endif
	return 1;
}

/* Identities and endpoint ids from the captured IPv4 header (non-IPv4: left as they are); an
 * explicit source identity is kept. source: the program's own endpoint (self_id >= 0), else the
 * destination's, else the sender's. */
static __always_inline void trace_notify_identities(struct trace_notify *n, int self_id)
{
	struct endpoint_info *ep;
	__be32 saddr, daddr;
	__u32 src_ep = 0, dst_ep = 0;
	__u16 proto;

	if (n->len_cap < ETH_HLEN + sizeof(struct iphdr))
		goto out;
	__builtin_memcpy(&proto, &n->data[offsetof(struct ethhdr, h_proto)], sizeof(proto));
	if (proto != bpf_htons(ETH_P_IP) || (n->data[ETH_HLEN] >> 4) != 4)
		goto out;
	__builtin_memcpy(&saddr, &n->data[ETH_HLEN + offsetof(struct iphdr, saddr)], 4);
	__builtin_memcpy(&daddr, &n->data[ETH_HLEN + offsetof(struct iphdr, daddr)], 4);
	ep = lookup_ip4_endpoint(saddr);
	if (ep) {
		if (!n->src_label)
			n->src_label = ep->sec_id;
		src_ep = ep->lxc_id;
	} else if (!n->src_label) {
		n->src_label = ipcache_identity4(saddr);
	}
	ep = lookup_ip4_endpoint(daddr);
	if (ep) {
		n->dst_label = ep->sec_id;
		dst_ep = ep->lxc_id;
	} else {
		n->dst_label = ipcache_identity4(daddr);
	}
	n->dst_id = dst_ep;
	n->source = dst_ep ? dst_ep : src_ep;
out:
	if (self_id >= 0)
		n->source = self_id;
}

static __always_inline void send_trace_notify(struct __sk_buff *skb, __u8 obs,
					      __u32 src_identity, __u32 ifindex)
{
#ifndef EVENTS_DISABLED
	struct endpoint_info *self;
	struct trace_state *st;
	struct trace_notify *n;
	int self_id = -1;
	__u32 len;
	__u64 cap;
	__u8 hook;

#if MONITOR_AGGREGATION >= MONITOR_AGGREGATION_LOWEST
	if (trace_obs_is_from(obs))
		return;
#endif
	st = trace_state();
	if (!st || !trace_emits(obs, st->monitor))
		return;
	hook = st->hook;
	len = skb->len;
	n = events_reserve(sizeof(*n));
	if (!n)
		return;
	n->type = CILIUM_NOTIFY_TRACE;
	n->subtype = obs;
	n->source = 0;
	n->hash = skb->hash;
	n->len_orig = len;
	n->len_cap = 0;
	n->version = NOTIFY_CAPTURE_VER;
	n->src_label = src_identity;
	n->dst_label = 0;
	n->dst_id = 0;
	n->reason = st->reason;
	n->flags = 0;
	n->ifindex = ifindex;
	n->orig_ip4 = 0;
	n->orig_pad1 = 0;
	n->orig_pad2 = 0;
	n->orig_pad3 = 0;
	n->hook = hook;
	n->pad1 = 0;
	n->pad2 = 0;
	n->pad3 = 0;
	n->ktime_ns = bpf_ktime_get_ns();
	cap = events_cap_len(len);
	if (cap && bpf_skb_load_bytes(skb, 0, n->data, cap) == 0)
		n->len_cap = cap;
	if (events_hook_is_lxc(hook)) {
		self = lookup_ifindex_endpoint(skb->ifindex);
		self_id = self ? self->lxc_id : 0;
	}
	trace_notify_identities(n, self_id);
	events_submit(n);
#endif
}

static __always_inline void send_trace_verdict(struct __sk_buff *skb, int verdict, __u8 hook)
{
	if (verdict != CTX_ACT_OK)
		return;
	if (hook == EVENT_HOOK_TO_NETDEV)
		send_trace_notify(skb, TRACE_TO_NETWORK, 0, skb->ifindex);
	else if (hook == EVENT_HOOK_TO_CONTAINER)
		send_trace_notify(skb, TRACE_TO_LXC, 0, skb->ifindex);
	else
		send_trace_notify(skb, TRACE_TO_STACK, 0, skb->ifindex);
}

#endif /* DP_LIB_EVENTS_H */
