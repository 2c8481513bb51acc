"""The report: ratios between rows, the JSON document, a markdown table and a PNG chart."""

from __future__ import annotations

import importlib
import json
import os
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from budgetkit.bench.measure import Row

RATIO_CONCURRENCY = 64
RATIO_SCOPE_SIZE = 3
MIB = 1024 * 1024
COLUMNS = [
    ("name", "name"),
    ("budgets_per_op", "budgets"),
    ("concurrency", "conc."),
    ("mode", "mode"),
    ("ops_per_s", "ops/s"),
    ("p50_us", "p50 µs"),
    ("p99_us", "p99 µs"),
    ("p999_us", "p99.9 µs"),
    ("client_cpu_pct", "client CPU %"),
    ("server_cpu_pct", "server CPU %"),
    ("used_memory_mib", "Redis MiB"),
    ("overspend", "overspend"),
    ("notes", "notes"),
]


def _find(rows: Sequence[Row], name: str, concurrency: int, size: int | None = None) -> Row | None:
    for row in rows:
        same_size = size is None or row.budgets_per_op == size
        if row.name == name and row.concurrency == concurrency and same_size:
            return row
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def _pick(values: set[int], wanted: int, fallback_max: bool = True) -> int | None:
    if not values:
        return None
    if wanted in values:
        return wanted
    return max(values) if fallback_max else min(values)


def compute_ratios(rows: Sequence[Row]) -> dict[str, dict[str, Any]]:
    """The headline ratios; at concurrency 64 and 3 budgets when run, else the nearest run."""
    debits = [r for r in rows if r.name == "debit"]
    high = _pick({r.concurrency for r in debits}, RATIO_CONCURRENCY)
    size = _pick({r.budgets_per_op for r in debits}, RATIO_SCOPE_SIZE, fallback_max=False)
    low = _pick({r.concurrency for r in rows if r.name == "check"}, 1, fallback_max=False)
    out: dict[str, dict[str, Any]] = {}

    def put(key: str, value: float | None, basis: str) -> None:
        out[key] = {"value": value, "basis": basis}

    if high is not None and size is not None:
        debit = _find(rows, "debit", high, size)
        debit_ops = debit.ops_per_s if debit else None
        raw = _find(rows, "raw_evalsha_noop", high)
        watch = _find(rows, "watch_multi_exec", high)
        ceiling = next((r for r in rows if r.name == "server_ceiling_debit"), None)
        basis = f"ops/s, debit of {size} budgets"
        put(
            f"debit@{high} / raw_evalsha_noop@{high}",
            _ratio(debit_ops, raw.ops_per_s if raw else None),
            basis,
        )
        put(
            f"debit@{high} / watch_multi_exec@{high}",
            _ratio(debit_ops, watch.ops_per_s if watch else None),
            basis + " vs WATCH/MULTI/EXEC of 3 balances",
        )
        put(
            f"debit@{high} / server_ceiling_debit",
            _ratio(debit_ops, ceiling.ops_per_s if ceiling else None),
            basis + " vs redis-benchmark driving the same script",
        )
    if low is not None:
        check = _find(rows, "check", low, size)
        raw = _find(rows, "raw_evalsha_noop", low)
        put(
            f"check p50@{low} / raw_evalsha_noop p50@{low}",
            _ratio(check.p50_us if check else None, raw.p50_us if raw else None),
            f"p50 latency, check of {size} budgets",
        )
    naive = [r for r in rows if r.name == "naive_check_then_incr"]
    if naive:
        worst = max(naive, key=lambda r: r.concurrency)
        at = _find(naive, "naive_check_then_incr", RATIO_CONCURRENCY) or worst
        put(
            f"naive overspend@{at.concurrency}",
            at.overspend,
            "usd beyond a 1 usd limit, worst round (budgetkit's debit is atomic)",
        )
    return out


def machine_info(redis_info: dict[str, Any]) -> dict[str, Any]:
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "redis_server": redis_info.get("redis_version"),
        "redis_py": version("redis"),
        "hiredis": version("hiredis"),
        "budgetkit": version("budgetkit"),
    }


def document(
    rows: Sequence[Row], ratios: dict[str, Any], machine: dict[str, Any], command: str
) -> dict[str, Any]:
    return {
        "rows": [row.as_dict() for row in rows],
        "ratios": ratios,
        "machine": machine,
        "command": command,
    }


def _cell(key: str, row: dict[str, Any]) -> str:
    if key == "used_memory_mib":
        used = row.get("used_memory_bytes")
        return "" if used is None else f"{used / MIB:.1f}"
    value = row.get(key)
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.0f}" if key == "ops_per_s" or value >= 100 else f"{value:.3g}"
    return str(value).replace("|", "\\|")


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        "# budgetkit benchmark",
        "",
        f"`{doc['command']}`",
        "",
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in doc["rows"]:
        lines.append("| " + " | ".join(_cell(key, row) for key, _ in COLUMNS) + " |")
    lines += ["", "## Ratios", ""]
    for key, ratio in doc["ratios"].items():
        lines.append(f"- **{key}**: {ratio['value']} ({ratio['basis']})")
    for title, key, field in (("Skipped", "skipped", "reason"), ("Failed", "failed", "error")):
        if doc.get(key):
            lines += ["", f"## {title}", ""]
            lines += [f"- {item['name']}: {item[field]}" for item in doc[key]]
    lines += ["", "## Machine", ""]
    lines += [f"- {key}: {value}" for key, value in doc["machine"].items()]
    return "\n".join(lines) + "\n"


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def write_markdown(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(doc), encoding="utf-8")


def matplotlib_pyplot() -> Any:
    """pyplot on the non-interactive Agg backend, or None when matplotlib is missing."""
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
    except ImportError:
        return None
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def write_png(doc: dict[str, Any], path: Path, pyplot: Any) -> None:
    """Horizontal bars of ops/s per row (log scale), baselines in grey."""
    rows = doc["rows"]
    labels = [f"{r['name']} b={r['budgets_per_op']} c={r['concurrency']}" for r in rows]
    values = [max(float(r["ops_per_s"]), 1.0) for r in rows]
    ours = ("check", "debit", "reserve_commit")
    colors = ["tab:blue" if r["name"] in ours else "tab:gray" for r in rows]
    figure, axes = pyplot.subplots(figsize=(10, 0.28 * len(rows) + 1.5))
    try:
        axes.barh(labels, values, color=colors)
        axes.set_xscale("log")
        axes.invert_yaxis()
        axes.set_xlabel("ops/s (log scale)")
        axes.set_title("budgetkit benchmark (blue: budgetkit, grey: baselines)")
        axes.tick_params(axis="y", labelsize=7)
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=120)
    finally:
        pyplot.close(figure)
