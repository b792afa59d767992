#!/usr/bin/env bash
# Proxy benchmark: Meridian against nginx as a reverse proxy, same backend, same run.
#
#   tests/bench/proxy.sh                 # 3 rounds of 10 s per target, 64 connections
#   DURATION=30s ROUNDS=5 CONNECTIONS=128 tests/bench/proxy.sh
#   SMOKE=1 tests/bench/proxy.sh         # one round of 1 s per target on a debug build (CI):
#                                        # fails unless every target answered 2xx under load
#   KEYED=1 tests/bench/proxy.sh         # Meridian as a one-node cluster: every request carries
#                                        # an API key checked against a usage plan (throttle and
#                                        # quota counted) plus the cluster-wide throttle
#   STAGES=1 tests/bench/proxy.sh        # Meridian alone: the same route without stages, behind
#                                        # a JWT authorizer (RS256, key from a JWKS, kept token),
#                                        # behind a custom authorizer (warm cache), with CORS and
#                                        # behind 20 firewall rules, each measured next to the route
#                                        # without (paired, alternating order): ratios to it,
#                                        # and each stage's CPU cost; a POST validated and mapped both
#                                        # ways against the same POST plain; then cache hits from
#                                        # Meridian's response cache against nginx's proxy_cache;
#                                        # and the open route traced at 1 % and at 100 % (spans
#                                        # exported by OTLP/HTTP to the backend, which takes them)
#
# Layout on a 2-core machine: the proxy under test (nginx with 1 worker, HAProxy with 1
# thread, or Meridian with --workers 1) is pinned to core 0; the backend (nginx, 1 worker, fixed 200) and wrk share
# core 1. Both proxies log every request (nginx: access_log on; Meridian: JSON access log to a
# file; HAProxy: its HTTP log to a file) and Meridian also counts every request in its
# metrics. Prints req/s, p50, p99 for the backend alone, nginx, HAProxy and Meridian (the median of ROUNDS alternating rounds), the CPU
# time each proxy spent per request (less sensitive to the shared load core than req/s),
# the ratios, and Meridian's peak RSS.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/bench/lib.sh

SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
  DURATION=1s ROUNDS=1 CONNECTIONS=8 PROFILE=debug
