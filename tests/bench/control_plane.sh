#!/usr/bin/env bash
# Control-plane benchmark: apply visibility, leader failover and write throughput on a
# 3-region loopback cluster. APPLIES=60 KILLS=3 by default.
set -euo pipefail
cd "$(dirname "$0")/../.."
echo "== building meridian and the benchmark (release)"
cargo build --release --quiet --bin meridian -p meridian-node
cargo build --release --quiet --bin control-plane-bench -p meridian-tests
MERIDIAN_BIN=target/release/meridian target/release/control-plane-bench
