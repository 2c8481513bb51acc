"""The integration recipes in examples/, run end to end against both tiers with fake SDKs.

No network and no provider SDK: the fakes below return objects shaped like the SDKs' own
(``.usage.prompt_tokens``, ``.usage.prompt_tokens_details.cached_tokens``, Anthropic's
``.usage.cache_read_input_tokens``, ...). Every amount asserted comes from the shipped price
table: gpt-4.1 at 2.00 in / 0.50 cache-read / 8.00 out, claude-sonnet-4 at 3.00 in / 0.30
cache-read / 3.75 cache-write / 15.00 out (USD per 1M tokens).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from support import ManualClock, assert_invariant

import budgetkit as bk
import budgetkit.sync as bk_sync

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ORG = "org_x"


def load_example(name: str) -> ModuleType:
    """Import examples/<name>.py (not a package) as ``examples_<name>``."""
    module_name = f"examples_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


openai_worker = load_example("openai_worker")
anthropic_worker = load_example("anthropic_worker")
litellm_callback = load_example("litellm_callback")
celery_task = load_example("celery_task")
agent_tool = load_example("agent_tool")


# ================================================================================================
# Fake SDK objects
# ================================================================================================

Script = Callable[[int, dict[str, Any]], Any]


def openai_response(
    n: int,
    *,
    prompt: int = 12_000,
    cached: int = 8_000,
    completion: int = 800,
    model: str = "gpt-4.1-2025-04-14",
    content: str | None = "ok",
    tool_calls: list[Any] | None = None,
) -> SimpleNamespace:
    """A Chat Completions response. Default usage: 4,000 x 2.00 + 8,000 x 0.50 + 800 x 8.00
    = 18,400 per 1M → 0.0184 usd, 12,800 tokens, 12.8 credits."""
    return SimpleNamespace(
        id=f"chatcmpl-{n}",
        object="chat.completion",
        model=model,
        usage=SimpleNamespace(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            prompt_tokens_details=SimpleNamespace(cached_tokens=cached),
        ),
        choices=[
            SimpleNamespace(
                index=0,
                finish_reason="tool_calls" if tool_calls else "stop",
                message=SimpleNamespace(role="assistant", content=content, tool_calls=tool_calls),
            )
        ],
    )


def anthropic_message(n: int, *, model: str = "claude-sonnet-4-20250514") -> SimpleNamespace:
    """A Messages API reply: 1,500 x 3.00 + 20,000 x 0.30 + 2,000 x 3.75 + 600 x 15.00
    = 27,000 per 1M → 0.027 usd, 24,100 tokens."""
    return SimpleNamespace(
        id=f"msg_{n}",
        type="message",
        role="assistant",
        model=model,
        content=[SimpleNamespace(type="text", text=f"answer {n}")],
        stop_reason="end_turn",
        usage=SimpleNamespace(
            input_tokens=1_500,
            output_tokens=600,
            cache_read_input_tokens=20_000,
            cache_creation_input_tokens=2_000,
        ),
    )


class _Scripted:
    """Records every request; reply n (1-based) is ``script(n, request)``, raised if an
    exception."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.calls: list[dict[str, Any]] = []

    def reply(self, request: dict[str, Any]) -> Any:
        self.calls.append(request)
        result = self.script(len(self.calls), request)
        if isinstance(result, BaseException):
            raise result
        return result


class FakeAsyncOpenAI(_Scripted):
    """``await client.chat.completions.create(**request)``."""

    def __init__(self, script: Script = lambda n, _: openai_response(n)) -> None:
        super().__init__(script)

        async def create(**request: Any) -> Any:
            return self.reply(request)

        self.chat = SimpleNamespace(completions=SimpleNamespace(create=create))


class FakeOpenAI(_Scripted):
    """The blocking ``client.chat.completions.create(**request)``."""

    def __init__(self, script: Script = lambda n, _: openai_response(n)) -> None:
        super().__init__(script)
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self.reply_kw))

    def reply_kw(self, **request: Any) -> Any:
        return self.reply(request)


