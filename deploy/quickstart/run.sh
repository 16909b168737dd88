#!/usr/bin/env bash
# Gatehouse quickstart: run the gateway on 127.0.0.1:6432 with deploy/quickstart/gatehouse.toml.
#
#   deploy/quickstart/run.sh
#
# 1. Builds the gatehouse binary if needed (skipped when GATEHOUSE_BIN is set).
# 2. If PostgreSQL server binaries are installed and nothing listens on 127.0.0.1:55432, starts
#    a throwaway PostgreSQL there (data in deploy/quickstart/state/pg) with database `orders`,
#    role `orders_app` (random password, exported as ORDERS_DB_PASSWORD) and a small `orders`
#    table. It is stopped when the gateway exits.
#    Otherwise it uses what listens on 55432: set ORDERS_DB_PASSWORD to orders_app's password.
# 3. Issues a token for user `alice` in group `engineering` and prints the psql command to try.
# 4. Runs `gatehouse serve --config deploy/quickstart/gatehouse.toml` (Ctrl-C stops it).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

config="$here/gatehouse.toml"
state="$here/state"
pg_port=55432

if [[ -n "${GATEHOUSE_BIN:-}" ]]; then
    bin="$GATEHOUSE_BIN"
else
    cargo build --bin gatehouse
    bin="${CARGO_TARGET_DIR:-$root/target}/debug/gatehouse"
fi

find_pg_bin() {
    local dir
    if [[ -n "${PG_BIN:-}" && -x "$PG_BIN/initdb" ]]; then
        echo "$PG_BIN"
        return
    fi
    for dir in /usr/lib/postgresql/*/bin; do
        if [[ -x "$dir/initdb" ]]; then
            echo "$dir"
        fi
    done | sort -t/ -k5,5n | tail -n 1
}

listening() {
    (: >"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pg_bin="$(find_pg_bin)"
pg_data=""
as_pg=()

stop_pg() {
    if [[ -n "$pg_data" ]]; then
        echo "quickstart: stopping the throwaway PostgreSQL" >&2
        "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_data" -m fast -w stop >/dev/null 2>&1 || true
        pg_data=""
    fi
}

start_pg() {
    local pg_dir="$state/pg"
    mkdir -p "$state"
    if [[ "$(id -u)" == 0 ]]; then
        # PostgreSQL refuses to run as root.
        as_pg=(runuser -u nobody --)
        if ! "${as_pg[@]}" test -x "$state"; then
            # nobody cannot reach the checkout (e.g. under /root): keep the cluster in /tmp.
            pg_dir="$(mktemp -d /tmp/gatehouse-quickstart-pg.XXXXXX)"
        fi
    fi
    rm -rf "$pg_dir"
    mkdir -p "$pg_dir"
    if [[ "$(id -u)" == 0 ]]; then
        chown nobody: "$pg_dir"
    fi
    echo "quickstart: starting a throwaway PostgreSQL on 127.0.0.1:$pg_port ($pg_dir)" >&2
    "${as_pg[@]}" "$pg_bin/initdb" -D "$pg_dir/data" -U postgres --auth-local=trust \
        --auth-host=scram-sha-256 -E UTF8 --locale=C --no-sync >"$pg_dir/initdb.log" 2>&1 \
        || { cat "$pg_dir/initdb.log" >&2; exit 1; }
    pg_data="$pg_dir/data"
    "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_data" -l "$pg_dir/postgres.log" -w \
        -o "-p $pg_port -h 127.0.0.1 -k $pg_dir" start >/dev/null \
        || { cat "$pg_dir/postgres.log" >&2; exit 1; }

    ORDERS_DB_PASSWORD="$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
    export ORDERS_DB_PASSWORD
    local psql_su=("$pg_bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$pg_dir" -p "$pg_port" -U postgres)
    "${psql_su[@]}" -d postgres <<SQL
CREATE ROLE orders_app LOGIN PASSWORD '$ORDERS_DB_PASSWORD';
CREATE DATABASE orders;
SQL
    "${psql_su[@]}" -d orders <<'SQL'
CREATE TABLE orders (id serial PRIMARY KEY, customer text NOT NULL, amount numeric NOT NULL);
INSERT INTO orders (customer, amount)
  SELECT 'customer-' || (g % 10), round(((g * 7919) % 100000) / 100.0, 2)
  FROM generate_series(1, 100) AS g;
GRANT ALL ON TABLE orders TO orders_app;
GRANT ALL ON SEQUENCE orders_id_seq TO orders_app;
SQL
}

trap stop_pg EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if listening "$pg_port"; then
    echo "quickstart: something already listens on 127.0.0.1:$pg_port; using it as orders-db" >&2
elif [[ -z "$pg_bin" ]]; then
    echo "quickstart: no PostgreSQL server binaries (apt-get install postgresql); orders-db at" \
        "127.0.0.1:$pg_port will be unreachable until you start one" >&2
else
    start_pg
fi
if [[ -z "${ORDERS_DB_PASSWORD:-}" ]]; then
    echo "quickstart: ORDERS_DB_PASSWORD is not set; the gateway cannot log in to orders-db" >&2
fi

token="$("$bin" token issue --config "$config" --user alice --groups engineering --ttl 8h)"

cat <<EOF

Gatehouse is starting on 127.0.0.1:6432. In another terminal, connect as alice (engineering):

  PGPASSWORD=$token psql "host=127.0.0.1 port=6432 dbname=orders-db user=alice sslmode=require"

Stop the gateway with Ctrl-C.

EOF

if [[ -z "$pg_data" ]]; then
    exec "$bin" serve --config "$config"
fi
# Not exec: the EXIT trap must stop the throwaway PostgreSQL afterwards.
"$bin" serve --config "$config"
