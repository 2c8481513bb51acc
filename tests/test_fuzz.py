"""Hostile input, fuzzed: every public BudgetKit method, and hand-corrupted budget hashes.

Input fuzzing (``test_fuzz_*``): a baseline state (two organizations, budgets at three levels, a
debit that emitted events, an idempotency record, an outstanding hold per organization) is built
once; then every Hypothesis example calls ONE public method with at least one hostile argument
(NaN, ±inf, negative, huge, too many decimals, wrong types, empty / overlong / unicode /
control-character ids, braces, colons and newlines in ids, malformed periods, metadata, stream ids,
page sizes ...). Each argument is judged by the rules of SPEC §2/§4 (oracles below, written from
the spec, not from the library), and:

* an argument the spec rejects  → the call raises ``bk.InvalidInput`` (also a ``ValueError``) and
  Redis is byte-for-byte unchanged (``DUMP`` of every key);
* all arguments acceptable      → the call succeeds and every key it wrote, created or deleted
  carries the caller's hash tag (``bk:{<org>}:``), or it raises a typed ``bk.BudgetkitError``
  (unknown id → BudgetNotFound / HoldNotFound, ...) and Redis is unchanged;
* never another exception type, never a write next to an error.

A successful call's writes are undone (RESTORE of the baseline DUMPs) before the next example.

A library bug found by this fuzzer can be listed in ``KNOWN_BUGS`` while it is open: inputs that
hit it are counted apart (and printed). Every bug found so far is fixed and has a minimal
regression test below (``test_fixed_bug_*``).

Corrupted state (``test_corrupt_*``): every field of a budget hash is set by hand (HSET / HDEL) to
nonsense; check, check_tool, debit, reserve, get, list, top_up, update and resume must raise
``bk.CorruptState`` and write nothing.
"""

from __future__ import annotations

import asyncio
import decimal
import math
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as redis_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import exceptions as redis_errors
from support import ManualClock

import budgetkit as bk

ORG_A = "org_a"
ORG_B = "org_b"
NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
MAX_MICROS = 2**53 - 1
HOLD_TTL_MS_MAX = 7 * 86_400 * 1000
CALL_TIMEOUT_S = 10.0

#: Hypothesis examples (of 1-6 calls each) per tier. The real tier is the proof; the fake tier
#: keeps a run without redis-server honest.
EXAMPLES = {"real": 400, "fake": 40}

Snapshot = dict[bytes, bytes]
SnapshotFn = Callable[[redis_asyncio.Redis], Awaitable[Snapshot]]


# -- oracles: what SPEC §2 / §4 accept ---------------------------------------------------------

_WIDE = decimal.Context(prec=200, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)


def spec_identifier_ok(value: object) -> bool:
    """SPEC §4: a str of 1-256 UTF-8 bytes, printable, no whitespace/control chars, no braces."""
    if not isinstance(value, str) or not value:
        return False
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate is no UTF-8
        return False
    return size <= 256 and all(c.isprintable() and not c.isspace() and c not in "{}" for c in value)


def spec_exact(value: object) -> Decimal | None:
    """SPEC §2: the exact decimal of an amount given to the API (a float through its shortest
    repr, a numeric string of at most 64 characters), or None for a wrong type, NaN or ±inf."""
    if isinstance(value, str):
        text = value.strip()
        if len(text) > 64:
            return None
        try:
            value = Decimal(text)
        except decimal.InvalidOperation:
            return None
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return Decimal(repr(value))  # the shortest round-trip decimal
    exact = Decimal(value)
    return exact if exact.is_finite() else None


def spec_negative(value: object) -> bool:
    """Whether an amount is below zero before rounding (rejected where negatives are)."""
    exact = spec_exact(value)
    return exact is not None and exact < 0


def spec_micros(value: object) -> int | None:
    """SPEC §2: the micro-units of an amount given to the API, rounded half-up (away from
    zero), or None when it must be rejected whatever its sign (wrong type, NaN, ±inf, beyond
    2**53-1)."""
    exact = spec_exact(value)
    if exact is None:
        return None
    if not exact.is_zero() and exact.adjusted() >= 10:  # >= 1e10 units > 2**53-1 micros
        return None
    scaled = exact.scaleb(6, context=_WIDE)
    micros = int(scaled.to_integral_value(rounding=decimal.ROUND_HALF_UP, context=_WIDE))
    return micros if abs(micros) <= MAX_MICROS else None


def spec_currency_ok(value: object) -> bool:
    """SPEC §4: case-insensitive, 1-32 of a-z 0-9 _."""
    return (
        isinstance(value, str)
        and value.isascii()
        and re.fullmatch(r"[a-z0-9_]{1,32}", value.lower()) is not None
    )


def spec_ttl_ok(value: object) -> bool:
    """A hold TTL: a number (no string) of seconds in (0, 7 days], rounded to the ms."""
    if isinstance(value, str):
        return False
    exact = spec_exact(value)
    return exact is not None and 0 < exact <= Decimal(HOLD_TTL_MS_MAX) / 1000


def amounts_ok(value: object) -> bool:
    """A debit/reserve/commit amounts mapping: <= 64 distinct currencies, amounts >= 0."""
    if not isinstance(value, Mapping) or len(value) > 64:
        return False
    seen: set[str] = set()
    for currency, amount in value.items():
        if not spec_currency_ok(currency) or currency.lower() in seen:
            return False
        seen.add(currency.lower())
        micros = spec_micros(amount)
        if micros is None or micros < 0 or spec_negative(amount):
            return False
    return True


def thresholds_ok(value: object) -> bool:
    """Extra warning thresholds: None, or a list of <= 16 distinct fractions in (0, 10]."""
    if value is None:
        return True
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        return False
    ppms = set()
    for item in value:
        micros = spec_micros(item)
        if micros is None or micros <= 0 or micros > 10_000_000 or spec_negative(item):
            return False
        ppms.add(micros)
    return len(ppms) <= 16


