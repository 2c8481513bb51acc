"""Smoke tests of the benchmark harness: tiny runs end to end, no figures asserted.

The optional baselines run when their dependencies are here (limits, asyncpg and PostgreSQL's
server binaries) and must otherwise be reported as skipped with a reason; the test prints which.
So do the ``+uvloop`` rows (uvloop, the dev extra).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import redis_server

from benchmarks import loops, main, server_cost
from benchmarks.measure import Row, merge_rounds
from benchmarks.postgres import LocalPostgres, driver_skip_reason, server_skip_reason
from benchmarks.report import compute_ratios, target_table

ROW_FIELDS = {
    "name",
    "ops_per_s",
    "p50_us",
    "p99_us",
    "p999_us",
    "concurrency",
    "budgets_per_op",
    "processes",
    "mode",
    "client_cpu_pct",
    "server_cpu_pct",
    "used_memory_bytes",
}
#: Short runs, but long enough for reserve_commit_gate at concurrency 1 to finish one round
#: (100 reserve + commit pairs against a 1 usd limit) on a loaded 2-core CI machine: at 0.15 s
#: it once completed none after the request records made each call ~10 % dearer.
TINY = ["--duration", "0.4", "--warmup", "0.05", "--plain"]
SERVER_COST_COMMANDS = {
    ("check", 3),
    ("debit", 3),
    ("debit", 1),
    ("reserve", 3),
    ("commit", 3),
    ("reference_debit", 3),
    ("noop", 0),
}
SERVER_COST_TARGETS = ("check", "debit", "reserve", "commit")
SERVER_COST_REQUESTS = 300
#: The target table of issue 14 at the smoke run's shapes (concurrency 1,8: 64 and 256 fall back
#: to 8), each key with its target.
TARGETS = {
    "debit@8 / raw_evalsha_noop@8": ">= 0.7",
    "check p50@1 / raw_evalsha_noop p50@1": "<= 1.3",
    "debit_batched@8 / raw_evalsha_noop@8": ">= 1",
    "debit_batched@8 / watch_multi_exec@8": ">= 100",
    "debit_batched@8 / postgres_for_update@8": ">= 20",
    "debit_batched@8 b=1 / limits_moving_window@8": ">= 1",
    "server_cost debit b=3 / reference_debit": "<= 3",
    "server_cost check b=3 / reference_debit": "<= 2",
    "server_cost reserve b=3 / reference_debit": "<= 3.5",
    "server_cost commit b=3 / reference_debit": "<= 3.5",
    "server_cost bytes per ledger entry": "<= 150",
    "check_cached p50@1 µs": "<= 10",
    "check p50@1 / check_cached p50@1": ">= 10",
    "check_cached+writer@8 / check+writer@8": ">= 5",
}
#: The check cache rows (issue 17) of the smoke run: (name, budgets, concurrency).
CHECK_CACHE_SHAPES = {
    (name, 3, c) for name in ("check_cached", "check_cached+writer", "check+writer") for c in (1, 8)
} | {("check_cache_staleness", 3, 1)}
#: The hot-path rows with a +uvloop twin in a quick run at concurrency 1,8 (name, concurrency).
UVLOOP_SHAPES = {
    ("raw_evalsha_noop", 1),
    ("raw_evalsha_noop", 8),
    ("check", 1),
    ("check", 8),
    ("debit", 8),
    ("debit_batched", 8),
}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.real,
    pytest.mark.skipif(
        redis_server.server_binary() is None
        and os.environ.get("BUDGETKIT_TEST_REQUIRE_REDIS") != "1",
        reason="needs a redis-server or valkey-server binary",
    ),
]


def _postgres_reason() -> str | None:
    return driver_skip_reason() or server_skip_reason()


def _optional(doc: dict[str, Any], name: str, reason: str | None) -> None:
    """``name`` has rows when it could run, else a skip entry with a reason."""
    names = {row["name"] for row in doc["rows"]}
    skipped = {item["name"]: item["reason"] for item in doc["skipped"]}
    if reason is None:
        assert name in names, doc["skipped"]
        print(f"{name}: ran")
    else:
        assert name not in names
        assert skipped.get(name), doc["skipped"]
        print(f"{name}: skipped ({skipped[name]})")


def test_quick_bench_writes_rows_ratios_and_markdown(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    argv = ["--quick", *TINY, "--concurrency", "1,8", "--scope-sizes", "1,3"]
    argv += ["--ceiling-requests", "2000", "--processes", "2"]
    argv += ["--server-cost-requests", str(SERVER_COST_REQUESTS)]
    argv += ["--mp-workloads", "debit_batched", "--spread-workloads", "debit_batched"]
    code = main([*argv, "--json", str(out)])

    doc = json.loads(out.read_text())
    assert set(doc) >= {"rows", "ratios", "machine", "command", "skipped", "failed"}
    assert doc["failed"] == []
    assert code == 0
    assert {"load_average_start", "load_average_end", "cpus"} <= set(doc["machine"])
    rows = doc["rows"]
    for row in rows:
        assert set(row) >= ROW_FIELDS, row
        assert row["ops_per_s"] > 0, row
    names = {row["name"] for row in rows}
    assert {"check", "debit", "debit_batched", "raw_evalsha_noop", "watch_multi_exec"} <= names
    assert {"naive_check_then_incr", "reserve_commit_gate", "server_ceiling_debit"} <= names

    hot = [r for r in rows if r["processes"] == 1 and r["mode"] == "hot"]
    for name in ("debit", "debit_batched"):
        shapes = {(r["budgets_per_op"], r["concurrency"]) for r in hot if r["name"] == name}
        assert shapes == {(1, 1), (1, 8), (3, 1), (3, 8)}
    assert next(r["notes"] for r in rows if r["name"] == "debit").startswith("batching off")
    multi = [r for r in rows if r["processes"] == 2]
    assert [(r["name"], r["concurrency"]) for r in multi] == [("debit_batched", 8)]
    spread = [r for r in rows if r["mode"] == "spread"]
    assert [(r["name"], r["concurrency"]) for r in spread] == [("debit_batched", 8)]

    assert all(r["overspend"] is not None for r in rows if r["name"] == "naive_check_then_incr")
    assert all(r["overspend"] == 0 for r in rows if r["name"] == "reserve_commit_gate")
    _optional(doc, "limits_moving_window", None if importlib.util.find_spec("limits") else "x")
    _optional(doc, "postgres_for_update", _postgres_reason())

    ratios = doc["ratios"]
    assert "debit@8 / raw_evalsha_noop@8" in ratios
    assert "debit_batched@8 / server_ceiling_debit" in ratios
    assert ratios["reserve_commit_gate overspend"]["value"] == 0
    assert "debit_batched@8 / watch_multi_exec@8" in ratios
    md = (tmp_path / "out.md").read_text()
    assert md.startswith("# budgetkit benchmark")
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "out.png").stat().st_size > 0
    _assert_server_cost(doc, md)
    _assert_targets(doc, md, limits=importlib.util.find_spec("limits") is not None)
    _assert_uvloop(doc, uvloop_reason=loops.skip_reason())
    _assert_check_cache(doc)


def _assert_check_cache(doc: dict[str, Any]) -> None:
    """The check cache rows: cached checks with their hit rate, the writer process's debits,
    and the staleness row's percentiles (samples per second as ops/s) with the lease."""
    rows = {
        (r["name"], r["budgets_per_op"], r["concurrency"]): r
        for r in doc["rows"]
        if r["name"].startswith(("check_cache", "check+writer"))
    }
    assert set(rows) == CHECK_CACHE_SHAPES
    for (name, _, _), row in rows.items():
        metrics = row["metrics"] or {}
        if name.startswith("check_cached"):
            assert 0 < metrics["hit_rate"] <= 1 and "hit rate" in row["notes"], row
        if name.endswith("+writer"):
            assert _positive(metrics["writer_debits_per_s"]) and "writer:" in row["notes"], row
    assert rows[("check_cached", 3, 1)]["metrics"]["invalidations"] == 0
    assert rows[("check_cached+writer", 3, 8)]["metrics"]["invalidations"] > 0
    stale = rows[("check_cache_staleness", 3, 1)]
    assert stale["p50_us"] is not None and stale["p99_us"] >= stale["p50_us"], stale
    assert stale["ops"] >= 50 and stale["metrics"]["lease_ms"] == 100, stale
    assert _positive(stale["metrics"]["from_send_p50_us"]), stale
    assert doc["ratios"]["check_cache_staleness p50 µs"]["value"] == stale["p50_us"]


