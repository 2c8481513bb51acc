"""Auto-batching: concurrent script calls of one process share round trips.

Calls made in the same event-loop iteration are queued and sent together as non-transactional
pipelines of FCALLs (a few, BATCH_SIZE_MIN to BATCH_SIZE_MAX calls each, in flight at once, each on
a connection of its own). Each call still runs atomically on its own — in the order the calls
were made within a pipeline; calls of different pipelines were concurrent anyway — and each
caller gets exactly the reply or error it would have got alone: batching changes round trips,
not results. A call made while nothing else is queued or in flight goes straight out (no queue,
no task): a lone worker pays nothing. The wait is zero: nothing is delayed to fill a batch,
batches form from calls that are already concurrent.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis import exceptions as redis_errors

from budgetkit._core.errors import BudgetUnavailable, OutcomeUnknown
from budgetkit._core.runtime import (
    ReplyLost,
    ScriptArg,
    ScriptRuntime,
    connection_failure,
    translate_error,
)
from budgetkit._core.store_errors import passing
from budgetkit._core.urls import RedisClient

#: The calls queued in one loop iteration go out as up to PIPELINES_PER_DISPATCH pipelines of at
#: least BATCH_SIZE_MIN calls (at most BATCH_SIZE_MAX), sent at once: Redis runs the first while
#: the client still encodes the next and decodes the replies of the one before — client and
#: server work overlap. One pipeline of 64 debits alternated (the client encodes 64, then Redis
#: runs 64): 5.4k debits/s of 3 budgets at 64 tasks vs 11.4k in pipelines of 16 (python -m
#: benchmarks --quick --only debit_batched --scope-sizes 3 --concurrency 64,256 --rounds 3;
#: 32: 7.1k, 8: 10.1k). Each pipeline in flight holds a connection of the pool (redis-py's
#: default pool has 100): a burst of thousands of calls still takes a handful of pipelines.
log = logging.getLogger("budgetkit")

BATCH_SIZE_MIN = 16
BATCH_SIZE_MAX = 256
PIPELINES_PER_DISPATCH = 4


@dataclass(slots=True)
class _Call:
    name: str
    keys: Sequence[str]
    args: Sequence[ScriptArg]
    future: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class ScriptBatcher:
    """Coalesces concurrent ``ScriptRuntime.call``s into pipelines."""

    def __init__(
        self,
        client: RedisClient,
        runtime: ScriptRuntime,
        batch_size_max: int = BATCH_SIZE_MAX,
        on_batch: Callable[[int], None] | None = None,
    ):
        self._on_batch = on_batch
        self._client: Any = client
        self._runtime = runtime
        self._batch_size_max = batch_size_max
        self._queue: list[_Call] = []
        self._scheduled = False
        self._in_flight: set[asyncio.Task[None]] = set()
        self._alone = 0  # lone calls in progress on the fast path
        self.batches = 0
        self.batched_calls = 0

    async def call(self, name: str, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        """Same contract as ScriptRuntime.call."""
        if not self._queue and not self._in_flight and not self._alone:
            return await self._call_alone(name, keys, args)  # nothing to coalesce with
        pending = _Call(name, keys, args)
        self._queue.append(pending)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._dispatch)
        return await pending.future

    async def _call_alone(self, name: str, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        self._alone += 1
        try:
            return await self._runtime.call(name, keys, args)
        finally:
            self._alone -= 1

    def _dispatch(self) -> None:
        self._scheduled = False
        queue, self._queue = self._queue, []
        size = -(-len(queue) // PIPELINES_PER_DISPATCH)  # ceil: the pipelines share the calls
        size = min(self._batch_size_max, max(BATCH_SIZE_MIN, size))
        for start in range(0, len(queue), size):
            calls = queue[start : start + size]
            task = asyncio.ensure_future(self._send(calls))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
            task.add_done_callback(functools.partial(_settle_leftovers, calls))

    async def _send(self, calls: list[_Call]) -> None:
        if len(calls) == 1:
            await self._send_alone(calls[0])
            return
        self.batches += 1
        self.batched_calls += len(calls)
        if self._on_batch is not None:
            self._on_batch(len(calls))
        runtime = self._runtime
        try:
            await runtime.refresh_primary()  # Sentinel: leave a demoted primary (runtime)
            await runtime.verify_format()  # once per runtime (budgetkit._core.storeformat)
            # No load up front: a server without the library answers "Function not found" to
            # each call, and the call is sent again alone (the runtime loads the library).
            commands = [runtime.command(c.name, c.keys, c.args) for c in calls]
            durability = runtime.durability
            if durability is not None:  # WAIT after the pipeline (budgetkit._core.durability)
                keys = [c.keys[0] if c.keys else "" for c in calls]
                mutations = [durability.covers(c.name) for c in calls]
                results = await durability.run_batch(self._client, commands, keys, mutations)
            else:
                pipe = self._client.pipeline(transaction=False)
                for command in commands:
                    pipe.execute_command(*command)
                results = await pipe.execute(raise_on_error=False)
        except (redis_errors.ConnectionError, redis_errors.TimeoutError) as error:
            lost = connection_failure("batch", error)
            if isinstance(lost, ReplyLost):
                # Replies lost: each call is sent again alone, at once (its request record
                # makes that safe, budgetkit._core.redelivery).
                await asyncio.gather(*(self._resend_alone(c, lost) for c in calls))
                return
            if isinstance(lost, OutcomeUnknown) or runtime.failover_retry_s <= 0:
                for c in calls:
                    _settle(c, exception=connection_failure(c.name, error))
                return
            # Nothing was sent (Cluster, Sentinel): each call goes alone, following the failover.
            for c in calls:
                await self._send_alone(c)
            return
        except Exception as error:  # e.g. BudgetUnavailable while loading: every caller sees it
            for c in calls:
                _settle(c, exception=translate_error(c.name, error))
            return
        again: list[_Call] = []
        for c, result in zip(calls, results, strict=True):
            if isinstance(result, Exception) and runtime.recoverable(c.name, result):
                again.append(c)  # the runtime loads the library (or answers a check read-only)
            elif isinstance(result, Exception):
                failure = translate_error(c.name, result)
                retry = type(failure) is BudgetUnavailable and passing(failure)
                if retry and runtime.failover_retry_s > 0:
                    again.append(c)  # did not run: retried alone, following the failover
                else:
                    _settle(c, exception=failure)
            else:
                _settle(c, result=result)
        for c in again:  # in the order the calls were made
            await self._send_alone(c)

    async def _resend_alone(self, c: _Call, lost: OutcomeUnknown) -> None:
        """Sends a call of a pipeline whose replies were lost again; when the resend does not
        reach Redis the first send may still have applied: OutcomeUnknown, never unavailable."""
        try:
            _settle(c, result=await self._runtime.call(c.name, c.keys, c.args))
        except OutcomeUnknown as error:
            _settle(c, exception=error)
        except BudgetUnavailable as error:
            unknown = OutcomeUnknown(f"{c.name}: {lost}; sent again: {error}")
            _settle(c, exception=unknown)
        except Exception as error:
            _settle(c, exception=error)

    async def _send_alone(self, c: _Call) -> None:
        try:
            _settle(c, result=await self._runtime.call(c.name, c.keys, c.args))
        except Exception as error:
            _settle(c, exception=error)


def _settle_leftovers(calls: list[_Call], task: asyncio.Task[None]) -> None:
    """A pipeline's task ended: no caller of it waits forever, whatever ended it (a bug, a
    cancellation at shutdown). A call still unanswered may have been sent: OutcomeUnknown."""
    left = [c for c in calls if not c.future.done()]
    if not left:
        return
    error = None if task.cancelled() else task.exception()
    why = "cancelled" if task.cancelled() else repr(error) if error else "no reply settled"
    log.error(
        "budgetkit: a pipeline of %d calls ended with %d unanswered: %s", len(calls), len(left), why
    )
    for c in left:
        _settle(c, exception=OutcomeUnknown(f"{c.name}: its pipeline ended unanswered ({why})"))


def _settle(c: _Call, *, result: Any = None, exception: BaseException | None = None) -> None:
    if c.future.done():  # the caller was cancelled
        return
    if exception is not None:
        c.future.set_exception(exception)
    else:
        c.future.set_result(result)
