"""Conversion of API arguments into script arguments: validation first, then exact units.

Every function here raises an InvalidInput subclass for a bad value and touches nothing else;
the client calls them before it builds a single key, so a rejected call never reaches Redis.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal

from budgetkit._core.amounts import MAX_MICROS, plain_micros, to_micros
from budgetkit._core.errors import InvalidInput, InvalidLimit, InvalidPeriod, short_repr
from budgetkit._core.ids import normalize_currency
from budgetkit._core.models import (
    BudgetPeriod,
    CalendarPeriod,
    DurationPeriod,
    RollingPeriod,
    parse_period,
)
from budgetkit._core.periods import parse_calendar_unit, parse_rolling_window
from budgetkit._core.runtime import ScriptArg
from budgetkit._core.scope import Scope

Amount = int | float | Decimal

TEXT_BYTES_MAX = 1024
CURRENCIES_PER_DEBIT_MAX = 64
HOLD_TTL_S_MAX = 7 * 86_400
THRESHOLDS_MAX = 16
THRESHOLD_PPM_MAX = 10_000_000
STREAM_ID_RE = re.compile(r"[0-9]{1,20}(-[0-9]{1,20})?")

#: The period strings budget_period takes (the API and the CLI alike), for error messages.
PERIOD_STRINGS = (
    "a calendar unit (hour, day, week, month or year) or a rolling window: a whole number and "
    "an optional unit s, m, h, d or w, e.g. '30d', '12h', '90m', '3600s', '5 hours'"
)


def free_text(value: object, *, field: str, required: bool = False) -> str:
    """A free-text field (meter source, description): str, at most TEXT_BYTES_MAX bytes."""
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise InvalidInput(f"{field} must be a {'non-empty ' if required else ''}string")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: not text Redis can store as UTF-8
        raise InvalidInput(f"{field} must be valid Unicode text") from None
    if size > TEXT_BYTES_MAX:
        raise InvalidInput(f"{field} must be at most {TEXT_BYTES_MAX} bytes")
    return value


def warn_fraction_ppm(value: object) -> int:
    """Warn fraction in [0, 1] with at most 6 decimals, as parts per million."""
    ppm = to_micros(value, field="warn_fraction")
    if ppm > 1_000_000:
        raise InvalidLimit("warn_fraction must be between 0 and 1")
    return ppm


def budget_period(period: object) -> BudgetPeriod:
    """A validated period from a period string, a BudgetPeriod, or its JSON-shaped dict.

    Why: the API takes the CLI's period strings (issue 12), through this one parser:
    ``hour|day|week|month|year`` (any case) → calendar; a rolling window per SPEC §1 (``"30d"``,
    ``"12h"``, ``"5 hours"``) → rolling, the window kept as given. Raises InvalidPeriod saying
    what is accepted.
    """
    if isinstance(period, str):
        unit = parse_calendar_unit(period)
        if unit is not None:
            return parse_period({"type": "calendar", "unit": unit})
        if parse_rolling_window(period) is None:
            raise InvalidPeriod(f"invalid period {short_repr(period)}: expected {PERIOD_STRINGS}")
        return parse_period({"type": "rolling", "window": period})  # checks 1..2^53 seconds
    if isinstance(period, Mapping | DurationPeriod | RollingPeriod | CalendarPeriod):
        return parse_period(period)
    raise InvalidPeriod(
        f"period must be {PERIOD_STRINGS}; a BudgetPeriod; or a dict like "
        f"{{'type': 'duration', 'seconds': 3600}}, got {type(period).__name__}"
    )


def period_args(period: object) -> list[ScriptArg]:
    """JSON, kind, seconds, unit of a period for the scripts ('' for none)."""
    if period is None:
        return ["", "", "", ""]
    parsed = budget_period(period)
    seconds = parsed.duration_seconds()
    text = parsed.model_dump_json()
    if isinstance(parsed, CalendarPeriod):
        return [text, "c", "", parsed.unit]
    return [text, "d", str(seconds), ""]


def limit_micros(value: object, *, strict: bool = False) -> int:
    """A limit in micros: a valid amount that is > 0 after rounding (SPEC §2, §4 wording)."""
    micros = to_micros(value, field="limit", allow_negative=True, strict=strict)
    if micros <= 0:
        raise InvalidLimit("Limit must be positive")
    return micros


def soft_micros(value: object, limit_micros: int | None, *, strict: bool = False) -> str:
    """A soft limit in micros ('' for none) with 0 < soft <= limit when the limit is known."""
    if value is None:
        return ""
    micros = to_micros(value, field="soft_limit", allow_negative=True, strict=strict)
    if micros <= 0 or (limit_micros is not None and micros > limit_micros):
        raise InvalidLimit("Soft limit must be between 0 and limit")
    return str(micros)


def rollover_text(value: object, *, strict: bool = False) -> str:
    """rollover_max in micros ('' for None): an amount >= 0 (SPEC §11)."""
    if value is None:
        return ""
    return str(to_micros(value, field="rollover_max", strict=strict))


def thresholds_text(thresholds: object) -> str:
    """Extra warning thresholds (spent fractions of the limit, e.g. [0.5, 0.8, 0.95]) as the
    scripts store them: ascending ppm, comma-separated; None or [] for none."""
    if thresholds is None:
        return ""
    if isinstance(thresholds, str | bytes) or not isinstance(thresholds, Sequence):
        raise InvalidLimit("thresholds must be a list of fractions of the limit, e.g. [0.5, 0.8]")
    ppms = sorted({to_micros(t, field="threshold") for t in thresholds})
    if len(ppms) > THRESHOLDS_MAX or (ppms and not 0 < ppms[0] <= ppms[-1] <= THRESHOLD_PPM_MAX):
        raise InvalidLimit(
            f"thresholds: at most {THRESHOLDS_MAX} fractions in (0, 10] (1 = the whole limit)"
        )
    return ",".join(str(p) for p in ppms)


#: How deeply metadata may nest (objects and arrays). Redis's cjson decodes at most 1,000
#: levels; the limit is explicit so that it does not depend on Python's recursion limit, which
#: applications raise.
METADATA_DEPTH_MAX = 64


def metadata_depth_ok(value: object, limit: int = METADATA_DEPTH_MAX) -> bool:
    """Whether ``value`` nests at most ``limit`` objects/arrays deep (iterative: any depth)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[object] = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children)
    return True


