"""``budgetkit bench`` / ``python -m benchmarks``: options, the Redis to use, the outputs."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from budgetkit.bench.context import Settings
from budgetkit.bench.launcher import LauncherError, LocalRedis
from budgetkit.bench.progress import Progress
from budgetkit.bench.report import matplotlib_pyplot, write_json, write_markdown, write_png
from budgetkit.bench.runner import WORKLOADS, Plan, run
from budgetkit.bench.workloads import LEVEL_ORDER

DEFAULT_DURATION_S = 5.0
DEFAULT_WARMUP_S = 1.0
QUICK_DURATION_S = 0.4
QUICK_WARMUP_S = 0.15
CEILING_REQUESTS_PER_S = 40_000
CEILING_REQUESTS_MIN = 5_000
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
SCOPE_SIZE_MAX = len(LEVEL_ORDER)


def _ints(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers: {text!r}") from error
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers: {text!r}")
    return values


def _scope_sizes(text: str) -> list[int]:
    sizes = _ints(text)
    if max(sizes) > SCOPE_SIZE_MAX:
        raise argparse.ArgumentTypeError(f"scope sizes are 1..{SCOPE_SIZE_MAX}: {text!r}")
    return sizes


def _names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(names) - set(WORKLOADS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown workloads {unknown}; known: {list(WORKLOADS)}")
    return names


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="budgetkit bench", description=__doc__)
    add = p.add_argument
    add("--redis-url", help="use this Redis instead of starting a private redis-server")
    add("--quick", action="store_true", help="short runs: the whole benchmark in under 60 s")
    add("--duration", type=float, help=f"measured seconds per workload ({DEFAULT_DURATION_S})")
    add("--warmup", type=float, help=f"unmeasured seconds before each ({DEFAULT_WARMUP_S})")
    add("--concurrency", type=_ints, default=[1, 8, 64, 256], help="tasks, e.g. 1,8,64,256")
    add("--scope-sizes", type=_scope_sizes, default=[1, 3, 6], help="budgets per operation (1..6)")
    add("--spread", action="store_true", help="one organization per task (default: one hot)")
    add("--no-batching", action="store_true", help="BudgetKit(batching=False)")
    add("--only", type=_names, help="comma-separated workloads to run (default: all)")
    add("--ceiling-requests", type=int, help="requests for redis-benchmark (from --duration)")
    add("--json", type=Path, help="write the results as JSON here")
    add("--md", type=Path, help="markdown table (default: next to --json, .md)")
    add("--png", type=Path, help="bar chart (default: next to --json, .png; needs matplotlib)")
    add("--no-png", action="store_true", help="do not draw the chart")
    add("--plain", action="store_true", help="plain progress lines (no rich)")
    return p


def plan_of(a: argparse.Namespace) -> Plan:
    duration = a.duration or (QUICK_DURATION_S if a.quick else DEFAULT_DURATION_S)
    warmup = a.warmup if a.warmup is not None else QUICK_WARMUP_S if a.quick else DEFAULT_WARMUP_S
    requests = a.ceiling_requests or max(
        CEILING_REQUESTS_MIN, int(duration * CEILING_REQUESTS_PER_S)
    )
    return Plan(
        settings=Settings(
            warmup_s=warmup, duration_s=duration, spread=a.spread, batching=not a.no_batching
        ),
        concurrency=a.concurrency,
        scope_sizes=a.scope_sizes,
        workloads=list(a.only or WORKLOADS),
        ceiling_requests=requests,
    )


def _run(a: argparse.Namespace, plan: Plan, progress: Progress, command: str) -> dict[str, Any]:
    if a.redis_url:
        progress.step(f"using {a.redis_url}")
        return asyncio.run(run(a.redis_url, plan, progress, command))
    with LocalRedis() as server:
        progress.step(f"started a private redis-server on {server.url}")
        return asyncio.run(run(server.url, plan, progress, command))


def _write(a: argparse.Namespace, doc: dict[str, Any], progress: Progress) -> None:
    json_path: Path | None = a.json
    md_path = a.md or (json_path.with_suffix(".md") if json_path else None)
    png_path = a.png or (json_path.with_suffix(".png") if json_path else None)
    if json_path:
        write_json(doc, json_path)
        progress.line(f"wrote {json_path}")
    if md_path:
        write_markdown(doc, md_path)
        progress.line(f"wrote {md_path}")
    if png_path and not a.no_png:
        pyplot = matplotlib_pyplot()
        if pyplot is None:
            progress.line(
                "chart skipped: matplotlib is not installed (pip install budgetkit[bench])"
            )
        else:
            write_png(doc, png_path, pyplot)
            progress.line(f"wrote {png_path}")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark; 0 when every workload that was not skipped produced its rows."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "--":  # `budgetkit bench -- ARGS` passes the separator through
        args = args[1:]
    a = parser().parse_args(args)
    command = shlex.join(["budgetkit", "bench", *args])
    progress = Progress(plain=a.plain)
    started = time.perf_counter()
    try:
        doc = _run(a, plan_of(a), progress, command)
    except LauncherError as error:
        progress.fail("bench", str(error))
        return EXIT_USAGE
    doc["machine"]["total_s"] = round(time.perf_counter() - started, 1)
    progress.line("ratios:", style="bold")
    for key, ratio in doc["ratios"].items():
        progress.line(f"  {key} = {ratio['value']}  ({ratio['basis']})")
    _write(a, doc, progress)
    progress.line(f"done in {doc['machine']['total_s']} s, {len(doc['rows'])} rows")
    if doc["failed"]:
        progress.line(f"{len(doc['failed'])} workload runs failed", style="red")
    return EXIT_OK if doc["rows"] and not doc["failed"] else EXIT_FAILED
