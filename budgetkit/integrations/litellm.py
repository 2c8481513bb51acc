"""budgetkit for LiteLLM: every LiteLLM call under a budget, in the SDK and in the proxy.

Install with the extra: ``pip install 'budgetkit[litellm]'`` (litellm >= 1.110).

- ``budgeted_acompletion(kit, scope, **litellm_kwargs)`` (SDK): ``litellm.acompletion`` inside
  ``kit.spend``: reserves the call's worst case first (denied: ``bk.BudgetExceeded``, the model is
  not called), charges LiteLLM's usage after it, releases the hold when it fails. With
  ``stream=True`` it returns a ``BudgetedStream`` that charges what was streamed when the stream
  ends, is closed, is dropped half way, or its task is cancelled.
- ``BudgetkitCallback``, a LiteLLM ``CustomLogger``:

  * SDK (``litellm.callbacks = [handler]``): charges every successful call whose metadata names a
    scope (``metadata={"budgetkit_scope": {"organization_id": ..., ...}}``) with LiteLLM's usage
    and ``response_cost``, streamed or not, keyed by ``litellm_call_id``. It cannot refuse a call
    (LiteLLM runs no pre-call hook in the SDK) nor see a stream that was cut: use
    ``budgeted_acompletion`` for those.
  * Proxy (``litellm_settings: callbacks: module.handler``): ``async_pre_call_hook`` reserves the
    request's worst case (denied: ``ProxyBudgetExceeded``, which the proxy answers with HTTP 429
    and the budget's message); the success event commits the hold with the real usage, keyed by
    ``litellm_call_id`` (a replayed event is charged once); the failure event releases it; a
    stream the client cuts is charged for what was streamed
    (``async_post_call_streaming_iterator_hook``).

- ``usage_from_litellm``: the LlmUsage of a LiteLLM response. LiteLLM reports every provider in
  OpenAI's form, Anthropic's cache reads *and writes* inside ``prompt_tokens``: the writes are
  moved back to their own bucket, so each bucket gets its own rate.

Money: the usd amount of a call is LiteLLM's ``response_cost`` when it is > 0 (SPEC §8: the
reported cost wins; ``BudgetOptions(use_litellm_cost=False)`` prices with budgetkit's table
instead), else budgetkit's price table, else LiteLLM's own list price, else the meter's unpriced
policy. Scopes of the proxy come from the virtual key (see ``BudgetkitCallback.scope_for``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from types import TracebackType
from typing import Any, Final

import litellm
from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy._types import ProxyException

import budgetkit as bk
from budgetkit._core.ids import validate_identifier
from budgetkit.metering import DEFAULT_CURRENCIES, meter_for_charge

__all__ = [
    "BUDGETED_CALL_TYPES",
    "DENIED_STATUS_CODE",
    "SCOPE_METADATA_KEY",
    "BudgetOptions",
    "BudgetedStream",
    "BudgetkitCallback",
    "ProxyBudgetExceeded",
    "ScopeResolver",
    "StreamTally",
    "budgeted_acompletion",
    "estimate_usage",
    "usage_from_litellm",
]

log = logging.getLogger("budgetkit.integrations.litellm")

#: Output tokens reserved for a call that sets no ``max_tokens``.
DEFAULT_MAX_TOKENS: Final = 4096
#: How long a call's reservation lives (a call outliving it is charged with a plain debit).
HOLD_TTL_S: Final = 300.0
#: Calls a callback remembers (scope, hold, what was charged), and for how long: the success,
#: failure and stream events of a call find its hold by ``litellm_call_id``; a replayed event
#: re-sends the same charge.
CALLS_MAX: Final = 50_000
CALL_MEMORY_S: Final = 3600.0
#: Streamed text kept to count a cut stream's tokens; past it, about 4 characters per token.
STREAM_TEXT_CHARS_MAX: Final = 4_000_000
CHARS_PER_TOKEN: Final = 4
#: Longest litellm_call_id used as it is in an idempotency key (longer, or not a valid
#: identifier: its SHA-256).
CALL_ID_BYTES_MAX: Final = 200
#: Decimal places kept of a reported or list-price cost (LlmUsage takes at most 12; budgetkit
#: then rounds half-up to micro-units).
COST_DECIMALS: Final = 12
#: What the proxy answers a call the budget refuses (LiteLLM's own rate limits answer 429 too).
DENIED_STATUS_CODE: Final = 429
#: ``error.type`` of that answer: the proxy's own ``ProxyErrorTypes.budget_exceeded``.
DENIED_ERROR_TYPE: Final = "budget_exceeded"
#: The request metadata key naming an SDK call's scope (a Scope or a dict of its fields).
SCOPE_METADATA_KEY: Final = "budgetkit_scope"
#: The request metadata key that marks a call charged by ``budgeted_acompletion``.
WRAPPED_METADATA_KEY: Final = "budgetkit_wrapped"
#: LiteLLM call types that are budgeted (SDK and proxy names; both sync and async spellings).
BUDGETED_CALL_TYPES: Final = frozenset(
    {
        "completion",
        "acompletion",
        "text_completion",
        "atext_completion",
        "responses",
        "aresponses",
        "anthropic_messages",
        "aanthropic_messages",
        "embedding",
        "aembedding",
    }
)
#: Call types whose response carries Anthropic's usage (disjoint buckets), not OpenAI's.
ANTHROPIC_CALL_TYPES: Final = frozenset({"anthropic_messages", "aanthropic_messages"})

#: ``(user_api_key_dict, request) -> Scope | None``: who pays for a call (None: not budgeted).
#: ``user_api_key_dict`` is the proxy's UserAPIKeyAuth, or None for an SDK call; ``request`` is
#: the proxy's request ``data`` or the callback ``kwargs`` of an SDK call.
ScopeResolver = Callable[[Any, Mapping[str, Any]], "bk.Scope | None"]


@dataclass(frozen=True)
class BudgetOptions:
    """How calls are estimated and charged (``BudgetkitCallback`` and ``budgeted_acompletion``).

    ``meter`` and ``currencies``: as ``kit.record_usage`` (default: the LLM meter; usd, tokens,
    credits). ``hold_ttl_seconds``: a reservation's lifetime, 0 < ttl <= 7 days.
    ``default_max_tokens``: output tokens reserved for a call that sets no ``max_tokens``
    (1..10**12). ``use_litellm_cost``: charge LiteLLM's ``response_cost`` as the usd amount when
    it is > 0 (SPEC §8); False: budgetkit's price table.
    """

    meter: Any = None
    currencies: tuple[str, ...] = DEFAULT_CURRENCIES
    hold_ttl_seconds: float = HOLD_TTL_S
    default_max_tokens: int = DEFAULT_MAX_TOKENS
    use_litellm_cost: bool = True


class ProxyBudgetExceeded(ProxyException):
    """The proxy's answer to a call the budget refuses: HTTP 429 with the budget's message.

    A ``ProxyException`` (what LiteLLM's own budget checks raise), so the proxy serializes it as
    it is: ``{"error": {"message": ..., "type": "budget_exceeded", "code": "429", ...}}``.
    ``check`` is budgetkit's verdict; ``provider_specific_fields["budgetkit"]`` carries its
    action, error code and budget id to the client.
    """

    def __init__(self, check: bk.BudgetCheckResult) -> None:
        message = check.message or f"budget {check.action}"
        super().__init__(
            message=message,
            type=DENIED_ERROR_TYPE,
            param=None,
            code=DENIED_STATUS_CODE,
            openai_code=check.error_code,
            provider_specific_fields={
                "budgetkit": {
                    "action": check.action,
                    "error_code": check.error_code,
                    "budget_id": check.budget_id,
                }
            },
        )
        self.check = check
        self.status_code = DENIED_STATUS_CODE


# ================================================================================================
# Requests, estimates and usage
# ================================================================================================


def _request_metadata(request: Mapping[str, Any]) -> Mapping[str, Any]:
    """The metadata of a LiteLLM request: the proxy's ``data`` or a callback's ``kwargs``."""
    params = request.get("litellm_params")
    nested = params.get("metadata") if isinstance(params, Mapping) else None
    for candidate in (request.get("metadata"), request.get("litellm_metadata"), nested):
        if isinstance(candidate, Mapping) and candidate:
            return candidate
    return {}


def _call_id_key(call_id: str) -> str:
    """``litellm_call_id`` as an idempotency key and ref id (a valid budgetkit identifier)."""
    if len(call_id.encode("utf-8")) <= CALL_ID_BYTES_MAX:
        try:
            return validate_identifier(call_id, field="litellm_call_id")
        except bk.InvalidInput:
            pass
    return "litellm_call_" + hashlib.sha256(call_id.encode("utf-8")).hexdigest()


def _approx_tokens(chars: int) -> int:
    """Tokens of ``chars`` characters of text, at about CHARS_PER_TOKEN each."""
    return math.ceil(chars / CHARS_PER_TOKEN)


def _prompt_tokens(model: str, request: Mapping[str, Any]) -> int:
    """The prompt's tokens (``litellm.token_counter``; about 4 characters per token for a shape
    the counter does not read)."""
    messages = request.get("messages")
    prompt = request.get("input") if request.get("input") is not None else request.get("prompt")
    try:
        if messages:
            return int(litellm.token_counter(model=model, messages=messages))
        if isinstance(prompt, list) and prompt and all(isinstance(m, Mapping) for m in prompt):
            return int(litellm.token_counter(model=model, messages=prompt))
        if isinstance(prompt, str) or (
            isinstance(prompt, list) and all(isinstance(p, str) for p in prompt)
        ):
            return int(litellm.token_counter(model=model, text=prompt)) if prompt else 0
    except Exception:  # a message shape the counter does not know: count characters
        log.debug("token_counter failed for %s; counting characters", model, exc_info=True)
    return _approx_tokens(len(str(messages or prompt or "")))


def _max_output_tokens(request: Mapping[str, Any], default: int) -> int:
    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = request.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default


def _litellm_list_price(usage: bk.LlmUsage) -> Decimal | None:
    """LiteLLM's list price of ``usage`` (its model cost map); None when it has no price."""
    model = usage.model
    info = litellm.model_cost.get(model) or litellm.model_cost.get(model.split("/", 1)[-1])
    if not isinstance(info, Mapping):
        return None
    rates: dict[str, Decimal] = {}
    for name in ("input_cost_per_token", "output_cost_per_token"):
        rate = info.get(name)
        if isinstance(rate, bool) or not isinstance(rate, int | float) or rate < 0:
            return None
        rates[name] = Decimal(str(rate))
    cache_read = info.get("cache_read_input_token_cost")
    cache_write = info.get("cache_creation_input_token_cost")
    input_rate = rates["input_cost_per_token"]
    read_rate = Decimal(str(cache_read)) if isinstance(cache_read, int | float) else input_rate
    write_rate = Decimal(str(cache_write)) if isinstance(cache_write, int | float) else input_rate
    cost = (
        usage.input_tokens * input_rate
        + usage.output_tokens * rates["output_cost_per_token"]
        + usage.cache_read_tokens * read_rate
        + usage.cache_creation_tokens * write_rate
    )
    return _positive_cost(cost)


