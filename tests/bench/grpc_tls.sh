#!/usr/bin/env bash
# gRPC and mutual TLS: Meridian against nginx, same backends, same run.
#
#   tests/bench/grpc_tls.sh              # 3 alternating rounds of 10 s per target
#   DURATION=30s ROUNDS=5 tests/bench/grpc_tls.sh
#   SMOKE=1 tests/bench/grpc_tls.sh      # one round of 1 s per target on a debug build (CI):
#                                        # fails unless every target answered successfully
#
# gRPC: unary calls from h2load (cleartext HTTP/2, 4 connections × 16 streams) to a Python
# grpcio echo server (tests/grpc/echo.py) directly, through nginx's `grpc_pass` (1 worker,
# keep-alive upstream) and through `meridian serve --workers 1` (an `http2: true`
# http_proxy). Mutual TLS: full handshakes (no resumption) with a P-256 client certificate,
# each followed by one request, from tests/src/bin/tls-handshakes.rs (64 tasks) against nginx
# with `ssl_verify_client on` and Meridian with a domain's `client_certificates`. The proxy
# under test is pinned to core 0, the backend and the load generator to core 1; both proxies
# log every request. Prints the medians, each proxy's CPU time per call or handshake, and
# the ratios.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/bench/lib.sh

SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
  DURATION=1s ROUNDS=1 PROFILE=debug
