# shellcheck shell=bash
# scripts/venv.sh: the project virtual environment .venv, and the shell helpers both commands share.
# Sourced (never run) by scripts/test.sh and scripts/demo.sh:
#   venv_install PIP_ARGS...   make sure .venv works, `pip install PIP_ARGS` into it, and set
#                              VENV_PYTHON to its interpreter
#   log MESSAGE                a progress line on stderr
#   apt_install PACKAGE...     apt-get install without letting init scripts start services
# PYTHON=/path/to/python3 names the interpreter .venv is built from (default: python3 on PATH).
# Why a venv: Debian 12 and Ubuntu 24.04 mark their python3 "externally managed" (PEP 668) and pip
# refuses to install into it. .venv is created on first use and reused; it is rebuilt when it is
# broken (no interpreter, no pip) or was built from another Python. Debian ships venv's ensurepip
# as a separate package (python3.X-venv): as root with apt-get it is installed when venv creation
# fails; otherwise the error says what to install.

VENV_SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV_DIR="$(dirname "$VENV_SCRIPTS_DIR")/.venv"
VENV_LOCK_WAIT_S=600 # two scripts sharing the work tree take turns to create and install
VENV_PYTHON=""
# What makes two interpreters interchangeable for a venv: implementation, version, installation.
VENV_IDENTITY_PY='import sys; print(sys.implementation.name, *sys.version_info[:3], sys.base_prefix)'

log() { printf '==> %s\n' "$*" >&2; }

apt_install() {
    # Install Debian packages without letting their init scripts start system services (standard
    # Debian policy-rc.d mechanism; only when no policy is in place already, removed right after).
    local policy=/usr/sbin/policy-rc.d made_policy=0 rc=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    { apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; } || rc=$?
    if [[ "$made_policy" == 1 ]]; then rm -f "$policy"; trap - EXIT; fi
    return "$rc"
}

# True when .venv has a working interpreter with pip, built from the same Python as $1.
venv_is_current() {
    local base_py="$1" have want
    local probe="$VENV_IDENTITY_PY; import importlib.util as u; sys.exit(not u.find_spec('pip'))"
    [[ -x "$VENV_DIR/bin/python" ]] || return 1
    have="$("$VENV_DIR/bin/python" -c "$probe" 2>/dev/null)" || return 1
    want="$("$base_py" -c "$VENV_IDENTITY_PY")" || return 1
    [[ "$have" == "$want" ]]
}

# Create .venv from $1; on a Debian/Ubuntu system Python without ensurepip, install it (as root).
venv_create() {
    local base_py="$1" minor prefix
    rm -rf "$VENV_DIR"
    "$base_py" -m venv "$VENV_DIR" && return 0
    rm -rf "$VENV_DIR" # venv leaves a half-made directory behind when ensurepip is missing
    minor="$("$base_py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    prefix="$("$base_py" -c 'import sys; print(sys.base_prefix)')"
    if [[ "$prefix" == /usr && "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "venv creation failed: installing Debian's python$minor-venv (venv's ensurepip)"
        apt_install "python$minor-venv" || apt_install python3-venv || true
        "$base_py" -m venv "$VENV_DIR" && return 0
        rm -rf "$VENV_DIR"
    fi
    echo "error: '$base_py -m venv $VENV_DIR' failed." >&2
    if [[ "$prefix" == /usr ]]; then
        echo "On Debian/Ubuntu install venv support for Python $minor first, then run this again:" >&2
        echo "  sudo apt-get install -y python$minor-venv" >&2
    fi
    echo "Or build .venv from another interpreter: PYTHON=/path/to/python3.11 bash $0" >&2
    return 1
}

venv_install() {
    local base_py="${PYTHON:-python3}" lock_fd rc=0
    command -v "$base_py" >/dev/null 2>&1 \
        || { echo "error: no Python interpreter '$base_py' (set PYTHON=...)" >&2; return 1; }
    # flock(1) on this (read-only) file: released when the fd closes or the process exits.
    exec {lock_fd}<"$VENV_SCRIPTS_DIR/venv.sh"
    if command -v flock >/dev/null 2>&1 && ! flock -w "$VENV_LOCK_WAIT_S" "$lock_fd"; then
        echo "error: another script held the .venv lock for ${VENV_LOCK_WAIT_S}s" >&2
        exec {lock_fd}<&-
        return 1
    fi
    if ! venv_is_current "$base_py"; then
        if [[ -e "$VENV_DIR" ]]; then
            log "rebuilding $VENV_DIR: broken, or built from another Python"
        fi
        log "creating $VENV_DIR from $(command -v "$base_py") ($("$base_py" -V 2>&1))"
        venv_create "$base_py" || rc=$?
    fi
    if [[ "$rc" == 0 ]]; then
        PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 \
            "$VENV_DIR/bin/python" -m pip install -q "$@" || rc=$?
    fi
    exec {lock_fd}<&-
    # shellcheck disable=SC2034 # VENV_PYTHON is the result, read by the sourcing script
    [[ "$rc" == 0 ]] && VENV_PYTHON="$VENV_DIR/bin/python"
    return "$rc"
}
