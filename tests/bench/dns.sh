#!/usr/bin/env bash
# DNS benchmark: dnsperf against one node of a 3-region Meridian cluster vs Knot DNS serving
# the same zone, one core each (the server on CPU 0, dnsperf on CPU 1), every query with an
# EDNS Client Subnet option, so latency-aware selection and ECS echo are on the measured path.
# Prints queries/s, the server's CPU time per answered query, and the ratios; then measures
# failover: SIGKILL of region r2's node until answers exclude it, and restart until they
# include it again (KILLS times).
#   ROUNDS=3 SECONDS_PER_RUN=10 KILLS=3 tests/bench/dns.sh
#   SMOKE=1 tests/bench/dns.sh      # one 1-s round and one failover on a debug build (CI);
#                                   # fails unless both servers answered queries
set -euo pipefail
cd "$(dirname "$0")/../.."
profile=release
if [ "${SMOKE:-0}" = 1 ]; then
  ROUNDS=1 SECONDS_PER_RUN=1 KILLS=1 profile=debug
fi
ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
KILLS=${KILLS:-3}
for tool in dnsperf knotd knotc dig taskset; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install dnsperf knot dnsutils util-linux)" >&2; exit 1; }
done
echo "== building meridian ($profile)"
if [ "$profile" = release ]; then cargo build --release --quiet --bin meridian -p meridian-node; else cargo build --quiet --bin meridian -p meridian-node; fi
bin=$PWD/target/$profile/meridian
work=$(mktemp -d /tmp/meridian-dnsbench-XXXX)
pids=()
declare -A node_pid
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
echo 0123456789abcdef0123456789abcdef > "$work/admin.token"

node_config() { # region
  local ip="127.$1.9.1"
  cat <<YAML
listen: { http: "$ip:8080" }
admin: { listen: "$ip:9901", token_file: $work/admin.token }
access_log: { enabled: false }
cluster:
  data_dir: $work/data-$1
  rpc: "$ip:7001"
  dns: { listen: "$ip:8053", rate_limit: 0 }
YAML
}
wait_file() { for _ in $(seq 100); do [ -s "$1" ] && return 0; sleep 0.1; done; echo "timed out waiting for $1" >&2; exit 1; }

echo "== starting a 3-region cluster (127.R.9.1); node 1 pinned to CPU 0, the others to CPU 1"
for r in 1 2 3; do node_config $r > "$work/node-$r.yaml"; done
taskset -c 0 "$bin" cluster init --region r1 --config "$work/node-1.yaml" --ready-file "$work/ready-1.json" >"$work/node-1.log" 2>&1 &
pids+=($!); node1=$!
wait_file "$work/ready-1.json"
token=$(cat "$work/ready-1.token")
for r in 2 3; do
  taskset -c 1 "$bin" cluster join --region r$r --peer 127.1.9.1:7001 --token "$token" --config "$work/node-$r.yaml" \
    --ready-file "$work/ready-$r.json" >"$work/node-$r.log" 2>&1 &
  pids+=($!); node_pid[$r]=$!
  wait_file "$work/ready-$r.json"
done
cat > "$work/zone.yaml" <<YAML
zone: example.test
routed: [api]
YAML
cli() { "$bin" "$@" --config "$work/node-1.yaml" >/dev/null; }
cli dns zones put "$work/zone.yaml"
cli regions put r2 --cidr 198.51.100.0/24
for _ in $(seq 100); do
  [ "$(dig @127.1.9.1 -p 8053 +short api.example.test +subnet=198.51.100.0/24)" = 127.2.9.1 ] && break
  sleep 0.1
done
[ "$(dig @127.1.9.1 -p 8053 +short api.example.test +subnet=198.51.100.0/24)" = 127.2.9.1 ] \
  || { echo "Meridian does not answer the ECS query with region r2" >&2; exit 1; }

echo "== starting Knot DNS with the same zone on 127.0.9.53:8053 (one UDP worker, CPU 0)"
mkdir -p "$work/knot"
cat > "$work/knot/example.test.zone" <<ZONE
\$ORIGIN example.test.
\$TTL 5
@    SOA ns1.example.test. hostmaster.example.test. 1 3600 600 604800 30
@    NS  ns1.example.test.
ns1  A   127.1.9.1
api  A   127.2.9.1
ZONE
cat > "$work/knot/knot.conf" <<CONF
server:
  listen: 127.0.9.53@8053
  udp-workers: 1
  tcp-workers: 1
  background-workers: 1
  rundir: $work/knot
