#!/usr/bin/env bash
# The evidence bundle in bounded memory: fills a SQLite store with N audit events through the
# real audit writer, builds `gatehouse evidence bundle` for the period under /usr/bin/time, and
# prints events, build time, peak RSS and bundle size for each N. The RSS must not grow with N.
# Appends the table to BENCHMARKS.md.
#
#   bench/evidence.sh [N ...]     # default 100000 1000000
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib/deps.sh
. scripts/lib/deps.sh
deps_apt time /usr/bin/time
SIZES=("$@")
[[ ${#SIZES[@]} -gt 0 ]] || SIZES=(100000 1000000)
cargo build --release -q --bin gatehouse -p gatehouse-gateway
cargo build --release -q -p gatehouse-tests --example evidence_scale
export GATEHOUSE_BIN="$ROOT/target/release/gatehouse"
ROWS=()
for n in "${SIZES[@]}"; do
  ROWS+=("$("$ROOT/target/release/examples/evidence_scale" "$n")")
  echo "${ROWS[-1]}"
done
{
  echo
  echo "### Evidence bundle in bounded memory ($(date -u +%Y-%m-%d), \`bench/evidence.sh ${SIZES[*]}\`, $(nproc) cores)"
  echo
  echo "| events | build | peak RSS | bundle |"
  echo "|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
} >> BENCHMARKS.md
