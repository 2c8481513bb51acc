"""An OpenAI worker loop under budgetkit: reserve → call → record_usage (commit) → repeat.

What it shows: before each Chat Completions call the worker reserves an estimate (the prompt's
approximate size plus ``max_tokens``, priced with ``bk.meter_amounts``), so concurrent workers
can never overspend; after the call it charges the real usage with
``kit.record_usage(scope, bk.from_openai_usage(response), hold=hold)``, which commits the hold
in the same round trip. A failed call releases the hold. The loop stops, printing the reason,
when a reservation is denied or when the budget says stop (or pause) after a call.

Run it (needs ``pip install openai``, ``OPENAI_API_KEY`` and a Redis server)::

    REDIS_URL=redis://127.0.0.1:6379/0 python examples/openai_worker.py

The SDK is imported lazily, only by ``main`` when no client is given: budgetkit does not
depend on it, and the tests pass a fake ``AsyncOpenAI``.
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

MODEL = "gpt-4.1"
MAX_TOKENS = 1024
HOLD_TTL_S = 120
#: Metered by both the estimate and record_usage (record_usage's default too).
CURRENCIES = ("usd", "tokens", "credits")


def approx_prompt_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """A cheap upper-ish estimate of the prompt size: ~4 characters per token, plus 4 tokens
    of framing per message. Use a real tokenizer (tiktoken) when the estimate matters."""
    total = 0
    for message in messages:
        content = message.get("content") or ""
        total += math.ceil(len(str(content)) / 4) + 4
    return total


def estimate(
    model: str, messages: Sequence[Mapping[str, Any]], max_tokens: int
) -> dict[str, Decimal]:
    """The amounts to reserve: the call as if it used the whole ``max_tokens``."""
    usage = bk.LlmUsage(
        model=model, input_tokens=approx_prompt_tokens(messages), output_tokens=max_tokens
    )
    return bk.meter_amounts(usage, currencies=CURRENCIES)


@dataclass
class WorkerRun:
    """What a worker loop did: the responses it got, and why it stopped early (if it did)."""

    responses: list[Any] = field(default_factory=list)
    stopped: bk.BudgetCheckResult | None = None


async def call_with_budget(
    kit: bk.BudgetKit,
    scope: bk.Scope,
    client: Any,
    messages: list[dict[str, Any]],
    *,
    model: str = MODEL,
    max_tokens: int = MAX_TOKENS,
) -> tuple[Any | None, bk.BudgetCheckResult]:
    """One budgeted call. Returns ``(response, verdict)``; ``response`` is None when the
    reservation was denied (``verdict`` says why). Raises what the SDK raises (the hold is
    released first)."""
    hold = await kit.reserve(scope, estimate(model, messages, max_tokens), ttl_seconds=HOLD_TTL_S)
    if not hold.granted:
        return None, hold.check
    try:
        response = await client.chat.completions.create(
            model=model, messages=messages, max_tokens=max_tokens
        )
    except BaseException:
        await kit.release(hold)  # nothing was used: give the capacity back now, not at expiry
        raise
    usage = bk.from_openai_usage(response)
    try:
        result = await kit.record_usage(
            scope, usage, hold=hold, ref_id=response.id, idempotency_key=response.id
        )
    except bk.HoldExpired:
        # The call outlived the hold: charge the usage anyway (never dropped), without it.
        result = await kit.record_usage(
            scope, usage, ref_id=response.id, idempotency_key=response.id
        )
    return response, result.check


async def run_worker(
    kit: bk.BudgetKit,
    scope: bk.Scope,
    client: Any,
    prompts: Iterable[str],
    *,
    model: str = MODEL,
    max_tokens: int = MAX_TOKENS,
) -> WorkerRun:
    """Answers each prompt in turn until the prompts run out or the budget says stop."""
    run = WorkerRun()
    for prompt in prompts:
        messages = [{"role": "user", "content": prompt}]
        response, verdict = await call_with_budget(
            kit, scope, client, messages, model=model, max_tokens=max_tokens
        )
        if response is not None:
            run.responses.append(response)
        if response is None or verdict.should_stop() or verdict.should_pause():
            print(f"budget {verdict.action}: {verdict.message}")
            run.stopped = verdict
            break
    return run


async def main(kit: bk.BudgetKit | None = None, client: Any = None) -> int:
    """Demo: a fresh session with a 0.05 usd budget, then the worker loop until it stops."""
    if client is None:
        from openai import AsyncOpenAI  # lazy: budgetkit does not depend on the SDK

        client = AsyncOpenAI()
    own_kit = kit is None
    if kit is None:
        kit = bk.BudgetKit.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    try:
        session = f"sess_{uuid.uuid4().hex}"
        scope = bk.Scope(organization_id="org_demo", session_id=session)
        await kit.create_budget("org_demo", "session", session, "usd", 0.05)
        prompts = [f"In one paragraph, explain distributed-systems idea #{n}." for n in range(20)]
        run = await run_worker(kit, scope, client, prompts, max_tokens=400)
        for response in run.responses:
            print(f"{response.id}: {response.usage.completion_tokens} completion tokens")
        print(f"{len(run.responses)} calls made")
    finally:
        if own_kit:
            await kit.aclose()
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
