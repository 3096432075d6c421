#!/usr/bin/env bash
# Provision one lab node: install the project from the synced repo, etcd on the etcd node, the
# agent config and manifests, and the two systemd units. Idempotent (safe to re-provision).
set -euo pipefail
: "${NODE_NAME:?}" "${NODE_IP:?}" "${POD_CIDR:?}" "${ETCD_IP:?}" "${RUN_ETCD:?}"
: "${ROUTING_MODE:=native}" "${ROUTER_IP:=}" "${LEASE_TTL:=15}"
SRC=/opt/datapath
VENV=/opt/datapath-venv
export DEBIAN_FRONTEND=noninteractive

apt-get update -qq
apt-get install -y -qq make git >/dev/null
(cd "$SRC" && VENV="$VENV" bash scripts/setup.sh)
ln -sfn "$VENV/bin/datapath" /usr/local/bin/datapath
ln -sfn "$VENV/bin/datapath-cni" /usr/local/bin/datapath-cni
mkdir -p /opt/cni/bin && ln -sfn "$VENV/bin/datapath-cni" /opt/cni/bin/datapath-cni

if [ "$RUN_ETCD" = true ]; then
  apt-get install -y -qq etcd-server >/dev/null
  cat > /etc/default/etcd <<ETCD
ETCD_NAME=$NODE_NAME
ETCD_LISTEN_CLIENT_URLS=http://$ETCD_IP:2379,http://127.0.0.1:2379
ETCD_ADVERTISE_CLIENT_URLS=http://$ETCD_IP:2379
ETCD
  systemctl enable etcd >/dev/null 2>&1 || true
  systemctl restart etcd
elif systemctl list-unit-files etcd.service >/dev/null 2>&1; then
  systemctl disable --now etcd >/dev/null 2>&1 || true    # setup.sh's etcd-server: not here
fi

# the interface that holds this node's lab address is the agent's native device
DEV=$(ip -o -4 addr show | awk -v ip="$NODE_IP" '$4 ~ "^"ip"/" {print $2; exit}')
[ -n "$DEV" ] || { echo "no interface holds $NODE_IP" >&2; exit 1; }
# forwarding must survive reboots: bpf_fib_lookup refuses to route for a device without it
echo "net.ipv4.ip_forward=1" > /etc/sysctl.d/90-datapath.conf
sysctl -q -p /etc/sysctl.d/90-datapath.conf

mkdir -p /etc/datapath/manifests
cp "$SRC"/examples/lab/*.yaml /etc/datapath/manifests/
cat > /etc/datapath/config.yaml <<CFG
nodeName: $NODE_NAME
devices: [$DEV]
ipam: {podCIDR: $POD_CIDR}
routingMode: $ROUTING_MODE
tunnelProtocol: vxlan
ipv4NativeRoutingCIDR: 172.20.0.0/16
autoDirectNodeRoutes: true
kvstore: etcd
kvstoreOpt: {etcd.endpoints: "http://$ETCD_IP:2379"}
kvstoreLeaseTTL: $LEASE_TTL
prometheus: {port: 9962}
apiSocket: /var/run/datapath/datapath.sock
stateDir: /var/lib/datapath
manifests: /etc/datapath/manifests
CFG
install -m 0644 "$SRC"/vagrant/datapath-agent.service /etc/systemd/system/datapath-agent.service
install -m 0644 "$SRC"/vagrant/datapath-pods.service /etc/systemd/system/datapath-pods.service
systemctl daemon-reload
systemctl enable --now datapath-agent.service
systemctl enable datapath-pods.service
systemctl restart datapath-pods.service