def _priced(usage: bk.LlmUsage, meter: Any) -> bk.LlmUsage:
    """``usage``, with LiteLLM's list price as its cost when neither a reported cost nor
    budgetkit's price table prices it (else the meter's unpriced policy would apply)."""
    if usage.provider_cost_usd is not None and usage.provider_cost_usd > 0:
        return usage
    try:
        bk.meter_amounts(usage, meter=meter, currencies=("usd",))
        return usage
    except bk.UnpricedModel:
        cost = _litellm_list_price(usage)
    if cost is None:
        return usage
    return bk.LlmUsage(**{**usage.model_dump(), "provider_cost_usd": cost})


def estimate_usage(
    request: Mapping[str, Any], *, default_max_tokens: int = DEFAULT_MAX_TOKENS, meter: Any = None
) -> bk.LlmUsage:
    """The worst case of a LiteLLM request: its prompt's tokens and all of its ``max_tokens``
    (``default_max_tokens`` when it sets none), priced as ``_priced`` says."""
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise bk.InvalidInput("a LiteLLM request needs a model")
    usage = bk.LlmUsage(
        model=model,
        input_tokens=_prompt_tokens(model, request),
        output_tokens=_max_output_tokens(request, default_max_tokens),
    )
    return _priced(usage, meter)


