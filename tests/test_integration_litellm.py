"""budgetkit.integrations.litellm against the real ``litellm`` package, on real Redis and fakeredis.

No network: every call answers through LiteLLM's own ``mock_response`` (its real response,
stream, usage, cost and callback machinery, with a canned answer), and LiteLLM's bundled price
map is used (``LITELLM_LOCAL_MODEL_COST_MAP``). Skipped only when litellm is not installed (the
``dev`` extra installs it, so CI never skips). LiteLLM prices gpt-4.1 as budgetkit does: 2.00 in
/ 0.50 cache read / 8.00 out per 1M tokens.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm is imported

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from support import assert_invariant

import budgetkit as bk

litellm = pytest.importorskip("litellm")

from litellm.integrations.custom_logger import CustomLogger  # noqa: E402
from litellm.proxy._types import ProxyException, UserAPIKeyAuth  # noqa: E402
from litellm.types.utils import ModelResponse, Usage  # noqa: E402

from budgetkit.integrations.litellm import (  # noqa: E402
    BudgetkitCallback,
    BudgetOptions,
    ProxyBudgetExceeded,
    budgeted_acompletion,
    estimate_usage,
    usage_from_litellm,
)

#: LiteLLM imports some of its modules on first use; one of them makes pydantic warn (a
#: TypedDict with ReadOnly items) and pytest turns warnings into errors here.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Items? .* using the `ReadOnly` qualifier:UserWarning"
)

ORG = "org_l"
MODEL = "gpt-4.1"
MESSAGES = [{"role": "user", "content": "hello there"}]
ANSWER = "Hi! Redis keeps every balance and Lua debits the hierarchy atomically. " * 4
SETTLE_WAIT_S = 5.0  # LiteLLM runs its success callbacks in tasks of their own: wait for them


@pytest_asyncio.fixture
async def kit(redis: Redis) -> AsyncIterator[bk.BudgetKit]:
    yield bk.BudgetKit(redis)


class Recorder(CustomLogger):
    """Keeps what LiteLLM passes to its success callbacks (to replay an event)."""

    def __init__(self) -> None:
        super().__init__()
        self.successes: list[tuple[dict[str, Any], Any]] = []

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self.successes.append((kwargs, response_obj))


@pytest.fixture
def registered() -> Iterator[list[Any]]:
    """Callbacks to register with LiteLLM (``registered.append(handler)``): removed from every
    list LiteLLM copies them into, after the test."""
    added: list[Any] = []
    yield added
    for callback in added:
        litellm.logging_callback_manager.remove_callback_from_all_lists(callback)


def register(registered: list[Any], *callbacks: Any) -> None:
    for callback in callbacks:
        litellm.logging_callback_manager.add_litellm_callback(callback)
        registered.append(callback)


async def ledger_of(kit: bk.BudgetKit, budget: bk.Budget, n: int = 0) -> list[bk.LedgerEntry]:
    """The budget's ledger oldest first, once it has at least ``n`` entries (bounded wait)."""
    deadline = asyncio.get_running_loop().time() + SETTLE_WAIT_S
    while True:
        entries = list(reversed(await kit.ledger(budget.organization_id, budget.id)))
        if len(entries) >= n or asyncio.get_running_loop().time() > deadline:
            return entries
        await asyncio.sleep(0.02)


async def available(kit: bk.BudgetKit, scope: bk.Scope) -> list[float]:
    """Balance minus outstanding holds, per budget of the scope."""
    return [summary.balance for summary in (await kit.check_tool(scope)).budgets]


def cost(prompt: int, completion: int) -> float:
    """gpt-4.1's price of a call, in usd, rounded half-up to micro-units."""
    exact = Decimal(prompt * 2 + completion * 8) / 1_000_000
    return float(exact.quantize(Decimal("0.000001")))


def session(name: str = "s1") -> bk.Scope:
    return bk.Scope(organization_id=ORG, session_id=name)


# ================================================================================================
# SDK: the callback
# ================================================================================================


