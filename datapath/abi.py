"""Python mirrors of bpf/abi.h: structs (ctypes, same field order and types), constants, and
Cilium's drop-reason strings. tests/bpf/test_abi.py checks every size, offset and constant here
against what BCC compiled, so this file and abi.h cannot drift apart silently."""
from __future__ import annotations

import ctypes
import socket
import struct
from ctypes import c_uint8, c_uint16, c_uint32, c_uint64

# ---- map sizes (defaults; the agent may override with -D) ----
ENDPOINTS_MAP_SIZE = 65535
METRICS_MAP_SIZE = 1024
IPCACHE_MAP_SIZE = 512000
LB_SERVICE_MAP_MAX_ENTRIES = 65536
LB_BACKENDS_MAP_MAX_ENTRIES = 65536
LB_REV_NAT_MAP_MAX_ENTRIES = 65536
LB_AFFINITY_MAP_MAX_ENTRIES = 65536
LB_MAGLEV_MAP_MAX_ENTRIES = 65536
LB_MAGLEV_LUT_SIZE = 16381          # default; the agent compiles with maglev.tableSize
SNAT_MAPPING_IPV4_SIZE = 524288
IPMASQ_MAP_SIZE = 16384
NODEPORT_PORT_MIN_NAT = 32768
NODEPORT_PORT_MAX_NAT = 65535
SNAT_COLLISION_RETRIES = 32
L2_RESPONDER_MAP4_SIZE = 4096
NETDEV_MAP_SIZE = 256
CT_MAP_SIZE_TCP = 524288
CT_MAP_SIZE_ANY = 262144
POLICY_MAP_SIZE = 65536              # all endpoints' entries together
IPV4_FRAG_DATAGRAMS_MAP_SIZE = 8192

# ---- conntrack lifetimes (seconds) ----
CT_SYN_TIMEOUT = 60
CT_CONNECTION_LIFETIME_TCP = 8000
CT_CLOSE_TIMEOUT = 10
CT_CONNECTION_LIFETIME_NONTCP = 60

# ---- conntrack tuple and entry flags ----
TUPLE_F_OUT = 0
TUPLE_F_IN = 1
TUPLE_F_RELATED = 2
TUPLE_F_SERVICE = 4
TUPLE_F_POLICY = 8                   # ours: a policy-tracked flow, with TUPLE_F_OUT or TUPLE_F_IN
CT_F_RX_CLOSING = 1
CT_F_TX_CLOSING = 2
CT_F_SEEN_NON_SYN = 4
CT_F_LB_LOOPBACK = 8
CT_F_NODEPORT = 16
HASH_INIT4_SEED = 0xCAFE
IPV4_LOOPBACK_HOST = 0xA9FE2A01      # 169.254.42.1, in host order

# ---- load balancer service flags and backend states ----
SVC_FLAG_EXTERNAL_IP = 1
SVC_FLAG_NODEPORT = 2
SVC_FLAG_EXT_LOCAL_SCOPE = 4
SVC_FLAG_AFFINITY = 16
SVC_FLAG_LOADBALANCER = 32
SVC_FLAG_ROUTABLE = 64
SVC_FLAG2_INT_LOCAL_SCOPE = 16
SVC_FLAG2_TWO_SCOPES = 32
LB_LOOKUP_SCOPE_EXT = 0
LB_LOOKUP_SCOPE_INT = 1
LB_ALGORITHM_SHIFT = 24
LB_ALGORITHM_RANDOM = 1
LB_ALGORITHM_MAGLEV = 2
LB_AFFINITY_TIMEOUT_MASK = (1 << 24) - 1
BE_STATE_ACTIVE = 0
BE_STATE_TERMINATING = 1
BE_STATE_QUARANTINED = 2
BE_STATE_MAINTENANCE = 3

# ---- tc verdicts ----
CTX_ACT_OK = 0
CTX_ACT_DROP = 2
CTX_ACT_REDIRECT = 7
VERDICT_NAMES = {CTX_ACT_OK: "OK", CTX_ACT_DROP: "DROP", CTX_ACT_REDIRECT: "REDIRECT"}

# ---- XDP verdicts (enum xdp_action) ----
XDP_ABORTED = 0
XDP_DROP = 1
XDP_PASS = 2
XDP_TX = 3
XDP_REDIRECT = 4

# ---- metric directions (Cilium's metricsmap) ----
METRIC_DIR_UNKNOWN = 0
METRIC_INGRESS = 1
METRIC_EGRESS = 2
METRIC_SERVICE = 3
METRICS_DIR_SHIFT = 8       # cilium_metrics slot: dir << METRICS_DIR_SHIFT | reason
DIRECTION_NAMES = {METRIC_DIR_UNKNOWN: "UNKNOWN", METRIC_INGRESS: "INGRESS",
                   METRIC_EGRESS: "EGRESS", METRIC_SERVICE: "SERVICE"}


def metrics_index(reason: int, direction: int) -> int:
    """The cilium_metrics slot of {reason, direction} (bpf/abi.h METRICS_INDEX)."""
    return direction << METRICS_DIR_SHIFT | (reason & 0xFF)


