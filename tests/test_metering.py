"""Metering (SPEC §8): price tables (the overrides), the LLM meter, the unpriced policy, pluggable
meters, and record_usage on both tiers (real Redis and fakeredis).

Prices here are overrides with fixed numbers (the SPEC's examples, and list prices pinned for the
SDK examples), so no test depends on genai-prices' data; tests/test_prices.py checks the default
meter against genai-prices itself."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from support import ManualClock, assert_invariant

import budgetkit as bk
from budgetkit._core.pricing import ModelPrice, PriceTable, parse_rate
from budgetkit.metering import (
    DataMeter,
    DataUsage,
    LlmMeter,
    LlmUsage,
    Meter,
    MeterRegistry,
    ToolCall,
    ToolCallMeter,
    UnpricedPolicy,
    default_registry,
    from_anthropic_usage,
    from_openai_usage,
    meter_amounts,
)

ORG = "org_m"

#: The model of SPEC §8's examples: 1.75 in / 14.00 out / 0.175 cache-read (USD per 1M tokens).
SPEC_TABLE = PriceTable.from_dict(
    {
        "spec-model": {"input": 1.75, "output": 14.00, "cache_read": 0.175},
        "tiered-model": {
            "input": 1.25,
            "output": 10,
            "cache_read": "0.125",
            "tiers": [
                {"above_prompt_tokens": 200_000, "input": 2.5, "output": 15, "cache_read": 0.25},
                {"above_prompt_tokens": 500_000, "input": 5, "output": 30},
            ],
        },
    }
)


#: List prices the SDK and record_usage examples below assume, pinned as overrides (USD per 1M).
PINNED = PriceTable.from_dict(
    {
        "gpt-4.1": {"input": 2, "output": 8, "cache_read": "0.5"},
        "claude-sonnet-4": {
            "input": 3,
            "output": 15,
            "cache_read": "0.3",
            "cache_write": "3.75",
            "aliases": ["claude-sonnet-4-0"],
        },
    }
)
PINNED_METER = LlmMeter(PINNED)


def usage(model: str = "spec-model", **tokens: Any) -> LlmUsage:
    return LlmUsage(model=model, **tokens)


def spec_meter(**kwargs: Any) -> LlmMeter:
    return LlmMeter(SPEC_TABLE, **kwargs)


# ================================================================================================
# SPEC §8 examples, exactly
# ================================================================================================


def test_spec_cache_read_example() -> None:
    amounts = spec_meter().amounts(usage(input_tokens=200_000, cache_read_tokens=800_000), ("usd",))
    assert amounts == {"usd": Decimal("0.49")}


def test_spec_input_example() -> None:
    assert spec_meter().amounts(usage(input_tokens=1_000_000), ("usd",)) == {"usd": Decimal("1.75")}


def test_spec_credits_and_tokens_example() -> None:
    call = usage(
        input_tokens=3_000, output_tokens=1_500, cache_read_tokens=400, cache_creation_tokens=100
    )
    amounts = spec_meter().amounts(call, ("tokens", "credits", "gpu_units"))
    assert amounts == {
        "tokens": Decimal(5_000),
        "credits": Decimal("5.0"),
        "gpu_units": Decimal(5_000),  # another custom currency = total tokens
    }
    assert all(isinstance(value, Decimal) for value in amounts.values())


def test_spec_provider_cost_wins_over_table() -> None:
    call = usage(input_tokens=1_000_000, provider_cost_usd=0.0123)
    assert spec_meter().amounts(call, ("usd",)) == {"usd": Decimal("0.0123")}
    # A provider cost of 0 is "not reported": the table applies.
    free = usage(input_tokens=1_000_000, provider_cost_usd=0)
    assert spec_meter().amounts(free, ("usd",)) == {"usd": Decimal("1.75")}


def test_spec_tier_switches_above_threshold_for_all_tokens() -> None:
    meter = spec_meter()
    at = usage("tiered-model", input_tokens=150_000, cache_read_tokens=50_000, output_tokens=1_000)
    # prompt = 200,000: not above the threshold → base rates.
    # 150,000 x 1.25 + 50,000 x 0.125 + 1,000 x 10 = 187,500 + 6,250 + 10,000 → 0.20375
    assert meter.amounts(at, ("usd",)) == {"usd": Decimal("0.20375")}
    above = usage(
        "tiered-model", input_tokens=150_001, cache_read_tokens=50_000, output_tokens=1_000
    )
    # prompt = 200,001 > 200,000 → tier rates for every token of the call:
    # 150,001 x 2.5 + 50,000 x 0.25 + 1,000 x 15 = 375,002.5 + 12,500 + 15,000 → 0.4025025
    assert meter.amounts(above, ("usd",)) == {"usd": Decimal("0.402503")}  # half-up
    # The highest exceeded tier wins; its absent cache_read falls back to the tier's input.
    top = usage("tiered-model", input_tokens=400_000, cache_read_tokens=100_001)
    assert meter.amounts(top, ("usd",)) == {"usd": Decimal("2.500005")}


def test_cache_rates_fall_back_to_input() -> None:
    table = PriceTable.from_dict({"m": {"input": 2, "output": 8}})
    meter = LlmMeter(table)
    call = usage("m", input_tokens=100, cache_read_tokens=200, cache_creation_tokens=300)
    assert meter.amounts(call, ("usd",)) == {"usd": Decimal("0.0012")}  # 600 tokens x 2 / 1M


def test_cache_write_rate() -> None:
    table = PriceTable.from_dict({"m": {"input": 3, "output": 15, "cache_write": 3.75}})
    call = usage("m", cache_creation_tokens=1_000_000)
    assert LlmMeter(table).amounts(call, ("usd",)) == {"usd": Decimal("3.75")}


def test_rounding_is_half_up_once_on_the_exact_total() -> None:
    table = PriceTable.from_dict({"m": {"input": 0.5, "output": 0.25}})
    meter = LlmMeter(table)
    # 1 x 0.5 / 1M = 0.0000005 → 0.000001 (half-up), not 0 (banker's) and not a float artefact
    assert meter.amounts(usage("m", input_tokens=1), ("usd",)) == {"usd": Decimal("0.000001")}
    # 1 x 0.25 / 1M = 0.00000025 → 0
    assert meter.amounts(usage("m", output_tokens=1), ("usd",)) == {"usd": Decimal(0)}
    # Each bucket would round to 0; the exact sum 0.00000075 rounds once to 0.000001.
    both = usage("m", input_tokens=1, output_tokens=1)
    assert meter.amounts(both, ("usd",)) == {"usd": Decimal("0.000001")}


def test_float_prices_are_read_as_their_shortest_decimal() -> None:
    table = PriceTable.from_dict({"m": {"input": 0.1, "output": 0.2}})
    price = table["m"]
    assert price.input == Decimal("0.1") and price.output == Decimal("0.2")
    call = usage("m", input_tokens=10_000_000, output_tokens=10_000_000)
    assert LlmMeter(table).amounts(call, ("usd",)) == {"usd": Decimal("3")}  # 1 + 2, exactly


def test_units_per_token_overrides_token_currencies() -> None:
    meter = spec_meter(units_per_token={"credits": Decimal("0.002"), "Points": 3})
    amounts = meter.amounts(usage(input_tokens=1_000), ("credits", "points", "tokens"))
    assert amounts == {"credits": Decimal(2), "points": Decimal(3_000), "tokens": Decimal(1_000)}
    with pytest.raises(bk.InvalidInput, match="price table"):
        spec_meter(units_per_token={"usd": 1})


# ================================================================================================
# The unpriced-model policy (never "tokens as dollars")
# ================================================================================================


def test_unpriced_default_is_an_error_when_usd_is_metered() -> None:
    call = usage("mystery-model-7", input_tokens=10, provider="acme")
    with pytest.raises(bk.UnpricedModel, match="mystery-model-7") as info:
        spec_meter().amounts(call, ("usd", "tokens"))
    assert isinstance(info.value, bk.InvalidInput) and isinstance(info.value, ValueError)
    assert "tokens as dollars" not in str(info.value)
    # No usd asked for: no error, tokens only.
    assert spec_meter().amounts(call, ("tokens",)) == {"tokens": Decimal(10)}
    # A provider cost prices any model.
    costed = usage("mystery-model-7", input_tokens=10, provider_cost_usd=Decimal("0.5"))
    assert spec_meter().amounts(costed, ("usd",)) == {"usd": Decimal("0.5")}


def test_unpriced_fallback_price() -> None:
    meter = spec_meter(unpriced="fallback_price", fallback_price={"input": 10, "output": 30})
    call = usage("mystery-model-7", input_tokens=1_000, output_tokens=1_000)
    assert meter.amounts(call, ("usd", "tokens")) == {
        "usd": Decimal("0.04"),
        "tokens": Decimal(2000),
    }
    # A priced model still uses its own price.
    assert meter.amounts(usage(input_tokens=1_000_000), ("usd",)) == {"usd": Decimal("1.75")}


def test_unpriced_tokens_only_leaves_usd_out() -> None:
    meter = spec_meter(unpriced=UnpricedPolicy.TOKENS_ONLY)
    call = usage("mystery-model-7", input_tokens=1_000, output_tokens=10)
    assert meter.amounts(call, ("usd", "tokens", "credits")) == {
        "tokens": Decimal(1_010),
        "credits": Decimal("1.01"),
    }


def test_unpriced_policy_configuration_errors() -> None:
    with pytest.raises(bk.InvalidInput, match="fallback_price"):
        spec_meter(unpriced="fallback_price")
    with pytest.raises(bk.InvalidInput, match="fallback_price"):
        spec_meter(fallback_price={"input": 1, "output": 1})
    with pytest.raises(bk.InvalidInput, match="unknown unpriced policy"):
        spec_meter(unpriced="tokens_as_dollars")
    with pytest.raises(bk.InvalidInput, match="PriceTable"):
        LlmMeter({"m": {"input": 1, "output": 1}})  # type: ignore[arg-type]


# ================================================================================================
# Price tables: lookup, loading, overriding
# ================================================================================================


#: A table of the names the old shipped table had, to test the lookup rule of any table.
LOOKUP_TABLE = PriceTable.from_dict(
    {
        name: {"input": 1, "output": 1, "aliases": aliases}
        for name, aliases in {
            "gpt-4.1": [],
            "gpt-4.1-mini": [],
            "gpt-4.1-nano": [],
            "gpt-4o": [],
            "gpt-4o-mini": [],
            "o3": [],
            "o4-mini": [],
            "claude-sonnet-4": ["claude-sonnet-4-0", "claude-4-sonnet"],
            "claude-opus-4": ["claude-opus-4-0", "claude-4-opus"],
            "claude-3-5-haiku": [],
            "gemini-2.5-pro": [],
            "gemini-2.5-flash": [],
            "gemini-2.5-flash-lite": [],
        }.items()
    }
)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4.1", "gpt-4.1"),
        ("GPT-4.1", "gpt-4.1"),
        (" gpt-4.1-2025-04-14 ", "gpt-4.1"),
        ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("gpt-4.1-nano", "gpt-4.1-nano"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("openai/gpt-4o", "gpt-4o"),
        ("o3-2025-04-16", "o3"),
        ("o4-mini-2025-04-16", "o4-mini"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("claude-sonnet-4-0", "claude-sonnet-4"),
        ("claude-sonnet-4@20250514", "claude-sonnet-4"),
        ("claude-opus-4-20250514", "claude-opus-4"),
        ("Claude-3-5-Haiku-Latest", "claude-3-5-haiku"),
        ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
        ("gemini-2.5-pro", "gemini-2.5-pro"),
        ("gemini-2.5-pro-preview-06-05", "gemini-2.5-pro"),
        ("models/gemini-2.5-flash", "gemini-2.5-flash"),
        ("gemini-2.5-flash-preview-09-2025", "gemini-2.5-flash"),
        ("gemini-2.5-flash-lite", "gemini-2.5-flash-lite"),
        # Never a different model's price: only version suffixes may follow a table name.
        ("o3-pro", None),
        ("o3-mini", None),
        ("gpt-4o-audio-preview", None),
        ("gemini-2.5-flash-image", None),
        ("gpt-4", None),
        ("mystery-model", None),
        ("", None),
    ],
)
def test_table_lookup(model: str, expected: str | None) -> None:
    assert LOOKUP_TABLE.resolve(model) == expected


def test_prefix_match_never_takes_a_shorter_models_price() -> None:
    table = PriceTable.from_dict({"gpt-4.1": {"input": 2, "output": 8}})
    assert table.lookup("gpt-4.1-mini") is None
    assert table.lookup("gpt-4.1-2025-04-14") is table["gpt-4.1"]


def test_budgetkit_ships_no_price_list() -> None:
    """SPEC §8: the prices come from genai-prices; budgetkit's own table holds overrides only."""
    assert not (Path(bk.__file__).parent / "prices.json").exists()
    assert len(PriceTable.default()) == 0 and PriceTable.default() is PriceTable.default()
    assert len(LlmMeter().prices) == 0