fi
DURATION=${DURATION:-10s}
PROFILE=${PROFILE:-release}
KEYED=${KEYED:-0}
STAGES=${STAGES:-0}
BENCH_KEY=bench-key-0123456789abcdefghij
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
PROXY_CORE=${PROXY_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
BACKEND_PORT=${BACKEND_PORT:-18481}
NGINX_PORT=${NGINX_PORT:-18482}
MERIDIAN_PORT=${MERIDIAN_PORT:-18483}
ADMIN_PORT=${ADMIN_PORT:-18484}
HAPROXY_PORT=${HAPROXY_PORT:-18486}

needs "apt-get install -y nginx haproxy wrk util-linux" nginx haproxy wrk taskset

build meridian
MERIDIAN=target/$PROFILE/meridian

work_dir bench

mkdir -p "$work/backend/logs" "$work/proxy/logs" "$work/haproxy"
jwks='{"keys": []}'
if [ "$STAGES" = 1 ]; then
  for tool in openssl python3; do command -v "$tool" >/dev/null || { echo "STAGES=1 needs $tool" >&2; exit 1; }; done
  # An RS256 key, its JWKS (served by the backend) and a token valid for a day.
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/jwt.key" 2>/dev/null
  modulus=$(openssl rsa -in "$work/jwt.key" -noout -modulus | cut -d= -f2)
  jwks=$(python3 - "$modulus" <<'PY'
import base64, json, sys
n = base64.urlsafe_b64encode(bytes.fromhex(sys.argv[1])).rstrip(b"=").decode()
print(json.dumps({"keys": [{"kty": "RSA", "kid": "bench", "alg": "RS256", "use": "sig", "n": n, "e": "AQAB"}]}))
PY
)
  b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
  header=$(printf '{"alg":"RS256","typ":"JWT","kid":"bench"}' | b64url)
  claims=$(printf '{"sub":"bench","aud":"bench","exp":%d}' $(( $(date +%s) + 86400 )) | b64url)
  signature=$(printf '%s.%s' "$header" "$claims" | openssl dgst -sha256 -sign "$work/jwt.key" -binary | b64url)
  BENCH_TOKEN="$header.$claims.$signature"
fi
cat > "$work/backend/nginx.conf" <<CONF
worker_processes 1;
daemon off;
error_log $work/backend/logs/error.log;
pid $work/backend/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$BACKEND_PORT;
    location / { return 200 "hello from the backend\n"; }
    # The identity provider's keys and the custom authorizer, for STAGES=1.
    location = /jwks { default_type application/json; return 200 '$jwks'; }
    location = /authorize { default_type application/json; return 200 '{"isAuthorized": true, "context": {"tenant": "bench"}}'; }
    # An OTLP/HTTP collector that takes every batch, for the traced stages of STAGES=1.
    location = /v1/traces { return 200; }
  }
}
CONF
cat > "$work/proxy/nginx.conf" <<CONF
# The worker must be able to write its cache (and temporary files) in the work folder.
$( [ "$(id -u)" = 0 ] && echo "user root;" )
worker_processes 1;
daemon off;
error_log $work/proxy/logs/error.log;
pid $work/proxy/nginx.pid;
events { worker_connections 4096; }
http {
  access_log $work/proxy/logs/access.log;
  keepalive_requests 1000000;
  upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 128; }
  # STAGES=1 compares cache hits: nginx's proxy_cache against Meridian's response cache.
  proxy_cache_path $work/proxy/cache levels=1:2 keys_zone=bench:10m max_size=64m;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location /cached/ {
      proxy_pass http://backend/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache bench;
      proxy_cache_valid 200 10m;
      add_header X-Cache \$upstream_cache_status;
    }
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
CONF
haproxy_config "$work/haproxy/haproxy.cfg" "$HAPROXY_PORT" "server backend 127.0.0.1:$BACKEND_PORT maxconn 128"
if [ "$KEYED" = 1 ]; then
echo "bench-admin-token-0123456789" > "$work/admin.token"
cat > "$work/meridian.yaml" <<CONF
listen: { http: "127.0.0.1:$MERIDIAN_PORT" }
admin: { listen: "127.0.0.1:$ADMIN_PORT", token_file: "$work/admin.token" }
access_log: { path: "$work/meridian-access.log" }
cluster: { data_dir: "$work/data", rpc: "127.0.0.1:$((ADMIN_PORT + 1))" }
# Counted on every request, high enough never to refuse one: the cost is measured, not the limit.
throttle: { rate: 100000000, burst: 100000000 }
CONF
cat > "$work/api.yaml" <<CONF
apis:
  - id: bench
    routes:
      - route: ANY /{proxy+}
        integration: { type: http_proxy, uri: "http://\${stageVariables.backend}/{proxy}" }
        api_key_required: true
    stages:
      - name: bench
        variables: { backend: "127.0.0.1:$BACKEND_PORT" }
