# What the quickstart (deploy/quickstart/run.sh) and the test command (scripts/test) need
# from the machine, installed only when missing. Sourced, not run; every function prints
# what it installs to stderr before it does so.
#
# Supported: Debian 12 (bookworm) and Debian 13 (trixie), as root or with sudo.
#   deps_postgres        PostgreSQL server binaries, psql and pgbench; sets PG_BIN
#   deps_node            Node.js >= 20.19 (Debian 13's own; on Debian 12, whose nodejs is 18,
#                        the official Linux build from the npm registry, see NODE_PINNED)
#   deps_oidc_packages   the test OpenID provider's npm packages (tests/oidc)
#   deps_apt PKG CMD...  installs Debian package PKG unless every CMD is on PATH
#   deps_apt_install PKG installs Debian package PKG

# The Node.js used where the system's is older than 20.19: the `node-linux-<arch>` package on
# the npm registry is the nodejs.org release binary (no install scripts); npm checks its
# integrity. It is kept under the user's cache directory, outside the checkout.
NODE_PINNED="22.23.5"
NODE_HOME="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/gatehouse/node-$NODE_PINNED"

deps_as_root() {
    if [[ "$(id -u)" == 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        echo "gatehouse: need root (or sudo) to run: $*" >&2
        return 1
    fi
}

deps_apt_updated=""
deps_apt() {
    local pkg="$1" cmd missing=""
    shift
    for cmd in "$@"; do
        command -v "$cmd" >/dev/null || missing=1
    done
    [[ -z "$missing" ]] && return 0
    deps_apt_install "$pkg"
}
deps_apt_install() {
    local pkg="$1"
    echo "gatehouse: installing $pkg (apt-get)" >&2
    if [[ -z "$deps_apt_updated" ]]; then
        deps_as_root apt-get update -qq
        deps_apt_updated=1
    fi
    deps_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null
}

deps_find_pg_bin() {
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

deps_postgres() {
    PG_BIN="$(deps_find_pg_bin)"
    if [[ -z "$PG_BIN" ]]; then
        # The server's binaries live off PATH, under /usr/lib/postgresql/N/bin.
        deps_apt_install postgresql
        PG_BIN="$(deps_find_pg_bin)"
    fi
    deps_apt postgresql-client psql pgbench
    if [[ -z "$PG_BIN" ]]; then
        echo "gatehouse: no /usr/lib/postgresql/*/bin/initdb after installing PostgreSQL" >&2
        return 1
    fi
    export PG_BIN
}

deps_node_ok() {
    command -v node >/dev/null && node -e '
        const [a, b] = process.versions.node.split(".").map(Number);
        process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)'
}

deps_node() {
    if [[ -x "$NODE_HOME/node_modules/.bin/node" ]]; then
        export PATH="$NODE_HOME/node_modules/.bin:$PATH"
    fi
    deps_node_ok && command -v npm >/dev/null && return 0
    deps_apt nodejs node
    deps_apt npm npm
    deps_node_ok && return 0
    local arch
    case "$(uname -m)" in
        x86_64) arch=x64 ;;
        aarch64) arch=arm64 ;;
        *)
            echo "gatehouse: Node.js $(node --version) is older than 20.19 and no build for $(uname -m) is known" >&2
            return 1
            ;;
    esac
    echo "gatehouse: Node.js $(node --version) is older than 20.19 (Debian 12);" \
        "installing Node.js $NODE_PINNED from the npm registry into $NODE_HOME" >&2
    mkdir -p "$NODE_HOME"
    npm install --prefix "$NODE_HOME" --no-save --no-audit --no-fund --loglevel=error \
        "node-linux-$arch@$NODE_PINNED" >/dev/null
    export PATH="$NODE_HOME/node_modules/.bin:$PATH"
    if ! deps_node_ok; then
        echo "gatehouse: $NODE_HOME holds no working Node.js >= 20.19" >&2
        return 1
    fi
}

# $1: the repository root.
deps_oidc_packages() {
    if [[ ! -d "$1/tests/oidc/node_modules/oidc-provider" ]]; then
        echo "gatehouse: installing the test OpenID provider's packages (npm ci in tests/oidc)" >&2
        npm ci --prefix "$1/tests/oidc" --no-audit --no-fund --loglevel=error >/dev/null
    fi
}

# The OCSF schema validator of tests/tests/ocsf.rs: pydantic-ocsf (which ships the compiled
# OCSF schemas) in a virtual environment at $1/tests/ocsf/.venv.
deps_ocsf_venv() {
    local venv="$1/tests/ocsf/.venv"
    if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c 'import ocsf' 2>/dev/null; then
        return 0
    fi
    command -v python3 >/dev/null || deps_apt_install python3
    echo "gatehouse: installing pydantic-ocsf into tests/ocsf/.venv (pip)" >&2
    rm -rf "$venv"
    python3 -m venv "$venv" 2>/dev/null || { deps_apt_install python3-venv; rm -rf "$venv"; python3 -m venv "$venv"; }
    "$venv/bin/pip" install -q --disable-pip-version-check 'pydantic-ocsf==3.0.0'
}