def _assert_targets(doc: dict[str, Any], md: str, limits: bool) -> None:
    """Every ratio of the target table is in the JSON's ``targets`` and in the markdown, with
    its target and a verdict (met/missed where both rows ran)."""
    table = {t["ratio"]: t for t in doc["targets"]["table"]}
    assert set(TARGETS) <= set(table), sorted(table)
    measured = set(TARGETS) - {"debit_batched@8 / postgres_for_update@8"}
    measured -= set() if limits else {"debit_batched@8 b=1 / limits_moving_window@8"}
    for key, target in TARGETS.items():
        line = table[key]
        assert line["target"] == target, line
        assert doc["ratios"][key]["target"] == target
        if key in measured:
            assert _positive(line["value"]) and isinstance(line["met"], bool), line
            assert line["rounds"] == 1, line
        assert f"| {key} | {target} |" in md
    counts = doc["targets"]
    assert counts["met"] + counts["missed"] + counts["not_measured"] == len(counts["table"])
    assert "## Targets" in md


def _assert_uvloop(doc: dict[str, Any], uvloop_reason: str | None) -> None:
    """The +uvloop rows next to their stock rows (or skipped with a reason), and their ratios."""
    rows = doc["rows"]
    fast = {
        (r["name"].removesuffix("+uvloop"), r["concurrency"])
        for r in rows
        if r["name"].endswith("+uvloop")
    }
    skipped = {item["name"]: item["reason"] for item in doc["skipped"]}
    if uvloop_reason is not None:
        assert not fast
        assert {name + "+uvloop" for name in loops.WORKLOADS} <= set(skipped), skipped
        print(f"+uvloop rows: skipped ({uvloop_reason})")
        return
    print("+uvloop rows: ran")
    assert fast == UVLOOP_SHAPES
    for before, row in itertools.pairwise(rows):
        if row["name"].endswith("+uvloop"):  # right after its stock row, under the same load
            shape = ("name", "concurrency", "budgets_per_op", "mode")
            stock = {k: before[k] for k in shape}
            assert stock == {k: row[k] for k in shape} | {"name": row["name"][: -len("+uvloop")]}
            assert row["notes"].startswith("uvloop ") and row["ops_per_s"] > 0, row
    table = {t["ratio"]: t for t in doc["targets"]["table"]}
    variant = table["debit@8 / raw_evalsha_noop@8"]["uvloop"]
    assert variant["ratio"] == "debit+uvloop@8 / raw_evalsha_noop+uvloop@8"
    assert _positive(variant["value"]) and isinstance(variant["met"], bool), variant
    assert _positive(doc["ratios"]["debit+uvloop@8 / debit@8"]["value"])


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _assert_server_cost(doc: dict[str, Any], md: str) -> None:
    """The server_cost rows, their JSON section, their ratios with targets, and the markdown."""
    rows = {
        (r["name"].removeprefix("server_cost_"), r["budgets_per_op"]): r
        for r in doc["rows"]
        if r["name"].startswith("server_cost_")
    }
    assert set(rows) == SERVER_COST_COMMANDS
    for row in rows.values():
        assert _positive(row["usec_per_call"]), row
        assert row["calls"] >= SERVER_COST_REQUESTS, row
        assert _positive(row["ratio_to_reference"]), row
    assert rows[("reference_debit", 3)]["ratio_to_reference"] == 1.0
    section = doc["server_cost"]
    commands = {(c["command"], c["budgets"]): c for c in section["commands"]}
    assert set(commands) == SERVER_COST_COMMANDS
    for name in SERVER_COST_TARGETS:
        entry = commands[(name, 3)]
        assert entry["target"].startswith("<= ") and isinstance(entry["met"], bool), entry
    figures = section["memory"]["budgetkit"]
    for key in ("bytes_per_budget", "bytes_per_ledger_entry", "bytes_per_request_record"):
        assert _positive(figures[key]), figures
    assert _positive(section["memory"]["reference_debit"]["bytes_per_ledger_entry"])

    ratios = doc["ratios"]
    keys = [f"server_cost {name} b=3 / reference_debit" for name in SERVER_COST_TARGETS]
    for key in [*keys, "server_cost debit b=1 / reference_debit"]:
        assert _positive(ratios[key]["value"]), (key, ratios.get(key))
    for name in SERVER_COST_TARGETS:
        ratio = ratios[f"server_cost {name} b=3 / reference_debit"]
        assert ratio["target"] == f"<= {server_cost.TARGETS[name]:g}"
        assert isinstance(ratio["met"], bool)
    ledger = ratios["server_cost bytes per ledger entry"]
    assert _positive(ledger["value"]) and ledger["target"] == "<= 150", ledger
    assert _positive(ratios["server_cost bytes per budget"]["value"])
    assert "## Server cost" in md and "| reference_debit | 3 |" in md