def test_meter_clock_dates_the_price() -> None:
    """genai-prices' prices are dated: the meter prices a call at its clock's time."""
    calls: list[datetime] = []

    def clock() -> datetime:
        calls.append(datetime(2026, 1, 15, 12, tzinfo=UTC))
        return calls[-1]

    meter = LlmMeter(clock=clock)
    meter.amounts(usage("gpt-4.1", input_tokens=1), ("usd", "tokens"))
    assert len(calls) == 1
    meter.amounts(usage("gpt-4.1", input_tokens=1, provider_cost_usd=1), ("usd",))
    PINNED_METER.amounts(usage("gpt-4.1", input_tokens=1), ("usd",))
    assert len(calls) == 1  # a provider cost or an override needs no date
    with pytest.raises(bk.InvalidInput, match="timezone-aware"):
        LlmMeter(clock=lambda: datetime(2026, 1, 15)).amounts(usage("gpt-4.1"), ("usd",))
    with pytest.raises(bk.InvalidInput, match="callable"):
        LlmMeter(clock=datetime.now(UTC))  # type: ignore[arg-type]


def test_load_from_json_toml_and_dict(tmp_path: Path) -> None:
    json_path = tmp_path / "prices.json"
    json_path.write_text(
        '{"unit": "usd_per_1m_tokens", "models": {"My-Model": {"input": 0.1, "output": 0.3,'
        ' "aliases": ["my-alias"], "as_of": "2025-01-02", "source": "https://example.com"}}}'
    )
    toml_path = tmp_path / "prices.toml"
    toml_path.write_text(
        '[models."my-model"]\ninput = 0.1\noutput = 0.3\naliases = ["my-alias"]\n'
        'as_of = 2025-01-02\nsource = "https://example.com"\n'
    )
    flat = {"my-model": {"input": "0.1", "output": 0.3, "aliases": ["MY-ALIAS"]}}
    for table in (
        PriceTable.from_file(json_path),
        PriceTable.from_file(str(toml_path)),
        PriceTable.from_dict(flat),
    ):
        assert list(table) == ["my-model"]
        assert table.lookup("my-alias-2025-01-02") is table["MY-MODEL"]
        assert table["my-model"].input == Decimal("0.1")
        assert table["my-model"].input.as_tuple() == Decimal("0.1").as_tuple()


