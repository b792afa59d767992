#!/bin/sh
# Starts a Meridian pod of a StatefulSet (deploy/kubernetes/meridian.yaml): writes the node's
# file from the pod's identity, then serves as a member (data directory already there),
# founds the cluster (the founder pod, once), or joins it through the founder.
set -eu
: "${POD_NAME:?}" "${POD_IP:?}" "${NAMESPACE:?}" "${REGION:?}" "${SERVICE:?}" "${FOUNDER:?}"
DATA=/var/lib/meridian/data
CONFIG=/tmp/node.yaml
DOMAIN="$SERVICE.$NAMESPACE.svc.cluster.local"
cat > "$CONFIG" <<YAML
listen: { http: "0.0.0.0:8080", https: "0.0.0.0:8443" }
admin: { listen: "0.0.0.0:9901", token_file: /etc/meridian/secret/admin.token }
access_log: { enabled: true }
cluster:
  data_dir: $DATA
  rpc: "0.0.0.0:7001"
  advertise_rpc: "$POD_NAME.$DOMAIN:7001"
  advertise_address: "${ADVERTISE_ADDRESS:-$POD_IP}"
  dns: { listen: "0.0.0.0:5353" }
YAML
if [ -e "$DATA/node.json" ]; then
  exec meridian serve --config "$CONFIG"
elif [ "$POD_NAME" = "$FOUNDER" ]; then
  # The join token is also written, private to the node's user, to /var/lib/meridian/ready.token.
  exec meridian cluster init --config "$CONFIG" --region "$REGION" --ready-file /var/lib/meridian/ready
else
  # The join token comes from the Secret `meridian-join` (MERIDIAN_JOIN_TOKEN).
  exec meridian cluster join --config "$CONFIG" --region "$REGION" --peer "$FOUNDER_RPC"
fi
