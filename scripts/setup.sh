#!/usr/bin/env bash
# Installs what datapath needs on a Debian 12 / Ubuntu 24.04 machine, as root, idempotently:
# apt packages, a kernel-header link for BCC (only when the running kernel has none), bpffs at
# /sys/fs/bpf, and a venv with system site packages (so Debian's `bcc` imports) holding this project.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
say() { printf 'setup: %s\n' "$*"; }

[ "$(id -u)" = 0 ] || { echo "setup: must run as root (BPF, netns and tc need it)" >&2; exit 1; }

# prometheus: promtool; etcd-server: the multi-node lab's kvstore; vagrant + systemd: the checks
# on vagrant/ (`vagrant validate`, `systemd-analyze verify`); iptables + nftables: checking that the
# agent adds no rule; wrk: the lab request-rate bench (bench/lab_rate.py); python3-matplotlib: the
# bench charts (bench/charts.py, PNGs next to the JSON); iperf3: the throughput bench
# (bench/throughput.py); clang llvm bpftool libbpf-dev: building Katran's XDP program for the
# per-packet bench beside ours (../shared/bench/pktbench, used by bench/packet.py)
APT_PKGS="bpfcc-tools python3-bpfcc libbpfcc iproute2 iputils-ping curl prometheus python3-venv
          util-linux procps tcpdump ethtool make etcd-server vagrant systemd iptables nftables wrk
          python3-matplotlib iperf3 clang llvm bpftool libbpf-dev"
missing=""
for p in $APT_PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  say "installing apt packages:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
  # packages we install only for their tools must not leave services running on this host
  if [ -d /run/systemd/system ]; then
    for svc in etcd prometheus prometheus-node-exporter iperf3; do
      case " $missing " in *" ${svc%%-*}"*) systemctl disable --now "$svc" >/dev/null 2>&1 || true ;; esac
    done
  fi
fi

# BCC compiles against /lib/modules/$(uname -r)/build. Prefer the running kernel's own headers;
# when the distribution has none for it, link the newest generic headers it ships.
K=/lib/modules/$(uname -r)
headers_ok() { [ -e "$K/build/Makefile" ] && { [ -e "$K/build/include/linux/kconfig.h" ] || [ -e "$K/source/include/linux/kconfig.h" ]; }; }
if ! headers_ok; then
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq --no-install-recommends "linux-headers-$(uname -r)" >/dev/null 2>&1; then
    meta=linux-headers-amd64
    grep -qi ubuntu /etc/os-release && meta=linux-headers-generic
    apt-get install -y -qq --no-install-recommends "$meta" >/dev/null 2>&1 || {
      apt-get update -qq; apt-get install -y -qq --no-install-recommends "$meta" >/dev/null; }
  fi
  if ! headers_ok; then
    H=$(ls -d /usr/src/linux-headers-*-amd64 /usr/src/linux-headers-*-generic 2>/dev/null | sort -V | tail -1 || true)
    [ -n "$H" ] || { echo "setup: no kernel headers found under /usr/src" >&2; exit 1; }
    say "kernel $(uname -r) has no headers: linking $H as $K/build"
    mkdir -p "$K"
    ln -sfn "$H" "$K/build"
    common="${H%-amd64}-common"; common="${common%-generic}"
    [ -d "$common" ] && ln -sfn "$common" "$K/source"
  fi
fi

if ! mountpoint -q /sys/fs/bpf; then
  say "mounting bpffs at /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf
fi

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import bcc' 2>/dev/null; then
  say "creating venv $VENV (system site packages, for Debian's bcc)"
  rm -rf "$VENV"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
stamp="$VENV/.installed-$(cat pyproject.toml | sha1sum | cut -c1-12)"
if [ ! -e "$stamp" ]; then
  say "installing datapath into $VENV"
  "$VENV/bin/pip" install -q --upgrade pip > "$VENV/pip.log" 2>&1 || { cat "$VENV/pip.log"; exit 1; }
  "$VENV/bin/pip" install -q -e '.[test]' >> "$VENV/pip.log" 2>&1 || { cat "$VENV/pip.log"; exit 1; }
  rm -f "$VENV"/.installed-*; touch "$stamp"
fi