async def test_callback_charges_a_plain_acompletion(
    kit: bk.BudgetKit, registered: list[Any]
) -> None:
    usd = await kit.create_budget(ORG, "session", "s1", "usd", 1)
    tokens = await kit.create_budget(ORG, "session", "s1", "tokens", 10_000)
    register(registered, BudgetkitCallback(kit))

    response = await litellm.acompletion(
        model=MODEL,
        messages=MESSAGES,
        mock_response="Hi!",
        metadata={"budgetkit_scope": {"organization_id": ORG, "session_id": "s1"}},
    )

    usage = response.usage  # LiteLLM's mock usage: 10 prompt, 20 completion tokens
    [entry] = await ledger_of(kit, usd, 1)
    assert entry.amount == cost(usage.prompt_tokens, usage.completion_tokens) == 0.00018
    assert entry.ref_id == response._hidden_params["litellm_call_id"]  # keyed by the call id
    assert (entry.meter_source, entry.ref_type) == ("llm_tokens", "llm_generation")
    assert [e.amount for e in await ledger_of(kit, tokens, 1)] == [usage.total_tokens]
    await assert_invariant(kit, ORG, usd.id, 1)


async def test_callback_charges_a_stream_by_the_usage_of_its_final_chunk(
    kit: bk.BudgetKit, registered: list[Any]
) -> None:
    usd = await kit.create_budget(ORG, "session", "s1", "usd", 1)
    register(registered, BudgetkitCallback(kit))

    stream = await litellm.acompletion(
        model=MODEL,
        messages=MESSAGES,
        mock_response=ANSWER,
        stream=True,
        stream_options={"include_usage": True},
        metadata={"budgetkit_scope": session()},
    )
    chunks = [chunk async for chunk in stream]

    final = chunks[-1].usage
    assert final is not None and final.completion_tokens > 20
    [entry] = await ledger_of(kit, usd, 1)
    assert entry.amount == cost(final.prompt_tokens, final.completion_tokens)


async def test_callback_ignores_calls_without_a_scope(
    kit: bk.BudgetKit, registered: list[Any]
) -> None:
    usd = await kit.create_budget(ORG, "session", "s1", "usd", 1)
    recorder = Recorder()
    register(registered, BudgetkitCallback(kit), recorder)
    await litellm.acompletion(model=MODEL, messages=MESSAGES, mock_response="Hi!")
    for _ in range(250):  # until LiteLLM ran the callbacks
        if recorder.successes:
            break
        await asyncio.sleep(0.02)
    assert recorder.successes and await ledger_of(kit, usd) == []


# ================================================================================================
# SDK: budgeted_acompletion
# ================================================================================================


async def test_budgeted_acompletion_reserves_then_charges_the_real_usage(
    kit: bk.BudgetKit, registered: list[Any]
) -> None:
    usd = await kit.create_budget(ORG, "session", "s1", "usd", 0.05)
    register(registered, BudgetkitCallback(kit))  # also registered: must not charge twice

    response = await budgeted_acompletion(
        kit,
        session(),
        model=MODEL,
        messages=MESSAGES,
        max_tokens=1_000,
        mock_response="Hi!",
        metadata={"budgetkit_scope": session()},
    )

    entries = await ledger_of(kit, usd, 1)
    await asyncio.sleep(0.2)  # the callback's task would have charged by now
    assert [e.amount for e in await ledger_of(kit, usd)] == [0.00018]
    assert entries[0].ref_id == response._hidden_params["litellm_call_id"]
    assert await available(kit, session()) == [0.04982]  # the hold is gone
    await assert_invariant(kit, ORG, usd.id, 0.05)


async def test_budgeted_acompletion_refuses_before_the_model_is_called(
    kit: bk.BudgetKit,
) -> None:
    usd = await kit.create_budget(ORG, "session", "s1", "usd", 0.01)
    # 9 prompt tokens + 2,000 output tokens: 0.016018 usd > 0.01
    estimate = estimate_usage({"model": MODEL, "messages": MESSAGES, "max_tokens": 2_000})
    assert (estimate.input_tokens, estimate.output_tokens) == (9, 2_000)

    with pytest.raises(bk.BudgetExceeded) as refused:
        await budgeted_acompletion(
            kit,
            session(),
            model=MODEL,
            messages=MESSAGES,
            max_tokens=2_000,
            mock_response=RuntimeError("the model must not be called"),
        )
    assert refused.value.check.error_code == "budget_insufficient"
    assert refused.value.check.message == (
        "Budget insufficient. 0.02 usd requested, 0.01 usd available of the 0.01 usd limit."
    )
    assert await ledger_of(kit, usd) == [] and await available(kit, session()) == [0.01]


async def test_budgeted_acompletion_releases_the_hold_of_a_failed_call(
    kit: bk.BudgetKit,
) -> None:
    usd = await kit.create_budget(ORG, "session", "s1", "usd", 0.05)
    with pytest.raises(litellm.InternalServerError):
        await budgeted_acompletion(
            kit, session(), model=MODEL, messages=MESSAGES, mock_response=Exception("boom")
        )
    assert await ledger_of(kit, usd) == [] and await available(kit, session()) == [0.05]


