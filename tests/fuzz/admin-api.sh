#!/usr/bin/env bash
# Fuzzes the admin API from its own OpenAPI document with Schemathesis (an independent
# fuzzer, from PyPI): a one-node cluster on loopback, every documented operation with
# generated valid and invalid inputs, the admin token on every call. Fails on any 5xx and
# on any answer that does not match the document (status codes, content types, schemas).
#
#   tests/fuzz/admin-api.sh [MAX_EXAMPLES]     # default 30 examples per operation
#
# Needs the `meridian` binary (target/debug, or MERIDIAN_BIN) and Schemathesis: set
# SCHEMATHESIS to its command, or the script makes a virtualenv in target/schemathesis-venv.
set -euo pipefail
examples=${1:-30}
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${MERIDIAN_BIN:-$root/target/debug/meridian}
[ -x "$bin" ] || { echo "no meridian binary at $bin (cargo build --bin meridian)" >&2; exit 1; }
if [ -z "${SCHEMATHESIS:-}" ]; then
  venv=$root/target/schemathesis-venv
  if [ ! -x "$venv/bin/schemathesis" ]; then
    echo "== installing Schemathesis into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q schemathesis
  fi
  SCHEMATHESIS=$venv/bin/schemathesis
fi

work=$(mktemp -d)
node_pid=
cleanup() {
  [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
token=schemathesis-admin-token-0123456789
echo "$token" > "$work/admin.token"
ip=127.$((200 + RANDOM % 50)).$((RANDOM % 250)).1
cat > "$work/node.yaml" <<YAML
listen: { http: "$ip:0" }
admin: { listen: "$ip:0", token_file: admin.token }
access_log: { enabled: false }
cluster: { data_dir: data, rpc: "$ip:7001" }
YAML
(cd "$work" && exec "$bin" cluster init --region r1 --config node.yaml --ready-file ready.json >node.log 2>&1) &
node_pid=$!
for _ in $(seq 100); do [ -s "$work/ready.json" ] && break; sleep 0.1; done
[ -s "$work/ready.json" ] || { cat "$work/node.log"; echo "the node did not start" >&2; exit 1; }
admin=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['admin'])" "$work/ready.json")
echo "== schemathesis against http://$admin/v1/openapi.json ($examples examples per operation)"
# `cluster leave` would take the only member out of its own cluster: everything else runs.
# Every check but `positive_data_acceptance`: API definitions and zones are YAML documents
# whose validity (routes, stage variables, records) no JSON schema can state, so a
# schema-valid body may rightly be refused with 422.
"$SCHEMATHESIS" run "http://$admin/v1/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks all \
  --exclude-checks positive_data_acceptance \
  --max-examples "$examples" \
  --exclude-path /v1/cluster/leave \
  --seed 1 \
  --no-color
