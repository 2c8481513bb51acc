"""The report: ratios between rows, the target table, the JSON document, a markdown table.

The ratios compare rows of the same run. Those with a target of issue 14 (and the check
cache's of issue 17) make up the target table (``doc["targets"]``, the markdown's "Targets",
the console's closing lines), each with its verdict and the rounds its rows are the medians of;
where ``+uvloop`` rows ran, each hot-path ratio also has a uvloop variant (uvloop on both
sides) shown beside it.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks import checkcache, server_cost
from benchmarks.loops import SUFFIX as UVLOOP_SUFFIX
from benchmarks.measure import Row

RATIO_CONCURRENCY = 64
RATIO_SCOPE_SIZE = 3
TOP_CONCURRENCY = 256
LOW_CONCURRENCY = 1
#: The scope size of the comparison with the limits package (one counter vs one budget).
LIMITS_SCOPE_SIZE = 1
MIB = 1024 * 1024
#: Targets of issue 14 (the target table); server_cost's own are in benchmarks.server_cost.
DEBIT_NOOP_TARGET = 0.7  # debit@64 / raw_evalsha_noop@64, ops/s: at least
CHECK_P50_TARGET = 1.3  # check p50@1 / raw_evalsha_noop p50@1: at most
BATCHED_NOOP_TARGET = 1.0  # debit_batched@256 / raw_evalsha_noop@256, ops/s: at least
WATCH_TARGET = 100.0  # debit_batched@64 / watch_multi_exec@64: at least
POSTGRES_TARGET = 20.0  # debit_batched@64 / postgres_for_update@64: at least
LIMITS_TARGET = 1.0  # debit_batched@64 of 1 budget / limits_moving_window@64: at least
#: Targets of the check cache (issue 17).
CHECK_CACHED_P50_US_TARGET = 10.0  # check_cached p50@1, µs: at most
CHECK_CACHED_SPEEDUP_TARGET = 10.0  # check p50@1 / check_cached p50@1: at least
CHECK_CACHED_WRITER_TARGET = 5.0  # check_cached+writer@64 / check+writer@64, ops/s: at least
CACHED_WRITER = checkcache.CACHED + checkcache.WRITER_SUFFIX
CHECK_WRITER = "check" + checkcache.WRITER_SUFFIX
#: The hot-path workloads and the concurrency points (RatioPoints fields) their ratios read:
#: these rows also run on uvloop (benchmarks.loops) and get a speedup ratio.
HOT_PATH: dict[str, tuple[str, ...]] = {
    "raw_evalsha_noop": ("low", "high", "top"),
    "check": ("low", "high"),
    "debit": ("high",),
    "debit_batched": ("high", "top"),
}
#: Workloads whose rows have no scope size to choose (a fixed budgets_per_op of their own).
UNSCOPED = ("raw_evalsha_noop", "watch_multi_exec", "limits_moving_window")
UVLOOP_BASIS = "; uvloop event loop on both sides (benchmarks.loops)"
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
    ("rounds", "rounds"),
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


def _pick(values: set[int], wanted: int, fallback_max: bool = True) -> int:
    if wanted in values or not values:
        return wanted
    return max(values) if fallback_max else min(values)


def _ops(row: Row | None) -> float | None:
    return None if row is None else row.ops_per_s


def _p50(row: Row | None) -> float | None:
    return None if row is None else row.p50_us


@dataclass(frozen=True, slots=True)
class RatioPoints:
    """The shapes the ratios read: the scope size (3), the low (1), high (64) and top (256)
    concurrency, and the scope size of the limits comparison (1). Each is the wanted one when
    it was run, else the nearest that was (smallest size; largest concurrency but for low)."""

    size: int
    low: int
    high: int
    top: int
    limits_size: int

    def at(self, point: str) -> int:
        """The concurrency of a point of HOT_PATH: low, high or top."""
        return {"low": self.low, "high": self.high, "top": self.top}[point]


def ratio_points(sizes: Iterable[int], concurrency: Iterable[int]) -> RatioPoints:
    """The points of a run of these scope sizes and concurrency levels (of the rows, or of the
    plan: benchmarks.runner repeats the rows the ratios read)."""
    size_set, conc = set(sizes), set(concurrency)
    return RatioPoints(
        size=_pick(size_set, RATIO_SCOPE_SIZE, fallback_max=False),
        low=_pick(conc, LOW_CONCURRENCY, fallback_max=False),
        high=_pick(conc, RATIO_CONCURRENCY),
        top=_pick(conc, TOP_CONCURRENCY),
        limits_size=_pick(size_set, LIMITS_SCOPE_SIZE, fallback_max=False),
    )


#: A row's shape: (workload, scope size or None for UNSCOPED, concurrency).
Shape = tuple[str, int | None, int]


def _shape(name: str, size: int, concurrency: int) -> Shape:
    return (name, None if name in UNSCOPED else size, concurrency)


def hot_path_shapes(points: RatioPoints) -> list[Shape]:
    """The rows of the hot-path ratios, each of which may also run on uvloop."""
    return [
        _shape(name, points.size, points.at(point)) for name, at in HOT_PATH.items() for point in at
    ]


def target_shapes(points: RatioPoints) -> set[Shape]:
    """Every row the target table reads (the hot path and the same-run baselines); server_cost
    is one job of its own."""
    return set(hot_path_shapes(points)) | {
        (checkcache.CACHED, points.size, points.low),
        (CACHED_WRITER, points.size, points.high),
        (CHECK_WRITER, points.size, points.high),
        ("debit_batched", points.limits_size, points.high),
        ("watch_multi_exec", None, points.high),
        ("postgres_for_update", points.size, points.high),
        ("limits_moving_window", None, points.high),
    }


class Ratios:
    """The ratio block: key -> value, basis, the rounds of its rows and, for the issue's
    targets, the target and verdict; a uvloop variant names the ratio it is a variant of."""

    def __init__(self) -> None:
        self.out: dict[str, dict[str, Any]] = {}

    def put(
        self,
        key: str,
        value: float | None,
        basis: str,
        at_least: float | None = None,
        at_most: float | None = None,
        rows: Sequence[Row | None] = (),
        variant_of: str | None = None,
    ) -> None:
        entry: dict[str, Any] = {"value": value, "basis": basis}
        if at_least is not None:
            entry["target"] = f">= {at_least:g}"
            entry["met"] = None if value is None else value >= at_least
        if at_most is not None:
            entry["target"] = f"<= {at_most:g}"
            entry["met"] = None if value is None else value <= at_most
        if rows and all(row is not None for row in rows):  # the rounds of a measured ratio
            entry["rounds"] = min(row.rounds for row in rows if row is not None)
        if variant_of is not None:
            entry["variant_of"] = variant_of
        self.out[key] = entry


def compute_ratios(rows: Sequence[Row]) -> dict[str, dict[str, Any]]:
    """The headline ratios, at concurrency 64 (1 for latency, 256 at the top) and 3 budgets.

    Any shape that was not run falls back to the nearest that was (RatioPoints); a ratio whose
    rows are missing has the value None (a target: "not measured"). budgetkit's rows are the
    hot mode of one process; spread and multi-process rows get ratios of their own.
    """
    named = ("debit", "debit_batched", "check", checkcache.CACHED, CACHED_WRITER, CHECK_WRITER)
    ours = [r for r in rows if r.name in named]
    points = ratio_points({r.budgets_per_op for r in ours}, {r.concurrency for r in ours})
    ratios = Ratios()
    _hot_path_ratios(ratios, rows, points)
    if any(r.name.endswith(UVLOOP_SUFFIX) for r in rows):
        _hot_path_ratios(ratios, rows, points, UVLOOP_SUFFIX)
        _uvloop_speedups(ratios, rows, points)
    _check_cache_ratios(ratios, rows, points)
    _baseline_ratios(ratios, rows, points)
    _mode_ratios(ratios, rows, points.size, points.high)
    _overspend_ratios(ratios, rows, points.high)
    _server_cost_ratios(ratios, rows)
    return ratios.out


def _hot_path_ratios(ratios: Ratios, rows: Sequence[Row], p: RatioPoints, suffix: str = "") -> None:
    """budgetkit's calls against a bare EVALSHA of ``return 1`` on the same client; with
    ``suffix`` (``+uvloop``) the same ratios of the uvloop rows, as variants."""

    def put(
        template: str, value: float | None, basis: str, rows: list[Row | None], **target: Any
    ) -> None:
        stock = template.format(s="")
        ratios.put(
            template.format(s=suffix),
            value,
            basis + (UVLOOP_BASIS if suffix else ""),
            rows=rows,
            variant_of=stock if suffix else None,
            **target,
        )

    noop = f"raw_evalsha_noop{suffix}"
    debit = find(rows, f"debit{suffix}", p.high, p.size)
    noop_high = find(rows, noop, p.high)
    put(
        f"debit{{s}}@{p.high} / raw_evalsha_noop{{s}}@{p.high}",
        _ratio(_ops(debit), _ops(noop_high)),
        f"ops/s; debit of {p.size} budgets, batching off (one script call per round trip) vs a "
        "bare EVALSHA of `return 1`",
        [debit, noop_high],
        at_least=DEBIT_NOOP_TARGET,
    )
    check, noop_low = find(rows, f"check{suffix}", p.low, p.size), find(rows, noop, p.low)
    put(
        f"check{{s}} p50@{p.low} / raw_evalsha_noop{{s}} p50@{p.low}",
        _ratio(_p50(check), _p50(noop_low)),
        f"p50 latency; check of {p.size} budgets vs a bare EVALSHA",
        [check, noop_low],
        at_most=CHECK_P50_TARGET,
    )
    batched, noop_top = find(rows, f"debit_batched{suffix}", p.top, p.size), find(rows, noop, p.top)
    put(
        f"debit_batched{{s}}@{p.top} / raw_evalsha_noop{{s}}@{p.top}",
        _ratio(_ops(batched), _ops(noop_top)),
        f"ops/s; debit of {p.size} budgets, auto-batching on, vs a bare EVALSHA per task",
        [batched, noop_top],
        at_least=BATCHED_NOOP_TARGET,
    )
    if suffix:
        return
    ceiling = next((r for r in rows if r.name == "server_ceiling_debit"), None)
    ratios.put(
        f"debit_batched@{p.top} / server_ceiling_debit",
        _ratio(_ops(batched), _ops(ceiling)),
        f"ops/s; debit of {p.size} budgets, auto-batching on, vs redis-benchmark driving the same "
        "command (the server's limit)",
        rows=[batched, ceiling],
    )


def _check_cache_ratios(ratios: Ratios, rows: Sequence[Row], p: RatioPoints) -> None:
    """The check cache (issue 17): a cached check's latency, against an uncached one's, and the
    throughput of both while another process writes the scope; the staleness row's figures."""
    cached, check = find(rows, checkcache.CACHED, p.low, p.size), find(rows, "check", p.low, p.size)
    ratios.put(
        f"check_cached p50@{p.low} µs",
        _p50(cached),
        f"p50 latency in µs of check of {p.size} budgets answered by the check cache "
        f"(heartbeat {checkcache.HEARTBEAT_MS} ms)",
        at_most=CHECK_CACHED_P50_US_TARGET,
        rows=[cached],
    )
    ratios.put(
        f"check p50@{p.low} / check_cached p50@{p.low}",
        _ratio(_p50(check), _p50(cached)),
        f"p50 latency; check of {p.size} budgets, one round trip vs answered by the check cache",
        at_least=CHECK_CACHED_SPEEDUP_TARGET,
        rows=[check, cached],
    )
    with_writer = find(rows, CACHED_WRITER, p.high, p.size)
    uncached = find(rows, CHECK_WRITER, p.high, p.size)
    ratios.put(
        f"{CACHED_WRITER}@{p.high} / {CHECK_WRITER}@{p.high}",
        _ratio(_ops(with_writer), _ops(uncached)),
        f"ops/s; check of {p.size} budgets with the check cache vs without, while another "
        f"process debits the scope {checkcache.WRITER_RATE_HZ:g} times a second",
        at_least=CHECK_CACHED_WRITER_TARGET,
        rows=[with_writer, uncached],
    )
    stale = next((r for r in rows if r.name == checkcache.STALENESS), None)
    if stale is not None:
        figures = stale.metrics or {}
        ratios.put(
            "check_cache_staleness p50 µs",
            stale.p50_us,
            f"from another process's acknowledged debit to the first cached check_tool showing "
            f"it (p99 {stale.p99_us} µs; from the debit's send: p50 "
            f"{figures.get('from_send_p50_us')}, p99 {figures.get('from_send_p99_us')} µs; "
            f"lease {figures.get('lease_ms')} ms)",
            rows=[stale],
        )


