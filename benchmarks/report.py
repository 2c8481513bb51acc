"""The report: ratios between rows, the JSON document, a markdown table and a PNG chart."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks import server_cost
from benchmarks.measure import Row

RATIO_CONCURRENCY = 64
RATIO_SCOPE_SIZE = 3
TOP_CONCURRENCY = 256
MIB = 1024 * 1024
WATCH_TARGET = 100.0
POSTGRES_TARGET = 10.0
COLUMNS = [
    ("name", "name"),
    ("budgets_per_op", "budgets"),
    ("concurrency", "conc."),
    ("processes", "procs"),
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


def find(
    rows: Sequence[Row],
    name: str,
    concurrency: int | None = None,
    size: int | None = None,
    mode: str = "hot",
    processes: int = 1,
) -> Row | None:
    """The row of ``name`` at that shape; mode ``-`` (no budgets) matches any mode."""
    for row in rows:
        if (
            row.name == name
            and row.processes == processes
            and row.mode in (mode, "-")
            and (concurrency is None or row.concurrency == concurrency)
            and (size is None or row.budgets_per_op == size)
        ):
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


def _ops(row: Row | None) -> float | None:
    return None if row is None else row.ops_per_s


class Ratios:
    """The ratio block: key -> value, basis, and for the issue's targets the target and verdict."""

    def __init__(self) -> None:
        self.out: dict[str, dict[str, Any]] = {}

    def put(
        self,
        key: str,
        value: float | None,
        basis: str,
        at_least: float | None = None,
        at_most: float | None = None,
    ) -> None:
        entry: dict[str, Any] = {"value": value, "basis": basis}
        if at_least is not None:
            entry["target"] = f">= {at_least:g}"
            entry["met"] = None if value is None else value >= at_least
        if at_most is not None:
            entry["target"] = f"<= {at_most:g}"
            entry["met"] = None if value is None else value <= at_most
        self.out[key] = entry


def compute_ratios(rows: Sequence[Row]) -> dict[str, dict[str, Any]]:
    """The headline ratios, at concurrency 64 (256 for the ceiling) and 3 budgets when run.

    Any shape that was not run falls back to the nearest that was (largest concurrency, smallest
    scope size). budgetkit's rows are the hot mode of one process; spread and multi-process rows
    get ratios of their own.
    """
    ours = [r for r in rows if r.name in ("debit", "debit_batched", "check")]
    size = _pick({r.budgets_per_op for r in ours}, RATIO_SCOPE_SIZE, fallback_max=False)
    high = _pick({r.concurrency for r in ours}, RATIO_CONCURRENCY)
    top = _pick({r.concurrency for r in ours}, TOP_CONCURRENCY)
    low = _pick({r.concurrency for r in ours}, 1, fallback_max=False)
    ratios = Ratios()
    if size is not None and high is not None and top is not None and low is not None:
        _hot_path_ratios(ratios, rows, size, high, top, low)
        _baseline_ratios(ratios, rows, size, high)
        _mode_ratios(ratios, rows, size, high)
    _overspend_ratios(ratios, rows, high or RATIO_CONCURRENCY)
    _server_cost_ratios(ratios, rows)
    return ratios.out


def _hot_path_ratios(
    ratios: Ratios, rows: Sequence[Row], size: int, high: int, top: int, low: int
) -> None:
    debit = find(rows, "debit", high, size)
    ratios.put(
        f"debit@{high} / raw_evalsha_noop@{high}",
        _ratio(_ops(debit), _ops(find(rows, "raw_evalsha_noop", high))),
        f"ops/s; debit of {size} budgets, batching off (one EVALSHA per call) vs a bare "
        "EVALSHA of `return 1`",
    )
    check = find(rows, "check", low, size)
    raw_low = find(rows, "raw_evalsha_noop", low)
    ratios.put(
        f"check p50@{low} / raw_evalsha_noop p50@{low}",
        _ratio(check.p50_us if check else None, raw_low.p50_us if raw_low else None),
        f"p50 latency; check of {size} budgets vs a bare EVALSHA",
    )
    ceiling = next((r for r in rows if r.name == "server_ceiling_debit"), None)
    ratios.put(
        f"debit_batched@{top} / server_ceiling_debit",
        _ratio(_ops(find(rows, "debit_batched", top, size)), _ops(ceiling)),
        f"ops/s; debit of {size} budgets, auto-batching on, vs redis-benchmark driving the same "
        "script (the server's limit)",
    )


