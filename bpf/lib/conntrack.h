/* lib/conntrack.h - connection tracking for load-balanced flows, with Cilium's lifetimes.
 *
 * Entries live in cilium_ct4_global (TCP) or cilium_ct_any4_global (everything else), keyed by
 * a tuple in one orientation. A packet refreshes its entry: non-TCP lives
 * CT_CONNECTION_LIFETIME_NONTCP; TCP lives CT_SYN_TIMEOUT until a packet without SYN is seen,
 * then CT_CONNECTION_LIFETIME_TCP; a FIN or RST closes the entry (CT_CLOSE_TIMEOUT). The agent
 * deletes expired entries (its GC); LRU eviction is the backstop.
 *
 * API:
 *   ct_now()                      seconds of the monotonic clock (its coarse reading: one tick
 *                                 old at most, and far cheaper than bpf_ktime_get_ns)
 *   ct_lookup(tuple)              the entry, or NULL
 *   ct_create(tuple, entry)       returns 0 or -DROP_CT_CREATE_FAILED
 *   ct_delete(tuple)              remove the entry, if any
 *   ct_refresh(entry, tcp_flags, is_tcp, bytes, trace)   account a packet and extend the
 *                                 lifetime; trace = CT_TRACE(dir, TRACE_REASON_*) names the
 *                                 packet's direction on the entry and its CT state for the
 *                                 monitor (ct_monitor), CT_TRACE_SKIP for an entry the packet
 *                                 does not belong to (a reply entry made ahead)
 *   ct_refresh_at(entry, tcp_flags, is_tcp, bytes, now, trace)   the same with the clock
 *                                 already read; the lifetime is written only when it changes
 *                                 (once a second on an established flow). An entry is shared
 *                                 by every CPU its flow's packets run on: its packet and byte
 *                                 counters are locked adds and its flags change by atomic OR /
 *                                 AND (lib/common.h DP_ATOMIC_*), so none is lost
 *   ct_monitor(entry, tcp_flags, trace, now)   monitor aggregation (Cilium's): at medium and
 *                                 up the packet is traced (lib/trace.h trace_note) when the
 *                                 entry is new, when a flag of MONITOR_AGGREGATION_FLAGS is
 *                                 first seen in its direction, or when MONITOR_INTERVAL seconds
 *                                 passed since that direction's last trace; the entry's report
 *                                 state is written only then. Below medium: every packet.
 *   ct_tcp_reopens(entry, tcp_flags)  a TCP SYN (no ACK) meeting an entry both sides closed: a
 *                                 new connection on an old tuple
 *   ct_reopen(entry)              start such an entry over (closing and seen flags cleared,
 *                                 the monitor's flags too: the new connection's SYN is traced)
 */
#ifndef DP_LIB_CONNTRACK_H
#define DP_LIB_CONNTRACK_H

#include "maps.h"
#include "trace.h"

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04

/* bpf_ktime_get_coarse_ns (kernel 5.11): CLOCK_MONOTONIC_COARSE, the same clock as
 * bpf_ktime_get_ns (and the agent's time.monotonic()) read at the last tick, without touching
 * the clocksource. */
static __u64 (*ct_coarse_ns)(void) = (void *)BPF_FUNC_ktime_get_coarse_ns;

static __always_inline __u32 ct_now(void)
{
	return ct_coarse_ns() / 1000000000ULL;
}

/* Each map's call stays its own: one call site fed either map would keep the verifier from
 * inlining the lookup and from calling the map's own function directly (the generic helper's
 * indirect call instead). DP_NOMERGE keeps the calls from being merged; the empty asm after the
 * non-TCP one makes the two branches' tails differ, so no pass sinks them into one call either
 * (with nomerge alone clang 14 still merged 8 lookups and 6 updates in from-container). */
static __always_inline struct ct_entry *ct_lookup(struct ipv4_ct_tuple *tuple)
{
	struct ct_entry *ct;

	if (tuple->nexthdr == IPPROTO_TCP)
		DP_NOMERGE ct = cilium_ct4_global.lookup(tuple);
	else {
		DP_NOMERGE ct = cilium_ct_any4_global.lookup(tuple);
		asm volatile("" : "+r"(ct));
	}
	return ct;
}

static __always_inline int ct_create(struct ipv4_ct_tuple *tuple, struct ct_entry *entry)
{
	int ret;

	if (tuple->nexthdr == IPPROTO_TCP)
		DP_NOMERGE ret = cilium_ct4_global.update(tuple, entry);
	else {
		DP_NOMERGE ret = cilium_ct_any4_global.update(tuple, entry);
		asm volatile("" : "+r"(ret));
	}
	return ret < 0 ? -DROP_CT_CREATE_FAILED : 0;
}

