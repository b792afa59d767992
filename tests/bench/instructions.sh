#!/usr/bin/env bash
# Instructions per proxied request: Meridian against nginx, both counted by callgrind in the
# same run. Requests per second on a shared VM move by ±15 % between runs; an instruction
# count repeats to within about 1 %, so it shows whether a change made the request path
# cheaper, and by how much, where a throughput run cannot.
#
#   tests/bench/instructions.sh            # 2,000 requests per proxy, release build
#   SMOKE=1 tests/bench/instructions.sh    # 100 requests, debug build: does it measure?
#   REST=1 tests/bench/instructions.sh     # Meridian alone: STAGES=1 proxy.sh's REST route
#                                          # (validation, two templates) against its plain POST
#
# Each proxy runs under `valgrind --tool=callgrind`. It answers 50 requests first (what
# happens once is done then: connections to the backend opened, clocks calibrated, caches
# filled); the counters are then zeroed, REQUESTS more are sent one after another on one
# keep-alive connection (curl), and the counters dumped: what they hold is REQUESTS
# requests' worth and nothing else. nginx runs as one process (`master_process off`) with its
# access log on, Meridian with `--workers 1` and its JSON access log, counted on its worker
# thread (the thread with the most instructions: the log's writer thread only writes what
# the worker formatted). Prints both counts, their ratio, and Meridian's costliest functions
# per request (self cost); then the misses of callgrind's simulated first-level instruction
# cache per request, which tell how much code a request runs through (a miss served from the
# second-level cache stalls the processor's front end for about a dozen cycles). Kernel time
# is not counted (it is about the same for both: see docs/BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/bench/lib.sh

SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
  REQUESTS=100 PROFILE=debug
fi
REQUESTS=${REQUESTS:-2000}
PROFILE=${PROFILE:-release}
REST=${REST:-0}
BACKEND_PORT=${BACKEND_PORT:-18581}
NGINX_PORT=${NGINX_PORT:-18582}
MERIDIAN_PORT=${MERIDIAN_PORT:-18583}
ADMIN_PORT=${ADMIN_PORT:-18584}

needs "apt-get install -y nginx valgrind curl" nginx valgrind callgrind_annotate curl

build meridian
MERIDIAN=target/$PROFILE/meridian

work_dir instructions
mkdir -p "$work/backend/logs" "$work/proxy/logs"
cat > "$work/backend/nginx.conf" <<CONF
worker_processes 1;
daemon off;
error_log $work/backend/logs/error.log;
pid $work/backend/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$BACKEND_PORT;
    location / { return 200 "hello from the backend\n"; }
  }
}
CONF
cat > "$work/proxy/nginx.conf" <<CONF
master_process off;
daemon off;
error_log $work/proxy/logs/error.log;
pid $work/proxy/nginx.pid;
events { worker_connections 1024; }
http {
  access_log $work/proxy/logs/access.log;
  keepalive_requests 1000000;
  upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 16; }
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
# The proxy route, or with REST=1 the REST route of `STAGES=1 proxy.sh` beside the same POST
# without stages (and the 2 KiB order they are sent).
if [ "$REST" = 1 ]; then
  api=$(cat <<CONF
  - id: shop
    type: rest
    routes:
      - route: POST /posted/{proxy+}
        integration: { type: http_proxy, uri: "http://\${stageVariables.backend}/{proxy}" }
$(rest_route)
$(rest_models)
CONF
)
  write_order "$work/order.json"
else
  api=$(cat <<CONF
  - id: plain
    type: http
    routes:
      - route: ANY /{proxy+}
        integration: { type: http_proxy, uri: "http://\${stageVariables.backend}/{proxy}" }
CONF
)
fi
cat > "$work/meridian.yaml" <<CONF
listen: { http: "127.0.0.1:$MERIDIAN_PORT" }
admin: { listen: "127.0.0.1:$ADMIN_PORT" }
access_log: { path: "$work/meridian-access.log" }
# Out of reach, and still counted on every request.
throttle: { rate: 100000000, burst: 100000000 }
apis:
$api
    stages:
      - name: bench
        variables: { backend: "127.0.0.1:$BACKEND_PORT" }
CONF

nginx -p "$work/backend" -c "$work/backend/nginx.conf" 2>/dev/null & pids+=($!)
wait_port "$BACKEND_PORT"

# What each request sends besides its URL (curl's arguments): nothing but a GET, unless set.
request_args=()