def test_with_overrides_replaces_and_extends(tmp_path: Path) -> None:
    base = PINNED
    path = tmp_path / "mine.toml"
    path.write_text(
        '[models."gpt-4.1"]\ninput = 1\noutput = 4\n\n[models."my-llm"]\ninput = 9\noutput = 9\n'
    )
    table = base.with_overrides(path)
    assert table["gpt-4.1"].input == 1 and table.lookup("gpt-4.1-2025-04-14") is table["gpt-4.1"]
    assert table["gpt-4.1"].cache_read is None  # a replaced entry keeps nothing of the old one
    assert table.resolve("my-llm-latest") == "my-llm"
    assert len(table) == len(base) + 1
    assert base["gpt-4.1"].input == 2  # the base table is untouched
    from_dict = base.with_overrides({"models": {"o3": {"input": 20, "output": 80}}})
    assert from_dict["o3"].output == 80
    assert base.with_overrides(
        PriceTable({"x": ModelPrice(input=Decimal(1), output=Decimal(2))})
    ).resolve("x")
    # The documented start of an override table: the empty default.
    assert PriceTable.default().with_overrides(path).resolve("my-llm") == "my-llm"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"m": {"input": -1, "output": 1}}, "negative"),
        ({"m": {"input": "nan", "output": 1}}, "finite"),
        ({"m": {"input": True, "output": 1}}, "number"),
        ({"m": {"input": 1, "output": 2_000_000}}, "at most"),
        ({"m": {"input": "1e-13", "output": 1}}, "decimal places"),
        ({"m": {"input": 1}}, "output"),
        ({"m": {"input": 1, "output": 1, "cached_input": 1}}, "cached_input"),
        (
            {
                "m": {
                    "input": 1,
                    "output": 1,
                    "tiers": [
                        {"above_prompt_tokens": 5, "input": 1, "output": 1},
                        {"above_prompt_tokens": 5, "input": 1, "output": 1},
                    ],
                }
            },
            "ascending",
        ),
        ({"a": {"input": 1, "output": 1}, "A": {"input": 1, "output": 1}}, "twice"),
        (
            {"a": {"input": 1, "output": 1}, "b": {"input": 1, "output": 1, "aliases": ["a"]}},
            "already",
        ),
        ({"models": {}, "unit": "eur_per_token"}, "unit"),
        ({"models": {}, "modles": {}}, "unknown keys"),
        ({"bad name": {"input": 1, "output": 1}}, "invalid model name"),
    ],
)
def test_invalid_tables_are_rejected(data: dict[str, Any], message: str) -> None:
    with pytest.raises(bk.InvalidInput, match=message):
        PriceTable.from_dict(data)