static __always_inline void ct_delete(struct ipv4_ct_tuple *tuple)
{
	if (tuple->nexthdr == IPPROTO_TCP)
		DP_NOMERGE cilium_ct4_global.delete(tuple);
	else {
		int ret;

		DP_NOMERGE ret = cilium_ct_any4_global.delete(tuple);
		asm volatile("" : "+r"(ret));
	}
}

/* ct_refresh's trace argument: the packet's direction on the entry and its TRACE_REASON_* */
#define CT_TRACE_TX     0x00    /* the entry's own direction (its tuple as the packet's) */
#define CT_TRACE_RX     0x10    /* the reverse direction */
#define CT_TRACE_SKIP   0xff    /* not the packet's entry: nothing to report */
#define CT_TRACE(dir, reason) ((dir) | (reason))

static __always_inline void ct_monitor(struct ct_entry *entry, __u8 tcp_flags, __u8 trace,
				       __u32 now)
{
#ifndef EVENTS_DISABLED
	if (trace == CT_TRACE_SKIP)
		return;
#if MONITOR_AGGREGATION >= MONITOR_AGGREGATION_MEDIUM
	{
		__u8 seen = tcp_flags & MONITOR_AGGREGATION_FLAGS;

		if (trace & CT_TRACE_RX) {
			if ((entry->rx_flags_seen | seen) == entry->rx_flags_seen &&
			    entry->last_rx_report + MONITOR_INTERVAL >= now)
				return;         /* the established case: two loads, no store */
			entry->rx_flags_seen |= seen;
			entry->last_rx_report = now;
		} else {
			if ((entry->tx_flags_seen | seen) == entry->tx_flags_seen &&
			    entry->last_tx_report + MONITOR_INTERVAL >= now)
				return;
			entry->tx_flags_seen |= seen;
			entry->last_tx_report = now;
		}
	}
#endif
	trace_note(trace & 0x0f);
#endif
}

static __always_inline void ct_refresh_at(struct ct_entry *entry, __u8 tcp_flags, int is_tcp,
					  __u32 bytes, __u32 now, __u8 trace)
{
	ct_monitor(entry, tcp_flags, trace, now);
	__u32 life = CT_CONNECTION_LIFETIME_NONTCP;

	if (is_tcp) {
		__u16 flags = entry->flags, set = 0;

		if (!(tcp_flags & TCP_FLAG_SYN))
			set |= CT_F_SEEN_NON_SYN;
		if (tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
			set |= CT_F_RX_CLOSING | CT_F_TX_CLOSING;
		/* flags are written (atomically) only when they change: an established flow's
		 * packets read them alone */
		if ((flags | set) != flags)
			flags = DP_ATOMIC_U16_OR(entry, flags, set) | set;
		if ((flags & (CT_F_RX_CLOSING | CT_F_TX_CLOSING)) ==
		    (CT_F_RX_CLOSING | CT_F_TX_CLOSING))
			life = CT_CLOSE_TIMEOUT;
		else if (flags & CT_F_SEEN_NON_SYN)
			life = CT_CONNECTION_LIFETIME_TCP;
		else
			life = CT_SYN_TIMEOUT;
	}
	/* one store (Cilium's WRITE_ONCE); a CPU racing a FIN may write the longer lifetime last,
	 * which its next packet corrects from the flags. Cilium's report interval: a second. */
	if (entry->lifetime != now + life)
		entry->lifetime = now + life;
	/* counted by every CPU the flow's packets run on: locked adds lose none */
	DP_ATOMIC_ADD(&entry->packets, 1);
	DP_ATOMIC_ADD(&entry->bytes, bytes);
}

static __always_inline int ct_tcp_reopens(const struct ct_entry *entry, __u8 tcp_flags)
{
	return (tcp_flags & (TCP_FLAG_SYN | 0x10)) == TCP_FLAG_SYN &&
	       (entry->flags & (CT_F_RX_CLOSING | CT_F_TX_CLOSING)) ==
	       (CT_F_RX_CLOSING | CT_F_TX_CLOSING);
}

static __always_inline void ct_reopen(struct ct_entry *entry)
{
	DP_ATOMIC_U16_CLEAR(entry, flags, CT_F_RX_CLOSING | CT_F_TX_CLOSING | CT_F_SEEN_NON_SYN);
	entry->tx_flags_seen = 0;
	entry->rx_flags_seen = 0;
}

static __always_inline void ct_refresh(struct ct_entry *entry, __u8 tcp_flags, int is_tcp,
				       __u32 bytes, __u8 trace)
{
	ct_refresh_at(entry, tcp_flags, is_tcp, bytes, ct_now(), trace);
}

#endif /* DP_LIB_CONNTRACK_H */
