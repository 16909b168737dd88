# Shared by the bench scripts (sourced, not run): a throwaway PostgreSQL over TLS with a
# pgbench database, and helpers for reading pgbench's output.
#
# After `bench_setup <label>`: $ROOT, $PG_BIN, $WORK (a temp dir), $RUN_AS.
# After `start_pg`: $PGPORT, database `bench` (scale 10) owned by role `bench`, whose
# password is in $WORK/pw (`upstream-pw`). `stop_pg` stops it; call it from the script's trap.

bench_setup() {
  ROOT=$(cd "$(dirname "${BASH_SOURCE[1]}")/.." && pwd)
  cd "$ROOT"
  PG_BIN=${PG_BIN:-$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")}
  WORK=$(mktemp -d "/tmp/gatehouse-$1.XXXXXX")
  chmod 755 "$WORK"
  RUN_AS=()
  if [ "$(id -u)" = 0 ]; then RUN_AS=(runuser -u nobody --); fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_pg() {
  PGPORT=$(free_port)
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
}

stop_pg() {
  "${RUN_AS[@]}" "$PG_BIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}

# The median of whitespace-separated numbers on stdin.
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