def page_ok(value: object, low: int, high: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and low <= value <= high


# -- hostile values ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Thunk:
    """A value built inside the call (e.g. a Scope whose constructor validates)."""

    make: Callable[[], Any]
    text: str

    def __repr__(self) -> str:
        return self.text


@dataclass(frozen=True)
class V:
    """One drawn argument and the spec's verdict on it: True (acceptable), False (must be
    rejected), None (the spec leaves it open: a typed error or a success are both fine)."""

    value: Any
    ok: bool | None
    org: str | None = None  # the organization the call acts on, when this argument names it

    def get(self) -> Any:
        return self.value.make() if isinstance(self.value, Thunk) else materialize(self.value)


class DeepList(list[Any]):
    """A list nested deeper than the JSON encoder's recursion limit (short repr)."""

    def __repr__(self) -> str:
        return "DeepList(depth=10000)"


def deep_list(depth: int = 10_000) -> DeepList:
    inner: list[Any] = []
    for _ in range(depth):
        inner = [inner]
    return DeepList(inner)


@dataclass(frozen=True)
class Huge:
    """Stands for an int of more than 4,300 digits, which Python refuses to repr(); Hypothesis
    reprs drawn values, so the int itself is made only inside the call (``V.get``)."""

    sign: int

    def __repr__(self) -> str:
        return "-10**5000" if self.sign < 0 else "10**5000"

    def make(self) -> int:
        return self.sign * 10**5000


HUGE = Huge(1)
NEG_HUGE = Huge(-1)


def materialize(value: Any) -> Any:
    """Replaces Huge placeholders by their ints, at the top level or one level down."""
    if isinstance(value, Huge):
        return value.make()
    if type(value) is dict and any(isinstance(v, Huge) for v in value.values()):
        return {k: materialize(v) for k, v in value.items()}
    if type(value) in (list, tuple) and any(isinstance(v, Huge) for v in value):
        return type(value)(materialize(v) for v in value)
    return value


def holds_huge(value: object) -> bool:
    if isinstance(value, Mapping):
        return any(isinstance(v, Huge) for v in value.values())
    if isinstance(value, list | tuple):
        return any(isinstance(v, Huge) for v in value)
    return isinstance(value, Huge)


WRONG_TYPES: list[Any] = [
    None,
    True,
    False,
    b"org_a",
    bytearray(b"x"),
    ["org_a"],
    ("org_a",),
    {"org_a": 1},
    1,
    1.5,
    1j,
    Fraction(1, 3),
    object(),
    HUGE,
]

VALID_IDS = [
    ORG_A,
    ORG_B,
    "org_b:b:x",
    "org_a:s:session:s1",
    "o:x",
    ":",
    "::",
    "bk:",
    "*",
    "?[a-z]\\",
    "%s%n",
    "'; FLUSHALL; --",
    "ü",
    "日本語",
    "\u115f",  # Hangul filler: printable, not whitespace
    "🙂" * 64,  # 256 UTF-8 bytes
    "é" * 128,  # 256 UTF-8 bytes
    "x" * 256,
    "s1",
    "u1",
    "bdgt_01933b5a000070008000000000000001",
]
INVALID_IDS = [
    "",
    "x" * 257,
    "é" * 129,
    "🙂" * 65,
    "o}:x",
    "o:{x}",
    "{org_b}",
    "org_a}:b:x",
    "org_b}",
    "{",
    "}",
    "org_a\n",
    "org_a:s:session:s1\r\n",
    " org_a",
    "org a",
    "org\ta",
    "org\x00a",
    "\x1b[31m",
    "\x7f",
    "\x85",
    "\xa0",
    "\u2028",
    "\u3000",
    "\u200b",  # zero-width space (Cf, not printable)
    "\ufeff",
    "\u202e",  # right-to-left override
    "\ue000",  # private use
    "\u0378",  # unassigned
    "\ud800",  # lone surrogate
    "a\udfffb",
]
BAD_CHARS = " \t\n\r\x00\x1b\x7f\x85\xa0\u2028\u2029\u3000\u200b\ufeff\u202e\ud800{}"
PRINTABLE = st.characters(categories=("L", "M", "N", "P", "S"), exclude_characters="{}")


def _id(value: object) -> V:
    ok = spec_identifier_ok(value)
    return V(value, ok, org=value if ok and isinstance(value, str) else None)


valid_id_values = st.one_of(
    st.sampled_from(VALID_IDS),
    st.text(PRINTABLE, min_size=1, max_size=24).filter(lambda s: len(s.encode()) <= 256),
)
id_values = st.one_of(
    valid_id_values,
    st.sampled_from(INVALID_IDS),
    st.tuples(
        st.text(PRINTABLE, max_size=8), st.sampled_from(BAD_CHARS), st.text(PRINTABLE, max_size=8)
    ).map("".join),
    st.text(max_size=12),  # anything at all: the oracle decides
    st.sampled_from(WRONG_TYPES),
)
hostile_ids = id_values.map(_id)
hostile_optional_ids = st.one_of(
    st.just(V(None, True)), hostile_ids.filter(lambda v: v.value is not None)
)

SPECIAL_NUMBERS: list[Any] = [
    float("nan"),
    float("inf"),
    float("-inf"),
    -0.0,
    5e-324,
    1e-7,
    0.1234567,
    0.30000000000000004,
    1e10,
    -1e10,
    1e308,
    9007199254.740991,
    9007199254.740992,
    Decimal("NaN"),
    Decimal("-NaN"),
    Decimal("sNaN"),
    Decimal("Infinity"),
    Decimal("-Infinity"),
    Decimal("-0"),
    Decimal("0E-30"),
    Decimal("1E+999999999"),
    Decimal("1E-999999999"),
    Decimal("9007199254.740991"),
    Decimal("9007199254.740992"),
    Decimal("-9007199254.740991"),
    Decimal("0.0000001"),
    Decimal("1.000000000000"),
    2**53,
    2**63,
    -(2**63),
    10**30,
    HUGE,
    NEG_HUGE,
    "1",
    "nan",
    None,
    True,
    False,
    b"1",
    [1],
    {"usd": 1},
    1j,
    Fraction(1, 2),
]
numbers = st.one_of(
    st.sampled_from(SPECIAL_NUMBERS),
    st.integers(-(10**12), 10**12),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-1e10, 1e10).map(lambda f: round(f, 6)),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.decimals(min_value=-(10**10), max_value=10**10, places=6),
    st.decimals(min_value=0, max_value=10, places=7),
)


def amount_verdict(low: int | None) -> Callable[[object], V]:
    """V of a number that must be a valid amount with micros >= low (None: any sign)."""

    def verdict(value: object) -> V:
        micros = spec_micros(value)
        signed_ok = low is None or (
            micros is not None and micros >= low and not spec_negative(value)
        )
        return V(value, micros is not None and signed_ok)

    return verdict


positive_amounts = numbers.map(amount_verdict(1))
non_negative_amounts = numbers.map(amount_verdict(0))


def _soft(value: object) -> V:
    return V(value, value is None or ((m := spec_micros(value)) is not None and m > 0))


def _warn(value: object) -> V:
    micros = spec_micros(value)
    return V(value, micros is not None and 0 <= micros <= 1_000_000 and not spec_negative(value))


soft_limits = st.one_of(st.just(None), numbers).map(_soft)
warn_fractions = st.one_of(numbers, st.sampled_from([0, 1, 0.5, 1.000001, -0.1])).map(_warn)
thresholds = st.one_of(
    st.sampled_from([None, [], (0.5,), [0.5, 0.8, 0.95], [0.5] * 20, [10], [10.000001]]),
    st.sampled_from(["0.5", {0.5}, b"\x01", 0.5, [0], [-0.5], [float("nan")], [HUGE]]),
    st.lists(numbers, max_size=4),
    st.lists(st.decimals(min_value=0, max_value=2, places=6), min_size=15, max_size=20),
).map(lambda v: V(v, thresholds_ok(v)))

currency_values = st.one_of(
    st.sampled_from(["usd", "USD", "Tokens", "credits", "x" * 32, "new_cur", "a_1", "0"]),
    st.sampled_from(["", "x" * 33, "us d", "usd ", "u$d", "ü", "usd\n", "\u212a", "{usd}"]),
    st.sampled_from(["usd:x", "usd}", "İ", None, 1, b"usd", ["usd"]]),
    st.text(max_size=34),
)
currencies = currency_values.map(lambda v: V(v, spec_currency_ok(v)))


def _amounts(value: object) -> V:
    return V(value, amounts_ok(value))