fi
DURATION=${DURATION:-10s}
PROFILE=${PROFILE:-release}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-4}
PROXY_CORE=${PROXY_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
GRPC_PORT=${GRPC_PORT:-18511}
NGINX_GRPC_PORT=${NGINX_GRPC_PORT:-18512}
NGINX_TLS_PORT=${NGINX_TLS_PORT:-18513}
MERIDIAN_PORT=${MERIDIAN_PORT:-18514}
MERIDIAN_TLS_PORT=${MERIDIAN_TLS_PORT:-18515}
ADMIN_PORT=${ADMIN_PORT:-18516}

needs "apt-get install -y nginx nghttp2-client openssl util-linux python3-venv" nginx h2load openssl taskset python3

build meridian tls-handshakes
MERIDIAN=target/$PROFILE/meridian
HANDSHAKES=target/$PROFILE/tls-handshakes

# The gRPC server's Python, in the virtualenv tests/tests/grpc.rs uses.
venv=target/grpc-venv
if [ ! -f "$venv/.installed" ]; then
  echo "== making $venv (grpcio from PyPI)"
  python3 -m venv "$venv" && "$venv/bin/python" -m pip install -q grpcio==1.85.3 && printf 'grpcio==1.85.3' > "$venv/.installed"
fi

work_dir grpc-tls
mkdir -p "$work/nginx/logs"

# A CA, a server certificate for both domains and a client certificate, all P-256.
(
  cd "$work"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem \
    -subj /CN=bench-ca -days 2 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key -out server.csr -subj /CN=mtls.local 2>/dev/null
  printf 'subjectAltName=DNS:mtls.local,DNS:grpc.local\nextendedKeyUsage=serverAuth\n' > server.ext
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile server.ext 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout client.key -out client.csr -subj /CN=bench-client 2>/dev/null
  printf 'subjectAltName=DNS:bench.client\nextendedKeyUsage=clientAuth\n' > client.ext
  openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2 -extfile client.ext 2>/dev/null
  chmod 600 ./*.key
)
# One gRPC message: not compressed, 5 bytes.
printf '\x00\x00\x00\x00\x05hello' > "$work/call.bin"

as_root=$( [ "$(id -u)" = 0 ] && echo "user root;" || true )
cat > "$work/nginx/nginx.conf" <<CONF
$as_root
worker_processes 1;
daemon off;
error_log $work/nginx/logs/error.log;
pid $work/nginx/nginx.pid;
events { worker_connections 4096; }
http {
  access_log $work/nginx/logs/access.log;
  keepalive_requests 1000000;
  upstream grpc_backend { server 127.0.0.1:$GRPC_PORT; keepalive 32; }
  server {
    listen 127.0.0.1:$NGINX_GRPC_PORT http2;
    location / { grpc_pass grpc://grpc_backend; }
  }
  server {
    listen 127.0.0.1:$NGINX_TLS_PORT ssl;
    server_name mtls.local;
    ssl_certificate $work/server.pem;
    ssl_certificate_key $work/server.key;
    ssl_client_certificate $work/ca.pem;
    ssl_verify_client on;
    ssl_session_cache off;
    ssl_session_tickets off;
    location / { return 200 "ok\n"; }
  }
}
CONF
cat > "$work/meridian.yaml" <<CONF
listen: { http: "127.0.0.1:$MERIDIAN_PORT", https: "127.0.0.1:$MERIDIAN_TLS_PORT" }
admin: { listen: "127.0.0.1:$ADMIN_PORT" }
access_log: { path: "$work/meridian-access.log" }
throttle: { rate: 100000000, burst: 100000000 }
apis:
  - id: grpc
    routes:
      - route: POST /echo.Echo/{method}
        integration: { type: http_proxy, uri: "http://127.0.0.1:$GRPC_PORT/echo.Echo/{method}", http2: true }
    stages: [{ name: bench }]
  - id: tls
    routes:
      - { route: GET /, integration: { type: mock, body: ok } }
    stages: [{ name: bench }]
domains:
  - name: grpc.local
    certificate: $work/server.pem
    key: $work/server.key
    mappings: [{ api: grpc, stage: bench }]
  - name: mtls.local
    certificate: $work/server.pem
    key: $work/server.key
    client_certificates: { ca_file: $work/ca.pem }
    mappings: [{ api: tls, stage: bench }]
CONF

taskset -c "$LOAD_CORE" "$venv/bin/python" tests/grpc/echo.py serve "$GRPC_PORT" > "$work/grpc.out" 2>&1 & grpc_pid=$!; pids+=($grpc_pid)
wait_port "$GRPC_PORT"
taskset -c "$PROXY_CORE" nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" 2>/dev/null & nginx_master=$!; pids+=($nginx_master)
wait_port "$NGINX_GRPC_PORT"
nginx_worker=$(pgrep -P "$nginx_master" | head -1)
taskset -c "$PROXY_CORE" "$MERIDIAN" serve --workers 1 --config "$work/meridian.yaml" 2>"$work/meridian.err" & meridian_pid=$!; pids+=($meridian_pid)
wait_port "$MERIDIAN_PORT"

# Every gRPC path answers the call (its trailers say OK) before anything is measured.
for target in "127.0.0.1:$GRPC_PORT" "127.0.0.1:$NGINX_GRPC_PORT" "127.0.0.1:$MERIDIAN_PORT"; do
  answer=$("$venv/bin/python" tests/grpc/echo.py call "$target" grpc.local unary:bench)
  grep -q '"code": "OK"' <<<"$answer" || { echo "gRPC through $target failed: $answer" >&2; exit 1; }
done

# h2load_run PID URL [HEADER...]: "calls/s p50_ms p99_ms cpu_us_per_call" (PID's CPU).
h2load_run() {
  local pid=$1 url=$2 out c0 c1 done rps
  shift 2
  local headers=(-H "content-type: application/grpc" -H "te: trailers")
  for h in "$@"; do headers+=(-H "$h"); done
  c0=$(cpu_ticks "$pid")
  out=$(taskset -c "$LOAD_CORE" h2load -D "${DURATION%s}" -c "$CONNECTIONS" -m 16 "${headers[@]}" -d "$work/call.bin" "$url" 2>&1)
  c1=$(cpu_ticks "$pid")
  done=$(awk '/^requests:/ {print $8}' <<<"$out")
  failed=$(awk '/^requests:/ {print $10 + $12}' <<<"$out")
  rps=$(awk '/finished in/ {gsub(",", "", $4); print $4}' <<<"$out")
  if [ "${done:-0}" -le 0 ] || [ "${failed:-1}" -gt 0 ] || ! grep -q "status codes: [1-9][0-9]* 2xx, 0 3xx, 0 4xx, 0 5xx" <<<"$out"; then
    echo "$url: calls failed under load: $(grep -E '^requests:|^status codes' <<<"$out" | tr '\n' ' ')" >&2
    exit 1
  fi
  local mean p99
  mean=$(awk '/^time for request:/ {print $6}' <<<"$out")
  p99=$(awk '/^time for request:/ {print $5}' <<<"$out")
  echo "$rps $(to_ms "$mean") $(to_ms "$p99") $(awk -v c=$((c1 - c0)) -v n="$done" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", c * 1e6 / hz / n}')"
}
# handshake_run PID PORT: "handshakes/s cpu_us_per_handshake" (PID's CPU).
handshake_run() {
  local pid=$1 port=$2 out c0 c1 n rate
  c0=$(cpu_ticks "$pid")
  out=$(taskset -c "$LOAD_CORE" "$HANDSHAKES" "127.0.0.1:$port" mtls.local "$work/ca.pem" "$work/client.pem" "$work/client.key" "${DURATION%s}" 64) \
    || { echo "handshakes against port $port failed: $out" >&2; exit 1; }
  c1=$(cpu_ticks "$pid")
  n=$(awk '{print $2}' <<<"$out")
  rate=$(awk '{print $6}' <<<"$out")
  [ "$(awk '{print $4}' <<<"$out")" = 0 ] || { echo "port $port: some handshakes failed: $out" >&2; exit 1; }
  echo "$rate $(awk -v c=$((c1 - c0)) -v n="$n" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", c * 1e6 / hz / n}')"
}

: > "$work/results"
col() { awk -v t="$1" -v c="$2" '$1 == t {print $c}' "$work/results" | median; }
for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round/$ROUNDS: gRPC unary direct, through nginx and meridian; mTLS handshakes against nginx and meridian ($DURATION each)"
  echo "direct $(h2load_run "$grpc_pid" "http://127.0.0.1:$GRPC_PORT/echo.Echo/Unary")" >> "$work/results"
  if (( round % 2 )); then order=(nginx meridian); else order=(meridian nginx); fi
  for t in "${order[@]}"; do
    case $t in
      nginx)
        echo "grpc_nginx $(h2load_run "$nginx_worker" "http://127.0.0.1:$NGINX_GRPC_PORT/echo.Echo/Unary")" >> "$work/results"
        echo "tls_nginx $(handshake_run "$nginx_worker" "$NGINX_TLS_PORT")" >> "$work/results" ;;
      meridian)
        echo "grpc_meridian $(h2load_run "$meridian_pid" "http://127.0.0.1:$MERIDIAN_PORT/echo.Echo/Unary" ":authority: grpc.local")" >> "$work/results"
        echo "tls_meridian $(handshake_run "$meridian_pid" "$MERIDIAN_TLS_PORT")" >> "$work/results" ;;
    esac
  done
done
for t in direct grpc_nginx grpc_meridian tls_nginx tls_meridian; do
  awk -v t="$t" '$1 == t && $2 + 0 > 0 {found = 1} END {exit !found}' "$work/results" \
    || { echo "$t measured no successful call" >&2; exit 1; }
done

echo
echo "median of $ROUNDS rounds, gRPC unary calls ($CONNECTIONS connections x 16 streams):"
printf '%-26s %12s %14s %12s %16s\n' "target" "calls/s" "mean ms" "max ms" "CPU us/call"
for t in direct grpc_nginx grpc_meridian; do
  printf '%-26s %12s %14s %12s %16s\n' "$t" "$(col "$t" 2)" "$(col "$t" 3)" "$(col "$t" 4)" "$(col "$t" 5)"
done
echo
echo "median of $ROUNDS rounds, mutual TLS (full handshakes with a client certificate, one request each):"
printf '%-26s %14s %22s\n' "target" "handshakes/s" "CPU us/handshake"
for t in tls_nginx tls_meridian; do
  printf '%-26s %14s %22s\n' "$t" "$(col "$t" 2)" "$(col "$t" 3)"
done
echo
awk -v m="$(col grpc_meridian 2)" -v n="$(col grpc_nginx 2)" -v d="$(col direct 2)" -v mc="$(col grpc_meridian 5)" -v nc="$(col grpc_nginx 5)" \
  -v tm="$(col tls_meridian 2)" -v tn="$(col tls_nginx 2)" -v tmc="$(col tls_meridian 3)" -v tnc="$(col tls_nginx 3)" 'BEGIN {
  printf "gRPC unary: meridian/direct %.2fx, meridian/nginx grpc_pass %.2fx; CPU per call meridian/nginx %.2fx\n", m / d, m / n, mc / nc
  printf "mTLS handshakes: meridian/nginx ssl_verify_client %.2fx; CPU per handshake %.2fx\n", tm / tn, tmc / tnc }'
