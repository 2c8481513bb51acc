"""The blocking facade's API is the async client's: same methods, signatures and docstrings,
visible to help(), dir() and mypy; a closed facade raises ClientClosed; events() has the same
defaults on both clients (read what is there, then return)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import pydoc
import textwrap
import threading
import typing
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import GenericAlias
from typing import Any

import fakeredis
import pytest
from redis.asyncio import Redis

import budgetkit as bk
import budgetkit.sync as bk_sync
from budgetkit._core.client import EVENTS_BATCH_MAX
from budgetkit._core.client import BudgetKit as AsyncBudgetKit

ORG = "org_sync_api"
TAIL_WAIT_S = 10.0

#: An async method whose blocking twin has another name (a sync close is not "aclose").
RENAMED = {"aclose": "close"}


def public_methods(cls: type) -> dict[str, Callable[..., Any]]:
    """The public methods of ``cls``: coroutine functions, async generator functions and plain
    functions (not properties, classmethods or dunders)."""
    return {
        name: member
        for name, member in inspect.getmembers(cls)
        if not name.startswith("_")
        and (
            inspect.iscoroutinefunction(member)
            or inspect.isasyncgenfunction(member)
            or inspect.isfunction(member)
        )
    }


ASYNC_METHODS = public_methods(AsyncBudgetKit)
SYNC_METHODS = public_methods(bk_sync.BudgetKit)


#: Return types of the async client -> the blocking facade's (a coroutine function's annotation
#: already is the awaited type, so it stays).
BLOCKING_ORIGINS: dict[Any, Any] = {
    AsyncIterator: Iterator,
    contextlib.AbstractAsyncContextManager: contextlib.AbstractContextManager,
}


#: Result classes of the async client whose blocking twins are other classes.
BLOCKING_TYPES: dict[Any, Any] = {bk.SpendGuard: bk_sync.SpendGuard}


def as_blocking(signature: inspect.Signature) -> inspect.Signature:
    """The async signature as the blocking facade spells it, e.g. AsyncIterator[X] ->
    Iterator[X], budgetkit.SpendGuard -> budgetkit.sync.SpendGuard."""
    returns = signature.return_annotation
    if returns in BLOCKING_TYPES:
        return signature.replace(return_annotation=BLOCKING_TYPES[returns])
    origin = BLOCKING_ORIGINS.get(typing.get_origin(returns))
    if origin is None:
        return signature
    return signature.replace(return_annotation=GenericAlias(origin, typing.get_args(returns)))


def resolved(function: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(function, eval_str=True)


def sync_kit_for(redis: Redis, **kwargs: Any) -> bk_sync.BudgetKit:
    """A blocking client on the server of ``redis`` (a second fakeredis client of the same fake
    server, or a URL of the same real server)."""
    pool_kwargs = redis.connection_pool.connection_kwargs
    if "server" in pool_kwargs:
        server = pool_kwargs["server"]
        return bk_sync.BudgetKit(lambda: fakeredis.FakeAsyncRedis(server=server), **kwargs)
    url = f"redis://{pool_kwargs.get('host', '127.0.0.1')}:{pool_kwargs['port']}/0"
    return bk_sync.BudgetKit.from_url(url, **kwargs)


def fake_sync_kit() -> bk_sync.BudgetKit:
    server = fakeredis.FakeServer(version=(7, 0))
    return bk_sync.BudgetKit(lambda: fakeredis.FakeAsyncRedis(server=server))


# -- (1) parity: every async method, spelled out with its signature and docstring -----------------


def test_the_async_client_has_the_methods_the_parity_test_expects() -> None:
    """Guards the discovery itself: a broken filter would make the parity tests vacuous."""
    assert {"create_budget", "debit", "reserve", "events", "add_check_rule", "aclose"} <= set(
        ASYNC_METHODS
    )
    assert inspect.isasyncgenfunction(ASYNC_METHODS["events"])


@pytest.mark.parametrize("name", sorted(ASYNC_METHODS))
def test_sync_method_matches_the_async_one(name: str) -> None:
    sync_name = RENAMED.get(name, name)
    assert sync_name in SYNC_METHODS, f"budgetkit.sync.BudgetKit has no method {sync_name!r}"
    async_method, sync_method = ASYNC_METHODS[name], SYNC_METHODS[sync_name]
    assert not inspect.iscoroutinefunction(sync_method)
    assert not inspect.isasyncgenfunction(sync_method)
    expected = as_blocking(resolved(async_method))
    assert resolved(sync_method) == expected, (
        f"{sync_name}{resolved(sync_method)} != {name}{expected}"
    )
    if name not in RENAMED:
        assert inspect.getdoc(async_method), f"the async {name} has no docstring"
        assert inspect.getdoc(sync_method) == inspect.getdoc(async_method), name


def test_sync_class_has_no_method_the_async_one_lacks() -> None:
    blocking_only = {"close"}  # aclose's twin
    extra = set(SYNC_METHODS) - {RENAMED.get(n, n) for n in ASYNC_METHODS} - blocking_only
    assert not extra, f"stale blocking methods: {sorted(extra)}"
    assert "__getattr__" not in vars(bk_sync.BudgetKit)


def test_from_url_keywords_match_the_async_ones() -> None:
    """Same URL keywords, defaults and annotations; plus call_timeout_s; the rest go to the
    async constructor through **kwargs."""
    async_params = resolved(AsyncBudgetKit.from_url).parameters
    sync_params = dict(resolved(bk_sync.BudgetKit.from_url).parameters)
    call_timeout = sync_params.pop("call_timeout_s")
    assert call_timeout.kind is inspect.Parameter.KEYWORD_ONLY
    assert call_timeout.default == bk_sync.CALL_TIMEOUT_S
    assert list(sync_params.values()) == list(async_params.values())


# -- (2) help() and dir() -------------------------------------------------------------------------


def test_dir_and_help_show_every_method() -> None:
    kit = fake_sync_kit()
    try:
        names = set(dir(kit))
        text = pydoc.plain(pydoc.render_doc(kit))
    finally:
        kit.close()
    for name, method in ASYNC_METHODS.items():
        sync_name = RENAMED.get(name, name)
        assert sync_name in names, sync_name
        assert f"{sync_name}(" in text, sync_name
        if name not in RENAMED:
            first_line = (inspect.getdoc(method) or "").splitlines()[0]
            assert first_line in text, (sync_name, first_line)
    assert {"counters", "keys"} <= names


# -- (3) mypy sees the methods --------------------------------------------------------------------

MYPY_GOOD = """
import budgetkit as bk
import budgetkit.sync as bk_sync