class FakeAsyncAnthropic(_Scripted):
    """``await client.messages.create(**request)``."""

    def __init__(self, script: Script = lambda n, _: anthropic_message(n)) -> None:
        super().__init__(script)

        async def create(**request: Any) -> Any:
            return self.reply(request)

        self.messages = SimpleNamespace(create=create)


# ================================================================================================
# Fixtures and helpers
# ================================================================================================


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest_asyncio.fixture
async def kit(redis: Redis, clock: ManualClock) -> AsyncIterator[bk.BudgetKit]:
    yield bk.BudgetKit(redis, clock=clock)


def scope(session: str = "sess_1", **levels: str) -> bk.Scope:
    return bk.Scope(organization_id=ORG, session_id=session, **levels)


async def entries(kit: bk.BudgetKit, budget: bk.Budget) -> list[bk.LedgerEntry]:
    """The budget's ledger, oldest first."""
    return list(reversed(await kit.ledger(budget.organization_id, budget.id)))


async def balance(kit: bk.BudgetKit, budget: bk.Budget) -> float:
    return (await kit.get_budget(budget.organization_id, budget.id)).balance


async def available(kit: bk.BudgetKit, where: bk.Scope) -> list[float]:
    """Balance minus outstanding holds, per budget of the scope (check_tool's view)."""
    return [summary.balance for summary in (await kit.check_tool(where)).budgets]


# ================================================================================================
# OpenAI worker
# ================================================================================================


def test_openai_estimate_prices_the_worst_case() -> None:
    messages = [{"role": "user", "content": "x" * 40}]  # 10 tokens + 4 of framing
    # 14 x 2.00 + 1,000 x 8.00 = 8,028 per 1M
    assert openai_worker.estimate("gpt-4.1", messages, 1_000) == {
        "usd": Decimal("0.008028"),
        "tokens": Decimal(1_014),
        "credits": Decimal("1.014"),
    }


async def test_openai_worker_commits_real_usage_until_a_reservation_is_denied(
    kit: bk.BudgetKit, capsys: pytest.CaptureFixture[str]
) -> None:
    usd = await kit.create_budget(ORG, "session", "sess_1", "usd", 0.05)
    tokens = await kit.create_budget(ORG, "user", "usr_1", "tokens", 1_000_000)
    credits = await kit.create_budget(ORG, "org", ORG, "credits", 100)
    where = scope(user_id="usr_1")
    client = FakeAsyncOpenAI()
    prompts = [f"Summarize document {n}." for n in range(5)]

    run = await openai_worker.run_worker(kit, where, client, prompts, max_tokens=2_000)

    # Two calls of 0.0184 leave 0.0132 usd; the third reservation needs 2,010 tokens' worth
    # (10 x 2.00 + 2,000 x 8.00 → 0.01602 usd): denied, and the model is not called.
    assert len(client.calls) == 2
    assert [r.id for r in run.responses] == ["chatcmpl-1", "chatcmpl-2"]
    assert client.calls[0]["model"] == "gpt-4.1" and client.calls[0]["max_tokens"] == 2_000
    assert client.calls[0]["messages"] == [{"role": "user", "content": "Summarize document 0."}]
    assert run.stopped is not None and run.stopped.error_code == "budget_insufficient"
    assert run.stopped.message == (
        "Budget insufficient. 0.02 usd requested, 0.01 usd available of the 0.05 usd limit."
    )
    assert capsys.readouterr().out == f"budget stop: {run.stopped.message}\n"

    assert await balance(kit, usd) == 0.0132
    assert await balance(kit, tokens) == 974_400
    assert await balance(kit, credits) == 74.4
    assert await available(kit, where) == [0.0132, 974_400, 74.4]  # no hold left behind
    for budget, amount in ((usd, 0.0184), (tokens, 12_800), (credits, 12.8)):
        ledger = await entries(kit, budget)
        assert [e.amount for e in ledger] == [amount, amount]
        assert [e.ref_id for e in ledger] == ["chatcmpl-1", "chatcmpl-2"]
        assert {(e.meter_source, e.ref_type, e.session_id) for e in ledger} == {
            ("llm_tokens", "llm_generation", "sess_1")
        }
    await assert_invariant(kit, ORG, usd.id, 0.05)
    await assert_invariant(kit, ORG, tokens.id, 1_000_000)


