"""Script runtime against real servers: NOSCRIPT recovery, error seam, public API surface."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from redis import exceptions as redis_errors

import budgetkit as bk
from budgetkit._core.runtime import load_scripts, lua_dir, translate_response_error


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
async def test_noscript_after_server_restart(redis_server_factory: Any) -> None:
    server = redis_server_factory(appendonly=True)
    kit = bk.BudgetKit.from_url(server.url)
    scope = bk.Scope(organization_id="org_r", session_id="s1")
    b = await kit.create_budget("org_r", "session", "s1", "usd", 10)
    await kit.debit(scope, {"usd": 1})
    await kit.aclose()
    server.kill()
    server.restart()
    kit = bk.BudgetKit.from_url(server.url)
    kit._runtime._loaded.update(s.sha for s in kit._runtime.scripts.values())  # as if warm
    await kit.debit(scope, {"usd": 1})
    assert kit._runtime.reloads == 1
    assert (await kit.get_budget("org_r", b.id)).balance == 8
    await kit.aclose()


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
