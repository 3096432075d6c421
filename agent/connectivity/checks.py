"""The connectivity checks, named as `cilium connectivity test` names its tests, built as plain
data from what the lab and the agents report (no I/O here).

Owns: which checks exist, what each sends where, and what it must see: an answer (from one of
the named backends, so a service that answers from the wrong pod fails) or a drop.

API:
    Env(nodes, pods, services, hosts)        nodes [(name, ip)] in topology order; pods
                                             {ns/name: ip}; services {key: Frontends}; hosts
                                             {name: ip} (the lab's external hosts)
    plan(env) -> list[Check]                 every check, in run order (phases grouped)
    PHASES                                   policy phases, in order
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .resources import (CLIENT, ECHO_OTHER, ECHO_PORT, ECHO_SAME, PEER_CLIENT, SERVICES)

PHASES = ("none", "deny-all", "allow-from-namespace")
WORLD_PORT = ECHO_PORT


@dataclass(frozen=True)
class Frontends:
    cluster_ip: str | None = None
    node_port: int | None = None
    lb_ip: str | None = None


@dataclass(frozen=True)
class Env:
    nodes: list[tuple[str, str]]
    pods: dict[str, str]
    services: dict[str, Frontends]
    hosts: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Check:
    name: str                       # e.g. pod-to-pod/same-node
    src: str                        # a pod (ns/name) or a lab host's name
    dst: str                        # ip:port (HTTP) or ip (ICMP)
    what: str                       # the target, for people: a pod, a service, a node
    expect: str = "answer"          # "answer" | "drop"
    backends: tuple[str, ...] = ()  # pod names one of which must answer (empty: anyone)
    proto: str = "http"             # "http" | "icmp"
    phase: str = "none"             # PHASES
    skip: str = ""                  # why it cannot run on this lab ("" : it runs)


def _name(pod_key: str) -> str:
    return pod_key.split("/", 1)[1]


def plan(env: Env) -> list[Check]:
    pods, svc = env.pods, env.services
    same, other = pods.get(ECHO_SAME), pods.get(ECHO_OTHER)
    no_other = "" if other and len(env.nodes) > 1 else "the lab has one node"
    no_host = "" if env.hosts else "the topology has no external host"
    cip_same = svc.get(SERVICES["cluster-ip"], Frontends())
    nport = svc.get(SERVICES["node-port"], Frontends())
    lb = svc.get(SERVICES["load-balancer"], Frontends())
    echo_same, echo_other = _name(ECHO_SAME), _name(ECHO_OTHER)
    out = [
        Check("pod-to-pod/same-node", CLIENT, f"{same}:{ECHO_PORT}", ECHO_SAME,
              backends=(echo_same,)),
        Check("pod-to-pod/other-node", CLIENT, f"{other}:{ECHO_PORT}", ECHO_OTHER,
              backends=(echo_other,), skip=no_other),
    ]
    for i, (node, ip) in enumerate(env.nodes[:2]):
        out.append(Check(f"pod-to-host/{'same' if i == 0 else 'other'}-node", CLIENT, ip,
                         f"node {node}", proto="icmp"))
    out += [
        Check("pod-to-service/cluster-ip", CLIENT, f"{cip_same.cluster_ip}:{ECHO_PORT}",
              f"service {SERVICES['cluster-ip']}", backends=(echo_same,)),
        Check("pod-to-service/cluster-ip-other-node", CLIENT,
              f"{nport.cluster_ip}:{ECHO_PORT}", f"service {SERVICES['node-port']}",
              backends=(echo_other,), skip=no_other),
    ]
    for node, ip in env.nodes:
        out.append(Check(f"pod-to-service/node-port/{node}", CLIENT, f"{ip}:{nport.node_port}",
                         f"service {SERVICES['node-port']} on node {node}",
                         backends=(echo_other,), skip=no_other))
    host = next(iter(sorted(env.hosts.items())), None)
    for node, ip in env.nodes:
        out.append(Check(f"outside-to-service/node-port/{node}", host[0] if host else "",
                         f"{ip}:{nport.node_port}",
                         f"service {SERVICES['node-port']} on node {node}",
                         backends=(echo_other,), skip=no_other or no_host))
    out += [
        Check("pod-to-service/load-balancer", CLIENT, f"{lb.lb_ip}:{ECHO_PORT}",
              f"service {SERVICES['load-balancer']}",
              backends=(echo_same,) + ((echo_other,) if other else ()),
              skip="" if lb.lb_ip else "no LoadBalancer IP was allocated"),
        Check("pod-to-world", CLIENT, f"{host[1]}:{WORLD_PORT}" if host else "",
              f"external host {host[0]}" if host else "an external host",
              backends=(host[0],) if host else (), skip=no_host),
        # policy: deny-all ingress on the echo pods, then allow from the test's namespace
        Check("policy/deny-all-ingress/pod-to-pod", CLIENT, f"{same}:{ECHO_PORT}", ECHO_SAME,
              expect="drop", phase="deny-all"),
        Check("policy/deny-all-ingress/pod-to-service", CLIENT,
              f"{cip_same.cluster_ip}:{ECHO_PORT}", f"service {SERVICES['cluster-ip']}",
              expect="drop", phase="deny-all"),
        Check("policy/allow-from-namespace/same-namespace", CLIENT, f"{same}:{ECHO_PORT}",
              ECHO_SAME, backends=(echo_same,), phase="allow-from-namespace"),
        Check("policy/allow-from-namespace/same-namespace-other-node", CLIENT,
              f"{other}:{ECHO_PORT}", ECHO_OTHER, backends=(echo_other,),
              phase="allow-from-namespace", skip=no_other),
        Check("policy/allow-from-namespace/other-namespace", PEER_CLIENT, f"{same}:{ECHO_PORT}",
              ECHO_SAME, expect="drop", phase="allow-from-namespace"),
    ]
    return out
