"""The exact command a BudgetKit call sends, recorded instead of sent.

BudgetKit runs on a stand-in for the redis-py client that answers ``SCRIPT LOAD`` with the
script's SHA1 and records the first script command (``evalsha`` or ``execute_command``) instead
of sending it. Harness code that drives
a script directly (redis-benchmark, bulk fills) starts from such a command, so it follows the
script's keys and arguments whatever they become.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any, cast

from redis.asyncio import Redis

from benchmarks.measure import BenchError
from budgetkit._core.client import BudgetKit
from budgetkit._core.runtime import ScriptArg


class _Captured(Exception):
    """Raised by the recording client instead of sending a command to Redis."""


class _RecordingClient:
    def __init__(self) -> None:
        self.sent: list[list[str]] = []

    async def script_load(self, source: str) -> str:
        return hashlib.sha1(source.encode("utf-8"), usedforsecurity=False).hexdigest()

    async def execute_command(self, *command: ScriptArg) -> Any:
        self.sent.append([a.decode() if isinstance(a, bytes) else str(a) for a in command])
        raise _Captured

    async def evalsha(self, *args: ScriptArg) -> Any:
        return await self.execute_command("EVALSHA", *args)


async def recorded_command(prefix: str, call: Callable[[BudgetKit], Awaitable[Any]]) -> list[str]:
    """The command (``["EVALSHA", sha, numkeys, *keys, *args]``) of the one script call
    ``call(kit)`` makes."""
    recorder = _RecordingClient()
    kit = BudgetKit(cast(Redis, recorder), prefix=prefix, batching=False)
    with contextlib.suppress(_Captured):
        await call(kit)
    if len(recorder.sent) != 1:
        raise BenchError(f"the call sent {len(recorder.sent)} script commands, expected 1")
    command = recorder.sent[0]
    if command[0].upper() != "EVALSHA":
        raise BenchError(f"expected an EVALSHA, the call sent {command[0]}")
    return command
