"""Stored-format version: which layout of budgetkit's keys a Redis holds, and its upgrades.

``P:format`` (a string outside every organization's slot; P = the prefix) holds the version of
the layout of the data under P. ``STORE_FORMAT`` is the version this release reads and writes.
An absent key is version 1: every release before the key existed wrote layout 1 (the fields
added since — ``roll``, ``thr``, ``thrf`` — are optional and read as absent = none), so a store
never migrated is served as it is.

A client reads the key once, before its first call (``ScriptRuntime``), and refuses a store
stamped with another version (``StoreFormatMismatch``, an unavailable store): an older client
after an operator migrated, or a newer client whose layout changed before the operator did.

``migrate`` (``kit.migrate()``, ``budgetkit migrate``) upgrades a store step by step
(``UPGRADES``: version n -> n + 1; none yet, layout 1 is the only one), loads this release's
function library on every primary, stamps the version, and on request deletes the libraries
of other budgetkit versions (a worker of such a version still running loads its own again on
its next call: ``Function not found`` is recovered, budgetkit._core.runtime).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from pydantic import BaseModel, ConfigDict

from budgetkit._core.errors import CorruptState, StoreFormatMismatch

if TYPE_CHECKING:
    from budgetkit._core.runtime import ScriptRuntime

#: The layout this release reads and writes.
STORE_FORMAT: Final = 1
#: The version of a store without the key (written before versions were recorded).
UNSTAMPED_FORMAT: Final = 1
FORMAT_MAX: Final = 1_000_000

#: Upgrade steps: UPGRADES[n](client, prefix) rewrites a store of version n into n + 1.
Upgrade = Callable[[Any, str], Awaitable[None]]
UPGRADES: Final[Mapping[int, Upgrade]] = {}


class MigrationResult(BaseModel):
    """What ``migrate`` did: the stored-format version before (None: not recorded, read as
    version 1) and after, the function library it loaded, the libraries it deleted."""

    model_config = ConfigDict(frozen=True)

    format_before: int | None
    format_after: int
    library: str
    pruned: tuple[str, ...] = ()


def parse_format(key: str, value: bytes | str | None) -> int | None:
    """The version stored under ``key`` (None when absent); CorruptState when not a version."""
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else value
    if not text.isdigit() or not 1 <= int(text) <= FORMAT_MAX:
        raise CorruptState(f"{key} holds {text[:40]!r}, not a stored-format version")
    return int(text)


def verify(key: str, found: int | None) -> None:
    """Raises StoreFormatMismatch unless this release reads a store of version ``found``."""
    version = UNSTAMPED_FORMAT if found is None else found
    if version == STORE_FORMAT:
        return
    if version < STORE_FORMAT:
        advice = "run `budgetkit migrate` (with this version) to upgrade it"
    else:
        advice = "upgrade budgetkit: a newer version migrated this store"
    raise StoreFormatMismatch(
        f"the store under {key} is in stored format {version}, this budgetkit reads format "
        f"{STORE_FORMAT}: {advice}",
        found=version,
        expected=STORE_FORMAT,
    )


def upgrade_path(found: int | None) -> list[int]:
    """The versions to upgrade from, in order, to reach STORE_FORMAT; StoreFormatMismatch for a
    store newer than this release or a gap in UPGRADES."""
    version = UNSTAMPED_FORMAT if found is None else found
    if version > STORE_FORMAT:
        verify("the store", version)
    steps = list(range(version, STORE_FORMAT))
    missing = [n for n in steps if n not in UPGRADES]
    if missing:
        raise StoreFormatMismatch(
            f"no upgrade from stored format {missing[0]}: migrate with an older budgetkit first",
            found=version,
            expected=STORE_FORMAT,
        )
    return steps


async def migrate(runtime: ScriptRuntime, prefix: str, key: str, *, prune: bool) -> MigrationResult:
    """Upgrades the store under ``prefix`` to STORE_FORMAT, loads this release's library on
    every primary, stamps the version under ``key``; ``prune``: deletes other budgetkit
    libraries. Safe to run again (a stamped store of this version has nothing to upgrade)."""
    found = await runtime.stored_format(key)
    for version in upgrade_path(found):
        await UPGRADES[version](runtime.client, prefix)
    await runtime.load_everywhere()
    await runtime.send(["SET", key, str(STORE_FORMAT)])
    pruned: tuple[str, ...] = ()
    if prune:
        others = await runtime.library_names() - {runtime.library.name}
        pruned = tuple(sorted(others))
        await runtime.delete_libraries(pruned)
    return MigrationResult(
        format_before=found, format_after=STORE_FORMAT, library=runtime.library.name, pruned=pruned
    )