def _positive_cost(value: object) -> Decimal | None:
    """A reported cost as an exact Decimal rounded half-up to COST_DECIMALS places (LiteLLM's
    floats carry binary noise: 0.00017999999999999998); None unless a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return None
    cost = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    if not cost.is_finite() or cost <= 0:
        return None
    return cost.quantize(Decimal(1).scaleb(-COST_DECIMALS), rounding=ROUND_HALF_UP)


def _token_field(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_from_litellm(
    response: Any,
    *,
    model: str | None = None,
    provider: str | None = None,
    cost_usd: Any = None,
    call_type: str | None = None,
) -> bk.LlmUsage:
    """The LlmUsage of a LiteLLM response or usage chunk, whatever the provider.

    LiteLLM answers in OpenAI's form (``prompt_tokens`` includes the cache reads, in
    ``prompt_tokens_details.cached_tokens``, and Anthropic's cache writes, in
    ``cache_creation_input_tokens``): the reads and writes go to their own buckets. An
    ``anthropic_messages`` call (the proxy's ``/v1/messages``) answers in Anthropic's form.
    ``cost_usd``: the call's cost (e.g. LiteLLM's ``response_cost``), used when > 0.
    ``provider``: LiteLLM's ``custom_llm_provider`` (default ``"litellm"``). Raises
    InvalidInput when the response carries no usage.
    """
    cost = _positive_cost(cost_usd)
    if call_type in ANTHROPIC_CALL_TYPES:
        return bk.from_anthropic_usage(
            response, model=model, provider=provider or "anthropic", cost_usd=cost
        )
    usage = bk.from_openai_usage(
        response, model=model, provider=provider or "litellm", cost_usd=cost
    )
    raw = getattr(response, "usage", None)
    if raw is None and isinstance(response, Mapping):
        raw = response.get("usage")
    if raw is None:
        raw = response
    written = _token_field(
        raw.get("cache_creation_input_tokens")
        if isinstance(raw, Mapping)
        else getattr(raw, "cache_creation_input_tokens", None)
    )
    if usage.cache_creation_tokens or not 0 < written <= usage.input_tokens:
        return usage  # already split (prompt_tokens_details.cache_write_tokens), or no writes
    return bk.LlmUsage(
        **{
            **usage.model_dump(),
            "input_tokens": usage.input_tokens - written,
            "cache_creation_tokens": written,
        }
    )


def _hidden_param(response: Any, name: str) -> Any:
    """What LiteLLM noted on a response it returned (``_hidden_params``: ``response_cost``,
    ``custom_llm_provider``), None if absent."""
    hidden = getattr(response, "_hidden_params", None)
    return hidden.get(name) if isinstance(hidden, Mapping) else None


class StreamTally:
    """What a stream delivered so far, to charge it however it ends.

    The provider's usage when a chunk carries it (``stream_options={"include_usage": True}``),
    else the prompt's tokens plus the streamed text and tool-call arguments counted with
    ``litellm.token_counter``. ``chunks``: how many chunks went by.
    """

    def __init__(self, model: str, prompt_tokens: int, *, use_litellm_cost: bool = True) -> None:
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.use_litellm_cost = use_litellm_cost
        self.chunks = 0
        self.reported: bk.LlmUsage | None = None
        self._pieces: list[str] = []
        self._chars = 0
        self._overflow_chars = 0

    def add(self, chunk: Any) -> None:
        """Takes one streamed chunk (LiteLLM's ``ModelResponseStream``)."""
        self.chunks += 1
        model = getattr(chunk, "model", None)
        if isinstance(model, str) and model:
            self.model = model  # the provider's name of the model, as in the final usage
        usage = getattr(chunk, "usage", None)
        if usage is not None and getattr(usage, "prompt_tokens", None) is not None:
            cost = getattr(usage, "cost", None) if self.use_litellm_cost else None
            try:
                self.reported = usage_from_litellm(chunk, model=self.model, cost_usd=cost)
            except bk.InvalidInput:  # a malformed count: the streamed text is counted instead
                log.warning("budgetkit: unreadable usage in a stream of %s", self.model)
        for choice in getattr(chunk, "choices", None) or ():
            delta = getattr(choice, "delta", None)
            self._take(getattr(delta, "content", None))
            for tool_call in getattr(delta, "tool_calls", None) or ():
                function = getattr(tool_call, "function", None)
                self._take(getattr(function, "name", None))
                self._take(getattr(function, "arguments", None))

    def _take(self, text: object) -> None:
        if not isinstance(text, str) or not text:
            return
        if self._chars + len(text) > STREAM_TEXT_CHARS_MAX:
            self._overflow_chars += len(text)
            return
        self._pieces.append(text)
        self._chars += len(text)

    def usage(self, meter: Any = None) -> bk.LlmUsage:
        """The usage of what was streamed: the reported usage, else the counted tokens."""
        if self.reported is not None:
            return _priced(self.reported, meter)
        text = "".join(self._pieces)
        output = _approx_tokens(self._overflow_chars)
        if text:
            try:
                output += int(
                    litellm.token_counter(model=self.model, text=text, count_response_tokens=True)
                )
            except Exception:  # an unknown tokenizer: count characters
                output += _approx_tokens(len(text))
        usage = bk.LlmUsage(model=self.model, input_tokens=self.prompt_tokens, output_tokens=output)
        return _priced(usage, meter)


# ================================================================================================
# SDK: budgeted_acompletion
# ================================================================================================


class BudgetedStream:
    """The chunks of a streamed ``budgeted_acompletion`` call, charged however the stream ends.

    Iterate it like LiteLLM's stream. When it ends, is closed (``aclose``, ``async with``), is
    dropped half way (Python finalizes it), or its task is cancelled, what was streamed is
    committed against the call's hold (``result`` is then the DebitResult) and LiteLLM's stream
    is closed. ``async with`` makes the charge happen at a known point.
    """

    def __init__(self, stream: Any, guard: bk.SpendGuard, tally: StreamTally, meter: Any) -> None:
        self._stream = stream
        self._guard = guard
        self._tally = tally
        self._meter = meter
        self._settled = False
        self._relay = self._chunks()

    @property
    def result(self) -> bk.DebitResult | None:
        """The charge, once the stream was settled (None before, or when nothing was streamed)."""
        return self._guard.result

    @property
    def tally(self) -> StreamTally:
        """What was streamed so far."""
        return self._tally

    def __aiter__(self) -> BudgetedStream:
        return self

    async def __anext__(self) -> Any:
        return await self._relay.__anext__()

    async def aclose(self) -> None:
        """Stops the stream and charges what was streamed (releases the hold if nothing was)."""
        await self._relay.aclose()
        await self._settle(None)  # a stream never iterated: its generator never ran

    async def __aenter__(self) -> BudgetedStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _chunks(self) -> AsyncGenerator[Any, None]:
        error: BaseException | None = None
        try:
            async for chunk in self._stream:
                self._tally.add(chunk)
                yield chunk
        except BaseException as exc:  # GeneratorExit (closed early), cancellation, failure
            error = exc
            raise
        finally:
            await self._settle(error)
            if error is not None:
                await _close_quietly(self._stream)

    async def _settle(self, error: BaseException | None) -> None:
        if self._settled:
            return
        self._settled = True
        if self._tally.chunks:
            await self._guard.record(self._tally.usage(self._meter))
        exc_type = None if error is None else type(error)
        trace = None if error is None else error.__traceback__
        await self._guard.__aexit__(exc_type, error, trace)


async def _close_quietly(stream: Any) -> None:
    close = getattr(stream, "aclose", None)
    if close is None:
        return
    try:
        await close()
    except Exception:
        log.debug("closing LiteLLM's stream failed", exc_info=True)


async def budgeted_acompletion(
    kit: bk.BudgetKit,
    scope: bk.Scope,
    *,
    options: BudgetOptions | None = None,
    **litellm_kwargs: Any,
) -> Any:
    """``litellm.acompletion(**litellm_kwargs)`` under the budgets of ``scope``.

    Reserves the call's worst case first (``estimate_usage``); denied: raises
    ``bk.BudgetExceeded`` (``.check`` says why) and the model is not called. A failed call
    releases the hold. Returns LiteLLM's response, its usage charged (``litellm_call_id`` as
    the idempotency key and ref id); with ``stream=True``, a ``BudgetedStream`` that charges
    what was streamed however it ends (``stream_options={"include_usage": True}`` is added
    unless given, so that the provider's count is charged). Calls are marked in their metadata
    so that a ``BudgetkitCallback`` in ``litellm.callbacks`` does not charge them twice.
    """
    opts = options or BudgetOptions()
    request = dict(litellm_kwargs)
    call_id = request.get("litellm_call_id")
    if not isinstance(call_id, str) or not call_id:
        call_id = request["litellm_call_id"] = str(uuid.uuid4())
    key = _call_id_key(call_id)
    request["metadata"] = {**(request.get("metadata") or {}), WRAPPED_METADATA_KEY: True}
    streaming = bool(request.get("stream"))
    if streaming:
        request.setdefault("stream_options", {"include_usage": True})
    estimate = estimate_usage(request, default_max_tokens=opts.default_max_tokens, meter=opts.meter)
    guard = kit.spend(
        scope,
        estimate,
        ttl_seconds=opts.hold_ttl_seconds,
        ref_type="llm_generation",
        ref_id=key,
        idempotency_key=key,
        meter=opts.meter,
        currencies=opts.currencies,
    )
    await guard.__aenter__()  # denied: BudgetExceeded, nothing held, the model is not called
    try:
        response = await litellm.acompletion(**request)
    except BaseException as error:
        await guard.__aexit__(type(error), error, error.__traceback__)  # nothing used: release
        raise
    if streaming:
        tally = StreamTally(
            estimate.model, estimate.input_tokens, use_litellm_cost=opts.use_litellm_cost
        )
        return BudgetedStream(response, guard, tally, opts.meter)
    try:
        cost = _hidden_param(response, "response_cost") if opts.use_litellm_cost else None
        provider = _hidden_param(response, "custom_llm_provider")
        usage = usage_from_litellm(
            response, provider=provider if isinstance(provider, str) else None, cost_usd=cost
        )
        usage = _priced(usage, opts.meter)
    except bk.InvalidInput:  # no usage on the response: charge the reserved worst case
        log.warning("budgetkit: no usage on the response of %s; charging its estimate", call_id)
        usage = estimate
    await guard.record(usage)
    await guard.__aexit__(None, None, None)
    return response


# ================================================================================================
# The callback (SDK and proxy)
# ================================================================================================


@dataclass
class _Call:
    """One call a callback admitted or charged: who pays, its hold, what was charged."""

    scope: bk.Scope
    hold: bk.Reservation | None
    seen_at_s: float  # time.monotonic()
    prompt_tokens: int = 0
    tally: StreamTally | None = None
    charged: bk.LlmUsage | None = None  # set once: a replayed event re-sends the same charge
    released: bool = False


def _scope_from_metadata(metadata: Mapping[str, Any]) -> bk.Scope | None:
    raw = metadata.get(SCOPE_METADATA_KEY)
    if raw is None or isinstance(raw, bk.Scope):
        return raw
    if isinstance(raw, Mapping):
        return bk.Scope(**raw)
    raise bk.InvalidInput(f"metadata[{SCOPE_METADATA_KEY!r}] must be a Scope or a dict")


def _through_proxy(kwargs: Mapping[str, Any]) -> bool:
    """Whether a callback's call came through the LiteLLM proxy (which sets these)."""
    params = kwargs.get("litellm_params")
    if isinstance(params, Mapping) and params.get("proxy_server_request") is not None:
        return True
    return "user_api_key_hash" in _request_metadata(kwargs)


class BudgetkitCallback(CustomLogger):
    """A LiteLLM callback that enforces budgetkit budgets (see the module docstring).

    ``scope_resolver(user_api_key_dict, request) -> Scope | None`` says who pays for a call
    (None: not budgeted); default ``scope_for``. ``default_organization_id``: the organization
    of a proxy key with none. ``reserve=False``: the pre-call hook only checks the scope (stop
    or pause refuse the call) and holds nothing. ``options``: estimates and charges.

    LiteLLM's proxy runs a callback's pre-call and stream hooks only when its own class defines
    them: a subclass must re-define ``async_pre_call_hook`` and
    ``async_post_call_streaming_iterator_hook`` (calling ``super()``), or pass
    ``scope_resolver=`` instead of subclassing.
    """

    def __init__(
        self,
        kit: bk.BudgetKit,
        *,
        scope_resolver: ScopeResolver | None = None,
        default_organization_id: str = "org_default",
        reserve: bool = True,
        options: BudgetOptions | None = None,
    ) -> None:
        super().__init__()
        self.kit = kit
        self.scope_resolver: ScopeResolver = scope_resolver or self.scope_for
        self.default_organization_id = validate_identifier(
            default_organization_id, field="default_organization_id"
        )
        self.reserve = reserve
        self.options = options or BudgetOptions()
        self._calls: dict[str, _Call] = {}  # litellm_call_id -> call, oldest first

    # -- who pays ------------------------------------------------------------------------------

    def scope_for(self, user_api_key_dict: Any, request: Mapping[str, Any]) -> bk.Scope | None:
        """The default resolver.

        Proxy (a key): organization = the key's ``org_id`` (else ``default_organization_id``),
        user = ``user_id``, app = ``team_id``, agent = ``agent_id`` (all from the virtual key:
        trusted), session = the request's ``metadata["session_id"]`` or ``litellm_session_id``
        (client-chosen: it can only add a budget level, never escape the key's budgets).
        SDK (no key): ``metadata["budgetkit_scope"]`` (a Scope or a dict of its fields), set by
        the application; no such metadata: the call is not budgeted.
        """
        metadata = _request_metadata(request)
        if user_api_key_dict is None:
            return _scope_from_metadata(metadata)
        session = metadata.get("session_id") or request.get("litellm_session_id")
        return bk.Scope(
            organization_id=getattr(user_api_key_dict, "org_id", None)
            or self.default_organization_id,
            user_id=getattr(user_api_key_dict, "user_id", None),
            app_id=getattr(user_api_key_dict, "team_id", None),
            agent_id=getattr(user_api_key_dict, "agent_id", None),
            session_id=session if isinstance(session, str) and session else None,
        )

    # -- the steps -----------------------------------------------------------------------------

    async def admit(self, scope: bk.Scope, estimate: bk.LlmUsage) -> bk.Reservation | None:
        """Reserves ``estimate`` (a request's worst case, ``estimate_usage``) on the scope — or,
        with ``reserve=False``, checks the scope; raises ProxyBudgetExceeded when the budget
        refuses the call."""
        if not self.reserve:
            verdict = await self.kit.check(scope)
            if verdict.should_stop() or verdict.should_pause():
                raise ProxyBudgetExceeded(verdict)
            return None
        opts = self.options
        micros = meter_for_charge(estimate, meter=opts.meter, currencies=opts.currencies).micros
        amounts = {currency: Decimal(m).scaleb(-6) for currency, m in micros.items()}
        hold = await self.kit.reserve(scope, amounts, ttl_seconds=opts.hold_ttl_seconds)
        if not hold.granted:
            raise ProxyBudgetExceeded(hold.check)
        return hold

    async def charge(self, kwargs: Mapping[str, Any], response_obj: Any) -> bk.DebitResult | None:
        """Charges a successful call (commits its hold); None when it is not budgeted here.

        The first settlement of a call fixes what it is charged: a replayed success event, or
        one after a cut stream was charged, re-sends the same charge (``replayed``)."""
        call_id = kwargs.get("litellm_call_id")
        call_type = kwargs.get("call_type")
        if not isinstance(call_id, str) or not call_id:
            return None
        if call_type is not None and call_type not in BUDGETED_CALL_TYPES:
            return None
        call = self._calls.get(call_id)
        if call is None:
            scope = self._sdk_scope(kwargs)
            if scope is None:
                return None
            call = self._remember(call_id, _Call(scope, None, time.monotonic()))
        if call.charged is None:
            call.charged = self.usage_of(kwargs, response_obj)
        return await self._settle(call_id, call)

    async def release(self, kwargs: Mapping[str, Any]) -> None:
        """A failed call: releases its hold — or charges what it streamed before it failed."""
        call_id = kwargs.get("litellm_call_id")
        call = self._calls.get(call_id) if isinstance(call_id, str) else None
        if call is None or call.charged is not None or call.released:
            return
        if call.tally is not None and call.tally.chunks:
            await self._charge_streamed(str(call_id), call)
            return
        call.released = True
        if call.hold is not None:
            with contextlib.suppress(bk.HoldNotFound, bk.HoldExpired):  # nothing is held
                await self.kit.release(call.hold)

    def usage_of(self, kwargs: Mapping[str, Any], response_obj: Any) -> bk.LlmUsage:
        """The LlmUsage of a successful call's callback (``usage_from_litellm``)."""
        params = kwargs.get("litellm_params")
        provider = kwargs.get("custom_llm_provider") or (
            params.get("custom_llm_provider") if isinstance(params, Mapping) else None
        )
        cost = kwargs.get("response_cost") if self.options.use_litellm_cost else None
        usage = usage_from_litellm(
            response_obj,
            model=getattr(response_obj, "model", None) or kwargs.get("model"),
            provider=provider if isinstance(provider, str) and provider else None,
            cost_usd=cost,
            call_type=kwargs.get("call_type"),
        )
        return _priced(usage, self.options.meter)

    def _sdk_scope(self, kwargs: Mapping[str, Any]) -> bk.Scope | None:
        """Who pays for a call no pre-call hook admitted: None for a call charged by
        budgeted_acompletion, or one through the proxy (the proxy's pre-call hook admits every
        budgeted call; its metadata is the client's, never trusted for a scope)."""
        metadata = _request_metadata(kwargs)
        if metadata.get(WRAPPED_METADATA_KEY) or _through_proxy(kwargs):
            return None
        return self.scope_resolver(None, kwargs)

    async def _charge_streamed(self, call_id: str, call: _Call) -> bk.DebitResult | None:
        if call.charged is None:
            assert call.tally is not None
            call.charged = call.tally.usage(self.options.meter)
        return await self._settle(call_id, call)

    async def _settle(self, call_id: str, call: _Call) -> bk.DebitResult:
        """Commits ``call.charged`` against the hold, keyed by the call id (a debit when the
        hold expired; under a key of the hold when the call id was reused for another call)."""
        usage = call.charged
        assert usage is not None
        call.tally = None  # the streamed text is no longer needed
        key = _call_id_key(call_id)
        hold = None if call.released else call.hold
        try:
            return await self._record(call.scope, usage, hold, key)
        except bk.IdempotencyConflict:
            if call.hold is None or call.hold.id is None:
                raise
            # The proxy takes x-litellm-call-id from its clients: a reused id names another
            # call. Charge this one under a key of its own hold (still replay-safe).
            log.warning("budgetkit: litellm_call_id %s was reused; keyed by its hold", call_id)
            return await self._record(call.scope, usage, hold, f"{key}:{call.hold.id}")

    async def _record(
        self, scope: bk.Scope, usage: bk.LlmUsage, hold: bk.Reservation | None, key: str
    ) -> bk.DebitResult:
        opts = self.options
        fields: dict[str, Any] = {
            "meter": opts.meter,
            "currencies": opts.currencies,
            "ref_id": key,
            "idempotency_key": key,
        }
        if hold is not None:
            try:
                return await self.kit.record_usage(scope, usage, hold=hold, **fields)
            except (bk.HoldExpired, bk.HoldNotFound):
                pass  # the call outlived its hold (or it was released): usage is never dropped
        return await self.kit.record_usage(scope, usage, **fields)

    def _remember(self, call_id: str, call: _Call) -> _Call:
        """Keeps ``call`` (bounded: CALLS_MAX calls, CALL_MEMORY_S seconds)."""
        horizon = call.seen_at_s - CALL_MEMORY_S
        self._calls.pop(call_id, None)
        while self._calls:  # oldest first (insertion order); at most len(self._calls) rounds
            oldest = next(iter(self._calls))
            if self._calls[oldest].seen_at_s >= horizon and len(self._calls) < CALLS_MAX:
                break
            del self._calls[oldest]
        self._calls[call_id] = call
        return call

    # -- LiteLLM's hooks -----------------------------------------------------------------------

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: str
    ) -> dict[str, Any]:
        """Proxy: refuses the call (ProxyBudgetExceeded: HTTP 429) or lets it through with a
        hold. Sets ``data["litellm_call_id"]`` when absent."""
        if call_type not in BUDGETED_CALL_TYPES:
            return data
        try:
            scope = self.scope_resolver(user_api_key_dict, data)
        except bk.InvalidInput as error:  # e.g. a session id that is not a valid identifier
            raise ProxyException(
                message=str(error), type="invalid_request_error", param="metadata", code=400
            ) from error
        if scope is None:
            return data
        call_id = data.get("litellm_call_id")
        if not isinstance(call_id, str) or not call_id:
            call_id = data["litellm_call_id"] = str(uuid.uuid4())
        opts = self.options
        estimate = estimate_usage(
            data, default_max_tokens=opts.default_max_tokens, meter=opts.meter
        )
        hold = await self.admit(scope, estimate)
        self._remember(call_id, _Call(scope, hold, time.monotonic(), estimate.input_tokens))
        return data

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        try:
            result = await self.charge(kwargs, response_obj)
        except Exception:  # LiteLLM swallows callback errors: make them visible
            log.exception("budgetkit: could not charge the call %s", kwargs.get("litellm_call_id"))
            return
        if result is not None and result.check.action != "continue":
            log.warning("budgetkit: %s: %s", result.check.action, result.check.message)

    async def async_log_failure_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        try:
            await self.release(kwargs)
        except Exception:
            log.exception("budgetkit: could not settle the failed call %s", kwargs.get("model"))

    def log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        """A synchronous ``litellm.completion`` call: not charged (budgetkit's client is async);
        logged when it would have been budgeted. Use ``litellm.acompletion``."""
        if not kwargs.get("litellm_call_id") or kwargs.get("call_type") not in BUDGETED_CALL_TYPES:
            return
        try:
            scope = self._sdk_scope(kwargs)
        except bk.InvalidInput:
            scope = None
        if scope is not None:
            log.warning(
                "budgetkit: synchronous LiteLLM calls are not charged; use litellm.acompletion"
            )

    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: Any, request_data: dict[str, Any]
    ) -> AsyncGenerator[Any, None]:
        """Proxy: relays a streamed answer; when the client cuts it, charges what was streamed
        (a complete stream is charged by the success event, with the provider's usage)."""
        call_id = request_data.get("litellm_call_id")
        call = self._calls.get(call_id) if isinstance(call_id, str) else None
        if call is None:
            async for chunk in response:
                yield chunk
            return
        model = str(request_data.get("model") or "")
        call.tally = StreamTally(
            model, call.prompt_tokens, use_litellm_cost=self.options.use_litellm_cost
        )
        tally, finished = call.tally, False
        try:
            async for chunk in response:
                tally.add(chunk)
                yield chunk
            finished = True
        finally:
            if not finished and tally.chunks:
                await self._charge_cut_stream(str(call_id), call, tally)

    async def _charge_cut_stream(self, call_id: str, call: _Call, tally: StreamTally) -> None:
        try:
            if call.charged is None:
                call.charged = tally.usage(self.options.meter)
            await self._settle(call_id, call)
        except Exception:
            log.exception("budgetkit: could not charge the cut stream %s", call_id)
