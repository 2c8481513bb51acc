"""Meters: turn a usage record into per-currency amounts, then charge them in one round trip.

The public face of budgetkit's meters (``budgetkit._core.metering`` holds them): LLM, tool-call
and data meters, the usage records they read, the price tables, and the SDK helpers. See the
docs' Metering page.
"""

from budgetkit._core.metering import (
    DEFAULT_CURRENCIES,
    DataMeter,
    DataUsage,
    LlmMeter,
    LlmUsage,
    Meter,
    Metered,
    MeterRegistry,
    ToolCall,
    ToolCallMeter,
    UnpricedPolicy,
    default_registry,
    from_anthropic_usage,
    from_openai_usage,
    meter_amounts,
    meter_for_charge,
)

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