def _baseline_ratios(ratios: Ratios, rows: Sequence[Row], size: int, high: int) -> None:
    baselines = [  # (row, its name, what it is, the target of debit_batched)
        (
            find(rows, "watch_multi_exec", high),
            "watch_multi_exec",
            "WATCH/MULTI/EXEC of 3 balances",
            WATCH_TARGET,
        ),
        (
            find(rows, "postgres_for_update", high, size),
            "postgres_for_update",
            "a PostgreSQL transaction locking the same rows",
            POSTGRES_TARGET,
        ),
    ]
    limits = find(rows, "limits_moving_window", high)
    for name in ("debit_batched", "debit"):
        ours = _ops(find(rows, name, high, size))
        batching = "auto-batching on" if name == "debit_batched" else "batching off"
        for row, baseline, versus, target in baselines:
            ratios.put(
                f"{name}@{high} / {baseline}@{high}",
                _ratio(ours, _ops(row)),
                f"ops/s on one hot scope; debit of {size} budgets ({batching}) vs {versus}",
                at_least=target if name == "debit_batched" else None,
            )
    ratios.put(
        f"debit_batched@{high} / limits_moving_window@{high}",
        _ratio(_ops(find(rows, "debit_batched", high, size)), _ops(limits)),
        f"ops/s; debit of {size} budgets vs one moving-window counter of the limits package",
    )


def _mode_ratios(ratios: Ratios, rows: Sequence[Row], size: int, high: int) -> None:
    hot = _ops(find(rows, "debit_batched", high, size))
    spread = find(rows, "debit_batched", high, size, mode="spread")
    if spread is not None:
        ratios.put(
            f"debit_batched spread@{high} / debit_batched hot@{high}",
            _ratio(spread.ops_per_s, hot),
            "ops/s; one organization per task vs every task on one scope",
        )
    multi = [r for r in rows if r.name == "debit_batched" and r.processes > 1]
    at = find(multi, "debit_batched", high, size, processes=multi[0].processes) if multi else None
    if at is not None:
        ratios.put(
            f"debit_batched x{at.processes} processes@{high} / debit_batched@{high}",
            _ratio(at.ops_per_s, hot),
            f"ops/s; {at.processes} client processes sharing the hot scope vs one process",
        )


def _overspend_ratios(ratios: Ratios, rows: Sequence[Row], high: int) -> None:
    naive = [r for r in rows if r.name == "naive_check_then_incr" and r.overspend is not None]
    if naive:
        at = find(naive, "naive_check_then_incr", high) or max(naive, key=lambda r: r.concurrency)
        ratios.put(
            f"naive overspend@{at.concurrency}",
            at.overspend,
            "usd beyond a 1 usd limit, worst round (GET, compare, INCRBYFLOAT)",
        )
    gate = [r for r in rows if r.name == "reserve_commit_gate" and r.overspend is not None]
    if gate:
        worst = max(r.overspend or 0.0 for r in gate)
        concurrency = ",".join(str(r.concurrency) for r in gate)
        naive_worst = max((r.overspend or 0.0 for r in naive), default=None)
        ratios.out["reserve_commit_gate overspend"] = {
            "value": worst,
            "basis": f"usd beyond a 1 usd limit, worst round at concurrency {concurrency} "
            "(atomic reserve, then commit)",
            "target": "0 where naive_check_then_incr overspends",
            "met": False if worst > 0 else (True if naive_worst else None),
        }


