"""LLM prices (SPEC §8): genai-prices is the source, budgetkit's own PriceTable layers on top.

The default price of a model comes from ``genai-prices`` (pydantic's maintained, offline price
database: Decimal prices, cache reads and writes, prompt-size tiers, dated, regional and Bedrock
ids, price history), through :func:`genai_cost_usd`. budgetkit ships no copy of a public price
list.

A ``ModelPrice`` holds the four rates of a model (``input``, ``output``, ``cache_read``,
``cache_write``; USD per 1,000,000 tokens) and optional ``tiers`` that replace them for calls
whose prompt (input + cache_read + cache_creation tokens) *exceeds* a threshold. A ``PriceTable``
maps model names to prices (a user's overrides: from a dict, a JSON file or a TOML file) and
finds a model by a case-insensitive, dated-alias-aware lookup (``gpt-4.1-2025-04-14`` →
``gpt-4.1``). The LLM meter (budgetkit/_core/metering.py) asks its table first, genai-prices
second.

Why exact: prices are Decimal, read from JSON/TOML without passing through a float, and
genai-prices computes in Decimal too, so a computed cost is exact before its single half-up
rounding to micro-units (done by the meter).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import (
    ROUND_HALF_UP,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    localcontext,
)
from functools import cache
from importlib import metadata
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Protocol

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
)

from budgetkit._core.errors import InvalidInput
from budgetkit._core.models import _describe

__all__ = [
    "GENAI_CONTEXT",
    "TOKENS_PER_PRICE_UNIT",
    "CallTokens",
    "ModelPrice",
    "PriceTable",
    "PriceTier",
    "Rates",
    "genai_cost_usd",
    "genai_prices_version",
    "parse_rate",
]

#: Prices are USD per this many tokens.
TOKENS_PER_PRICE_UNIT = 1_000_000

#: Largest rate, in USD per 1M tokens (one dollar per token).
RATE_MAX = Decimal(1_000_000)

#: Most decimal places a rate may carry (keeps every product exact at ``EXACT`` precision).
RATE_DECIMALS_MAX = 12

#: Largest token count anywhere (a prompt threshold, one bucket of one call).
TOKENS_MAX = 10**12

#: Bounds of one table.
TIERS_MAX = 16
ALIASES_MAX = 32
MODELS_MAX = 10_000
MODEL_NAME_CHARS_MAX = 200
TEXT_CHARS_MAX = 2_000
PRICE_FILE_BYTES_MAX = 4 * 1024 * 1024

#: The only ``unit`` a table document may declare.
TABLE_UNIT = "usd_per_1m_tokens"

#: Top-level keys of a table document (anything else is a typo, rejected).
_DOCUMENT_KEYS = frozenset({"models", "unit", "note"})

#: Decimal context for arithmetic that must be exact: any rounding raises ``Inexact``. With the
#: bounds above (≤ 1e12 tokens * a ≤ 19-digit rate) every sum of products fits in 100 digits.
EXACT = Context(
    prec=100,
    rounding=ROUND_HALF_UP,
    traps=[InvalidOperation, Inexact, Overflow, DivisionByZero],
)

#: A model name's trailing version: dates (``-2025-04-14``, ``-20250514``, ``-06-05``,
#: ``-09-2025``, ``-0613``), ``-latest``, ``-preview``, ``-exp``, Bedrock's ``-v1:0`` and
#: Vertex's ``@20250514``. Only these may follow a table name for a prefix match, so ``o3-pro``
#: never takes ``o3``'s price and ``gpt-4.1-mini`` never takes ``gpt-4.1``'s.
_VERSION_SUFFIX = re.compile(
    r"(?:[-_@](?:latest|preview|exp|experimental|\d{4}-\d{2}-\d{2}|\d{8}|\d{2}-\d{4}"
    r"|\d{2}-\d{2}|\d{4}|v\d+(?::\d+)?))+"
)

#: A table name or alias after normalisation: no whitespace, not empty, bounded.
_NAME_RE = re.compile(rf"[^\s]{{1,{MODEL_NAME_CHARS_MAX}}}")


def parse_rate(value: object, *, field: str = "rate", maximum: Decimal = RATE_MAX) -> Decimal:
    """Return a price as an exact Decimal, or raise InvalidInput.

    Why: a price must never pass through binary floating point. A float is read as its shortest
    round-trip decimal (``0.175`` is exactly 0.175), a str is parsed as a decimal. Bounds:
    finite, ``0 <= value <= maximum``, at most ``RATE_DECIMALS_MAX`` decimal places.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        raise InvalidInput(f"{field} must be a number, got {type(value).__name__}")
    try:
        exact = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation as error:
        raise InvalidInput(f"{field} is not a number: {value!r}") from error
    if not exact.is_finite():
        raise InvalidInput(f"{field} must be finite, got {value!r}")
    if exact.is_signed() and not exact.is_zero():
        raise InvalidInput(f"{field} must not be negative, got {value!r}")
    if exact > maximum:
        raise InvalidInput(f"{field} must be at most {maximum}, got {value!r}")
    exponent = exact.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -RATE_DECIMALS_MAX:
        raise InvalidInput(f"{field} has more than {RATE_DECIMALS_MAX} decimal places: {value!r}")
    return exact


