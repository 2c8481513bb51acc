"""Budget periods: rolling-window parsing and UTC calendar buckets (SPEC §1, §7).

``parse_calendar_unit`` and ``parse_rolling_window`` read the period strings the API and the CLI
take (``convert.budget_period`` builds the period from them). ``parse_rolling_window`` is a port
of the seed's Rust function, character for character (Rust's ``trim`` and ``to_ascii_lowercase``,
u64 overflow). ``bucket_start_ms`` and ``aligned_period_start_ms`` are the reference
implementations the Lua scripts are tested against.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from budgetkit._core.errors import InvalidInput, InvalidPeriod, short_repr

__all__ = [
    "CALENDAR_UNITS",
    "aligned_period_start_ms",
    "bucket_start_ms",
    "parse_calendar_unit",
    "parse_rolling_window",
]

#: Calendar units of a calendar period, UTC: hour, day, ISO week (from Monday), month, year.
CALENDAR_UNITS = ("hour", "day", "week", "month", "year")

#: Largest value of a Rust u64, the range of a parsed rolling window in seconds.
_U64_MAX = 2**64 - 1

#: Decimal digits of ``_U64_MAX``; longer numbers (after leading zeros) overflow u64.
_U64_DIGITS_MAX = len(str(_U64_MAX))

#: Seconds per unit suffix of a rolling window (the seed's table).
_WINDOW_UNIT_SECONDS: dict[str, int] = {
    **dict.fromkeys(("", "s", "sec", "secs", "second", "seconds"), 1),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3_600),
    **dict.fromkeys(("d", "day", "days"), 86_400),
    **dict.fromkeys(("w", "wk", "wks", "week", "weeks"), 604_800),
}

#: What Rust's ``str::trim`` removes: characters with the Unicode ``White_Space`` property.
#: (Python's ``str.strip`` also removes U+001C..U+001F, which Rust keeps.)
_RUST_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)

_ASCII_DIGITS = "0123456789"
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


def parse_rolling_window(window: str) -> int | None:
    """Parse a rolling window like ``"5h"``, ``" 30 days "`` or ``"90"`` into seconds.

    Why: a port of the seed's ``parse_rolling_window``, so budgetkit reads every window exactly
    as the reference does: trim; leading ASCII digits (none → None); the rest, trimmed and
    ASCII-lower-cased, is a unit (s/m/h/d/w and spellings; none means seconds); a result above
    2**64 - 1 (u64) → None. Returns seconds in ``[0, 2**64 - 1]`` or None.
    """
    trimmed = window.strip(_RUST_WHITESPACE)
    digits_len = len(trimmed) - len(trimmed.lstrip(_ASCII_DIGITS))
    significant = trimmed[:digits_len].lstrip("0")
    if digits_len == 0 or len(significant) > _U64_DIGITS_MAX:
        return None
    value = int(significant or "0")
    unit = trimmed[digits_len:].strip(_RUST_WHITESPACE).translate(_ASCII_LOWER)
    multiplier = _WINDOW_UNIT_SECONDS.get(unit)
    if multiplier is None or value > _U64_MAX:
        return None
    seconds = value * multiplier
    return seconds if seconds <= _U64_MAX else None


def parse_calendar_unit(text: str) -> str | None:
    """Return the calendar unit a period string names (``"month"``, ``" Month "``), else None.

    Why: ``create_budget(period="month")`` and ``--period month`` name a calendar period; the
    string is trimmed and ASCII-lower-cased like a rolling window's unit, so ``"Month"`` is not
    mistaken for an invalid window.
    """
    unit = text.strip(_RUST_WHITESPACE).translate(_ASCII_LOWER)
    return unit if unit in CALENDAR_UNITS else None


def _check_ms(value: int, *, field: str) -> None:
    """Reject a timestamp that is not an int (bool is not a timestamp)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{field} must be an int of milliseconds, got {type(value).__name__}")


def _bucket_start(now: datetime, unit: str) -> datetime:
    """Return the start of the UTC calendar bucket of ``unit`` containing ``now``."""
    hour = now.replace(minute=0, second=0, microsecond=0)
    day = hour.replace(hour=0)
    if unit == "hour":
        return hour
    if unit == "day":
        return day
    if unit == "week":
        return day - timedelta(days=day.weekday())
    if unit == "month":
        return day.replace(day=1)
    if unit == "year":
        return day.replace(month=1, day=1)
    raise InvalidPeriod(f"unknown calendar unit {unit!r}; accepted: {', '.join(CALENDAR_UNITS)}")


def bucket_start_ms(now_ms: int, unit: str) -> int:
    """Return the start (unix ms) of the UTC calendar bucket of ``unit`` that contains ``now_ms``.

    Why: calendar periods reset when ``now`` enters a new bucket, and ``period_started_at`` is
    aligned to the bucket start (SPEC §7). Buckets: hour, day, ISO week (Monday 00:00), month,
    year, all in UTC. ``now_ms``: unix time in ms within years 1..9999. Raises InvalidPeriod for
    an unknown unit, InvalidInput for a timestamp out of range.
    """
    _check_ms(now_ms, field="now_ms")
    try:
        now = _EPOCH + timedelta(milliseconds=now_ms)
    except OverflowError:
        raise InvalidInput(f"now_ms {now_ms} is outside the years 1..9999") from None
    start = _bucket_start(now, unit)
    return (start - _EPOCH) // _ONE_MS


def aligned_period_start_ms(started_ms: int, now_ms: int, seconds: int) -> int:
    """Return the start (unix ms) of the current period of a duration or rolling budget.

    Why: on rollover the period start is aligned to ``started + k * period`` (the largest k ≥ 0
    with that ≤ now) so periods never drift (SPEC §7). A start in the future is returned
    unchanged: it never triggers a reset. ``seconds``: the period length, > 0.
    """
    _check_ms(started_ms, field="started_ms")
    _check_ms(now_ms, field="now_ms")
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds <= 0:
        raise InvalidPeriod(f"period seconds must be a positive int, got {short_repr(seconds)}")
    if now_ms < started_ms:
        return started_ms
    period_ms = seconds * 1000
    return started_ms + (now_ms - started_ms) // period_ms * period_ms
