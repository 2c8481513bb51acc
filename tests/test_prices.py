"""Default prices (SPEC §8): the LLM meter charges what genai-prices computes, to the micro-unit.

The reference is genai-prices itself: each expected amount is ``genai_prices.calc_price`` of the
same call (its ``input_tokens`` is the whole prompt; budgetkit's buckets are disjoint), rounded
once, half-up, to micro-units. The models are the 16 of issue 15, the 21 the old hand-kept table
had, Bedrock ids, and a sample across providers drawn from genai-prices' own data (so nothing
here is a copy of a price list). Overrides (dict, TOML, JSON) still win; a model known to neither
follows the unpriced policy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import genai_prices
import pytest
import pytest_asyncio
from genai_prices import types as gp
from genai_prices.data_snapshot import get_snapshot
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from support import ManualClock

import budgetkit as bk
from budgetkit.metering import LlmMeter, LlmUsage, meter_amounts

ORG = "org_p"
SCOPE = bk.Scope(organization_id=ORG, session_id="session_p", user_id="usr_p")
MICRO = Decimal("0.000001")

#: Calls each model is charged for: cache reads and writes, then a prompt above 200,000 tokens
#: (the usual tier threshold: 180,000 + 30,000 + 5,000 = 215,000).
CALLS: tuple[dict[str, int], ...] = (
    {
        "input_tokens": 12_345,
        "output_tokens": 1_234,
        "cache_read_tokens": 54_321,
        "cache_creation_tokens": 2_345,
    },
    {
        "input_tokens": 180_000,
        "output_tokens": 2_001,
        "cache_read_tokens": 30_000,
        "cache_creation_tokens": 5_000,
    },
)

#: Issue 15's models that the old table did not price, with their provider.
ISSUE_MODELS = {
    "gpt-4-turbo": "openai",
    "gpt-3.5-turbo": "openai",
    "o3-pro": "openai",
    "claude-3-5-sonnet-20241022": "anthropic",
    "gemini-2.0-flash": "google",
    "gemini-1.5-pro": "google",
    "mistral-large-latest": "mistral",
    "deepseek-chat": "deepseek",
}

#: The models the removed budgetkit/prices.json priced, with their provider.
OLD_TABLE_MODELS = {
    **dict.fromkeys(
        (
            "gpt-5",
            "gpt-5-mini",
            "gpt-5-nano",
            "gpt-4.1",
            "gpt-4.1-mini",
            "gpt-4.1-nano",
            "gpt-4o",
            "gpt-4o-mini",
            "o3",
            "o4-mini",
        ),
        "openai",
    ),
    **dict.fromkeys(
        (
            "claude-opus-4-5",
            "claude-opus-4-1",
            "claude-opus-4",
            "claude-sonnet-4-5",
            "claude-sonnet-4",
            "claude-haiku-4-5",
            "claude-3-7-sonnet",
            "claude-3-5-haiku",
        ),
        "anthropic",
    ),
    **dict.fromkeys(("gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"), "google"),
}

#: Bedrock ids (a vendor, maybe a region): with provider "bedrock", or alone (looked up at aws).
BEDROCK_MODELS = (
    "anthropic.claude-3-7-sonnet-20250219-v1:0",
    "us.anthropic.claude-3-7-sonnet-20250219-v1:0",
)

SAMPLE_SIZE = 20


def _base(price: gp.TieredPrices | Decimal | None) -> Decimal:
    if isinstance(price, gp.TieredPrices):
        return price.base
    return Decimal(0) if price is None else price


def _token_priced(provider: gp.Provider, model: gp.ModelInfo, at: datetime) -> bool:
    """A text model with positive token prices, found again by its own provider and id."""
    prices = model.get_prices(at)
    if _base(prices.input_mtok) <= 0 or _base(prices.output_mtok) <= 0:
        return False
    try:
        _, found = get_snapshot().find_provider_model(model.id, None, provider.id, None)
    except LookupError:
        return False
    return found is model


def token_priced_models(at: datetime) -> list[tuple[str, list[str]]]:
    """(provider id, [model id, ...]) of every provider of genai-prices' data, in its order."""
    out = []
    for provider in get_snapshot().providers:
        models = [m.id for m in provider.models if _token_priced(provider, m, at)]
        if models:
            out.append((provider.id, models))
    return out