amount_mappings = st.one_of(
    st.sampled_from(
        [
            {},
            {"usd": 1},
            {"USD": 0.5, "tokens": 3},
            {"usd": 0},
            {"usd": 1, "USD": 1},
            {f"c{i}": 1 for i in range(65)},
            {f"c{i}": 1 for i in range(64)},
        ]
    ),
    st.sampled_from([None, [("usd", 1)], "usd", 5, {1: 1}, {None: 1}]),
    st.dictionaries(currency_values.filter(lambda c: isinstance(c, str)), numbers, max_size=3),
    st.dictionaries(st.sampled_from(["usd", "tokens", "USD"]), numbers, min_size=1, max_size=2),
).map(_amounts)

PERIODS: list[tuple[Any, bool | None]] = [
    (None, True),
    ({"type": "duration", "seconds": 1}, True),
    ({"type": "duration", "seconds": 3600}, True),
    ({"type": "duration", "seconds": 2**53 - 1}, True),
    ({"type": "duration", "seconds": 2**53}, None),  # the spec states no maximum
    ({"type": "rolling", "window": "5h"}, True),
    ({"type": "rolling", "window": " 5H "}, True),
    ({"type": "rolling", "window": "5 hours"}, True),
    ({"type": "rolling", "window": "90"}, True),
    ({"type": "calendar", "unit": "year"}, True),
    (bk.RollingPeriod(window="30d"), True),
    (bk.CalendarPeriod(unit="week"), True),
    ({"type": "duration", "seconds": 0}, False),
    ({"type": "duration", "seconds": -1}, False),
    ({"type": "duration", "seconds": 1.5}, False),
    ({"type": "duration", "seconds": True}, False),
    ({"type": "duration", "seconds": "60"}, False),
    ({"type": "duration", "seconds": 2**64}, False),
    ({"type": "duration", "seconds": HUGE}, False),
    ({"type": "duration"}, False),
    ({"type": "rolling", "window": "1mo"}, False),
    ({"type": "rolling", "window": "1.5h"}, False),
    ({"type": "rolling", "window": "-5h"}, False),
    ({"type": "rolling", "window": "h"}, False),
    ({"type": "rolling", "window": "5y"}, False),
    ({"type": "rolling", "window": ""}, False),
    ({"type": "rolling", "window": "\x005h"}, False),
    ({"type": "rolling", "window": "99999999999999999999999h"}, False),
    ({"type": "rolling", "window": 5}, False),
    ({"type": "rolling"}, False),
    ({"type": "rolling", "window": "5h", "extra": 1}, False),
    ({"type": "calendar", "unit": "fortnight"}, False),
    ({"type": "calendar", "unit": "Month"}, False),
    ({"type": "calendar", "unit": None}, False),
    ({"type": "calendar", "unit": HUGE}, False),
    ({"type": "x"}, False),
    ({"type": None}, False),
    ({"type": ["rolling"]}, False),
    ({}, False),
    ("5h", True),  # period strings as the CLI takes them (a rolling window)
    ("month", True),  # a calendar unit
    (" Week ", True),
    ("5y", False),
    ("fortnight", False),
    ("", False),
    (3600, False),
    (["rolling", "5h"], False),
    (b"{}", False),
]
periods = st.sampled_from(PERIODS).map(lambda p: V(p[0], p[1]))

_circular: list[Any] = []
_circular.append(_circular)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
METADATA: list[tuple[Any, bool]] = [
    (None, True),
    ("x", True),
    (0, True),
    ([], True),
    ({"k": "\x00\n{}\r"}, True),
    ({"🙂": "ü", "{org_b}": "}"}, True),
    ({1: "int keys become strings"}, True),
    (10**4000, True),
    (float("nan"), False),
    ({"a": float("inf")}, False),
    ({(1,): 1}, False),
    ({1, 2}, False),
    (b"x", False),
    (object(), False),
    (Decimal("1"), False),
    ({"a": object()}, False),
    (_circular, False),
    (HUGE, False),
    (deep_list(), False),
]
metadata = st.one_of(
    st.sampled_from(METADATA).map(lambda m: V(m[0], m[1])),
    json_values.map(lambda j: V(j, True)),
)

STATUSES: list[tuple[Any, bool]] = [
    ("active", True),
    ("paused", True),
    ("disabled", True),
    (bk.BudgetStatus.PAUSED, True),
    ("exhausted", False),
    (bk.BudgetStatus.EXHAUSTED, False),
    ("Active", False),
    ("ACTIVE", False),
    (" active", False),
    ("bogus", False),
    ("", False),
    (None, False),
    (1, False),
    (["active"], False),
    (HUGE, False),
]
statuses = st.sampled_from(STATUSES).map(lambda s: V(s[0], s[1]))

SUBJECT_TYPES: list[tuple[Any, bool]] = [
    ("session", True),
    ("agent", True),
    ("user", True),
    ("org", True),
    ("organization", True),
    ("app", True),
    ("app_channel", True),
    (bk.BudgetSubjectType.USER, True),
    ("Session", False),
    ("orgs", False),
    ("app-channel", False),
    ("session\n", False),
    ("", False),
    (None, False),
    (1, False),
    (HUGE, False),
]
subject_types = st.sampled_from(SUBJECT_TYPES).map(lambda s: V(s[0], s[1]))
list_subject_types = st.one_of(
    st.just(V(None, True)), subject_types.filter(lambda v: v.value is not None)
)

PAGE_SPECIALS: list[Any] = [0, -1, 1001, 10**20, -(10**20), True, False, 1.0, "10", None, 2**63]
OFFSET_SPECIALS: list[Any] = [-1, 100_000, 100_001, 2**63, True, 0.0, "0", None, HUGE]


def page_sizes(high: int) -> st.SearchStrategy[V]:
    values = st.one_of(st.integers(-5, high + 5), st.sampled_from(PAGE_SPECIALS))
    return values.map(lambda v: V(v, page_ok(v, 1, high)))


offsets = st.one_of(st.integers(-5, 100_005), st.sampled_from(OFFSET_SPECIALS)).map(
    lambda v: V(v, page_ok(v, 0, 100_000))
)
caps = st.one_of(
    st.just(None),
    st.integers(-5, 10**6),
    st.sampled_from([2**63 - 1, 2**63, 2**64, 10**30, -1, 1.5, "5", True, [1], HUGE]),
).map(lambda v: V(v, v is None or page_ok(v, 0, 2**63 - 1)))

ttls = st.one_of(
    numbers,
    st.sampled_from([0.001, 0.0005, 60, 604_800, 604_800.001, Decimal("1.5"), -0.0005]),
).map(lambda v: V(v, spec_ttl_ok(v)))

TEXTS: list[tuple[Any, bool]] = [
    ("", True),
    ("\x00\n\r{}:", True),
    ("x" * 1024, True),
    ("é" * 512, True),
    ("x" * 1025, False),
    ("é" * 513, False),
    (1, False),
    (b"x", False),
    (["x"], False),
    ("\ud800", False),
    ("a\udfffb", False),
]


def texts(required: bool) -> st.SearchStrategy[V]:
    samples = [(t, ok and not (required and t == "")) for t, ok in TEXTS]
    none = st.just(V(None, not required))
    return st.one_of(
        none,
        st.sampled_from(samples).map(lambda t: V(t[0], t[1])),
        st.text().map(lambda s: V(s, s != "" or not required)),
    )


