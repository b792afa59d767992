#!/usr/bin/env bash
# Upstream over TLS and over HTTP/2: Meridian against nginx and HAProxy doing the same, same
# backend, same run.
#
#   tests/bench/upstream_tls.sh          # 3 alternating rounds of 10 s per target, 64 connections
#   DURATION=30s ROUNDS=5 tests/bench/upstream_tls.sh
#   SMOKE=1 tests/bench/upstream_tls.sh  # one round of 1 s per target on a debug build (CI):
#                                        # fails unless every target answered 2xx under load
#
# The backend is nginx (1 worker, fixed 200) with a TLS listener that speaks HTTP/1.1 and
# HTTP/2 (ALPN), its certificate from a CA made for the run. Clients (wrk, HTTP/1.1 keep-alive)
# reach the proxy under test in cleartext; the proxy reaches the backend over TLS, verifying
# its certificate against the CA, with a keep-alive pool:
#   - TLS, HTTP/1.1: nginx (`proxy_pass https://`, `proxy_ssl_verify on`, session reuse) against
#     Meridian (an https `uri` with `ca_file` and `tls.server_name`);
#   - TLS, HTTP/2: HAProxy (`ssl verify required alpn h2`; nginx cannot speak HTTP/2 to a
#     proxied upstream) against Meridian (`http2: true`).
# The proxy under test is pinned to core 0, the backend and wrk to core 1; all proxies log
# every request. Prints the medians, each proxy's CPU time per request and the ratios.
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
BACKEND_TLS_PORT=${BACKEND_TLS_PORT:-18521}
NGINX_PORT=${NGINX_PORT:-18522}
HAPROXY_PORT=${HAPROXY_PORT:-18523}
MERIDIAN_PORT=${MERIDIAN_PORT:-18524}
ADMIN_PORT=${ADMIN_PORT:-18525}

needs "apt-get install -y nginx haproxy wrk openssl util-linux" nginx haproxy wrk openssl taskset

build meridian
MERIDIAN=target/$PROFILE/meridian

work_dir upstream-tls
mkdir -p "$work/backend/logs" "$work/proxy/logs" "$work/haproxy"

# A CA and the backend's certificate for backend.test, P-256.
(
  cd "$work"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem \
    -days 2 -subj /CN=bench-ca 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout backend.key -out backend.csr \
    -subj /CN=backend.test 2>/dev/null
  printf 'subjectAltName=DNS:backend.test\n' > backend.ext
  openssl x509 -req -in backend.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile backend.ext -out backend.pem 2>/dev/null
)

cat > "$work/backend/nginx.conf" <<CONF
worker_processes 1;
daemon off;
error_log $work/backend/logs/error.log;
pid $work/backend/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  http2_max_requests 1000000;
  server {
    listen 127.0.0.1:$BACKEND_TLS_PORT ssl http2;
    ssl_certificate $work/backend.pem;
    ssl_certificate_key $work/backend.key;
    location / { return 200 "hello from the backend\n"; }
    # Which protocol a proxy spoke to the backend (checked before measuring).
    location = /protocol { return 200 "\$server_protocol"; }
  }
}
CONF
cat > "$work/proxy/nginx.conf" <<CONF
worker_processes 1;
daemon off;
error_log $work/proxy/logs/error.log;
pid $work/proxy/nginx.pid;
events { worker_connections 4096; }
http {
  access_log $work/proxy/logs/access.log;
  keepalive_requests 1000000;
  upstream backend { server 127.0.0.1:$BACKEND_TLS_PORT; keepalive 128; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass https://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_server_name on;
      proxy_ssl_name backend.test;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate $work/ca.pem;
      proxy_ssl_session_reuse on;
    }
  }
}
CONF
haproxy_config "$work/haproxy/haproxy.cfg" "$HAPROXY_PORT" "server backend 127.0.0.1:$BACKEND_TLS_PORT ssl verify required ca-file $work/ca.pem sni str(backend.test) verifyhost backend.test alpn h2"
cat > "$work/meridian.yaml" <<CONF
listen: { http: "127.0.0.1:$MERIDIAN_PORT" }
admin: { listen: "127.0.0.1:$ADMIN_PORT" }
access_log: { path: "$work/meridian-access.log" }
# Out of reach: the proxy's cost is measured here, not the cluster-wide default limit.
throttle: { rate: 100000000, burst: 100000000 }
apis:
  - id: bench
    routes:
      - route: ANY /tls/{proxy+}
        integration:
          type: http_proxy
          uri: "https://127.0.0.1:$BACKEND_TLS_PORT/{proxy}"
          ca_file: "$work/ca.pem"
          tls: { server_name: backend.test }
      - route: ANY /h2/{proxy+}
        integration:
          type: http_proxy
          uri: "https://127.0.0.1:$BACKEND_TLS_PORT/{proxy}"
          ca_file: "$work/ca.pem"
          tls: { server_name: backend.test }
          http2: true
    stages: [{ name: bench }]