async def test_openai_worker_stops_when_a_call_exhausts_the_budget(
    kit: bk.BudgetKit, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens = await kit.create_budget(ORG, "session", "sess_1", "tokens", 20_000)
    client = FakeAsyncOpenAI()
    prompts = [f"Summarize document {n}." for n in range(5)]

    # 2,010-token holds fit twice; the real 12,800-token calls overshoot on the second one.
    run = await openai_worker.run_worker(kit, scope(), client, prompts, max_tokens=2_000)
    assert len(client.calls) == 2
    assert run.stopped is not None and run.stopped.error_code == "budget_exhausted"
    assert capsys.readouterr().out.startswith("budget stop: Budget exhausted. 25600.00 tokens")
    assert await balance(kit, tokens) == -5_600  # usage that happened is never dropped
    assert [e.amount for e in await entries(kit, tokens)] == [12_800, 12_800]

    again = await openai_worker.run_worker(kit, scope(), client, prompts, max_tokens=2_000)
    assert len(client.calls) == 2  # exhausted: denied before the model is called
    assert again.responses == [] and again.stopped is not None
    assert again.stopped.error_code == "budget_exhausted"
    await assert_invariant(kit, ORG, tokens.id, 20_000)


async def test_openai_worker_releases_the_hold_when_the_call_fails(kit: bk.BudgetKit) -> None:
    usd = await kit.create_budget(ORG, "session", "sess_1", "usd", 0.05)
    client = FakeAsyncOpenAI(lambda n, _: RuntimeError("rate limited"))
    with pytest.raises(RuntimeError, match="rate limited"):
        await openai_worker.run_worker(kit, scope(), client, ["hello"])
    assert len(client.calls) == 1
    assert await available(kit, scope()) == [0.05]  # the hold is gone, not left to expire
    assert await entries(kit, usd) == []
    assert (await kit.reserve(scope(), {"usd": 0.05})).granted


async def test_openai_worker_charges_a_call_that_outlived_its_hold(
    kit: bk.BudgetKit, clock: ManualClock
) -> None:
    usd = await kit.create_budget(ORG, "session", "sess_1", "usd", 0.05)

    def slow(n: int, _: dict[str, Any]) -> Any:
        clock.advance(seconds=openai_worker.HOLD_TTL_S + 1)  # the hold expires mid-call
        return openai_response(n)

    response, verdict = await openai_worker.call_with_budget(
        kit, scope(), FakeAsyncOpenAI(slow), [{"role": "user", "content": "hi"}]
    )
    assert response.id == "chatcmpl-1" and verdict.action == "continue"
    assert [e.amount for e in await entries(kit, usd)] == [0.0184]  # charged once, by debit
    assert await available(kit, scope()) == [0.0316]


async def test_openai_main_runs_the_demo_until_the_budget_stops_it(
    kit: bk.BudgetKit, capsys: pytest.CaptureFixture[str]
) -> None:
    client = FakeAsyncOpenAI()
    assert await openai_worker.main(kit, client) == 0
    # 0.05 usd: 0.0316, 0.0132, then a third call (its 400-token hold fits) → -0.0052: stop.
    assert len(client.calls) == 3
    out = capsys.readouterr().out
    assert "budget stop: Budget exhausted." in out and out.endswith("3 calls made\n")
    [budget] = await kit.list_budgets("org_demo")
    assert budget.balance == -0.0052 and budget.status == "exhausted"
    assert [e.amount for e in await entries(kit, budget)] == [0.0184] * 3


# ================================================================================================
# Anthropic worker
# ================================================================================================


async def test_anthropic_worker_commits_real_usage_until_a_reservation_is_denied(
    kit: bk.BudgetKit, capsys: pytest.CaptureFixture[str]
) -> None:
    usd = await kit.create_budget(ORG, "session", "sess_1", "usd", 0.06)
    tokens = await kit.create_budget(ORG, "user", "usr_1", "tokens", 100_000)
    where = scope(user_id="usr_1")
    client = FakeAsyncAnthropic()

    run = await anthropic_worker.run_worker(
        kit, where, client, ["Question one?", "Question two?", "Question three?"], system="Brief."
    )

    # 0.06 - 2 x 0.027 = 0.006 usd left; a third call reserves (~13 + 1,024 tokens) > 0.0154.
    assert len(client.calls) == 2
    assert client.calls[0] == {
        "model": "claude-sonnet-4-20250514",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "Question one?"}],
        "system": "Brief.",
    }
    assert [anthropic_worker.text_of(m) for m in run.messages] == ["answer 1", "answer 2"]
    assert run.stopped is not None and run.stopped.error_code == "budget_insufficient"
    assert capsys.readouterr().out == f"budget stop: {run.stopped.message}\n"
    assert await balance(kit, usd) == 0.006
    assert await balance(kit, tokens) == 51_800
    assert await available(kit, where) == [0.006, 51_800]
    usd_ledger = await entries(kit, usd)
    assert [(e.amount, e.ref_id) for e in usd_ledger] == [(0.027, "msg_1"), (0.027, "msg_2")]
    assert [e.amount for e in await entries(kit, tokens)] == [24_100, 24_100]
    await assert_invariant(kit, ORG, usd.id, 0.06)


