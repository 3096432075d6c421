/* lib/trace.h - the trace state of the packet being processed: which program runs it, its
 * conntrack state, and whether monitor aggregation lets it be traced. Conntrack decides the
 * last part where it refreshes an entry (lib/conntrack.h's ct_monitor, Cilium's
 * __ct_update_timeout report logic); lib/events.h's send_trace_notify reads it. Owns
 * dp_trace_state. Everything but the policy drop's direction (which the drop counters need)
 * compiles to nothing under -DEVENTS_DISABLED.
 *
 * API:
 *   trace_begin(hook)             a tc program's first step: no CT state yet (reason
 *                                 TRACE_REASON_UNKNOWN, not monitored), sent from EVENT_HOOK_*
 *   trace_note(reason)            the packet's CT state is `reason` and it is to be traced
 *                                 (medium and up: its entry's report state said so)
 *   trace_policy_drop(dir, ep_id) the packet is being dropped by endpoint ep_id's policy in
 *                                 direction dir (METRIC_*): the drop is counted and reported
 *                                 as that endpoint's, in that direction
 *   trace_drop_dir(dir, reason)   the direction a drop of DROP_* reason is counted in: for a
 *                                 policy drop trace_policy_drop's, else dir (the entry point's)
 *   trace_drop_source(reason)     for a policy drop the endpoint trace_policy_drop named, or -1
 *   trace_state()                 the per-CPU state, or NULL (never in practice)
 *   trace_obs_is_from(obs)        a from-* observation point (not sent at LOWEST and up)
 */
#ifndef DP_LIB_TRACE_H
#define DP_LIB_TRACE_H

#include "maps.h"

/* dp_trace_state: per CPU, one entry: the trace state of the packet this CPU processes (a
 * program run is never interleaved with another on its CPU; trace_begin resets it) */
DP_MAP("percpu_array", __u32, struct trace_state, dp_trace_state, 1);

static __always_inline struct trace_state *trace_state(void)
{
	__u32 zero = 0;

	return dp_trace_state.lookup(&zero);
}

static __always_inline void trace_begin(__u8 hook)
{
	struct trace_state *st = trace_state();

	if (!st)
		return;
	st->drop_dir = 0;       /* counted drops need it: kept under EVENTS_DISABLED */
	st->drop_source = 0;
#ifndef EVENTS_DISABLED
	st->monitor = 0;
	st->reason = TRACE_REASON_UNKNOWN;
	st->hook = hook;
#endif
}

static __always_inline void trace_policy_drop(__u8 dir, __u16 ep_id)
{
	struct trace_state *st = trace_state();

	if (st) {
		st->drop_dir = dir;
		st->drop_source = ep_id;
	}
}

static __always_inline int trace_is_policy_drop(__u8 reason)
{
	return reason == DROP_POLICY || reason == DROP_POLICY_DENY;
}

static __always_inline __u8 trace_drop_dir(__u8 dir, __u8 reason)
{
	struct trace_state *st;

	if (!trace_is_policy_drop(reason))
		return dir;
	st = trace_state();
	return st && st->drop_dir ? st->drop_dir : dir;
}

static __always_inline int trace_drop_source(__u8 reason)
{
	struct trace_state *st;

	if (!trace_is_policy_drop(reason))
		return -1;
	st = trace_state();
	return st && st->drop_dir ? st->drop_source : -1;
}

static __always_inline void trace_note(__u8 reason)
{
#ifndef EVENTS_DISABLED
	struct trace_state *st = trace_state();

	if (st) {
		st->monitor = 1;
		st->reason = reason;
	}
#endif
}

static __always_inline int trace_obs_is_from(__u8 obs)
{
	return obs == TRACE_FROM_LXC || obs == TRACE_FROM_PROXY || obs == TRACE_FROM_HOST ||
	       obs == TRACE_FROM_STACK || obs == TRACE_FROM_OVERLAY || obs == TRACE_FROM_NETWORK;
}

#endif /* DP_LIB_TRACE_H */
