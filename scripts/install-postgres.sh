#!/usr/bin/env bash
# Installs the PostgreSQL server binaries that the tests' throwaway cluster needs
# (tests/support/postgres.py: initdb + pg_ctl under /usr/lib/postgresql/<version>/bin), from
# Debian's `postgresql` package, unless they are already there. `make postgres` (and so `make test`) runs it.
#
# As root (CI) it calls apt-get directly, otherwise through sudo. Where there is no apt-get it
# fails under CI (CI set) — the PostgreSQL tests must run there — and only warns elsewhere
# (those tests then skip, saying why). LLORCH_PG_BINDIR=<dir with initdb> skips the install.
set -euo pipefail

have_initdb() {
    if [ -n "${LLORCH_PG_BINDIR:-}" ] && [ -x "${LLORCH_PG_BINDIR}/initdb" ]; then
        return 0
    fi
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

in_ci() {
    case "$(printf '%s' "${CI:-}" | tr '[:upper:]' '[:lower:]')" in
        "" | 0 | false | no) return 1 ;;
        *) return 0 ;;
    esac
}

if have_initdb; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    msg="install-postgres: no PostgreSQL server binaries (initdb) and no apt-get: install PostgreSQL and set LLORCH_PG_BINDIR"
    if in_ci; then
        echo "$msg" >&2
        exit 1
    fi
    echo "$msg (the PostgreSQL tests will skip)" >&2
    exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    SUDO=(sudo)
fi
echo "install-postgres: installing Debian's postgresql package" >&2
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql

if ! have_initdb; then
    echo "install-postgres: the postgresql package is installed but no initdb was found" >&2
    exit 1
fi
