"""C mocks compiled into test objects (tests/bpf/conftest.py `mocked_object`, tests/bpf/fuzz.py):
helpers test-run cannot feed, replaced by ones that read what the test put in the skb."""

# the VXLAN VNI of the packet comes in skb->cb[1] (0: no tunnel key)
MOCK_TUNNEL_KEY = """
/* test mock: the VXLAN VNI of the packet comes in skb->cb[1] (0: no tunnel key) */
static __always_inline int mock_skb_get_tunnel_key(struct __sk_buff *skb,
						   struct bpf_tunnel_key *key, __u32 size,
						   __u64 flags)
{
	if (!skb->cb[1])
		return -22;
	key->tunnel_id = skb->cb[1];
	return 0;
}
#define bpf_skb_get_tunnel_key mock_skb_get_tunnel_key
"""