def metrics_slot(index: int) -> tuple[int, int]:
    """(reason, direction) of a cilium_metrics slot."""
    return index & 0xFF, index >> METRICS_DIR_SHIFT


# ---- reasons (Cilium's numbers; the strings are pkg/monitor/api/drop.go's) ----
REASON_FORWARDED = 0
DROP_INVALID_SMAC = 130
DROP_INVALID_SIP = 132
DROP_POLICY = 133
DROP_INVALID = 134
DROP_CT_INVALID_HDR = 135
DROP_FRAG_NEEDED = 136
DROP_CT_UNKNOWN_PROTO = 137
DROP_UNKNOWN_L3 = 139
DROP_MISSED_TAIL_CALL = 140
DROP_WRITE_ERROR = 141
DROP_UNKNOWN_L4 = 142
DROP_UNROUTABLE = 151
DROP_CSUM_L3 = 153
DROP_CSUM_L4 = 154
DROP_CT_CREATE_FAILED = 155
DROP_FRAG_NOSUPPORT = 157
DROP_NO_SERVICE = 158
DROP_NO_TUNNEL_ENDPOINT = 160
DROP_UNKNOWN_CT = 163
DROP_NO_CONFIG = 165
DROP_UNSUPPORTED_L2 = 166
DROP_NAT_NO_MAPPING = 167
DROP_NAT_UNSUPP_PROTO = 168
DROP_NO_FIB = 169
DROP_INVALID_IDENTITY = 171
DROP_UNKNOWN_SENDER = 172
DROP_IS_CLUSTER_IP = 174
DROP_FRAG_NOT_FOUND = 175
DROP_POLICY_DENY = 181
DROP_TTL_EXCEEDED = 196
DROP_NO_TUNNEL_KEY = 147

# ---- reserved identities (Cilium's numbers) ----
IDENTITY_HOST = 1
IDENTITY_WORLD = 2
IDENTITY_UNMANAGED = 3
IDENTITY_HEALTH = 4
IDENTITY_INIT = 5
IDENTITY_REMOTE_NODE = 6
IDENTITY_KUBE_APISERVER = 7
IDENTITY_INGRESS = 8
IDENTITY_SCOPE_LOCAL = 1 << 24       # CIDR identities: 16777216 and up (world-like)

# ---- identity policy (cilium_policy_v2) ----
POLICY_INGRESS = 0
POLICY_EGRESS = 1
POLICY_PREFIX_BASE = 56              # sec_label + endpoint_id + egress bits: always matched
POLICY_FULL_PREFIX = 80              # + protocol (8) + dport (16)
POLICY_ENTRY_F_PROTO = 1             # policy_entry.flags: the key names a protocol,
POLICY_ENTRY_F_PORT = 2              # a port (or range),
POLICY_ENTRY_F_LOG = 4               # the endpoint enforces the direction (verdicts reported)

# ---- node_config.flags, ipcache prefix base, tunnel port ----
NODE_CFG_F_TUNNEL = 1
NODE_CFG_F_HOST_ROUTING = 2
NODE_CFG_F_MASQUERADE = 4
NODE_CFG_F_XDP_L2_ONLY = 8
NAT_DIR_EGRESS = 0
NAT_DIR_INGRESS = 1
NAT_F_CLOSING = 1
NAT_F_SEEN_NON_SYN = 2
IPCACHE_PREFIX_BASE = 32
TUNNEL_PORT = 8472

# ---- XDP NodePort flow cache (bpf/lib/xdp_flow.h; the XDP path's own block) ----
XDP_FLOW_MAP_SIZE = 65536
XDP_FLOW_REVALIDATE_NS = 1000000000     # a cached flow's slow-path packet once a second
XDP_FLOW_F_LOCAL = 1
XDP_FLOW_STAT_HIT = 0                   # dp_xdp_flow_stats: packets sent from the cache
XDP_FLOW_STAT_FILL = 1                  # entries (re)filled by the slow path
XDP_FLOW_STATS = 2

