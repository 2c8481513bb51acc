"""Script runtime against real servers: the Functions library, its recovery, the error seam,
the public API surface."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from redis import exceptions as redis_errors
from redis.asyncio import Redis

import budgetkit as bk
from budgetkit._core.runtime import (
    ScriptRuntime,
    load_library,
    load_scripts,
    lua_dir,
    translate_response_error,
)


def test_every_script_has_a_contract_header() -> None:
    scripts = load_scripts()
    assert {
        "create",
        "get",
        "list",
        "update",
        "top_up",
        "debit",
        "check",
        "resume",
        "ledger",
    } <= set(scripts)
    for path in lua_dir().glob("*.lua"):
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith(f"-- {path.name}:"), path
        text = path.read_text(encoding="utf-8")
        if not path.stem.startswith("_"):
            for section in ("-- KEYS[1", "-- ARGV[1]", "-- Returns", "-- Errors"):
                assert section in text, (path, section)
        assert "INCRBYFLOAT" not in text


def test_error_seam_maps_codes() -> None:
    real = redis_errors.ResponseError(
        "user_script:12: BK_NOT_FOUND bk:{o}:b:x script: f_abc, on @user_script:12."
    )
    error = translate_response_error(real)
    assert isinstance(error, bk.BudgetNotFound) and str(error) == "bk:{o}:b:x"
    assert isinstance(
        translate_response_error(redis_errors.ResponseError("WRONGTYPE x")), bk.ScriptError
    )


def test_public_api_names() -> None:
    for name in bk.__all__:
        assert hasattr(bk, name), name
    for name in (
        "BudgetKit",
        "Scope",
        "Budget",
        "LedgerEntry",
        "BudgetStatus",
        "BudgetSubjectType",
        "BudgetPeriod",
        "BudgetAction",
        "BudgetCheckResult",
        "BudgetSummary",
        "BudgetToolResponse",
        "BudgetkitError",
        "BudgetNotFound",
        "IdempotencyConflict",
        "HoldExpired",
        "BudgetUnavailable",
        "OutcomeUnknown",
        "UnpricedModel",
        "DebitResult",
    ):
        assert name in bk.__all__, name
    assert issubclass(bk.InvalidInput, ValueError) and issubclass(bk.BudgetNotFound, LookupError)


@pytest.mark.real
async def test_the_library_survives_a_restart_with_persistence(redis_server_factory: Any) -> None:
    """Redis persists and replicates functions: a restarted server (AOF) still has the library,
    so the next call needs no load."""
    server = redis_server_factory(appendonly=True)
    kit = bk.BudgetKit.from_url(server.url)
    scope = bk.Scope(organization_id="org_r", session_id="s1")
    b = await kit.create_budget("org_r", "session", "s1", "usd", 10)
    await kit.debit(scope, {"usd": 1})
    await kit.aclose()
    server.kill()
    server.restart()
    kit = bk.BudgetKit.from_url(server.url)
    kit._runtime._loaded = True  # as if warm: a missing library would count as a reload
    await kit.debit(scope, {"usd": 1})
    assert kit._runtime.reloads == 0
    assert (await kit.get_budget("org_r", b.id)).balance == 8
    await kit.aclose()


def _fields(reply: Any) -> dict[bytes, Any]:
    """A FUNCTION LIST map (redis-py parses it into a dict; fakeredis leaves a flat list)."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2], strict=True))


async def test_library_registers_each_operation_plain_and_guarded(redis: Redis) -> None:
    library = load_library()
    runtime = ScriptRuntime(redis)
    await runtime.ensure_loaded()
    listed = await redis.execute_command("FUNCTION", "LIST", "LIBRARYNAME", library.name)
    assert len(listed) == 1
    functions = {}
    for f in _fields(listed[0])[b"functions"]:
        row = _fields(f)
        functions[row[b"name"].decode()] = {flag.decode() for flag in row[b"flags"]}
    expected = {library.function(op, guarded=g) for op in library.operations for g in (False, True)}
    assert set(functions) == expected
    for name, flags in functions.items():
        read_only = name.removesuffix("_g").endswith("_check_ro")
        assert flags == ({"no-writes"} if read_only else set()), name


async def test_two_library_versions_serve_side_by_side(redis: Redis, tmp_path: Path) -> None:
    """A rolling upgrade: clients of two versions share a server, each calls its own library."""
    changed = tmp_path / "lua"
    shutil.copytree(lua_dir(), changed)
    (changed / "get.lua").write_text(
        (changed / "get.lua").read_text(encoding="utf-8") + "\n-- a later version\n",
        encoding="utf-8",
    )
    old, new = load_library(), load_library(changed)
    assert old.name != new.name
    old_kit = bk.BudgetKit(redis, batching=False)
    new_kit = bk.BudgetKit(redis, batching=False)
    new_kit._runtime = ScriptRuntime(redis, new)
    new_kit._dispatch = new_kit._runtime.call
    b = await old_kit.create_budget("org_v", "session", "s1", "usd", 10)
    assert (await new_kit.get_budget("org_v", b.id)).balance == 10
    assert (await old_kit.get_budget("org_v", b.id)).balance == 10
    names = {
        _fields(row)[b"library_name"] for row in await redis.execute_command("FUNCTION", "LIST")
    }
    assert {old.name.encode(), new.name.encode()} <= names
    await redis.execute_command("FUNCTION", "DELETE", new.name)


@pytest.mark.real
async def test_unreachable_store_fails_closed_or_open(redis_server_factory: Any) -> None:
    server = redis_server_factory()
    url = server.url
    server.stop()
    scope = bk.Scope(organization_id="org_u", session_id="s1")
    closed = bk.BudgetKit.from_url(url)
    result = await closed.check(scope)
    assert result.action == "stop" and result.error_code == "budget_unavailable"
    with pytest.raises(bk.BudgetUnavailable):
        await closed.debit(scope, {"usd": 1})
    opened = bk.BudgetKit.from_url(url, failure_policy="fail_open")
    result = await opened.check(scope)
    assert result.action == "continue" and result.fail_open
    await closed.aclose()
    await opened.aclose()


def test_demo_runs_embedded() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "budgetkit.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    assert "fakeredis" in out.stdout
    assert "budget_insufficient" in out.stdout  # the spend guard stops workers before overspend
    assert "rollover" in out.stdout
    assert "reconciliation: 9 budgets" in out.stdout and ": yes (drift 0 micro-units)" in out.stdout


@pytest.mark.real
def test_demo_on_real_redis(redis_server_url: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "budgetkit.cli", "demo", "--redis-url", redis_server_url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "fakeredis" not in out.stdout
    assert ": yes (drift 0 micro-units)" in out.stdout
