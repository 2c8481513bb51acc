"""Script runtime: loads ``lua/*.lua``, calls them by SHA, translates their errors.

Each operation script is the shared prelude ``_lib.lua`` followed by the operation's file. Scripts
are registered with ``SCRIPT LOAD`` the first time a connection pool uses them and then called
with ``EVALSHA``; a ``NOSCRIPT`` reply (after ``SCRIPT FLUSH``, a restart or a failover) reloads
the script and retries once. ``BK_<CODE> message`` error replies become typed errors here — the
one seam between Redis errors and budgetkit errors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from budgetkit.errors import (
    SCRIPT_ERROR_CODES,
    BudgetUnavailable,
    OutcomeUnknown,
    ScriptError,
)

PRELUDE_NAME = "_lib"
NOSCRIPT_RETRIES_MAX = 1

ScriptArg = str | int | bytes


def lua_dir() -> Path:
    """The directory holding the Lua sources: inside the wheel, or the repo's top-level lua/."""
    packaged = Path(str(resources.files("budgetkit"))) / "lua"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "lua"


@dataclass(frozen=True, slots=True)
class Script:
    """One operation: its full source (prelude + body) and SHA1."""

    name: str
    source: str
    sha: str


def load_scripts(directory: Path | None = None) -> dict[str, Script]:
    """Reads every operation script of ``directory`` and prepends the prelude."""
    directory = directory or lua_dir()
    prelude = (directory / f"{PRELUDE_NAME}.lua").read_text(encoding="utf-8")
    scripts: dict[str, Script] = {}
    for path in sorted(directory.glob("*.lua")):
        if path.stem.startswith("_"):
            continue
        source = prelude + "\n" + path.read_text(encoding="utf-8")
        sha = hashlib.sha1(source.encode("utf-8"), usedforsecurity=False).hexdigest()
        scripts[path.stem] = Script(path.stem, source, sha)
    return scripts


def translate_response_error(error: redis_errors.ResponseError) -> Exception:
    """Maps a ``BK_<CODE> message`` reply to its typed error; anything else is a ScriptError."""
    text = str(error)
    start = text.find("BK_")
    if start >= 0:
        code, _, message = text[start + 3 :].partition(" ")
        message = message.split("\n", 1)[0].split(" script:", 1)[0].strip()
        error_type = SCRIPT_ERROR_CODES.get(code)
        if error_type is not None:
            return error_type(message)
    return ScriptError(text)


def connection_failure(name: str, error: Exception) -> BudgetUnavailable:
    """The error for a call whose connection failed: BudgetUnavailable when the connection was
    never made (nothing was sent), OutcomeUnknown when it broke after the request went out."""
    if "connecting to" in str(error):  # redis-py's wording for a failed connect
        return BudgetUnavailable(f"cannot reach Redis: {error}")
    return OutcomeUnknown(f"{name}: connection lost after sending: {error}")


class ScriptRuntime:
    """Calls operation scripts on one Redis client (one connection pool)."""

    def __init__(
        self,
        client: Redis,
        scripts: dict[str, Script] | None = None,
        on_reload: Callable[[], None] | None = None,
    ) -> None:
        self._client = client
        self._scripts = scripts if scripts is not None else load_scripts()
        self._loaded: set[str] = set()
        self._on_reload = on_reload
        self.reloads = 0

    @property
    def scripts(self) -> dict[str, Script]:
        return self._scripts

    async def call(
        self, name: str, keys: Sequence[str], args: Sequence[ScriptArg], readonly: bool = False
    ) -> Any:
        """Runs one script atomically; returns its raw reply. ``readonly`` uses EVALSHA_RO
        (allowed on replicas; the script must not write)."""
        script = self._scripts[name]
        evalsha = self._client.evalsha_ro if readonly else self._client.evalsha
        for attempt in range(NOSCRIPT_RETRIES_MAX + 1):
            await self.ensure_loaded(name)
            try:
                return await evalsha(script.sha, len(keys), *keys, *args)
            except redis_errors.NoScriptError:
                self._loaded.discard(script.sha)
                self.reloads += 1
                if self._on_reload is not None:
                    self._on_reload()
                if attempt == NOSCRIPT_RETRIES_MAX:
                    raise ScriptError(f"script {name} vanished again after reload") from None
            except redis_errors.ResponseError as error:
                raise translate_response_error(error) from None
            except (redis_errors.ConnectionError, redis_errors.TimeoutError) as error:
                raise connection_failure(name, error) from error
        raise AssertionError("unreachable")

    async def ensure_loaded(self, name: str) -> None:
        """Registers the script on the server unless this runtime already did."""
        script = self._scripts[name]
        if script.sha not in self._loaded:
            await self._load(script)

    async def _load(self, script: Script) -> None:
        try:
            sha = await self._client.script_load(script.source)
        except (redis_errors.ConnectionError, redis_errors.TimeoutError) as error:
            raise BudgetUnavailable(f"cannot reach Redis: {error}") from error
        if sha != script.sha:
            raise ScriptError(f"server computed {sha} for {script.name}, expected {script.sha}")
        self._loaded.add(script.sha)