def _server_cost_rows(rows: Sequence[Row]) -> list[Row]:
    return [r for r in rows if r.name.startswith(server_cost.ROW_PREFIX)]


def _usec(row: Row | None) -> float | None:
    return None if row is None else row.usec_per_call


def _server_cost_ratios(ratios: Ratios, rows: Sequence[Row]) -> None:
    """Redis's own time per call of each script command over the lean reference debit's (INFO
    commandstats, same run; medians of the rounds), and the bytes per ledger entry and budget."""
    ours = _server_cost_rows(rows)
    reference = find(ours, server_cost.row_name(server_cost.REFERENCE))
    if reference is None:
        return
    ref_us = reference.usec_per_call
    for row in ours:
        command = row.name.removeprefix(server_cost.ROW_PREFIX)
        if command in (server_cost.REFERENCE, server_cost.NOOP):
            continue
        size = row.budgets_per_op
        target = server_cost.TARGETS.get(command) if size == server_cost.TARGET_BUDGETS else None
        ratios.put(
            f"server_cost {command} b={size} / {server_cost.REFERENCE}",
            _ratio(row.usec_per_call, ref_us),
            f"Redis usec_per_call (INFO commandstats): {command} of {size} budget"
            f"{'' if size == 1 else 's'} as the client sends it, {row.usec_per_call} µs, vs the "
            "lean reference debit of 3 budgets "
            f"(3 HMGET, admission loop, 3 HINCRBY, 1 XADD), {ref_us} µs",
            at_most=target,
        )
    debit = find(ours, server_cost.row_name("debit"), size=server_cost.TARGET_BUDGETS)
    figures = (debit.metrics or {}) if debit is not None else {}
    ratios.put(
        "server_cost bytes per ledger entry",
        figures.get("bytes_per_ledger_entry"),
        "MEMORY USAGE of the ledger streams of a 3-budget scope after the server_cost debits, "
        "over their entries: the streams only (each debit also leaves a request record of "
        f"{figures.get('bytes_per_request_record')} B for the redelivery window); reference "
        f"script: {(reference.metrics or {}).get('bytes_per_ledger_entry')} B",
        at_most=server_cost.LEDGER_ENTRY_BYTES_TARGET,
    )
    ratios.put(
        "server_cost bytes per budget",
        figures.get("bytes_per_budget"),
        "MEMORY USAGE of a budget's hash, mean of the 3 of the debited scope",
    )


def server_cost_section(rows: Sequence[Row]) -> dict[str, Any] | None:
    """The ``server_cost`` block of the JSON: each command's Redis time per call, its ratio to
    the reference and target, and the memory figures; None when server_cost did not run."""
    ours = _server_cost_rows(rows)
    if not ours:
        return None
    reference = find(ours, server_cost.row_name(server_cost.REFERENCE))
    ref_us = _usec(reference)
    commands = []
    for row in ours:
        command = row.name.removeprefix(server_cost.ROW_PREFIX)
        entry: dict[str, Any] = {
            "command": command,
            "budgets": row.budgets_per_op,
            "usec_per_call": row.usec_per_call,
            "calls": row.calls,
            "ratio_to_reference": _ratio(row.usec_per_call, ref_us),
            "server_cpu_us_per_call": (row.metrics or {}).get("server_cpu_us_per_call"),
        }
        target = server_cost.TARGETS.get(command)
        if target is not None and row.budgets_per_op == server_cost.TARGET_BUDGETS:
            ratio = entry["ratio_to_reference"]
            entry |= {"target": f"<= {target:g}", "met": None if ratio is None else ratio <= target}
        commands.append(entry)
    debit = find(ours, server_cost.row_name("debit"), size=server_cost.TARGET_BUDGETS)
    memory = {
        "budgetkit": _memory_figures(debit),
        server_cost.REFERENCE: _memory_figures(reference),
        "bytes_per_ledger_entry_target": f"<= {server_cost.LEDGER_ENTRY_BYTES_TARGET:g}",
    }
    return {"reference": server_cost.REFERENCE, "commands": commands, "memory": memory}


