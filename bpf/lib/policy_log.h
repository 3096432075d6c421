/* lib/policy_log.h - policy verdict events: what an endpoint's policy decided, sent into
 * cilium_events (lib/events.h) as Cilium's policy_verdict_notify. lib/policy.h calls it for every
 * new (or reopened) flow it decides and for every packet it denies, when the endpoint enforces
 * that direction: the deciding entry carries POLICY_ENTRY_F_LOG, and a packet no entry matches
 * is in an enforced direction by construction (an unenforced one has its allow-all entry).
 * Established flows send nothing. Compiles to nothing under -DEVENTS_DISABLED.
 *
 * API:
 *   policy_match_type(l3, entry_flags)   POLICY_MATCH_* of an entry that matched: l3 when its
 *                                         key names the peer's identity, entry_flags its
 *                                         POLICY_ENTRY_F_PROTO / _PORT
 *   send_policy_verdict_notify(skb, ep_id, remote_label, dport, proto, dir, verdict, match_type)
 *                                         endpoint ep_id's decision for the packet (dir:
 *                                         POLICY_INGRESS / POLICY_EGRESS; dport in network
 *                                         order; verdict 0 or a negative DROP_*), from the
 *                                         running program's hook (lib/trace.h)
 */
#ifndef DP_LIB_POLICY_LOG_H
#define DP_LIB_POLICY_LOG_H

#include "events.h"
#include "trace.h"

static __always_inline __u8 policy_match_type(int l3, __u8 entry_flags)
{
	if (entry_flags & POLICY_ENTRY_F_PORT)
		return l3 ? POLICY_MATCH_L3_L4 : POLICY_MATCH_L4_ONLY;
	if (entry_flags & POLICY_ENTRY_F_PROTO)
		return l3 ? POLICY_MATCH_L3_PROTO : POLICY_MATCH_PROTO_ONLY;
	return l3 ? POLICY_MATCH_L3_ONLY : POLICY_MATCH_ALL;
}

static __always_inline void send_policy_verdict_notify(struct __sk_buff *skb, __u16 ep_id,
						       __u32 remote_label, __be16 dport,
						       __u8 proto, __u8 dir, int verdict,
						       __u8 match_type)
{
#ifndef EVENTS_DISABLED
	struct policy_verdict_notify *n;
	struct trace_state *st;
	__u32 len = skb->len;
	__u64 cap;

	n = events_reserve(sizeof(*n));
	if (!n)
		return;
	st = trace_state();
	n->type = CILIUM_NOTIFY_POLICY_VERDICT;
	n->subtype = 0;
	n->source = ep_id;
	n->hash = skb->hash;
	n->len_orig = len;
	n->len_cap = 0;
	n->version = NOTIFY_CAPTURE_VER;
	n->remote_label = remote_label;
	n->verdict = verdict;
	n->dst_port = bpf_ntohs(dport);
	n->proto = proto;
	n->flags = (dir == POLICY_EGRESS ? POLICY_VERDICT_DIR_EGRESS : POLICY_VERDICT_DIR_INGRESS) |
		   ((match_type << POLICY_VERDICT_MATCH_SHIFT) & POLICY_VERDICT_MATCH_MASK);
	n->auth_type = 0;
	n->hook = st ? st->hook : 0;
	n->pad = 0;
	n->ktime_ns = bpf_ktime_get_ns();
	cap = events_cap_len(len);
	if (cap && bpf_skb_load_bytes(skb, 0, n->data, cap) == 0)
		n->len_cap = cap;
	events_submit(n);
#endif
}

#endif /* DP_LIB_POLICY_LOG_H */
