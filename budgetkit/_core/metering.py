"""Meters: turn a usage record into per-currency amounts, then charge them in one round trip.

A meter is any object with ``amounts(usage, currencies) -> dict[str, Decimal]`` (the ``Meter``
protocol); budgets are charged in their own currency, so a meter answers for the currencies it
is asked about. Built in (SPEC §8):

- ``LlmMeter`` for ``LlmUsage`` (input, output, cache_read, cache_creation tokens — disjoint):
  ``tokens`` = total tokens, ``credits`` = total / 1000, any other currency = total tokens
  (unless ``units_per_token`` says otherwise), ``usd`` = the provider-reported cost when > 0,
  else the estimate from the meter's overrides (a PriceTable) or, below them, genai-prices. A
  model with no price in either and no provider cost follows an explicit ``UnpricedPolicy`` —
  never "tokens as dollars".
- ``ToolCallMeter`` (a flat price per tool, per call) and ``DataMeter`` (per byte / GB).

``record_usage`` is the one call a worker makes after an LLM call: meter, then ``debit`` (or
``commit`` a reservation) — one Redis round trip. A custom meter needs no Lua change: amounts
are plain per-currency numbers, rounded half-up to micro-units by budgetkit.

Why amounts are Decimal: every computed amount is exact until its single half-up rounding to
micro-units (``amounts.round_micros``), never a float.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Protocol, runtime_checkable

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
)

from budgetkit._core.amounts import MAX_MICROS, MICROS_PER_UNIT, round_micros
from budgetkit._core.errors import InvalidAmount, InvalidInput, UnpricedModel
from budgetkit._core.ids import normalize_currency
from budgetkit._core.models import _describe
from budgetkit._core.pricing import (
    EXACT,
    ModelPrice,
    PriceTable,
    genai_cost_usd,
    genai_prices_version,
    model_price,
    parse_rate,
)

if TYPE_CHECKING:
    pass

__all__ = [
    "DEFAULT_CURRENCIES",
    "DataMeter",
    "DataUsage",
    "LlmMeter",
    "LlmUsage",
    "Meter",
    "MeterRegistry",
    "Metered",
    "ToolCall",
    "ToolCallMeter",
    "UnpricedPolicy",
    "default_registry",
    "from_anthropic_usage",
    "from_openai_usage",
    "meter_amounts",
    "meter_for_charge",
]

Amount = int | float | Decimal

#: A configured price or factor: a number, or a str read as an exact decimal.
Price = int | float | Decimal | str

#: Currencies metered when ``record_usage`` is given none (the budgets' currencies are unknown
#: to the client without a round trip).
DEFAULT_CURRENCIES: tuple[str, ...] = ("usd", "tokens", "credits")

#: ``credits`` = total tokens / this.
TOKENS_PER_CREDIT = 1000

#: Largest token count of one bucket of one call; largest tool-call count; largest byte count.
TOKENS_MAX = 10**12
CALLS_MAX = 10**9
BYTES_MAX = 2**63 - 1

#: Bounds of names and of one call.
MODEL_CHARS_MAX = 200
PROVIDER_CHARS_MAX = 64
TOOL_CHARS_MAX = 128
METER_NAME_CHARS_MAX = 64
METERS_MAX = 256
CURRENCIES_MAX = 64

#: Largest per-call price, per-GB price or units-per-token factor (any currency).
UNIT_PRICE_MAX = Decimal(MAX_MICROS) / MICROS_PER_UNIT

#: Bytes per data unit (decimal SI units and binary IEC units).
DATA_UNITS: Mapping[str, int] = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}

_METER_NAME_RE = re.compile(rf"[a-z0-9_.\-]{{1,{METER_NAME_CHARS_MAX}}}")

TokenCount = Annotated[StrictInt, Field(ge=0, le=TOKENS_MAX)]


def _micro_decimal(value: Decimal | int | float) -> Decimal:
    """Round a computed amount half-up to micro-units; return it as a Decimal (6 places)."""
    return Decimal(round_micros(value)).scaleb(-6)


def _cost_field(value: object) -> object:
    """Read a provider cost exactly (a float as its shortest decimal); bounds as amounts."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        raise ValueError(f"provider_cost_usd must be a number, got {type(value).__name__}")
    try:
        return parse_rate(value, field="provider_cost_usd", maximum=UNIT_PRICE_MAX)
    except InvalidInput as error:  # re-raised as a plain ValueError so pydantic reports it
        raise ValueError(str(error)) from None


