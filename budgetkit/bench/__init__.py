"""Benchmarks of budgetkit against baselines on the same Redis (DESIGN.md § Benchmarks).

``main(argv)`` is ``budgetkit bench`` and ``python -m benchmarks``. Modules: ``launcher`` (a
private redis-server), ``measure`` (timed runs, rows), ``workloads`` (budgetkit's operations),
``baselines`` and ``ceiling`` and ``extras`` (the alternatives), ``runner`` (the order of a run),
``report`` (ratios, JSON, markdown, chart), ``progress`` (console lines), ``cli`` (options).
"""

from budgetkit.bench.cli import main

__all__ = ["main"]