# Every reason string a metric may carry (Cilium's, verbatim). Keys not in abi.h are reasons
# Cilium has that our programs do not produce yet; they keep their numbers reserved.
REASON_STRINGS: dict[int, str] = {
    0: "Success", 2: "Invalid packet", 3: "Interface", 4: "Interface Decrypted",
    5: "LB, sock cgroup: No backend slot entry found", 6: "LB, sock cgroup: No backend entry found",
    7: "LB, sock cgroup: Reverse entry update failed", 8: "LB, sock cgroup: Reverse entry stale",
    9: "Fragmented packet", 10: "Fragmented packet entry update failed",
    11: "Missed tail call to custom program",
    130: "Invalid source mac", 132: "Invalid source ip", 133: "Policy denied", 134: "Invalid packet",
    135: "CT: Truncated or invalid header", 136: "Fragmentation needed",
    137: "CT: Unknown L4 protocol", 139: "Unsupported L3 protocol", 140: "Missed tail call",
    141: "Error writing to packet", 142: "Unknown L4 protocol", 143: "Unknown ICMPv4 code",
    144: "Unknown ICMPv4 type", 145: "Unknown ICMPv6 code", 146: "Unknown ICMPv6 type",
    147: "Error retrieving tunnel key", 150: "Unknown L3 target address",
    151: "Stale or unroutable IP", 153: "Error while correcting L3 checksum",
    154: "Error while correcting L4 checksum", 155: "CT: Map insertion failed",
    156: "Invalid IPv6 extension header", 157: "IP fragmentation not supported",
    158: "Service backend not found",
    160: "No tunnel/encapsulation endpoint (datapath BUG!)", 161: "NAT 46/64 not enabled",
    162: "Reached EDT rate-limiting drop horizon", 163: "Unknown connection tracking state",
    164: "Local host is unreachable", 165: "No configuration available to perform policy decision",
    166: "Unsupported L2 protocol", 167: "No mapping for NAT masquerade",
    168: "Unsupported protocol for NAT masquerade", 169: "FIB lookup failed",
    170: "Encapsulation traffic is prohibited", 171: "Invalid identity", 172: "Unknown sender",
    173: "NAT not needed", 174: "Is a ClusterIP", 175: "First logical datagram fragment not found",
    176: "Forbidden ICMPv6 message", 177: "Denied by LB src range check",
    178: "Socket lookup failed", 179: "Socket assign failed",
    180: "Proxy redirection not supported for protocol", 181: "Policy denied by denylist",
    182: "VLAN traffic disallowed by VLAN filter", 183: "Incorrect VNI from VTEP",
    184: "Failed to update or lookup TC buffer", 185: "No SID was found for the IP address",
    186: "SRv6 state was removed during tail call",
    187: "L3 translation from IPv4 to IPv6 failed (NAT46)",
    188: "L3 translation from IPv6 to IPv4 failed (NAT64)", 189: "Authentication required",
    190: "No conntrack map found", 191: "No nat map found", 192: "Invalid ClusterID",
    193: "Unsupported packet protocol for DSR encapsulation", 194: "No egress gateway found",
    195: "Traffic is unencrypted", 196: "TTL exceeded", 197: "No node ID found",
    198: "Rate limited",
}


def reason_string(code: int) -> str:
    """Cilium's human string for a reason code; unknown codes keep a stable, readable label."""
    return REASON_STRINGS.get(code, f"Unknown reason ({code})")


def is_drop(reason: int) -> bool:
    """Cilium's metricsmap rule: reason 2 or >= 130 is a drop."""
    return reason == 2 or reason >= 130


# ---- endpoint keys and flags ----
ENDPOINT_KEY_IPV4 = 1
ENDPOINT_KEY_IPV6 = 2
ENDPOINT_F_HOST = 1

# ---- monitor events (bpf/lib/events.h) ----
EVENTS_RING_SIZE = 1 << 20
CILIUM_NOTIFY_DROP = 1
NOTIFY_CAPTURE_VER = 1
TRACE_PAYLOAD_LEN = 128
EVENT_STAT_SENT = 0
EVENT_STAT_LOST = 1
EVENT_STATS = 2
EVENT_HOOK_FROM_CONTAINER = 1
EVENT_HOOK_TO_CONTAINER = 2
EVENT_HOOK_FROM_NETDEV = 3
EVENT_HOOK_TO_NETDEV = 4
EVENT_HOOK_FROM_OVERLAY = 5
EVENT_HOOK_XDP = 6
CILIUM_NOTIFY_TRACE = 4
TRACE_TO_LXC = 0
TRACE_TO_PROXY = 1
TRACE_TO_HOST = 2
TRACE_TO_STACK = 3
TRACE_TO_OVERLAY = 4
TRACE_FROM_LXC = 5
TRACE_FROM_PROXY = 6
TRACE_FROM_HOST = 7
TRACE_FROM_STACK = 8
TRACE_FROM_OVERLAY = 9
TRACE_FROM_NETWORK = 10
TRACE_TO_NETWORK = 11
TRACE_REASON_POLICY = 0
TRACE_REASON_CT_ESTABLISHED = 1
TRACE_REASON_CT_REPLY = 2
TRACE_REASON_CT_RELATED = 3
TRACE_REASON_CT_REOPENED = 4
TRACE_REASON_UNKNOWN = 5
TRACE_NOTIFY_FLAG_IPV6 = 1
TRACE_NOTIFY_FLAG_L3_DEVICE = 2
MONITOR_AGGREGATION_NONE = 0
MONITOR_AGGREGATION_LOWEST = 1
MONITOR_AGGREGATION_LOW = 2
MONITOR_AGGREGATION_MEDIUM = 3
MONITOR_AGGREGATION_MAX = 4
MONITOR_AGGREGATION = MONITOR_AGGREGATION_MEDIUM    # abi.h's defaults (-D overrides)
MONITOR_INTERVAL = 5
MONITOR_AGGREGATION_FLAGS = 7                       # FIN | SYN | RST
CILIUM_NOTIFY_POLICY_VERDICT = 5
POLICY_MATCH_NONE = 0
POLICY_MATCH_L3_ONLY = 1
POLICY_MATCH_L3_L4 = 2
POLICY_MATCH_L4_ONLY = 3
POLICY_MATCH_ALL = 4
POLICY_MATCH_L3_PROTO = 5
POLICY_MATCH_PROTO_ONLY = 6
POLICY_VERDICT_DIR_INGRESS = 1
POLICY_VERDICT_DIR_EGRESS = 2
POLICY_VERDICT_DIR_MASK = 3
POLICY_VERDICT_F_IPV6 = 4
POLICY_VERDICT_MATCH_SHIFT = 3
POLICY_VERDICT_MATCH_MASK = 0x38
POLICY_VERDICT_F_AUDITED = 0x40
# Cilium's names (pkg/monitor/api TraceObservationPoints, monitor's traceReasons,
# bpf.monitorAggregation's option values)
TRACE_OBS_POINT_NAMES = {
    TRACE_TO_LXC: "to-endpoint", TRACE_TO_PROXY: "to-proxy", TRACE_TO_HOST: "to-host",
    TRACE_TO_STACK: "to-stack", TRACE_TO_OVERLAY: "to-overlay", TRACE_FROM_LXC: "from-endpoint",
    TRACE_FROM_PROXY: "from-proxy", TRACE_FROM_HOST: "from-host",
    TRACE_FROM_STACK: "from-stack", TRACE_FROM_OVERLAY: "from-overlay",
    TRACE_FROM_NETWORK: "from-network", TRACE_TO_NETWORK: "to-network"}