# ================================================================================================
# Usage records
# ================================================================================================


class LlmUsage(BaseModel):
    """The usage of one LLM call: disjoint token buckets, the model, an optional provider cost.

    ``input_tokens`` excludes cached tokens (``cache_read_tokens``: read from the prompt cache;
    ``cache_creation_tokens``: written to it). ``provider``, when given, narrows the price
    lookup in genai-prices to that provider (``openai``, ``anthropic``, ``bedrock``, ``azure``…).
    ``provider_cost_usd``, when > 0, is charged to ``usd`` budgets instead of the price estimate
    (rounded half-up to micro-units).
    Token counts are ints in ``[0, 10**12]``; ``provider_cost_usd`` is an int, float (read as
    its shortest decimal), Decimal or str, finite and non-negative. Raises InvalidInput.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(min_length=1, max_length=MODEL_CHARS_MAX)
    provider: str | None = Field(default=None, max_length=PROVIDER_CHARS_MAX)
    input_tokens: TokenCount = 0
    output_tokens: TokenCount = 0
    cache_read_tokens: TokenCount = 0
    cache_creation_tokens: TokenCount = 0
    provider_cost_usd: Decimal | None = None

    def __init__(
        self,
        *,
        model: str,
        provider: str | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cache_read_tokens: int = 0,
        cache_creation_tokens: int = 0,
        provider_cost_usd: Amount | str | None = None,
        **extra: Any,
    ) -> None:
        # Explicit so that type checkers accept a float cost, and so that a bad field raises
        # budgetkit's InvalidInput (a ValueError) rather than pydantic's ValidationError.
        try:
            super().__init__(
                model=model,
                provider=provider,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cache_read_tokens=cache_read_tokens,
                cache_creation_tokens=cache_creation_tokens,
                provider_cost_usd=provider_cost_usd,
                **extra,
            )
        except ValidationError as error:
            raise InvalidInput(f"invalid LlmUsage: {_describe(error)}") from error

    @field_validator("provider_cost_usd", mode="before")
    @classmethod
    def _cost(cls, value: object) -> object:
        return _cost_field(value)

    @property
    def prompt_tokens(self) -> int:
        """input + cache_read + cache_creation: the prompt size that selects a price tier."""
        return self.input_tokens + self.cache_read_tokens + self.cache_creation_tokens

    @property
    def total_tokens(self) -> int:
        """Every token of the call (prompt + output)."""
        return self.prompt_tokens + self.output_tokens


class ToolCall(BaseModel):
    """``calls`` calls of one tool (ToolCallMeter's usage record)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tool: str = Field(min_length=1, max_length=TOOL_CHARS_MAX)
    calls: Annotated[StrictInt, Field(ge=0, le=CALLS_MAX)] = 1


class DataUsage(BaseModel):
    """Bytes processed (DataMeter's usage record)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bytes_processed: Annotated[StrictInt, Field(ge=0, le=BYTES_MAX)]


# ================================================================================================
# The protocol and the registry
# ================================================================================================


@runtime_checkable
class Meter(Protocol):
    """Turns a usage record into amounts per currency.

    ``currencies`` are the lower-cased currency codes to meter (e.g. ``("usd", "tokens")``).
    Return ``{currency: amount}`` in currency units for those the meter prices; leave out a
    currency it does not price (budgets of that currency are then not charged). Amounts are
    non-negative; budgetkit rounds them half-up to micro-units and ignores unrequested keys.
    """

    def amounts(self, usage: Any, currencies: Sequence[str]) -> Mapping[str, Amount]: ...


def _meter_name(name: object) -> str:
    if not isinstance(name, str) or _METER_NAME_RE.fullmatch(name) is None:
        raise InvalidInput(
            f"invalid meter name {name!r}: 1-{METER_NAME_CHARS_MAX} characters of a-z 0-9 _ . -"
        )
    return name


def _check_meter(meter: object) -> Meter:
    if not isinstance(meter, Meter):
        raise InvalidInput(
            f"a meter needs an amounts(usage, currencies) method, got {type(meter).__name__}"
        )
    return meter


class MeterRegistry:
    """Meters by name, so configuration (or a worker) can pick one by a string."""

    def __init__(self, meters: Mapping[str, Meter] | None = None) -> None:
        self._meters: dict[str, Meter] = {}
        for name, meter in (meters or {}).items():
            self.register(name, meter)

    def register(self, name: str, meter: Meter, *, replace: bool = False) -> Meter:
        """Add ``meter`` under ``name`` (a-z 0-9 _ . -) and return it; a taken name is an error."""
        key = _meter_name(name)
        _check_meter(meter)
        if key in self._meters and not replace:
            raise InvalidInput(f"meter {key!r} is already registered (pass replace=True)")
        if key not in self._meters and len(self._meters) >= METERS_MAX:
            raise InvalidInput(f"a registry holds at most {METERS_MAX} meters")
        self._meters[key] = meter
        return meter

    def unregister(self, name: str) -> None:
        """Remove a meter; raises InvalidInput when it is not registered."""
        self.get(name)
        del self._meters[name]

    def get(self, name: str) -> Meter:
        """The meter registered as ``name``; raises InvalidInput naming the registered ones."""
        meter = self._meters.get(name) if isinstance(name, str) else None
        if meter is None:
            raise InvalidInput(f"no meter named {name!r}; registered: {sorted(self._meters)}")
        return meter

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._meters))

    def __contains__(self, name: object) -> bool:
        return name in self._meters

    def __len__(self) -> int:
        return len(self._meters)


# ================================================================================================
# LLM meter
# ================================================================================================


class UnpricedPolicy(StrEnum):
    """What ``LlmMeter`` charges ``usd`` for a model with no price and no provider cost.

    ``ERROR`` (default): raise ``UnpricedModel`` before anything is written. ``FALLBACK_PRICE``:
    price it with the meter's ``fallback_price``. ``TOKENS_ONLY``: leave ``usd`` out, so only
    the token-based currencies are charged. Never "tokens as dollars".
    """

    ERROR = "error"
    FALLBACK_PRICE = "fallback_price"
    TOKENS_ONLY = "tokens_only"


def _per_token_rates(units: Mapping[str, Price] | None) -> dict[str, Decimal]:
    rates = {"credits": Decimal(1) / TOKENS_PER_CREDIT}
    for currency, value in (units or {}).items():
        code = normalize_currency(currency)
        if code == "usd":
            raise InvalidInput("usd is priced by the price table, not by units_per_token")
        rates[code] = parse_rate(value, field=f"units_per_token[{code}]", maximum=UNIT_PRICE_MAX)
    return rates


class LlmMeter:
    """Meters ``LlmUsage`` (SPEC §8): usd from the provider cost or the prices; token units.

    The usd price of a call, in order: the provider-reported cost when > 0; else ``prices``, the
    meter's overrides (a PriceTable, default none), when one matches the model; else genai-prices
    (by provider + model, or the model alone); else the ``unpriced`` policy (an UnpricedPolicy
    or its value). ``fallback_price``: a ModelPrice or its dict, required by and only allowed
    with ``FALLBACK_PRICE``. ``units_per_token``: units of a non-usd currency per token
    (defaults: ``credits`` 0.001, any other currency 1). ``clock``: returns the aware time a
    call is priced at (genai-prices' prices are dated; default: now, UTC).
    """

    def __init__(
        self,
        prices: PriceTable | None = None,
        *,
        unpriced: UnpricedPolicy | str = UnpricedPolicy.ERROR,
        fallback_price: ModelPrice | Mapping[str, Any] | None = None,
        units_per_token: Mapping[str, Price] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if prices is not None and not isinstance(prices, PriceTable):
            raise InvalidInput("prices must be a PriceTable (PriceTable.from_file or from_dict)")
        try:
            self.unpriced = UnpricedPolicy(unpriced)
        except ValueError as error:
            allowed = ", ".join(policy.value for policy in UnpricedPolicy)
            raise InvalidInput(
                f"unknown unpriced policy {unpriced!r} (one of {allowed})"
            ) from error
        fallback = None if fallback_price is None else model_price(fallback_price, name="fallback")
        if (fallback is None) != (self.unpriced is not UnpricedPolicy.FALLBACK_PRICE):
            raise InvalidInput(
                "fallback_price is required by, and only used with, 'fallback_price'"
            )
        if clock is not None and not callable(clock):
            raise InvalidInput("clock must be a callable returning a timezone-aware datetime")
        self.fallback_price = fallback
        self._prices = PriceTable.default() if prices is None else prices
        self._per_token = _per_token_rates(units_per_token)
        self._clock = clock

    @property
    def prices(self) -> PriceTable:
        """The overrides: asked before genai-prices (an empty table unless given)."""
        return self._prices

    def usd(self, usage: LlmUsage) -> Decimal | None:
        """The usd amount of one call, rounded half-up to micro-units; None = not charged.

        Raises UnpricedModel under the ERROR policy for a model with no price and no cost.
        """
        cost = usage.provider_cost_usd
        if cost is not None and cost > 0:
            return _micro_decimal(cost)
        exact = self._estimate(usage)
        if exact is None:
            if self.unpriced is UnpricedPolicy.TOKENS_ONLY:
                return None
            if self.unpriced is UnpricedPolicy.ERROR:
                raise UnpricedModel(_unpriced_message(usage))
            assert self.fallback_price is not None  # enforced by __init__
            exact = self.fallback_price.cost_usd(
                usage.input_tokens,
                usage.output_tokens,
                usage.cache_read_tokens,
                usage.cache_creation_tokens,
            )
        return _micro_decimal(exact)

    def _estimate(self, usage: LlmUsage) -> Decimal | None:
        """The exact price of one call: an override's when one matches, else genai-prices'."""
        override = self._prices.lookup(usage.model)
        if override is None:
            return genai_cost_usd(usage, at=self._now())
        return override.cost_usd(
            usage.input_tokens,
            usage.output_tokens,
            usage.cache_read_tokens,
            usage.cache_creation_tokens,
        )

    def _now(self) -> datetime:
        now = datetime.now(UTC) if self._clock is None else self._clock()
        if not isinstance(now, datetime) or now.tzinfo is None:
            raise InvalidInput("the meter's clock must return a timezone-aware datetime")
        return now

    def amounts(self, usage: Any, currencies: Sequence[str]) -> dict[str, Decimal]:
        """Amounts of one LlmUsage for each of ``currencies`` (usd first, so it fails first)."""
        if not isinstance(usage, LlmUsage):
            raise InvalidInput(
                f"LlmMeter meters an LlmUsage, got {type(usage).__name__} "
                "(build one with LlmUsage(...), from_openai_usage or from_anthropic_usage)"
            )
        out: dict[str, Decimal] = {}
        if "usd" in currencies:
            usd = self.usd(usage)
            if usd is not None:
                out["usd"] = usd
        total = Decimal(usage.total_tokens)
        for currency in currencies:
            if currency != "usd":
                rate = self._per_token.get(currency, Decimal(1))
                out[currency] = _micro_decimal(EXACT.multiply(total, rate))
        return out


def _unpriced_message(usage: LlmUsage) -> str:
    source = f"genai-prices {genai_prices_version()}"
    if usage.provider:
        source += (
            f" for provider {usage.provider!r} (leave provider unset to match the model alone)"
        )
    return (
        f"model {usage.model!r} has no price in the meter's overrides nor in {source}, and the "
        "call has no provider-reported cost, so a usd budget cannot be charged; nothing was "
        "written. Price it with LlmMeter(PriceTable.from_dict({...}) or .from_file(...)), pass "
        "provider_cost_usd, use LlmMeter(unpriced='fallback_price' or 'tokens_only'), or meter "
        "token currencies only (currencies=('tokens',))"
    )


# ================================================================================================
# Tool-call and data meters
# ================================================================================================


def _price_map(value: object, *, currency: str, field: str) -> dict[str, Decimal]:
    """A price given as a number (in ``currency``) or as ``{currency: number}``."""
    if isinstance(value, Mapping):
        return {
            normalize_currency(code): parse_rate(
                amount, field=f"{field}[{code}]", maximum=UNIT_PRICE_MAX
            )
            for code, amount in value.items()
        }
    return {currency: parse_rate(value, field=field, maximum=UNIT_PRICE_MAX)}


class ToolCallMeter:
    """A flat price per call of each tool; usage is a ``ToolCall`` or a tool name (one call).

    ``prices``: ``{tool: price}`` where a price is a number in ``currency`` (default usd) or
    ``{currency: number}`` (e.g. ``{"usd": 0.01, "tool_calls": 1}``). ``default``: the price
    of a tool not in ``prices`` (None: such a tool is an error). Tool names are case-sensitive.
    """

    def __init__(
        self,
        prices: Mapping[str, Price | Mapping[str, Price]],
        *,
        default: Price | Mapping[str, Price] | None = None,
        currency: str = "usd",
    ) -> None:
        code = normalize_currency(currency)
        self.prices: dict[str, dict[str, Decimal]] = {}
        for tool, price in prices.items():
            if not isinstance(tool, str) or not 1 <= len(tool) <= TOOL_CHARS_MAX:
                raise InvalidInput(f"tool names must be 1-{TOOL_CHARS_MAX} characters: {tool!r}")
            self.prices[tool] = _price_map(price, currency=code, field=f"prices[{tool!r}]")
        self.default = (
            None if default is None else _price_map(default, currency=code, field="default")
        )

    def amounts(self, usage: Any, currencies: Sequence[str]) -> dict[str, Decimal]:
        call = ToolCall(tool=usage) if isinstance(usage, str) else usage
        if not isinstance(call, ToolCall):
            raise InvalidInput(f"ToolCallMeter meters a ToolCall or a tool name, got {usage!r}")
        price = self.prices.get(call.tool, self.default)
        if price is None:
            raise InvalidInput(f"no price for tool {call.tool!r} (and no default price)")
        calls = Decimal(call.calls)
        return {
            currency: _micro_decimal(EXACT.multiply(price[currency], calls))
            for currency in currencies
            if currency in price
        }


class DataMeter:
    """A price per unit of data processed; usage is a ``DataUsage`` or an int of bytes.

    ``prices``: a number in ``currency`` (default usd) or ``{currency: number}``, per ``unit``:
    ``b``, ``kb``/``mb``/``gb``/``tb`` (powers of 1000) or ``kib``/``mib``/``gib``/``tib``
    (powers of 1024); case-insensitive, default ``gb``.
    """

    def __init__(
        self,
        prices: Price | Mapping[str, Price],
        *,
        unit: str = "gb",
        currency: str = "usd",
    ) -> None:
        unit_key = unit.lower() if isinstance(unit, str) else ""
        if unit_key not in DATA_UNITS:
            raise InvalidInput(f"unknown data unit {unit!r} (one of {', '.join(DATA_UNITS)})")
        self.unit_bytes = DATA_UNITS[unit_key]
        self.prices = _price_map(prices, currency=normalize_currency(currency), field="prices")

    def amounts(self, usage: Any, currencies: Sequence[str]) -> dict[str, Decimal]:
        if isinstance(usage, int) and not isinstance(usage, bool):
            usage = DataUsage(bytes_processed=usage)
        if not isinstance(usage, DataUsage):
            raise InvalidInput(f"DataMeter meters a DataUsage or an int of bytes, got {usage!r}")
        size = Decimal(usage.bytes_processed)
        out = {}
        for currency in currencies:
            if currency in self.prices:
                exact = EXACT.divide(EXACT.multiply(size, self.prices[currency]), self.unit_bytes)
                out[currency] = _micro_decimal(exact)
        return out


#: Meters by name for ``record_usage(meter="...")``; ``"llm"`` is the default LlmMeter.
default_registry = MeterRegistry({"llm": LlmMeter()})


# ================================================================================================
# Metering and recording
# ================================================================================================


def _currencies(currencies: Iterable[str] | None) -> tuple[str, ...]:
    if currencies is None:
        return DEFAULT_CURRENCIES
    if isinstance(currencies, str):
        raise InvalidInput(f"currencies must be a sequence of codes, e.g. ({currencies!r},)")
    out: list[str] = []
    for currency in currencies:
        code = normalize_currency(currency)
        if code not in out:
            out.append(code)
        if len(out) > CURRENCIES_MAX:
            raise InvalidInput(f"at most {CURRENCIES_MAX} currencies")
    if not out:
        raise InvalidInput("currencies must not be empty")
    return tuple(out)


def _resolve_meter(meter: Meter | str | None) -> Meter:
    if meter is None:
        return default_registry.get("llm")
    if isinstance(meter, str):
        return default_registry.get(meter)
    return _check_meter(meter)


def _checked_amounts(raw: object, wanted: tuple[str, ...]) -> dict[str, Decimal]:
    """A meter's reply, validated: requested currencies only, non-negative, micro-rounded."""
    if not isinstance(raw, Mapping):
        raise InvalidInput(f"a meter must return a dict of currency to amount, got {raw!r}")
    out: dict[str, Decimal] = {}
    for currency, amount in raw.items():
        code = normalize_currency(currency)
        if code not in wanted:
            continue
        if isinstance(amount, bool) or not isinstance(amount, int | float | Decimal):
            raise InvalidAmount(f"meter amount for {code!r} must be a number, got {amount!r}")
        rounded = _micro_decimal(amount)
        if rounded < 0:
            raise InvalidAmount(f"meter amount for {code!r} must not be negative, got {amount!r}")
        out[code] = rounded
    return out


def meter_amounts(
    usage: Any,
    *,
    meter: Meter | str | None = None,
    currencies: Iterable[str] | None = None,
) -> dict[str, Decimal]:
    """Meter ``usage`` without touching Redis: ``{currency: amount}``, exact to micro-units.

    ``meter``: a Meter, the name of one in ``default_registry``, or None (the default
    LlmMeter). ``currencies``: codes to meter (default ``("usd", "tokens", "credits")``).
    Raises UnpricedModel (default LLM policy, usd requested, model unpriced, no provider cost).
    """
    wanted = _currencies(currencies)
    return _checked_amounts(_resolve_meter(meter).amounts(usage, wanted), wanted)


@dataclass(frozen=True, slots=True)
class Metered:
    """A usage record metered for a charge: micro-units per currency; ``unpriced`` lists the
    currencies it could not be priced in (the charge script refuses the call, writing nothing,
    if a budget of the scope is in one of them), ``unpriced_error`` the meter's error for them."""

    micros: dict[str, int]
    unpriced: tuple[str, ...] = ()
    unpriced_error: UnpricedModel | None = None


def meter_for_charge(
    usage: Any, *, meter: Meter | str | None = None, currencies: Iterable[str] | None = None
) -> Metered:
    """Meter one usage record in ``currencies`` (default ``("usd", "tokens", "credits")``).

    Under the default LLM policy an unpriced model with no provider cost is not an error here:
    the other currencies are metered and usd is marked unpriced, so that the error is raised
    only when a usd budget is in the scope (SPEC §8) — the script decides, in the same round
    trip as the charge.
    """
    wanted = _currencies(currencies)
    try:
        amounts = meter_amounts(usage, meter=meter, currencies=wanted)
        return Metered({c: round_micros(a) for c, a in amounts.items()})
    except UnpricedModel as error:
        if "usd" not in wanted:
            raise
        others = [c for c in wanted if c != "usd"]
        amounts = meter_amounts(usage, meter=meter, currencies=others) if others else {}
        micros = {c: round_micros(a) for c, a in amounts.items()}
        return Metered(micros, ("usd",), error)


# ================================================================================================
# Provider SDK helpers (plain attribute access: no dependency on the SDKs)
# ================================================================================================


def _get(obj: object, name: str) -> Any:
    """``obj.name`` or ``obj[name]`` (SDK objects and their ``model_dump()`` dicts alike)."""
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _count(value: object, field: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"usage field {field} must be a non-negative int, got {value!r}")
    return value


def _usage_of(obj: object, token_fields: tuple[str, ...]) -> object:
    """The usage object: ``obj.usage`` for a response, else ``obj`` itself."""
    if any(_get(obj, name) is not None for name in token_fields):
        return obj
    usage = _get(obj, "usage")
    if usage is None:
        raise InvalidInput(
            f"no usage found on {type(obj).__name__}: pass a response or its .usage object"
        )
    return usage


def _payload(obj: object, name: str) -> object:
    """A streaming event's payload when the usage is there: ``event.response`` (OpenAI's
    Responses events, e.g. ``response.completed``), ``event.message`` (Anthropic's
    ``message_start``); else ``obj`` itself."""
    inner = _get(obj, name)
    if inner is None or _get(obj, "usage") is not None or _get(inner, "usage") is None:
        return obj
    return inner


def _llm_usage(**fields: Any) -> LlmUsage:
    if not isinstance(fields.get("model"), str) or not fields["model"]:
        raise InvalidInput("the model is unknown: pass model='...' (the response has none)")
    return LlmUsage(**fields)


def from_openai_usage(
    response: object,
    *,
    model: str | None = None,
    provider: str = "openai",
    cost_usd: Amount | None = None,
) -> LlmUsage:
    """An LlmUsage from an OpenAI response or its ``.usage`` (Chat Completions or Responses).

    OpenAI's prompt count *includes* the prompt-cache tokens: ``cache_read = cached_tokens``,
    ``cache_creation = cache_write_tokens`` (capped at what the prompt leaves), ``input`` = the
    rest; ``output`` = completion/output tokens (reasoning included). Streamed usage too: a
    ``ChatCompletionChunk`` that carries it (``stream_options={"include_usage": True}``), a
    Responses stream event with its ``response`` (e.g. ``response.completed``). ``model``
    defaults to the response's. Also accepts the dict form (``model_dump()``) and
    OpenAI-compatible APIs (set ``provider``). Raises InvalidInput.
    """
    response = _payload(response, "response")
    usage = _usage_of(response, ("prompt_tokens", "input_tokens"))
    if _get(usage, "prompt_tokens") is not None:  # Chat Completions
        prompt = _count(_get(usage, "prompt_tokens"), "prompt_tokens")
        output = _count(_get(usage, "completion_tokens"), "completion_tokens")
        details = _get(usage, "prompt_tokens_details")
    else:  # Responses API
        prompt = _count(_get(usage, "input_tokens"), "input_tokens")
        output = _count(_get(usage, "output_tokens"), "output_tokens")
        details = _get(usage, "input_tokens_details")
    cached = 0 if details is None else _count(_get(details, "cached_tokens"), "cached_tokens")
    if cached > prompt:
        raise InvalidInput(f"cached_tokens ({cached}) exceeds the prompt tokens ({prompt})")
    written = 0
    if details is not None:
        written = _count(_get(details, "cache_write_tokens"), "cache_write_tokens")
    written = min(written, prompt - cached)  # "unadjusted" by OpenAI: never more than is left
    return _llm_usage(
        model=model if model is not None else _get(response, "model"),
        provider=provider,
        input_tokens=prompt - cached - written,
        output_tokens=output,
        cache_read_tokens=cached,
        cache_creation_tokens=written,
        provider_cost_usd=cost_usd,
    )


def from_anthropic_usage(
    message: object,
    *,
    model: str | None = None,
    provider: str = "anthropic",
    cost_usd: Amount | None = None,
) -> LlmUsage:
    """An LlmUsage from an Anthropic ``Message`` or its ``.usage``.

    Anthropic's buckets are already disjoint: ``input_tokens``, ``output_tokens``,
    ``cache_read_input_tokens``, ``cache_creation_input_tokens`` (None counts as 0). ``model``
    defaults to ``message.model``. When streaming, pass the final message
    (``stream.get_final_message()``), or the last ``message_delta`` event with ``model=``: its
    usage is cumulative. A ``message_start`` event reads as its message (the prompt, before any
    output). Raises InvalidInput.
    """
    message = _payload(message, "message")
    usage = _usage_of(message, ("input_tokens", "output_tokens"))
    return _llm_usage(
        model=model if model is not None else _get(message, "model"),
        provider=provider,
        input_tokens=_count(_get(usage, "input_tokens"), "input_tokens"),
        output_tokens=_count(_get(usage, "output_tokens"), "output_tokens"),
        cache_read_tokens=_count(_get(usage, "cache_read_input_tokens"), "cache_read_input_tokens"),
        cache_creation_tokens=_count(
            _get(usage, "cache_creation_input_tokens"), "cache_creation_input_tokens"
        ),
        provider_cost_usd=cost_usd,
    )