# count NAME URL CMD...: runs CMD under callgrind, warms it up, counts REQUESTS requests for
# URL (with `request_args`) sent on one keep-alive connection, and prints the dump of its
# busiest thread.
count() {
  local name=$1 url=$2 out codes busiest=0 file="" c f
  shift 2
  out="$work/cg.$name"
  valgrind --tool=callgrind --cache-sim=yes --separate-threads=yes --callgrind-out-file="$out" "$@" >"$out.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 1 600); do
    curl -sf -o /dev/null "${request_args[@]}" "$url" && break
    kill -0 "$pid" 2>/dev/null || { echo "$name did not start: $(tail -5 "$out.log")" >&2; exit 1; }
    sleep 0.1
  done
  curl -s -o /dev/null "${request_args[@]}" "$url?warm=[1-50]"
  # callgrind_control reaches a process asleep in a system call through ptrace (vgdb).
  timeout 60 callgrind_control --zero "$pid" >/dev/null || { echo "callgrind_control could not reach $name" >&2; exit 1; }
  codes=$(curl -s -o /dev/null -w '%{http_code}\n' "${request_args[@]}" "$url?n=[1-$REQUESTS]" | grep -c '^200$' || true)
  [ "$codes" = "$REQUESTS" ] || { echo "$name answered $codes of $REQUESTS requests with 200" >&2; exit 1; }
  timeout 60 callgrind_control --dump=measured "$pid" >/dev/null || { echo "callgrind_control could not dump $name" >&2; exit 1; }
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  for f in "$out".1 "$out".1-*; do
    [ -f "$f" ] || continue
    c=$(callgrind_annotate --auto=no --show-percs=no "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 + 0 }')
    if [ "${c:-0}" -gt "$busiest" ]; then busiest=$c; file=$f; fi
  done
  [ "$busiest" -gt 0 ] || { echo "$name: nothing counted" >&2; exit 1; }
  echo "$file"
}

# per_request FILE EVENT: an event's count in a dump, per request (Ir: instructions; I1mr:
# misses in the simulated first-level instruction cache).
per_request() {
  callgrind_annotate --auto=no --show-percs=no --show="$2" "$1" 2>/dev/null |
    awk -v n="$REQUESTS" '/PROGRAM TOTALS/ { gsub(",", "", $1); printf "%.0f\n", $1 / n }'
}

if [ "$REST" = 1 ]; then
  request_args=(-H 'content-type: application/json' --data-binary "@$work/order.json")
  echo "== meridian: $REQUESTS POSTs to the plain route under callgrind"
  posted_dump=$(count posted "http://127.0.0.1:$MERIDIAN_PORT/bench/posted/hello" \
    "$MERIDIAN" serve --workers 1 --config "$work/meridian.yaml")
  echo "== meridian: $REQUESTS POSTs to the REST route under callgrind"
  rest_dump=$(count rest "http://127.0.0.1:$MERIDIAN_PORT/bench/rest/hello" \
    "$MERIDIAN" serve --workers 1 --config "$work/meridian.yaml")
  posted_ir=$(per_request "$posted_dump" Ir)
  rest_ir=$(per_request "$rest_dump" Ir)
  posted_i1=$(per_request "$posted_dump" I1mr)
  rest_i1=$(per_request "$rest_dump" I1mr)
  echo "instructions per POST: plain route $posted_ir, REST route (validation, two templates) $rest_ir, extra $((rest_ir - posted_ir))"
  echo "instruction-cache misses per POST (simulated L1): plain route $posted_i1, REST route $rest_i1"
  exit 0
fi

echo "== nginx: $REQUESTS requests under callgrind"
nginx_dump=$(count nginx "http://127.0.0.1:$NGINX_PORT/hello" nginx -p "$work/proxy" -c "$work/proxy/nginx.conf")
echo "== meridian: $REQUESTS requests under callgrind"
meridian_dump=$(count meridian "http://127.0.0.1:$MERIDIAN_PORT/bench/hello" \
  "$MERIDIAN" serve --workers 1 --config "$work/meridian.yaml")
nginx_ir=$(per_request "$nginx_dump" Ir)
meridian_ir=$(per_request "$meridian_dump" Ir)
nginx_i1=$(per_request "$nginx_dump" I1mr)
meridian_i1=$(per_request "$meridian_dump" I1mr)

echo "Meridian's costliest functions, instructions per request (self; a function inlined into"
echo "several files' code summed):"
# The frames on the thread's stack when the counters are dumped (main down to the runtime's
# loop) are listed with the whole count: they are left out.
callgrind_annotate --auto=no --threshold=100 --show-percs=no --show=Ir "$meridian_dump" 2>/dev/null |
  awk -v n="$REQUESTS" '/PROGRAM TOTALS/ { total = $1; next }
    /^ *[0-9,]+ / && $1 != total {
      v = $1; gsub(",", "", v); $1 = ""; sub(/^ +/, "")
      sub(/ \[[^]]*\]$/, ""); sub(/^[^:]*:/, "")
      sum[$0] += v }
    END { for (f in sum) if (sum[f] >= n) printf "%8.0f  %s\n", sum[f] / n, substr(f, 1, 110) }' |
  sort -rn | awk 'NR <= 15'
echo
echo "instructions per proxied request: nginx $nginx_ir, meridian $meridian_ir"
awk -v m="$meridian_ir" -v n="$nginx_ir" 'BEGIN { printf "meridian/nginx: %.2fx (lower is better)\n", m / n }'
echo "instruction-cache misses per proxied request (simulated L1): nginx $nginx_i1, meridian $meridian_i1"
awk -v m="$meridian_i1" -v n="$nginx_i1" 'BEGIN { printf "meridian/nginx: %.2fx (lower is better)\n", m / n }'
