"""Periods (SPEC §1, §7): rolling-window parsing, UTC calendar buckets, aligned period starts."""

from __future__ import annotations

import calendar
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from budgetkit._core.errors import InvalidInput, InvalidPeriod
from budgetkit._core.periods import (
    CALENDAR_UNITS,
    aligned_period_start_ms,
    bucket_start_ms,
    parse_rolling_window,
)

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
#: 1970-01-05 was the first Monday after the epoch (a Thursday).
FIRST_MONDAY_MS = 4 * DAY_MS
U64_MAX = 2**64 - 1

#: Timestamps from 1970 through 2200, in ms.
any_ms = st.integers(min_value=0, max_value=7_258_118_400_000)


def ms(*args: int) -> int:
    """Unix ms of a UTC date and time given as (year, month, day[, hour, minute, second, ms])."""
    parts = [*args, 0, 0, 0, 0][:7]
    year, month, day, hour, minute, second, millis = parts
    stamp = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    return int(stamp.timestamp()) * 1000 + millis


# ---------------------------------------------------------------------------
# parse_rolling_window: the seed's function, character for character
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "seconds"),
    [
        ("5h", 18_000),
        (" 5H ", 18_000),
        ("5 hours", 18_000),
        ("90", 90),
        ("30d", 2_592_000),
        ("24h", 86_400),
        ("7d", 604_800),
        ("30m", 1_800),
        ("2w", 1_209_600),
        ("1 WEEK", 604_800),
        ("10 Secs", 10),
        ("3hrs", 10_800),
        ("1wk", 604_800),
        ("0", 0),
        ("0005h", 18_000),
        ("\t5\u3000h\n", 18_000),
        ("18446744073709551615", U64_MAX),
        ("18446744073709551615s", U64_MAX),
        ("3074457345618258602h", None),
        ("18446744073709551616", None),
        ("1" * 5000, None),
        ("0" * 5000 + "5h", 18_000),
    ],
)
def test_rolling_window_values(window: str, seconds: int | None) -> None:
    assert parse_rolling_window(window) == seconds


@pytest.mark.parametrize(
    "window",
    [
        "1.5h",
        "-5h",
        "h",
        "1mo",
        "5y",
        "",
        "   ",
        "5 h r",
        "+5h",
        "5hh",
        "5ms",
        "\u0665h",  # Arabic-Indic digit five: not an ASCII digit
        "\uff15h",  # fullwidth digit five
        "5\u212ahr",  # Kelvin sign: Rust's to_ascii_lowercase leaves it alone
        "\x1c5h",  # Python's strip() removes U+001C, Rust's trim() does not
        "5h\x1f",
    ],
)
def test_rolling_window_invalid(window: str) -> None:
    assert parse_rolling_window(window) is None