STREAM_IDS: list[tuple[Any, bool]] = [
    (None, True),
    ("0-0", True),
    ("0", True),
    ("1-0", True),
    ("0-1", True),
    ("$", True),
    ("99999999999999-0", True),
    ("", False),
    ("abc", False),
    ("-1", False),
    ("1-0\n", False),
    (" 0-0", False),
    ("0-0-0", False),
    ("18446744073709551616-0", False),
    ("{", False),
    (5, False),
    (1.5, False),
    (b"0-0", False),
    (["0-0"], False),
]
stream_ids = st.sampled_from(STREAM_IDS).map(lambda s: V(s[0], s[1]))
block_ms_values = st.sampled_from(
    [(0, True), (1, True), (10**12, True), (-1, False), (1.5, False), ("10", False), (None, False)]
).map(lambda b: V(b[0], b[1]))

LEVELS: list[tuple[Any, bool]] = [
    (("session",), True),
    ((), True),
    (["user", "org"], True),
    (["organization"], True),
    (("session", "app_channel", "app", "agent", "user", "org"), True),
    ([bk.BudgetSubjectType.USER], True),
    ("session", False),
    (["bogus"], False),
    ([None], False),
    ([1], False),
    (["session", "Session"], False),
    (None, False),
    (5, False),
]
levels = st.sampled_from(LEVELS).map(lambda lv: V(lv[0], lv[1]))
bools = st.sampled_from(
    [(True, True), (False, True), ("no", False), (0, False), (None, False), ([], False)]
).map(lambda b: V(b[0], b[1]))

SCOPE_FIELDS = ("session_id", "root_session_id", "app_channel_id", "app_id", "agent_id", "user_id")


@st.composite
def hostile_scopes(draw: st.DrawFn) -> V:
    """A Scope built from hostile ids (its constructor runs inside the call), or a non-Scope.

    The organization, the session and one other level (drawn) get hostile values."""
    if draw(st.integers(0, 9)) == 0:
        fake = SimpleNamespace(organization_id=ORG_A, session_id="s1", levels=lambda _=None: [])
        return draw(st.sampled_from([V(None, False), V(ORG_A, False), V(fake, False)]))
    org = draw(st.one_of(st.sampled_from([ORG_A, ORG_B]).map(_id), hostile_ids))
    kwargs: dict[str, Any] = {"organization_id": org.value}
    ok = org.ok
    benign = st.sampled_from([None, "s1", "s2", "u1", ORG_B]).map(_id_or_none)
    for name in ("session_id", draw(st.sampled_from(SCOPE_FIELDS[1:]))):
        value = draw(st.one_of(benign, hostile_optional_ids))
        kwargs[name] = value.value
        ok = ok and value.ok
    text = f"Scope(**{kwargs!r})"
    kwargs = {k: materialize(v) for k, v in kwargs.items()}
    return V(Thunk(lambda: bk.Scope(**kwargs), text), ok, org=org.org)


def _id_or_none(value: str | None) -> V:
    return V(None, True) if value is None else _id(value)


# -- the baseline -----------------------------------------------------------------------------


@dataclass
class Baseline:
    budgets_a: list[str]
    budget_b: str
    hold_a: bk.Reservation
    hold_b: bk.Reservation
    scope_a: bk.Scope
    scope_b: bk.Scope
    snapshot: Snapshot = field(default_factory=dict)


async def make_baseline(kit: bk.BudgetKit, snapshot: SnapshotFn) -> Baseline:
    scope_a = bk.Scope(ORG_A, session_id="s1", user_id="u1")
    scope_b = bk.Scope(ORG_B, session_id="s1")
    session = await kit.create_budget(
        ORG_A,
        "session",
        "s1",
        "usd",
        100,
        soft_limit=90,
        period={"type": "duration", "seconds": 3600},
        metadata={"team": "a"},
        thresholds=[0.5],
    )
    user = await kit.create_budget(ORG_A, "user", "u1", "tokens", 1000)
    org = await kit.create_budget(
        ORG_A, "org", ORG_A, "usd", 500, period={"type": "calendar", "unit": "month"}
    )
    await kit.debit(scope_a, {"usd": 85, "tokens": 10}, idempotency_key="seed")
    hold_a = await kit.reserve(scope_a, {"usd": 1}, ttl_seconds=60)
    other = await kit.create_budget(ORG_B, "session", "s1", "usd", 100)
    await kit.debit(scope_b, {"usd": 90})
    hold_b = await kit.reserve(scope_b, {"usd": 1}, ttl_seconds=60)
    assert hold_a.granted and hold_b.granted
    base = Baseline([session.id, user.id, org.id], other.id, hold_a, hold_b, scope_a, scope_b)
    base.snapshot = await snapshot(kit.redis)
    return base


async def fast_snapshot(client: redis_asyncio.Redis) -> Snapshot:
    """The DUMP of every key, like conftest's ``redis_snapshot`` but in two round trips (SCAN,
    then one pipeline of DUMPs); checked against it at the start and the end of every run."""
    keys: set[bytes] = set()
    cursor = 0
    while True:
        cursor, batch = await client.scan(cursor=cursor, count=10_000)
        keys.update(batch)
        if int(cursor) == 0:
            break
    ordered = sorted(keys)
    pipe = client.pipeline(transaction=False)
    for key in ordered:
        pipe.dump(key)
    values = await pipe.execute()
    return {k: v for k, v in zip(ordered, values, strict=True) if v is not None}


def tag_of(org: str) -> bytes:
    return f"bk:{{{org}}}:".encode()


async def restore(client: redis_asyncio.Redis, baseline: Snapshot, now: Snapshot) -> None:
    """Undoes every change: deletes new keys, RESTOREs changed or deleted ones."""
    extra = [key for key in now if key not in baseline]
    if extra:
        await client.delete(*extra)
    for key, value in baseline.items():
        if now.get(key) != value:
            await client.restore(key, 0, value, replace=True)


# -- the methods ------------------------------------------------------------------------------


class _NoFollow:
    def __repr__(self) -> str:
        return "NO_FOLLOW"


_NO_FOLLOW = _NoFollow()  # events(): the call does not follow (block_ms unused)