TRACE_REASON_NAMES = {
    TRACE_REASON_POLICY: "new", TRACE_REASON_CT_ESTABLISHED: "established",
    TRACE_REASON_CT_REPLY: "reply", TRACE_REASON_CT_RELATED: "related",
    TRACE_REASON_CT_REOPENED: "reopened", TRACE_REASON_UNKNOWN: "unknown"}
MONITOR_AGGREGATION_LEVELS = {
    "none": MONITOR_AGGREGATION_NONE, "disabled": MONITOR_AGGREGATION_NONE,
    "lowest": MONITOR_AGGREGATION_LOWEST, "low": MONITOR_AGGREGATION_LOW,
    "medium": MONITOR_AGGREGATION_MEDIUM, "maximum": MONITOR_AGGREGATION_MAX,
    "max": MONITOR_AGGREGATION_MAX}
# Cilium's PolicyMatchType strings (pkg/monitor/api)
POLICY_MATCH_NAMES = {POLICY_MATCH_NONE: "none", POLICY_MATCH_L3_ONLY: "L3-Only",
                      POLICY_MATCH_L3_L4: "L3-L4", POLICY_MATCH_L4_ONLY: "L4-Only",
                      POLICY_MATCH_ALL: "all", POLICY_MATCH_L3_PROTO: "L3-Proto",
                      POLICY_MATCH_PROTO_ONLY: "Proto-Only"}
EVENT_HOOK_NAMES = {EVENT_HOOK_FROM_CONTAINER: "from-container",
                    EVENT_HOOK_TO_CONTAINER: "to-container",
                    EVENT_HOOK_FROM_NETDEV: "from-netdev", EVENT_HOOK_TO_NETDEV: "to-netdev",
                    EVENT_HOOK_FROM_OVERLAY: "from-overlay", EVENT_HOOK_XDP: "xdp"}

# Every #define in abi.h that Python mirrors (checked by the constants test).
CONSTANTS = {k: v for k, v in dict(globals()).items()
             if k.isupper() and isinstance(v, int) and not k.startswith("_")}

Mac = c_uint8 * 6


_SCALAR = {ctypes.sizeof(c_uint8): "B", ctypes.sizeof(c_uint16): "H", ctypes.sizeof(c_uint32): "I",
           8: "Q"}


def _packer(cls) -> struct.Struct:
    """A struct.Struct with the same bytes as `cls`'s layout: its non-pad fields in order
    (scalars as native integers, arrays as bytes), pads and alignment gaps zero."""
    fmt, at = "<", 0
    for name, ctype, *_ in cls._fields_:
        f = getattr(cls, name)
        if f.offset > at:
            fmt += f"{f.offset - at}x"
        if name.startswith("pad"):
            fmt += f"{f.size}x"
        elif issubclass(ctype, ctypes.Array):
            fmt += f"{f.size}s"
        else:
            fmt += _SCALAR[f.size]
        at = f.offset + f.size
    if ctypes.sizeof(cls) > at:
        fmt += f"{ctypes.sizeof(cls) - at}x"
    return struct.Struct(fmt)


def packer(cls) -> struct.Struct:
    """The struct.Struct behind `cls.pack` (same bytes): for hot loops, whose bound `.pack`
    skips the classmethod's lookup (10^5 keys and values at 10,000 services)."""
    p = cls.__dict__.get("_struct")
    if p is None:
        p = _packer(cls)
        setattr(cls, "_struct", p)
    return p


