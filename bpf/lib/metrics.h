/* lib/metrics.h - verdict accounting in cilium_metrics, and the drop report at the exit.
 *
 * API:
 *   update_metrics(bytes, dir, reason)   add one packet of `bytes` to {reason, dir}
 *   finish(skb, len, ret, dir, hook)     a tc entry point's single exit: a negative DROP_* is
 *                                        counted as that drop in direction dir (or the one
 *                                        lib/trace.h's trace_policy_drop gave), reported
 *                                        (lib/events.h drop notify from EVENT_HOOK_* hook) and
 *                                        becomes
 *                                        CTX_ACT_DROP; any other verdict is counted as
 *                                        forwarded and returned, a CTX_ACT_OK traced as
 *                                        lib/events.h's send_trace_verdict says
 */
#ifndef DP_LIB_METRICS_H
#define DP_LIB_METRICS_H

#include "maps.h"
#include "events.h"

static __always_inline void update_metrics(__u64 bytes, __u8 dir, __u8 reason)
{
	__u32 idx = METRICS_INDEX(reason, dir);
	struct metrics_value *val = cilium_metrics.lookup(&idx);

	if (!val)
		return;         /* a direction beyond the array: not counted */
	/* per-CPU slot: no other CPU writes it, plain adds are safe */
	val->count += 1;
	val->bytes += bytes;
}

static __always_inline int finish(struct __sk_buff *skb, __u32 len, int ret, __u8 dir,
				  __u8 hook)
{
	if (ret < 0) {
		dir = trace_drop_dir(dir, (__u8)-ret);  /* a policy's drop: its endpoint's */
		update_metrics(len, dir, (__u8)-ret);
		send_drop_notify(skb, (__u8)-ret, dir, hook);
		return CTX_ACT_DROP;
	}
	update_metrics(len, dir, REASON_FORWARDED);
	send_trace_verdict(skb, ret, hook);
	return ret;
}

#endif /* DP_LIB_METRICS_H */