def test_server_cost_without_redis_benchmark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where redis-benchmark is missing (or cannot reach the URL), a pipelined Python client
    drives every command: the same rows, ratios and memory figures."""
    monkeypatch.setattr(server_cost, "benchmark_argv", lambda url: None)
    out = tmp_path / "cost.json"
    argv = ["--quick", "--plain", "--only", "server_cost", "--rounds", "2"]
    argv += ["--server-cost-requests", str(SERVER_COST_REQUESTS), "--json", str(out)]
    assert main(argv) == 0

    doc = json.loads(out.read_text())
    assert doc["failed"] == []
    _assert_server_cost(doc, (tmp_path / "cost.md").read_text())
    for row in doc["rows"]:
        assert "python pipelines" in row["notes"] and "median of 2 rounds" in row["notes"], row
        assert row["calls"] >= 2 * SERVER_COST_REQUESTS, row


def test_quick_rounds_repeat_only_the_target_rows(tmp_path: Path) -> None:
    """``--quick --rounds 2``: the rows the target table reads (and their +uvloop twins) are
    medians of 2 rounds; the others ran once."""
    out = tmp_path / "rounds.json"
    argv = ["--quick", *TINY, "--rounds", "2", "--only", "raw_evalsha_noop,check,check_cached"]
    argv += ["--concurrency", "1,8", "--scope-sizes", "1,3", "--json", str(out), "--no-png"]
    assert main(argv) == 0

    doc = json.loads(out.read_text())
    assert doc["failed"] == []
    rounds = {(r["name"], r["budgets_per_op"], r["concurrency"]): r["rounds"] for r in doc["rows"]}
    once = {("check", 1, 1), ("check", 1, 8)}
    twice = {("raw_evalsha_noop", 0, 1), ("raw_evalsha_noop", 0, 8), ("check", 3, 1)}
    twice |= {("check", 3, 8)}
    if loops.skip_reason() is None:
        twice |= {(f"{name}+uvloop", size, c) for name, size, c in twice}
    # the check cache rows its targets read run in every round, the others once
    once |= {("check_cached", 3, 8), ("check_cached+writer", 3, 1), ("check+writer", 3, 1)}
    twice |= {("check_cached", 3, 1), ("check_cached+writer", 3, 8), ("check+writer", 3, 8)}
    assert rounds == dict.fromkeys(once, 1) | dict.fromkeys(twice, 2)
    check = doc["targets"]["table"][1]
    assert check["ratio"] == "check p50@1 / raw_evalsha_noop p50@1" and check["rounds"] == 2


def test_uvloop_rows_are_skipped_without_uvloop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without uvloop the +uvloop rows are skipped with the reason in the JSON: not an error."""
    reason = "uvloop is not installed (pip install 'budgetkit[uvloop]')"
    monkeypatch.setattr(loops, "skip_reason", lambda: reason)
    out = tmp_path / "plain.json"
    argv = ["--quick", *TINY, "--only", "raw_evalsha_noop,debit", "--concurrency", "1"]
    argv += ["--scope-sizes", "3", "--json", str(out), "--no-png"]
    assert main(argv) == 0

    doc = json.loads(out.read_text())
    assert doc["failed"] == []
    assert {r["name"] for r in doc["rows"]} == {"raw_evalsha_noop", "debit"}
    skipped = {item["name"]: item["reason"] for item in doc["skipped"]}
    assert skipped == {"raw_evalsha_noop+uvloop": reason, "debit+uvloop": reason}
    assert "uvloop" not in doc["targets"]["table"][0]
    assert not any(key.endswith("/ debit@1") for key in doc["ratios"])


