"""An agent tool that lets the model see its own budget: ``check_budget`` → ``kit.check_tool``.

What it shows: ``CHECK_BUDGET_TOOL`` is the tool's schema in OpenAI's function-calling format
(Chat Completions ``tools=[...]``); ``check_budget(kit, scope)`` returns the JSON the model
sees — ``kit.check_tool(scope)``'s ``BudgetToolResponse``: overall ``status``, one summary per
budget (currency, limit, balance, percent_remaining, status) and a ``hint``. ``run_agent`` is a
small tool-calling loop that also enforces the budget on every model call (reserve → call →
record_usage), so the model can plan with the tool while the budget still has the last word.

The tool takes no arguments on purpose: the scope is the caller's (server-side) session, never
something the model chooses. For Anthropic's Messages API the same schema is
``{"name": ..., "description": ..., "input_schema": PARAMETERS}``.

Run it (needs ``pip install openai``, ``OPENAI_API_KEY`` and a Redis server)::

    REDIS_URL=redis://127.0.0.1:6379/0 python examples/agent_tool.py
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import budgetkit as bk

MODEL = "gpt-4.1"
MAX_TOKENS = 1024
HOLD_TTL_S = 120
CURRENCIES = ("usd", "tokens", "credits")

PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {},
    "required": [],
    "additionalProperties": False,
}

CHECK_BUDGET_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "check_budget",
        "description": (
            "Check how much of your budget remains. Returns JSON: status (active, warning, "
            "paused, exhausted or no_budgets), budgets (currency, limit, balance, "
            "percent_remaining, status for each budget that applies to you) and a hint. Call "
            "it before starting expensive work; when the status is not active or little "
            "remains, wrap up with what you have."
        ),
        "parameters": PARAMETERS,
        "strict": True,
    },
}

SYSTEM_PROMPT = (
    "You are a research agent with a spending budget. Use the check_budget tool before "
    "expensive steps and finish early when the budget runs low."
)


async def check_budget(kit: bk.BudgetKit, scope: bk.Scope) -> str:
    """The tool's output: ``kit.check_tool(scope)`` as the JSON string the model sees."""
    return (await kit.check_tool(scope)).model_dump_json()


async def run_tool(kit: bk.BudgetKit, scope: bk.Scope, name: str, arguments: str) -> str:
    """Execute one tool call of the model (arguments are ignored: the scope is ours)."""
    if name == "check_budget":
        return await check_budget(kit, scope)
    return json.dumps({"error": f"unknown tool {name!r}"})


def estimate(
    model: str, messages: Sequence[Mapping[str, Any]], max_tokens: int
) -> dict[str, Decimal]:
    """The worst case of the next call: ~4 characters per prompt token (+4 per message, +100
    for the tool schema), all of ``max_tokens``."""
    prompt = 100 + sum(math.ceil(len(str(m.get("content") or "")) / 4) + 4 for m in messages)
    usage = bk.LlmUsage(model=model, input_tokens=prompt, output_tokens=max_tokens)
    return bk.meter_amounts(usage, currencies=CURRENCIES)


def assistant_message(message: Any) -> dict[str, Any]:
    """The assistant turn to send back with the next request (tool calls included)."""
    turn: dict[str, Any] = {"role": "assistant", "content": message.content}
    if message.tool_calls:
        turn["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.function.name, "arguments": call.function.arguments},
            }
            for call in message.tool_calls
        ]
    return turn


@dataclass
class AgentRun:
    """The conversation, the final answer (if reached) and the stop verdict (if stopped)."""

    messages: list[dict[str, Any]]
    answer: str | None = None
    stopped: bk.BudgetCheckResult | None = None
    tool_outputs: list[str] = field(default_factory=list)


async def run_agent(
    kit: bk.BudgetKit,
    scope: bk.Scope,
    client: Any,
    task: str,
    *,
    model: str = MODEL,
    max_tokens: int = MAX_TOKENS,
    max_turns: int = 8,
) -> AgentRun:
    """A tool-calling loop: each model call is reserved and charged; check_budget is served
    from budgetkit; the loop ends with an answer, a budget stop, or after max_turns."""
    run = AgentRun(
        messages=[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": task}]
    )
    for _ in range(max_turns):
        hold = await kit.reserve(
            scope, estimate(model, run.messages, max_tokens), ttl_seconds=HOLD_TTL_S
        )
        if not hold.granted:
            print(f"budget {hold.check.action}: {hold.check.message}")
            run.stopped = hold.check
            return run
        try:
            response = await client.chat.completions.create(
                model=model, messages=run.messages, tools=[CHECK_BUDGET_TOOL], max_tokens=max_tokens
            )
        except BaseException:
            await kit.release(hold)
            raise
        usage = bk.from_openai_usage(response)
        try:
            result = await kit.record_usage(
                scope, usage, hold=hold, ref_id=response.id, idempotency_key=response.id
            )
        except bk.HoldExpired:  # the call outlived its hold: still charge what was used
            result = await kit.record_usage(
                scope, usage, ref_id=response.id, idempotency_key=response.id
            )
        message = response.choices[0].message
        run.messages.append(assistant_message(message))
        if result.check.should_stop():
            print(f"budget stop: {result.check.message}")
            run.stopped = result.check
            return run
        if not message.tool_calls:
            run.answer = message.content
            return run
        for call in message.tool_calls:
            output = await run_tool(kit, scope, call.function.name, call.function.arguments)
            run.tool_outputs.append(output)
            run.messages.append({"role": "tool", "tool_call_id": call.id, "content": output})
    return run


async def main(kit: bk.BudgetKit | None = None, client: Any = None) -> int:
    """Demo: a fresh session with a 0.10 usd budget and one agent task."""
    if client is None:
        from openai import AsyncOpenAI  # lazy: budgetkit does not depend on the SDK

        client = AsyncOpenAI()
    own_kit = kit is None
    if kit is None:
        kit = bk.BudgetKit.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    try:
        session = f"sess_{uuid.uuid4().hex}"
        scope = bk.Scope(organization_id="org_demo", session_id=session)
        await kit.create_budget("org_demo", "session", session, "usd", 0.10)
        run = await run_agent(kit, scope, client, "Plan a three-step survey of vector databases.")
        for output in run.tool_outputs:
            print(f"check_budget -> {output}")
        print(run.answer if run.answer is not None else "(no answer)")
    finally:
        if own_kit:
            await kit.aclose()
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