def reference_rolling_window(window: str) -> int | None:
    """An independent reading of the seed's function, for property tests on ASCII input."""
    trimmed = window.strip(" \t\n\r\x0b\x0c")
    index = 0
    while index < len(trimmed) and trimmed[index] in "0123456789":
        index += 1
    if index == 0:
        return None
    unit = trimmed[index:].strip(" \t\n\r\x0b\x0c").lower()
    table = {"": 1, "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1}
    table |= {"m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60}
    table |= {"h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600}
    table |= {"d": 86400, "day": 86400, "days": 86400}
    table |= {"w": 604800, "wk": 604800, "wks": 604800, "week": 604800, "weeks": 604800}
    if unit not in table:
        return None
    value = int(trimmed[:index]) * table[unit]
    return value if value <= U64_MAX else None


@given(st.text(alphabet=st.sampled_from("0123456789 \tsmhdwSMHDWecnourkay.-"), max_size=24))
def test_rolling_window_matches_reference(window: str) -> None:
    assert parse_rolling_window(window) == reference_rolling_window(window)


# ---------------------------------------------------------------------------
# bucket_start_ms
# ---------------------------------------------------------------------------


def test_calendar_units() -> None:
    assert CALENDAR_UNITS == ("hour", "day", "week", "month", "year")


@pytest.mark.parametrize(
    ("now", "unit", "start"),
    [
        (ms(2024, 1, 2, 3, 4, 5, 678), "hour", ms(2024, 1, 2, 3)),
        (ms(2024, 1, 2, 3, 4, 5, 678), "day", ms(2024, 1, 2)),
        (ms(2024, 1, 2, 3, 4, 5, 678), "week", ms(2024, 1, 1)),  # a Monday
        (ms(2024, 1, 7, 23, 59, 59, 999), "week", ms(2024, 1, 1)),  # the Sunday after
        (ms(2024, 1, 8), "week", ms(2024, 1, 8)),
        (ms(2024, 1, 2, 3, 4, 5, 678), "month", ms(2024, 1, 1)),
        (ms(2024, 1, 2, 3, 4, 5, 678), "year", ms(2024, 1, 1)),
        (ms(2024, 2, 29, 23, 59, 59, 999), "day", ms(2024, 2, 29)),  # leap day
        (ms(2024, 2, 29, 23, 59, 59, 999), "month", ms(2024, 2, 1)),
        (ms(2024, 3, 1), "month", ms(2024, 3, 1)),
        (ms(2023, 2, 28, 12), "month", ms(2023, 2, 1)),
        (ms(2024, 12, 31, 23, 59, 59, 999), "year", ms(2024, 1, 1)),
        (ms(2025, 1, 1), "year", ms(2025, 1, 1)),
        (ms(2021, 1, 1, 12), "week", ms(2020, 12, 28)),  # ISO week 53 of 2020
        (ms(2021, 1, 3, 23), "week", ms(2020, 12, 28)),
        (ms(2021, 1, 4), "week", ms(2021, 1, 4)),
        (ms(2019, 12, 31), "week", ms(2019, 12, 30)),  # ISO week 1 of 2020
        (ms(1970, 1, 1), "week", ms(1969, 12, 29)),
        (ms(2000, 2, 29, 1), "month", ms(2000, 2, 1)),  # leap century
        (0, "year", 0),
    ],
)
def test_bucket_start_examples(now: int, unit: str, start: int) -> None:
    assert bucket_start_ms(now, unit) == start


def reference_bucket(now_ms: int, unit: str) -> tuple[int, int]:
    """Bucket [start, end) in ms from arithmetic and calendar.timegm, independent of datetime."""
    if unit == "hour":
        start = now_ms - now_ms % HOUR_MS
        return start, start + HOUR_MS
    if unit == "day":
        start = now_ms - now_ms % DAY_MS
        return start, start + DAY_MS
    if unit == "week":
        start = (now_ms - FIRST_MONDAY_MS) // WEEK_MS * WEEK_MS + FIRST_MONDAY_MS
        return start, start + WEEK_MS
    tm = time.gmtime(now_ms // 1000)
    if unit == "month":
        next_year, next_month = divmod(tm.tm_year * 12 + tm.tm_mon, 12)
        start_s = calendar.timegm((tm.tm_year, tm.tm_mon, 1, 0, 0, 0))
        end_s = calendar.timegm((next_year, next_month + 1, 1, 0, 0, 0))
        return start_s * 1000, end_s * 1000
    start_s = calendar.timegm((tm.tm_year, 1, 1, 0, 0, 0))
    end_s = calendar.timegm((tm.tm_year + 1, 1, 1, 0, 0, 0))
    return start_s * 1000, end_s * 1000


@given(any_ms, st.sampled_from(CALENDAR_UNITS))
def test_bucket_start_matches_reference(now_ms: int, unit: str) -> None:
    start, end = reference_bucket(now_ms, unit)
    assert start <= now_ms < end
    assert bucket_start_ms(now_ms, unit) == start


@given(any_ms, st.sampled_from(CALENDAR_UNITS))
def test_bucket_start_is_a_boundary(now_ms: int, unit: str) -> None:
    start = bucket_start_ms(now_ms, unit)
    assert start <= now_ms
    assert bucket_start_ms(start, unit) == start  # idempotent: the start is its own bucket
    if start > 0:
        assert bucket_start_ms(start - 1, unit) < start  # one ms earlier is the previous bucket
    stamp = datetime.fromtimestamp(start / 1000, tz=UTC)
    assert (stamp.minute, stamp.second, stamp.microsecond) == (0, 0, 0)
    if unit != "hour":
        assert stamp.hour == 0
    if unit == "week":
        assert stamp.isoweekday() == 1
        assert (
            stamp.isocalendar()[:2]
            == datetime.fromtimestamp(now_ms // 1000, tz=UTC).isocalendar()[:2]
        )
    if unit in ("month", "year"):
        assert stamp.day == 1
    if unit == "year":
        assert stamp.month == 1


@pytest.mark.parametrize(
    ("year", "month", "days"),
    [(2024, 2, 29), (2023, 2, 28), (2100, 2, 28), (2000, 2, 29), (2024, 4, 30), (2024, 12, 31)],
)
def test_month_ends(year: int, month: int, days: int) -> None:
    last_ms = ms(year, month, days, 23, 59, 59, 999)
    assert bucket_start_ms(last_ms, "month") == ms(year, month, 1)
    assert bucket_start_ms(last_ms + 1, "month") == last_ms + 1


@pytest.mark.parametrize("unit", ["Month", "weeks", "minute", "", "fortnight"])
def test_bucket_unknown_unit(unit: str) -> None:
    with pytest.raises(InvalidPeriod, match="hour, day, week, month, year"):
        bucket_start_ms(0, unit)


@pytest.mark.parametrize("now_ms", [1.5, "0", True, None])
def test_bucket_rejects_non_int(now_ms: object) -> None:
    with pytest.raises(InvalidInput):
        bucket_start_ms(now_ms, "day")  # type: ignore[arg-type]


def test_bucket_rejects_out_of_range() -> None:
    with pytest.raises(InvalidInput, match="outside the years"):
        bucket_start_ms(10**20, "day")


# ---------------------------------------------------------------------------
# aligned_period_start_ms
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("started", "now", "seconds", "expected"),
    [
        (1_000, 1_000, 60, 1_000),
        (1_000, 60_999, 60, 1_000),
        (1_000, 61_000, 60, 61_000),
        (1_000, 61_001, 60, 61_000),
        (1_000, 1_000 + 10 * 3_600_000 + 5, 3_600, 1_000 + 10 * 3_600_000),
        (5_000, 4_000, 60, 5_000),  # a start in the future is kept
    ],
)
def test_aligned_period_start(started: int, now: int, seconds: int, expected: int) -> None:
    assert aligned_period_start_ms(started, now, seconds) == expected


@given(
    st.integers(min_value=0, max_value=2**50),
    st.integers(min_value=0, max_value=2**50),
    st.integers(min_value=1, max_value=10**8),
)
def test_aligned_period_start_properties(started: int, now: int, seconds: int) -> None:
    aligned = aligned_period_start_ms(started, now, seconds)
    if now < started:
        assert aligned == started
        return
    period_ms = seconds * 1000
    assert (aligned - started) % period_ms == 0
    assert started <= aligned <= now < aligned + period_ms


@pytest.mark.parametrize("seconds", [0, -1, True, 1.5])
def test_aligned_period_rejects_bad_seconds(seconds: object) -> None:
    with pytest.raises(InvalidPeriod):
        aligned_period_start_ms(0, 1, seconds)  # type: ignore[arg-type]
