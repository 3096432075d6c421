#!/usr/bin/env bash
# `make demo`: bring up the lab (nodes k8s-ctr, k8s-w1, k8s-w2 with etcd, a router and an external
# host; webpod-1..3 spread over the nodes and curl-pod on k8s-ctr), send pod-to-pod requests
# through the datapath (same node and across nodes), show what the agents report, run the
# connectivity test and show the drops it caused on purpose.
set -euo pipefail
cd "$(dirname "$0")/.."
D=.venv/bin/datapath
$D lab up
echo
$D lab status
ip_of() { $D lab status -o json | .venv/bin/python -c 'import json,sys; print([p["ip"] for p in json.load(sys.stdin)["pods"] if p["name"]=="default/"+sys.argv[1]][0])' "$1"; }
web1=$(ip_of webpod-1); web2=$(ip_of webpod-2)
echo
echo "\$ datapath lab exec curl-pod -- curl -s http://$web1/   (same node: veth to veth)"
$D lab exec curl-pod -- curl -s -m 5 "http://$web1/"
echo
echo "\$ datapath lab exec curl-pod -- curl -s http://$web2/   (k8s-ctr -> k8s-w1, native routing)"
$D lab exec curl-pod -- curl -s -m 5 "http://$web2/"
echo
echo "\$ datapath service list"
$D lab exec k8s-ctr -- datapath service list
vip=$($D lab exec k8s-ctr -- datapath service list -o json | .venv/bin/python -c 'import json,sys; print([s["frontend"].split(":")[0] for s in json.load(sys.stdin) if s["service"]=="default/webpod"][0])')
echo
echo "\$ datapath lab exec curl-pod -- curl -s http://$vip/api   (ClusterIP, x6: backends on all nodes)"
for _ in 1 2 3 4 5 6; do $D lab exec curl-pod -- curl -s -m 5 "http://$vip/api"; done
echo
echo "\$ datapath status"
$D lab exec k8s-ctr -- datapath status
echo
echo "\$ datapath endpoint list"
$D lab exec k8s-ctr -- datapath endpoint list
echo
echo "\$ datapath connectivity test   (its own pods and services, 19 named checks, then removed)"
$D connectivity test
echo
echo "\$ datapath lab observe --verdict DROPPED --last 3   (the drops its policy checks expected)"
$D lab observe --verdict DROPPED --last 3
echo
echo "Metrics: http://192.168.10.100:9962/metrics (inside the lab network; e.g."
echo "  .venv/bin/datapath lab exec k8s-ctr -- curl -s http://192.168.10.100:9962/metrics)"
$D lab exec k8s-ctr -- curl -s http://192.168.10.100:9962/metrics | grep -E '^cilium_(forward|drop)_count_total' || true
echo
echo "Tunnel mode: .venv/bin/datapath lab down && .venv/bin/datapath lab up --routing-mode tunnel"
echo "Tear down with: .venv/bin/datapath lab down"
