#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 10), starting from the corpus kept in
# fuzz/corpus/. Needs cargo-fuzz (`cargo install cargo-fuzz --locked`); builds on the stable
# toolchain with the sanitizer off. Exits non-zero, and names the target, on the first crash.
set -euo pipefail
seconds=${1:-10}
cd "$(dirname "$0")"
targets=(request_head route_patterns dns_responder node_rpc_payloads config_file zone_document api_definition mapping_template json_body xml_document openapi_document content_coding websocket_message upstream_response client_request)
echo "== fuzz: building ${#targets[@]} targets"
cargo fuzz build -s none
for target in "${targets[@]}"; do
  # Run on a copy of the corpus, so that what a run finds does not change the repository's.
  work=$(mktemp -d)
  cp -r "corpus/$target/." "$work/"
  echo "== fuzz: $target for ${seconds}s"
  if ! cargo fuzz run -s none "$target" "$work" -- -max_total_time="$seconds" -rss_limit_mb=2048 2>"$work.log"; then
    tail -n 40 "$work.log"
    echo "fuzz target $target failed; the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E "^#[0-9]+.*DONE|Done [0-9]+ runs" "$work.log" | tail -n 1 || true
  rm -rf "$work" "$work.log"
done
echo "== fuzz: every target ran ${seconds}s without a crash"
