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
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

PG_BIN=${PG_BIN:-$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")}
WORK=$(mktemp -d /tmp/gatehouse-bench-agent.XXXXXX)
chmod 755 "$WORK"
RUN_AS=()
if [ "$(id -u)" = 0 ]; then RUN_AS=(runuser -u nobody --); fi

cleanup() {
  [ -n "${AGENT_PID:-}" ] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null || true
  [ -n "${GW_PID:-}" ] && kill "$GW_PID" 2>/dev/null && wait "$GW_PID" 2>/dev/null || true
  "${RUN_AS[@]}" "$PG_BIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "building gatehouse and gatehouse-agent (release)..."
cargo build --release --bins -q
GH="$ROOT/target/release/gatehouse"
AGENT="$ROOT/target/release/gatehouse-agent"

PGPORT=$(free_port)
AGPORT=$(free_port)
mkdir -p "$WORK/pg" "$WORK/sock"
chown nobody "$WORK/pg" "$WORK/sock" 2>/dev/null || true
echo "upstream-pw" > "$WORK/pw"; chmod 644 "$WORK/pw"
"${RUN_AS[@]}" "$PG_BIN/initdb" -D "$WORK/pg" -U postgres --auth-local=trust --auth-host=scram-sha-256 >/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
  -keyout "$WORK/pg/server.key" -out "$WORK/pg/server.crt" 2>/dev/null
chown nobody "$WORK/pg/server.key" "$WORK/pg/server.crt" 2>/dev/null || true
chmod 600 "$WORK/pg/server.key"
cat >> "$WORK/pg/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$WORK/sock'
ssl = on
max_connections = 100
shared_buffers = 256MB
CONF
"${RUN_AS[@]}" "$PG_BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg/server.log" -w start >/dev/null
psql -X -q -h "$WORK/sock" -p "$PGPORT" -U postgres -c "CREATE ROLE bench LOGIN PASSWORD 'upstream-pw'" -c "CREATE DATABASE bench OWNER bench"
PGPASSWORD=upstream-pw pgbench -q -i -s 10 -h 127.0.0.1 -p "$PGPORT" -U bench bench >/dev/null 2>&1

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
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
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