def _row(name: str, concurrency: int, size: int, ops: float, p50: float = 100.0) -> Row:
    return Row(name, concurrency, size, ops, p50, None, None, mode="-" if size == 0 else "hot")


def test_target_table_verdicts_and_uvloop_variants() -> None:
    """The target ratios from rows alone: verdicts at the wanted shapes, the uvloop variant
    beside its stock ratio, and "not measured" for what did not run."""
    rows = [
        _row("raw_evalsha_noop", 1, 0, 10_000.0, p50=100.0),
        _row("raw_evalsha_noop", 64, 0, 20_000.0),
        _row("raw_evalsha_noop", 256, 0, 20_000.0),
        _row("check", 1, 3, 5_000.0, p50=120.0),
        _row("debit", 64, 3, 15_000.0),
        _row("debit_batched", 64, 3, 30_000.0),
        _row("debit_batched", 64, 1, 40_000.0),
        _row("debit_batched", 256, 3, 18_000.0),
        _row("watch_multi_exec", 64, 3, 100.0),
        _row("limits_moving_window", 64, 1, 50_000.0),
        _row("debit+uvloop", 64, 3, 30_000.0),
        _row("raw_evalsha_noop+uvloop", 64, 0, 40_000.0),
        _row("check_cached", 1, 3, 150_000.0, p50=6.0),
        _row("check_cached+writer", 64, 3, 40_000.0),
        _row("check+writer", 64, 3, 10_000.0),
    ]
    ratios = compute_ratios(rows)
    targets = target_table(ratios)
    table = {t["ratio"]: t for t in targets["table"]}
    expected = {
        "debit@64 / raw_evalsha_noop@64": (0.75, True),
        "check p50@1 / raw_evalsha_noop p50@1": (1.2, True),
        "debit_batched@256 / raw_evalsha_noop@256": (0.9, False),
        "debit_batched@64 / watch_multi_exec@64": (300.0, True),
        "debit_batched@64 / postgres_for_update@64": (None, None),
        "debit_batched@64 b=1 / limits_moving_window@64": (0.8, False),
        "server_cost debit b=3 / reference_debit": (None, None),
        "check_cached p50@1 µs": (6.0, True),
        "check p50@1 / check_cached p50@1": (20.0, True),
        "check_cached+writer@64 / check+writer@64": (4.0, False),
    }
    for key, (value, met) in expected.items():
        assert (table[key]["value"], table[key]["met"]) == (value, met), table[key]
    variant = table["debit@64 / raw_evalsha_noop@64"]["uvloop"]
    assert variant == {
        "ratio": "debit+uvloop@64 / raw_evalsha_noop+uvloop@64",
        "value": 0.75,
        "met": True,
        "rounds": 1,
    }
    assert "debit+uvloop@64 / raw_evalsha_noop+uvloop@64" not in table  # beside, not a line
    assert ratios["debit+uvloop@64 / debit@64"]["value"] == 2.0
    assert (targets["met"], targets["missed"]) == (5, 3)
    assert targets["not_measured"] == len(targets["table"]) - 8 == 6