async def test_anthropic_worker_releases_the_hold_when_the_call_fails(kit: bk.BudgetKit) -> None:
    await kit.create_budget(ORG, "session", "sess_1", "usd", 0.06)
    client = FakeAsyncAnthropic(lambda n, _: ConnectionError("overloaded"))
    with pytest.raises(ConnectionError):
        await anthropic_worker.run_worker(kit, scope(), client, ["hi"])
    assert await available(kit, scope()) == [0.06]


async def test_anthropic_main_runs_the_demo_until_the_budget_stops_it(
    kit: bk.BudgetKit, capsys: pytest.CaptureFixture[str]
) -> None:
    client = FakeAsyncAnthropic()
    assert await anthropic_worker.main(kit, client) == 0
    # 0.05 usd: 0.023, then -0.004 (the second 400-token hold, ~0.0061, fit): stop.
    assert len(client.calls) == 2
    assert all(call["system"] == "You are a concise tutor." for call in client.calls)
    out = capsys.readouterr().out
    assert "budget stop: Budget exhausted." in out and out.endswith("2 calls made\n")
    [budget] = await kit.list_budgets("org_demo")
    assert budget.balance == -0.004


# ================================================================================================
# LiteLLM (budgetkit.integrations.litellm; its own tests: tests/test_integration_litellm.py)
# ================================================================================================


