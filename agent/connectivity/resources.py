"""The connectivity test's own objects, as manifests in the lab's manifests directory (the lab
creates the pods, every agent programs the services and policies, as `kubectl apply` would).

Owns: the names, labels and ports of the test's objects, and the manifest text of each phase.
Two namespaces: cilium-test (client, echo-same-node on the first node, echo-other-node on the
second) and cilium-test-peer (a client that the namespace policy must keep out). Services:
echo-same-node (ClusterIP), echo-other-node (NodePort), echo-lb (LoadBalancer, its address
from a pool of the test's own that selects only it).

API:
    objects(nodes) -> str                    every object of the test, one YAML stream
    pod_keys(n_nodes) -> set[str]            the pods objects() declares
    DENY_ALL, ALLOW_FROM_NS -> str           the policy phases' manifests
    FILE, POLICY_FILE                        their file names in the manifests directory
"""
from __future__ import annotations

NS, PEER_NS = "cilium-test", "cilium-test-peer"
FILE = "zz-connectivity-test.yaml"
POLICY_FILE = "zz-connectivity-test-policy.yaml"
ECHO_PORT = 8080
IPERF_PORT, RR_PORT = 5201, 5202        # connectivity perf: iperf3 and request/response servers
TEST_LABEL = "io.cilium/connectivity-test"
POOL_BLOCK = ("198.51.100.200", "198.51.100.207")
CLIENT, PEER_CLIENT = f"{NS}/client", f"{PEER_NS}/client"
ECHO_SAME, ECHO_OTHER = f"{NS}/echo-same-node", f"{NS}/echo-other-node"
SERVICES = {"cluster-ip": f"{NS}/echo-same-node", "node-port": f"{NS}/echo-other-node",
            "load-balancer": f"{NS}/echo-lb"}


def _namespace(name: str) -> str:
    return (f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n"
            f"    kubernetes.io/metadata.name: {name}\n")


def _pod(ns: str, name: str, node: str, labels: dict, command: list[str]) -> str:
    lab = "".join(f"\n    {k}: {v}" for k, v in labels.items())
    cmd = ", ".join(f'"{c}"' for c in command)
    # only the echo server is the pod's own; perf starts its servers in the pod when it runs
    port = (f"\n      ports:\n        - {{name: http, containerPort: {ECHO_PORT}}}"
            if labels.get("kind") == "echo" else "")
    return (f"apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n"
            f"  labels:{lab}\nspec:\n  nodeName: {node}\n  containers:\n"
            f"    - name: main\n      image: datapath/connectivity\n      command: [{cmd}]{port}\n")


def _service(name: str, kind: str, selector: dict) -> str:
    sel = ", ".join(f"{k}: {v}" for k, v in selector.items())
    return (f"apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {NS}\n"
            f"  labels: {{{TEST_LABEL}: {name}}}\nspec:\n  type: {kind}\n"
            f"  selector: {{{sel}}}\n  ports: [{{name: http, port: {ECHO_PORT}, "
            f"targetPort: http}}, {{name: iperf, port: {IPERF_PORT}, targetPort: {IPERF_PORT}}}, "
            f"{{name: rr, port: {RR_PORT}, targetPort: {RR_PORT}}}]\n")


def objects(nodes: list[str]) -> str:
    """nodes: the lab's nodes in topology order; echo-other-node only with a second node."""
    echo = ["datapath", "whoami", "--port", str(ECHO_PORT)]
    sleep = ["sleep", "infinity"]
    docs = [_namespace(NS), _namespace(PEER_NS),
            _pod(NS, "client", nodes[0], {"kind": "client", "name": "client"}, sleep),
            _pod(PEER_NS, "client", nodes[0], {"kind": "client", "name": "client"}, sleep),
            _pod(NS, "echo-same-node", nodes[0], {"kind": "echo", "name": "echo-same-node"},
                 echo),
            _service("echo-same-node", "ClusterIP", {"name": "echo-same-node"}),
            _service("echo-lb", "LoadBalancer", {"kind": "echo"}),
            (f"apiVersion: cilium.io/v2alpha1\nkind: CiliumLoadBalancerIPPool\nmetadata:\n"
             f"  name: cilium-test-pool\nspec:\n  blocks: [{{start: {POOL_BLOCK[0]}, "
             f"stop: {POOL_BLOCK[1]}}}]\n  serviceSelector:\n    matchLabels: "
             f"{{{TEST_LABEL}: echo-lb}}\n")]
    if len(nodes) > 1:
        docs += [_pod(NS, "echo-other-node", nodes[1],
                      {"kind": "echo", "name": "echo-other-node"}, echo),
                 _service("echo-other-node", "NodePort", {"name": "echo-other-node"})]
    return "---\n".join(docs)


def pod_keys(n_nodes: int) -> set[str]:
    return {CLIENT, PEER_CLIENT, ECHO_SAME} | ({ECHO_OTHER} if n_nodes > 1 else set())


DENY_ALL = f"""apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: connectivity-deny-all-ingress, namespace: {NS}}}
spec:
  podSelector: {{matchLabels: {{kind: echo}}}}
  policyTypes: [Ingress]
"""
ALLOW_FROM_NS = DENY_ALL + f"""---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: connectivity-allow-from-{NS}, namespace: {NS}}}
spec:
  podSelector: {{matchLabels: {{kind: echo}}}}
  policyTypes: [Ingress]
  ingress:
    - from:
        - namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {NS}}}}}
"""
POLICY_NAMES = {"deny-all": ("connectivity-deny-all-ingress",),
                "allow-from-namespace": ("connectivity-deny-all-ingress",
                                         f"connectivity-allow-from-{NS}")}
