"""What the run is doing, while it runs: a rich live progress bar, or plain lines.

With rich importable (the ``bench`` extra) and without ``--plain``, a live bar shows the job
being run, how many are done and the time left; every result row, skip and failure is printed
above it as it comes. Otherwise each of those is one ``print``ed line.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from benchmarks.measure import Row


def _rich() -> tuple[Any, Any] | None:
    try:
        console = importlib.import_module("rich.console")
        progress = importlib.import_module("rich.progress")
    except ImportError:
        return None
    return console, progress


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def row_summary(row: Row) -> str:
    """One line: name, shape, throughput, latency, CPU, overspend, notes."""
    cpu = row.as_dict()
    procs = f" x{row.processes}p" if row.processes > 1 else ""
    parts = [
        f"{row.name + procs:<22} b={row.budgets_per_op} c={row.concurrency:<4} {row.mode:<6}",
        f"{_fmt(row.ops_per_s):>10} ops/s",
        (
            f"p50 {_fmt(row.p50_us)} µs  p99 {_fmt(row.p99_us)} µs  p99.9 {_fmt(row.p999_us)} µs"
            if row.usec_per_call is None
            else f"Redis {row.usec_per_call:.2f} µs per call (commandstats, {row.calls} calls)"
        ),
        f"cpu client {_fmt(cpu['client_cpu_pct'])}% server {_fmt(cpu['server_cpu_pct'])}%",
    ]
    if row.overspend is not None:
        parts.append(f"overspend {row.overspend:g}")
    if row.notes:
        parts.append(f"({row.notes})")
    return "  ".join(parts)


class Progress:
    """Prints what the run is doing; ``plain=True`` forces print(). Use as a context manager."""

    def __init__(self, plain: bool = False) -> None:
        modules = None if plain else _rich()
        self._console: Any = None
        self._bar: Any = None
        self._task: Any = None
        if modules is not None:
            console_mod, progress_mod = modules
            self._console = console_mod.Console(file=sys.stdout)
            self._bar = progress_mod.Progress(
                progress_mod.SpinnerColumn(),
                progress_mod.TextColumn("{task.description}"),
                progress_mod.BarColumn(),
                progress_mod.MofNCompleteColumn(),
                progress_mod.TimeElapsedColumn(),
                progress_mod.TextColumn("left"),
                progress_mod.TimeRemainingColumn(),
                console=self._console,
                transient=True,
            )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self, total: int) -> None:
        """Shows the bar for ``total`` jobs (rich only)."""
        if self._bar is not None and self._task is None:
            self._bar.start()
            self._task = self._bar.add_task("starting", total=total)

    def advance(self) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task)

    def stop(self) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.stop()
            self._task = None

    def line(self, text: str, style: str | None = None) -> None:
        if self._console is not None:
            self._console.print(text, style=style, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, flush=True)

    def step(self, text: str) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, description=text)
        else:
            self.line(f"… {text}", style="dim")

    def row(self, row: Row, elapsed_s: float | None = None) -> None:
        took = "" if elapsed_s is None else f" [{elapsed_s:.1f} s]"
        self.line(f"✓ {row_summary(row)}{took}", style="green")

    def skip(self, name: str, reason: str) -> None:
        self.line(f"- skipped {name}: {reason}", style="yellow")

    def fail(self, name: str, reason: str) -> None:
        self.line(f"✗ {name} failed: {reason}", style="red")