def _uvloop_speedups(ratios: Ratios, rows: Sequence[Row], p: RatioPoints) -> None:
    """Each hot-path row on uvloop over the same row on the stock asyncio loop (ops/s)."""
    for name, size, concurrency in hot_path_shapes(p):
        stock = find(rows, name, concurrency, size)
        fast = find(rows, name + UVLOOP_SUFFIX, concurrency, size)
        ratios.put(
            f"{name}{UVLOOP_SUFFIX}@{concurrency} / {name}@{concurrency}",
            _ratio(_ops(fast), _ops(stock)),
            "ops/s; the same workload on a uvloop event loop vs the stock asyncio loop",
            rows=[stock, fast],
        )


def _baseline_ratios(ratios: Ratios, rows: Sequence[Row], p: RatioPoints) -> None:
    high, size = p.high, p.size
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
    for name in ("debit_batched", "debit"):
        ours = find(rows, name, high, size)
        batching = "auto-batching on" if name == "debit_batched" else "batching off"
        for row, baseline, versus, target in baselines:
            ratios.put(
                f"{name}@{high} / {baseline}@{high}",
                _ratio(_ops(ours), _ops(row)),
                f"ops/s on one hot scope; debit of {size} budgets ({batching}) vs {versus}",
                at_least=target if name == "debit_batched" else None,
                rows=[ours, row],
            )
    limits = find(rows, "limits_moving_window", high)
    one = find(rows, "debit_batched", high, p.limits_size)
    budgets = f"{p.limits_size} budget" + ("" if p.limits_size == 1 else "s")
    ratios.put(
        f"debit_batched@{high} b={p.limits_size} / limits_moving_window@{high}",
        _ratio(_ops(one), _ops(limits)),
        f"ops/s; debit of {budgets} (auto-batching on) vs one moving-window hit of the limits "
        "package on the same Redis",
        at_least=LIMITS_TARGET,
        rows=[one, limits],
    )