def _rate_field(value: object) -> Decimal:
    """pydantic adapter of parse_rate (a ValueError becomes a ValidationError)."""
    return parse_rate(value)


#: A price in USD per 1M tokens (exact Decimal; see parse_rate).
Rate = Annotated[Decimal, BeforeValidator(_rate_field)]


def normalize_model_name(value: object) -> str:
    """Return a model name trimmed and lower-cased (lookups are case-insensitive)."""
    if not isinstance(value, str):
        raise InvalidInput(f"model name must be a str, got {type(value).__name__}")
    name = value.strip().lower()
    if _NAME_RE.fullmatch(name) is None:
        raise InvalidInput(
            f"invalid model name {value[:80]!r}: 1-{MODEL_NAME_CHARS_MAX} characters, no spaces"
        )
    return name


@dataclass(frozen=True, slots=True)
class Rates:
    """The four rates that apply to one call, fallbacks resolved (USD per 1M tokens)."""

    input: Decimal
    output: Decimal
    cache_read: Decimal
    cache_write: Decimal

    def cost_usd(
        self,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int = 0,
        cache_creation_tokens: int = 0,
    ) -> Decimal:
        """Return the exact cost in USD (not rounded): Σ rate * tokens / 1,000,000."""
        total = EXACT.add(
            EXACT.add(
                EXACT.multiply(self.input, Decimal(input_tokens)),
                EXACT.multiply(self.output, Decimal(output_tokens)),
            ),
            EXACT.add(
                EXACT.multiply(self.cache_read, Decimal(cache_read_tokens)),
                EXACT.multiply(self.cache_write, Decimal(cache_creation_tokens)),
            ),
        )
        return EXACT.divide(total, Decimal(TOKENS_PER_PRICE_UNIT))


class PriceTier(BaseModel):
    """Rates that replace the base rates when the prompt exceeds ``above_prompt_tokens``.

    ``cache_read`` and ``cache_write`` fall back to this tier's ``input`` rate.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    above_prompt_tokens: Annotated[StrictInt, Field(ge=1, le=TOKENS_MAX)]
    input: Rate
    output: Rate
    cache_read: Rate | None = None
    cache_write: Rate | None = None

    def rates(self) -> Rates:
        """The tier's rates with the cache fallbacks resolved."""
        return _resolve(self.input, self.output, self.cache_read, self.cache_write)


def _resolve(
    input_rate: Decimal,
    output_rate: Decimal,
    cache_read: Decimal | None,
    cache_write: Decimal | None,
) -> Rates:
    return Rates(
        input=input_rate,
        output=output_rate,
        cache_read=input_rate if cache_read is None else cache_read,
        cache_write=input_rate if cache_write is None else cache_write,
    )


