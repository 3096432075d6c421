"""Read-only views of the datapath's own tables for the CLI's `bpf` commands: conntrack,
services and NAT, decoded from the pinned maps as the `cilium bpf ... list` commands show them.

API:
    routes(dp) -> {(method, path): handler}     GET /v1/bpf/ct, /v1/bpf/lb, /v1/bpf/nat
"""
from __future__ import annotations

import time

from datapath import abi

from . import ctgc


def routes(dp) -> dict:
    def bpf_ct(_p, _b):
        now = time.monotonic()
        out = []
        for name, proto in ctgc.CT_MAPS.items():
            for k, v in dp.maps[name].items():
                out.append({
                    "map": name, "protocol": proto,
                    "tuple": f"{abi.be32_to_ip4(k.saddr)}:{abi.be16(k.sport)} -> "
                             f"{abi.be32_to_ip4(k.daddr)}:{abi.be16(k.dport)}",
                    "nexthdr": k.nexthdr, "flags": k.flags,
                    "expires_in": int(v.lifetime - now), "backend_id": v.backend_id,
                    "rev_nat_index": v.rev_nat_index, "packets": v.packets,
                    "bytes": v.bytes, "src_sec_id": v.src_sec_id, "entry_flags": v.flags})
        return sorted(out, key=lambda e: (e["map"], e["tuple"]))

    def bpf_lb(_p, _b):
        backends = {k.backend_id: v for k, v in
                    dp.maps["cilium_lb4_backends_v3"].items()}
        out = []
        for k, v in dp.maps["cilium_lb4_services_v2"].items():
            fe = f"{abi.be32_to_ip4(k.address)}:{abi.be16(k.dport)}/{k.proto}"
            if k.backend_slot == 0:
                desc = f"0.0.0.0:0 ({v.rev_nat_index}) [{v.count} backends]"
            else:
                b = backends.get(v.backend_id)
                addr = f"{abi.be32_to_ip4(b.address)}:{abi.be16(b.port)}" if b else "?"
                desc = f"{addr} ({v.rev_nat_index})"
            out.append({"service": fe, "slot": k.backend_slot, "backend": desc,
                        "backend_id": v.backend_id if k.backend_slot else 0})
        return sorted(out, key=lambda e: (e["service"], e["slot"]))

    def bpf_nat(_p, _b):
        now = time.monotonic()
        protos = {6: "TCP", 17: "UDP", 1: "ICMP"}
        out = []
        for k, v in dp.maps["cilium_snat_v4_external"].items():
            egress = k.flags == abi.NAT_DIR_EGRESS
            out.append({
                "protocol": protos.get(k.nexthdr, str(k.nexthdr)),
                "direction": "OUT" if egress else "IN",
                "tuple": f"{abi.be32_to_ip4(k.saddr)}:{abi.be16(k.sport)} -> "
                         f"{abi.be32_to_ip4(k.daddr)}:{abi.be16(k.dport)}",
                "xlate": ("XLATE_SRC " if egress else "XLATE_DST ")
                         + f"{abi.be32_to_ip4(v.to_addr)}:{abi.be16(v.to_port)}",
                "created_ago": int(now - v.created), "expires_in": int(v.lifetime - now)})
        return sorted(out, key=lambda e: (e["direction"], e["tuple"]))


    return {("GET", "/v1/bpf/ct"): bpf_ct,
            ("GET", "/v1/bpf/lb"): bpf_lb,
            ("GET", "/v1/bpf/nat"): bpf_nat}
