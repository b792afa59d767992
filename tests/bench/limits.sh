#!/usr/bin/env bash
# Global-limits benchmark: admission micro-benchmark, then accuracy on a 3-region loopback
# cluster with a 20-s partition (iptables on loopback: run as root with iptables installed).
# SMOKE=1: a short run of each phase on a debug build (CI); fails unless requests were admitted.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "${SMOKE:-0}" = 1 ]; then profile=debug; flags=(); else profile=release; flags=(--release); fi
echo "== building meridian and the benchmark ($profile)"
cargo build "${flags[@]}" --quiet --bin meridian -p meridian-node
cargo build "${flags[@]}" --quiet --bin limits-bench -p meridian-tests
MERIDIAN_BIN="target/$profile/meridian" "target/$profile/limits-bench"
