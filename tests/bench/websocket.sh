#!/usr/bin/env bash
# WebSocket API benchmark: messages through a `type: websocket` API against a WebSocket echo
# served directly, memory per idle connection, and push latency through the callback API,
# local against forwarded to another node.
#
#   tests/bench/websocket.sh           # 3 rounds of 10 s, 64 connections; 10,000 idle
#                                      # connections; 1,000 pushes each way
#   SMOKE=1 tests/bench/websocket.sh   # one round of 1 s, 200 idle connections, 50 pushes on a
#                                      # debug build (CI): fails unless every message was answered
#
# Layout on a 2-core machine: the server under test (Meridian with --workers 1, or the echo
# server, one thread) is pinned to core 0; the load generator and the API's HTTP backend (one
# thread, answering each event with its message) share core 1. A message goes client →
# Meridian → backend (a POST with the event's envelope) → Meridian → client (the route
# replies); the reference answers the same message itself. Prints messages/s, p50, p99 and
# the server's CPU time per message (the median of ROUNDS alternating rounds), the ratios;
# then Meridian's RSS growth per idle connection (each opened, then silent), and the latency
# of a push through the admin API of the node holding the connection and of another node
# (a two-node cluster; the call crosses one RPC hop), until the client has the message.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/bench/lib.sh

SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
  SECONDS_PER_RUN=1 ROUNDS=1 CONNECTIONS=8 COUNT=200 PUSHES=50 PROFILE=debug
fi
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
COUNT=${COUNT:-10000}
PUSHES=${PUSHES:-1000}
PROFILE=${PROFILE:-release}
PROXY_CORE=${PROXY_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
BACKEND_PORT=${BACKEND_PORT:-18501}
ECHO_PORT=${ECHO_PORT:-18502}
MERIDIAN_PORT=${MERIDIAN_PORT:-18503}
ADMIN_PORT=${ADMIN_PORT:-18504}
TOKEN=bench-admin-token-0123456789

needs "apt-get install -y util-linux" taskset
ulimit -n $((COUNT + 1000)) || { echo "needs ulimit -n $((COUNT + 1000)) (the hard limit is $(ulimit -Hn))" >&2; exit 1; }

build meridian websocket-bench
MERIDIAN=target/$PROFILE/meridian
BENCH=target/$PROFILE/websocket-bench
work_dir websocket
echo "$TOKEN" > "$work/admin.token"

# The API every Meridian here serves: each message goes to the `echo` route, which replies.
api() {
  cat <<CONF
apis:
  - id: bench
    type: websocket
    route_selection: echo
    websocket: { messages_per_second: 100000 }
    routes:
      - { route: echo, reply: true, integration: { type: http_proxy, uri: "http://127.0.0.1:$BACKEND_PORT/echo" } }
CONF
}
cat > "$work/meridian.yaml" <<CONF
listen: { http: "127.0.0.1:$MERIDIAN_PORT" }
admin: { listen: "127.0.0.1:$ADMIN_PORT", token_file: "$work/admin.token" }
access_log: { enabled: true, path: "$work/access.log" }
limits: { max_websocket_connections: $((COUNT + 1000)), max_connections: $((COUNT + 1000)) }
throttle: { rate: 100000000, burst: 100000000 }
$(api)
    stages: [{ name: bench }]
CONF

taskset -c "$LOAD_CORE" "$BENCH" backend "127.0.0.1:$BACKEND_PORT" & pids+=($!)
taskset -c "$PROXY_CORE" "$BENCH" echo "127.0.0.1:$ECHO_PORT" & echo_pid=$!; pids+=($echo_pid)
taskset -c "$PROXY_CORE" "$MERIDIAN" serve --workers 1 --config "$work/meridian.yaml" 2>"$work/meridian.err" & meridian_pid=$!; pids+=($meridian_pid)
wait_port "$BACKEND_PORT"; wait_port "$ECHO_PORT"; wait_port "$MERIDIAN_PORT"

# load URL PID: one closed-loop run; prints "msgs/s p50 p99 cpu_us_per_message".
load() {
  local url=$1 pid=$2 c0 c1 out rate p50 p99 n errors
  c0=$(cpu_ticks "$pid")
  out=$(taskset -c "$LOAD_CORE" "$BENCH" load "$url" "$CONNECTIONS" "$SECONDS_PER_RUN")
  c1=$(cpu_ticks "$pid")
  read -r rate p50 p99 n errors <<<"$out"
  if [ "$errors" != 0 ] || [ "$n" = 0 ]; then
    echo "$url: $errors connections failed, $n messages answered" >&2
    exit 1
  fi
  echo "$rate $p50 $p99 $(awk -v c=$((c1 - c0)) -v n="$n" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", c * 1e6 / hz / n}')"
}

