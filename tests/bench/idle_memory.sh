#!/usr/bin/env bash
# Memory per idle keep-alive client connection: Meridian against nginx, same run.
#
#   tests/bench/idle_memory.sh               # 10,000 connections, one request each, then idle
#   COUNT=20000 tests/bench/idle_memory.sh
#   SMOKE=1 tests/bench/idle_memory.sh       # 200 connections on a debug build (CI): fails
#                                            # unless every connection got its 2xx answer
#
# Each server (nginx with 1 worker answering `return 200`; Meridian with --workers 1 answering
# from a mock route, so only client connections are measured) first gets 100 warm-up
# connections, then COUNT more, each of which sends one request, reads the answer and stays
# open and silent. The figure is the growth of the serving process's resident set
# (VmRSS) over those COUNT connections, divided by COUNT.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/bench/lib.sh

SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
  COUNT=200 PROFILE=debug
fi
COUNT=${COUNT:-10000}
PROFILE=${PROFILE:-release}
NGINX_PORT=${NGINX_PORT:-18491}
MERIDIAN_PORT=${MERIDIAN_PORT:-18492}
ADMIN_PORT=${ADMIN_PORT:-18493}

needs "apt-get install -y nginx" nginx
# Each process (the server, the clients) holds COUNT + a few hundred descriptors.
ulimit -n $((COUNT + 1000)) || { echo "needs ulimit -n $((COUNT + 1000)) (the hard limit is $(ulimit -Hn))" >&2; exit 1; }

echo "== building meridian and idle-clients ($PROFILE)"
if [ "$PROFILE" = release ]; then
  cargo build --release --quiet --bin meridian --bin idle-clients
else
  cargo build --quiet --bin meridian --bin idle-clients
fi
MERIDIAN=target/$PROFILE/meridian
CLIENTS=target/$PROFILE/idle-clients

work=$(mktemp -d /tmp/meridian-idle.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/nginx/logs"
cat > "$work/nginx/nginx.conf" <<CONF
worker_processes 1;
worker_rlimit_nofile $((COUNT + 1000));
daemon off;
error_log $work/nginx/logs/error.log;
pid $work/nginx/nginx.pid;
events { worker_connections $((COUNT + 1000)); }
http {
  access_log off;
  keepalive_timeout 600s;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$NGINX_PORT backlog=4096;
    location / { return 200 "hello\n"; }
  }
}
CONF
cat > "$work/meridian.yaml" <<CONF
listen: { http: "127.0.0.1:$MERIDIAN_PORT" }
admin: { listen: "127.0.0.1:$ADMIN_PORT" }
access_log: { enabled: false }
limits: { max_connections: $((COUNT + 1000)), idle_timeout: 600s }
throttle: { rate: 100000000, burst: 100000000 }
apis:
  - id: idle
    routes:
      - route: GET /hello
        integration: { type: mock, body: "hello\n" }
    stages:
      - name: idle
CONF

# Prints the KiB per connection for the server process $1 on port $2.
per_connection() {
  local pid=$1 port=$2 path=$3 before after
  # `ready N` counts the connections answered 2xx.
  hold_open 100 "$CLIENTS" "127.0.0.1:$port" 100 idle.test "$path"
  sleep 0.5
  before=$(rss_kib "$pid")
  hold_open "$COUNT" "$CLIENTS" "127.0.0.1:$port" "$COUNT" idle.test "$path"
  sleep "${SETTLE:-1}"
  after=$(rss_kib "$pid")
  awk -v b="$before" -v a="$after" -v n="$COUNT" 'BEGIN { printf "%.2f %d %d", (a - b) / n, b, a }'
}

nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" 2>/dev/null & nginx_master=$!; pids+=($nginx_master)
wait_port "$NGINX_PORT"
nginx_worker=$(pgrep -P "$nginx_master" | head -1)
"$MERIDIAN" serve --workers 1 --config "$work/meridian.yaml" 2>"$work/meridian.err" & meridian_pid=$!; pids+=($meridian_pid)
wait_port "$MERIDIAN_PORT"

echo "== $COUNT idle connections to nginx"
read -r nginx_kib nginx_before nginx_after <<<"$(per_connection "$nginx_worker" "$NGINX_PORT" /hello)"
echo "== $COUNT idle connections to meridian"
read -r meridian_kib meridian_before meridian_after <<<"$(per_connection "$meridian_pid" "$MERIDIAN_PORT" /idle/hello)"

echo
printf "%-12s %14s %14s %18s\n" server "RSS before KiB" "RSS after KiB" "KiB per connection"
printf "%-12s %14d %14d %18.2f\n" nginx "$nginx_before" "$nginx_after" "$nginx_kib"
printf "%-12s %14d %14d %18.2f\n" meridian "$meridian_before" "$meridian_after" "$meridian_kib"
echo
awk -v m="$meridian_kib" 'BEGIN { printf "meridian per idle connection: %.2f KiB (goal <= 9 KiB, aim 4 KiB)\n", m }'
