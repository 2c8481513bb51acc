"""``from_openai_usage`` and ``from_anthropic_usage`` on the SDKs' own types, built locally.

The ``openai`` and ``anthropic`` packages (dev extra) validate every object below as the API's
answer would be validated: Chat Completions, streamed usage chunks, the Responses API and its
``response.completed`` event, Anthropic's Message and its stream events. Each usage is then
charged on real Redis and fakeredis. Prices from budgetkit's table: gpt-4.1 at 2.00 in / 0.50
cache read / 8.00 out, claude-sonnet-4 at 3.00 in / 0.30 cache read / 3.75 cache write / 15.00
out (USD per 1M tokens).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis

import budgetkit as bk

openai_types = pytest.importorskip("openai.types")
anthropic_types = pytest.importorskip("anthropic.types")

from anthropic.types import Message, RawMessageDeltaEvent, RawMessageStartEvent  # noqa: E402
from openai.types import CompletionUsage  # noqa: E402
from openai.types.chat import ChatCompletion, ChatCompletionChunk  # noqa: E402
from openai.types.responses import Response, ResponseCompletedEvent  # noqa: E402

ORG = "org_sdk"
GPT = "gpt-4.1-2025-04-14"
CLAUDE = "claude-sonnet-4-20250514"

#: 4,000 x 2.00 + 8,000 x 0.50 + 800 x 8.00 = 18,400 per 1M
OPENAI_USAGE = bk.LlmUsage(
    model=GPT, provider="openai", input_tokens=4_000, output_tokens=800, cache_read_tokens=8_000
)
#: 1,500 x 3.00 + 20,000 x 0.30 + 2,000 x 3.75 + 600 x 15.00 = 27,000 per 1M
ANTHROPIC_USAGE = bk.LlmUsage(
    model=CLAUDE,
    provider="anthropic",
    input_tokens=1_500,
    output_tokens=600,
    cache_read_tokens=20_000,
    cache_creation_tokens=2_000,
)


@pytest_asyncio.fixture
async def kit(redis: Redis) -> AsyncIterator[bk.BudgetKit]:
    yield bk.BudgetKit(redis)


async def charged(kit: bk.BudgetKit, usage: bk.LlmUsage) -> dict[str, float]:
    """What record_usage charges for ``usage``, per currency, on a fresh session's budgets."""
    session = f"s_{usage.model}_{usage.total_tokens}"
    for currency in ("usd", "tokens"):
        await kit.create_budget(ORG, "session", session, currency, 1_000_000)
    scope = bk.Scope(organization_id=ORG, session_id=session)
    result = await kit.record_usage(scope, usage, currencies=("usd", "tokens"))
    return {entry.currency: entry.amount for entry in result.entries}


# ================================================================================================
# OpenAI
# ================================================================================================


def completion_usage(**details: Any) -> CompletionUsage:
    return CompletionUsage.model_validate(
        {
            "prompt_tokens": 12_000,
            "completion_tokens": 800,
            "total_tokens": 12_800,
            "prompt_tokens_details": {"cached_tokens": 8_000, **details},
            "completion_tokens_details": {"reasoning_tokens": 200},
        }
    )


def chat_completion() -> ChatCompletion:
    return ChatCompletion.model_validate(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1_767_225_600,
            "model": GPT,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "ok"},
                }
            ],
            "usage": completion_usage().model_dump(),
        }
    )


def response_api(cache_write_tokens: int = 0) -> Response:
    return Response.model_validate(
        {
            "id": "resp_1",
            "object": "response",
            "created_at": 1_767_225_600,
            "model": GPT,
            "output": [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": {
                "input_tokens": 12_000,
                "input_tokens_details": {
                    "cached_tokens": 8_000,
                    "cache_write_tokens": cache_write_tokens,
                },
                "output_tokens": 800,
                "output_tokens_details": {"reasoning_tokens": 200},
                "total_tokens": 12_800,
            },
        }
    )


async def test_chat_completion_and_its_usage(kit: bk.BudgetKit) -> None:
    response = chat_completion()
    assert bk.from_openai_usage(response) == OPENAI_USAGE
    assert bk.from_openai_usage(response.usage, model=GPT) == OPENAI_USAGE
    assert bk.from_openai_usage(response.model_dump()) == OPENAI_USAGE  # the dict form
    assert await charged(kit, bk.from_openai_usage(response)) == {"usd": 0.0184, "tokens": 12_800}


