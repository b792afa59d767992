#!/usr/bin/env bash
# Firewall rule cost: each kind of rule evaluated in-process, 1 rule against 21 rules of
# the kind, none matching; prints µs per rule (see tests/src/bin/waf-bench.rs).
# SMOKE=1: a few batches on a debug build (CI); fails if a rule matched or nothing ran.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "${SMOKE:-0}" = 1 ]; then profile=debug; flags=(); else profile=release; flags=(--release); fi
echo "== building the benchmark ($profile)"
cargo build "${flags[@]}" --quiet --bin waf-bench -p meridian-tests
"target/$profile/waf-bench"
