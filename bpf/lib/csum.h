/* lib/csum.h - incremental Internet checksum updates (RFC 1624) for programs that rewrite
 * headers in place through direct packet access (XDP has no l3/l4_csum_replace helpers; tc uses
 * them for the IP header checksum, which is never offloaded, to save a helper call).
 * Values are taken as they lie in the packet (network order); the one's complement sum does
 * not depend on byte order as long as both sides are read the same way.
 *
 * API:
 *   dp_csum_replace4(&sum, from, to)      a 32-bit field changed from -> to
 *   dp_csum_replace2(&sum, from, to)      a 16-bit field changed from -> to
 *   dp_csum_replace4_l4(&sum, udp, from, to) / dp_csum_replace2_l4(...)
 *                                      the same for a TCP/UDP checksum: a UDP checksum of 0
 *                                      (none) stays 0, and a computed 0 is sent as 0xffff
 */
#ifndef DP_LIB_CSUM_H
#define DP_LIB_CSUM_H

static __always_inline __u16 dp_csum_fold_neg(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

static __always_inline void dp_csum_replace4(__u16 *sum, __u32 from, __u32 to)
{
	__u32 s = (__u16)~*sum;
	__u32 f = ~from;

	s += (f & 0xffff) + (f >> 16) + (to & 0xffff) + (to >> 16);
	*sum = dp_csum_fold_neg(s);
}

static __always_inline void dp_csum_replace2(__u16 *sum, __u16 from, __u16 to)
{
	__u32 s = (__u16)~*sum;

	s += (__u16)~from + to;
	*sum = dp_csum_fold_neg(s);
}

static __always_inline void dp_csum_replace4_l4(__u16 *sum, int udp, __u32 from, __u32 to)
{
	if (udp && *sum == 0)
		return;
	dp_csum_replace4(sum, from, to);
	if (udp && *sum == 0)
		*sum = 0xffff;
}

static __always_inline void dp_csum_replace2_l4(__u16 *sum, int udp, __u16 from, __u16 to)
{
	if (udp && *sum == 0)
		return;
	dp_csum_replace2(sum, from, to);
	if (udp && *sum == 0)
		*sum = 0xffff;
}

#endif /* DP_LIB_CSUM_H */
