"""Smoke test of the benchmark harness: a tiny run end to end, no figures asserted."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from budgetkit.bench import main

ROW_FIELDS = {"name", "ops_per_s", "p50_us", "p99_us", "p999_us", "concurrency", "budgets_per_op"}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.real,
    pytest.mark.skipif(
        shutil.which("redis-server") is None
        and os.environ.get("BUDGETKIT_TEST_REQUIRE_REDIS") != "1",
        reason="needs a redis-server binary",
    ),
]


def test_quick_bench_writes_rows_ratios_and_markdown(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    argv = ["--quick", "--duration", "0.2", "--warmup", "0.1", "--plain"]
    argv += ["--concurrency", "1,8", "--scope-sizes", "1,3", "--ceiling-requests", "2000"]
    assert main([*argv, "--json", str(out)]) == 0

    doc = json.loads(out.read_text())
    assert set(doc) >= {"rows", "ratios", "machine", "command"}
    assert doc["failed"] == []
    rows = doc["rows"]
    names = {row["name"] for row in rows}
    assert {"check", "debit", "raw_evalsha_noop", "watch_multi_exec"} <= names
    assert "naive_check_then_incr" in names
    for row in rows:
        assert set(row) >= ROW_FIELDS, row
        assert row["ops_per_s"] > 0, row
    naive = [row for row in rows if row["name"] == "naive_check_then_incr"]
    assert all(row["overspend"] is not None for row in naive)
    assert {(r["budgets_per_op"], r["concurrency"]) for r in rows if r["name"] == "debit"} == {
        (1, 1),
        (1, 8),
        (3, 1),
        (3, 8),
    }
    assert any(key.startswith("debit@8 / raw_evalsha_noop@8") for key in doc["ratios"])
    assert (tmp_path / "out.md").read_text().startswith("# budgetkit benchmark")
