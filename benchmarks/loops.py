"""The ``+uvloop`` rows: the hot workloads again on a uvloop event loop, in the same run.

An event loop is chosen per ``asyncio.Runner`` (``asyncio.run``), so the uvloop rows run in a
runner of their own, with ``loop_factory=uvloop.new_event_loop``, on a thread of its own
(``UvloopThread``). The run's stock asyncio loop hands each such job to that thread and waits for
it, idle (blocked in its selector, not holding the GIL), so a uvloop row takes its turn among the
other rows of every round, against the same Redis, under the same key prefix, and its ratios
are ratios of one run. The thread's jobs get a twin of the run's BenchContext with an admin
connection of their own (a redis-py asyncio connection belongs to the loop that opened it).

Rows are named ``<workload>+uvloop`` (``debit+uvloop``). uvloop is optional (the ``uvloop``
extra; it has no Windows build): without it these rows are reported as skipped, not failed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import importlib.util
import sys
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from typing import Any, TypeVar

from redis.asyncio import Redis

from benchmarks.context import BenchContext
from benchmarks.measure import Row

SUFFIX = "+uvloop"
#: The workloads with uvloop rows by default: the hot path of the ratios.
WORKLOADS = ("raw_evalsha_noop", "check", "debit", "debit_batched")

T = TypeVar("T")


def skip_reason() -> str | None:
    """Why there are no uvloop rows here, or None."""
    if sys.platform == "win32":
        return "uvloop has no Windows build"
    if importlib.util.find_spec("uvloop") is None:
        return "uvloop is not installed (pip install 'budgetkit[uvloop]')"
    return None


def variant_name(name: str) -> str:
    """The row name of ``name`` run on uvloop."""
    return name + SUFFIX


def version() -> str:
    try:
        return metadata.version("uvloop")
    except metadata.PackageNotFoundError:
        return "?"


def as_variant(row: Row) -> Row:
    """The row of a job run on the uvloop thread, renamed and noted as such."""
    note = f"uvloop {version()}"
    return dataclasses.replace(
        row, name=variant_name(row.name), notes=f"{note}; {row.notes}" if row.notes else note
    )


class UvloopThread:
    """A uvloop event loop on a thread of its own, started on first use; ``run(job)`` runs
    ``job(twin)`` there and returns its result to the calling (stock) loop."""

    def __init__(self, ctx: BenchContext) -> None:
        self._ctx = ctx
        self._executor: ThreadPoolExecutor | None = None
        self._runner: asyncio.Runner | None = None
        self._twin: BenchContext | None = None

    async def run(self, job: Callable[[BenchContext], Awaitable[T]]) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-uvloop")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run_here, job)

    def _run_here(self, job: Callable[[BenchContext], Awaitable[T]]) -> T:
        """On the thread: the job, in the uvloop runner (made on the first job)."""
        if self._runner is None:
            uvloop: Any = importlib.import_module("uvloop")
            self._runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        return self._runner.run(self._on_twin(job))

    async def _on_twin(self, job: Callable[[BenchContext], Awaitable[T]]) -> T:
        if self._twin is None:
            admin = Redis.from_url(self._ctx.url, decode_responses=True)
            self._twin = dataclasses.replace(self._ctx, admin=admin)
        return await job(self._twin)

    async def aclose(self) -> None:
        """Closes the twin's connection and the loop, and ends the thread (after the job it
        may still be running: a cancelled ``run`` does not stop the thread's job)."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_here)
        finally:
            executor.shutdown(wait=True)

    def _close_here(self) -> None:
        runner, self._runner = self._runner, None
        twin, self._twin = self._twin, None
        if runner is None:
            return
        try:
            if twin is not None:
                runner.run(twin.admin.aclose())
        finally:
            runner.close()
