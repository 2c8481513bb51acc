"""The PNG chart of a run (matplotlib, Agg backend; optional: the ``bench`` extra).

Four panels: throughput and p99 latency against concurrency (budgetkit in colour, its +uvloop
rows dotted, baselines in grey, hot mode, one process, at the ratio scope size; the server
ceiling as a dashed line);
throughput against the number of budgets per operation at the ratio concurrency; and the extra
modes of ``debit_batched`` (hot, spread, multi-process) against concurrency.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.loops import SUFFIX as UVLOOP_SUFFIX
from benchmarks.report import RATIO_CONCURRENCY, RATIO_SCOPE_SIZE

OURS = {
    "check": "tab:green",
    "check_cached": "gold",
    "debit": "tab:blue",
    "debit_batched": "tab:purple",
    "reserve_commit": "tab:cyan",
    "reserve_commit_gate": "tab:olive",
}
BASELINES = {
    "raw_evalsha_noop": ("0.55", ":"),
    "raw_evalsha_noop" + UVLOOP_SUFFIX: ("0.7", ":"),
    "watch_multi_exec": ("0.25", "--"),
    "naive_check_then_incr": ("0.4", "-."),
    "limits_moving_window": ("tab:orange", "--"),
    "postgres_for_update": ("tab:red", "-"),
}
SIZE_WORKLOADS = ("check", "debit", "debit_batched", "reserve_commit", "postgres_for_update")


def matplotlib_pyplot() -> Any:
    """pyplot on the non-interactive Agg backend, or None when matplotlib is missing."""
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
    except ImportError:
        return None
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def _legend(axes: Any, **options: Any) -> None:
    """The legend of a panel that has labelled series (a run of server_cost alone has none:
    matplotlib would warn)."""
    handles, _ = axes.get_legend_handles_labels()
    if handles:
        axes.legend(**options)


def _size(rows: Sequence[dict[str, Any]]) -> int:
    sizes = {r["budgets_per_op"] for r in rows if r["name"] == "debit"}
    return RATIO_SCOPE_SIZE if RATIO_SCOPE_SIZE in sizes or not sizes else min(sizes)


def _series(
    rows: Sequence[dict[str, Any]], name: str, size: int | None, mode: str = "hot", procs: int = 1
) -> list[dict[str, Any]]:
    picked = [
        r
        for r in rows
        if r["name"] == name
        and r.get("processes", 1) == procs
        and r["mode"] in (mode, "-")
        and (size is None or r["budgets_per_op"] == size)
    ]
    return sorted(picked, key=lambda r: r["concurrency"])


def _by_concurrency(axes: Any, rows: Sequence[dict[str, Any]], key: str, size: int) -> None:
    for name, color in OURS.items():
        series = _series(rows, name, size if name not in ("reserve_commit_gate",) else None)
        if series:
            xs = [r["concurrency"] for r in series]
            axes.plot(xs, [r[key] for r in series], "o-", color=color, label=name, linewidth=2)
        fast = [r for r in _series(rows, name + UVLOOP_SUFFIX, size) if r[key] is not None]
        if fast:  # the +uvloop rows (benchmarks.loops): the same colour, dotted
            xs = [r["concurrency"] for r in fast]
            label = name + UVLOOP_SUFFIX
            axes.plot(xs, [r[key] for r in fast], "^:", color=color, label=label, alpha=0.8)
    for name, (color, style) in BASELINES.items():
        wanted = size if name == "postgres_for_update" else None
        series = [r for r in _series(rows, name, wanted) if r[key] is not None]
        if series:
            xs = [r["concurrency"] for r in series]
            axes.plot(xs, [r[key] for r in series], style, marker=".", color=color, label=name)
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xlabel("concurrent tasks (one client process)")
    axes.grid(True, which="both", alpha=0.3)


def _by_size(axes: Any, rows: Sequence[dict[str, Any]]) -> None:
    conc = {r["concurrency"] for r in rows if r["name"] == "debit"}
    at = RATIO_CONCURRENCY if RATIO_CONCURRENCY in conc or not conc else max(conc)
    names = [n for n in SIZE_WORKLOADS if _series(rows, n, None)]
    sizes = sorted({r["budgets_per_op"] for r in rows if r["name"] in names})
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        values = []
        for size in sizes:
            row = next((r for r in _series(rows, name, size) if r["concurrency"] == at), None)
            values.append(row["ops_per_s"] if row else 0)
        color = OURS.get(name) or BASELINES.get(name, ("0.5", "-"))[0]
        xs = [j + i * width for j in range(len(sizes))]
        axes.bar(xs, values, width=width, color=color, label=name)
    axes.set_xticks([j + 0.4 - width / 2 for j in range(len(sizes))], [str(s) for s in sizes])
    axes.set_xlabel(f"budgets per operation (concurrency {at}, hot)")
    axes.set_ylabel("ops/s")
    axes.set_yscale("log")
    _legend(axes, fontsize=7)
    axes.grid(True, axis="y", which="both", alpha=0.3)


def _modes(axes: Any, rows: Sequence[dict[str, Any]], size: int) -> None:
    variants = [("hot", 1, "tab:purple"), ("spread", 1, "tab:pink")]
    procs = sorted({r.get("processes", 1) for r in rows if r.get("processes", 1) > 1})
    variants += [("hot", p, "tab:brown") for p in procs]
    for name, style in (("debit_batched", "o-"), ("debit", "s--")):
        for mode, p, color in variants:
            series = _series(rows, name, size, mode=mode, procs=p)
            if series:
                label = f"{name} {mode}" + (f" x{p} processes" if p > 1 else "")
                xs = [r["concurrency"] for r in series]
                axes.plot(xs, [r["ops_per_s"] for r in series], style, color=color, label=label)
    axes.set_xscale("log", base=2)
    axes.set_xlabel("concurrent tasks in total")
    axes.set_ylabel("ops/s")
    axes.set_title(f"modes, {size} budgets per debit", fontsize=9)
    _legend(axes, fontsize=7)
    axes.grid(True, which="both", alpha=0.3)


def write_png(doc: dict[str, Any], path: Path, pyplot: Any) -> None:
    rows = doc["rows"]
    size = _size(rows)
    figure, grid = pyplot.subplots(2, 2, figsize=(14, 10))
    try:
        throughput, latency, sizes, modes = grid[0][0], grid[0][1], grid[1][0], grid[1][1]
        _by_concurrency(throughput, rows, "ops_per_s", size)
        ceiling = next((r for r in rows if r["name"] == "server_ceiling_debit"), None)
        if ceiling is not None:
            throughput.axhline(
                ceiling["ops_per_s"],
                color="black",
                linestyle="--",
                linewidth=1,
                label="server_ceiling_debit",
            )
        throughput.set_ylabel("ops/s (log)")
        throughput.set_title(
            f"throughput, hot (budgetkit and postgres at {size} budgets per op)", fontsize=9
        )
        _legend(throughput, fontsize=7, loc="lower left")
        _by_concurrency(latency, rows, "p99_us", size)
        latency.set_ylabel("p99 latency µs (log)")
        latency.set_title("p99 latency as the caller sees it", fontsize=9)
        _by_size(sizes, rows)
        _modes(modes, rows, size)
        figure.suptitle("budgetkit benchmark: " + doc.get("command", ""), fontsize=10)
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=110)
    finally:
        pyplot.close(figure)
