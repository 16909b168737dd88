#!/usr/bin/env bash
# pgbench select-only against one PostgreSQL three ways, interleaved in one run: directly,
# through the gateway's embedded agent, and through a remote gatehouse-agent process (client
# -> gateway -> mutual-TLS HTTP/2 link -> agent -> PostgreSQL). All client connections use TLS.
# Appends the ratios to BENCHMARKS.md.
#
#   bench/agent.sh [seconds-per-run] [rounds] [clients]     # default 10 3 16
#
# Needs PostgreSQL server binaries, pgbench, psql, openssl, python3; builds release binaries.
set -euo pipefail

SECS=${1:-10}
ROUNDS=${2:-3}
CLIENTS=${3:-16}
. "$(dirname "$0")/lib.sh"
bench_setup bench-agent

cleanup() {
  [ -n "${AGENT_PID:-}" ] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null || true
  [ -n "${GW_PID:-}" ] && kill "$GW_PID" 2>/dev/null && wait "$GW_PID" 2>/dev/null || true
  stop_pg
}
trap cleanup EXIT

echo "building gatehouse and gatehouse-agent (release)..."
cargo build --release --bins -q
GH="$ROOT/target/release/gatehouse"
AGENT="$ROOT/target/release/gatehouse-agent"
start_pg
AGPORT=$(free_port)

cat > "$WORK/gatehouse.toml" <<CONF
state_dir = "$WORK/state"
[postgres]
listen = "127.0.0.1:0"
[http]
listen = "127.0.0.1:0"
[policies]
dir = "$ROOT/policies"
[agents]
listen = "127.0.0.1:$AGPORT"
[[resource]]
name = "bench-db"
kind = "postgres"
address = "127.0.0.1:$PGPORT"
database = "bench"
labels = { env = "dev", data_class = "internal" }
credential = { username = "bench", password_file = "$WORK/pw" }
[[resource]]
name = "bench-remote"
kind = "postgres"
agent = "dc1"
labels = { env = "dev", data_class = "internal" }
CONF
cat > "$WORK/agent.toml" <<CONF
state_dir = "$WORK/agent-state"
[[resource]]
name = "bench-remote"
kind = "postgres"
address = "127.0.0.1:$PGPORT"
database = "bench"
credential = { username = "bench", password_file = "$WORK/pw" }
CONF
"$GH" serve --config "$WORK/gatehouse.toml" --ready-file "$WORK/ready" 2>"$WORK/gateway.log" &
GW_PID=$!
for _ in $(seq 100); do [ -f "$WORK/ready" ] && break; sleep 0.1; done
GWPORT=$(python3 -c "import json;print(json.load(open('$WORK/ready'))['postgres'].split(':')[1])")
HTTPS=$(python3 -c "import json;print(json.load(open('$WORK/ready'))['https'])")
JOIN=$("$GH" agents enroll dc1 --config "$WORK/gatehouse.toml" | grep -o 'ghj_[A-Za-z0-9_-]*' | head -1)
"$AGENT" --config "$WORK/agent.toml" --gateway "https://$HTTPS" --ca-file "$WORK/state/tls/cert.pem" --token "$JOIN" 2>"$WORK/agent.log" &
AGENT_PID=$!
for _ in $(seq 100); do grep -q "connected to the gateway" "$WORK/agent.log" && break; sleep 0.1; done
grep -q "connected to the gateway" "$WORK/agent.log" || { cat "$WORK/agent.log"; exit 1; }
TOKEN=$("$GH" token issue --config "$WORK/gatehouse.toml" --user bencher --groups engineering --ttl 2h)

run() { # target clients -> tps
  local target=$1 clients=$2 out
  case "$target" in
    direct) out=$(PGPASSWORD=upstream-pw PGSSLMODE=require pgbench -n -S -T "$SECS" -c "$clients" -j "$clients" -h 127.0.0.1 -p "$PGPORT" -U bench bench 2>&1) ;;
    embedded) out=$(PGPASSWORD=$TOKEN PGSSLMODE=require pgbench -n -S -T "$SECS" -c "$clients" -j "$clients" -h 127.0.0.1 -p "$GWPORT" -U bencher bench-db 2>&1) ;;
    remote) out=$(PGPASSWORD=$TOKEN PGSSLMODE=require pgbench -n -S -T "$SECS" -c "$clients" -j "$clients" -h 127.0.0.1 -p "$GWPORT" -U bencher bench-remote 2>&1) ;;
  esac
  local tps
  tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1)
  [ -n "$tps" ] || { echo "pgbench ($target) failed: $out" >&2; exit 1; }
  echo "$tps"
}

D=""; E=""; R=""
for round in $(seq "$ROUNDS"); do
  D+=" $(run direct "$CLIENTS")"
  E+=" $(run embedded "$CLIENTS")"
  R+=" $(run remote "$CLIENTS")"
  echo "round $round: direct ${D##* } embedded ${E##* } remote ${R##* }"
done
DM=$(echo "$D" | median); EM=$(echo "$E" | median); RM=$(echo "$R" | median)
RE=$(python3 -c "print(f'{$EM/$DM:.3f}')"); RR=$(python3 -c "print(f'{$RM/$DM:.3f}')")
STMTS=$("$GH" audit export --config "$WORK/gatehouse.toml" --format jsonl | grep -c '"agent":"dc1"' || true)

{
  echo
  echo "## Remote agent vs embedded agent vs direct ($(date -u +%Y-%m-%d), \`bench/agent.sh $SECS $ROUNDS $CLIENTS\`)"
  echo
  echo "pgbench \`-S -c $CLIENTS -j $CLIENTS\`, $ROUNDS interleaved rounds of $SECS s, medians; release builds; gateway, agent, PostgreSQL and pgbench on the same $(nproc) cores. $STMTS statement events came from the agent through its spool and link."
  echo
  echo "| path | TPS | ratio to direct |"
  echo "|---|---|---|"
  echo "| direct | $DM | 1.000 |"
  echo "| embedded agent | $EM | $RE |"
  echo "| remote agent (goal >= 0.85) | $RM | $RR |"
  echo
  echo "Per-round TPS: direct \`$D\`, embedded \`$E\`, remote \`$R\`."
} >> "$ROOT/BENCHMARKS.md"
echo "appended to BENCHMARKS.md: embedded $RE, remote $RR of direct at -c $CLIENTS"
