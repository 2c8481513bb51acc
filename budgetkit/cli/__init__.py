"""The `budgetkit` command line: a thin layer over the public API (the ``cli`` extra).

This package owns the console script ``budgetkit`` (``python -m budgetkit.cli``) and nothing
the library needs; the library never imports it, nor its dependencies ``rich`` and
``fakeredis`` (``pip install 'budgetkit[cli]'``). Without them ``main`` says so in one line and
exits 2.

- ``parser``: the argparse tree: commands, options, help, exit codes;
- ``commands``: one short function per command over the public API; ``run`` dispatches;
- ``errors``: a failure as one line on stderr, what happened then what to do (exit 2);
- ``output``: the result on stdout: one JSON document (``--json``) or rich tables;
- ``completion``: bash, zsh and fish completion scripts generated from the parser;
- ``demo``: the ``budgetkit demo`` fleet (an in-process fakeredis without a Redis URL).

``budgetkit bench`` runs the repository's benchmark harness (``python -m benchmarks``) when it
is importable; it does not ship in the wheel.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

from budgetkit.cli.parser import EXIT_USAGE, build_parser

__all__ = ["build_parser", "main"]

#: What the CLI needs beyond the library: the ``cli`` extra of pyproject.toml.
CLI_EXTRA_MODULES = ("rich", "fakeredis")
MISSING_EXTRA = "budgetkit's CLI needs its extra: pip install 'budgetkit[cli]'"


def _missing_extra() -> bool:
    return any(importlib.util.find_spec(name) is None for name in CLI_EXTRA_MODULES)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `budgetkit ARGS` (``argv``; default: the process's arguments); returns the exit
    code: 0 ok, 1 a check that says pause or stop (and the like), 2 usage or connection error."""
    if _missing_extra():
        print(MISSING_EXTRA, file=sys.stderr)
        return EXIT_USAGE
    # Imported only once the extra is known to be there: the commands print with rich.
    from budgetkit.cli.commands import run

    return run(argv)