class _Struct(ctypes.Structure):
    def to_bytes(self) -> bytes:
        return bytes(self)

    @classmethod
    def pack(cls, *values) -> bytes:
        """The struct's bytes from its non-pad fields' values, in order (fast: no ctypes
        object; the bytes are the same as bytes(cls(...)))."""
        p = cls.__dict__.get("_struct")
        if p is None:
            p = _packer(cls)
            setattr(cls, "_struct", p)
        return p.pack(*values)

    @classmethod
    def from_bytes(cls, data: bytes):
        return cls.from_buffer_copy(bytes(data)[: ctypes.sizeof(cls)])

    def __eq__(self, other):
        return type(self) is type(other) and bytes(self) == bytes(other)

    def __hash__(self):
        return hash((type(self).__name__, bytes(self)))

    def __repr__(self):
        fields = ", ".join(f"{n}={_fmt(getattr(self, n))}" for n, *_ in self._fields_
                           if not n.startswith("pad"))
        return f"{type(self).__name__}({fields})"


def _fmt(v):
    if isinstance(v, ctypes.Array):
        return ":".join(f"{b:02x}" for b in v)
    return v


class EndpointKey(_Struct):
    """cilium_lxc key: one local endpoint address."""
    c_name = "endpoint_key"
    _fields_ = [("ip4", c_uint32), ("family", c_uint8), ("pad", c_uint8 * 3)]


class EndpointInfo(_Struct):
    """cilium_lxc value: how to deliver to a local endpoint."""
    c_name = "endpoint_info"
    _fields_ = [("ifindex", c_uint32), ("lxc_id", c_uint16), ("flags", c_uint16),
                ("mac", Mac), ("node_mac", Mac), ("sec_id", c_uint32), ("ip4", c_uint32)]


class EpIfindexKey(_Struct):
    """dp_ep_ifindex key: the host-side veth ifindex."""
    c_name = "ep_ifindex_key"
    _fields_ = [("ifindex", c_uint32)]


class MetricsValue(_Struct):
    """cilium_metrics value (per CPU), in slot metrics_index(reason, dir)."""
    c_name = "metrics_value"
    _fields_ = [("count", c_uint64), ("bytes", c_uint64)]


class IpcacheKey(_Struct):
    """cilium_ipcache key (LPM): prefixlen = IPCACHE_PREFIX_BASE + address bits."""
    c_name = "ipcache_key"
    _fields_ = [("lpm_key_prefixlen", c_uint32), ("cluster_id", c_uint16), ("pad1", c_uint8),
                ("family", c_uint8), ("ip4", c_uint32)]


class RemoteEndpointInfo(_Struct):
    """cilium_ipcache value: identity and hosting node of an address."""
    c_name = "remote_endpoint_info"
    _fields_ = [("sec_identity", c_uint32), ("tunnel_endpoint", c_uint32), ("node_id", c_uint16),
                ("key", c_uint8), ("flags", c_uint8)]


class NodeConfig(_Struct):
    """dp_node_config value (index 0): this node's runtime settings."""
    c_name = "node_config"
    _fields_ = [("flags", c_uint32), ("tunnel_ifindex", c_uint32), ("node_ip", c_uint32),
                ("pad", c_uint32)]


class Lb4Key(_Struct):
    """cilium_lb4_services_v2 key: a frontend (slot 0) or a backend slot."""
    c_name = "lb4_key"
    _fields_ = [("address", c_uint32), ("dport", c_uint16), ("backend_slot", c_uint16),
                ("proto", c_uint8), ("scope", c_uint8), ("pad", c_uint8 * 2)]


class Lb4Service(_Struct):
    """cilium_lb4_services_v2 value."""
    c_name = "lb4_service"
    _fields_ = [("backend_id", c_uint32), ("count", c_uint16), ("rev_nat_index", c_uint16),
                ("flags", c_uint8), ("flags2", c_uint8), ("qcount", c_uint16)]


class Lb4Backend(_Struct):
    """cilium_lb4_backends_v3 value."""
    c_name = "lb4_backend"
    _fields_ = [("address", c_uint32), ("port", c_uint16), ("proto", c_uint8), ("flags", c_uint8),
                ("cluster_id", c_uint16), ("zone", c_uint8), ("pad", c_uint8)]


class Lb4BackendKey(_Struct):
    """cilium_lb4_backends_v3 key."""
    c_name = "lb4_backend_key"
    _fields_ = [("backend_id", c_uint32)]


class Lb4ReverseNatKey(_Struct):
    """cilium_lb4_reverse_nat key."""
    c_name = "lb4_reverse_nat_key"
    _fields_ = [("rev_nat_index", c_uint16), ("pad", c_uint16)]


class Lb4ReverseNat(_Struct):
    """cilium_lb4_reverse_nat value."""
    c_name = "lb4_reverse_nat"
    _fields_ = [("address", c_uint32), ("port", c_uint16), ("pad", c_uint16)]