def test_invalid_files_are_rejected(tmp_path: Path) -> None:
    bad_json = tmp_path / "p.json"
    bad_json.write_text("{nope")
    bad_toml = tmp_path / "p.toml"
    bad_toml.write_text("[models\n")
    with pytest.raises(bk.InvalidInput, match="JSON"):
        PriceTable.from_file(bad_json)
    with pytest.raises(bk.InvalidInput, match="TOML"):
        PriceTable.from_file(bad_toml)
    with pytest.raises(bk.InvalidInput, match=r"\.json or \.toml"):
        PriceTable.from_file(tmp_path / "p.yaml")
    with pytest.raises(bk.InvalidInput, match="cannot read"):
        PriceTable.from_file(tmp_path / "missing.json")


def test_parse_rate_is_exact() -> None:
    assert parse_rate(0.175) == Decimal("0.175")
    assert parse_rate("14.00") == Decimal("14.00")
    assert parse_rate(3) == Decimal(3)
    with pytest.raises(bk.InvalidInput):
        parse_rate(float("inf"))


# ================================================================================================
# Usage records and SDK helpers
# ================================================================================================


def test_llm_usage_validation() -> None:
    call = LlmUsage(
        model="m", input_tokens=1, output_tokens=2, cache_read_tokens=3, cache_creation_tokens=4
    )
    assert call.prompt_tokens == 8 and call.total_tokens == 10
    assert LlmUsage(model="m", provider_cost_usd=0.1).provider_cost_usd == Decimal("0.1")
    for bad in (
        {"input_tokens": -1},
        {"input_tokens": True},
        {"input_tokens": 1.0},
        {"input_tokens": 10**13},
        {"provider_cost_usd": float("nan")},
        {"provider_cost_usd": -0.01},
        {"provider_cost_usd": "x"},
        {"unknown": 1},
    ):
        with pytest.raises(bk.InvalidInput, match="invalid LlmUsage"):
            LlmUsage(model="m", **bad)
    with pytest.raises(ValueError):
        LlmUsage(model="")
    # Deserialising goes through the same validation.
    assert LlmUsage.model_validate(
        {"model": "m", "provider_cost_usd": "0.5"}
    ).provider_cost_usd == Decimal("0.5")