CONF

taskset -c "$LOAD_CORE" nginx -p "$work/backend" -c "$work/backend/nginx.conf" 2>/dev/null & pids+=($!)
wait_port "$BACKEND_TLS_PORT"
taskset -c "$PROXY_CORE" nginx -p "$work/proxy" -c "$work/proxy/nginx.conf" 2>/dev/null & nginx_master=$!; pids+=($nginx_master)
wait_port "$NGINX_PORT"
nginx_worker=$(pgrep -P "$nginx_master" | head -1)
taskset -c "$PROXY_CORE" haproxy -f "$work/haproxy/haproxy.cfg" -db > "$work/haproxy/access.log" 2>&1 & haproxy_pid=$!; pids+=($haproxy_pid)
wait_port "$HAPROXY_PORT"
taskset -c "$PROXY_CORE" "$MERIDIAN" serve --workers 1 --config "$work/meridian.yaml" 2>"$work/meridian.err" & meridian_pid=$!; pids+=($meridian_pid)
wait_port "$MERIDIAN_PORT"

# Each proxy speaks to the backend as its row says.
spoke() {
  local got
  got=$(curl -sf "$1") || { echo "$1 failed" >&2; exit 1; }
  [ "$got" = "$2" ] || { echo "$1: the backend was reached over $got, not $2" >&2; exit 1; }
}
spoke "http://127.0.0.1:$NGINX_PORT/protocol" HTTP/1.1
spoke "http://127.0.0.1:$MERIDIAN_PORT/bench/tls/protocol" HTTP/1.1
spoke "http://127.0.0.1:$HAPROXY_PORT/protocol" HTTP/2.0
spoke "http://127.0.0.1:$MERIDIAN_PORT/bench/h2/protocol" HTTP/2.0

# measure NAME URL PID: a warm-up request, then wrk; appends "NAME req/s p50 p99 cpu".
measure() {
  curl -sf -o /dev/null "$2" || { echo "warm-up request to $2 failed" >&2; exit 1; }
  echo "$1 $(wrk_run "$3" "$2")" >> "$work/results"
}
: > "$work/results"
targets=(
  "nginx_tls http://127.0.0.1:$NGINX_PORT/hello $nginx_worker"
  "meridian_tls http://127.0.0.1:$MERIDIAN_PORT/bench/tls/hello $meridian_pid"
  "haproxy_h2 http://127.0.0.1:$HAPROXY_PORT/hello $haproxy_pid"
  "meridian_h2 http://127.0.0.1:$MERIDIAN_PORT/bench/h2/hello $meridian_pid"
)
for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round/$ROUNDS: nginx and Meridian over TLS, HAProxy and Meridian over HTTP/2 ($DURATION each, $CONNECTIONS connections)"
  if (( round % 2 )); then order=(0 1 2 3); else order=(1 0 3 2); fi
  for i in "${order[@]}"; do
    # shellcheck disable=SC2086
    measure ${targets[$i]}
  done
done
col() { awk -v t="$1" -v c="$2" '$1 == t {print $c}' "$work/results" | median; }

echo
echo "median of $ROUNDS rounds:"
printf '%-28s %12s %10s %10s %16s\n' "proxy -> backend" "req/s" "p50 ms" "p99 ms" "CPU us/request"
for t in nginx_tls meridian_tls haproxy_h2 meridian_h2; do
  printf '%-28s %12s %10s %10s %16s\n' "$t" "$(col "$t" 2)" "$(col "$t" 3)" "$(col "$t" 4)" "$(col "$t" 5)"
done
echo
awk -v m="$(col meridian_tls 2)" -v n="$(col nginx_tls 2)" -v mc="$(col meridian_tls 5)" -v nc="$(col nginx_tls 5)" \
  'BEGIN { printf "TLS to the upstream, meridian/nginx: %.2fx throughput, CPU per request %.2fx (lower is better)\n", m / n, mc / nc }'
awk -v m="$(col meridian_h2 2)" -v h="$(col haproxy_h2 2)" -v mc="$(col meridian_h2 5)" -v hc="$(col haproxy_h2 5)" \
  'BEGIN { printf "HTTP/2 over TLS to the upstream, meridian/haproxy: %.2fx throughput, CPU per request %.2fx (lower is better)\n", m / h, mc / hc }'