class Lb4MaglevLut(_Struct):
    """cilium_lb4_maglev value at the default table size (key: Lb4ReverseNatKey)."""
    c_name = "lb4_maglev_lut"
    _fields_ = [("backend_ids", c_uint32 * LB_MAGLEV_LUT_SIZE)]


def maglev_lut_bytes(table: list[int]) -> bytes:
    """A Maglev table of any compiled size as the map value's bytes."""
    return struct.pack(f"<{len(table)}I", *table)


class Lb4AffinityKey(_Struct):
    """cilium_lb4_affinity key."""
    c_name = "lb4_affinity_key"
    _fields_ = [("client_ip", c_uint32), ("rev_nat_id", c_uint16), ("pad", c_uint16)]


class LbAffinityVal(_Struct):
    """cilium_lb4_affinity value."""
    c_name = "lb_affinity_val"
    _fields_ = [("last_used", c_uint64), ("backend_id", c_uint32), ("pad", c_uint32)]


class Ipv4CtTuple(_Struct):
    """conntrack key: a flow in one orientation."""
    c_name = "ipv4_ct_tuple"
    _fields_ = [("daddr", c_uint32), ("saddr", c_uint32), ("dport", c_uint16),
                ("sport", c_uint16), ("nexthdr", c_uint8), ("flags", c_uint8), ("pad", c_uint16)]


class CtEntry(_Struct):
    """conntrack value."""
    c_name = "ct_entry"
    _fields_ = [("backend_id", c_uint64), ("packets", c_uint64), ("bytes", c_uint64),
                ("lifetime", c_uint32), ("rev_nat_index", c_uint16), ("flags", c_uint16),
                ("src_sec_id", c_uint32), ("policy_rev", c_uint32),
                ("tx_flags_seen", c_uint8), ("rx_flags_seen", c_uint8), ("pad1", c_uint16),
                ("last_tx_report", c_uint32), ("last_rx_report", c_uint32),
                ("pad2", c_uint32)]


class Ipv4NatEntry(_Struct):
    """cilium_snat_v4_external value."""
    c_name = "ipv4_nat_entry"
    _fields_ = [("created", c_uint64), ("lifetime", c_uint32), ("to_addr", c_uint32),
                ("to_port", c_uint16), ("flags", c_uint16), ("pad2", c_uint32)]


class IpmasqKey(_Struct):
    """cilium_ipmasq_v4 key (LPM)."""
    c_name = "ipmasq_key"
    _fields_ = [("lpm_key_prefixlen", c_uint32), ("ip4", c_uint32)]


class L2ResponderV4Key(_Struct):
    """cilium_l2_responder_v4 key: an announced address on one native device."""
    c_name = "l2_responder_v4_key"
    _fields_ = [("ip4", c_uint32), ("ifindex", c_uint32)]


class L2ResponderV4Stats(_Struct):
    """cilium_l2_responder_v4 value (counted by the datapath)."""
    c_name = "l2_responder_v4_stats"
    _fields_ = [("responses_sent", c_uint64)]


class NetdevInfo(_Struct):
    """dp_netdev value (key: U32Key ifindex): a native device's MAC."""
    c_name = "netdev_info"
    _fields_ = [("mac", Mac), ("pad", c_uint16)]


class AgentLiveness(_Struct):
    """dp_agent_liveness value (index 0): the agent's heartbeat, ns of the monotonic clock."""
    c_name = "agent_liveness"
    _fields_ = [("last_seen", c_uint64), ("max_age", c_uint64)]


class U64Value(_Struct):
    """An eight-byte map value (not a struct in abi.h): a counter."""
    c_name = None
    _fields_ = [("value", c_uint64)]


class U8Value(_Struct):
    """A one-byte map value (not a struct in abi.h)."""
    c_name = None
    _fields_ = [("value", c_uint8)]


class U32Key(_Struct):
    """The u32 index of an array map (not a struct in abi.h)."""
    c_name = None
    _fields_ = [("index", c_uint32)]


class PolicyKey(_Struct):
    """cilium_policy_v2 key (LPM trie, one map for every endpoint); build it with policy_key()."""
    c_name = "policy_key"
    _fields_ = [("lpm_key_prefixlen", c_uint32), ("sec_label", c_uint32),
                ("endpoint_id", c_uint16), ("egress", c_uint8), ("protocol", c_uint8),
                ("dport", c_uint16), ("pad", c_uint16)]


class PolicyEntry(_Struct):
    """cilium_policy_v2 value: allow or deny, and the forward packets/bytes it decided."""
    c_name = "policy_entry"
    _fields_ = [("proxy_port", c_uint16), ("deny", c_uint8), ("flags", c_uint8),
                ("pad1", c_uint32), ("packets", c_uint64), ("bytes", c_uint64)]


class PolicyRevision(_Struct):
    """dp_policy_revision value (index 0): bumped by the agent after each policy map change."""
    c_name = "policy_revision"
    _fields_ = [("revision", c_uint32), ("pad", c_uint32)]


