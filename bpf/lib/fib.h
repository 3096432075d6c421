/* lib/fib.h - native routing to another node without the node's forwarding path: a FIB lookup
 * in the node's tables, then a redirect out of the egress device with the next hop's MAC
 * (bpf_redirect), or with the kernel resolving the neighbour (bpf_redirect_neigh).
 *
 * API:
 *   fib_redirect_v4(skb)   a to-network trace point (lib/events.h) on a redirect; returns
 *                          CTX_ACT_REDIRECT, CTX_ACT_OK (no route: leave it to the
 *                          stack, which answers or drops as it would) or a negative DROP_*
 */
#ifndef DP_LIB_FIB_H
#define DP_LIB_FIB_H

#include "common.h"
#include "eth.h"
#include "events.h"

#ifndef AF_INET
#define AF_INET 2
#endif

/* BCC 0.26 declares bpf_redirect_neigh with three arguments; the kernel takes four. */
static long (*redirect_neigh4)(__u32 ifindex, void *params, int plen, __u64 flags) =
	(void *)BPF_FUNC_redirect_neigh;

static __always_inline int fib_redirect_v4(struct __sk_buff *skb)
{
	struct bpf_fib_lookup fib = {};
	struct bpf_redir_neigh nh = {};
	struct iphdr *ip = ctx_data(skb) + ETH_HLEN;
	int fib_ret, ret;

	if ((void *)(ip + 1) > ctx_data_end(skb))
		return -DROP_INVALID;
	fib.family = AF_INET;
	fib.tos = ip->tos;
	fib.l4_protocol = ip->protocol;
	fib.tot_len = bpf_ntohs(ip->tot_len);
	fib.ipv4_src = ip->saddr;
	fib.ipv4_dst = ip->daddr;
	fib.ifindex = skb->ifindex;

	fib_ret = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (fib_ret != BPF_FIB_LKUP_RET_SUCCESS && fib_ret != BPF_FIB_LKUP_RET_NO_NEIGH)
		return CTX_ACT_OK;
	ret = ipv4_dec_ttl(skb);
	if (ret < 0)
		return ret;
	if (fib_ret == BPF_FIB_LKUP_RET_SUCCESS) {
		ret = eth_rewrite(skb, fib.smac, fib.dmac);
		if (ret < 0)
			return ret;
		send_trace_notify(skb, TRACE_TO_NETWORK, 0, fib.ifindex);
		return bpf_redirect(fib.ifindex, 0);
	}
	nh.nh_family = AF_INET;
	nh.ipv4_nh = fib.ipv4_dst;      /* the lookup left the next hop here */
	send_trace_notify(skb, TRACE_TO_NETWORK, 0, fib.ifindex);
	return redirect_neigh4(fib.ifindex, &nh, sizeof(nh), 0);
}

#endif /* DP_LIB_FIB_H */