async def test_budgeted_stream_is_charged_by_its_final_usage_chunk(kit: bk.BudgetKit) -> None:
    usd = await kit.create_budget(ORG, "session", "s1", "usd", 0.05)
    stream = await budgeted_acompletion(
        kit, session(), model=MODEL, messages=MESSAGES, mock_response=ANSWER, stream=True
    )
    chunks = [chunk async for chunk in stream]

    final = chunks[-1].usage  # include_usage was asked for by budgeted_acompletion
    assert final is not None and stream.result is not None
    expected = cost(final.prompt_tokens, final.completion_tokens)
    assert [e.amount for e in stream.result.entries] == [expected]
    assert [e.amount for e in await ledger_of(kit, usd)] == [expected]
    assert await available(kit, session()) == [round(0.05 - expected, 6)]


async def test_a_stream_closed_early_is_charged_for_what_was_streamed(kit: bk.BudgetKit) -> None:
    usd = await kit.create_budget(ORG, "session", "s1", "usd", 0.05)
    stream = await budgeted_acompletion(
        kit, session(), model=MODEL, messages=MESSAGES, mock_response=ANSWER, stream=True
    )
    text = ""
    async with stream:
        async for chunk in stream:
            text += chunk.choices[0].delta.content or ""
            if len(text) >= 30:
                break  # the consumer stops reading: no usage chunk ever comes

    streamed = litellm.token_counter(model=MODEL, text=text, count_response_tokens=True)
    assert 0 < streamed < litellm.token_counter(model=MODEL, text=ANSWER)
    expected = cost(9, streamed)  # the whole prompt, and the output that was streamed
    assert stream.result is not None and [e.amount for e in stream.result.entries] == [expected]
    assert [e.amount for e in await ledger_of(kit, usd)] == [expected]
    assert await available(kit, session()) == [round(0.05 - expected, 6)]  # no hold left


async def test_a_cancelled_stream_task_is_charged_for_what_was_streamed(
    kit: bk.BudgetKit,
) -> None:
    usd = await kit.create_budget(ORG, "session", "s1", "usd", 0.05)
    halfway = asyncio.Event()
    text: list[str] = []

    async def consume() -> None:
        stream = await budgeted_acompletion(
            kit, session(), model=MODEL, messages=MESSAGES, mock_response=ANSWER, stream=True
        )
        async with stream:
            async for chunk in stream:
                text.append(chunk.choices[0].delta.content or "")
                if len(text) == 5:
                    halfway.set()
                    await asyncio.sleep(3600)  # e.g. a slow consumer, cancelled by a timeout

    task = asyncio.create_task(consume())
    try:
        await asyncio.wait_for(halfway.wait(), SETTLE_WAIT_S)  # bounded: the task may fail
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    streamed = litellm.token_counter(model=MODEL, text="".join(text), count_response_tokens=True)
    assert [e.amount for e in await ledger_of(kit, usd)] == [cost(9, streamed)]
    assert await available(kit, session()) == [round(0.05 - cost(9, streamed), 6)]


async def test_a_stream_dropped_half_way_is_charged_when_python_finalizes_it(
    kit: bk.BudgetKit,
) -> None:
    usd = await kit.create_budget(ORG, "session", "s1", "usd", 0.05)
    stream = await budgeted_acompletion(
        kit, session(), model=MODEL, messages=MESSAGES, mock_response=ANSWER, stream=True
    )
    async for chunk in stream:
        first = chunk.choices[0].delta.content
        break  # no aclose, no async with: the stream is simply dropped
    del stream, chunk
    gc.collect()  # the event loop's async-generator finalizer closes it

    streamed = litellm.token_counter(model=MODEL, text=first, count_response_tokens=True)
    [entry] = await ledger_of(kit, usd, 1)
    assert entry.amount == cost(9, streamed)  # the prompt, and the first chunk's tokens
    await assert_invariant(kit, ORG, usd.id, 0.05)


# ================================================================================================
# Proxy: the hooks, called with the arguments the proxy passes
# ================================================================================================


def key(**fields: Any) -> UserAPIKeyAuth:
    """The proxy's UserAPIKeyAuth of a virtual key."""
    return UserAPIKeyAuth(**{"org_id": ORG, "user_id": "usr_1", "team_id": "team_1", **fields})


