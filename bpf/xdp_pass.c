/* xdp_pass.c - the lab's program for the segment side of each node's veth: passes every frame.
 * A veth hands frames that its peer sends with XDP_TX (the L2 responder on a node's eth1) to
 * the stack only when it runs an XDP program itself; this one makes it do so, and does nothing
 * else. Not part of a node's datapath.
 */
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}