def test_from_openai_chat_completion() -> None:
    response = SimpleNamespace(
        model="gpt-4.1-2025-04-14",
        usage=SimpleNamespace(
            prompt_tokens=1_200,
            completion_tokens=300,
            total_tokens=1_500,
            prompt_tokens_details=SimpleNamespace(cached_tokens=1_000, audio_tokens=0),
            completion_tokens_details=SimpleNamespace(reasoning_tokens=100),
        ),
    )
    call = from_openai_usage(response)
    assert call == LlmUsage(
        model="gpt-4.1-2025-04-14",
        provider="openai",
        input_tokens=200,
        output_tokens=300,
        cache_read_tokens=1_000,
    )
    # 200 x 2 + 1,000 x 0.5 + 300 x 8 = 3,300 → 0.0033
    assert meter_amounts(call, meter=PINNED_METER, currencies=["USD", "tokens"]) == {
        "usd": Decimal("0.0033"),
        "tokens": Decimal(1_500),
    }
    # The usage object alone, with an explicit model; no details at all.
    bare = SimpleNamespace(prompt_tokens=10, completion_tokens=5, prompt_tokens_details=None)
    assert from_openai_usage(bare, model="gpt-4o").input_tokens == 10


def test_from_openai_responses_api_and_dicts() -> None:
    response = {
        "model": "o4-mini",
        "usage": {
            "input_tokens": 500,
            "output_tokens": 700,
            "input_tokens_details": {"cached_tokens": 100},
            "output_tokens_details": {"reasoning_tokens": 600},
        },
    }
    call = from_openai_usage(response, provider="azure", cost_usd=0.002)
    assert (call.input_tokens, call.cache_read_tokens, call.output_tokens) == (400, 100, 700)
    assert call.provider == "azure" and call.provider_cost_usd == Decimal("0.002")


def test_from_openai_errors() -> None:
    with pytest.raises(bk.InvalidInput, match="no usage"):
        from_openai_usage(SimpleNamespace(model="gpt-4o"))
    with pytest.raises(bk.InvalidInput, match="model"):
        from_openai_usage(SimpleNamespace(prompt_tokens=1, completion_tokens=1))
    with pytest.raises(bk.InvalidInput, match="exceeds"):
        from_openai_usage(
            SimpleNamespace(
                prompt_tokens=1,
                completion_tokens=1,
                prompt_tokens_details=SimpleNamespace(cached_tokens=2),
            ),
            model="gpt-4o",
        )
    with pytest.raises(bk.InvalidInput, match="non-negative int"):
        from_openai_usage({"prompt_tokens": "12", "completion_tokens": 1}, model="gpt-4o")


