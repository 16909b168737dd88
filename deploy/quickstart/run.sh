#!/usr/bin/env bash
# Gatehouse quickstart: the gateway on the embedded default (SQLite store, self-signed TLS) in
# front of a throwaway PostgreSQL, with a throwaway identity provider, on this machine.
#
#   deploy/quickstart/run.sh          # Ctrl-C stops everything it started
#
# 1. Installs what a fresh Debian 12 or 13 lacks (PostgreSQL, Node.js >= 20.19 and the test
#    OpenID provider's packages; scripts/lib/deps.sh) and builds `gatehouse` (skipped when
#    GATEHOUSE_BIN names one).
# 2. Starts, each on 127.0.0.1:
#      PostgreSQL      :55432  database `orders`, roles orders_ro (read) and orders_app (write)
#      OpenID provider :9400   tests/oidc/provider.mjs, TEST-ONLY (plain HTTP, in-memory users
#                              alice (group engineering) and bob (group dba), random passwords)
#      gatehouse       :6432 (PostgreSQL door), :8443 (HTTPS: sign-in, API)
# 3. Writes everything to deploy/quickstart/state/ (emptied at each start): the gateway's
#    config (gatehouse.toml), its keys, store and TLS certificate, alice's issued token, the
#    passwords, and `env`, which a second terminal sources to use the CLI as written in the
#    README's tour; then prints the tour.
#
# Ports and the state directory can be moved (the README test does): QUICKSTART_PG_PORT,
# QUICKSTART_HTTPS_PORT, QUICKSTART_UPSTREAM_PORT, QUICKSTART_OIDC_PORT, QUICKSTART_STATE.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

pg_port="${QUICKSTART_PG_PORT:-6432}"
https_port="${QUICKSTART_HTTPS_PORT:-8443}"
upstream_port="${QUICKSTART_UPSTREAM_PORT:-55432}"
oidc_port="${QUICKSTART_OIDC_PORT:-9400}"
state="${QUICKSTART_STATE:-$here/state}"

