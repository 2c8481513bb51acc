"""Stored-format version and ``budgetkit migrate`` (issue 14), on real Redis and fakeredis.

A store filled by this release before versions were recorded (no ``P:format``) is served as
format 1; ``migrate`` stamps it, loads the library, changes no other byte, and is idempotent; a
store stamped with another format is refused before anything runs (an unavailable store for
``check``, ``StoreFormatMismatch`` for a mutation); ``--prune-libraries`` deletes other
versions' libraries, and a worker of such a version recovers by loading its own again.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

import budgetkit as bk
import budgetkit.sync as bk_sync
from budgetkit._core.runtime import ScriptRuntime, load_library, lua_dir

ORG = "org_mig"
SCOPE = bk.Scope(ORG, session_id="s1", user_id="u1")
FORMAT_KEY = "bk:format"

Snapshot = Callable[..., Awaitable[dict[bytes, Any]]]


async def fill(kit: bk.BudgetKit) -> None:
    """Data of every kind this release writes: budgets, ledgers, events, holds, records."""
    await kit.create_budget(ORG, "session", "s1", "usd", 10, soft_limit=8, period="day")
    await kit.create_budget(ORG, "user", "u1", "usd", 100, period="month", rollover_max=5)
    await kit.debit(SCOPE, {"usd": 1.5})
    await kit.debit(SCOPE, {"usd": 0.5}, idempotency_key="k1")
    held = await kit.reserve(SCOPE, {"usd": 2}, ttl_seconds=600)
    assert held.granted


def without_format(snapshot: dict[bytes, Any]) -> dict[bytes, Any]:
    return {k: v for k, v in snapshot.items() if k != FORMAT_KEY.encode()}


def library_names(listed: list[Any]) -> set[str]:
    names = set()
    for library in listed:
        fields = (
            library
            if isinstance(library, dict)
            else dict(zip(library[::2], library[1::2], strict=True))
        )
        names.add(fields[b"library_name"].decode())
    return names


def older_library(tmp_path: Path) -> Any:
    """A library as another budgetkit version would register it (a changed source)."""
    changed = tmp_path / "lua"
    shutil.copytree(lua_dir(), changed)
    get = changed / "get.lua"
    get.write_text(get.read_text(encoding="utf-8") + "\n-- another version\n", encoding="utf-8")
    return load_library(changed)


async def test_migrate_stamps_an_unversioned_store_and_changes_nothing_else(
    redis: Redis, redis_snapshot: Snapshot
) -> None:
    kit = bk.BudgetKit(redis)
    await fill(kit)
    assert await redis.get(FORMAT_KEY) is None, "this release served the store unstamped"
    before = await redis_snapshot(redis)
    result = await kit.migrate()
    assert result == bk.MigrationResult(
        format_before=None, format_after=bk.STORE_FORMAT, library=load_library().name
    )
    assert await redis.get(FORMAT_KEY) == str(bk.STORE_FORMAT).encode()
    after = await redis_snapshot(redis)
    assert without_format(after) == before, "migrate changed data of the current layout"
    again = await kit.migrate()
    assert again.format_before == bk.STORE_FORMAT and await redis_snapshot(redis) == after
    fresh = bk.BudgetKit(redis)  # a new client reads the stamp and serves the store
    assert (await fresh.check(SCOPE)).action == "continue"
    assert (await fresh.debit(SCOPE, {"usd": 1})).entries


async def test_a_store_of_another_format_is_refused_before_anything_runs(
    redis: Redis, redis_snapshot: Snapshot
) -> None:
    await fill(bk.BudgetKit(redis))
    newer = bk.STORE_FORMAT + 1
    await redis.set(FORMAT_KEY, str(newer))
    before = await redis_snapshot(redis)
    for policy, action in (("fail_closed", "stop"), ("fail_open", "continue")):
        kit = bk.BudgetKit(redis, failure_policy=policy)  # type: ignore[arg-type]
        result = await kit.check(SCOPE)
        assert result.action == action and result.error_code == (
            "budget_unavailable" if policy == "fail_closed" else None
        )
    kit = bk.BudgetKit(redis)
    with pytest.raises(bk.StoreFormatMismatch, match="upgrade budgetkit") as raised:
        await kit.debit(SCOPE, {"usd": 1})
    assert (raised.value.found, raised.value.expected) == (newer, bk.STORE_FORMAT)
    assert isinstance(raised.value, bk.BudgetUnavailable)
    with pytest.raises(bk.StoreFormatMismatch):
        await kit.migrate()  # an older release cannot downgrade a store
    assert await redis_snapshot(redis) == before


async def test_a_corrupted_format_key_is_corrupt_state(redis: Redis) -> None:
    await redis.set(FORMAT_KEY, "two")
    with pytest.raises(bk.CorruptState, match="bk:format"):
        await bk.BudgetKit(redis).create_budget(ORG, "session", "s1", "usd", 1)
    assert await redis.exists(f"bk:{{{ORG}}}:all") == 0


async def test_prune_deletes_other_versions_and_their_workers_recover(
    redis: Redis, tmp_path: Path
) -> None:
    old = older_library(tmp_path)
    old_kit = bk.BudgetKit(redis, batching=False)
    old_kit._runtime = ScriptRuntime(redis, old)
    old_kit._dispatch = old_kit._runtime.call
    await old_kit.create_budget(ORG, "session", "s1", "usd", 10)
    assert old.name in library_names(await redis.execute_command("FUNCTION", "LIST"))

    result = await bk.BudgetKit(redis).migrate(prune_libraries=True)
    assert old.name in result.pruned  # (and any other test's versions on a shared server)
    assert library_names(await redis.execute_command("FUNCTION", "LIST")) == {result.library}
    # The old version's worker is still running: its next call loads its own library again.
    assert (await old_kit.debit(SCOPE, {"usd": 1})).entries
    assert old_kit._runtime.reloads == 1


def test_blocking_client_migrates(redis_server_url: str) -> None:
    with bk_sync.BudgetKit.from_url(redis_server_url, prefix="bk_sync_mig") as kit:
        result = kit.migrate()
        assert result.format_after == bk.STORE_FORMAT


@pytest.mark.real
def test_cli_migrate(redis_server_url: str) -> None:
    command = [sys.executable, "-m", "budgetkit.cli", "migrate", "--prune-libraries"]
    out = subprocess.run(
        [*command, "--json", "--redis-url", redis_server_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    document = json.loads(out.stdout)
    assert document["format_after"] == bk.STORE_FORMAT
    assert document["library"] == load_library().name
    text = subprocess.run(
        [*command, "--redis-url", redis_server_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert text.returncode == 0, text.stderr
    assert f"stored format: {bk.STORE_FORMAT} -> {bk.STORE_FORMAT}" in text.stdout
    assert "libraries deleted: none" in text.stdout