def proxy_request(**extra: Any) -> dict[str, Any]:
    """The request ``data`` of /chat/completions as the proxy hands it to the pre-call hooks."""
    return {
        "model": MODEL,
        "messages": MESSAGES,
        "max_tokens": 1_000,
        "litellm_call_id": str(uuid.uuid4()),
        "metadata": {"session_id": "sess_9", "user_api_key_hash": "hashed-key"},
        **extra,
    }


async def test_proxy_reserves_then_commits_with_the_call_id_and_replays_once(
    kit: bk.BudgetKit, registered: list[Any]
) -> None:
    usd = await kit.create_budget(ORG, "user", "usr_1", "usd", 0.05)
    tokens = await kit.create_budget(ORG, "app", "team_1", "tokens", 100_000)
    handler, recorder = BudgetkitCallback(kit), Recorder()
    register(registered, handler, recorder)
    scope = bk.Scope(organization_id=ORG, user_id="usr_1", app_id="team_1", session_id="sess_9")

    data = await handler.async_pre_call_hook(key(), None, proxy_request(), "acompletion")

    # 9 prompt tokens + 1,000 output tokens held: 0.008018 usd, 1,009 tokens.
    assert await available(kit, scope) == [98_991, 0.041982]  # app tokens, user usd
    await litellm.acompletion(**data, mock_response="Hi!")  # what the proxy's router does
    [entry] = await ledger_of(kit, usd, 1)
    assert (entry.amount, entry.ref_id, entry.session_id) == (
        0.00018,
        data["litellm_call_id"],
        "sess_9",
    )
    assert await available(kit, scope) == [99_970, 0.04982]  # committed: the hold is gone

    # LiteLLM retries a success callback: the same charge is replayed, not applied again.
    [(kwargs, response)] = recorder.successes
    await handler.async_log_success_event(kwargs, response, None, None)
    replayed = await handler.charge(kwargs, response)
    assert replayed is not None and replayed.replayed
    assert [e.amount for e in await ledger_of(kit, usd)] == [0.00018]
    assert [e.amount for e in await ledger_of(kit, tokens)] == [30]
    await assert_invariant(kit, ORG, usd.id, 0.05)


async def test_proxy_refuses_with_a_429_and_the_budgets_message(kit: bk.BudgetKit) -> None:
    await kit.create_budget(ORG, "user", "usr_1", "usd", 0.005)
    handler = BudgetkitCallback(kit)

    with pytest.raises(ProxyBudgetExceeded) as refused:
        await handler.async_pre_call_hook(key(), None, proxy_request(), "acompletion")

    error = refused.value
    assert isinstance(error, ProxyException)  # what the proxy serializes as it is
    assert error.status_code == 429 and int(error.code) == 429
    message = "Budget insufficient. 0.01 usd requested, 0.01 usd available of the 0.01 usd limit."
    assert error.message == message and error.check.error_code == "budget_insufficient"
    body = error.to_dict()  # the proxy answers {"error": body}
    assert (body["message"], body["type"], body["code"]) == (message, "budget_exceeded", "429")
    assert body["provider_specific_fields"]["budgetkit"]["error_code"] == "budget_insufficient"
    assert handler._calls == {}


async def test_proxy_failure_releases_the_hold(kit: bk.BudgetKit, registered: list[Any]) -> None:
    usd = await kit.create_budget(ORG, "user", "usr_1", "usd", 0.05)
    handler = BudgetkitCallback(kit)
    register(registered, handler)
    scope = bk.Scope(organization_id=ORG, user_id="usr_1", app_id="team_1", session_id="sess_9")
    data = await handler.async_pre_call_hook(key(), None, proxy_request(), "acompletion")
    assert await available(kit, scope) == [0.041982]

    with pytest.raises(litellm.InternalServerError):
        await litellm.acompletion(**data, mock_response=Exception("upstream down"))

    for _ in range(250):  # until LiteLLM ran the failure callback
        if await available(kit, scope) == [0.05]:
            break
        await asyncio.sleep(0.02)
    assert await available(kit, scope) == [0.05] and await ledger_of(kit, usd) == []