def test_growth_mode_reports_bytes_and_throughput(tmp_path: Path) -> None:
    out = tmp_path / "growth.json"
    argv = ["growth", "--quick", *TINY, "--budgets", "100,600", "--ledger", "300"]
    argv += ["--idempotency", "200", "--concurrency", "8", "--json", str(out)]
    assert main(argv) == 0

    doc = json.loads(out.read_text())
    memory = doc["memory"]
    for key in ("bytes_per_budget", "bytes_per_ledger_entry", "bytes_per_idempotency_record"):
        assert memory[key] is not None and memory[key] > 0, memory
    series = {row["series"] for row in doc["rows"]}
    assert series == {"stored_budgets", "budgets_per_scope", "ledger_length", "idempotency_keys"}
    assert {row["x"] for row in doc["rows"] if row["series"] == "stored_budgets"} == {0, 100, 600}
    assert all(row["ops_per_s"] > 0 for row in doc["rows"])
    assert (tmp_path / "growth.md").read_text().startswith("# budgetkit cost growth")


@pytest.mark.skipif(_postgres_reason() is not None, reason=str(_postgres_reason()))
def test_private_postgres_starts_and_stops_cleanly() -> None:
    with LocalPostgres() as server:
        pid, directory = server.postmaster_pid(), server.directory
        assert pid is not None and directory is not None and directory.is_dir()
        assert _running(pid)
    assert not _running(pid)
    assert not directory.exists()