@pytest.mark.filterwarnings("ignore:Items? .* using the `ReadOnly` qualifier:UserWarning")
async def test_litellm_example_streams_until_a_reservation_is_denied(
    kit: bk.BudgetKit, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("litellm")  # the dev extra installs it: CI never skips
    assert await litellm_callback.main(kit, mock=True) == 0  # LiteLLM's offline mock answers

    out = capsys.readouterr().out.splitlines()
    [budget] = await kit.list_budgets("org_demo")
    ledger = await entries(kit, budget)
    # Each call holds 2,000 output tokens' worth (~0.016 usd) and is charged what it streamed
    # (~0.008 usd): five fit in 0.05 usd, the sixth reservation is denied.
    assert len(ledger) == 5 and len(out) == 6
    assert [line.rsplit(", ", 1)[1] for line in out[:5]] == [f"{e.amount} usd" for e in ledger]
    assert out[5] == (
        "blocked: Budget insufficient. 0.02 usd requested, 0.01 usd available of the 0.05 usd "
        "limit."
    )
    assert budget.balance == round(0.05 - sum(e.amount for e in ledger), 6)
    assert await available(
        kit, bk.Scope(organization_id="org_demo", session_id=budget.subject_id)
    ) == [budget.balance]  # no hold left behind


# ================================================================================================
# Celery task with the blocking client
# ================================================================================================


@pytest.fixture(
    params=[pytest.param("real", marks=pytest.mark.real, id="real"), pytest.param("fake")]
)
def sync_kit(request: pytest.FixtureRequest, clock: ManualClock) -> Iterator[bk_sync.BudgetKit]:
    """The blocking client on a real server (``redis_server_url``) and on fakeredis."""
    if request.param == "real":
        url = request.getfixturevalue("redis_server_url")
        made = bk_sync.BudgetKit.from_url(url, clock=clock)
    else:
        import fakeredis

        server = fakeredis.FakeServer(version=(7, 0))
        made = bk_sync.BudgetKit(lambda: fakeredis.FakeAsyncRedis(server=server), clock=clock)
    yield made
    made.close()


def test_celery_task_charges_with_the_blocking_client_and_refuses_once_exhausted(
    sync_kit: bk_sync.BudgetKit, capsys: pytest.CaptureFixture[str]
) -> None:
    org = f"org_{uuid.uuid4().hex}"  # the real server is shared: a fresh organization
    usd = sync_kit.create_budget(org, "session", "sess_c", "usd", 0.03)
    where = {"organization_id": org, "session_id": "sess_c"}
    client = FakeOpenAI()
    text = "Redis keeps every balance; Lua debits the hierarchy."

    first = celery_task.summarize(where, text, kit=sync_kit, client=client)
    second = celery_task.summarize(where, text, kit=sync_kit, client=client)
    third = celery_task.summarize(where, text, kit=sync_kit, client=client)

    assert first == {
        "status": "ok",
        "summary": "ok",
        "response_id": "chatcmpl-1",
        "action": "continue",
        "message": None,
        "charged": {usd.id: 0.0184},
    }
    assert second["status"] == "ok" and second["action"] == "stop"  # 0.0116 - 0.0184 < 0
    assert third["status"] == "stopped" and third["error_code"] == "budget_exhausted"
    assert len(client.calls) == 2  # the refused task never called the model
    assert client.calls[0]["max_tokens"] == 512 and client.calls[0]["model"] == "gpt-4.1"
    assert capsys.readouterr().out == f"budget stop: {third['message']}\n"
    json.dumps([first, second, third])  # Celery results must serialize
    assert sync_kit.get_budget(org, usd.id).balance == -0.0068
    ledger = sync_kit.ledger(org, usd.id)
    assert [(e.amount, e.ref_id) for e in reversed(ledger)] == [
        (0.0184, "chatcmpl-1"),
        (0.0184, "chatcmpl-2"),
    ]
    tool = sync_kit.check_tool(bk.Scope(**where))
    assert tool.status == "exhausted" and tool.budgets[0].balance == -0.0068  # no hold left


def test_celery_task_registration_follows_the_celery_install() -> None:
    try:
        import celery  # noqa: F401
    except ImportError:
        assert celery_task.summarize_task is None
    else:  # pragma: no cover - celery is not a test dependency
        assert celery_task.summarize_task.name == "budgetkit_examples.summarize"


# ================================================================================================
# Agent tool
# ================================================================================================


def tool_call(call_id: str) -> SimpleNamespace:
    return SimpleNamespace(
        id=call_id,
        type="function",
        function=SimpleNamespace(name="check_budget", arguments="{}"),
    )


def test_check_budget_tool_schema_is_openai_function_calling() -> None:
    tool = agent_tool.CHECK_BUDGET_TOOL
    assert tool["type"] == "function"
    function = tool["function"]
    assert function["name"] == "check_budget" and function["strict"] is True
    assert function["parameters"] == {
        "type": "object",
        "properties": {},
        "required": [],
        "additionalProperties": False,
    }
    assert json.loads(json.dumps(tool)) == tool


async def test_agent_reads_its_budget_through_the_tool_and_pays_each_turn(
    kit: bk.BudgetKit,
) -> None:
    usd = await kit.create_budget(ORG, "session", "sess_1", "usd", 1)
    tokens = await kit.create_budget(ORG, "user", "usr_1", "tokens", 100_000)
    where = scope(user_id="usr_1")

    def script(n: int, _: dict[str, Any]) -> Any:
        if n == 1:  # 1,000 x 2.00 + 50 x 8.00 → 0.0024 usd, 1,050 tokens
            return openai_response(
                1, prompt=1_000, cached=0, completion=50, content=None, tool_calls=[tool_call("c1")]
            )
        # 1,200 x 2.00 + 300 x 8.00 → 0.0048 usd, 1,500 tokens
        return openai_response(2, prompt=1_200, cached=0, completion=300, content="The plan.")

    client = FakeAsyncOpenAI(script)
    run = await agent_tool.run_agent(kit, where, client, "Plan a survey.")

    assert run.answer == "The plan." and run.stopped is None
    assert len(client.calls) == 2
    assert all(call["tools"] == [agent_tool.CHECK_BUDGET_TOOL] for call in client.calls)
    [output] = run.tool_outputs
    assert json.loads(output) == {
        "status": "active",
        "budgets": [
            {
                "currency": "usd",
                "limit": 1.0,
                "balance": 0.9976,
                "percent_remaining": 99.8,
                "status": "active",
            },
            {
                "currency": "tokens",
                "limit": 100_000.0,
                "balance": 98_950.0,
                "percent_remaining": 99.0,
                "status": "active",
            },
        ],
        "hint": "99% of budget remaining.",
    }
    # The second request carries the tool call and the JSON the model saw.
    second = client.calls[1]["messages"]
    assert second[2] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "check_budget", "arguments": "{}"},
            }
        ],
    }
    assert second[3] == {"role": "tool", "tool_call_id": "c1", "content": output}
    assert await balance(kit, usd) == 0.9928
    assert await balance(kit, tokens) == 97_450
    assert [e.amount for e in await entries(kit, usd)] == [0.0024, 0.0048]
    assert [e.amount for e in await entries(kit, tokens)] == [1_050, 1_500]


