"""A Celery task that calls an LLM under a budget, with the blocking client.

What it shows: ``budgetkit.sync.BudgetKit`` (no ``await``) in a synchronous task —
reserve → ``OpenAI().chat.completions.create`` → ``record_usage(..., hold=hold)`` — and a
task result that says whether the budget stopped the work. ``summarize`` is a plain function
(the recipe, testable eagerly by calling it); when Celery is installed, ``summarize_task`` is
the same function registered with ``@shared_task``, so any Celery app that imports this
module can run it::

    summarize_task.delay({"organization_id": "org_1", "session_id": "s_1"}, "long text ...")

Task arguments must be JSON-serializable, so the scope travels as a dict of ``bk.Scope``'s
fields. Each worker process builds one blocking client on first use (``get_kit``): lazily,
so that Celery's prefork children each get their own (its loop thread does not survive a
fork). ``REDIS_URL`` says where the budgets live; the OpenAI SDK is imported only when no
client is given (the tests pass a fake one).
"""

from __future__ import annotations

import math
import os
import threading
from decimal import Decimal
from typing import Any

import budgetkit as bk
from budgetkit.sync import BudgetKit

MODEL = "gpt-4.1"
MAX_TOKENS = 512
HOLD_TTL_S = 300
CURRENCIES = ("usd", "tokens", "credits")

_kit: BudgetKit | None = None
_kit_lock = threading.Lock()


def get_kit() -> BudgetKit:
    """This process's blocking client (thread-safe; built on first use)."""
    global _kit
    with _kit_lock:
        if _kit is None:
            _kit = BudgetKit.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
        return _kit


def estimate(model: str, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Decimal]:
    """The worst case of the call: ~4 characters per prompt token, all of ``max_tokens``."""
    prompt = sum(math.ceil(len(m["content"]) / 4) + 4 for m in messages)
    usage = bk.LlmUsage(model=model, input_tokens=prompt, output_tokens=max_tokens)
    return bk.meter_amounts(usage, currencies=CURRENCIES)


def summarize(
    scope: dict[str, str],
    text: str,
    *,
    model: str = MODEL,
    max_tokens: int = MAX_TOKENS,
    kit: BudgetKit | None = None,
    client: Any = None,
) -> dict[str, Any]:
    """Summarize ``text`` for ``scope`` (a dict of bk.Scope fields) within its budget.

    Returns ``{"status": "ok", "summary", "response_id", "action", ...}`` or, when the
    reservation is denied, ``{"status": "stopped", "action", "error_code", "message"}``
    (the model is then not called). SDK errors propagate (Celery may retry) after the hold
    is released.
    """
    kit = kit or get_kit()
    if client is None:
        from openai import OpenAI  # lazy: budgetkit does not depend on the SDK

        client = OpenAI()
    budget_scope = bk.Scope(**scope)
    messages = [
        {"role": "system", "content": "Summarize the user's text in three sentences."},
        {"role": "user", "content": text},
    ]
    hold = kit.reserve(budget_scope, estimate(model, messages, max_tokens), ttl_seconds=HOLD_TTL_S)
    if not hold.granted:
        print(f"budget {hold.check.action}: {hold.check.message}")
        return {
            "status": "stopped",
            "action": hold.check.action,
            "error_code": hold.check.error_code,
            "message": hold.check.message,
        }
    try:
        response = client.chat.completions.create(
            model=model, messages=messages, max_tokens=max_tokens
        )
    except BaseException:
        kit.release(hold)
        raise
    usage = bk.from_openai_usage(response)
    try:
        result = kit.record_usage(
            budget_scope, usage, hold=hold, ref_id=response.id, idempotency_key=response.id
        )
    except bk.HoldExpired:  # the call outlived its hold: still charge what was used
        result = kit.record_usage(
            budget_scope, usage, ref_id=response.id, idempotency_key=response.id
        )
    charged = {e.budget_id: e.amount for e in result.entries}
    return {
        "status": "ok",
        "summary": response.choices[0].message.content,
        "response_id": response.id,
        "action": result.check.action,  # "stop" / "pause": the next task will be refused
        "message": result.check.message,
        "charged": charged,
    }


try:  # register the task only when Celery is installed; the function above is the recipe
    from celery import shared_task
except ImportError:  # pragma: no cover - depends on the environment
    summarize_task = None
else:
    summarize_task = shared_task(name="budgetkit_examples.summarize")(summarize)


def main() -> int:
    """Run the task eagerly (no broker): ``python examples/celery_task.py "some text"``."""
    import sys

    kit = get_kit()
    scope = {"organization_id": "org_demo", "session_id": "sess_celery_demo"}
    if not kit.list_budgets("org_demo", subject_type="session", subject_id="sess_celery_demo"):
        kit.create_budget("org_demo", "session", "sess_celery_demo", "usd", 0.05)
    print(summarize(scope, " ".join(sys.argv[1:]) or "budgetkit keeps budgets in Redis."))
    kit.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