def _running(pid: int) -> bool:
    """True while ``pid`` is a live process (a zombie that init has not reaped is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_rounds_merge_into_medians() -> None:
    def row(ops_per_s: float, p99_us: float, overspend: float) -> Row:
        return Row(
            name="debit",
            concurrency=8,
            budgets_per_op=3,
            ops_per_s=ops_per_s,
            p50_us=10.0,
            p99_us=p99_us,
            p999_us=None,
            ops=100,
            duration_s=1.0,
            client_cpu_s=0.5,
            server_cpu_s=None,
            overspend=overspend,
        )

    merged = merge_rounds([row(100.0, 50.0, 0.0), row(300.0, 70.0, 0.2), row(200.0, 90.0, 0.1)])
    assert (merged.ops_per_s, merged.p99_us, merged.p999_us) == (200.0, 70.0, None)
    assert (merged.ops, merged.duration_s, merged.client_cpu_s) == (300, 3.0, 1.5)
    assert merged.overspend == 0.2
    assert "median of 3 rounds" in merged.notes


def test_server_cost_rounds_merge_into_medians() -> None:
    def row(usec: float, bytes_per_entry: float) -> Row:
        return Row(
            name="server_cost_debit",
            concurrency=4,
            budgets_per_op=3,
            ops_per_s=1000.0,
            p50_us=None,
            p99_us=None,
            p999_us=None,
            usec_per_call=usec,
            calls=100,
            metrics={"bytes_per_ledger_entry": bytes_per_entry},
        )

    merged = merge_rounds([row(70.5, 140.0), row(64.25, 150.0), row(90.0, 145.0)])
    assert (merged.usec_per_call, merged.calls) == (70.5, 300)
    assert merged.metrics == {"bytes_per_ledger_entry": 145.0}
    assert "usec_per_call 64.25..90" in merged.notes
    assert server_cost.slice_sizes(11, 5) == [3, 2, 2, 2, 2]
    assert server_cost.slice_sizes(2, 5) == [1, 1]
