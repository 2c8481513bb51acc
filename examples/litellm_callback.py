"""LiteLLM under budgetkit: streamed completions charged per call, the proxy callback to register.

What it shows: ``budgetkit.integrations.litellm`` (``pip install 'budgetkit[litellm]'``) does the
work; this file only uses it.

- SDK: ``budgeted_acompletion(kit, scope, model=..., messages=..., stream=True)`` reserves the
  call's worst case (denied: ``bk.BudgetExceeded``, the model is not called) and returns a stream
  that charges what was streamed however it ends — read to the end, closed early, or cancelled.
  ``main`` streams completions into a 0.05 usd session budget until a reservation is denied.
- Proxy: ``BudgetkitCallback`` reserves in ``async_pre_call_hook`` (denied: HTTP 429 with the
  budget's message), commits the real usage on success keyed by ``litellm_call_id``, releases on
  failure, and charges a stream the client cuts. Register it from a module on the proxy's path::

    # budget_callbacks.py
    import budgetkit as bk
    from budgetkit.integrations.litellm import BudgetkitCallback

    kit = bk.BudgetKit.from_url("redis://127.0.0.1:6379/0")
    budgetkit_handler = BudgetkitCallback(kit, default_organization_id="org_1")

    # config.yaml
    litellm_settings:
      callbacks: budget_callbacks.budgetkit_handler

Run it (a Redis server; ``OPENAI_API_KEY``, or ``MOCK=1`` for LiteLLM's offline mock answers)::

    REDIS_URL=redis://127.0.0.1:6379/0 MOCK=1 python examples/litellm_callback.py
"""

from __future__ import annotations

import asyncio
import os
import uuid

import budgetkit as bk

MODEL = "gpt-4.1"
MAX_TOKENS = 2000
CALLS_MAX = 20
#: What LiteLLM's mock answers with (``mock_response``), when asked to: no network, no key.
MOCK_ANSWER = " ".join(f"Idea {n}: shard the ledger by organization." for n in range(100))


async def main(kit: bk.BudgetKit | None = None, *, mock: bool | None = None) -> int:
    """Demo (SDK): a 0.05 usd session budget; streamed completions until one is refused."""
    mock = os.environ.get("MOCK") == "1" if mock is None else mock
    if mock:  # offline: LiteLLM's bundled price map rather than a download at import
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from budgetkit.integrations.litellm import budgeted_acompletion  # the litellm extra

    own_kit = kit is None
    if kit is None:
        kit = bk.BudgetKit.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    try:
        session = f"sess_{uuid.uuid4().hex}"
        scope = bk.Scope(organization_id="org_demo", session_id=session)
        await kit.create_budget("org_demo", "session", session, "usd", 0.05)
        extra = {"mock_response": MOCK_ANSWER} if mock else {}
        for n in range(CALLS_MAX):
            messages = [{"role": "user", "content": f"Name distributed-systems idea #{n}."}]
            try:
                stream = await budgeted_acompletion(
                    kit,
                    scope,
                    model=MODEL,
                    messages=messages,
                    max_tokens=MAX_TOKENS,
                    stream=True,
                    **extra,
                )
            except bk.BudgetExceeded as stop:
                print(f"blocked: {stop.check.message}")
                break
            async with stream:  # charged when the block ends, however it ends
                parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
            charged = stream.result.entries[0].amount if stream.result else 0.0
            print(f"call {n}: {len(''.join(parts))} characters, {charged} usd")
    finally:
        if own_kit:
            await kit.aclose()
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