def metadata_json(metadata: object) -> str:
    if metadata is None:
        return ""
    if not metadata_depth_ok(metadata):
        raise InvalidInput(f"metadata may be nested at most {METADATA_DEPTH_MAX} levels deep")
    try:
        return json.dumps(metadata, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as error:
        raise InvalidInput(f"metadata must be JSON-serializable: {short_repr(error)}") from None


def amounts_micros(amounts: Mapping[str, Amount], *, strict: bool = False) -> dict[str, int]:
    """Per-currency amounts (>= 0, rounded half-up to the micro-unit unless ``strict``)."""
    if not isinstance(amounts, Mapping):
        raise InvalidInput("amounts must be a mapping of currency to amount")
    if len(amounts) > CURRENCIES_PER_DEBIT_MAX:
        raise InvalidInput(f"at most {CURRENCIES_PER_DEBIT_MAX} currencies per call")
    out: dict[str, int] = {}
    for currency, amount in amounts.items():
        code = normalize_currency(currency)
        if code in out:
            raise InvalidInput(f"currency {code!r} given twice")
        micros = plain_micros(amount)  # the common case, without building the field's name
        if micros is None:
            micros = to_micros(amount, field=f"amount[{code}]", strict=strict)
        out[code] = micros
    return out


def unpriced_text(currencies: object) -> str:
    if type(currencies) in (tuple, list) and not currencies:  # the common case: none
        return ""
    if isinstance(currencies, str) or not isinstance(currencies, Sequence):
        raise InvalidInput("unpriced_currencies must be a sequence of currency codes")
    return ",".join(sorted({normalize_currency(c) for c in currencies}))


def amount_args(micros: Mapping[str, int]) -> list[ScriptArg]:
    """The script form of per-currency amounts: a count, then currency, amount pairs."""
    args: list[ScriptArg] = [str(len(micros))]
    for currency, amount in micros.items():
        args += [currency, str(amount)]
    return args


def usage_fields(
    scope: Scope,
    meter_source: object,
    ref_type: object,
    ref_id: object,
    description: object,
) -> list[ScriptArg]:
    """meter_source, ref_type, ref_id, session id, description of a ledger entry ('' = none)."""
    return [
        free_text(meter_source, field="meter_source", required=True),
        free_text(ref_type, field="ref_type"),
        free_text(ref_id, field="ref_id"),
        scope.session_id or "",
        free_text(description, field="description"),
    ]


def page_bounds(limit: object, offset: object, limit_max: int) -> tuple[int, int]:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= limit_max:
        raise InvalidInput(f"limit must be an integer in [1, {limit_max}]")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= 100_000:
        raise InvalidInput("offset must be an integer in [0, 100000]")
    return limit, offset


def ttl_ms(ttl_seconds: object) -> int:
    """A hold TTL in ms: a finite number of seconds in (0, 7 days], rounded half-up to the ms."""
    if (
        isinstance(ttl_seconds, int | float)
        and not isinstance(ttl_seconds, bool)
        and 0 < ttl_seconds <= HOLD_TTL_S_MAX
        and float(ttl_seconds).is_integer()
    ):
        return int(ttl_seconds) * 1000  # whole seconds (the common case): exact, no Decimal
    problem = f"ttl_seconds must be a number of seconds in (0, {HOLD_TTL_S_MAX}]"
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int | float | Decimal):
        raise InvalidInput(f"{problem}, got {short_repr(ttl_seconds)}")
    exact = Decimal(repr(ttl_seconds)) if isinstance(ttl_seconds, float) else Decimal(ttl_seconds)
    if not exact.is_finite() or not 0 < exact <= HOLD_TTL_S_MAX:
        raise InvalidInput(f"{problem}, got {short_repr(ttl_seconds)}")
    return max(1, int(exact.scaleb(3).quantize(Decimal(1), rounding=ROUND_HALF_UP)))


def is_stream_id(value: object) -> bool:
    """A Redis stream id: ``ms`` or ``ms-seq``, each part below 2^64."""
    if not isinstance(value, str) or not STREAM_ID_RE.fullmatch(value):
        return False
    return all(int(part) < 2**64 for part in value.split("-"))


def stream_cap(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_MICROS:
        raise InvalidInput("a stream cap must be an integer in [0, 2^53 - 1]")
    return value
