/* lib/common.h - kernel includes, map declaration macro and small packet helpers shared by every
 * program. Owns: DP_MAP and DP_RINGBUF (pinned under -DDP_PIN_DIR when given), ctx_data, ctx_pull.
 *
 * API:
 *   DP_NOMERGE stmt;   keep the statement's calls from being merged with other sites'
 *   DP_MAP(type, key, value, name, max[, flags])  declare a map (pinned when DP_PIN_DIR is set)
 *   DP_RINGBUF(name, bytes)   declare a BPF ring buffer (pinned the same way): name.ringbuf_reserve
 *                             (size), .ringbuf_submit(p, 0), .ringbuf_discard(p, 0)
 *   ctx_data(skb), ctx_data_end(skb)   the packet pointers, loaded where used
 *   ctx_pull(skb, len)   make the first len bytes linear; returns 0 or -DROP_INVALID
 *   xdp_data(ctx), xdp_data_end(ctx)   the same packet pointers for an XDP program
 */
#ifndef DP_LIB_COMMON_H
#define DP_LIB_COMMON_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/if_arp.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>
#include <linux/pkt_cls.h>
#include <bcc/proto.h>

#include "../abi.h"

/* on a statement: its calls are never merged with another site's (clang's nomerge), so a map
 * helper call keeps one constant map, which the verifier inlines or calls directly */
#define DP_NOMERGE __attribute__((nomerge))

#ifdef DP_PIN_DIR
#define DP_MAP(type, k, v, name, max) \
	BPF_TABLE_PINNED(type, k, v, name, max, DP_PIN_DIR "/" #name)
#define DP_MAP_F(type, k, v, name, max, flags) \
	BPF_TABLE_PINNED(type, k, v, name, max, DP_PIN_DIR "/" #name, flags)
#else
#define DP_MAP(type, k, v, name, max) BPF_TABLE(type, k, v, name, max)
#define DP_MAP_F(type, k, v, name, max, flags) BPF_F_TABLE(type, k, v, name, max, flags)
#endif

/* BCC's BPF_RINGBUF_OUTPUT has no pinned form; its frontend pins any map whose section reads
 * "maps/<type>:<path>" and rewrites the .ringbuf_* calls of any table, so the same struct with a
 * pin path in its section is a pinned ring buffer */
#ifdef DP_PIN_DIR
#define DP_RINGBUF_SECTION(name) "maps/ringbuf:" DP_PIN_DIR "/" #name
#else
#define DP_RINGBUF_SECTION(name) "maps/ringbuf"
#endif
#define DP_RINGBUF(name, bytes)							\
struct name##_table_t {								\
	int key;								\
	__u32 leaf;								\
	void *(*ringbuf_reserve)(__u64);					\
	void (*ringbuf_submit)(void *, __u64);					\
	void (*ringbuf_discard)(void *, __u64);					\
	__u32 max_entries;							\
};										\
__attribute__((section(DP_RINGBUF_SECTION(name))))				\
struct name##_table_t name = { .max_entries = (bytes) }

/* A packet pointer of a context (skb->data, xdp->data_end, ...), read by one load right where it
 * is used: clang may otherwise keep &skb->data_end as a modified ctx pointer, which the verifier
 * refuses. */
#define CTX_PTR(ctx, type, field) ({						\
	void *__ptr;								\
	asm volatile("%0 = *(u32 *)(%1 + %2)" : "=r"(__ptr)			\
		     : "r"(ctx), "i"(offsetof(type, field)));			\
	__ptr;									\
})

static __always_inline void *ctx_data(const struct __sk_buff *skb)
{
	return CTX_PTR(skb, struct __sk_buff, data);
}

static __always_inline void *ctx_data_end(const struct __sk_buff *skb)
{
	return CTX_PTR(skb, struct __sk_buff, data_end);
}

static __always_inline void *xdp_data(const struct xdp_md *ctx)
{
	return CTX_PTR(ctx, struct xdp_md, data);
}

static __always_inline void *xdp_data_end(const struct xdp_md *ctx)
{
	return CTX_PTR(ctx, struct xdp_md, data_end);
}

/* Atomic updates of a map value shared by CPUs (conntrack and NAT entries): a counter is added
 * with one locked add, a __u16 flags field set or cleared with one locked OR / AND on the
 * aligned 64-bit word that holds it (BPF has no 16-bit atomics, and BCC's clang emits 32-bit
 * OR/AND only for -mcpu=v3), so a flag one CPU sets is never lost to another CPU's update of
 * the entry. The other fields of that word are untouched (OR with 0, AND with 1s). The fetch
 * forms return the field's value before the update. Little-endian (bpfel) only. */
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "DP_ATOMIC_U16_*: the flags word layout assumes a little-endian target"
#endif
#define DP_U16_WORD(p, field) \
	((__u64 *)((void *)(p) + (offsetof(typeof(*(p)), field) & ~7UL)))
#define DP_U16_SHIFT(p, field) ((offsetof(typeof(*(p)), field) & 7) * 8)
#define DP_ATOMIC_U16_OR(p, field, bits) \
	((__u16)(__sync_fetch_and_or(DP_U16_WORD(p, field), \
				     (__u64)(__u16)(bits) << DP_U16_SHIFT(p, field)) >> \
		 DP_U16_SHIFT(p, field)))
#define DP_ATOMIC_U16_CLEAR(p, field, bits) \
	((__u16)(__sync_fetch_and_and(DP_U16_WORD(p, field), \
				      ~((__u64)(__u16)(bits) << DP_U16_SHIFT(p, field))) >> \
		 DP_U16_SHIFT(p, field)))
#define DP_ATOMIC_ADD(ptr, n) __sync_fetch_and_add(ptr, n)

/* Make sure [data, data + len) is linear and inside the packet.
 * Returns 0, or -DROP_INVALID when the packet is shorter than len. */
static __always_inline int ctx_pull(struct __sk_buff *skb, __u32 len)
{
	if (ctx_data(skb) + len <= ctx_data_end(skb))
		return 0;
	if (skb->len < len)
		return -DROP_INVALID;
	if (bpf_skb_pull_data(skb, len) < 0)
		return -DROP_INVALID;
	if (ctx_data(skb) + len > ctx_data_end(skb))
		return -DROP_INVALID;
	return 0;
}

#endif /* DP_LIB_COMMON_H */
