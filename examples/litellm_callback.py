"""A LiteLLM callback that enforces budgetkit budgets on every completion.

What it shows: ``BudgetkitCallback`` implements the hooks of LiteLLM's ``CustomLogger``
(it subclasses it when ``litellm`` is installed, and is duck-typed otherwise):

- ``async_pre_call_hook`` (LiteLLM proxy): resolves the caller's budget scope, reserves the
  call's worst case (approximate prompt + ``max_tokens``) — or only checks, with
  ``reserve=False`` — and raises ``BudgetExceeded`` when the budget says stop, which blocks
  the call: the proxy answers HTTP 429 with the budget's message.
- ``async_log_success_event``: charges the real usage (``kit.record_usage``, committing the
  hold), keyed by LiteLLM's ``litellm_call_id``.
- ``async_log_failure_event``: releases the hold of a failed call.

Register it with the LiteLLM proxy (``config.yaml``), from a module on the proxy's path::

    # budget_callbacks.py
    import budgetkit as bk
    from litellm_callback import BudgetkitCallback

    kit = bk.BudgetKit.from_url("redis://127.0.0.1:6379/0")
    budgetkit_handler = BudgetkitCallback(kit, default_organization_id="org_1")

    # config.yaml
    litellm_settings:
      callbacks: budget_callbacks.budgetkit_handler

With the LiteLLM SDK (no proxy), ``async_pre_call_hook`` is not called by LiteLLM: wrap the
call with ``budgeted_acompletion(handler, litellm.acompletion, scope, model=..., ...)``, which
runs the same three steps around it (and does not need ``litellm.callbacks``).

Scopes: by default the organization, user and app come from the proxy's virtual key
(``org_id``, ``user_id``, ``team_id`` — trusted), and the session from the request's
``metadata["session_id"]`` (client-chosen: it can only add a budget level, never escape the
user's or organization's budgets). Pass ``scope_resolver=`` to map requests your own way.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import budgetkit as bk

try:  # subclass LiteLLM's CustomLogger when it is installed; duck-typed otherwise
    from litellm.integrations.custom_logger import CustomLogger as _CallbackBase
except ImportError:  # pragma: no cover - depends on the environment

    class _CallbackBase:  # type: ignore[no-redef]
        def __init__(self, **kwargs: Any) -> None:
            pass


log = logging.getLogger("budgetkit.examples.litellm")

CURRENCIES = ("usd", "tokens", "credits")
DEFAULT_MAX_TOKENS = 4096
HOLD_TTL_S = 300
#: LiteLLM call types this callback budgets (the proxy's names for chat, text and responses).
BUDGETED_CALL_TYPES = frozenset({"completion", "acompletion", "text_completion", "responses"})

ScopeResolver = Callable[[Any, Mapping[str, Any]], bk.Scope]


class BudgetExceeded(Exception):
    """Blocks a call: the budget said stop (or pause). ``verdict`` is the budgetkit result.

    The LiteLLM proxy turns a hook's exception into an OpenAI-style error from its
    ``message``, ``type``, ``code`` and ``status_code`` attributes: here HTTP 429.
    """

    status_code = 429
    type = "budget_exceeded"

    def __init__(self, verdict: bk.BudgetCheckResult) -> None:
        self.verdict = verdict
        self.message = verdict.message or f"budget {verdict.action}"
        self.code = verdict.error_code
        super().__init__(self.message)


@dataclass
class _Admitted:
    scope: bk.Scope
    hold: bk.Reservation | None
    admitted_at: float


def _prompt_text(data: Mapping[str, Any]) -> str:
    messages = data.get("messages")
    if messages:
        return "".join(str(m.get("content") or "") for m in messages)
    return str(data.get("input") or data.get("prompt") or "")


def usage_from_litellm(
    response_obj: Any, kwargs: Mapping[str, Any], *, use_litellm_cost: bool = False
) -> bk.LlmUsage:
    """The LlmUsage of a LiteLLM response (OpenAI format, whatever the provider).

    LiteLLM counts Anthropic's cache writes *and* reads inside ``prompt_tokens`` (reads also
    as ``prompt_tokens_details.cached_tokens``, writes as ``usage.cache_creation_input_tokens``):
    the writes are moved to their own bucket so they get the cache-write rate.
    ``use_litellm_cost``: charge usd at LiteLLM's ``response_cost`` instead of budgetkit's table.
    """
    params = kwargs.get("litellm_params") or {}
    provider = kwargs.get("custom_llm_provider") or params.get("custom_llm_provider") or "litellm"
    model = getattr(response_obj, "model", None) or kwargs.get("model")
    cost = kwargs.get("response_cost") if use_litellm_cost else None
    usage = bk.from_openai_usage(response_obj, model=model, provider=provider, cost_usd=cost)
    raw = getattr(response_obj, "usage", None)
    written = getattr(raw, "cache_creation_input_tokens", None) or 0
    if 0 < written <= usage.input_tokens:
        return bk.LlmUsage(
            model=usage.model,
            provider=usage.provider,
            input_tokens=usage.input_tokens - written,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_creation_tokens=written,
            provider_cost_usd=usage.provider_cost_usd,
        )
    return usage


class BudgetkitCallback(_CallbackBase):
    """Enforces budgetkit budgets around LiteLLM calls (see the module docstring)."""

    def __init__(
        self,
        kit: bk.BudgetKit,
        *,
        scope_resolver: ScopeResolver | None = None,
        default_organization_id: str = "org_default",
        reserve: bool = True,
        meter: bk.LlmMeter | None = None,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        hold_ttl_seconds: float = HOLD_TTL_S,
        use_litellm_cost: bool = False,
    ) -> None:
        super().__init__()
        self.kit = kit
        self.scope_resolver = scope_resolver or self.scope_from_key
        self.default_organization_id = default_organization_id
        self.reserve = reserve
        self.meter = meter
        self.default_max_tokens = default_max_tokens
        self.hold_ttl_seconds = hold_ttl_seconds
        self.use_litellm_cost = use_litellm_cost
        self._admitted: dict[str, _Admitted] = {}  # litellm_call_id -> scope and hold

    # -- scope and estimate ------------------------------------------------------------------

    def scope_from_key(self, user_api_key_dict: Any, data: Mapping[str, Any]) -> bk.Scope:
        """Default resolver: org, user and app from the proxy's virtual key, session from
        the request's metadata."""
        metadata = data.get("metadata") or {}
        return bk.Scope(
            organization_id=getattr(user_api_key_dict, "org_id", None)
            or self.default_organization_id,
            user_id=getattr(user_api_key_dict, "user_id", None),
            app_id=getattr(user_api_key_dict, "team_id", None),
            session_id=metadata.get("session_id"),
        )

    def estimate(self, data: Mapping[str, Any]) -> dict[str, Decimal]:
        """The worst case of the call: ~4 characters per prompt token, all of max_tokens."""
        max_tokens = (
            data.get("max_tokens")
            or data.get("max_completion_tokens")
            or data.get("max_output_tokens")
            or self.default_max_tokens
        )
        usage = bk.LlmUsage(
            model=data["model"],
            input_tokens=math.ceil(len(_prompt_text(data)) / 4) + 16,
            output_tokens=int(max_tokens),
        )
        return bk.meter_amounts(usage, meter=self.meter, currencies=CURRENCIES)

    # -- the three steps ---------------------------------------------------------------------

    async def admit(self, scope: bk.Scope, data: dict[str, Any]) -> dict[str, Any]:
        """Reserve (or check) for the call in ``data``; raise BudgetExceeded to block it.

        Sets ``data["litellm_call_id"]`` when absent: the success and failure events find
        the hold by it."""
        self._forget_stale()
        if self.reserve:
            hold = await self.kit.reserve(
                scope, self.estimate(data), ttl_seconds=self.hold_ttl_seconds
            )
            if not hold.granted:
                raise BudgetExceeded(hold.check)
            admitted = _Admitted(scope, hold, time.monotonic())
        else:
            verdict = await self.kit.check(scope)
            if verdict.should_stop() or verdict.should_pause():
                raise BudgetExceeded(verdict)
            admitted = _Admitted(scope, None, time.monotonic())
        call_id = data.setdefault("litellm_call_id", str(uuid.uuid4()))
        self._admitted[call_id] = admitted
        return data

    async def settle(self, kwargs: Mapping[str, Any], response_obj: Any) -> bk.DebitResult | None:
        """Charge the call's real usage (commit its hold); None if it was not admitted here."""
        call_id = kwargs.get("litellm_call_id")
        admitted = self._admitted.pop(call_id, None) if call_id else None
        if admitted is None:
            return None
        usage = usage_from_litellm(response_obj, kwargs, use_litellm_cost=self.use_litellm_cost)
        fields: dict[str, Any] = {"meter": self.meter, "ref_id": call_id}
        fields["idempotency_key"] = call_id  # a replayed success event charges once
        try:
            return await self.kit.record_usage(admitted.scope, usage, hold=admitted.hold, **fields)
        except bk.HoldExpired:  # the call outlived its hold: charge it anyway
            return await self.kit.record_usage(admitted.scope, usage, **fields)

    async def cancel(self, kwargs: Mapping[str, Any]) -> None:
        """A failed call: release its hold."""
        call_id = kwargs.get("litellm_call_id")
        admitted = self._admitted.pop(call_id, None) if call_id else None
        if admitted is not None and admitted.hold is not None:
            await self.kit.release(admitted.hold)

    def _forget_stale(self) -> None:
        """Drop admissions never settled (a dropped request); their holds have expired."""
        horizon = time.monotonic() - 2 * self.hold_ttl_seconds
        for call_id, admitted in list(self._admitted.items()):
            if admitted.admitted_at >= horizon:
                break  # insertion order: the rest are younger
            del self._admitted[call_id]

    # -- LiteLLM's CustomLogger hooks --------------------------------------------------------

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: str
    ) -> dict[str, Any]:
        """Proxy hook: blocks the call (BudgetExceeded) or lets it through with a hold."""
        if call_type not in BUDGETED_CALL_TYPES:
            return data
        return await self.admit(self.scope_resolver(user_api_key_dict, data), data)

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        try:
            result = await self.settle(kwargs, response_obj)
        except Exception:  # LiteLLM swallows callback errors: make them visible
            log.exception("budgetkit: could not record the usage of %s", kwargs.get("model"))
            return
        if result is not None and result.check.action != "continue":
            log.warning("budgetkit: %s: %s", result.check.action, result.check.message)

    async def async_log_failure_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        try:
            await self.cancel(kwargs)
        except Exception:
            log.exception("budgetkit: could not release the hold of %s", kwargs.get("model"))