def test_from_anthropic_message() -> None:
    message = SimpleNamespace(
        model="claude-sonnet-4-20250514",
        usage=SimpleNamespace(
            input_tokens=50,
            output_tokens=400,
            cache_read_input_tokens=10_000,
            cache_creation_input_tokens=2_000,
            server_tool_use=None,
        ),
    )
    call = from_anthropic_usage(message)
    assert call == LlmUsage(
        model="claude-sonnet-4-20250514",
        provider="anthropic",
        input_tokens=50,
        output_tokens=400,
        cache_read_tokens=10_000,
        cache_creation_tokens=2_000,
    )
    # 50 x 3 + 400 x 15 + 10,000 x 0.3 + 2,000 x 3.75 = 150 + 6,000 + 3,000 + 7,500 → 0.01665
    assert meter_amounts(call, meter=PINNED_METER, currencies=("usd",)) == {
        "usd": Decimal("0.01665")
    }
    # Cache fields are Optional in the SDK: None counts as 0.
    plain = SimpleNamespace(
        input_tokens=5,
        output_tokens=6,
        cache_read_input_tokens=None,
        cache_creation_input_tokens=None,
    )
    assert from_anthropic_usage(plain, model="claude-3-5-haiku").total_tokens == 11


# ================================================================================================
# Pluggable meters
# ================================================================================================


def test_tool_call_meter() -> None:
    meter = ToolCallMeter(
        {"web_search": 0.01, "code_exec": {"usd": "0.0005", "tool_calls": 1}},
        default={"usd": 0.001},
    )
    assert meter.amounts(ToolCall(tool="web_search", calls=3), ("usd", "tokens")) == {
        "usd": Decimal("0.03")
    }
    assert meter.amounts("code_exec", ("usd", "tool_calls")) == {
        "usd": Decimal("0.0005"),
        "tool_calls": Decimal(1),
    }
    assert meter.amounts("unknown_tool", ("usd",)) == {"usd": Decimal("0.001")}
    strict = ToolCallMeter({"web_search": 0.01})
    with pytest.raises(bk.InvalidInput, match="no price for tool"):
        strict.amounts("fetch", ("usd",))


def test_data_meter() -> None:
    per_gb = DataMeter(0.09)
    assert per_gb.amounts(DataUsage(bytes_processed=5 * 10**9), ("usd",)) == {
        "usd": Decimal("0.45")
    }
    assert per_gb.amounts(1, ("usd",)) == {"usd": Decimal(0)}  # 9e-11 rounds to 0
    per_gib = DataMeter({"usd": 1, "credits": 1000}, unit="GiB")
    assert per_gib.amounts(2**29, ("usd", "credits")) == {
        "usd": Decimal("0.5"),
        "credits": Decimal(500),
    }
    # 537 B = 0.00000050012... GiB → 0.000001 (half-up); 536 B = 0.00000049919... → 0
    assert per_gib.amounts(537, ("usd",)) == {"usd": Decimal("0.000001")}
    assert per_gib.amounts(536, ("usd",)) == {"usd": Decimal(0)}
    with pytest.raises(bk.InvalidInput, match="unknown data unit"):
        DataMeter(1, unit="floppy")


class GpuSecondsMeter:
    """A custom meter in a few lines: no Lua change, no rounding (budgetkit rounds)."""

    def amounts(self, usage: float, currencies: Sequence[str]) -> dict[str, Decimal]:
        return {"usd": Decimal(repr(usage)) * Decimal("0.0004"), "gpu_s": Decimal(repr(usage))}


