/* lib/metrics.h - verdict accounting in cilium_metrics.
 *
 * API:
 *   update_metrics(bytes, dir, reason)   add one packet of `bytes` to {reason, dir}
 */
#ifndef DP_LIB_METRICS_H
#define DP_LIB_METRICS_H

#include "maps.h"

static __always_inline void update_metrics(__u64 bytes, __u8 dir, __u8 reason)
{
	struct metrics_key key = {};
	struct metrics_value zero = {}, *val;

	key.reason = reason;
	key.dir = dir;
	val = cilium_metrics.lookup(&key);
	if (!val) {
		cilium_metrics.update(&key, &zero);
		val = cilium_metrics.lookup(&key);
		if (!val)
			return;
	}
	/* per-CPU value: no other CPU writes it, plain adds are safe */
	val->count += 1;
	val->bytes += bytes;
}

#endif /* DP_LIB_METRICS_H */
