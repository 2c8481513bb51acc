"""Benchmarks of budgetkit against baselines on the same Redis (DESIGN.md § Benchmarks).

``main(argv)`` is ``python -m benchmarks`` and ``budgetkit bench`` (the CLI imports this package
lazily: it runs from a checkout of the repository, and is not part of the wheel). Modules:
``measure`` (timed runs, rows), ``workloads`` (budgetkit's operations), ``baselines`` and
``ceiling`` and ``extras`` and ``gate`` and ``postgres`` (the alternatives), ``server_cost``
(Redis's own time per script command, next to a lean reference script), ``multiproc`` (rows
of several processes), ``loops`` (the ``+uvloop`` rows, on a uvloop event loop), ``runner`` (the
order of a run), ``report`` and ``chart`` (ratios, the target table, JSON, markdown, PNG),
``progress`` (console lines), ``growth`` (the cost-growth mode), ``cli`` (options). The private
servers come from the repository's one launcher, scripts/redis_server.py.
"""

import sys
from pathlib import Path

#: scripts/ holds the launcher shared with the tests and the scripts (``import redis_server``).
SCRIPTS_DIR = Path(__file__).resolve().parent.parent / "scripts"
if str(SCRIPTS_DIR) not in sys.path:
    sys.path.append(str(SCRIPTS_DIR))

from benchmarks.cli import main  # noqa: E402  (needs the launcher on sys.path)

__all__ = ["main"]