async def test_agent_is_stopped_before_the_model_is_called_when_exhausted(
    kit: bk.BudgetKit, capsys: pytest.CaptureFixture[str]
) -> None:
    usd = await kit.create_budget(ORG, "session", "sess_1", "usd", 0.01)
    await kit.debit(scope(), {"usd": 0.01})
    client = FakeAsyncOpenAI()

    run = await agent_tool.run_agent(kit, scope(), client, "Plan a survey.")

    assert client.calls == [] and run.answer is None
    assert run.stopped is not None and run.stopped.error_code == "budget_exhausted"
    assert capsys.readouterr().out == f"budget stop: {run.stopped.message}\n"
    seen = json.loads(await agent_tool.check_budget(kit, scope()))
    assert seen["status"] == "exhausted" and seen["hint"] == run.stopped.message
    assert seen["budgets"] == [
        {
            "currency": "usd",
            "limit": 0.01,
            "balance": 0.0,
            "percent_remaining": 0.0,
            "status": "exhausted",
        }
    ]
    assert await balance(kit, usd) == 0


async def test_agent_main_runs_the_demo(
    kit: bk.BudgetKit, capsys: pytest.CaptureFixture[str]
) -> None:
    def script(n: int, _: dict[str, Any]) -> Any:
        if n == 1:
            return openai_response(1, content=None, tool_calls=[tool_call("c1")])
        return openai_response(n, content="Step 1, 2, 3.")

    client = FakeAsyncOpenAI(script)
    assert await agent_tool.main(kit, client) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith('check_budget -> {"status":"active"')
    assert out[-1] == "Step 1, 2, 3."
    [budget] = await kit.list_budgets("org_demo")
    assert budget.balance == 0.0632  # 0.10 - 2 x 0.0184


# ================================================================================================
# examples/README.md stays in step with the files
# ================================================================================================

RECIPES = ("openai_worker", "anthropic_worker", "litellm_callback", "celery_task", "agent_tool")


def test_every_recipe_is_linked_documented_and_runnable() -> None:
    readme = (EXAMPLES / "README.md").read_text()
    on_disk = {path.stem for path in EXAMPLES.glob("*.py")}
    assert on_disk == set(RECIPES)
    for name in RECIPES:
        module = load_example(name)
        assert f"]({name}.py)" in readme, name
        assert module.__doc__ and "What it shows" in module.__doc__, name
        assert callable(module.main), name


async def test_readme_tool_output_is_what_check_budget_returns(kit: bk.BudgetKit) -> None:
    readme = (EXAMPLES / "README.md").read_text()
    shown = readme.split("```json\n", 1)[1].split("\n```", 1)[0]
    await kit.create_budget(ORG, "session", "sess_1", "usd", 1)
    await kit.debit(scope(), {"usd": 0.0024})
    assert await agent_tool.check_budget(kit, scope()) == shown
