#!/usr/bin/env bash
# Traffic features against their nginx counterparts, same backend, same run.
#
#   tests/bench/traffic.sh               # 3 rounds of 10 s per target, 64 connections
#   DURATION=30s ROUNDS=5 tests/bench/traffic.sh
#   SMOKE=1 tests/bench/traffic.sh       # one round of 1 s per target on a debug build (CI):
#                                        # fails unless every target answered 2xx, compressed
#
# Compression: a 20 KiB JSON document from the backend, gzip-compressed on its way through
# the proxy for a client that sends `Accept-Encoding: gzip`: nginx with `gzip on` (level 1,
# its default) against Meridian with `compression` (gzip level 1). Both proxies log every
# request.
# Transforms: a route with five request header transforms (a literal, the request id, the
# client's address, a stage variable, a copy of a request header) and a path rewrite,
# measured next to the same route without them (paired, alternating order). Layout as in proxy.sh: the proxy under test (nginx with 1 worker, Meridian with
# --workers 1) on core 0; the backend (nginx, 1 worker) and wrk on core 1. Prints req/s, p50,
# p99, the CPU time each proxy spent per request, the compressed size each sent, and the
# ratios (the median of ROUNDS alternating rounds).
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/bench/lib.sh

SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
  DURATION=1s ROUNDS=1 CONNECTIONS=8 PROFILE=debug
fi
DURATION=${DURATION:-10s}
PROFILE=${PROFILE:-release}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
PROXY_CORE=${PROXY_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
BACKEND_PORT=${BACKEND_PORT:-18491}
NGINX_PORT=${NGINX_PORT:-18492}
MERIDIAN_PORT=${MERIDIAN_PORT:-18493}
ADMIN_PORT=${ADMIN_PORT:-18494}

needs "apt-get install -y nginx wrk util-linux curl python3" nginx wrk taskset curl python3

build meridian
MERIDIAN=target/$PROFILE/meridian

work_dir traffic
mkdir -p "$work/backend/logs" "$work/backend/www" "$work/proxy/logs"

# The document: 400 pets, about 20 KiB of JSON.
printf 'hello from the backend\n' > "$work/backend/www/hello"
python3 - > "$work/backend/www/pets.json" <<'PY'
import json
print(json.dumps([{"id": i, "name": f"pet {i}", "tag": "dog" if i % 2 else "cat", "owner": {"id": i * 7 % 97}} for i in range(300)]))
PY

# The workers read the document and write their logs in the work folder.
as_root=$( [ "$(id -u)" = 0 ] && echo "user root;" || true )
cat > "$work/backend/nginx.conf" <<CONF
$as_root
worker_processes 1;
daemon off;
error_log $work/backend/logs/error.log;
pid $work/backend/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  types { application/json json; }
  server {
    listen 127.0.0.1:$BACKEND_PORT;
    root $work/backend/www;
  }
}
CONF
cat > "$work/proxy/nginx.conf" <<CONF
$as_root
worker_processes 1;
daemon off;
error_log $work/proxy/logs/error.log;
pid $work/proxy/nginx.pid;
events { worker_connections 4096; }
http {
  access_log $work/proxy/logs/access.log;
  keepalive_requests 1000000;
  upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 128; }
  gzip on;
  gzip_types application/json;
  gzip_min_length 1024;
  gzip_proxied any;
  gzip_vary on;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
CONF
cat > "$work/meridian.yaml" <<CONF
listen: { http: "127.0.0.1:$MERIDIAN_PORT" }
admin: { listen: "127.0.0.1:$ADMIN_PORT" }
access_log: { path: "$work/meridian-access.log" }
# The proxy's cost is measured, not the cluster-wide limit (still counted).
throttle: { rate: 100000000, burst: 100000000 }
apis:
  - id: bench
    compression: { minimum_size: 1024 }
    routes:
      - route: ANY /{proxy+}
        integration: { type: http_proxy, uri: "http://127.0.0.1:$BACKEND_PORT/{proxy}" }
    stages: [{ name: bench }]
  - id: edits
    routes:
      - route: ANY /plain/{proxy+}
        integration: { type: http_proxy, uri: "http://127.0.0.1:$BACKEND_PORT/{proxy}" }
      - route: ANY /edited/{proxy+}
        integration:
          type: http_proxy
          uri: "http://127.0.0.1:$BACKEND_PORT/api/{proxy}"
          rewrite: { path: { prefix: /api, replacement: "" } }
        transform:
          request:
            headers:
              set:
                x-gateway: meridian
                x-request: \$context.requestId
                x-client: \$context.identity.sourceIp
                x-env: "\${stageVariables.env}"
                x-agent: \$request.header.user-agent
    stages: [{ name: bench, variables: { env: bench } }]
CONF

taskset -c "$LOAD_CORE" nginx -p "$work/backend" -c "$work/backend/nginx.conf" 2>/dev/null & pids+=($!)
wait_port "$BACKEND_PORT"
taskset -c "$PROXY_CORE" nginx -p "$work/proxy" -c "$work/proxy/nginx.conf" 2>/dev/null & nginx_master=$!; pids+=($nginx_master)
wait_port "$NGINX_PORT"
nginx_worker=$(pgrep -P "$nginx_master" | head -1)
taskset -c "$PROXY_CORE" "$MERIDIAN" serve --workers 1 --config "$work/meridian.yaml" 2>"$work/meridian.err" & meridian_pid=$!; pids+=($meridian_pid)
wait_port "$MERIDIAN_PORT"