def _mode_ratios(ratios: Ratios, rows: Sequence[Row], size: int, high: int) -> None:
    hot_row = find(rows, "debit_batched", high, size)
    hot = _ops(hot_row)
    spread = find(rows, "debit_batched", high, size, mode="spread")
    if spread is not None:
        ratios.put(
            f"debit_batched spread@{high} / debit_batched hot@{high}",
            _ratio(spread.ops_per_s, hot),
            "ops/s; one organization per task vs every task on one scope",
            rows=[spread, hot_row],
        )
    multi = [r for r in rows if r.name == "debit_batched" and r.processes > 1]
    at = find(multi, "debit_batched", high, size, processes=multi[0].processes) if multi else None
    if at is not None:
        ratios.put(
            f"debit_batched x{at.processes} processes@{high} / debit_batched@{high}",
            _ratio(at.ops_per_s, hot),
            f"ops/s; {at.processes} client processes sharing the hot scope vs one process",
            rows=[at, hot_row],
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
        _server_cost_unmeasured(ratios)
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
            rows=[row, reference],
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
        rows=[debit],
    )
    ratios.put(
        "server_cost bytes per budget",
        figures.get("bytes_per_budget"),
        "MEMORY USAGE of a budget's hash, mean of the 3 of the debited scope",
        rows=[debit],
    )


