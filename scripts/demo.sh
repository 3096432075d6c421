#!/usr/bin/env bash
# `make demo`: bring up the lab (node k8s-ctr, webpod-1..3 and curl-pod), send a pod-to-pod
# request through the datapath, and show what the agent reports.
set -euo pipefail
cd "$(dirname "$0")/.."
D=.venv/bin/datapath
$D lab up
echo
$D lab status
web=$($D lab status -o json | .venv/bin/python -c 'import json,sys; print([p["ip"] for p in json.load(sys.stdin)["pods"] if p["name"]=="default/webpod-1"][0])')
echo
echo "\$ datapath lab exec curl-pod -- curl -s http://$web/   (pod to pod, straight veth to veth)"
$D lab exec curl-pod -- curl -s -m 5 "http://$web/"
echo
echo "\$ datapath status"
$D lab exec k8s-ctr -- datapath status
echo
echo "\$ datapath endpoint list"
$D lab exec k8s-ctr -- datapath endpoint list
echo
echo "Metrics: http://192.168.10.100:9962/metrics (inside the lab network; e.g."
echo "  .venv/bin/datapath lab exec k8s-ctr -- curl -s http://192.168.10.100:9962/metrics)"
$D lab exec k8s-ctr -- curl -s http://192.168.10.100:9962/metrics | grep -E '^cilium_(forward|drop)_count_total' || true
echo
echo "Tear down with: .venv/bin/datapath lab down"
