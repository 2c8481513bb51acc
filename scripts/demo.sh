#!/usr/bin/env bash
# The README's first command: install budgetkit into the project venv .venv (made on first use,
# see scripts/venv.sh) and run `budgetkit demo` from it. Arguments go to `budgetkit demo`
# (e.g. --redis-url redis://127.0.0.1:6379/0). PYTHON=... names the interpreter .venv is built from.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/venv.sh
source scripts/venv.sh

log "installing budgetkit into .venv"
venv_install '.[cli]'
exec "$(dirname "$VENV_PYTHON")/budgetkit" demo "$@"