def test_custom_meter_and_registry() -> None:
    meter = GpuSecondsMeter()
    assert isinstance(meter, Meter)
    registry = MeterRegistry({"gpu": meter})
    assert registry.get("gpu") is meter and "gpu" in registry and registry.names() == ("gpu",)
    with pytest.raises(bk.InvalidInput, match="already registered"):
        registry.register("gpu", meter)
    registry.register("gpu", GpuSecondsMeter(), replace=True)
    with pytest.raises(bk.InvalidInput, match="no meter named"):
        registry.get("tpu")
    with pytest.raises(bk.InvalidInput, match="invalid meter name"):
        registry.register("GPU meter", meter)
    with pytest.raises(bk.InvalidInput, match="amounts"):
        registry.register("x", object())  # type: ignore[arg-type]
    registry.unregister("gpu")
    assert len(registry) == 0
    # budgetkit rounds a custom meter's amounts half-up and keeps only requested currencies.
    assert meter_amounts(1.25, meter=meter, currencies=("usd",)) == {"usd": Decimal("0.0005")}
    assert meter_amounts(0.0013, meter=meter, currencies=("usd", "gpu_s")) == {
        "usd": Decimal("0.000001"),
        "gpu_s": Decimal("0.0013"),
    }
    assert "llm" in default_registry


def test_meter_amounts_rejects_bad_meter_output() -> None:
    class Negative:
        def amounts(self, usage: Any, currencies: Sequence[str]) -> dict[str, Any]:
            return {"usd": usage}

    with pytest.raises(bk.InvalidAmount, match="negative"):
        meter_amounts(-1, meter=Negative(), currencies=("usd",))
    with pytest.raises(bk.InvalidAmount, match="number"):
        meter_amounts("1", meter=Negative(), currencies=("usd",))
    with pytest.raises(bk.InvalidInput, match="sequence"):
        meter_amounts(usage(), currencies="usd")
    with pytest.raises(bk.InvalidInput, match="LlmUsage"):
        meter_amounts({"model": "gpt-4o"})


# ================================================================================================
# record_usage on both tiers
# ================================================================================================


@pytest_asyncio.fixture
async def kit(redis: Redis) -> AsyncIterator[bk.BudgetKit]:
    yield bk.BudgetKit(redis, clock=ManualClock())


def scope(session: str = "session_a") -> bk.Scope:
    return bk.Scope(organization_id=ORG, session_id=session, user_id="usr_1")


async def budgets(kit: bk.BudgetKit) -> dict[str, bk.Budget]:
    """One session budget per currency (usd 10, tokens 100,000, credits 100)."""
    out = {}
    for currency, limit in (("usd", 10), ("tokens", 100_000), ("credits", 100)):
        out[currency] = await kit.create_budget(ORG, "session", "session_a", currency, limit)
    return out


async def test_record_usage_debits_every_currency_exactly(kit: bk.BudgetKit) -> None:
    made = await budgets(kit)
    call = LlmUsage(
        model="gpt-4.1-2025-04-14", input_tokens=2_000, output_tokens=500, cache_read_tokens=1_000
    )
    result = await kit.record_usage(scope(), call, meter=PINNED_METER, ref_id="gen_1")
    assert result.check.action == "continue"
    by_budget = {entry.budget_id: entry for entry in result.entries}
    # usd: 2,000 x 2 + 500 x 8 + 1,000 x 0.5 = 8,500 → 0.0085; tokens 3,500; credits 3.5
    assert by_budget[made["usd"].id].amount == 0.0085
    assert by_budget[made["tokens"].id].amount == 3_500
    assert by_budget[made["credits"].id].amount == 3.5
    for entry in result.entries:
        assert entry.meter_source == "llm_tokens" and entry.ref_type == "llm_generation"
        assert entry.ref_id == "gen_1" and entry.session_id == "session_a"
    assert (await kit.get_budget(ORG, made["usd"].id)).balance == 9.9915
    for currency, limit in (("usd", 10), ("tokens", 100_000), ("credits", 100)):
        await assert_invariant(kit, ORG, made[currency].id, limit)


async def test_record_usage_provider_cost_and_idempotency(kit: bk.BudgetKit) -> None:
    made = await budgets(kit)
    call = LlmUsage(model="anything", input_tokens=10, provider_cost_usd=0.0123)
    first = await kit.record_usage(scope(), call, idempotency_key="k1")
    again = await kit.record_usage(scope(), call, idempotency_key="k1")
    assert not first.replayed and again.replayed
    assert (await kit.get_budget(ORG, made["usd"].id)).balance == 9.9877


async def test_unpriced_model_writes_nothing(
    kit: bk.BudgetKit, redis: Redis, redis_snapshot: Any
) -> None:
    made = await budgets(kit)
    before = await redis_snapshot(redis)
    call = LlmUsage(model="mystery-model-7", input_tokens=1_000, output_tokens=1_000)
    with pytest.raises(bk.UnpricedModel):
        await kit.record_usage(scope(), call)
    assert await redis_snapshot(redis) == before
    # Metering tokens only is the documented way around it: the usd budget is untouched.
    result = await kit.record_usage(scope(), call, currencies=("tokens",))
    assert [entry.budget_id for entry in result.entries] == [made["tokens"].id]
    assert (await kit.get_budget(ORG, made["usd"].id)).balance == 10