async def test_proxy_charges_a_stream_the_client_cuts(
    kit: bk.BudgetKit, registered: list[Any]
) -> None:
    usd = await kit.create_budget(ORG, "user", "usr_1", "usd", 0.05)
    handler = BudgetkitCallback(kit)
    scope = bk.Scope(organization_id=ORG, user_id="usr_1", app_id="team_1", session_id="sess_9")
    data = await handler.async_pre_call_hook(key(), None, proxy_request(stream=True), "acompletion")
    stream = await litellm.acompletion(**data, mock_response=ANSWER)

    relayed = handler.async_post_call_streaming_iterator_hook(key(), stream, data)
    text = ""
    async for chunk in relayed:
        text += chunk.choices[0].delta.content or ""
        if len(text) >= 30:
            break
    await relayed.aclose()  # the client disconnected: the proxy closes the stream

    streamed = litellm.token_counter(model=MODEL, text=text, count_response_tokens=True)
    [entry] = await ledger_of(kit, usd, 1)
    assert (entry.amount, entry.ref_id) == (cost(9, streamed), data["litellm_call_id"])
    assert await available(kit, scope) == [round(0.05 - cost(9, streamed), 6)]


async def test_proxy_check_only_mode_and_calls_it_does_not_budget(kit: bk.BudgetKit) -> None:
    await kit.create_budget(ORG, "user", "usr_1", "usd", 0.01)
    await kit.debit(bk.Scope(organization_id=ORG, user_id="usr_1"), {"usd": 0.01})
    handler = BudgetkitCallback(kit, reserve=False)
    with pytest.raises(ProxyBudgetExceeded) as refused:
        await handler.async_pre_call_hook(key(), None, proxy_request(), "acompletion")
    assert refused.value.check.error_code == "budget_exhausted"

    data = {"model": "dall-e-3", "prompt": "a cat"}
    assert await handler.async_pre_call_hook(key(), None, data, "aimage_generation") is data
    assert "litellm_call_id" not in data


async def test_proxy_scope_mapping_and_a_custom_resolver(kit: bk.BudgetKit) -> None:
    handler = BudgetkitCallback(kit, default_organization_id="org_default")
    request = {"model": MODEL, "litellm_session_id": "sess_h", "metadata": {}}
    assert handler.scope_for(key(org_id=None, agent_id="agt_1"), request) == bk.Scope(
        organization_id="org_default",
        user_id="usr_1",
        app_id="team_1",
        agent_id="agt_1",
        session_id="sess_h",
    )
    # SDK calls name their scope in metadata; the proxy's clients cannot (their metadata).
    sdk_kwargs = {"litellm_params": {"metadata": {"budgetkit_scope": {"organization_id": "o"}}}}
    assert handler.scope_for(None, sdk_kwargs) == bk.Scope(organization_id="o")
    forged = proxy_request(metadata={"budgetkit_scope": {"organization_id": "victim"}})
    scope = handler.scope_for(key(), forged)
    assert scope is not None and scope.organization_id == ORG

    with pytest.raises(ProxyException) as invalid:  # a session id that is no identifier
        await handler.async_pre_call_hook(
            key(), None, proxy_request(metadata={"session_id": "a b"}), "acompletion"
        )
    assert int(invalid.value.code) == 400

    def by_team(user_api_key_dict: Any, request: Any) -> bk.Scope | None:
        team = getattr(user_api_key_dict, "team_id", None)
        return None if team is None else bk.Scope(organization_id=ORG, app_id=team)

    custom = BudgetkitCallback(kit, scope_resolver=by_team)
    untouched = proxy_request()
    assert await custom.async_pre_call_hook(key(team_id=None), None, untouched, "acompletion")
    assert custom._calls == {}


# ================================================================================================
# Usage of LiteLLM's responses
# ================================================================================================


def test_usage_splits_anthropic_cache_writes_and_takes_litellms_cost() -> None:
    # LiteLLM's OpenAI-form usage of an Anthropic call: prompt_tokens = 1,500 input + 20,000
    # cache reads + 2,000 cache writes (its real Usage type; cache_write_tokens mirrors writes).
    response = ModelResponse(
        model="claude-sonnet-4-20250514",
        usage=Usage(
            prompt_tokens=23_500,
            completion_tokens=600,
            total_tokens=24_100,
            cache_creation_input_tokens=2_000,
            cache_read_input_tokens=20_000,
        ),
    )
    usage = usage_from_litellm(response, provider="anthropic")
    assert (usage.input_tokens, usage.cache_read_tokens, usage.cache_creation_tokens) == (
        1_500,
        20_000,
        2_000,
    )
    # 1,500 x 3.00 + 20,000 x 0.30 + 2,000 x 3.75 + 600 x 15.00 = 27,000 per 1M
    assert bk.meter_amounts(usage) == {
        "usd": Decimal("0.027"),
        "tokens": Decimal(24_100),
        "credits": Decimal("24.1"),
    }
    # Only the top-level field (older LiteLLM): the same split.
    bare = {
        "model": "claude-sonnet-4-20250514",
        "usage": {
            "prompt_tokens": 23_500,
            "completion_tokens": 600,
            "prompt_tokens_details": {"cached_tokens": 20_000},
            "cache_creation_input_tokens": 2_000,
        },
    }
    assert usage_from_litellm(bare) == bk.LlmUsage(**{**usage.model_dump(), "provider": "litellm"})
    # LiteLLM's float cost wins (SPEC §8), rounded to the micro-unit.
    priced = usage_from_litellm(response, cost_usd=0.027099999999999999)
    assert bk.meter_amounts(priced, currencies=("usd",)) == {"usd": Decimal("0.0271")}