def _memory_figures(row: Row | None) -> dict[str, float | None]:
    if row is None:
        return {}
    return {k: v for k, v in (row.metrics or {}).items() if k != "server_cpu_us_per_call"}


def _cpu_model() -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None
    line = next((ln for ln in text.splitlines() if ln.startswith("model name")), None)
    return line.split(":", 1)[1].strip() if line else None


def _memory_gib() -> float | None:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None
    return round(pages * size / 1024**3, 1)


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (other processes share the machine)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


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
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "redis_server": redis_info.get("redis_version"),
        "redis_py": version("redis"),
        "hiredis": version("hiredis"),
        "budgetkit": version("budgetkit"),
        "limits": version("limits"),
        "asyncpg": version("asyncpg"),
    }


def document(
    rows: Sequence[Row], ratios: dict[str, Any], machine: dict[str, Any], command: str
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "rows": [row.as_dict() for row in rows],
        "ratios": ratios,
        "machine": machine,
        "command": command,
    }
    section = server_cost_section(rows)
    if section is not None:
        doc["server_cost"] = section
        by_row = {
            (c["command"], c["budgets"]): c["ratio_to_reference"] for c in section["commands"]
        }
        for row in doc["rows"]:
            if row["name"].startswith(server_cost.ROW_PREFIX):
                key = (row["name"].removeprefix(server_cost.ROW_PREFIX), row["budgets_per_op"])
                row["ratio_to_reference"] = by_row.get(key)
    return doc


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


def _verdict(ratio: dict[str, Any]) -> str:
    if "target" not in ratio:
        return ""
    met = ratio.get("met")
    word = "not measured" if met is None else "met" if met else "MISSED"
    return f" — target {ratio['target']}: **{word}**"


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
        if not row["name"].startswith(server_cost.ROW_PREFIX):
            lines.append("| " + " | ".join(_cell(key, row) for key, _ in COLUMNS) + " |")
    if doc.get("server_cost"):
        lines += _server_cost_markdown(doc["server_cost"])
    lines += ["", "## Ratios", ""]
    for key, ratio in doc["ratios"].items():
        lines.append(f"- **{key}**: {ratio['value']} ({ratio['basis']}){_verdict(ratio)}")
    for title, key, field in (("Skipped", "skipped", "reason"), ("Failed", "failed", "error")):
        if doc.get(key):
            lines += ["", f"## {title}", ""]
            lines += [f"- {item['name']}: {item[field]}" for item in doc[key]]
    lines += ["", "## Machine", ""]
    lines += [f"- {key}: {value}" for key, value in doc["machine"].items()]
    return "\n".join(lines) + "\n"


def _server_cost_markdown(section: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Server cost",
        "",
        "Redis's own time per call (`INFO commandstats` usec / calls, each command in its own "
        "`CONFIG RESETSTAT` window) of each script command as the client sends it, and of the "
        f"lean reference debit `{section['reference']}` (3 HMGET, admission loop, 3 HINCRBY, "
        "1 XADD) in the same run.",
        "",
        "| command | budgets | Redis µs per call | calls | ratio to reference | target |",
        "|---|---|---|---|---|---|",
    ]
    for c in section["commands"]:
        verdict = ""
        if "target" in c:
            met = c["met"]
            word = "not measured" if met is None else "met" if met else "MISSED"
            verdict = f"{c['target']}: **{word}**"
        ratio = "" if c["ratio_to_reference"] is None else f"{c['ratio_to_reference']:.2f}"
        lines.append(
            f"| {c['command']} | {c['budgets']} | {c['usec_per_call']} | {c['calls']} "
            f"| {ratio} | {verdict} |"
        )
    lines.append("")
    for who, figures in section["memory"].items():
        if isinstance(figures, dict):
            shown = ", ".join(f"{k} {v}" for k, v in figures.items())
            lines.append(f"- memory, {who}: {shown or 'not measured'}")
    return lines


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def write_markdown(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(doc), encoding="utf-8")