class Ipv4FragId(_Struct):
    """cilium_ipv4_frag_datagrams key: one fragmented datagram."""
    c_name = "ipv4_frag_id"
    _fields_ = [("daddr", c_uint32), ("saddr", c_uint32), ("id", c_uint16), ("proto", c_uint8),
                ("pad", c_uint8)]


class Ipv4FragL4Ports(_Struct):
    """cilium_ipv4_frag_datagrams value: the ports of the datagram's first fragment."""
    c_name = "ipv4_frag_l4ports"
    _fields_ = [("sport", c_uint16), ("dport", c_uint16)]


# ---- XDP NodePort flow cache (bpf/lib/xdp_flow.h) ----
class XdpFlow4Key(_Struct):
    """dp_xdp_flow4 key: a NodePort flow as it arrives (client -> frontend)."""
    c_name = "xdp_flow4_key"
    _fields_ = [("saddr", c_uint32), ("daddr", c_uint32), ("sport", c_uint16),
                ("dport", c_uint16), ("proto", c_uint8), ("pad", c_uint8 * 3)]


class XdpFlow4(_Struct):
    """dp_xdp_flow4 value: what an established packet of the flow needs (rewrite, next hop)."""
    c_name = "xdp_flow4"
    _fields_ = [("filled_ns", c_uint64), ("backend_id", c_uint32), ("ifindex", c_uint32),
                ("egress_ifindex", c_uint32), ("backend_addr", c_uint32),
                ("nat_addr", c_uint32), ("backend_port", c_uint16), ("nat_port", c_uint16),
                ("l3_diff", c_uint16), ("l4_diff", c_uint16), ("dmac", Mac), ("smac", Mac),
                ("flags", c_uint8), ("pad", c_uint8 * 3)]



# ---- monitor events (bpf/lib/events.h) ----
class DropNotify(_Struct):
    """cilium_events record of a drop: Cilium's drop_notify v1, a clock, the hook, the packet."""
    c_name = "drop_notify"
    _fields_ = [("type", c_uint8), ("subtype", c_uint8), ("source", c_uint16),
                ("hash", c_uint32), ("len_orig", c_uint32), ("len_cap", c_uint16),
                ("version", c_uint16), ("src_label", c_uint32), ("dst_label", c_uint32),
                ("dst_id", c_uint32), ("line", c_uint16), ("file", c_uint8),
                ("ext_error", ctypes.c_int8), ("ifindex", c_uint32), ("dir", c_uint8),
                ("hook", c_uint8), ("pad", c_uint16), ("ktime_ns", c_uint64),
                ("data", c_uint8 * TRACE_PAYLOAD_LEN)]


class TraceState(_Struct):
    """dp_trace_state value (per CPU): the packet being processed."""
    c_name = "trace_state"
    _fields_ = [("monitor", c_uint8), ("reason", c_uint8), ("hook", c_uint8),
                ("drop_dir", c_uint8), ("drop_source", c_uint16), ("pad", c_uint16)]


class TraceNotify(_Struct):
    """cilium_events record of a trace point: Cilium's trace_notify v1, a clock, the hook, the
    packet."""
    c_name = "trace_notify"
    _fields_ = [("type", c_uint8), ("subtype", c_uint8), ("source", c_uint16),
                ("hash", c_uint32), ("len_orig", c_uint32), ("len_cap", c_uint16),
                ("version", c_uint16), ("src_label", c_uint32), ("dst_label", c_uint32),
                ("dst_id", c_uint16), ("reason", c_uint8), ("flags", c_uint8),
                ("ifindex", c_uint32), ("orig_ip4", c_uint32), ("orig_pad1", c_uint32),
                ("orig_pad2", c_uint32), ("orig_pad3", c_uint32), ("hook", c_uint8),
                ("pad1", c_uint8), ("pad2", c_uint16), ("pad3", c_uint32),
                ("ktime_ns", c_uint64), ("data", c_uint8 * TRACE_PAYLOAD_LEN)]


class PolicyVerdictNotify(_Struct):
    """cilium_events record of a policy decision: Cilium's policy_verdict_notify, a clock, the
    hook, the packet."""
    c_name = "policy_verdict_notify"
    _fields_ = [("type", c_uint8), ("subtype", c_uint8), ("source", c_uint16),
                ("hash", c_uint32), ("len_orig", c_uint32), ("len_cap", c_uint16),
                ("version", c_uint16), ("remote_label", c_uint32), ("verdict", ctypes.c_int32),
                ("dst_port", c_uint16), ("proto", c_uint8), ("flags", c_uint8),
                ("auth_type", c_uint8), ("hook", c_uint8), ("pad", c_uint16),
                ("ktime_ns", c_uint64), ("data", c_uint8 * TRACE_PAYLOAD_LEN)]