say() { echo "quickstart: $*" >&2; }
listening() { (: >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
random_secret() { head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9'; }
# wait_for_file FILE PID SECONDS WHAT [LOG]: until FILE is non-empty; fails (showing LOG) if
# process PID exits first or SECONDS pass.
wait_for_file() {
    local file="$1" pid="$2" seconds="$3" what="$4" log="${5:-}" _
    for _ in $(seq 1 $((seconds * 10))); do
        [[ -s "$file" ]] && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            say "$what did not start"
            [[ -n "$log" ]] && cat "$log" >&2
            exit 1
        fi
        sleep 0.1
    done
    say "$what was not ready within $seconds s"
    exit 1
}

for port in "$pg_port" "$https_port" "$upstream_port" "$oidc_port"; do
    if listening "$port"; then
        say "127.0.0.1:$port is taken (another quickstart?); stop it or move the port (QUICKSTART_*_PORT)"
        exit 1
    fi
done

# shellcheck source=../../scripts/lib/deps.sh
. "$root/scripts/lib/deps.sh"
deps_postgres
deps_node
deps_oidc_packages "$root"

if [[ -n "${GATEHOUSE_BIN:-}" ]]; then
    bin="$GATEHOUSE_BIN"
else
    target="${CARGO_TARGET_DIR:-$root/target}"
    if [[ ! -x "$target/debug/gatehouse" ]]; then
        say "building gatehouse; the first build takes 5-10 minutes on 2 cores"
    fi
    cargo build --bin gatehouse
    bin="$target/debug/gatehouse"
fi
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"

# Empty the state of an earlier run, never a directory the quickstart did not make.
if [[ -d "$state" && ! -e "$state/.quickstart" && "$state" != "$here/state" ]] \
    && [[ -n "$(ls -A "$state")" ]]; then
    say "refusing to empty $state (QUICKSTART_STATE): it holds files the quickstart did not write"
    exit 1
fi
rm -rf "$state"
mkdir -p "$state/bin" "$state/alice" "$state/bob"
chmod 700 "$state"
touch "$state/.quickstart"
state="$(cd "$state" && pwd)"
ln -s "$bin" "$state/bin/gatehouse"

pids=()
pg_data=""
as_pg=()
stop_all() {
    # The gateway first (it ends live sessions and seals its audit log), then the provider.
    # SIGTERM: background jobs of a script start with SIGINT ignored.
    local i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -TERM "${pids[i]}" 2>/dev/null || true
        wait "${pids[i]}" 2>/dev/null || true
    done
    pids=()
    if [[ -n "$pg_data" ]]; then
        say "stopping the throwaway PostgreSQL"
        "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$pg_data" -m fast -w stop >/dev/null 2>&1 || true
        pg_data=""
    fi
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- PostgreSQL -------------------------------------------------------------------------------
pg_dir="$state/pg"
if [[ "$(id -u)" == 0 ]]; then
    # PostgreSQL refuses to run as root.
    as_pg=(runuser -u nobody --)
    if ! "${as_pg[@]}" test -x "$state"; then
        # nobody cannot reach the checkout (e.g. under /root): keep the cluster in /tmp.
        pg_dir="$(mktemp -d /tmp/gatehouse-quickstart-pg.XXXXXX)"
    fi
fi
mkdir -p "$pg_dir"
[[ "$(id -u)" == 0 ]] && chown nobody: "$pg_dir"
say "starting a throwaway PostgreSQL on 127.0.0.1:$upstream_port"
"${as_pg[@]}" "$PG_BIN/initdb" -D "$pg_dir/data" -U postgres --auth-local=trust \
    --auth-host=scram-sha-256 -E UTF8 --locale=C --no-sync >"$pg_dir/initdb.log" 2>&1 \
    || { cat "$pg_dir/initdb.log" >&2; exit 1; }
pg_data="$pg_dir/data"
"${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$pg_data" -l "$pg_dir/postgres.log" -w \
    -o "-p $upstream_port -h 127.0.0.1 -k $pg_dir" start >/dev/null \
    || { cat "$pg_dir/postgres.log" >&2; exit 1; }
ORDERS_RO_PASSWORD="$(random_secret)"
ORDERS_APP_PASSWORD="$(random_secret)"
export ORDERS_RO_PASSWORD ORDERS_APP_PASSWORD
psql_su=("$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$pg_dir" -p "$upstream_port" -U postgres)
"${psql_su[@]}" -d postgres <<SQL
CREATE ROLE orders_ro LOGIN PASSWORD '$ORDERS_RO_PASSWORD';
CREATE ROLE orders_app LOGIN PASSWORD '$ORDERS_APP_PASSWORD';
CREATE DATABASE orders;
SQL
"${psql_su[@]}" -d orders <<'SQL'
CREATE TABLE orders (id serial PRIMARY KEY, customer text NOT NULL, amount numeric NOT NULL);
INSERT INTO orders (customer, amount)
  SELECT 'customer-' || (g % 10), round(((g * 7919) % 100000) / 100.0, 2)
  FROM generate_series(1, 100) AS g;
GRANT SELECT ON TABLE orders TO orders_ro;
GRANT ALL ON TABLE orders TO orders_app;
GRANT ALL ON SEQUENCE orders_id_seq TO orders_app;
SQL

# --- The identity provider --------------------------------------------------------------------
GATEHOUSE_QUICKSTART_OIDC_SECRET="$(random_secret)"
export GATEHOUSE_QUICKSTART_OIDC_SECRET
alice_password="$(random_secret | head -c 12)"
bob_password="$(random_secret | head -c 12)"
(
    umask 077
    printf 'alice %s\nbob %s\n' "$alice_password" "$bob_password" >"$state/passwords"
    cat >"$state/oidc.json" <<JSON
{"port": $oidc_port,
 "clients": [{"client_id": "gatehouse", "client_secret": "$GATEHOUSE_QUICKSTART_OIDC_SECRET",
              "redirect_uris": ["https://127.0.0.1:$https_port/oidc/callback"]}],
 "users": [{"username": "alice", "password": "$alice_password", "name": "Alice", "groups": ["engineering"]},
           {"username": "bob", "password": "$bob_password", "name": "Bob", "groups": ["dba"],
            "amr": ["pwd", "otp"]}]}
JSON
)
say "starting the throwaway OpenID provider on 127.0.0.1:$oidc_port (TEST-ONLY)"
node "$root/tests/oidc/provider.mjs" "$state/oidc.json" >"$state/oidc.out" 2>"$state/oidc.log" &
pids+=($!)
wait_for_file "$state/oidc.out" "${pids[-1]}" 30 "the OpenID provider" "$state/oidc.log"

# --- The gateway ------------------------------------------------------------------------------
cat >"$state/gatehouse.toml" <<TOML
# Written by deploy/quickstart/run.sh; relative paths are resolved against this file.
state_dir = "."                       # keys, the self-signed TLS certificate, the SQLite store

[postgres]
listen = "127.0.0.1:$pg_port"

[http]
listen = "127.0.0.1:$https_port"
public_url = "https://127.0.0.1:$https_port"

[oidc]
issuer = "http://127.0.0.1:$oidc_port"
allow_http = true                     # the throwaway provider speaks plain HTTP; never in production
client_id = "gatehouse"
client_secret_env = "GATEHOUSE_QUICKSTART_OIDC_SECRET"

[policies]
dir = "$root/policies"

[[resource]]
name = "orders-db"
kind = "postgres"
address = "127.0.0.1:$upstream_port"
database = "orders"
labels = { env = "dev", data_class = "internal" }
# The gateway logs in upstream with these; engineers never see the passwords.
credential = { username = "orders_ro", password_env = "ORDERS_RO_PASSWORD" }
roles = { write = { username = "orders_app", password_env = "ORDERS_APP_PASSWORD" } }
TOML

cat >"$state/env" <<ENV
# Source this in another terminal: gatehouse on PATH, its config and the gateway found.
export PATH="$state/bin:\$PATH"
export GATEHOUSE_CONFIG="$state/gatehouse.toml"
export GATEHOUSE_GATEWAY="https://127.0.0.1:$https_port"
export GATEHOUSE_CA_FILE="$state/tls/cert.pem"
ENV

# An admin issues alice a token (as for a service account); the tour signs bob in instead.
(umask 077 && "$bin" token issue --config "$state/gatehouse.toml" --by quickstart \
    --user alice --groups engineering --ttl 8h >"$state/alice.token")

"$bin" serve --config "$state/gatehouse.toml" --ready-file "$state/ready.json" &
pids+=($!)
gateway_pid="${pids[-1]}"
wait_for_file "$state/ready.json" "$gateway_pid" 60 "the gateway"

rel="${state#"$root"/}"
cat <<EOF

Gatehouse is serving.
  PostgreSQL door       127.0.0.1:$pg_port
  sign-in and the API   https://127.0.0.1:$https_port
  identity provider     http://127.0.0.1:$oidc_port (throwaway: alice, engineering; bob, dba;
                        passwords in $rel/passwords)
Ctrl-C here stops everything. In another terminal, from $root, take the tour
(README.md, "A tour"):

EOF
# The tour's commands, from the README (its test runs them as written there).
if [[ -f "$root/README.md" ]]; then
    awk '
        /^<!-- tour -->/ { on = 1; next }
        /^<!-- \/tour -->/ { on = 0 }
        !on { next }
        fence && /^```/ { fence = ""; if (shown) print ""; shown = 0; next }
        fence == "sh" { print "  " $0; shown = 1; next }
        fence { next }
        /^```/ { fence = substr($0, 4); next }
        /^## / || /^<!--/ || /^$/ { next }
        { print "# " $0 }
    ' "$root/README.md"
fi
wait "$gateway_pid"
