#!/usr/bin/env bash
# k8s-rtr: forwards between the node segment and the external segment; knows no pod CIDR.
set -euo pipefail
sysctl -qw net.ipv4.ip_forward=1
echo "net.ipv4.ip_forward=1" > /etc/sysctl.d/90-datapath-router.conf