async def budgeted_acompletion(
    handler: BudgetkitCallback,
    acompletion: Callable[..., Awaitable[Any]],
    scope: bk.Scope,
    **data: Any,
) -> Any:
    """LiteLLM SDK: ``acompletion(**data)`` (e.g. ``litellm.acompletion``) under the budget of
    ``scope``. Raises BudgetExceeded (the model is not called) when the budget says stop."""
    data = await handler.admit(scope, data)
    kwargs = {"litellm_call_id": data["litellm_call_id"], "model": data["model"]}
    try:
        response = await acompletion(**data)
    except BaseException:
        await handler.cancel(kwargs)
        raise
    await handler.settle(kwargs, response)
    return response


async def main(kit: bk.BudgetKit | None = None, acompletion: Any = None) -> int:
    """Demo (SDK): a 0.01 usd session budget, completions until the callback blocks one."""
    if acompletion is None:
        import litellm  # lazy: budgetkit does not depend on LiteLLM

        acompletion = litellm.acompletion
    own_kit = kit is None
    if kit is None:
        kit = bk.BudgetKit.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    try:
        handler = BudgetkitCallback(kit)
        session = f"sess_{uuid.uuid4().hex}"
        scope = bk.Scope(organization_id="org_demo", session_id=session)
        await kit.create_budget("org_demo", "session", session, "usd", 0.01)
        for n in range(20):
            messages = [{"role": "user", "content": f"Name distributed-systems idea #{n}."}]
            try:
                response = await budgeted_acompletion(
                    handler, acompletion, scope, model="gpt-4.1", messages=messages, max_tokens=200
                )
            except BudgetExceeded as stop:
                print(f"blocked ({stop.status_code}): {stop.message}")
                break
            print(f"{response.id}: {response.usage.total_tokens} tokens")
    finally:
        if own_kit:
            await kit.aclose()
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
