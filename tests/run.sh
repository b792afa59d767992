#!/usr/bin/env bash
# Meridian's tests: unit, property and end-to-end tests that start real nodes, the doc
# tests, and every shell example in the docs. Needs only the Rust toolchain: cargo-nextest
# is installed on first use (about 3 minutes), and tests that drive an outside tool that is
# missing here (curl, dig, openssl, python3 with venv and PyPI; iptables as root) say so and skip. The first build of
# the workspace takes about 5 minutes on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "== installing cargo-nextest (first run only)" >&2
  cargo install cargo-nextest --locked
fi
missing=()
for tool in curl dig openssl python3; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
  echo "== not installed: ${missing[*]}; the tests that use them will say so and skip" >&2
  echo "   (Debian/Ubuntu: apt-get install curl dnsutils openssl python3-venv)" >&2
fi

cargo build --bin meridian
cargo test --workspace --doc
cargo nextest run --workspace "$@"
