# Helpers the HTTP benchmark scripts share (sourced, not run): waiting for a port, a
# process's resident set, clients holding idle connections, a process's CPU time, medians, wrk's latency units, one wrk run measured, HAProxy's
# configuration, the check for the tools a script needs, building and the work folder.

# Waits until something listens on 127.0.0.1:$1 (5 s at most).
wait_port() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2; exit 1
}

# The resident set of process $1, in KiB.
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# hold_open COUNT CMD...: runs CMD, a client that opens COUNT connections, prints `ready N`
# once N are open and holds them until its standard input closes (kept open here until the
# script ends); fails unless all COUNT opened within a minute.
hold_open() {
  local count=$1 fifo out opened keep
  shift
  fifo=$(mktemp -u "$work/hold.XXXXXX"); mkfifo "$fifo"
  out=$(mktemp "$work/out.XXXXXX")
  "$@" < "$fifo" > "$out" 2>"$out.err" & pids+=($!)
  exec {keep}>"$fifo"
  for _ in $(seq 1 600); do
    if grep -q '^ready' "$out"; then break; fi
    sleep 0.1
  done
  opened=$(awk '/^ready/ {print $2}' "$out")
  [ "${opened:-0}" = "$count" ] || { echo "only ${opened:-0} of $count connections opened ($*): $(head -3 "$out.err")" >&2; exit 1; }
}

# The user + system clock ticks process $1 has used.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# The median of the numbers on stdin, one per line.
median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR + 1) / 2)]}'; }

# wrk's latency ("812.00us", "1.20ms", "2.00s") in milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
    else printf "%s", v }'
}

# wrk_run PID WRK_ARGS...: runs wrk on $LOAD_CORE with WRK_ARGS (the URL last) and prints
# "req/s p50_ms p99_ms cpu_us_per_request", the CPU time being process PID's over the run.
# Fails when any answer was not 2xx or 3xx, or none was measured.
wrk_run() {
  local pid=$1 out c0 c1 rps p50 p99 n
  shift
  c0=$(cpu_ticks "$pid")
  out=$(taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency "$@")
  c1=$(cpu_ticks "$pid")
  if grep -q "Non-2xx" <<<"$out"; then
    echo "${*: -1} answered errors under load: $(grep Non-2xx <<<"$out")" >&2
    exit 1
  fi
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  awk -v r="$rps" 'BEGIN { exit !(r + 0 > 0) }' || { echo "${*: -1} measured no successful request" >&2; exit 1; }
  echo "$rps $(to_ms "$p50") $(to_ms "$p99") $(awk -v c=$((c1 - c0)) -v n="$n" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", c * 1e6 / hz / n}')"
}

# haproxy_config FILE PORT SERVER: HAProxy as the benchmarks run it (one thread, its HTTP log
# on stdout, keep-alive to the backend) listening on 127.0.0.1:PORT, with SERVER (a `server`
# line) as its one backend.
haproxy_config() {
  cat > "$1" <<CONF
global
  nbthread 1
  maxconn 8192
  log stdout format raw local0 info
defaults
  mode http
  log global
  option httplog
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend bench
  bind 127.0.0.1:$2
  default_backend upstream
backend upstream
  $3
CONF
}

# needs "PACKAGES" TOOL...: stops the run, naming the packages that bring them, unless every
# TOOL is installed.
needs() {
  local packages=$1 tool
  shift
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "needs $tool ($packages)" >&2; exit 1; }
  done
}

# build BIN...: builds these binaries of the workspace for $PROFILE (release or debug).
build() {
  echo "== building $* ($PROFILE)"
  local bins=()
  for b in "$@"; do bins+=(--bin "$b"); done
  if [ "$PROFILE" = release ]; then cargo build --release "${bins[@]}" --quiet; else cargo build "${bins[@]}" --quiet; fi
}

# work_dir NAME: a fresh folder in $work for the run; at exit every process in $pids, and
# the processes they started (nginx workers), are stopped and the folder removed.
work_dir() {
  work=$(mktemp -d "/tmp/meridian-$1.XXXXXX")
  pids=()
  trap cleanup EXIT
}
cleanup() {
  for p in "${pids[@]}"; do pkill -P "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}

# The REST benchmark of `STAGES=1 proxy.sh` and `REST=1 instructions.sh`: a 2 KiB JSON order
# (20 properties of 95 characters) validated against a 20-property model, mapped by a request
# template, its answer mapped by a response template. Each piece is written into a
# configuration's heredoc where it belongs.
# rest_route: the route, an item of an API's `routes:` list.
rest_route() {
  cat <<CONF
      - route: POST /rest/{proxy+}
        request_validator: body
        request_models: { application/json: Order }
        integration:
          type: http_proxy
          uri: "http://\${stageVariables.backend}/{proxy}"
          request_templates:
            application/json: '#set(\$b = \$input.path(''\$'')){"order": {#foreach(\$k in \$b.keySet())"\$k": "\$util.escapeJavaScript(\$b.get(\$k))"#if(\$foreach.hasNext),#end#end}, "request": "\$context.requestId"}'
          responses:
            - templates:
                application/json: '{"ok": true, "request": "\$context.requestId", "upstream": "\$util.escapeJavaScript(\$input.body)"}'
CONF
}
# rest_models: the model and validator the route names, in the API beside it.
rest_models() {
  cat <<CONF
    models:
      Order:
        type: object
        required: [$(seq -f '"p%02g"' -s ', ' 1 20)]
        properties: { $(for i in $(seq -f '%02g' 1 20); do printf '"p%s": { type: string, maxLength: 200 }, ' "$i"; done) }
    request_validators: { body: { body: true } }
CONF
}
# write_order FILE: the order the route is sent.
write_order() {
  printf '{%s}' "$(for i in $(seq -f '%02g' 1 20); do printf '"p%s": "%s",' "$i" "$(printf 'v%.0s' $(seq 1 95))"; done | sed 's/,$//')" > "$1"
}