nginx_url="http://127.0.0.1:$NGINX_PORT/pets.json"
meridian_url="http://127.0.0.1:$MERIDIAN_PORT/bench/pets.json"
# Both must answer gzip, and decode to the backend's document.
for url in "$nginx_url" "$meridian_url"; do
  headers=$(curl -sf -o "$work/answer.gz" -D - -H "Accept-Encoding: gzip" -H "Host: bench.local" "$url") \
    || { echo "$url did not answer" >&2; exit 1; }
  grep -qi '^content-encoding: gzip' <<<"$headers" || { echo "$url did not answer gzip" >&2; exit 1; }
  gzip -dc "$work/answer.gz" | cmp -s - "$work/backend/www/pets.json" || { echo "$url's answer does not decode to the document" >&2; exit 1; }
  echo "$url: $(stat -c %s "$work/answer.gz") bytes gzip of $(stat -c %s "$work/backend/www/pets.json")"
done
nginx_size=$(curl -s -H "Accept-Encoding: gzip" "$nginx_url" | wc -c)
meridian_size=$(curl -s -H "Accept-Encoding: gzip" -H "Host: bench.local" "$meridian_url" | wc -c)

: > "$work/results"
col() { awk -v t="$1" -v c="$2" '$1 == t {print $c}' "$work/results" | median; }
run() {
  case $1 in
    nginx) wrk_run "$nginx_worker" -H "Accept-Encoding: gzip" "$nginx_url" ;;
    meridian) wrk_run "$meridian_pid" -H "Accept-Encoding: gzip" -H "Host: bench.local" "$meridian_url" ;;
  esac
}
for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round/$ROUNDS: gzip through nginx and meridian ($DURATION each, $CONNECTIONS connections)"
  if (( round % 2 )); then order=(nginx meridian); else order=(meridian nginx); fi
  for t in "${order[@]}"; do
    result=$(run "$t") || exit 1
    echo "$t $result" >> "$work/results"
  done
done

# Transforms: each round measures the pair next to each other, in alternating order.
plain_url="http://127.0.0.1:$MERIDIAN_PORT/bench/plain/hello"
edited_url="http://127.0.0.1:$MERIDIAN_PORT/bench/edited/hello"
for url in "$plain_url" "$edited_url"; do
  curl -sf -o /dev/null -H "Host: edits.local" "$url" || { echo "$url did not answer" >&2; exit 1; }
done
for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round/$ROUNDS: a route with five header transforms and a rewrite, next to the same route without ($DURATION each)"
  if (( round % 2 )); then order=(plain edited); else order=(edited plain); fi
  for t in "${order[@]}"; do
    url=$plain_url; [ "$t" = edited ] && url=$edited_url
    result=$(wrk_run "$meridian_pid" -H "Host: edits.local" "$url") || exit 1
    echo "$t $result" >> "$work/results"
    if [ "$t" = plain ]; then plain_result=$result; else edited_result=$result; fi
  done
  read -r plain_rps _ _ plain_cpu <<<"$plain_result"
  read -r edited_rps _ _ edited_cpu <<<"$edited_result"
  awk -v e="$edited_rps" -v p="$plain_rps" -v ec="$edited_cpu" -v pc="$plain_cpu" \
    'BEGIN { printf "pair_edited %.4f %.2f\n", e / p, ec - pc }' >> "$work/results"
done

echo
echo "median of $ROUNDS rounds (a 20 KiB JSON answer, gzip):"
printf '%-22s %12s %10s %10s %16s %14s\n' "target" "req/s" "p50 ms" "p99 ms" "CPU us/request" "bytes sent"
printf '%-22s %12s %10s %10s %16s %14s\n' "nginx gzip on" "$(col nginx 2)" "$(col nginx 3)" "$(col nginx 4)" "$(col nginx 5)" "$nginx_size"
printf '%-22s %12s %10s %10s %16s %14s\n' "meridian compression" "$(col meridian 2)" "$(col meridian 3)" "$(col meridian 4)" "$(col meridian 5)" "$meridian_size"
echo
awk -v m="$(col meridian 2)" -v n="$(col nginx 2)" -v mc="$(col meridian 5)" -v nc="$(col nginx 5)" 'BEGIN {
  printf "compression meridian/nginx: throughput %.2fx (goal >= 1.00x), CPU per request %.2fx (lower is better)\n", m / n, mc / nc }'
echo
printf '%-34s %12s %10s %10s %16s\n' "meridian route" "req/s" "p50 ms" "p99 ms" "CPU us/request"
for t in plain edited; do
  printf '%-34s %12s %10s %10s %16s\n' "$t" "$(col "$t" 2)" "$(col "$t" 3)" "$(col "$t" 4)" "$(col "$t" 5)"
done
printf 'five header transforms and a rewrite / the same route without (paired): %.2fx throughput (goal >= 0.95x), %+.1f us of CPU per request\n' \
  "$(col pair_edited 2)" "$(col pair_edited 3)"
