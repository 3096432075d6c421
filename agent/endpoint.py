"""Endpoints: one per pod network interface, in Cilium's states.

    waiting-for-identity -> regenerating -> ready            (created, or restored after restart)
    ready -> regenerating -> ready                            (identity or datapath change)
    any -> disconnecting -> disconnected (removed)            (CNI DEL, pod deleted)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from datapath import abi

MAX_ENDPOINT_ID = 65535     # policy keys hold the endpoint id in 16 bits

STATES = ("waiting-for-identity", "not-ready", "waiting-to-regenerate", "regenerating",
          "restoring", "ready", "disconnecting", "disconnected", "invalid")


@dataclass
class Endpoint:
    id: int
    container_id: str
    namespace: str
    pod: str
    ifname: str                 # pod-side interface name (eth0)
    host_ifname: str            # lxc...
    host_ifindex: int
    ip: str
    mac: str                    # pod-side MAC
    host_mac: str               # lxc MAC
    netns: str
    labels: list[str] = field(default_factory=list)     # security labels (k8s:...)
    pod_labels: dict = field(default_factory=dict)      # labels given through the API
    identity: int = 0
    state: str = "waiting-for-identity"
    from_manifest: bool = False

    @property
    def pod_key(self) -> str:
        return f"{self.namespace}/{self.pod}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Endpoint":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def map_entries(self) -> dict[str, tuple[bytes, bytes]]:
        """This endpoint's rows in cilium_lxc and dp_ep_ifindex (a copy of the same info, so
        from-container finds its sender in one lookup)."""
        key = abi.endpoint_key(self.ip)
        info = abi.endpoint_info(ifindex=self.host_ifindex, lxc_id=self.id, mac=self.mac,
                                 node_mac=self.host_mac, sec_id=self.identity, ip=self.ip)
        return {"cilium_lxc": (bytes(key), bytes(info)),
                "dp_ep_ifindex": (bytes(abi.EpIfindexKey(self.host_ifindex)), bytes(info))}


def next_endpoint_id(used: set[int], start: int) -> int:
    """The first free endpoint id from `start` on, wrapping to 1 after MAX_ENDPOINT_ID (ids of
    removed endpoints come back only after a full turn)."""
    n = start if 1 <= start <= MAX_ENDPOINT_ID else 1
    for _ in range(MAX_ENDPOINT_ID):
        if n not in used:
            return n
        n = n + 1 if n < MAX_ENDPOINT_ID else 1
    raise RuntimeError("no free endpoint id")