STRUCTS: tuple[type[_Struct], ...] = (EndpointKey, EndpointInfo, EpIfindexKey,
                                      MetricsValue, IpcacheKey, RemoteEndpointInfo, NodeConfig,
                                      Lb4Key, Lb4Service, Lb4Backend, Lb4BackendKey,
                                      Lb4ReverseNatKey, Lb4ReverseNat, Ipv4CtTuple, CtEntry,
                                      Lb4AffinityKey, LbAffinityVal, Ipv4NatEntry, IpmasqKey,
                                      Lb4MaglevLut, L2ResponderV4Key, L2ResponderV4Stats,
                                      NetdevInfo, AgentLiveness, PolicyKey, PolicyEntry,
                                      Ipv4FragId, Ipv4FragL4Ports, PolicyRevision,
                                      XdpFlow4Key, XdpFlow4, DropNotify,
                                      TraceNotify, TraceState, PolicyVerdictNotify)


# ---- codecs ----
def ip4_to_be32(ip: str) -> int:
    """Dotted quad -> the native integer whose memory is the address in network order."""
    return int.from_bytes(socket.inet_aton(ip), "little")


def be32_to_ip4(v: int) -> str:
    return socket.inet_ntoa(int(v).to_bytes(4, "little"))


def mac_to_bytes(mac: str):
    return Mac(*bytes.fromhex(mac.replace(":", "")))


def bytes_to_mac(m) -> str:
    return ":".join(f"{b:02x}" for b in bytes(m))


def endpoint_key(ip: str) -> EndpointKey:
    return EndpointKey(ip4=ip4_to_be32(ip), family=ENDPOINT_KEY_IPV4)


def be16(port: int) -> int:
    """A port as the native integer whose memory is the port in network order (and back:
    the swap is its own inverse)."""
    return int.from_bytes(int(port).to_bytes(2, "big"), "little")


def ipmasq_key(cidr: str) -> IpmasqKey:
    ip, _, bits = cidr.partition("/")
    return IpmasqKey(lpm_key_prefixlen=int(bits or 32), ip4=ip4_to_be32(ip))


def ipcache_key(cidr: str) -> IpcacheKey:
    """'10.0.0.0/8' or '10.1.2.3' -> the LPM key."""
    ip, _, bits = cidr.partition("/")
    return IpcacheKey(lpm_key_prefixlen=IPCACHE_PREFIX_BASE + int(bits or 32),
                      family=ENDPOINT_KEY_IPV4, ip4=ip4_to_be32(ip))


def remote_endpoint_info(identity: int, tunnel_endpoint: str | None = None) -> RemoteEndpointInfo:
    return RemoteEndpointInfo(sec_identity=identity,
                              tunnel_endpoint=ip4_to_be32(tunnel_endpoint) if tunnel_endpoint else 0)


def l2_responder_key(ip: str, ifindex: int) -> L2ResponderV4Key:
    return L2ResponderV4Key(ip4=ip4_to_be32(ip), ifindex=ifindex)


def endpoint_info(*, ifindex: int, lxc_id: int, mac: str, node_mac: str, sec_id: int, ip: str,
                  flags: int = 0) -> EndpointInfo:
    return EndpointInfo(ifindex=ifindex, lxc_id=lxc_id, flags=flags, mac=mac_to_bytes(mac),
                        node_mac=mac_to_bytes(node_mac), sec_id=sec_id, ip4=ip4_to_be32(ip))


def policy_key(endpoint_id: int, identity: int, egress, proto: int = 0, port: int = 0,
               port_prefix: int = 16) -> PolicyKey:
    """A cilium_policy_v2 key. identity 0 = any peer; egress: POLICY_EGRESS / True or
    POLICY_INGRESS / False. proto 0 = any protocol (prefix POLICY_PREFIX_BASE; port ignored);
    else the prefix covers the protocol and the top port_prefix bits of port (host order; 0 =
    every port of the protocol, 16 = exactly port; the bits below the prefix are zeroed)."""
    if not 0 <= port_prefix <= 16:
        raise ValueError(f"port_prefix must be 0..16, not {port_prefix}")
    key = PolicyKey(lpm_key_prefixlen=POLICY_PREFIX_BASE, sec_label=identity,
                    endpoint_id=endpoint_id, egress=POLICY_EGRESS if egress else POLICY_INGRESS)
    if proto:
        mask = (0xFFFF << (16 - port_prefix)) & 0xFFFF
        key.lpm_key_prefixlen = POLICY_PREFIX_BASE + 8 + port_prefix
        key.protocol = proto
        key.dport = be16(int(port) & mask)
    return key


def policy_entry(deny: bool = False, flags: int = 0) -> PolicyEntry:
    """A cilium_policy_v2 value: allow (the default) or deny, POLICY_ENTRY_F_* flags, counters
    at 0."""
    return PolicyEntry(deny=1 if deny else 0, flags=flags)


def policy_entry_flags(proto: int, port_prefix: int, enforced: bool) -> int:
    """The POLICY_ENTRY_F_* flags of an entry whose key names proto (0: any) and port_prefix
    port bits (0: any port), in a direction the endpoint enforces or not."""
    return ((POLICY_ENTRY_F_PROTO if proto else 0) |
            (POLICY_ENTRY_F_PORT if proto and port_prefix else 0) |
            (POLICY_ENTRY_F_LOG if enforced else 0))