class ModelPrice(BaseModel):
    """The price of one model in USD per 1M tokens (SPEC §8).

    ``cache_read`` and ``cache_write`` fall back to ``input`` when absent. ``tiers`` (ascending
    thresholds) apply to *all* tokens of a call whose prompt = input + cache_read +
    cache_creation tokens exceeds the tier's ``above_prompt_tokens``; the highest such tier wins.
    ``provider``, ``as_of`` (the date of the price) and ``source`` (the page it comes from) are
    documentation; ``aliases`` are extra names the model is found by.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: Rate
    output: Rate
    cache_read: Rate | None = None
    cache_write: Rate | None = None
    tiers: tuple[PriceTier, ...] = Field(default=(), max_length=TIERS_MAX)
    aliases: tuple[str, ...] = Field(default=(), max_length=ALIASES_MAX)
    provider: str | None = Field(default=None, max_length=64)
    as_of: date | None = None
    source: str | None = Field(default=None, max_length=TEXT_CHARS_MAX)
    note: str | None = Field(default=None, max_length=TEXT_CHARS_MAX)

    @field_validator("tiers")
    @classmethod
    def _ascending(cls, tiers: tuple[PriceTier, ...]) -> tuple[PriceTier, ...]:
        thresholds = [tier.above_prompt_tokens for tier in tiers]
        if any(a >= b for a, b in pairwise(thresholds)):
            raise ValueError(f"tier thresholds must be strictly ascending, got {thresholds}")
        return tiers

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, aliases: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(normalize_model_name(alias) for alias in aliases)

    def rates(self, prompt_tokens: int = 0) -> Rates:
        """The rates of a call whose prompt has ``prompt_tokens`` tokens (tier resolved)."""
        for tier in reversed(self.tiers):
            if prompt_tokens > tier.above_prompt_tokens:
                return tier.rates()
        return _resolve(self.input, self.output, self.cache_read, self.cache_write)

    def cost_usd(
        self,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int = 0,
        cache_creation_tokens: int = 0,
    ) -> Decimal:
        """Return the exact cost in USD of one call (not rounded; the meter rounds once)."""
        prompt = input_tokens + cache_read_tokens + cache_creation_tokens
        return self.rates(prompt).cost_usd(
            input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens
        )


def model_price(value: object, *, name: str = "price") -> ModelPrice:
    """Return a ModelPrice from itself or its dict form, or raise InvalidInput."""
    if isinstance(value, ModelPrice):
        return value
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{name} must be a ModelPrice or a dict, got {type(value).__name__}")
    try:
        return ModelPrice.model_validate(dict(value))
    except ValidationError as error:
        raise InvalidInput(f"invalid price for {name}: {_describe(error)}") from error


class PriceTable(Mapping[str, ModelPrice]):
    """An immutable map of model name → ModelPrice, with a forgiving ``lookup``.

    Keys are normalised (trimmed, lower-cased). ``table["gpt-4.1"]`` is an exact lookup;
    ``table.lookup("GPT-4.1-2025-04-14")`` also finds dated versions, aliases and
    ``provider/model`` names (see :meth:`resolve`).
    """

    __slots__ = ("_by_length", "_index", "_prices")

    def __init__(self, prices: Mapping[str, ModelPrice | Mapping[str, Any]] | None = None) -> None:
        entries = dict(prices or {})
        if len(entries) > MODELS_MAX:
            raise InvalidInput(f"a price table holds at most {MODELS_MAX} models")
        self._prices: dict[str, ModelPrice] = {}
        for raw_name, raw_price in entries.items():
            name = normalize_model_name(raw_name)
            if name in self._prices:
                raise InvalidInput(f"model {name!r} is priced twice (names are case-insensitive)")
            self._prices[name] = model_price(raw_price, name=repr(name))
        self._index = _build_index(self._prices)
        self._by_length = sorted(self._index, key=len, reverse=True)

    # -- Mapping -------------------------------------------------------------------------------

    def __getitem__(self, model: str) -> ModelPrice:
        return self._prices[normalize_model_name(model)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._prices)

    def __len__(self) -> int:
        return len(self._prices)

    def __repr__(self) -> str:
        return f"PriceTable({len(self)} models)"

    # -- lookup --------------------------------------------------------------------------------

    def resolve(self, model: str) -> str | None:
        """Return the table name that prices ``model``, or None.

        Rule, on the trimmed, lower-cased name and then on its part after the last ``/``
        (``openai/gpt-4o``, ``models/gemini-2.5-pro``): an exact name or alias wins; else the
        longest name or alias followed only by version suffixes (dates, ``-latest``,
        ``-preview``, ``-exp``, ``-v1:0``, ``@20250514``).
        """
        try:
            key = normalize_model_name(model)
        except InvalidInput:
            return None
        candidates = [key]
        if "/" in key and key.rsplit("/", 1)[1]:
            candidates.append(key.rsplit("/", 1)[1])
        for candidate in candidates:
            if candidate in self._index:
                return self._index[candidate]
        for candidate in candidates:
            for name in self._by_length:
                rest = candidate[len(name) :]
                if candidate.startswith(name) and _VERSION_SUFFIX.fullmatch(rest):
                    return self._index[name]
        return None

    def lookup(self, model: str) -> ModelPrice | None:
        """Return the price of ``model`` (see :meth:`resolve`), or None when unpriced."""
        name = self.resolve(model)
        return None if name is None else self._prices[name]

    # -- building ------------------------------------------------------------------------------

    def with_overrides(
        self, overrides: PriceTable | Mapping[str, Any] | str | os.PathLike[str]
    ) -> PriceTable:
        """Return a new table: this one, with ``overrides`` added or replacing whole entries.

        ``overrides`` is a PriceTable, a dict (see :meth:`from_dict`) or a path to a ``.json`` /
        ``.toml`` file. A replaced entry keeps nothing of the old one (not even its aliases).
        """
        if isinstance(overrides, PriceTable):
            extra = overrides
        elif isinstance(overrides, Mapping):
            extra = PriceTable.from_dict(overrides)
        else:
            extra = PriceTable.from_file(overrides)
        return PriceTable({**self._prices, **extra._prices})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PriceTable:
        """Build a table from ``{"models": {name: price}}`` (a table document) or ``{name: price}``.

        A document may also carry ``unit`` (must be ``"usd_per_1m_tokens"``) and ``note``. A
        price is a dict of ModelPrice fields; numbers may be int, float (read as their shortest
        decimal), Decimal or str. Raises InvalidInput.
        """
        if not isinstance(data, Mapping):
            raise InvalidInput(f"a price table must be a dict, got {type(data).__name__}")
        models = data.get("models")
        if not isinstance(models, Mapping):
            return cls(data)
        unknown = sorted(set(data) - _DOCUMENT_KEYS)
        if unknown:
            raise InvalidInput(
                f"unknown keys in price table: {unknown} (allowed: models, unit, note)"
            )
        unit = data.get("unit", TABLE_UNIT)
        if unit != TABLE_UNIT:
            raise InvalidInput(f"price table unit must be {TABLE_UNIT!r}, got {unit!r}")
        return cls(models)

    @classmethod
    def from_json(cls, text: str | bytes) -> PriceTable:
        """Build a table from JSON text; numbers are parsed as Decimal, never as float."""
        try:
            data = json.loads(text, parse_float=Decimal)
        except ValueError as error:
            raise InvalidInput(f"price table is not valid JSON: {error}") from error
        return cls.from_dict(data)

    @classmethod
    def from_toml(cls, text: str) -> PriceTable:
        """Build a table from TOML text; floats are parsed as Decimal, never as float."""
        try:
            data = tomllib.loads(text, parse_float=Decimal)
        except tomllib.TOMLDecodeError as error:
            raise InvalidInput(f"price table is not valid TOML: {error}") from error
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> PriceTable:
        """Build a table from a ``.json`` or ``.toml`` file (at most 4 MiB)."""
        file = Path(path)
        suffix = file.suffix.lower()
        if suffix not in (".json", ".toml"):
            raise InvalidInput(f"price table file must end in .json or .toml: {str(file)!r}")
        try:
            with file.open("rb") as handle:
                raw = handle.read(PRICE_FILE_BYTES_MAX + 1)
        except OSError as error:
            raise InvalidInput(f"cannot read price table {str(file)!r}: {error}") from error
        if len(raw) > PRICE_FILE_BYTES_MAX:
            raise InvalidInput(f"price table {str(file)!r} is larger than {PRICE_FILE_BYTES_MAX} B")
        if suffix == ".json":
            return cls.from_json(raw)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise InvalidInput(f"price table {str(file)!r} is not UTF-8: {error}") from error
        return cls.from_toml(text)

    @classmethod
    def default(cls) -> PriceTable:
        """The default overrides: an empty table (budgetkit ships no price list).

        Why it stays: ``PriceTable.default().with_overrides(...)`` still builds the table of a
        meter's overrides, which genai-prices' prices sit under (see LlmMeter).
        """
        return _empty_table()


def _build_index(prices: Mapping[str, ModelPrice]) -> dict[str, str]:
    """Map every name and alias to its table name; an alias may not shadow another entry."""
    index = {name: name for name in prices}
    for name, price in prices.items():
        for alias in price.aliases:
            owner = index.get(alias)
            if owner is not None and owner != name:
                raise InvalidInput(f"alias {alias!r} of {name!r} is already a name of {owner!r}")
            index[alias] = name
    return index


@cache
def _empty_table() -> PriceTable:
    return PriceTable()


# ================================================================================================
# The default source: genai-prices
# ================================================================================================

#: Distribution name of the price database (its version dates the default prices).
GENAI_PRICES = "genai-prices"

#: genai-prices' provider id that reads a ``maker/model`` id the way LiteLLM writes it.
GENAI_LITELLM_PROVIDER = "litellm"

#: genai-prices' provider id of Amazon Bedrock, and the form of a Bedrock model id: a vendor
#: (``anthropic.``), maybe after a region (``us.``, ``us-gov.``), then the model. A model id alone
#: in that form is looked up at Bedrock, where genai-prices' own guess (the vendor) lacks it.
GENAI_BEDROCK_PROVIDER = "aws"
_BEDROCK_ID = re.compile(r"(?:[a-z]+(?:-[a-z]+)*\.)?[a-z]+(?:-[a-z]+)*\.[a-z0-9]")

#: Decimal context of genai-prices' arithmetic for one call: 100 digits, so that no product or
#: sum within budgetkit's bounds is rounded whatever the caller's thread context is (the result
#: is then the exact cost, as genai-prices defines it, before the meter's one rounding).
GENAI_CONTEXT = Context(
    prec=100,
    rounding=ROUND_HALF_UP,
    traps=[InvalidOperation, Overflow, DivisionByZero],
)


class CallTokens(Protocol):
    """What genai_cost_usd reads of one call (an LlmUsage): its model and disjoint buckets."""

    @property
    def model(self) -> str: ...
    @property
    def provider(self) -> str | None: ...
    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def cache_read_tokens(self) -> int: ...
    @property
    def cache_creation_tokens(self) -> int: ...


def genai_prices_version() -> str:
    """The installed genai-prices version: the date stamp of the default prices."""
    return metadata.version(GENAI_PRICES)


def genai_cost_usd(call: CallTokens, *, at: datetime) -> Decimal | None:
    """The exact cost in USD of one call as genai-prices computes it; None for a model it lacks.

    Lookup (genai-prices' own matching: case-insensitive; dated, regional and Bedrock ids):
    ``provider`` + ``model`` when the call names a provider (genai-prices maps names such as
    ``bedrock`` → aws and ``vertex_ai`` → google, and a reseller such as azure to the maker's
    price); a provider it does not know, or a model that provider does not serve, is None, never
    another provider's price. Without a provider: the model id alone (genai-prices guesses the
    provider from it), then a ``maker/model`` id as LiteLLM writes it (``openai/gpt-4o``), then
    a Bedrock id (``us.anthropic.claude-…-v1:0``) at Bedrock. ``at``: the aware time of the call
    (prices are dated; some have off-peak hours). Not rounded: the meter rounds once, half-up.

    Why the buckets are summed: genai-prices' ``input_tokens`` is the whole prompt, cache reads
    and writes included (each priced at its own rate), where budgetkit's buckets are disjoint.
    """
    import genai_prices  # here, not at the top: ~0.1 s, paid by the first call it prices

    if at.tzinfo is None:
        raise InvalidInput("the time of a call must be a timezone-aware datetime")
    usage = genai_prices.Usage(
        input_tokens=call.input_tokens + call.cache_read_tokens + call.cache_creation_tokens,
        output_tokens=call.output_tokens,
        cache_read_tokens=call.cache_read_tokens,
        cache_write_tokens=call.cache_creation_tokens,
    )
    model = call.model.strip()
    for provider_id in _genai_providers(model, call.provider):
        try:
            with localcontext(GENAI_CONTEXT):
                price = genai_prices.calc_price(
                    usage, model, provider_id=provider_id, genai_request_timestamp=at
                )
        except LookupError as error:
            if type(error) is not LookupError:  # a KeyError or IndexError is a bug, not "unknown"
                raise
            continue
        return _checked_cost(price.total_price, model)
    return None


def _genai_providers(model: str, provider: str | None) -> tuple[str | None, ...]:
    """The provider ids to look ``model`` up with, in order (see genai_cost_usd)."""
    named = (provider or "").strip()
    if named:
        return (named,)
    attempts: list[str | None] = [None]
    if "/" in model:
        attempts.append(GENAI_LITELLM_PROVIDER)
    elif _BEDROCK_ID.match(model.lower()):
        attempts.append(GENAI_BEDROCK_PROVIDER)
    return tuple(attempts)


def _checked_cost(value: object, model: str) -> Decimal:
    """genai-prices' total, asserted on the way in: a finite, non-negative Decimal."""
    if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
        raise InvalidInput(f"genai-prices priced {model!r} at {value!r}, not a cost in USD")
    return value
