#!/usr/bin/env bash
# pgbench select-only against PostgreSQL directly and through the gateway, interleaved in one
# run, both over TLS. Writes the ratios to BENCHMARKS.md.
#
#   bench/pgbench.sh [seconds-per-run] [rounds]
#
# Needs PostgreSQL server binaries, pgbench, psql, openssl; builds gatehouse in release mode.
set -euo pipefail

SECS=${1:-15}
ROUNDS=${2:-3}
. "$(dirname "$0")/lib.sh"
bench_setup bench

cleanup() {
  [ -n "${GW_PID:-}" ] && kill "$GW_PID" 2>/dev/null && wait "$GW_PID" 2>/dev/null || true
  stop_pg
}
trap cleanup EXIT

echo "building gatehouse (release)..."
cargo build --release --bin gatehouse -q
GH="$ROOT/target/release/gatehouse"
start_pg

cat > "$WORK/gatehouse.toml" <<CONF
state_dir = "$WORK/state"
[postgres]
listen = "127.0.0.1:0"
[policies]
dir = "$ROOT/policies"
[[resource]]
name = "bench-db"
kind = "postgres"
address = "127.0.0.1:$PGPORT"
database = "bench"
labels = { env = "dev", data_class = "internal" }
credential = { username = "bench", password_file = "$WORK/pw" }
CONF
"$GH" serve --config "$WORK/gatehouse.toml" --ready-file "$WORK/ready" 2>"$WORK/gateway.log" &
GW_PID=$!
for _ in $(seq 100); do [ -f "$WORK/ready" ] && break; sleep 0.1; done
GWPORT=$(python3 -c "import json;print(json.load(open('$WORK/ready'))['postgres'].split(':')[1])")
TOKEN=$("$GH" token issue --config "$WORK/gatehouse.toml" --user bencher --groups engineering --ttl 2h)

run() { # target clients -> "tps latency_ms"
  local target=$1 clients=$2 out
  if [ "$target" = direct ]; then
    out=$(PGPASSWORD=upstream-pw PGSSLMODE=require pgbench -n -S -T "$SECS" -c "$clients" -j "$clients" -h 127.0.0.1 -p "$PGPORT" -U bench bench 2>&1)
  else
    out=$(PGPASSWORD=$TOKEN PGSSLMODE=require pgbench -n -S -T "$SECS" -c "$clients" -j "$clients" -h 127.0.0.1 -p "$GWPORT" -U bencher bench-db 2>&1)
  fi
  local tps lat
  tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1)
  lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
  [ -n "$tps" ] || { echo "pgbench failed: $out" >&2; exit 1; }
  echo "$tps $lat"
}

declare -A SUM
for key in d1 g1 d16 g16; do SUM[$key]=""; done
for round in $(seq "$ROUNDS"); do
  for c in 1 16; do
    SUM[d$c]+=" $(run direct $c | cut -d' ' -f1)"
    SUM[g$c]+=" $(run gateway $c | cut -d' ' -f1)"
  done
  echo "round $round: direct c1 ${SUM[d1]##* } gw c1 ${SUM[g1]##* } direct c16 ${SUM[d16]##* } gw c16 ${SUM[g16]##* }"
done

D1=$(echo "${SUM[d1]}" | median); G1=$(echo "${SUM[g1]}" | median)
D16=$(echo "${SUM[d16]}" | median); G16=$(echo "${SUM[g16]}" | median)
R1=$(python3 -c "print(f'{$G1/$D1:.3f}')"); R16=$(python3 -c "print(f'{$G16/$D16:.3f}')")
ADDED=$(python3 -c "print(f'{(1/$G1 - 1/$D1)*1e6:.1f}')")
STMTS=$("$GH" audit export --config "$WORK/gatehouse.toml" --format jsonl | grep -c '"kind":"db.statement"' || true)

CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
PGV=$("$PG_BIN/postgres" --version)
cat > "$ROOT/BENCHMARKS.md" <<MD
# Benchmarks

Reproduce: \`bench/pgbench.sh $SECS $ROUNDS\` (seconds per run, rounds). Written by that script.

pgbench select-only (\`-S\`, simple protocol, scale 10), TLS from client to PostgreSQL (direct) and
from client to the gateway (through Gatehouse; gateway to upstream is plaintext loopback).
Direct and gateway runs are interleaved, $ROUNDS rounds of ${SECS} s each; the table shows medians.
Query logging is on: every statement is an audit event (${STMTS} \`db.statement\` events were
written during this run).

Machine: $(nproc) cores ($CPU), $PGV, $(date -u +%Y-%m-%d). pgbench, PostgreSQL and the gateway
share the same cores, so the gateway's CPU time is taken from the other two.

| clients | direct TPS | gateway TPS | ratio | target |
|---|---|---|---|---|
| 1  | $D1 | $G1 | $R1 | added latency ${ADDED} us per query (target <= 30 us) |
| 16 | $D16 | $G16 | $R16 | >= 0.95 |

Per-round TPS (direct c1 | gateway c1 | direct c16 | gateway c16):
\`${SUM[d1]}\` | \`${SUM[g1]}\` | \`${SUM[d16]}\` | \`${SUM[g16]}\`
MD
# The hand-written reading of the numbers lives in bench/analysis.md and is kept below them.
if [ -f "$ROOT/bench/analysis.md" ]; then
  { echo; cat "$ROOT/bench/analysis.md"; } >> "$ROOT/BENCHMARKS.md"
fi
echo "wrote BENCHMARKS.md: c1 ratio $R1 (added ${ADDED} us), c16 ratio $R16"
