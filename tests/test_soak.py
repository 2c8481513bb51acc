"""Long run (security issue §6): scripts/soak.py, briefly.

Runs the soak for a few seconds on a private redis-server (the script starts it) and checks its
report: no violation (every budget's balance equals its initial limit minus its whole ledger,
exactly; no hold left after settling; idempotent retries replayed), a real mix of operations and
outcomes, and bounded memory growth per operation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOAK = ROOT / "scripts" / "soak.py"
SECONDS = 4
BUDGETS_PER_ORG = 6 + 3 * 2 + 2  # sessions, users (two currencies), org level (two currencies)


@pytest.mark.slow
@pytest.mark.real
def test_soak_briefly(
    redis_binary: str,
    record_property: Callable[[str, object], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = {**os.environ, "REDIS_SERVER": redis_binary}
    done = subprocess.run(
        [sys.executable, str(SOAK), "--seconds", str(SECONDS), "--orgs", "3", "--seed", "7"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    report = json.loads(done.stdout)
    assert report["violations"] == [], report["violations"]
    assert done.returncode == 0 and report["ok"]
    assert report["budgets_checked"] == 3 * BUDGETS_PER_ORG
    assert report["ops"] > 200 and report["ledger_entries"] > 200
    kinds = report["ops_by_kind"]
    for kind in ("check", "debit", "commit", "release", "top_up", "update_limit", "resume"):
        assert kinds.get(kind, 0) > 0, kind
    memory = report["memory"]
    assert 0 < memory["bytes_per_op"] < 4096
    assert report["simulated_hours"] > 0.3  # periods rolled over several times
    record_property("soak_ops", report["ops"])
    with capsys.disabled():
        print(
            f"\nsoak: {report['ops']} ops in {report['seconds']} s ({report['ops_per_second']}/s, "
            f"{report['simulated_hours']} simulated hours), {report['budgets_checked']} budgets "
            f"and {report['ledger_entries']} ledger entries checked, violations 0; memory "
            f"+{memory['growth_bytes']} B ({memory['bytes_per_op']} B/op, "
            f"{memory['bytes_per_ledger_entry']} B/ledger entry)"
        )
