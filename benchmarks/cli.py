"""``budgetkit bench`` / ``python -m benchmarks``: options, the servers to use, the outputs.

``budgetkit bench [OPTIONS]`` runs the workloads and baselines; ``budgetkit bench growth
[OPTIONS]`` measures how throughput and memory grow with what Redis stores (see
``benchmarks.growth``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from redis_server import RedisServer, RedisServerError

from benchmarks import growth, loops, postgres
from benchmarks.chart import matplotlib_pyplot, write_png
from benchmarks.context import Settings
from benchmarks.measure import BenchError
from benchmarks.progress import Progress
from benchmarks.report import load_average, target_lines, write_json, write_markdown
from benchmarks.runner import EXTRA_DEFAULT, SCOPED, WORKLOADS, Plan, Postgres, run
from benchmarks.workloads import LEVEL_ORDER

DEFAULT_DURATION_S = 1.2
DEFAULT_WARMUP_S = 0.5
DEFAULT_ROUNDS = 3
QUICK_DURATION_S = 0.3
QUICK_WARMUP_S = 0.1
QUICK_CONCURRENCY = [1, 8, 64, 256]
CEILING_REQUESTS_PER_S = 40_000
CEILING_REQUESTS_MIN = 5_000
SERVER_COST_REQUESTS = 10_000
SERVER_COST_QUICK_REQUESTS = 5_000
DEFAULT_PROCESSES = 2
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


def _names(text: str, known: Sequence[str] = WORKLOADS) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if names == ["none"]:
        return []
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown workloads {unknown}; known: {list(known)}")
    return names


def _scoped_names(text: str) -> list[str]:
    return _names(text, SCOPED)


def _uvloop_names(text: str) -> list[str]:
    return _names(text, loops.WORKLOADS)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="budgetkit bench",
        description="Benchmarks budgetkit against baselines on the same Redis. "
        "`budgetkit bench growth --help`: the cost-growth mode.",
    )
    add = p.add_argument
    add("--redis-url", help="use this Redis instead of starting a private server")
    add("--postgres-url", help="use this PostgreSQL instead of starting a private cluster")
    add(
        "--install-postgres",
        action="store_true",
        help="as root, apt-get install postgresql when its binaries are missing",
    )
    add("--quick", action="store_true", help="short runs: the whole benchmark in under 60 s")
    add(
        "--duration",
        type=float,
        help=f"measured seconds per workload and round ({DEFAULT_DURATION_S})",
    )
    add("--warmup", type=float, help=f"unmeasured seconds before each ({DEFAULT_WARMUP_S})")
    add(
        "--rounds",
        type=int,
        help=f"run everything this many times, report medians ({DEFAULT_ROUNDS}); with --quick "
        "(default 1) the rounds after the first repeat only the rows of the target table",
    )
    add("--concurrency", type=_ints, default=[1, 8, 64, 256], help="tasks, e.g. 1,8,64,256")
    add("--scope-sizes", type=_scope_sizes, default=[1, 3, 6], help="budgets per operation (1..6)")
    add("--spread", action="store_true", help="every row in spread mode (one org per task)")
    add(
        "--spread-workloads",
        type=_scoped_names,
        default=list(EXTRA_DEFAULT),
        help="extra spread-mode rows of these, in a hot run (default debit,debit_batched; none)",
    )
    add(
        "--processes",
        type=int,
        default=DEFAULT_PROCESSES,
        help=f"worker processes of the multi-process rows ({DEFAULT_PROCESSES}; 1 = none)",
    )
    add(
        "--mp-workloads",
        type=_scoped_names,
        default=list(EXTRA_DEFAULT),
        help="workloads with multi-process rows (default debit,debit_batched; none)",
    )
    add(
        "--uvloop-workloads",
        type=_uvloop_names,
        default=list(loops.WORKLOADS),
        help="workloads with +uvloop rows, on a uvloop event loop (default "
        f"{','.join(loops.WORKLOADS)}; none; skipped when uvloop is not installed)",
    )
    add("--no-batching", action="store_true", help="check and reserve_commit without batching")
    add("--only", type=_names, help="comma-separated workloads to run (default: all)")
    add("--ceiling-requests", type=int, help="requests for redis-benchmark (from --duration)")
    add(
        "--server-cost-requests",
        type=int,
        help=f"requests per command of server_cost ({SERVER_COST_REQUESTS:,}; "
        f"quick: {SERVER_COST_QUICK_REQUESTS:,})",
    )
    _add_outputs(p)
    return p


def _add_outputs(p: argparse.ArgumentParser) -> None:
    add = p.add_argument
    add("--json", type=Path, help="write the results as JSON here")
    add("--md", type=Path, help="markdown table (default: next to --json, .md)")
    add("--png", type=Path, help="chart (default: next to --json, .png; needs matplotlib)")
    add("--no-png", action="store_true", help="do not draw the chart")
    add("--plain", action="store_true", help="plain progress lines (no rich)")


def plan_of(a: argparse.Namespace) -> Plan:
    duration = a.duration or (QUICK_DURATION_S if a.quick else DEFAULT_DURATION_S)
    warmup = a.warmup if a.warmup is not None else QUICK_WARMUP_S if a.quick else DEFAULT_WARMUP_S
    requests = a.ceiling_requests or max(
        CEILING_REQUESTS_MIN, int(duration * CEILING_REQUESTS_PER_S)
    )
    server_cost_requests = SERVER_COST_QUICK_REQUESTS if a.quick else SERVER_COST_REQUESTS
    return Plan(
        settings=Settings(
            warmup_s=warmup, duration_s=duration, spread=a.spread, batching=not a.no_batching
        ),
        concurrency=a.concurrency,
        scope_sizes=a.scope_sizes,
        workloads=list(a.only or WORKLOADS),
        ceiling_requests=requests,
        spread_workloads=a.spread_workloads,
        processes=max(1, a.processes),
        mp_workloads=a.mp_workloads,
        quick=a.quick,
        rounds=max(1, a.rounds or (1 if a.quick else DEFAULT_ROUNDS)),
        server_cost_requests=max(1, a.server_cost_requests or server_cost_requests),
        uvloop_workloads=a.uvloop_workloads,
    )


def _postgres(
    a: argparse.Namespace, plan: Plan, stack: contextlib.ExitStack, progress: Progress
) -> Postgres:
    """The PostgreSQL of the run: given, started here, or the reason it is skipped."""
    if "postgres_for_update" not in plan.workloads:
        return Postgres()
    reason = postgres.driver_skip_reason()
    if reason is not None:
        return Postgres(skip=reason)
    if a.postgres_url:
        progress.step(f"using PostgreSQL at {a.postgres_url}")
        return Postgres(url=a.postgres_url, skip=None)
    if postgres.server_skip_reason() is not None and a.install_postgres:
        progress.line(postgres.install_postgres())
    reason = postgres.server_skip_reason()
    if reason is not None:
        return Postgres(skip=reason)
    try:
        server = stack.enter_context(postgres.LocalPostgres())
    except (BenchError, OSError, TimeoutError) as error:
        return Postgres(skip=f"could not start a private PostgreSQL: {error}")
    progress.step(f"started a private PostgreSQL on 127.0.0.1:{server.port}")
    return Postgres(url=server.url, cpu=server.cpu_s, skip=None)


def _run(a: argparse.Namespace, plan: Plan, progress: Progress, command: str) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        if a.redis_url:
            url = a.redis_url
            progress.step(f"using {url}")
        else:
            server = stack.enter_context(RedisServer())
            url = server.url
            progress.step(f"started a private {Path(server.binary()).name} on {url}")
        pg = _postgres(a, plan, stack, progress)
        return asyncio.run(run(url, plan, progress, command, pg))


def write_outputs(a: argparse.Namespace, doc: dict[str, Any], progress: Progress) -> None:
    json_path: Path | None = a.json
    md_path = a.md or (json_path.with_suffix(".md") if json_path else None)
    png_path = a.png or (json_path.with_suffix(".png") if json_path else None)
    if json_path:
        write_json(doc, json_path)
        progress.line(f"wrote {json_path}")
    if md_path:
        write_markdown(doc, md_path)
        progress.line(f"wrote {md_path}")
    if png_path and not a.no_png and "rows" in doc:
        pyplot = matplotlib_pyplot()
        if pyplot is None:
            progress.line(
                "chart skipped: matplotlib is not installed (pip install budgetkit[bench])"
            )
        else:
            write_png(doc, png_path, pyplot)
            progress.line(f"wrote {png_path}")


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While the run lasts, SIGTERM acts like Ctrl-C: the run unwinds and the servers it started
    are stopped (the default SIGTERM would leave them running)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _print_ratios(doc: dict[str, Any], progress: Progress) -> None:
    """The ratios without a target (and not a uvloop variant), then the target table."""
    progress.line("ratios:", style="bold")
    for key, ratio in doc["ratios"].items():
        if "target" not in ratio and "variant_of" not in ratio:
            progress.line(f"  {key} = {ratio['value']}  ({ratio['basis']})")
    head, *lines = target_lines(doc["targets"])
    progress.line(head, style="bold")
    for line in lines:
        progress.line(line)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark; 0 when every workload that was not skipped produced its rows."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "--":  # `budgetkit bench -- ARGS` passes the separator through
        args = args[1:]
    if args[:1] == ["growth"]:
        with terminate_as_interrupt():
            return growth.main(args[1:])
    a = parser().parse_args(args)
    command = shlex.join(["budgetkit", "bench", *args])
    load_start = load_average()
    started = time.perf_counter()
    with Progress(plain=a.plain) as progress:
        try:
            with terminate_as_interrupt():
                doc = _run(a, plan_of(a), progress, command)
        except RedisServerError as error:
            progress.fail("bench", str(error))
            return EXIT_USAGE
        doc["machine"] |= {
            "total_s": round(time.perf_counter() - started, 1),
            "load_average_start": load_start,
            "load_average_end": load_average(),
        }
        _print_ratios(doc, progress)
        write_outputs(a, doc, progress)
        progress.line(f"done in {doc['machine']['total_s']} s, {len(doc['rows'])} rows")
        if doc["failed"]:
            progress.line(f"{len(doc['failed'])} workload runs failed", style="red")
    return EXIT_OK if doc["rows"] and not doc["failed"] else EXIT_FAILED