def _server_cost_unmeasured(ratios: Ratios) -> None:
    """server_cost's targets when it did not run: in the target table, not measured."""
    size = server_cost.TARGET_BUDGETS
    for command, target in server_cost.TARGETS.items():
        ratios.put(
            f"server_cost {command} b={size} / {server_cost.REFERENCE}",
            None,
            "Redis usec_per_call (INFO commandstats); server_cost did not run",
            at_most=target,
        )
    ratios.put(
        "server_cost bytes per ledger entry",
        None,
        "MEMORY USAGE of the ledger streams over their entries; server_cost did not run",
        at_most=server_cost.LEDGER_ENTRY_BYTES_TARGET,
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


def target_table(ratios: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every ratio with a target, in the order of the ratio block, with its uvloop variant
    beside it where one ran, and how many are met, missed and not measured."""
    variants = {r["variant_of"]: (key, r) for key, r in ratios.items() if "variant_of" in r}
    table = []
    for key, ratio in ratios.items():
        if "target" not in ratio or "variant_of" in ratio:
            continue
        line = {k: ratio.get(k) for k in ("target", "value", "met", "rounds")}
        line = {"ratio": key, **line}
        if key in variants:
            variant_key, variant = variants[key]
            line["uvloop"] = {"ratio": variant_key} | {
                k: variant.get(k) for k in ("value", "met", "rounds")
            }
        table.append(line)
    verdicts = [line["met"] for line in table]
    return {
        "met": verdicts.count(True),
        "missed": verdicts.count(False),
        "not_measured": verdicts.count(None),
        "table": table,
    }


def verdict_word(met: bool | None) -> str:
    return "not measured" if met is None else "met" if met else "MISSED"


def _rounds_text(rounds: int | None) -> str:
    return "" if rounds is None else f"{rounds} round" + ("" if rounds == 1 else "s")


def target_lines(targets: dict[str, Any]) -> list[str]:
    """The target table as console lines: a summary, then one line per target."""
    lines = [
        f"targets: {targets['met']} met, {targets['missed']} missed, "
        f"{targets['not_measured']} not measured"
    ]
    for t in targets["table"]:
        line = f"  {t['ratio']} = {t['value']}  target {t['target']}: {verdict_word(t['met'])}"
        variant = t.get("uvloop")
        if variant is not None:
            line += f"  | uvloop: {variant['value']} {verdict_word(variant['met'])}"
        rounds = _rounds_text(t["rounds"])
        lines.append(f"{line}  ({rounds})" if rounds else line)
    return lines


def document(
    rows: Sequence[Row], ratios: dict[str, Any], machine: dict[str, Any], command: str
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "rows": [row.as_dict() for row in rows],
        "ratios": ratios,
        "targets": target_table(ratios),
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
    return f" — target {ratio['target']}: **{verdict_word(ratio.get('met'))}**"


def _targets_markdown(targets: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Targets",
        "",
        f"{targets['met']} met, {targets['missed']} missed, {targets['not_measured']} not "
        "measured. Ratios of rows of this run (each row the median of its rounds); "
        "*with uvloop*: the same ratio of the `+uvloop` rows.",
        "",
        "| ratio | target | value | verdict | rounds | with uvloop |",
        "|---|---|---|---|---|---|",
    ]
    for t in targets["table"]:
        variant = t.get("uvloop")
        uvloop = "" if variant is None else f"{variant['value']} ({verdict_word(variant['met'])})"
        lines.append(
            f"| {t['ratio']} | {t['target']} | {t['value']} | **{verdict_word(t['met'])}** "
            f"| {t['rounds'] or ''} | {uvloop} |"
        )
    return lines


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
    if doc.get("targets"):
        lines += _targets_markdown(doc["targets"])
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
            verdict = f"{c['target']}: **{verdict_word(c['met'])}**"
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