database:
  storage: $work/knot
log:
  - target: stderr
    any: error
zone:
  - domain: example.test
    file: $work/knot/example.test.zone
CONF
taskset -c 0 knotd -c "$work/knot/knot.conf" >"$work/knot.log" 2>&1 &
pids+=($!); knot=$!
for _ in $(seq 50); do dig @127.0.9.53 -p 8053 +short api.example.test 2>/dev/null | grep -q . && break; sleep 0.1; done
[ "$(dig @127.0.9.53 -p 8053 +short api.example.test)" = 127.2.9.1 ] || { echo "Knot does not answer" >&2; cat "$work/knot.log"; exit 1; }

printf 'api.example.test A\n' > "$work/queries"
# ECS 198.51.100.0/24: family 1, source 24, scope 0, 3 address bytes.
ecs="8:00011800c63364"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run() { # name pid addr
  local before after out qps answered ticks
  before=$(cpu_ticks "$2")
  out=$(taskset -c 1 dnsperf -s "$3" -p 8053 -d "$work/queries" -l "$SECONDS_PER_RUN" -c 4 -q 256 -E "$ecs" 2>&1)
  after=$(cpu_ticks "$2")
  qps=$(awk '/Queries per second/ {print $4}' <<<"$out")
  answered=$(awk '/Queries completed/ {print $3}' <<<"$out")
  ticks=$((after - before))
  # CPU µs per answered query (ticks are 1/100 s).
  awk -v n="$1" -v q="$qps" -v a="$answered" -v t="$ticks" -v lost="$(awk '/Queries lost/ {print $3}' <<<"$out")" \
    'BEGIN { printf "  %-8s %9.0f q/s  %6.2f µs CPU/query  (%d answered, %d lost)\n", n, q, t * 10000 / a, a, lost }'
  [ "${answered:-0}" -gt 0 ] || { echo "$1 answered no query: the benchmark measured nothing" >&2; exit 1; }
  echo "$1 $qps $(awk -v a="$answered" -v t="$ticks" 'BEGIN { print t * 10000 / a }')" >> "$work/results"
}
echo "== $ROUNDS rounds x ${SECONDS_PER_RUN}s, alternating (dnsperf -c 4 -q 256, ECS on every query)"
for round in $(seq "$ROUNDS"); do
  echo " round $round"
  run knot "$knot" 127.0.9.53
  run meridian "$node1" 127.1.9.1
done
awk '
  { qps[$1] = qps[$1] " " $2; cpu[$1] = cpu[$1] " " $3 }
  function median(list,   a, n, i, j, t) {
    n = split(list, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  END {
    kq = median(qps["knot"]); mq = median(qps["meridian"]); kc = median(cpu["knot"]); mc = median(cpu["meridian"])
    printf "== medians\n  knot     %9.0f q/s  %6.2f µs CPU/query\n  meridian %9.0f q/s  %6.2f µs CPU/query\n", kq, kc, mq, mc
    printf "  meridian/knot: %.2fx queries/s (goal >= 0.9x), %.2fx CPU per query (goal <= 1.0x)\n", mq / kq, mc / kc
  }' "$work/results"

echo "== failover: SIGKILL region r2's node, then restart it ($KILLS times)"
answer() { dig @127.1.9.1 -p 8053 +short +time=1 +tries=1 api.example.test +subnet=198.51.100.0/24 2>/dev/null; }
now_ms() { date +%s%3N; }
for k in $(seq "$KILLS"); do
  kill -9 "${node_pid[2]}"; wait "${node_pid[2]}" 2>/dev/null || true
  killed=$(now_ms)
  until a=$(answer) && [ -n "$a" ] && [ "$a" != 127.2.9.1 ]; do sleep 0.02; done
  out=$(( $(now_ms) - killed ))
  taskset -c 1 "$bin" serve --config "$work/node-2.yaml" >>"$work/node-2.log" 2>&1 &
  pids+=($!); node_pid[2]=$!
  restarted=$(now_ms)
  until [ "$(answer)" = 127.2.9.1 ]; do sleep 0.05; done
  back=$(( $(now_ms) - restarted ))
  echo "  kill $k: answers exclude r2 after ${out} ms (goal <= 3000); back ${back} ms after restart (hysteresis 3 s)"
  sleep 2
done