CONF
else
cat > "$work/meridian.yaml" <<CONF
listen: { http: "127.0.0.1:$MERIDIAN_PORT" }
admin: { listen: "127.0.0.1:$ADMIN_PORT" }
access_log: { path: "$work/meridian-access.log" }
# The cluster-wide default (10,000 req/s) would answer most of the load with 429s: the
# proxy's cost is measured here, not the limit, so it is set out of reach (and still counted).
throttle: { rate: 100000000, burst: 100000000 }
# The traced stages' spans (STAGES=1): OTLP/HTTP to the backend, which answers 200.
tracing: { endpoint: "http://127.0.0.1:$BACKEND_PORT", protocol: http }
apis:
  - id: bench
    type: rest
    authorizers:
      - { name: jwt, type: jwt, algorithms: [RS256], jwks_uri: "http://127.0.0.1:$BACKEND_PORT/jwks", audience: [bench] }
      - { name: custom, type: custom, uri: "http://127.0.0.1:$BACKEND_PORT/authorize", identity_sources: [\$request.header.x-token] }
    routes:
      - route: ANY /{proxy+}
        integration: { type: http_proxy, uri: "http://\${stageVariables.backend}/{proxy}" }
      - route: ANY /jwt/{proxy+}
        authorizer: jwt
        integration: { type: http_proxy, uri: "http://\${stageVariables.backend}/{proxy}" }
      - route: ANY /custom/{proxy+}
        authorizer: custom
        integration: { type: http_proxy, uri: "http://\${stageVariables.backend}/{proxy}" }
      - route: ANY /cors/{proxy+}
        cors: { allow_origins: [https://app.bench.test], expose_headers: [x-request-id] }
        integration: { type: http_proxy, uri: "http://\${stageVariables.backend}/{proxy}" }
      # A 2 KiB JSON body validated against a 20-property model, mapped by a request
      # template, and the answer mapped by a response template; against the same POST plain.
      - route: POST /posted/{proxy+}
        integration: { type: http_proxy, uri: "http://\${stageVariables.backend}/{proxy}" }
      # The same POST with a new Idempotency-Key on every request (the node's own ledger).
      - route: POST /idempotent/{proxy+}
        idempotency: { ttl: 20s, max_records: 1000000 }
        integration: { type: http_proxy, uri: "http://\${stageVariables.backend}/{proxy}" }
$(rest_route)
$(rest_models)
    stages:
      - name: bench
        variables: { backend: "127.0.0.1:$BACKEND_PORT" }
      # The same routes with the response cache: every measured request is a hit.
      - name: cached
        variables: { backend: "127.0.0.1:$BACKEND_PORT" }
        cache: { ttl: 3600s }
      # The same routes traced: 1 % of new traces recorded, and every one.
      - name: trace1
        variables: { backend: "127.0.0.1:$BACKEND_PORT" }
        tracing: { sample_ratio: 0.01 }
      - name: trace100
        variables: { backend: "127.0.0.1:$BACKEND_PORT" }
        tracing: { sample_ratio: 1.0 }
      # The same routes behind 20 firewall rules, none of which matches the benchmark's
      # requests (so every rule is evaluated), the SQLi/XSS signature sets among them.
      - name: waf
        variables: { backend: "127.0.0.1:$BACKEND_PORT" }
        waf:
          rules:
            - { name: blocked-nets, action: block, ip_in: [10.0.0.0/8, 192.168.0.0/16, "fd00::/8"] }
            - { name: outside, action: block, ip_not_in: [127.0.0.0/8, "::1/128"] }
            - { name: long-uri, action: block, size_over: { part: uri, bytes: 4096 } }
            - { name: long-query, action: block, size_over: { part: query, bytes: 2048 } }
            - { name: big-headers, action: block, size_over: { part: headers, bytes: 16384 } }
            - { name: admin, action: block, pattern: { part: path, contains: /admin } }
            - { name: dotfiles, action: block, pattern: { part: path, regex: '/\\.(git|env|svn)' } }
            - { name: php, action: block, pattern: { part: path, regex: '\\.(php|asp|jsp)$' } }
            - { name: scanners, action: block, pattern: { part: header, name: user-agent, regex: "(?i)sqlmap|nikto|nmap|masscan" } }
            - { name: no-debug, action: block, pattern: { part: query, name: debug, contains: "1" } }
            - { name: no-trace, action: block, pattern: { part: header, name: x-trace-internal, contains: "yes" } }
            - { name: bad-cookie, action: block, pattern: { part: cookie, name: session, regex: "^probe" } }
            - { name: old-clients, action: count, pattern: { part: header, name: user-agent, contains: "MSIE 6" } }
            - { name: wp-login, action: block, pattern: { part: path, contains: wp-login } }
            - { name: traversal, action: block, pattern: { part: path, contains: "../" } }
            - { name: null-bytes, action: block, pattern: { part: path, contains: "%00" } }
            - { name: shell, action: block, pattern: { part: query, name: cmd, regex: "[;&|]" } }
            - { name: referer-spam, action: block, pattern: { part: header, name: referer, regex: "(?i)casino|viagra" } }
            - { name: xml-rpc, action: block, pattern: { part: path, contains: xmlrpc } }
            - { name: attacks, action: block, signatures: [sqli, xss] }
  # The open route again in a type http API: a type rest route without stages must cost the
  # same (requests name their API by the host's first label: bench.* or plain.*).
  - id: plain
    type: http
    routes:
      - route: ANY /{proxy+}
        integration: { type: http_proxy, uri: "http://\${stageVariables.backend}/{proxy}" }
    stages:
      - name: bench
        variables: { backend: "127.0.0.1:$BACKEND_PORT" }
CONF
fi

taskset -c "$LOAD_CORE" nginx -p "$work/backend" -c "$work/backend/nginx.conf" 2>/dev/null & pids+=($!)
wait_port "$BACKEND_PORT"
taskset -c "$PROXY_CORE" nginx -p "$work/proxy" -c "$work/proxy/nginx.conf" 2>/dev/null & nginx_master=$!; pids+=($nginx_master)
wait_port "$NGINX_PORT"
nginx_worker=$(pgrep -P "$nginx_master" | head -1)
taskset -c "$PROXY_CORE" haproxy -f "$work/haproxy/haproxy.cfg" -db > "$work/haproxy/access.log" 2>&1 & haproxy_pid=$!; pids+=($haproxy_pid)
wait_port "$HAPROXY_PORT"
if [ "$KEYED" = 1 ]; then
  taskset -c "$PROXY_CORE" "$MERIDIAN" cluster init --workers 1 --region bench --config "$work/meridian.yaml" >/dev/null 2>"$work/meridian.err" & meridian_pid=$!; pids+=($meridian_pid)
  wait_port "$MERIDIAN_PORT"
  sleep 1
  m() { "$MERIDIAN" "$@" --config "$work/meridian.yaml" >/dev/null || { echo "meridian $* failed" >&2; exit 1; }; }
  m apply -f "$work/api.yaml" --stage bench
  m keys create --name bench --value "$BENCH_KEY"
  m plans create --name bench --rate 100000000 --burst 100000000 --quota 1000000000000/month
  m plans attach bench --api bench --stage bench
  m plans add-key bench bench
  sleep 0.5
  curl -sf -o /dev/null -H "x-api-key: $BENCH_KEY" "http://127.0.0.1:$MERIDIAN_PORT/bench/hello" || { echo "keyed request refused" >&2; exit 1; }
else
  taskset -c "$PROXY_CORE" "$MERIDIAN" serve --workers 1 --config "$work/meridian.yaml" 2>"$work/meridian.err" & meridian_pid=$!; pids+=($meridian_pid)
  wait_port "$MERIDIAN_PORT"
fi

# Runs wrk on the load core (lib.sh's wrk_run) against $1, the CPU time being process $2's;
# $3 is a header every request carries (the API key by default), $4 a wrk script that POSTs
# the order, $5 the Host.
measure() {
  local url=$1 pid=$2 header=${3:-"x-api-key: $BENCH_KEY"} script=${4:-} host=${5:-}
  local post=() wrk_script=() host_header=()
  [ -n "$host" ] && host_header=(-H "Host: $host")  # capitalised: wrk then sends no Host of its own
  if [ -n "$script" ]; then
    post=(-X POST -H "content-type: application/json" --data-binary "@$work/order.json")
    wrk_script=(-s "$script")
  fi
  curl -sf -o /dev/null -H "$header" "${host_header[@]}" "${post[@]}" "$url" || { echo "warm-up request to $url failed" >&2; exit 1; }
  wrk_run "$pid" -H "$header" "${host_header[@]}" "${wrk_script[@]}" "$url"
}

backend_pid=$(pgrep -f "nginx -p $work/backend" | head -1)
backend_worker=$(pgrep -P "$backend_pid" | head -1)
: > "$work/results"
col() { awk -v t="$1" -v c="$2" '$1 == t {print $c}' "$work/results" | median; }

if [ "$STAGES" = 1 ]; then
  base="http://127.0.0.1:$MERIDIAN_PORT/bench"
  # The posted order: 20 properties of about 95 characters, 2 KiB of JSON.
  write_order "$work/order.json"
  lua_body=$(sed 's/\\/\\\\/g; s/"/\\"/g' "$work/order.json")
  printf 'wrk.method = "POST"\nwrk.body = "%s"\nwrk.headers["Content-Type"] = "application/json"\n' "$lua_body" > "$work/post.lua"
  # The same POST with a new key each time: the thread's number, the run's second, a count.
  cat "$work/post.lua" - > "$work/keyed-post.lua" <<'LUA'
local threads = 0
function setup(thread) threads = threads + 1; thread:set("tid", threads) end
function init(args) count = 0; run = os.time() end
function request()
  count = count + 1
  wrk.headers["Idempotency-Key"] = run .. "-" .. tid .. "-" .. count
  return wrk.format()
end
LUA
  # Each stage route is measured right next to its reference (the open route; nginx's
  # proxy_cache for cache hits), the two in alternating order from round to round, and the
  # ratio is taken within each pair: this VM drifts by 20 % over a minute, more than most
  # stages cost, and a pair sees the same drift on both sides.
  run_target() {
    case $1 in
      open) measure "$base/hello" "$meridian_pid" "x-token: none" "" bench.local ;;
      http) measure "$base/hello" "$meridian_pid" "x-token: none" "" plain.local ;;
      jwt) measure "$base/jwt/hello" "$meridian_pid" "Authorization: Bearer $BENCH_TOKEN" "" bench.local ;;
      custom) measure "$base/custom/hello" "$meridian_pid" "x-token: bench" "" bench.local ;;
      cors) measure "$base/cors/hello" "$meridian_pid" "Origin: https://app.bench.test" "" bench.local ;;
      posted) measure "$base/posted/hello" "$meridian_pid" "x-token: none" "$work/post.lua" bench.local ;;
      rest) measure "$base/rest/hello" "$meridian_pid" "x-token: none" "$work/post.lua" bench.local ;;
      idempotent) measure "$base/idempotent/hello" "$meridian_pid" "x-token: none" "$work/keyed-post.lua" bench.local ;;
      waf) measure "http://127.0.0.1:$MERIDIAN_PORT/waf/hello?page=2&sort=name" "$meridian_pid" "x-token: none" "" bench.local ;;
      cache) measure "http://127.0.0.1:$MERIDIAN_PORT/cached/hello" "$meridian_pid" "x-token: none" "" bench.local ;;
      trace1) measure "http://127.0.0.1:$MERIDIAN_PORT/trace1/hello" "$meridian_pid" "x-token: none" "" bench.local ;;
      trace100) measure "http://127.0.0.1:$MERIDIAN_PORT/trace100/hello" "$meridian_pid" "x-token: none" "" bench.local ;;
      nginx_cache) measure "http://127.0.0.1:$NGINX_PORT/cached/hello" "$nginx_worker" "x-token: none" ;;
    esac
  }
  for round in $(seq 1 "$ROUNDS"); do
    echo "== round $round/$ROUNDS: each stage route next to the open route, cache hits next to nginx's ($DURATION each)"
    for t in http jwt custom cors waf rest idempotent cache trace1 trace100; do
      reference=open; [ "$t" = cache ] && reference=nginx_cache
      [ "$t" = rest ] || [ "$t" = idempotent ] && reference=posted
      if (( round % 2 )); then pair=("$reference" "$t"); else pair=("$t" "$reference"); fi
      for x in "${pair[@]}"; do
        result=$(run_target "$x")
        echo "$x $result" >> "$work/results"
        if [ "$x" = "$reference" ]; then ref_result=$result; else stage_result=$result; fi
      done
      # The pair's ratio (throughput) and difference (CPU per request).
      read -r ref_rps _ _ ref_cpu <<<"$ref_result"
      read -r stage_rps _ _ stage_cpu <<<"$stage_result"
      awk -v t="$t" -v s="$stage_rps" -v r="$ref_rps" -v sc="$stage_cpu" -v rc="$ref_cpu" \
        'BEGIN { if (s + 0 <= 0 || r + 0 <= 0) exit 1; printf "pair_%s %.4f %.2f %.4f\n", t, s / r, sc - rc, sc / rc }' >> "$work/results" \
        || { echo "$t or its reference measured no successful request" >&2; exit 1; }
    done
  done
  echo
  echo "median of $ROUNDS rounds:"
  printf '%-34s %12s %10s %10s %16s\n' "meridian route" "req/s" "p50 ms" "p99 ms" "CPU us/request"
  for t in open http jwt custom cors waf posted rest idempotent cache nginx_cache trace1 trace100; do
    printf '%-34s %12s %10s %10s %16s\n' "$t" "$(col "$t" 2)" "$(col "$t" 3)" "$(col "$t" 4)" "$(col "$t" 5)"
  done
  echo
  echo "median of the paired ratios (each stage measured next to the open route):"
  printf 'throughput jwt/open: %.2fx, custom/open: %.2fx, waf (20 rules)/open: %.2fx (goal >= 0.90x); cors/open: %.2fx (goal >= 0.97x)\n' \
    "$(col pair_jwt 2)" "$(col pair_custom 2)" "$(col pair_waf 2)" "$(col pair_cors 2)"
  printf 'type: rest route without stages / the same route in a type: http API: CPU per request %.3fx (goal within 3 %%), throughput %.2fx\n' \
    "$(awk -v r="$(col pair_http 4)" 'BEGIN { printf "%.4f", 1 / r }')" "$(awk -v r="$(col pair_http 2)" 'BEGIN { printf "%.4f", 1 / r }')"
  printf 'cost per request: jwt %+.1f us, custom (warm cache) %+.1f us, cors %+.1f us, waf %+.1f us of CPU\n' \
    "$(col pair_jwt 3)" "$(col pair_custom 3)" "$(col pair_cors 3)" "$(col pair_waf 3)"
  printf 'validation + request and response templates (2 KiB body, 20 properties) / the same POST plain: %.2fx (goal >= 0.80x), %+.1f us of CPU\n' \
    "$(col pair_rest 2)" "$(col pair_rest 3)"
  printf 'idempotent POST (a new Idempotency-Key each request, the node'"'"'s own ledger) / the same POST plain: %.2fx, %+.1f us of CPU\n' \
    "$(col pair_idempotent 2)" "$(col pair_idempotent 3)"
  # The traced stages exported spans, and the collector took them.
  exported=$(curl -sf "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '/^meridian_trace_spans_total\{outcome="exported"\}/ {print $2}')
  dropped=$(curl -sf "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '/^meridian_trace_spans_total\{outcome="dropped"\}/ {print $2}')
  [ "${exported:-0}" != 0 ] || { echo "the traced stages exported no span" >&2; exit 1; }
  printf 'tracing on, 1 %% sampled / the open route untraced: %.2fx (goal >= 0.97x), %+.1f us of CPU; 100 %% sampled: %.2fx, %+.1f us of CPU (%s spans exported, %s dropped)\n' \
    "$(col pair_trace1 2)" "$(col pair_trace1 3)" "$(col pair_trace100 2)" "$(col pair_trace100 3)" "$exported" "${dropped:-0}"
  # Cache hits: the same response from Meridian's cache and from nginx's proxy_cache.
  curl -sf -o /dev/null -D - -H "host: bench.local" "http://127.0.0.1:$MERIDIAN_PORT/cached/hello" | grep -qi '^x-cache: hit' \
    || { echo "meridian's cached route did not answer from its cache" >&2; exit 1; }
  curl -sf -o /dev/null -D - "http://127.0.0.1:$NGINX_PORT/cached/hello" | grep -qi '^x-cache: hit' \
    || { echo "nginx's cached location did not answer from its cache" >&2; exit 1; }
  printf 'cache hits meridian/nginx proxy_cache: %.2fx throughput (goal >= 1.00x), CPU per request %.2fx\n' \
    "$(col pair_cache 2)" "$(col pair_cache 4)"
  exit 0
fi
# Before any load: what the node holds idle (a cluster node more, see docs/BENCHMARKS.md).
start_rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$meridian_pid/status")
for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round/$ROUNDS: backend alone, nginx, HAProxy and meridian proxies ($DURATION each, $CONNECTIONS connections)"
  echo "backend $(measure "http://127.0.0.1:$BACKEND_PORT/hello" "$backend_worker")" >> "$work/results"
  if (( round % 2 )); then
    echo "nginx $(measure "http://127.0.0.1:$NGINX_PORT/hello" "$nginx_worker")" >> "$work/results"
    echo "haproxy $(measure "http://127.0.0.1:$HAPROXY_PORT/hello" "$haproxy_pid")" >> "$work/results"
    echo "meridian $(measure "http://127.0.0.1:$MERIDIAN_PORT/bench/hello" "$meridian_pid" "x-api-key: $BENCH_KEY" "" bench.local)" >> "$work/results"
  else
    echo "meridian $(measure "http://127.0.0.1:$MERIDIAN_PORT/bench/hello" "$meridian_pid" "x-api-key: $BENCH_KEY" "" bench.local)" >> "$work/results"
    echo "haproxy $(measure "http://127.0.0.1:$HAPROXY_PORT/hello" "$haproxy_pid")" >> "$work/results"
    echo "nginx $(measure "http://127.0.0.1:$NGINX_PORT/hello" "$nginx_worker")" >> "$work/results"
  fi
done
# Median of each column per target.
for t in backend nginx haproxy meridian; do
  for c in 2 3 4 5; do eval "${t}_$c=$(col "$t" "$c")"; done
done
rss_kib=$(awk '/VmHWM/ {print $2}' "/proc/$meridian_pid/status")
logged=$(wc -l < "$work/meridian-access.log")

echo
echo "median of $ROUNDS rounds:"
printf '%-22s %12s %10s %10s %16s\n' "target" "req/s" "p50 ms" "p99 ms" "CPU us/request"
printf '%-22s %12s %10s %10s %16s\n' "backend (direct)" "$backend_2" "$backend_3" "$backend_4" "$backend_5"
printf '%-22s %12s %10s %10s %16s\n' "nginx proxy" "$nginx_2" "$nginx_3" "$nginx_4" "$nginx_5"
printf '%-22s %12s %10s %10s %16s\n' "haproxy proxy" "$haproxy_2" "$haproxy_3" "$haproxy_4" "$haproxy_5"
printf '%-22s %12s %10s %10s %16s\n' "meridian proxy" "$meridian_2" "$meridian_3" "$meridian_4" "$meridian_5"
echo
awk -v goal="$([ "$KEYED" = 1 ] && echo 0.95 || echo 1.00)" -v m="$meridian_2" -v n="$nginx_2" -v h="$haproxy_2" -v mp="$meridian_4" -v np="$nginx_4" -v mc="$meridian_5" -v nc="$nginx_5" -v hc="$haproxy_5" 'BEGIN {
  printf "throughput meridian/nginx: %.2fx (goal >= %sx); meridian/haproxy: %.2fx\n", m / n, goal, m / h
  printf "CPU per request meridian/nginx: %.2fx, meridian/haproxy: %.2fx (lower is better)\n", mc / nc, mc / hc
  printf "p99 meridian - nginx: %+.3f ms (goal <= +0.5 ms)\n", mp - np }'
echo "meridian resident memory: $((start_rss_kib / 1024)) MiB before the load, peak $((rss_kib / 1024)) MiB; access-log lines written: $logged"
for t in nginx haproxy meridian; do
  rate=$(eval echo "\${${t}_2}")
  awk -v r="$rate" -v t="$t" 'BEGIN { if (r + 0 <= 0) { print t " measured no successful request" > "/dev/stderr"; exit 1 } }'
done