echo "== messages: $ROUNDS rounds of ${SECONDS_PER_RUN}s, $CONNECTIONS connections, alternating"
: > "$work/echo.txt"; : > "$work/meridian.txt"
for round in $(seq 1 "$ROUNDS"); do
  load "ws://127.0.0.1:$ECHO_PORT/" "$echo_pid" >> "$work/echo.txt"
  load "ws://127.0.0.1:$MERIDIAN_PORT/bench" "$meridian_pid" >> "$work/meridian.txt"
  echo "   round $round: echo $(tail -1 "$work/echo.txt" | cut -d' ' -f1) msgs/s, meridian $(tail -1 "$work/meridian.txt" | cut -d' ' -f1) msgs/s"
done
col() { cut -d' ' -f"$2" "$1" | median; }
echo
printf "%-22s %10s %9s %9s %14s\n" target "msgs/s" "p50 ms" "p99 ms" "CPU us/msg"
for t in echo meridian; do
  printf "%-22s %10s %9s %9s %14s\n" "$t" "$(col "$work/$t.txt" 1)" "$(col "$work/$t.txt" 2)" "$(col "$work/$t.txt" 3)" "$(col "$work/$t.txt" 4)"
done
awk -v m="$(col "$work/meridian.txt" 1)" -v e="$(col "$work/echo.txt" 1)" -v mc="$(col "$work/meridian.txt" 4)" -v ec="$(col "$work/echo.txt" 4)" \
  'BEGIN { printf "meridian / direct echo: %.2fx messages/s, %.2fx CPU per message (Meridian also makes an HTTP call per message)\n", m / e, mc / ec }'

echo
echo "== $COUNT idle connections to meridian"
# hold COUNT: COUNT connections to Meridian's stage, each left silent.
hold() { hold_open "$1" taskset -c "$LOAD_CORE" "$BENCH" idle "ws://127.0.0.1:$MERIDIAN_PORT/bench" "$1"; }
hold 100
sleep 0.5
before=$(rss_kib "$meridian_pid")
hold "$COUNT"
sleep 1
after=$(rss_kib "$meridian_pid")
open=$(curl -sf "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '/^meridian_websocket_connections\{/ {s += $2} END {print s + 0}')
[ "$open" -ge "$COUNT" ] || { echo "meridian counts $open open connections, not $((COUNT + 100))" >&2; exit 1; }
awk -v b="$before" -v a="$after" -v n="$COUNT" -v o="$open" \
  'BEGIN { printf "RSS %d KiB before, %d KiB after, %d open: %.2f KiB per idle connection (goal < 16 KiB)\n", b, a, o, (a - b) / n }'

echo
echo "== push latency: $PUSHES pushes through each node's admin API (a two-node cluster)"
for n in 1 2; do
  ip=127.0.$((60 + n)).1
  cat > "$work/node$n.yaml" <<CONF
listen: { http: "$ip:$MERIDIAN_PORT" }
admin: { listen: "$ip:$ADMIN_PORT", token_file: "$work/admin.token" }
access_log: { enabled: false }
cluster: { data_dir: "$work/data$n", rpc: "$ip:7001" }
CONF
done
"$MERIDIAN" cluster init --region r1 --config "$work/node1.yaml" --ready-file "$work/node1.ready" >/dev/null 2>"$work/node1.err" & pids+=($!)
for _ in $(seq 1 100); do [ -s "$work/node1.ready" ] && break; sleep 0.1; done
"$MERIDIAN" cluster join --region r2 --peer 127.0.61.1:7001 --token "$(cat "$work/node1.token")" \
  --config "$work/node2.yaml" --ready-file "$work/node2.ready" >/dev/null 2>"$work/node2.err" & pids+=($!)
for _ in $(seq 1 100); do [ -s "$work/node2.ready" ] && break; sleep 0.1; done
api > "$work/api.yaml"
"$MERIDIAN" apply -f "$work/api.yaml" --stage bench --config "$work/node1.yaml" >/dev/null
# Both nodes serve the API (a plain GET of a WebSocket API's stage is 426) before pushing.
for ip in 127.0.61.1 127.0.62.1; do
  for _ in $(seq 1 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$ip:$MERIDIAN_PORT/bench" || true)" = 426 ] && break
    sleep 0.1
  done
done
taskset -c "$LOAD_CORE" "$BENCH" push "ws://127.0.61.1:$MERIDIAN_PORT/bench" "$PUSHES" \
  "127.0.61.1:$ADMIN_PORT" "$TOKEN" bench bench "127.0.62.1:$ADMIN_PORT" > "$work/push.txt"
read -r _ local50 local99 < <(sed -n 1p "$work/push.txt")
read -r _ fwd50 fwd99 < <(sed -n 2p "$work/push.txt")
printf "%-32s %9s %9s\n" "push through" "p50 ms" "p99 ms"
printf "%-32s %9s %9s\n" "the node holding the connection" "$local50" "$local99"
printf "%-32s %9s %9s\n" "another node (one RPC hop)" "$fwd50" "$fwd99"