async def test_streamed_chat_usage_chunk(kit: bk.BudgetKit) -> None:
    """With ``stream_options={"include_usage": True}`` the last chunk carries the usage."""
    last = ChatCompletionChunk.model_validate(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1_767_225_600,
            "model": GPT,
            "choices": [],
            "usage": completion_usage().model_dump(),
        }
    )
    assert bk.from_openai_usage(last) == OPENAI_USAGE
    assert await charged(kit, bk.from_openai_usage(last)) == {"usd": 0.0184, "tokens": 12_800}

    earlier = last.model_copy(update={"usage": None})
    with pytest.raises(bk.InvalidInput, match="no usage found on ChatCompletionChunk"):
        bk.from_openai_usage(earlier)


async def test_responses_api_usage_and_its_completed_event(kit: bk.BudgetKit) -> None:
    response = response_api()
    assert bk.from_openai_usage(response) == OPENAI_USAGE
    assert bk.from_openai_usage(response.usage, model=GPT) == OPENAI_USAGE
    assert bk.from_openai_usage(response.model_dump()) == OPENAI_USAGE
    completed = ResponseCompletedEvent(
        type="response.completed", response=response, sequence_number=42
    )
    assert bk.from_openai_usage(completed) == OPENAI_USAGE  # streaming: the final event
    assert bk.from_openai_usage(completed.model_dump()) == OPENAI_USAGE
    assert await charged(kit, bk.from_openai_usage(completed)) == {"usd": 0.0184, "tokens": 12_800}


def test_openai_cache_writes_get_their_own_bucket() -> None:
    """``cache_write_tokens`` are prompt tokens written to the cache: their own bucket (priced
    at the model's cache-write rate, or its input rate when it has none)."""
    split = {"input_tokens": 3_000, "cache_read_tokens": 8_000, "cache_creation_tokens": 1_000}
    expected = bk.LlmUsage(**{**OPENAI_USAGE.model_dump(), **split})
    assert bk.from_openai_usage(response_api(cache_write_tokens=1_000)) == expected
    chat = chat_completion().model_copy(
        update={"usage": completion_usage(cache_write_tokens=1_000)}
    )
    assert bk.from_openai_usage(chat) == expected
    assert expected.total_tokens == OPENAI_USAGE.total_tokens
    # Never more than the prompt leaves after the cache reads.
    over = response_api(cache_write_tokens=9_000)
    assert bk.from_openai_usage(over).cache_creation_tokens == 4_000
    assert bk.from_openai_usage(over).input_tokens == 0


# ================================================================================================
# Anthropic
# ================================================================================================


def anthropic_message() -> Message:
    return Message.model_validate(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": CLAUDE,
            "content": [{"type": "text", "text": "answer"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": 1_500,
                "output_tokens": 600,
                "cache_read_input_tokens": 20_000,
                "cache_creation_input_tokens": 2_000,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 2_000,
                    "ephemeral_1h_input_tokens": 0,
                },
            },
        }
    )


async def test_anthropic_message_and_its_usage(kit: bk.BudgetKit) -> None:
    message = anthropic_message()
    assert bk.from_anthropic_usage(message) == ANTHROPIC_USAGE
    assert bk.from_anthropic_usage(message.usage, model=CLAUDE) == ANTHROPIC_USAGE
    assert bk.from_anthropic_usage(message.model_dump()) == ANTHROPIC_USAGE
    assert bk.meter_amounts(ANTHROPIC_USAGE, currencies=("usd",)) == {"usd": Decimal("0.027")}
    assert await charged(kit, bk.from_anthropic_usage(message)) == {"usd": 0.027, "tokens": 24_100}


async def test_anthropic_stream_events(kit: bk.BudgetKit) -> None:
    """``message_start`` carries the prompt's usage; the last ``message_delta`` the cumulative
    usage of the whole call."""
    start_message = anthropic_message().model_copy(
        update={"usage": anthropic_message().usage.model_copy(update={"output_tokens": 1})}
    )
    start = RawMessageStartEvent(type="message_start", message=start_message)
    assert bk.from_anthropic_usage(start) == ANTHROPIC_USAGE.model_copy(update={"output_tokens": 1})

    delta = RawMessageDeltaEvent.model_validate(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {
                "input_tokens": 1_500,
                "output_tokens": 600,
                "cache_read_input_tokens": 20_000,
                "cache_creation_input_tokens": 2_000,
            },
        }
    )
    with pytest.raises(bk.InvalidInput, match="model is unknown"):
        bk.from_anthropic_usage(delta)  # a delta names no model
    usage = bk.from_anthropic_usage(delta, model=CLAUDE)
    assert usage == ANTHROPIC_USAGE
    assert await charged(kit, usage) == {"usd": 0.027, "tokens": 24_100}
