"""The exact command a BudgetKit call sends, recorded instead of sent.

BudgetKit runs on a stand-in for the redis-py client that answers ``SCRIPT LOAD`` with the
script's SHA1 (and ``FUNCTION LOAD`` with the library's name, and the ``GET`` of the
stored-format key sent before the first call with "not recorded") and records the first script
command (``EVALSHA``, or ``FCALL`` / ``FCALL_RO`` of a Redis Functions library) instead of
sending it. Harness code that drives
a script directly (redis-benchmark, bulk fills) starts from such a command, so it follows the
script's keys and arguments whatever they become.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Awaitable, Callable
from typing import Any, cast

from redis.asyncio import Redis

from benchmarks.measure import BenchError
from budgetkit._core.client import BudgetKit
from budgetkit._core.runtime import ScriptArg

#: The commands a script call is sent as.
SCRIPT_COMMANDS = ("EVALSHA", "FCALL", "FCALL_RO")
_LIBRARY_NAME = re.compile(r"^#!\w+\s+name=(\S+)")


class _Captured(Exception):
    """Raised by the recording client instead of sending a command to Redis."""


class _RecordingClient:
    def __init__(self) -> None:
        self.sent: list[list[str]] = []

    async def script_load(self, source: str) -> str:
        return hashlib.sha1(source.encode("utf-8"), usedforsecurity=False).hexdigest()

    async def function_load(self, code: str, replace: bool = False) -> str:
        found = _LIBRARY_NAME.match(code)
        return found.group(1) if found else "library"

    async def execute_command(self, *command: ScriptArg) -> Any:
        words = [a.decode() if isinstance(a, bytes) else str(a) for a in command]
        if len(words) > 1 and words[0].upper() == "FUNCTION":  # FUNCTION LOAD: the library is there
            return await self.function_load(words[-1]) if words[1].upper() == "LOAD" else []
        if words[0].upper() == "GET":  # the stored-format version (runtime.verify_format): none
            return None
        self.sent.append(words)
        raise _Captured

    async def evalsha(self, *args: ScriptArg) -> Any:
        return await self.execute_command("EVALSHA", *args)


async def recorded_command(prefix: str, call: Callable[[BudgetKit], Awaitable[Any]]) -> list[str]:
    """The command (``["EVALSHA", sha, numkeys, *keys, *args]``, or ``FCALL`` with a function
    name) of the one script call ``call(kit)`` makes."""
    recorder = _RecordingClient()
    kit = BudgetKit(cast(Redis, recorder), prefix=prefix, batching=False)
    with contextlib.suppress(_Captured):
        await call(kit)
    if len(recorder.sent) != 1:
        raise BenchError(f"the call sent {len(recorder.sent)} script commands, expected 1")
    command = recorder.sent[0]
    if command[0].upper() not in SCRIPT_COMMANDS:
        raise BenchError(f"expected one of {SCRIPT_COMMANDS}, the call sent {command[0]}")
    return command
