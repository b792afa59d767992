#!/usr/bin/env bash
# Time to ejection: four upstream targets behind one Meridian route, one of them killed
# (SIGKILL, its open connections reset) in the middle of a wrk run. Counts the requests that
# failed, those that failed after the target was ejected (the goal: none), and the time
# from the kill to the ejection.
#
#   tests/bench/ejection.sh              # 12 s of load, the kill at 4 s
#   DURATION=30s tests/bench/ejection.sh
#   SMOKE=1 tests/bench/ejection.sh      # 3 s on a debug build (CI): fails unless it measured
#                                        # successful requests and saw the ejection
#
# Layout: Meridian (--workers 1) on core 0; the four nginx targets (1 worker each) and wrk
# (-c64) on core 1. The route uses the default passive health (5 failures in a row eject a
# target for 5 s, then for twice as long each time). The figures come from Meridian's own
# access log (every request with its status and time) and its log's ejection line.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/bench/lib.sh

SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
  DURATION=3s PROFILE=debug
fi
DURATION=${DURATION:-12s}
PROFILE=${PROFILE:-release}
CONNECTIONS=${CONNECTIONS:-64}
PROXY_CORE=${PROXY_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
BASE_PORT=${BASE_PORT:-18521}
MERIDIAN_PORT=${MERIDIAN_PORT:-18529}
ADMIN_PORT=${ADMIN_PORT:-18530}

needs "apt-get install -y nginx wrk util-linux python3" nginx wrk taskset python3
build meridian
MERIDIAN=target/$PROFILE/meridian

work_dir ejection

as_root=$( [ "$(id -u)" = 0 ] && echo "user root;" || true )
targets=""
for i in 1 2 3 4; do
  port=$((BASE_PORT + i - 1))
  mkdir -p "$work/t$i/logs"
  cat > "$work/t$i/nginx.conf" <<CONF
$as_root
worker_processes 1;
daemon off;
error_log $work/t$i/logs/error.log;
pid $work/t$i/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$port; location / { return 200 "target $i\n"; } }
}
CONF
  taskset -c "$LOAD_CORE" nginx -p "$work/t$i" -c "$work/t$i/nginx.conf" 2>/dev/null & pids+=($!)
  eval "target_${i}_pid=$!"
  wait_port "$port"
  targets="$targets{ address: \"127.0.0.1:$port\" }, "
done
cat > "$work/meridian.yaml" <<CONF
listen: { http: "127.0.0.1:$MERIDIAN_PORT" }
admin: { listen: "127.0.0.1:$ADMIN_PORT" }
access_log: { path: "$work/access.log" }
throttle: { rate: 100000000, burst: 100000000 }
apis:
  - id: bench
    routes:
      - route: ANY /{proxy+}
        integration: { type: http_proxy, uri: "http://pets.internal/{proxy}", targets: [${targets%, }] }
    stages: [{ name: bench }]
CONF
taskset -c "$PROXY_CORE" "$MERIDIAN" serve --workers 1 --config "$work/meridian.yaml" 2>"$work/meridian.err" & meridian_pid=$!; pids+=($meridian_pid)
wait_port "$MERIDIAN_PORT"
curl -sf -o /dev/null -H "Host: bench.local" "http://127.0.0.1:$MERIDIAN_PORT/bench/hello" || { echo "the route does not answer" >&2; exit 1; }

seconds=${DURATION%s}
kill_after=$(awk -v d="$seconds" 'BEGIN { printf "%.1f", d / 3 }')
echo "== $DURATION of load ($CONNECTIONS connections); target 4 killed after ${kill_after}s"
taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -H "Host: bench.local" "http://127.0.0.1:$MERIDIAN_PORT/bench/hello" > "$work/wrk.out" & wrk_pid=$!
sleep "$kill_after"
# The master first (it would start a new worker), then its worker.
workers=$(pgrep -P "$target_4_pid" || true)
killed_at=$(date +%s.%N)
kill -9 "$target_4_pid"
[ -n "$workers" ] && kill -9 $workers
wait "$wrk_pid" || true
sleep 0.5

python3 - "$work/access.log" "$work/meridian.err" "$killed_at" <<'PY'
import datetime, json, re, sys
log, err, killed = sys.argv[1], sys.argv[2], float(sys.argv[3])
def stamp(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
total = ok = 0
failures = []
for line in open(log):
    entry = json.loads(line)
    total += 1
    if entry["status"] < 500:
        ok += 1
    else:
        failures.append(stamp(entry["time"]))
ejected = None
for line in open(err):
    if "upstream target ejected" in line:
        ejected = stamp(re.search(r"\d{4}-\d\d-\d\dT[\d:.]+Z", line).group(0))
        break
if ok == 0:
    sys.exit("measured no successful request")
if ejected is None:
    sys.exit(f"the killed target was never ejected ({len(failures)} failed requests)")
after = sum(1 for t in failures if t > ejected + 0.001)
print(f"requests: {total}, answered: {ok}, failed: {len(failures)} (all within {max(failures) - killed if failures else 0:.3f} s of the kill)")
print(f"time from the kill to the ejection: {(ejected - killed) * 1000:.0f} ms; failed requests after the ejection: {after} (goal 0)")
PY
