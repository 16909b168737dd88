#!/usr/bin/env bash
# 200 live sessions under a grant that expires at one moment: time from the expiry to each
# session's end (p50, p99, max), through the real gateway and PostgreSQL. Appends the row to
# BENCHMARKS.md.
#
#   bench/grant_expiry.sh [sessions]     # default 200
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
N=${1:-200}
export PG_BIN=${PG_BIN:-$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")}
cargo build --release -q --bin gatehouse -p gatehouse-gateway
export GATEHOUSE_BIN="$ROOT/target/release/gatehouse"
ROW=$(cargo run --release -q -p gatehouse-tests --example grant_expiry -- "$N")
echo "$ROW"
{
  echo
  echo "### Grant expiry ($(date -u +%Y-%m-%d), \`bench/grant_expiry.sh $N\`)"
  echo
  echo "| sessions | p50 | p99 | max | min |"
  echo "|---|---|---|---|---|"
  echo "$ROW"
} >> BENCHMARKS.md
