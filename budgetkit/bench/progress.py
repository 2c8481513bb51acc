"""Progress lines while the benchmark runs: through rich when it is importable, else print."""

from __future__ import annotations

import importlib
import sys
from typing import Any

from budgetkit.bench.measure import Row


def _rich_console() -> Any:
    try:
        module = importlib.import_module("rich.console")
    except ImportError:
        return None
    return module.Console(file=sys.stdout)


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def row_summary(row: Row) -> str:
    """One line: name, shape, throughput, latency, CPU, overspend, notes."""
    cpu = row.as_dict()
    parts = [
        f"{row.name:<22} b={row.budgets_per_op} c={row.concurrency:<4}",
        f"{_fmt(row.ops_per_s):>10} ops/s",
        f"p50 {_fmt(row.p50_us)} µs  p99 {_fmt(row.p99_us)} µs  p99.9 {_fmt(row.p999_us)} µs",
        f"cpu client {_fmt(cpu['client_cpu_pct'])}% server {_fmt(cpu['server_cpu_pct'])}%",
    ]
    if row.overspend is not None:
        parts.append(f"overspend {row.overspend:g}")
    if row.notes:
        parts.append(f"({row.notes})")
    return "  ".join(parts)


class Progress:
    """Prints what the run is doing; ``plain=True`` forces print()."""

    def __init__(self, plain: bool = False) -> None:
        self._console = None if plain else _rich_console()

    def line(self, text: str, style: str | None = None) -> None:
        if self._console is not None:
            self._console.print(text, style=style, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, flush=True)

    def step(self, text: str) -> None:
        self.line(f"… {text}", style="dim")

    def row(self, row: Row) -> None:
        self.line(f"✓ {row_summary(row)}", style="green")

    def skip(self, name: str, reason: str) -> None:
        self.line(f"- skipped {name}: {reason}", style="yellow")

    def fail(self, name: str, reason: str) -> None:
        self.line(f"✗ {name} failed: {reason}", style="red")
