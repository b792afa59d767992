#!/usr/bin/env bash
# Mapping template cost: the REST benchmark's request and response templates rendered
# in-process, one thread; prints µs per rendering (see tests/src/bin/template-bench.rs).
# SMOKE=1: a few batches on a debug build (CI); fails if a template does not render.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "${SMOKE:-0}" = 1 ]; then profile=debug; flags=(); else profile=release; flags=(--release); fi
echo "== building the benchmark ($profile)"
cargo build "${flags[@]}" --quiet --bin template-bench -p meridian-tests
"target/$profile/template-bench"