def run(kit: bk_sync.BudgetKit, scope: bk.Scope) -> float:
    result: bk.DebitResult = kit.debit(scope, {"usd": 1}, meter_source="manual")
    budget: bk.Budget = kit.get_budget("org_1", "bdgt_x")
    for event in kit.events("org_1"):
        event_id: str = event.id
    check: bk.BudgetCheckResult = kit.check(scope)
    kit.counters.fail_closed += 0
    return budget.balance
"""

MYPY_BAD = """
import budgetkit as bk
import budgetkit.sync as bk_sync

def run(kit: bk_sync.BudgetKit, scope: bk.Scope) -> None:
    kit.debitt(scope, {"usd": 1})
"""


def test_mypy_sees_the_methods(tmp_path: Path) -> None:
    mypy_api = pytest.importorskip("mypy.api")
    good = tmp_path / "sync_api_mypy_good.py"
    bad = tmp_path / "sync_api_mypy_bad.py"
    good.write_text(textwrap.dedent(MYPY_GOOD))
    bad.write_text(textwrap.dedent(MYPY_BAD))
    # The project's cache: about 15 s cold, a second or two warm. A cached module's errors are
    # reported under the path of the run that cached it, so match on the file name only.
    cache = Path(__file__).resolve().parent.parent / ".mypy_cache"
    out, err, status = mypy_api.run(
        ["--strict", "--no-error-summary", "--cache-dir", str(cache), str(good), str(bad)]
    )
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert status == 1, (out, err)
    assert len(errors) == 1, out
    assert f"/{bad.name}:6: error:" in errors[0] and '"debitt"' in errors[0], out
    assert errors[0].endswith("[attr-defined]"), out


# -- (4) closed ---------------------------------------------------------------------------------


def test_client_closed_is_a_budgetkit_runtime_error() -> None:
    assert issubclass(bk.ClientClosed, bk.BudgetkitError)
    assert issubclass(bk.ClientClosed, RuntimeError)
    assert "ClientClosed" in bk.__all__


def dummy_call(kit: bk_sync.BudgetKit, name: str) -> Callable[[], Any]:
    """A call of ``kit.<name>`` with None for every required parameter (a closed client must
    refuse before it looks at the arguments)."""
    method = getattr(kit, name)
    required = [
        p
        for p in inspect.signature(method).parameters.values()
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    positional = [None for p in required if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    keywords = {p.name: None for p in required if p.kind is inspect.Parameter.KEYWORD_ONLY}
    return lambda: method(*positional, **keywords)


def test_every_call_after_close_raises_client_closed_and_leaves_no_coroutine() -> None:
    kit = fake_sync_kit()
    kit.close()
    kit.close()  # idempotent
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in ASYNC_METHODS:
            if name in RENAMED:
                continue
            with pytest.raises(bk.ClientClosed):
                dummy_call(kit, name)()
        with pytest.raises(bk.ClientClosed):
            kit.debit(bk.Scope(organization_id=ORG, session_id="s1"), {"usd": 1})
        gc.collect()
    assert [str(w.message) for w in caught] == []
    with kit:  # a closed client is still a context manager that closes (again) on exit
        pass


def test_a_failed_constructor_stops_its_loop_thread() -> None:
    def loop_threads() -> int:
        return sum(t.name == "budgetkit-sync" for t in threading.enumerate())

    before = loop_threads()
    server = fakeredis.FakeServer(version=(7, 0))
    with pytest.raises(bk.InvalidInput, match="failure_policy"):
        bk_sync.BudgetKit(
            lambda: fakeredis.FakeAsyncRedis(server=server),
            failure_policy="sometimes",
        )
    assert loop_threads() == before


@pytest.mark.parametrize("follow", [False, True])
def test_an_events_iterator_made_before_close_raises_client_closed(follow: bool) -> None:
    kit = fake_sync_kit()
    stream = kit.events(ORG, follow=follow)
    kit.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(bk.ClientClosed):
            next(stream)
        del stream
        gc.collect()
    assert [str(w.message) for w in caught] == []


async def test_close_ends_a_tail_running_in_another_thread(redis: Redis) -> None:
    """A call still running when the client closes raises ClientClosed in its thread."""
    kit = await asyncio.to_thread(sync_kit_for, redis)
    started = threading.Event()
    outcome: list[BaseException | None] = []

    def tail() -> None:
        stream = kit.events(ORG, follow=True, block_ms=100)
        started.set()
        try:
            for _ in stream:
                pass
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=tail, daemon=True)
    thread.start()
    await asyncio.to_thread(started.wait, TAIL_WAIT_S)
    await asyncio.sleep(0.2)  # let the tail reach its blocking read
    await asyncio.to_thread(kit.close)
    await asyncio.to_thread(thread.join, TAIL_WAIT_S)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], bk.ClientClosed), outcome


# -- (5) events: same defaults on both clients ---------------------------------------------------


async def make_events(kit: AsyncBudgetKit) -> bk.Budget:
    budget = await kit.create_budget(ORG, "session", "s1", "usd", 10)
    await kit.debit(bk.Scope(organization_id=ORG, session_id="s1"), {"usd": 12})  # exhausts
    return budget


async def test_events_with_default_arguments_return_on_both_clients(redis: Redis) -> None:
    kit = bk.BudgetKit(redis)
    sync_kit = await asyncio.to_thread(sync_kit_for, redis)
    try:
        assert [e async for e in kit.events(ORG)] == []
        assert await asyncio.to_thread(lambda: list(sync_kit.events(ORG))) == []
        await make_events(kit)
        from_async = [e async for e in kit.events(ORG)]
        from_sync = await asyncio.to_thread(lambda: list(sync_kit.events(ORG)))
        assert from_async and from_sync == from_async
        assert from_async[-1].type == "budget.exhausted"
        after = from_async[0].id
        tail_async = [e async for e in kit.events(ORG, after)]
        assert await asyncio.to_thread(lambda: list(sync_kit.events(ORG, after))) == tail_async
        assert tail_async == from_async[1:]
    finally:
        await asyncio.to_thread(sync_kit.close)


async def test_sync_events_reads_more_than_one_batch(redis: Redis) -> None:
    kit = bk.BudgetKit(redis)
    sync_kit = await asyncio.to_thread(sync_kit_for, redis)
    try:
        budget = await kit.create_budget(ORG, "session", "s1", "usd", 10)
        scope = bk.Scope(organization_id=ORG, session_id="s1")
        for _ in range(EVENTS_BATCH_MAX // 2 + 5):  # exhausted, then resumed: 2 events
            await kit.debit(scope, {"usd": 10})
            await kit.top_up(ORG, budget.id, 10)
        from_async = [e async for e in kit.events(ORG)]
        assert len(from_async) > EVENTS_BATCH_MAX
        assert await asyncio.to_thread(lambda: list(sync_kit.events(ORG))) == from_async
    finally:
        await asyncio.to_thread(sync_kit.close)


async def test_sync_events_follow_waits_for_new_events(redis: Redis) -> None:
    kit = bk.BudgetKit(redis)
    sync_kit = await asyncio.to_thread(sync_kit_for, redis)
    scope = bk.Scope(organization_id=ORG, session_id="s1")
    seen: list[bk.BudgetEvent] = []
    first_seen = threading.Event()

    def tail_two() -> None:
        for event in sync_kit.events(ORG, follow=True, block_ms=100):
            seen.append(event)
            first_seen.set()
            if len(seen) == 2:
                break  # the abandoned stream is closed on the loop

    try:
        tail = asyncio.create_task(asyncio.to_thread(tail_two))
        await asyncio.sleep(0.2)
        assert not tail.done() and seen == []  # nothing there yet: the tail waits
        budget = await make_events(kit)  # budget.exhausted
        assert await asyncio.to_thread(first_seen.wait, TAIL_WAIT_S)
        await asyncio.sleep(0.2)
        assert not tail.done()  # caught up: waits again
        await kit.top_up(ORG, budget.id, 10)  # budget.resumed
        await asyncio.wait_for(tail, TAIL_WAIT_S)
        assert [e.type for e in seen] == ["budget.exhausted", "budget.resumed"]
        assert seen == [e async for e in kit.events(ORG)]
        assert (await asyncio.to_thread(sync_kit.check, scope)).action == "continue"
    finally:
        await asyncio.to_thread(sync_kit.close)
