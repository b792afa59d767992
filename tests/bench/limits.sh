#!/usr/bin/env bash
# Global-limits benchmark: admission micro-benchmark, then accuracy on a 3-region loopback
# cluster with a 20-s partition (iptables on loopback: run as root with iptables installed).
set -euo pipefail
cd "$(dirname "$0")/../.."
echo "== building meridian and the benchmark (release)"
cargo build --release --quiet --bin meridian -p meridian-node
cargo build --release --quiet --bin limits-bench -p meridian-tests
MERIDIAN_BIN=target/release/meridian target/release/limits-bench
