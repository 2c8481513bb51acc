"""An Anthropic worker loop under budgetkit: reserve → messages.create → record_usage → repeat.

What it shows: the same overspend-proof loop as ``openai_worker.py`` for the Messages API. The
worker reserves the call's worst case (approximate prompt + ``max_tokens``, priced with
``bk.meter_amounts``), calls the model, and charges the real usage with
``kit.record_usage(scope, bk.from_anthropic_usage(message), hold=hold)``: Anthropic's
``input_tokens``, ``cache_read_input_tokens``, ``cache_creation_input_tokens`` and
``output_tokens`` are priced at their own rates (cache writes at the 5-minute write rate). A
failed call releases the hold; a denied reservation or a stop/pause verdict ends the loop with
the reason printed.

Run it (needs ``pip install anthropic``, ``ANTHROPIC_API_KEY`` and a Redis server)::

    REDIS_URL=redis://127.0.0.1:6379/0 python examples/anthropic_worker.py

When streaming, pass the final message (``await stream.get_final_message()``) to
``from_anthropic_usage``. The SDK is imported lazily by ``main`` only; tests pass a fake client.
"""

from __future__ import annotations

import asyncio
import math
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import budgetkit as bk

MODEL = "claude-sonnet-4-20250514"
MAX_TOKENS = 1024
HOLD_TTL_S = 120
CURRENCIES = ("usd", "tokens", "credits")


def approx_prompt_tokens(system: str, messages: Iterable[Mapping[str, Any]]) -> int:
    """~4 characters per token plus 4 tokens of framing per message (and for the system
    prompt). Anthropic's ``messages.count_tokens`` gives the exact figure, at a round trip."""
    total = math.ceil(len(system) / 4) + 4 if system else 0
    for message in messages:
        total += math.ceil(len(str(message.get("content") or "")) / 4) + 4
    return total


def estimate(
    model: str, system: str, messages: Sequence[Mapping[str, Any]], max_tokens: int
) -> dict[str, Decimal]:
    """The amounts to reserve: the prompt billed as uncached input, plus all of max_tokens."""
    usage = bk.LlmUsage(
        model=model,
        input_tokens=approx_prompt_tokens(system, messages),
        output_tokens=max_tokens,
    )
    return bk.meter_amounts(usage, currencies=CURRENCIES)


@dataclass
class WorkerRun:
    """What a worker loop did: the messages it got, and why it stopped early (if it did)."""

    messages: list[Any] = field(default_factory=list)
    stopped: bk.BudgetCheckResult | None = None


def text_of(message: Any) -> str:
    """The text blocks of a Message, joined."""
    return "".join(block.text for block in message.content if block.type == "text")


async def call_with_budget(
    kit: bk.BudgetKit,
    scope: bk.Scope,
    client: Any,
    messages: list[dict[str, Any]],
    *,
    system: str = "",
    model: str = MODEL,
    max_tokens: int = MAX_TOKENS,
) -> tuple[Any | None, bk.BudgetCheckResult]:
    """One budgeted call: ``(message, verdict)``, message None when the reservation was
    denied. SDK errors propagate after the hold is released."""
    amounts = estimate(model, system, messages, max_tokens)
    hold = await kit.reserve(scope, amounts, ttl_seconds=HOLD_TTL_S)
    if not hold.granted:
        return None, hold.check
    request: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": messages}
    if system:
        request["system"] = system
    try:
        message = await client.messages.create(**request)
    except BaseException:
        await kit.release(hold)
        raise
    usage = bk.from_anthropic_usage(message)
    try:
        result = await kit.record_usage(
            scope, usage, hold=hold, ref_id=message.id, idempotency_key=message.id
        )
    except bk.HoldExpired:  # the call outlived its hold: still charge what was used
        result = await kit.record_usage(scope, usage, ref_id=message.id, idempotency_key=message.id)
    return message, result.check


async def run_worker(
    kit: bk.BudgetKit,
    scope: bk.Scope,
    client: Any,
    prompts: Iterable[str],
    *,
    system: str = "",
    model: str = MODEL,
    max_tokens: int = MAX_TOKENS,
) -> WorkerRun:
    """Answers each prompt in turn until the prompts run out or the budget says stop."""
    run = WorkerRun()
    for prompt in prompts:
        message, verdict = await call_with_budget(
            kit,
            scope,
            client,
            [{"role": "user", "content": prompt}],
            system=system,
            model=model,
            max_tokens=max_tokens,
        )
        if message is not None:
            run.messages.append(message)
        if message is None or verdict.should_stop() or verdict.should_pause():
            print(f"budget {verdict.action}: {verdict.message}")
            run.stopped = verdict
            break
    return run


async def main(kit: bk.BudgetKit | None = None, client: Any = None) -> int:
    """Demo: a fresh session with a 0.05 usd budget, then the worker loop until it stops."""
    if client is None:
        from anthropic import AsyncAnthropic  # lazy: budgetkit does not depend on the SDK

        client = AsyncAnthropic()
    own_kit = kit is None
    if kit is None:
        kit = bk.BudgetKit.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    try:
        session = f"sess_{uuid.uuid4().hex}"
        scope = bk.Scope(organization_id="org_demo", session_id=session)
        await kit.create_budget("org_demo", "session", session, "usd", 0.05)
        prompts = [f"In one paragraph, explain distributed-systems idea #{n}." for n in range(20)]
        run = await run_worker(
            kit, scope, client, prompts, system="You are a concise tutor.", max_tokens=400
        )
        for message in run.messages:
            print(f"{message.id}: {text_of(message)[:60]!r}")
        print(f"{len(run.messages)} calls made")
    finally:
        if own_kit:
            await kit.aclose()
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
