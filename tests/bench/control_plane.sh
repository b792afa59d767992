#!/usr/bin/env bash
# Control-plane benchmark: apply visibility, leader failover and write throughput on a
# 3-region loopback cluster, with 0, 80 and 200 ms between regions, on default settings.
# APPLIES=60 KILLS=3 by default. SMOKE=1: one short round on a debug build (CI).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [[ "${SMOKE:-0}" == 1 ]]; then
  profile=debug; flags=()
else
  profile=release; flags=(--release)
fi
echo "== building meridian and the benchmark ($profile)" >&2
cargo build "${flags[@]}" --quiet --bin meridian -p meridian-node
cargo build "${flags[@]}" --quiet --bin control-plane-bench -p meridian-tests
MERIDIAN_BIN="target/$profile/meridian" "target/$profile/control-plane-bench"