async def test_unpriced_model_is_fine_without_a_usd_budget(kit: bk.BudgetKit) -> None:
    """SPEC §8: the unpriced error is raised only when a usd budget is in the scope."""
    tokens = await kit.create_budget(ORG, "session", "session_a", "tokens", 100_000)
    call = LlmUsage(model="mystery-model-7", input_tokens=1_000, output_tokens=1_000)
    result = await kit.record_usage(scope(), call)
    assert [(e.budget_id, e.amount) for e in result.entries] == [(tokens.id, 2_000)]
    await kit.create_budget(ORG, "org", ORG, "usd", 10)  # now a usd budget is in the scope
    with pytest.raises(bk.UnpricedModel, match="mystery-model-7"):
        await kit.record_usage(scope(), call)
    assert (await kit.get_budget(ORG, tokens.id)).balance == 98_000


async def test_unpriced_tokens_only_policy(kit: bk.BudgetKit) -> None:
    made = await budgets(kit)
    meter = LlmMeter(unpriced="tokens_only")
    call = LlmUsage(model="mystery-model-7", input_tokens=1_000, output_tokens=1_000)
    result = await kit.record_usage(scope(), call, meter=meter)
    charged = {entry.budget_id: entry.amount for entry in result.entries}
    assert charged == {made["tokens"].id: 2_000, made["credits"].id: 2}
    assert (await kit.get_budget(ORG, made["usd"].id)).balance == 10  # never tokens as dollars


async def test_unpriced_fallback_price_policy(kit: bk.BudgetKit) -> None:
    made = await budgets(kit)
    meter = LlmMeter(
        unpriced="fallback_price", fallback_price=ModelPrice(input=Decimal(5), output=Decimal(15))
    )
    call = LlmUsage(model="mystery-model-7", input_tokens=1_000, output_tokens=1_000)
    await kit.record_usage(scope(), call, meter=meter)
    assert (await kit.get_budget(ORG, made["usd"].id)).balance == 9.98


async def test_record_usage_commits_a_reservation(kit: bk.BudgetKit) -> None:
    made = await budgets(kit)
    hold = await kit.reserve(scope(), {"usd": 1, "tokens": 10_000}, ttl_seconds=60)
    assert hold.granted
    call = LlmUsage(model="claude-sonnet-4-20250514", input_tokens=1_000, output_tokens=100)
    result = await kit.record_usage(
        scope(), call, meter=PINNED_METER, hold=hold, currencies=("usd", "tokens")
    )
    # 1,000 x 3 + 100 x 15 = 4,500 → 0.0045
    assert {e.budget_id: e.amount for e in result.entries} == {
        made["usd"].id: 0.0045,
        made["tokens"].id: 1_100,
    }
    with pytest.raises(bk.HoldNotFound):
        await kit.release(hold)
    with pytest.raises(bk.InvalidInput, match="same scope"):
        await kit.record_usage(scope("session_b"), call, hold=hold)


async def test_record_usage_with_registered_and_custom_meters(kit: bk.BudgetKit) -> None:
    made = await budgets(kit)
    gpu = await kit.create_budget(ORG, "session", "session_a", "gpu_s", 100)
    result = await kit.record_usage(
        scope(),
        12.5,
        meter=GpuSecondsMeter(),
        currencies=("usd", "gpu_s"),
        meter_source="gpu",
        ref_type="job",
    )
    assert {e.budget_id: e.amount for e in result.entries} == {made["usd"].id: 0.005, gpu.id: 12.5}
    assert {e.meter_source for e in result.entries} == {"gpu"}
    default_registry.register("test_tools", ToolCallMeter({"web_search": 0.01}))
    try:
        result = await kit.record_usage(
            scope(),
            ToolCall(tool="web_search", calls=2),
            meter="test_tools",
            meter_source="tool_call",
        )
    finally:
        default_registry.unregister("test_tools")
    assert [(e.budget_id, e.amount) for e in result.entries] == [(made["usd"].id, 0.02)]


async def test_kit_record_usage_is_the_same_call(kit: bk.BudgetKit) -> None:
    made = await budgets(kit)
    usage = bk.LlmUsage(model="gpt-4.1", provider="openai", input_tokens=1_000_000)
    result = await kit.record_usage(scope(), usage, meter=PINNED_METER, ref_id="gen_2")
    assert {e.budget_id: e.amount for e in result.entries}[made["usd"].id] == 2.0