def sample_models(size: int = SAMPLE_SIZE) -> list[tuple[str, str]]:
    """``size`` (provider, model) pairs spread evenly over genai-prices' providers, one each,
    the middle token-priced model of each; none of the named models above."""
    named = {*ISSUE_MODELS, *OLD_TABLE_MODELS}
    candidates = [
        (provider, [m for m in models if m.lower() not in named])
        for provider, models in token_priced_models(datetime.now(UTC))
    ]
    candidates = [(provider, models) for provider, models in candidates if models]
    assert len(candidates) >= size, "genai-prices has fewer providers than the sample"
    picked = [candidates[i * len(candidates) // size] for i in range(size)]
    return [(provider, models[len(models) // 2]) for provider, models in picked]


def named_cases() -> list[tuple[str | None, str]]:
    """(provider, model): every named model with its provider, and alone."""
    cases: list[tuple[str | None, str]] = []
    for model, provider in {**ISSUE_MODELS, **OLD_TABLE_MODELS}.items():
        cases += [(provider, model), (None, model)]
    for model in BEDROCK_MODELS:
        cases += [("bedrock", model), (None, model)]
    return cases


def reference_usd(call: LlmUsage, at: datetime) -> Decimal:
    """genai-prices' price of ``call`` at ``at``, rounded half-up to micro-units (the oracle).

    A Bedrock id alone is asked of genai-prices' Bedrock provider (aws), as the meter does.
    """
    provider = call.provider
    if provider is None and call.model in BEDROCK_MODELS:
        provider = "aws"
    usage = genai_prices.Usage(
        input_tokens=call.input_tokens + call.cache_read_tokens + call.cache_creation_tokens,
        output_tokens=call.output_tokens,
        cache_read_tokens=call.cache_read_tokens,
        cache_write_tokens=call.cache_creation_tokens,
    )
    price = genai_prices.calc_price(
        usage, call.model, provider_id=provider, genai_request_timestamp=at
    )
    return price.total_price.quantize(MICRO, rounding=ROUND_HALF_UP)


def charged_usd(result: bk.DebitResult) -> Decimal:
    """The usd amount of a charge, exactly (an entry's float is a 6-decimal amount)."""
    (entry,) = [e for e in result.entries if e.currency == "usd"]
    return Decimal(repr(entry.amount))


@pytest_asyncio.fixture
async def kit(redis: Redis) -> AsyncIterator[bk.BudgetKit]:
    yield bk.BudgetKit(redis, clock=ManualClock())


async def usd_budget(kit: bk.BudgetKit) -> bk.Budget:
    return await kit.create_budget(ORG, "session", "session_p", "usd", 1_000_000)


async def assert_charges_genai_price(kit: bk.BudgetKit, provider: str | None, model: str) -> None:
    """``kit.record_usage`` with the default meter charges genai-prices' price of each call."""
    await usd_budget(kit)
    for tokens in CALLS:
        call = LlmUsage(model=model, provider=provider, **tokens)
        before = reference_usd(call, datetime.now(UTC))
        result = await kit.record_usage(SCOPE, call)
        after = reference_usd(call, datetime.now(UTC))
        charged = charged_usd(result)
        # The same price both sides, except across a price boundary (a dated or off-peak price).
        assert charged in {before, after}, (provider, model, tokens, charged, before, after)
        assert charged > 0


# ================================================================================================
# The default meter charges what genai-prices computes
# ================================================================================================


@pytest.mark.parametrize(("provider", "model"), named_cases(), ids=str)
async def test_named_models_charge_the_genai_price(
    kit: bk.BudgetKit, provider: str | None, model: str
) -> None:
    await assert_charges_genai_price(kit, provider, model)


@pytest.mark.parametrize(("provider", "model"), sample_models(), ids=str)
async def test_a_sample_across_providers_charges_the_genai_price(
    kit: bk.BudgetKit, provider: str, model: str
) -> None:
    await assert_charges_genai_price(kit, provider, model)


def test_sample_spans_providers() -> None:
    sample = sample_models()
    assert len(sample) == SAMPLE_SIZE and len({provider for provider, _ in sample}) == SAMPLE_SIZE


FIXED = datetime(2026, 1, 15, 12, tzinfo=UTC)


def fixed_meter(at: datetime = FIXED) -> LlmMeter:
    return LlmMeter(clock=lambda: at)


def test_every_token_priced_model_of_genai_prices() -> None:
    """The whole database, without Redis: the meter's usd equals the oracle for every model."""
    meter = fixed_meter()
    checked = 0
    for provider, models in token_priced_models(FIXED):
        for model in models:
            call = LlmUsage(model=model, provider=provider, **CALLS[0])
            assert meter.usd(call) == reference_usd(call, FIXED), (provider, model)
            checked += 1
    assert checked > 500


def tiered_models() -> list[tuple[str, str, int]]:
    """(provider, model, first threshold) of the named models whose input price has tiers."""
    out = []
    for model, provider in {**ISSUE_MODELS, **OLD_TABLE_MODELS}.items():
        _, info = get_snapshot().find_provider_model(model, None, provider, None)
        price = info.get_prices(datetime.now(UTC)).input_mtok
        if isinstance(price, gp.TieredPrices) and price.tiers:
            out.append((provider, model, price.tiers[0].start))
    return out


def test_some_named_models_are_tiered() -> None:
    assert len(tiered_models()) >= 2


@pytest.mark.parametrize(("provider", "model", "threshold"), tiered_models(), ids=str)
async def test_a_prompt_above_the_tier_is_charged_the_tier_price(
    kit: bk.BudgetKit, provider: str, model: str, threshold: int
) -> None:
    """The prompt (input + cache read + cache write) selects the tier, for every token."""
    await usd_budget(kit)
    charged = []
    for prompt in (threshold, threshold + 1):
        call = LlmUsage(
            model=model,
            provider=provider,
            input_tokens=prompt - 3_000,
            cache_read_tokens=2_000,
            cache_creation_tokens=1_000,
            output_tokens=10_000,
        )
        before = reference_usd(call, datetime.now(UTC))
        charged.append(charged_usd(await kit.record_usage(SCOPE, call)))
        assert charged[-1] in {before, reference_usd(call, datetime.now(UTC))}
    at, above = charged
    assert above > at * 3 / 2  # one more token, and the whole call moved to the higher rates


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(named_cases()),
    st.tuples(*[st.integers(0, 10**7)] * 4),
)
def test_any_token_counts_match_the_oracle(
    case: tuple[str | None, str], tokens: tuple[int, int, int, int]
) -> None:
    provider, model = case
    input_tokens, output_tokens, cache_read, cache_creation = tokens
    call = LlmUsage(
        model=model,
        provider=provider,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read,
        cache_creation_tokens=cache_creation,
    )
    assert fixed_meter().usd(call) == reference_usd(call, FIXED)


@pytest.mark.parametrize("hour", range(0, 24, 3))
def test_the_meter_prices_a_call_at_its_clock(hour: int) -> None:
    """genai-prices' prices are dated (deepseek has off-peak hours): the clock picks the price."""
    at = FIXED.replace(hour=hour) + timedelta(minutes=45)
    call = LlmUsage(model="deepseek-chat", provider="deepseek", **CALLS[0])
    assert fixed_meter(at).usd(call) == reference_usd(call, at)


def test_provider_cost_wins_over_genai_prices() -> None:
    call = LlmUsage(model="gpt-4.1", provider="openai", input_tokens=10**6, provider_cost_usd=0.5)
    assert meter_amounts(call, currencies=("usd",)) == {"usd": Decimal("0.5")}


# ================================================================================================
# Overrides win
# ================================================================================================

#: An override price for a model genai-prices knows, and one for a model it does not.
OVERRIDE = {
    "gpt-4.1": {"input": "1.5", "output": 6, "cache_read": "0.25"},
    "acme-finetune": {"input": 9, "output": 9},
}


def override_meter(source: str, tmp_path: Path) -> LlmMeter:
    if source == "dict":
        return LlmMeter(bk.PriceTable.from_dict(OVERRIDE))
    if source == "toml":
        path = tmp_path / "prices.toml"
        path.write_text(
            '[models."gpt-4.1"]\ninput = 1.5\noutput = 6\ncache_read = 0.25\n\n'
            '[models."acme-finetune"]\ninput = 9\noutput = 9\n'
        )
    else:
        path = tmp_path / "prices.json"
        path.write_text(
            '{"models": {"gpt-4.1": {"input": 1.5, "output": 6, "cache_read": 0.25},'
            ' "acme-finetune": {"input": 9, "output": 9}}}'
        )
    return LlmMeter(bk.PriceTable.default().with_overrides(path))


@pytest.mark.parametrize("source", ["dict", "toml", "json"])
async def test_overrides_win_over_genai_prices(
    kit: bk.BudgetKit, tmp_path: Path, source: str
) -> None:
    await usd_budget(kit)
    meter = override_meter(source, tmp_path)
    dated = LlmUsage(
        model="gpt-4.1-2025-04-14",
        provider="openai",
        input_tokens=100_000,
        cache_read_tokens=100_000,
        output_tokens=10_000,
    )
    # 100,000 x 1.5 + 100,000 x 0.25 + 10,000 x 6 = 235,000 / 1M
    assert charged_usd(await kit.record_usage(SCOPE, dated, meter=meter)) == Decimal("0.235")
    assert reference_usd(dated, datetime.now(UTC)) != Decimal("0.235")  # genai-prices differs
    own = LlmUsage(model="acme-finetune", input_tokens=1_000, output_tokens=1_000)
    assert charged_usd(await kit.record_usage(SCOPE, own, meter=meter)) == Decimal("0.018")
    # A model the overrides do not name still gets genai-prices' price under them.
    other = LlmUsage(model="o3", provider="openai", **CALLS[0])
    before = reference_usd(other, datetime.now(UTC))
    assert charged_usd(await kit.record_usage(SCOPE, other, meter=meter)) == before


def test_an_override_with_tiers_wins_for_a_dated_id(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(
        '[models."claude-3-5-sonnet"]\ninput = 4\noutput = 20\ncache_write = 5\n'
        '[[models."claude-3-5-sonnet".tiers]]\nabove_prompt_tokens = 100_000\n'
        "input = 8\noutput = 40\n"
    )
    meter = LlmMeter(bk.PriceTable.from_file(path))
    call = LlmUsage(
        model="claude-3-5-sonnet-20241022",
        provider="anthropic",
        input_tokens=100_000,
        cache_creation_tokens=1,
        output_tokens=1_000,
    )
    # prompt 100,001 > 100,000: tier rates, cache_write falls back to the tier's input rate.
    # 100,000 x 8 + 1 x 8 + 1,000 x 40 = 840,008 / 1M
    assert meter.usd(call) == Decimal("0.840008")


# ================================================================================================
# Unknown to both: the unpriced policy, unchanged
# ================================================================================================

UNKNOWN = (
    (None, "mystery-model-7"),
    ("acme", "gpt-4o"),  # a provider genai-prices does not know: never another provider's price
    ("groq", "gpt-4o"),  # a provider that does not serve the model
    (None, "nobody/mystery-model-7"),
)


@pytest.mark.parametrize(("provider", "model"), UNKNOWN, ids=str)
async def test_unknown_models_raise_and_write_nothing(
    kit: bk.BudgetKit,
    redis: Redis,
    redis_snapshot: Callable[[Redis], Any],
    provider: str | None,
    model: str,
) -> None:
    await usd_budget(kit)
    before = await redis_snapshot(redis)
    call = LlmUsage(model=model, provider=provider, input_tokens=1_000, output_tokens=1_000)
    with pytest.raises(bk.UnpricedModel, match="genai-prices") as info:
        await kit.record_usage(SCOPE, call)
    assert repr(model) in str(info.value) and genai_prices.__version__ in str(info.value)
    assert await redis_snapshot(redis) == before


async def test_unknown_models_follow_the_other_policies(kit: bk.BudgetKit) -> None:
    budget = await usd_budget(kit)
    tokens = await kit.create_budget(ORG, "session", "session_p", "tokens", 1_000_000)
    call = LlmUsage(model="mystery-model-7", input_tokens=1_000, output_tokens=1_000)
    result = await kit.record_usage(SCOPE, call, meter=LlmMeter(unpriced="tokens_only"))
    assert [(e.budget_id, e.amount) for e in result.entries] == [(tokens.id, 2_000)]
    fallback = LlmMeter(unpriced="fallback_price", fallback_price={"input": 15, "output": 75})
    result = await kit.record_usage(SCOPE, call, meter=fallback, currencies=("usd",))
    assert charged_usd(result) == Decimal("0.09")  # (1,000 x 15 + 1,000 x 75) / 1M
    # A model genai-prices knows is priced by it, not by the fallback.
    known = LlmUsage(model="gpt-4o", provider="openai", **CALLS[0])
    before = reference_usd(known, datetime.now(UTC))
    result = await kit.record_usage(SCOPE, known, meter=fallback, currencies=("usd",))
    assert charged_usd(result) == before
    balance = Decimal(1_000_000) - Decimal("0.09") - before
    assert (await kit.get_budget(ORG, budget.id)).balance == float(balance)