async def test_a_model_budgetkit_cannot_price_is_charged_at_litellms_list_price(
    kit: bk.BudgetKit,
) -> None:
    usd = await kit.create_budget(ORG, "session", "s1", "usd", 1)
    model = f"budgetkit-test-{uuid.uuid4().hex[:8]}"  # priced by LiteLLM only
    litellm.register_model(
        {
            model: {
                "input_cost_per_token": 5e-07,
                "output_cost_per_token": 1.5e-06,
                "litellm_provider": "openai",
                "mode": "chat",
            }
        }
    )
    try:
        with pytest.raises(bk.UnpricedModel):  # budgetkit's table does not price it...
            bk.meter_amounts(bk.LlmUsage(model=model, input_tokens=1), currencies=("usd",))
        await budgeted_acompletion(
            kit,
            session(),
            model=f"openai/{model}",
            messages=MESSAGES,
            mock_response="Hi!",
            options=BudgetOptions(use_litellm_cost=False),  # ...nor, here, LiteLLM's cost
        )
    finally:
        litellm.model_cost.pop(model, None)
    # 10 x 0.50 + 20 x 1.50 = 35 per 1M
    assert [e.amount for e in await ledger_of(kit, usd)] == [0.000035]


def test_anthropic_messages_answers_are_read_in_anthropics_form() -> None:
    """The proxy's /v1/messages answers with Anthropic's usage (disjoint buckets)."""
    answer = {
        "model": "claude-sonnet-4-20250514",
        "usage": {
            "input_tokens": 1_500,
            "output_tokens": 600,
            "cache_read_input_tokens": 20_000,
            "cache_creation_input_tokens": 2_000,
        },
    }
    usage = usage_from_litellm(answer, call_type="anthropic_messages")
    assert (usage.provider, usage.input_tokens, usage.cache_creation_tokens) == (
        "anthropic",
        1_500,
        2_000,
    )
    assert bk.meter_amounts(usage, currencies=("usd",)) == {"usd": Decimal("0.027")}


# ================================================================================================
# Bounds and the synchronous SDK
# ================================================================================================


async def test_the_calls_a_callback_remembers_are_bounded(
    kit: bk.BudgetKit, monkeypatch: pytest.MonkeyPatch
) -> None:
    import budgetkit.integrations.litellm as integration

    monkeypatch.setattr(integration, "CALLS_MAX", 3)
    handler = BudgetkitCallback(kit, reserve=False)
    ids = []
    for _ in range(5):
        data = await handler.async_pre_call_hook(key(), None, proxy_request(), "acompletion")
        ids.append(data["litellm_call_id"])
    assert list(handler._calls) == ids[2:]  # the oldest are forgotten first

    monkeypatch.setattr(integration, "CALL_MEMORY_S", 0.0)
    data = await handler.async_pre_call_hook(key(), None, proxy_request(), "acompletion")
    assert list(handler._calls) == [data["litellm_call_id"]]  # older than the memory: gone


def test_synchronous_calls_are_not_charged_and_say_so(
    kit: bk.BudgetKit, registered: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    register(registered, BudgetkitCallback(kit))
    litellm.completion(
        model=MODEL,
        messages=MESSAGES,
        mock_response="Hi!",
        metadata={"budgetkit_scope": {"organization_id": ORG}},
    )
    for _ in range(250):  # LiteLLM may log from a thread of its own
        if "synchronous LiteLLM calls are not charged" in caplog.text:
            break
        threading.Event().wait(0.02)
    assert "synchronous LiteLLM calls are not charged" in caplog.text