Invoke = Callable[[bk.BudgetKit, dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class Method:
    name: str
    #: parameter -> (a strategy of acceptable baseline values, a strategy of hostile values)
    params: dict[str, tuple[st.SearchStrategy[V], st.SearchStrategy[V]]]
    org_param: str  # the parameter whose V names the organization the call acts on
    invoke: Invoke
    #: hostile parameters that must not be combined with others (they change the call's mode)
    exclusive: tuple[str, ...] = ()


@dataclass(frozen=True)
class Call:
    method: str
    args: dict[str, V]
    hostile: tuple[str, ...]

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v.value!r}" for k, v in self.args.items())
        return f"{self.method}({shown}) hostile={self.hostile}"


def good(*values: Any) -> st.SearchStrategy[V]:
    return st.sampled_from(values).map(lambda v: V(v, True, org=v if v in (ORG_A, ORG_B) else None))


def build_methods(base: Baseline) -> dict[str, Method]:
    a_ids = base.budgets_a
    random_budget_id = st.from_regex(r"bdgt_[0-9a-f]{32}", fullmatch=True)
    budget_ids = st.one_of(
        good(*a_ids, base.budget_b),
        random_budget_id.map(lambda s: V(s, True)),
        st.sampled_from(
            [
                a_ids[0].upper(),
                a_ids[0].replace("bdgt_", "BDGT_"),
                a_ids[0][:-1],
                a_ids[0] + "0",
                a_ids[0] + "\n",
                a_ids[0] + "}",
                "{" + a_ids[0] + "}",
                a_ids[0] + ":x",
                " " + a_ids[0],
                "hold_" + a_ids[0][5:],
                "ledger_" + a_ids[0][5:],
                "bdgt_",
                "",
            ]
        ).map(lambda s: V(s, False)),
        st.sampled_from(WRONG_TYPES).map(lambda s: V(s, False)),
        st.text(max_size=40).map(lambda s: V(s, re.fullmatch(r"bdgt_[0-9a-f]{32}", s) is not None)),
    )
    orgs_good = good(ORG_A)
    scope_good = st.just(V(Thunk(lambda: base.scope_a, "scope_a"), True, org=ORG_A))

    def reservation(**kw: Any) -> bk.Reservation:
        kw.setdefault("granted", True)
        kw.setdefault("scope", base.scope_a)
        kw.setdefault("check", bk.BudgetCheckResult(action="continue"))
        return bk.Reservation(**kw)

    holds = st.one_of(
        st.sampled_from(
            [
                V(base.hold_a, True, org=ORG_A),
                V(reservation(id=base.hold_b.id), True, org=ORG_A),  # another org's hold id
                V(reservation(id=base.hold_a.id, scope=base.scope_b), True, org=ORG_B),
                V(reservation(granted=False, id=None), False),
                V(reservation(id=None), False),
                V(reservation(id="hold_XYZ"), False),
                V(reservation(id=base.hold_a.id.upper()), False),
                V(reservation(id=base.budgets_a[0]), False),
                V(reservation(id=base.hold_a.id + "}"), False),
                V(None, False),
                V(base.hold_a.id, False),
                V(base.hold_a.model_dump(), False),
            ]
        ),
        st.from_regex(r"hold_[0-9a-f]{32}", fullmatch=True).map(
            lambda h: V(reservation(id=h), True, org=ORG_A)
        ),
    )
    hold_good = st.just(V(base.hold_a, True, org=ORG_A))

    def unset() -> st.SearchStrategy[V]:
        return st.just(V(bk.UNSET, True))

    async def invoke_events(kit: bk.BudgetKit, a: dict[str, Any]) -> Any:
        follow = a["block_ms"] is not _NO_FOLLOW
        block = 1000 if a["block_ms"] is _NO_FOLLOW else a["block_ms"]
        stream = kit.events(a["organization_id"], a["after"], follow=follow, block_ms=block)
        try:
            return await anext(stream, None)
        finally:
            await stream.aclose()

    methods = [
        Method(
            "create_budget",
            {
                # new budgets go to org_a or to organizations with crafted (valid) ids
                "organization_id": (st.one_of(orgs_good, valid_id_values.map(_id)), hostile_ids),
                "subject_type": (good("session", "user"), subject_types),
                "subject_id": (good("s9", "u9"), hostile_ids),
                "currency": (good("usd", "USD"), currencies),
                "limit": (good(10, 0.5), positive_amounts),
                "soft_limit": (good(None, 5), soft_limits),
                "period": (good(None), periods),
                "metadata": (good(None, {"k": 1}), metadata),
                "warn_fraction": (good(0.2), warn_fractions),
                "thresholds": (good(None), thresholds),
            },
            "organization_id",
            lambda kit, a: kit.create_budget(**a),
        ),
        Method(
            "get_budget",
            {"organization_id": (orgs_good, hostile_ids), "budget_id": (good(*a_ids), budget_ids)},
            "organization_id",
            lambda kit, a: kit.get_budget(**a),
        ),
        Method(
            "list_budgets",
            {
                "organization_id": (orgs_good, hostile_ids),
                "subject_type": (good(None, "session"), list_subject_types),
                "subject_id": (good(None, "s1"), hostile_optional_ids),
                "include_disabled": (good(False, True), bools),
                "limit": (good(200, 1), page_sizes(1000)),
                "offset": (good(0, 1), offsets),
            },
            "organization_id",
            lambda kit, a: kit.list_budgets(**a),
        ),
        Method(
            "update_budget",
            {
                "organization_id": (orgs_good, hostile_ids),
                "budget_id": (good(*a_ids), budget_ids),
                "limit": (unset(), positive_amounts),
                "soft_limit": (unset(), soft_limits),
                "status": (unset(), statuses),
                "period": (unset(), periods),
                "metadata": (unset(), metadata),
                "warn_fraction": (unset(), warn_fractions),
                "thresholds": (unset(), thresholds),
            },
            "organization_id",
            lambda kit, a: kit.update_budget(**a),
        ),
        Method(
            "disable_budget",
            {"organization_id": (orgs_good, hostile_ids), "budget_id": (good(*a_ids), budget_ids)},
            "organization_id",
            lambda kit, a: kit.disable_budget(**a),
        ),
        Method(
            "top_up",
            {
                "organization_id": (orgs_good, hostile_ids),
                "budget_id": (good(*a_ids), budget_ids),
                "amount": (good(1, 0.25), positive_amounts),
                "description": (good(None, "refill"), texts(required=False)),
                "idempotency_key": (good(None), hostile_optional_ids),
            },
            "organization_id",
            lambda kit, a: kit.top_up(**a),
        ),
        Method(
            "check",
            {"scope": (scope_good, hostile_scopes())},
            "scope",
            lambda kit, a: kit.check(**a),
        ),
        Method(
            "check_tool",
            {"scope": (scope_good, hostile_scopes())},
            "scope",
            lambda kit, a: kit.check_tool(**a),
        ),
        Method(
            "debit",
            {
                "scope": (scope_good, hostile_scopes()),
                "amounts": (good({"usd": 1}, {"USD": 0.5, "tokens": 2}), amount_mappings),
                "meter_source": (good("manual", "llm"), texts(required=True)),
                "ref_type": (good(None), texts(required=False)),
                "ref_id": (good(None, "r1"), texts(required=False)),
                "description": (good(None), texts(required=False)),
                "idempotency_key": (good(None, "seed"), hostile_optional_ids),
            },
            "scope",
            lambda kit, a: kit.debit(**a),
        ),
        Method(
            "reserve",
            {
                "scope": (scope_good, hostile_scopes()),
                "amounts": (good({"usd": 1}), amount_mappings),
                "ttl_seconds": (good(60), ttls),
                "idempotency_key": (good(None), hostile_optional_ids),
            },
            "scope",
            lambda kit, a: kit.reserve(**a),
        ),
        Method(
            "commit",
            {
                "hold": (hold_good, holds),
                "actual": (good({"usd": 1}), amount_mappings),
                "meter_source": (good("manual"), texts(required=True)),
                "ref_type": (good(None), texts(required=False)),
                "ref_id": (good(None), texts(required=False)),
                "description": (good(None), texts(required=False)),
                "idempotency_key": (good(None), hostile_optional_ids),
            },
            "hold",
            lambda kit, a: kit.commit(**a),
        ),
        Method("release", {"hold": (hold_good, holds)}, "hold", lambda kit, a: kit.release(**a)),
        Method(
            "resume",
            {"scope": (scope_good, hostile_scopes()), "levels": (good(("session",)), levels)},
            "scope",
            lambda kit, a: kit.resume(**a),
        ),
        Method(
            "ledger",
            {
                "organization_id": (orgs_good, hostile_ids),
                "budget_id": (good(*a_ids), budget_ids),
                "limit": (good(50), page_sizes(1000)),
                "offset": (good(0), offsets),
            },
            "organization_id",
            lambda kit, a: kit.ledger(**a),
        ),
        Method(
            "events",
            {
                "organization_id": (orgs_good, hostile_ids),
                "after": (good(None, "0-0"), stream_ids),
                "block_ms": (st.just(V(_NO_FOLLOW, True)), block_ms_values),
            },
            "organization_id",
            invoke_events,
            exclusive=("block_ms",),  # follow=True on org_a from the start: never waits
        ),
        Method(
            "trim_history",
            {
                "organization_id": (orgs_good, hostile_ids),
                "events_max_len": (good(None), caps),
                "ledger_max_len": (good(None), caps),
            },
            "organization_id",
            lambda kit, a: kit.trim_history(**a),
        ),
    ]
    return {m.name: m for m in methods}


@st.composite
def calls(draw: st.DrawFn, method: Method) -> Call:
    names = list(method.params)
    hostile = draw(st.sets(st.sampled_from(names), min_size=1, max_size=min(3, len(names))))
    exclusive = [n for n in method.exclusive if n in hostile]
    if exclusive:
        hostile = {exclusive[0]}
    args = {}
    for name in names:
        benign, bad = method.params[name]
        args[name] = draw(bad if name in hostile else benign)
    return Call(method.name, args, tuple(sorted(hostile)))


# -- known library bugs -----------------------------------------------------------------------

REDIS_ERRORS = (redis_errors.ResponseError, redis_errors.DataError)


def _hostile_value(call: Call, *names: str) -> list[Any]:
    return [materialize(call.args[n].value) for n in names if n in call.hostile]


def _has_surrogate(value: object) -> bool:
    return isinstance(value, str) and any(0xD800 <= ord(c) <= 0xDFFF for c in value)


#: name -> (predicate on the call and the violation, one-line description). Empty: every bug this
#: fuzzer found (B1-B11, C1) is fixed and pinned by test_fixed_bug_input / test_fixed_bug_corrupt.
KNOWN_BUGS: dict[str, tuple[Callable[[Call, str, BaseException | None], bool], str]] = {}


def known_bug(call: Call, kind: str, error: BaseException | None) -> str | None:
    for name, (matches, _) in KNOWN_BUGS.items():
        if matches(call, kind, error):
            return name
    return None


# -- the runner -------------------------------------------------------------------------------


@dataclass
class Stats:
    inputs: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    methods: Counter[str] = field(default_factory=Counter)
    known: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    confined_writes: int = 0  # successful calls that wrote, every key inside the caller's tag
    new_org_writes: int = 0  # ... of which in an organization the baseline does not have
    call_seconds: float = 0.0  # spent in the calls and the snapshots (the rest is Hypothesis)


async def run_one(
    kit: bk.BudgetKit,
    base: Baseline,
    methods: Mapping[str, Method],
    snapshot: SnapshotFn,
    call: Call,
    stats: Stats,
) -> str | None:
    """Runs one call; returns a violation (None when the call behaved)."""
    stats.inputs += 1
    stats.methods[call.method] += 1
    method = methods[call.method]
    invalid = any(v.ok is False for v in call.args.values())
    org_v = call.args[method.org_param]
    error: BaseException | None = None
    try:
        raw = {name: v.get() for name, v in call.args.items()}
        await asyncio.wait_for(method.invoke(kit, raw), CALL_TIMEOUT_S)
    except Exception as caught:  # judged below
        error = caught
    after = await snapshot(kit.redis)
    changed = {
        k for k in after.keys() | base.snapshot.keys() if after.get(k) != base.snapshot.get(k)
    }
    if after != base.snapshot:
        await restore(kit.redis, base.snapshot, after)

    kind = ""
    if error is not None and not isinstance(error, bk.BudgetkitError):
        kind = f"untyped {type(error).__name__}: {str(error)[:120]}"
    elif invalid and error is None:
        kind = "accepted invalid input"
    elif invalid and not isinstance(error, bk.InvalidInput):
        kind = f"invalid input raised {type(error).__name__}, not InvalidInput"
    elif error is not None and changed:
        kind = f"{type(error).__name__} after writing {sorted(changed)[:3]}"
    elif error is None and changed:
        org = org_v.org
        outside = [k for k in changed if org is None or not k.startswith(tag_of(org))]
        if outside:
            kind = f"wrote outside the hash tag of {org!r}: {sorted(outside)[:3]}"
    if not kind:
        if error is None and changed:
            stats.confined_writes += 1
            stats.new_org_writes += org_v.org not in (ORG_A, ORG_B)
        outcome = "rejected" if invalid else ("ok" if error is None else type(error).__name__)
        stats.outcomes[outcome] += 1
        return None
    bug = known_bug(call, kind, error)
    if bug is not None:
        stats.known[bug] += 1
        return None
    return kind


def run_fuzz(
    tier: str,
    make_client: Callable[[], redis_asyncio.Redis],
    snapshot: SnapshotFn,
    examples: int,
) -> tuple[Stats, set[str]]:
    """Runs ``examples`` Hypothesis examples of 1-6 hostile calls each (state restored after
    every call); returns the stats and the names of the methods driven."""
    stats = Stats()
    loop = asyncio.new_event_loop()
    client = make_client()
    try:
        kit = bk.BudgetKit(client, clock=ManualClock(NOW))
        loop.run_until_complete(client.flushall())
        base = loop.run_until_complete(make_baseline(kit, snapshot))
        fast = loop.run_until_complete(fast_snapshot(client))
        assert fast == base.snapshot, "fast_snapshot disagrees with the redis_snapshot fixture"
        methods = build_methods(base)
        one_call = st.one_of(*[calls(methods[name]) for name in sorted(methods)])

        @settings(
            max_examples=examples,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            print_blob=True,
        )
        @given(batch=st.lists(one_call, min_size=1, max_size=12))
        def example(batch: list[Call]) -> None:
            for call in batch:
                started = time.perf_counter()
                violation = loop.run_until_complete(
                    run_one(kit, base, methods, fast_snapshot, call, stats)
                )
                stats.call_seconds += time.perf_counter() - started
                if violation is not None:
                    stats.violations.append(f"{call!r}: {violation}")
                    raise AssertionError(f"{tier}: {call!r}: {violation}")

        example()
        final = loop.run_until_complete(snapshot(client))
        assert final == base.snapshot, "the baseline was not restored"
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()
    return stats, set(methods)


def report(stats: Stats, tier: str, seconds: float) -> str:
    known = sum(stats.known.values())
    lines = [
        f"fuzz ({tier}): {stats.inputs} inputs in {seconds:.1f} s ({stats.call_seconds:.1f} s "
        f"in calls and snapshots), violations "
        f"{len(stats.violations)}; outcomes {dict(stats.outcomes)}",
        f"  successful writes checked inside the caller's hash tag: {stats.confined_writes} "
        f"({stats.new_org_writes} in organizations with crafted ids)",
        f"  per method: {dict(sorted(stats.methods.items()))}",
        f"  known library bugs hit (none are listed: all found so far are fixed): {known} "
        f"{dict(sorted(stats.known.items()))}",
    ]
    return "\n".join(lines)


def _fuzz(
    tier: str,
    make_client: Callable[[], redis_asyncio.Redis],
    snapshot: SnapshotFn,
    record_property: Callable[[str, object], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    started = time.perf_counter()
    stats, methods = run_fuzz(tier, make_client, snapshot, EXAMPLES[tier])
    seconds = time.perf_counter() - started
    record_property("inputs", stats.inputs)
    record_property("violations", len(stats.violations))
    with capsys.disabled():
        print("\n" + report(stats, tier, seconds))
    assert stats.violations == []
    assert stats.inputs >= EXAMPLES[tier]
    assert stats.outcomes["rejected"] > 0 and stats.outcomes["ok"] > 0
    assert stats.confined_writes > 0
    if stats.inputs >= 500:  # then every method was driven
        assert set(stats.methods) == methods


@pytest.mark.slow
@pytest.mark.real
def test_fuzz_real(
    redis_server_url: str,
    redis_snapshot: SnapshotFn,
    record_property: Callable[[str, object], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _fuzz(
        "real",
        lambda: redis_asyncio.Redis.from_url(redis_server_url),
        redis_snapshot,
        record_property,
        capsys,
    )


def test_fuzz_fake(
    redis_snapshot: SnapshotFn,
    record_property: Callable[[str, object], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    import fakeredis

    _fuzz(
        "fake",
        lambda: fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(version=(7, 0))),
        redis_snapshot,
        record_property,
        capsys,
    )


# -- bugs this fuzzer found, fixed: minimal regression tests -----------------------------------


@pytest_asyncio.fixture
async def kit(redis: redis_asyncio.Redis) -> AsyncIterator[bk.BudgetKit]:
    yield bk.BudgetKit(redis, clock=ManualClock(NOW))


async def small_state(kit: bk.BudgetKit) -> bk.Budget:
    budget = await kit.create_budget(ORG_A, "session", "s1", "usd", 100)
    await kit.debit(bk.Scope(ORG_A, session_id="s1"), {"usd": 90})  # a ledger entry and events
    return budget


async def assert_rejected(
    kit: bk.BudgetKit, snapshot: SnapshotFn, call: Callable[[], Awaitable[Any]]
) -> None:
    """The call raises InvalidInput and leaves Redis byte-for-byte unchanged."""
    before = await snapshot(kit.redis)
    with pytest.raises(bk.InvalidInput):
        await call()
    assert await snapshot(kit.redis) == before


async def first_event(kit: bk.BudgetKit, org: str, after: Any, **kw: Any) -> Any:
    stream = kit.events(org, after, **kw)
    try:
        return await anext(stream, None)
    finally:
        await stream.aclose()


SCOPE_1 = bk.Scope(ORG_A, session_id="s1")
BUG_CALLS: dict[str, Callable[[bk.BudgetKit, str], Awaitable[Any]]] = {
    "B1-ttl-nan": lambda k, b: k.reserve(SCOPE_1, {"usd": 1}, ttl_seconds=float("nan")),
    "B1-ttl-inf": lambda k, b: k.reserve(SCOPE_1, {"usd": 1}, ttl_seconds=float("inf")),
    "B1-ttl-decimal-snan": lambda k, b: k.reserve(SCOPE_1, {"usd": 1}, ttl_seconds=Decimal("sNaN")),
    "B1-ttl-decimal-huge": lambda k, b: k.reserve(
        SCOPE_1, {"usd": 1}, ttl_seconds=Decimal("1E+999999999")
    ),
    "B2-events-after-malformed": lambda k, b: first_event(k, ORG_A, "abc", follow=False),
    "B2-events-after-empty": lambda k, b: first_event(k, ORG_A, "", follow=False),
    "B2-events-block-negative": lambda k, b: first_event(k, ORG_A, None, block_ms=-1),
    "B3-metadata-deep": lambda k, b: k.create_budget(
        ORG_A, "session", "s2", "usd", 1, metadata=deep_list()
    ),
    "B4-description-surrogate": lambda k, b: k.debit(SCOPE_1, {"usd": 1}, description="\ud800"),
    "B4-meter-source-surrogate": lambda k, b: k.debit(SCOPE_1, {"usd": 1}, meter_source="\udc00"),
    "B5-resume-levels-none": lambda k, b: k.resume(SCOPE_1, levels=None),  # type: ignore[arg-type]
    "B6-include-disabled-str": lambda k, b: k.list_budgets(ORG_A, include_disabled="no"),  # type: ignore[arg-type]
    "B9-trim-cap-2**63": lambda k, b: k.trim_history(ORG_A, events_max_len=2**63, ledger_max_len=0),
    "B11-trim-ledger-cap-no-budgets": lambda k, b: k.trim_history("org_empty", ledger_max_len=-1),
    "B10-status-huge-int": lambda k, b: k.update_budget(ORG_A, b, status=HUGE.make()),
    "B10-amount-negative-huge-int": lambda k, b: k.debit(SCOPE_1, {"usd": NEG_HUGE.make()}),
    "B10-period-huge-int": lambda k, b: k.update_budget(
        ORG_A, b, period={"type": "duration", "seconds": HUGE.make()}
    ),
}


@pytest.mark.parametrize("bug", sorted(BUG_CALLS))
async def test_fixed_bug_input(kit: bk.BudgetKit, redis_snapshot: SnapshotFn, bug: str) -> None:
    """Each known input bug, minimal: the call must raise InvalidInput and write nothing."""
    budget = await small_state(kit)
    await assert_rejected(kit, redis_snapshot, lambda: BUG_CALLS[bug](kit, budget.id))


# -- corrupted state --------------------------------------------------------------------------

#: field -> nonsense values (None = the field is deleted). The budget under test has a duration
#: period, a soft limit and a threshold; ``pu`` is corrupted on a calendar budget instead.
CORRUPT_VALUES: dict[str, list[str | None]] = {
    "lim": ["", "abc", "0", "-5", "1.5", "9007199254740992", "nan", "inf", None],
    "bal": ["", "abc", "1.5", "9007199254740992", "-9007199254740992", "nan", None],
    "soft": ["abc", "0", "-1", "1.5", "100000001", "nan"],
    "status": ["", "bogus", "ACTIVE", "active ", None],
    "wf": ["", "abc", "-1", "1000001", "0.5", None],
    "pk": ["x", "dd", "0"],
    "ps": ["", "0", "-1", "abc", "1.5", None],
    "pu": ["", "fortnight", "Month", None],
    "pstart": ["", "abc", "-1", "1.5", None],
    "held": ["", "-1", "abc", "1.5", None],
    "op": ["", "2", "-1", "abc", None],
    "ack": ["", "2", "abc", None],
    "wz": ["", "2", "abc", None],
    "thr": [
        "abc",
        "0",
        "-5",
        "500000,400000",
        "10000001",
        "1.5",
        ",,x",
        ",".join(map(str, range(1, 18))),
    ],
    "thrf": ["abc", "-1", "65536", "1.5"],
    "updated": ["", "abc", "-1", None],
    "created": ["", "abc", "-1", None],
    "id": ["", None, "abc", "bdgt_01933b5a000070008000000000000001"],
    "cur": ["", None],
}
#: Operations that read only hot fields (lua/_lib.lua: READ for checks and holds, CHARGE for
#: debits) and those that read the whole hash (FULL).
HOT_OPS = ("check", "check_tool", "debit", "reserve")
FULL_OPS = ("get", "list", "top_up", "update", "resume")
#: Fields a hot operation does not read, by operation (configuration is read only where it is
#: used): no hot read takes ``created`` or ``updated`` (only written); a check or a hold fires no
#: threshold, so only a debit reads them (and any operation whose budget rolls over:
#: test_corrupt_rollover_fields).
NOT_READ_BY = {
    "created": set(HOT_OPS),
    "updated": set(HOT_OPS),
    "thr": {"check", "check_tool", "reserve"},
    "thrf": {"check", "check_tool", "reserve"},
}


def corrupt_ops(
    kit: bk.BudgetKit, scope: bk.Scope, budget_id: str
) -> dict[str, Callable[[], Awaitable[Any]]]:
    both = {"usd": 1, "tokens": 1}
    return {
        "check": lambda: kit.check(scope),
        "check_tool": lambda: kit.check_tool(scope),
        "debit": lambda: kit.debit(scope, both),
        "reserve": lambda: kit.reserve(scope, both),
        "get": lambda: kit.get_budget(ORG_A, budget_id),
        "list": lambda: kit.list_budgets(ORG_A),
        "top_up": lambda: kit.top_up(ORG_A, budget_id, 1),
        "update": lambda: kit.update_budget(ORG_A, budget_id, metadata={"x": 1}),
        "resume": lambda: kit.resume(scope),
    }


async def corrupt_baseline(kit: bk.BudgetKit) -> tuple[bk.Scope, dict[str, str]]:
    scope = bk.Scope(ORG_A, session_id="s1")
    duration = await kit.create_budget(
        ORG_A,
        "session",
        "s1",
        "usd",
        100,
        soft_limit=90,
        period={"type": "duration", "seconds": 3600},
        thresholds=[0.5],
    )
    calendar = await kit.create_budget(
        ORG_A, "session", "s1", "tokens", 1000, period={"type": "calendar", "unit": "month"}
    )
    await kit.debit(scope, {"usd": 10, "tokens": 10})
    await kit.create_budget(ORG_B, "session", "s1", "usd", 100)  # a bystander organization
    return scope, {"duration": duration.id, "calendar": calendar.id}


async def test_corrupt_state(
    redis: redis_asyncio.Redis,
    redis_snapshot: SnapshotFn,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    """Every field of a budget hash set (or deleted) by hand to nonsense: every operation that
    reads it raises CorruptState naming the key and field, and writes nothing."""
    kit = bk.BudgetKit(redis, clock=ManualClock(NOW))
    scope, ids = await corrupt_baseline(kit)
    base = await redis_snapshot(redis)
    assert await fast_snapshot(redis) == base
    cases = 0
    for field_name, values in CORRUPT_VALUES.items():
        budget_id = ids["calendar" if field_name == "pu" else "duration"]
        key = f"bk:{{{ORG_A}}}:b:{budget_id}"
        ops = corrupt_ops(kit, scope, budget_id)
        skipped = NOT_READ_BY.get(field_name, set())
        names = [op for op in HOT_OPS + FULL_OPS if op not in skipped]
        for value in values:
            for op in names:
                if value is None:
                    await redis.hdel(key, field_name)
                else:
                    await redis.hset(key, field_name, value)
                before = await fast_snapshot(redis)
                with pytest.raises(bk.CorruptState) as caught:
                    await ops[op]()
                message = str(caught.value)
                assert "bk:{org_a}:" in message, (field_name, value, op, message)
                if field_name != "id":  # a bad id is reported as the index entry that names it
                    assert f"field {field_name}" in message, (field_name, value, op, message)
                assert await fast_snapshot(redis) == before, (field_name, value, op, "wrote")
                await restore(redis, base, before)
                cases += 1
    assert await redis_snapshot(redis) == base
    tier = request.node.callspec.id
    with capsys.disabled():
        print(
            f"\ncorrupt state ({tier}): {cases} (field, value, operation) cases over "
            f"{len(CORRUPT_VALUES)} fields, every one CorruptState with nothing written, "
            "violations 0"
        )


#: The fields only a rollover reads on the hot path (lua/_lib.lua load_rollover_fields), with
#: nonsense values.
ROLLOVER_CORRUPT: dict[str, list[str]] = {
    "roll": ["abc", "-1", "1.5", "9007199254740991"],
    "thr": ["abc", "500000,400000", "0"],
    "thrf": ["abc", "-1", "65536"],
}


async def test_corrupt_rollover_fields(
    redis: redis_asyncio.Redis, redis_snapshot: SnapshotFn
) -> None:
    """A check, a hold or a debit at a period boundary reads the fields the rollover uses
    (rollover_max, thresholds) that its hot read skipped: nonsense there raises CorruptState
    naming the field, and nothing is written (not the rollover either)."""
    clock = ManualClock(NOW)
    kit = bk.BudgetKit(redis, clock=clock)
    scope, ids = await corrupt_baseline(kit)
    key = f"bk:{{{ORG_A}}}:b:{ids['duration']}"
    clock.advance(seconds=3600)  # the duration budget's hour is over: the next read rolls it over
    base = await redis_snapshot(redis)
    ops = corrupt_ops(kit, scope, ids["duration"])
    cases = 0
    for field_name, values in ROLLOVER_CORRUPT.items():
        for value in values:
            for op in HOT_OPS:
                await redis.hset(key, field_name, value)
                before = await redis_snapshot(redis)
                with pytest.raises(bk.CorruptState, match=f"field {field_name}"):
                    await ops[op]()
                assert await redis_snapshot(redis) == before, (field_name, value, op)
                await restore(redis, base, before)
                cases += 1
    assert await redis_snapshot(redis) == base
    assert cases == 10 * len(HOT_OPS)  # every (field, value) with every hot operation
    assert (await kit.check(scope)).action == "continue"  # the untouched store rolls over
    rolled = await kit.get_budget(ORG_A, ids["duration"])
    assert rolled.balance == rolled.limit  # the debit of the past hour is gone


#: (field, nonsense, operation) cases of bug C1, now fixed: the scripts validate the text fields of
#: a budget hash (id vs key, currency, org, subject type/id, period and metadata JSON) before any
#: write; before the fix the Python side failed parsing the reply AFTER top_up/update wrote, or the
#: hot path ran with a nonsense currency.
KNOWN_CORRUPT_BUGS = [
    ("id", "abc", "get"),
    ("id", "<calendar id>", "top_up"),  # the credit lands in the OTHER budget's ledger stream
    ("id", "abc", "update"),
    ("cur", "US D", "check"),
    ("cur", "US D", "top_up"),
    ("cur", "-1", "get"),
    ("org", "x}", "get"),
    ("st", "bogus", "top_up"),
    ("sid", "{bad", "update"),
    ("period", "{bad", "get"),
    ("meta", "{bad", "top_up"),
]


@pytest.mark.parametrize(
    ("field_name", "value", "op"), KNOWN_CORRUPT_BUGS, ids=["-".join(c) for c in KNOWN_CORRUPT_BUGS]
)
async def test_fixed_bug_corrupt(
    kit: bk.BudgetKit, redis_snapshot: SnapshotFn, field_name: str, value: str, op: str
) -> None:
    scope, ids = await corrupt_baseline(kit)
    key = f"bk:{{{ORG_A}}}:b:{ids['duration']}"
    await kit.redis.hset(key, field_name, ids["calendar"] if value == "<calendar id>" else value)
    before = await redis_snapshot(kit.redis)
    with pytest.raises(bk.CorruptState):
        await corrupt_ops(kit, scope, ids["duration"])[op]()
    assert await redis_snapshot(kit.redis) == before
