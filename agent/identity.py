"""Security identities: a label set -> a number, as Cilium allocates them.

Reserved identities keep Cilium's numbers; every distinct pod label set gets one >= 256 from the
backing store (the embedded local store here; a kvstore later), so the same labels always get the
same number and a label change moves an endpoint to another identity.

API:
    RESERVED                          name -> number
    security_labels(pod, ns_labels)   the sorted label set Cilium derives for a pod
    LocalIdentityStore(table)         allocate(labels) -> (id, created); labels_of(id); items()
"""
from __future__ import annotations

from typing import Iterable, Mapping

RESERVED = {"host": 1, "world": 2, "unmanaged": 3, "health": 4, "init": 5, "remote-node": 6,
            "kube-apiserver": 7, "ingress": 8}
MIN_CLUSTER_IDENTITY = 256
MAX_CLUSTER_IDENTITY = 65535


def security_labels(namespace: str, pod_labels: Mapping[str, str],
                    ns_labels: Mapping[str, str], service_account: str = "default",
                    cluster: str = "default") -> tuple[str, ...]:
    """Cilium's identity-relevant labels for a pod: its labels, its namespace (and the
    namespace's labels), service account and cluster, each with the k8s: source prefix."""
    out = {f"k8s:{k}={v}" for k, v in pod_labels.items()}
    out.add(f"k8s:io.kubernetes.pod.namespace={namespace}")
    out |= {f"k8s:io.cilium.k8s.namespace.labels.{k}={v}" for k, v in ns_labels.items()}
    out.add(f"k8s:io.cilium.k8s.policy.serviceaccount={service_account}")
    out.add(f"k8s:io.cilium.k8s.policy.cluster={cluster}")
    return tuple(sorted(out))


def label_key(labels: Iterable[str]) -> str:
    return ";".join(sorted(labels))


class LocalIdentityStore:
    """The embedded store: a dict {label_key: id} that lives in the agent's state file."""

    def __init__(self, table: dict[str, int]):
        self.table = table

    def allocate(self, labels: Iterable[str]) -> tuple[int, bool]:
        key = label_key(labels)
        if key in self.table:
            return self.table[key], False
        used = set(self.table.values())
        for n in range(MIN_CLUSTER_IDENTITY, MAX_CLUSTER_IDENTITY + 1):
            if n not in used:
                self.table[key] = n
                return n, True
        raise RuntimeError("identity space exhausted")

    def labels_of(self, ident: int) -> tuple[str, ...] | None:
        for key, n in self.table.items():
            if n == ident:
                return tuple(key.split(";")) if key else ()
        return None

    def items(self) -> list[tuple[int, tuple[str, ...]]]:
        return sorted((n, tuple(k.split(";"))) for k, n in self.table.items())
