"""Cluster state in etcd, as Cilium's kvstore mode keeps it.

The client speaks etcd's v3 JSON gateway (HTTP + JSON, base64 keys and values), which Debian's
etcd-server serves on its client port. We use it instead of a Python gRPC client because the
maintained-looking PyPI clients pin old grpcio/protobuf releases, while the gateway is part of
etcd itself and needs nothing beyond the standard library; the typed surface we need (range, put,
delete, txn, leases) is small.

Keys (under the cluster name):
    cilium/state/identities/v1/id/<id>            -> label key     (no lease: identities persist)
    cilium/state/identities/v1/value/<label key>  -> id
    cilium/state/nodes/v1/<cluster>/<node>        -> node JSON      (under the node's lease)
    cilium/state/ip/v1/<cluster>/<ip>             -> endpoint JSON  (under the node's lease)
    cilium/state/l2announce/v1/<cluster>/<ns>/<svc> -> leader's node name (under its L2 lease)

API:
    EtcdClient(endpoints)        get, get_prefix, put, delete, txn_create, delete_if, lease_*
    EtcdIdentityStore(client)    allocate(labels) -> (id, created), race-free through a txn
"""
from __future__ import annotations

import base64
import json
import logging
import urllib.error
import urllib.request
from typing import Iterable

from datapath.errors import KVStoreError

from .identity import MAX_CLUSTER_IDENTITY, MIN_CLUSTER_IDENTITY, label_key

log = logging.getLogger("datapath.kvstore")

IDENTITY_PREFIX = "cilium/state/identities/v1/"
NODES_PREFIX = "cilium/state/nodes/v1/"
IP_PREFIX = "cilium/state/ip/v1/"
L2_PREFIX = "cilium/state/l2announce/v1/"


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def _unb64(s: str) -> str:
    return base64.b64decode(s).decode()


def _range_end(prefix: str) -> str:
    b = bytearray(prefix.encode())
    b[-1] += 1
    return base64.b64encode(bytes(b)).decode()


class EtcdClient:
    def __init__(self, endpoints: Iterable[str], timeout: float = 3.0):
        self.endpoints = list(endpoints)
        if not self.endpoints:
            raise KVStoreError("no etcd endpoints configured")
        self.timeout = timeout

    def _post(self, path: str, body: dict) -> dict:
        last = None
        for ep in self.endpoints:
            req = urllib.request.Request(f"{ep}/v3/{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    return json.loads(r.read() or b"{}")
            except urllib.error.HTTPError as e:
                detail = e.read().decode(errors="replace")
                raise KVStoreError(f"etcd {path}: HTTP {e.code}: {detail}") from e
            except (urllib.error.URLError, OSError, ValueError) as e:
                last = e
        raise KVStoreError(f"etcd unreachable at {', '.join(self.endpoints)}: {last}")

    # ---- kv ----
    def get(self, key: str) -> str | None:
        kvs = self._post("kv/range", {"key": _b64(key)}).get("kvs") or []
        return _unb64(kvs[0].get("value", "")) if kvs else None

    def get_prefix(self, prefix: str) -> dict[str, str]:
        out = self._post("kv/range", {"key": _b64(prefix), "range_end": _range_end(prefix)})
        return {_unb64(kv["key"]): _unb64(kv.get("value", "")) for kv in out.get("kvs") or []}

    def put(self, key: str, value: str, lease: int | None = None) -> None:
        body = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        self._post("kv/put", body)

    def delete(self, key: str) -> None:
        self._post("kv/deleterange", {"key": _b64(key)})

    def delete_prefix(self, prefix: str) -> None:
        self._post("kv/deleterange", {"key": _b64(prefix), "range_end": _range_end(prefix)})

    def txn_create(self, absent: list[str], puts: list[tuple[str, str]],
                   lease: int | None = None) -> bool:
        """Put every (key, value), under `lease` when given, only if every key in `absent` does
        not exist; True if it did."""
        body = {"compare": [{"key": _b64(k), "target": "CREATE", "result": "EQUAL",
                             "create_revision": "0"} for k in absent],
                "success": [{"request_put": {"key": _b64(k), "value": _b64(v),
                                             **({"lease": str(lease)} if lease else {})}}
                            for k, v in puts]}
        return bool(self._post("kv/txn", body).get("succeeded"))

    def delete_if(self, key: str, value: str) -> bool:
        """Delete `key` only while it holds `value`; True if it did."""
        body = {"compare": [{"key": _b64(key), "target": "VALUE", "result": "EQUAL",
                             "value": _b64(value)}],
                "success": [{"request_delete_range": {"key": _b64(key)}}]}
        return bool(self._post("kv/txn", body).get("succeeded"))

    # ---- leases ----
    def lease_grant(self, ttl: int) -> int:
        return int(self._post("lease/grant", {"TTL": str(ttl)})["ID"])

    def lease_keepalive(self, lease: int) -> int:
        """Refresh a lease; returns its TTL, 0 when it has expired."""
        out = self._post("lease/keepalive", {"ID": str(lease)})
        return int((out.get("result") or out).get("TTL", 0) or 0)

    def lease_revoke(self, lease: int) -> None:
        self._post("lease/revoke", {"ID": str(lease)})


class EtcdIdentityStore:
    """Cluster-wide identities: the same label set gets the same number on every node."""

    def __init__(self, client: EtcdClient, retries: int = 64):
        self.client = client
        self.retries = retries
        self.table: dict[str, int] = {}         # local cache: label key -> id

    def allocate(self, labels: Iterable[str]) -> tuple[int, bool]:
        key = label_key(labels)
        if key in self.table:               # identities persist: a known label set is settled
            return self.table[key], False
        vkey = IDENTITY_PREFIX + "value/" + key
        for _ in range(self.retries):
            have = self.client.get(vkey)
            if have is not None:
                self.table[key] = int(have)
                return int(have), False
            used = {int(k.rsplit("/", 1)[1]) for k in
                    self.client.get_prefix(IDENTITY_PREFIX + "id/")}
            cand = next((n for n in range(MIN_CLUSTER_IDENTITY, MAX_CLUSTER_IDENTITY + 1)
                         if n not in used), None)
            if cand is None:
                raise KVStoreError("identity space exhausted")
            ikey = IDENTITY_PREFIX + f"id/{cand}"
            if self.client.txn_create([vkey, ikey], [(ikey, key), (vkey, str(cand))]):
                self.table[key] = cand
                return cand, True
            # lost a race: either this label set got an id (read it next turn) or the id is taken
        raise KVStoreError(f"could not allocate an identity for {key} after {self.retries} tries")

    def labels_of(self, ident: int) -> tuple[str, ...] | None:
        v = self.client.get(IDENTITY_PREFIX + f"id/{ident}")
        return tuple(v.split(";")) if v else None

    def items(self) -> list[tuple[int, tuple[str, ...]]]:
        out = self.client.get_prefix(IDENTITY_PREFIX + "id/")
        return sorted((int(k.rsplit("/", 1)[1]), tuple(v.split(";"))) for k, v in out.items())
