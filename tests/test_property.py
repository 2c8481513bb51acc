"""Property test: random operation sequences against budgetkit and a reference model.

Every example starts from an empty Redis, creates a few budgets and runs a random sequence of
create / debit / top_up / update / disable / resume / check / check_tool / get / list / clock
moves (seconds to a year, across duration and calendar boundaries, sometimes backwards) on the
real implementation and on ``tests/reference_model.py`` (written from SPEC.md, not from the Lua).
After every step it compares the operation's result (budgets, check result, tool response,
DebitResult entries and events, the error raised), the events the step appended to the
organization's stream, and the stored state of every budget (balance, limit, soft limit, warn
fraction, status, period start, operator pause, acknowledgement, warning zone, updated time: read
with HGETALL, which rolls nothing over; field names from lua/_lib.lua). At the end it compares
every budget (``get_budget``, ``list_budgets``), its whole ledger, the ledger invariant
``balance == initial limit - sum(amounts)`` and the whole event stream.

Amounts are drawn absolute, as fractions of a limit, or exactly at (±1 micro) the soft limit,
the warning threshold and zero; budgets and resume scopes are sometimes picked by state
(acknowledged, paused, exhausted), so that the rare transitions are reached in every run.

Within one debit or resume the order of events and entries *across* budgets is not fixed by the
SPEC (the Lua rolls every budget over before charging any; the model goes budget by budget), so
those are compared per budget, in order; everything else is compared in order.

Tiers: ``test_model_real`` (slow, real redis-server, >= 2,000 steps) and ``test_model_fake``
(fakeredis, a smaller run).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import budgetkit as bk
from budgetkit._core.rules import (
    BudgetSnapshot,
    check_result,
    event_message,
    tool_response,
    with_root_session_note,
)
from tests.reference_model import (
    CALENDAR_UNITS,
    PPM,
    Budget,
    Entry,
    Event,
    Model,
    ModelError,
    Outcome,
    ScopeSpec,
    datetime_to_ms,
    ms_to_datetime,
    next_bucket_start,
)
from tests.support import ManualClock, all_entries

ORG = "org_p"
SUBJECTS = (
    ("session", "s_a"),
    ("session", "s_b"),
    ("session", "s_c"),
    ("user", "u_1"),
    ("org", ORG),
)
SCOPES = (
    ScopeSpec(ORG, session_id="s_a", user_id="u_1"),
    ScopeSpec(ORG, session_id="s_c", root_session_id="s_a", user_id="u_1"),  # child of s_a
    ScopeSpec(ORG, session_id="s_b"),
    ScopeSpec(ORG, session_id="s_c"),
    ScopeSpec(ORG, user_id="u_1"),
    ScopeSpec(ORG),
)
#: Index in SCOPES of a scope whose own level is each subject.
SUBJECT_SCOPES = {
    ("session", "s_a"): 0,
    ("session", "s_b"): 2,
    ("session", "s_c"): 3,
    ("user", "u_1"): 4,
    ("org", ORG): 5,
}
#: Currency spellings (case-insensitive on input) by stored currency.
CURRENCY_SPELLINGS = {"usd": ("usd", "USD"), "tokens": ("tokens", "Tokens")}
BUDGETS_MAX = 12
DEBIT_METER = "llm"

#: Steps (operations compared against the model) run by each tier in this session.
STEPS: dict[str, int] = defaultdict(int)
REAL_STEPS_MIN = 2000
#: SPEC §4: "disabled ... sticks until an explicit active" — pausing a disabled budget once
#: un-disabled it (fixed in update.lua; test_pausing_a_disabled_budget_keeps_it_disabled pins
#: it). True would make the random runs skip that operation again.
AVOID_PAUSING_DISABLED = False


# -- operations ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Create:
    subject: int
    currency: str
    limit: int
    soft: int | None
    warn: Any  # None = the default; else a float or Decimal fraction
    period: dict[str, Any] | None
    metadata: Any
    rollover: int | None = None  # rollover_max in micros (SPEC §11); with no period: rejected


@dataclass(frozen=True)
class Debit:
    scope: int
    amounts: tuple[tuple[str, Any], ...]  # (currency as given, amount spec: see resolve)
    form: str


@dataclass(frozen=True)
class TopUp:
    budget: int
    amount: Any  # amount spec: see resolve
    form: str
    description: str | None


@dataclass(frozen=True)
class Update:
    budget: int
    limit: Any  # None = not given; ("abs", micros) | ("scale", ppm) | ("above_spent", micros)
    soft: Any  # None = not given; ("clear",) | ("frac", ppm of new limit) | ("abs" | "at_spent", m)
    status: str | None
    period: Any  # None = not given; ("clear",) | ("same",) | ("set", period)
    warn: Any  # None = not given; a fraction
    metadata: Any  # None = not given; ("set", value)
    rollover: Any = None  # None = not given; ("clear",) | ("set", micros)


@dataclass(frozen=True)
class Disable:
    budget: int


@dataclass(frozen=True)
class Resume:
    scope: int  # -1: the scope and level of the first paused budget (when there is one)
    levels: tuple[str, ...] | None  # None = the default (session)


@dataclass(frozen=True)
class Check:
    scope: int
    tool: bool


@dataclass(frozen=True)
class Get:
    budget: int


@dataclass(frozen=True)
class ListAll:
    include_disabled: bool


@dataclass(frozen=True)
class Advance:
    seconds: int


@dataclass(frozen=True)
class ToBoundary:
    unit: str
    offset_seconds: int


# -- strategies ------------------------------------------------------------------------------

PERIODS: list[dict[str, Any]] = [
    {"type": "duration", "seconds": 7},
    {"type": "duration", "seconds": 60},
    {"type": "duration", "seconds": 3600},
    {"type": "duration", "seconds": 86400},
    {"type": "rolling", "window": "5h"},
    {"type": "rolling", "window": "90"},
    {"type": "rolling", "window": " 1 Day "},
    {"type": "rolling", "window": "2w"},
    *({"type": "calendar", "unit": unit} for unit in CALENDAR_UNITS),
]
WARN_FRACTIONS: list[Any] = [0.0, 0.2, 0.5, 0.75, 1.0, 0.123456, 0.999999, Decimal("0.3")]
METADATA: list[Any] = [None, {"team": "a"}, {"n": 1, "x": None}, [1, 2]]

limits = st.one_of(
    st.sampled_from([1, 7, 1_000_000, 10_000_000, 100_000_000]),
    st.integers(1, 200_000_000),
)
#: A budget: the n-th created (mod their number), or (negative) the first budget in a state
#: worth poking: -1 soft limit acknowledged, -2 paused, -3 exhausted, -4 operator pause (else
#: any).
budget_refs = st.one_of(st.integers(0, BUDGETS_MAX), st.integers(-4, -1))
boundaries = st.tuples(
    st.sampled_from(["to_soft", "to_soft", "to_warn", "to_zero"]), st.sampled_from([0, 0, -1, 1])
)


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, picked with the given weights (``one_of`` merges equal ones)."""
    kinds = [i for i, (weight, _) in enumerate(choices) for _ in range(weight)]
    return st.sampled_from(kinds).flatmap(lambda i: choices[i][1])


#: An amount spec, resolved against the budget it applies to when run: see resolve().
amounts = weighted(
    (2, boundaries),
    (1, st.tuples(st.just("abs"), st.one_of(st.just(0), st.integers(1, 999)))),
    (1, st.tuples(st.just("abs"), st.integers(1, 60_000_000))),
    (2, st.tuples(st.just("frac"), st.integers(1, 400_000))),
    (1, st.tuples(st.just("frac"), st.sampled_from([100_000, 200_000, 500_000, 1_000_000]))),
)
forms = st.sampled_from(["float", "decimal", "int"])
fractions_ppm = st.one_of(st.sampled_from([1, 500_000, 800_000, 1_000_000]), st.integers(1, PPM))
periods = st.one_of(st.none(), st.sampled_from(PERIODS))
#: rollover_max in micros: none carried, less than, about and more than a limit (SPEC §11).
rollovers = st.one_of(st.just(0), st.integers(1, 300_000_000), st.sampled_from([1, 10**12]))


@st.composite
def creates(draw: st.DrawFn) -> Create:
    limit = draw(limits)
    soft = draw(
        st.one_of(
            st.none(),
            fractions_ppm.map(lambda ppm: max(1, limit * ppm // PPM)),
            st.just(limit + 1),  # invalid: InvalidLimit
        )
    )
    currency = draw(st.sampled_from(sorted(CURRENCY_SPELLINGS)))
    return Create(
        subject=draw(st.integers(0, len(SUBJECTS) - 1)),
        currency=draw(st.sampled_from(CURRENCY_SPELLINGS[currency])),
        limit=limit,
        soft=soft,
        warn=draw(st.one_of(st.none(), st.sampled_from(WARN_FRACTIONS))),
        period=draw(periods),
        metadata=draw(st.sampled_from(METADATA)),
        rollover=draw(_maybe(rollovers, odds_none=2)),
    )


@st.composite
def debits(draw: st.DrawFn) -> Debit:
    currencies = draw(
        st.lists(st.sampled_from(sorted(CURRENCY_SPELLINGS)), min_size=1, max_size=2, unique=True)
    )
    pairs = tuple((draw(st.sampled_from(CURRENCY_SPELLINGS[c])), draw(amounts)) for c in currencies)
    return Debit(draw(st.integers(0, len(SCOPES) - 1)), pairs, draw(forms))


def _maybe(strategy: st.SearchStrategy[Any], odds_none: int = 1) -> st.SearchStrategy[Any]:
    """None (``odds_none`` : 1), else a value of ``strategy``."""
    return weighted((odds_none, st.none()), (1, strategy))


updates = st.builds(
    Update,
    budget=budget_refs,
    limit=_maybe(
        st.one_of(
            st.tuples(st.just("abs"), limits),
            st.tuples(st.just("scale"), st.integers(1, 2 * PPM)),
            st.tuples(st.just("above_spent"), st.integers(-1_000_000, 5_000_000)),
        ),
        odds_none=2,
    ),
    soft=_maybe(
        st.one_of(
            st.just(("clear",)),
            st.tuples(st.just("frac"), fractions_ppm),
            st.tuples(st.just("abs"), limits),
            st.tuples(st.just("at_spent"), st.integers(-1, 1)),
        )
    ),
    status=st.sampled_from([None, None, None, "active", "active", "paused", "paused", "disabled"]),
    period=_maybe(
        st.one_of(
            st.just(("clear",)),
            st.just(("same",)),
            st.tuples(st.just("set"), st.sampled_from(PERIODS)),
        ),
        odds_none=3,
    ),
    warn=_maybe(st.sampled_from(WARN_FRACTIONS), odds_none=3),
    metadata=_maybe(st.tuples(st.just("set"), st.sampled_from(METADATA)), odds_none=3),
    rollover=_maybe(
        st.one_of(st.just(("clear",)), st.tuples(st.just("set"), rollovers)), odds_none=3
    ),
)

scope_refs = st.integers(0, len(SCOPES) - 1)
top_ups = st.builds(
    TopUp,
    budget_refs,
    st.one_of(
        st.tuples(st.just("abs"), st.integers(1, 999)),
        st.tuples(st.just("abs"), st.integers(1, 60_000_000)),
        st.tuples(st.just("frac"), st.integers(1, 600_000)),
        boundaries,
    ),
    forms,
    st.sampled_from([None, "refill"]),
)
resumes = st.builds(
    Resume,
    st.one_of(scope_refs, st.just(-1)),
    st.one_of(
        st.none(),
        st.just(("session", "user", "organization")),
        st.just(("organization", "session", "user")),
        st.lists(
            st.sampled_from(["session", "user", "org", "organization"]),
            min_size=1,
            max_size=3,
            unique=True,
        ).map(tuple),
    ),
)
operations = weighted(
    (30, debits()),
    (5, st.builds(Advance, st.sampled_from([1, 59, 60, 3599, 3600, 86399, 86400, 604800]))),
    (4, st.builds(Advance, st.one_of(st.integers(1, 40 * 86400), st.sampled_from([-1, -3600])))),
    (4, st.builds(ToBoundary, st.sampled_from(CALENDAR_UNITS), st.sampled_from([-1, 0, 1]))),
    (8, st.builds(Check, scope_refs, st.booleans())),
    (3, st.builds(Get, budget_refs)),
    (2, st.builds(ListAll, st.booleans())),
    (10, top_ups),
    (10, updates),
    (1, st.builds(Disable, budget_refs)),
    (14, resumes),
    (4, creates()),
)
starts = st.sampled_from(
    [
        datetime(2026, 1, 15, 12, 0, tzinfo=UTC),
        datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC),
        datetime(2025, 12, 31, 23, 59, 0, tzinfo=UTC),
        datetime(2026, 3, 29, 0, 30, tzinfo=UTC),  # a Sunday
    ]
)


# -- conversions -----------------------------------------------------------------------------


def api_amount(micros: int, form: str) -> int | float | Decimal:
    """The same amount as the API takes it: int units, Decimal, or float (exact via repr)."""
    if form == "int" and micros % PPM == 0:
        return micros // PPM
    if form == "decimal":
        return Decimal(micros).scaleb(-6)
    return micros / PPM


def resolve(spec: tuple[str, int], b: Budget | None, *, credit: bool = False) -> int:
    """Micros of an amount spec for budget ``b`` (a debit, or a top-up when ``credit``).

    ``abs``: the value; ``frac``: that many ppm of the limit; ``to_soft`` / ``to_warn`` /
    ``to_zero``: what brings the spend to the soft limit, the balance to the warning threshold or
    to zero, plus the value (-1, 0, 1 micros): the boundaries of SPEC §3.
    """
    kind, value = spec
    if kind == "abs" or b is None:
        return max(1, value) if credit else max(0, value)
    if kind == "frac" or (kind == "to_soft" and b.soft_limit is None):
        return max(1, b.limit * (value if kind == "frac" else 100_000) // PPM)
    if kind == "to_soft":
        assert b.soft_limit is not None
        gap = b.soft_limit - b.spent
    elif kind == "to_warn":
        gap = b.balance - b.warn_ppm * b.limit // PPM
    else:
        gap = b.balance
    return max(1, value - gap) if credit else max(0, gap + value)


def fraction_ppm(value: float | Decimal) -> int:
    exact = value if isinstance(value, Decimal) else Decimal(repr(value))
    ppm = exact * PPM
    assert ppm == int(ppm)
    return int(ppm)


def units(micros: int | None) -> float | None:
    return None if micros is None else micros / PPM


def to_bk_scope(scope: ScopeSpec) -> bk.Scope:
    return bk.Scope(
        organization_id=scope.organization_id,
        session_id=scope.session_id,
        root_session_id=scope.root_session_id,
        user_id=scope.user_id,
    )


def snapshot(b: Budget) -> BudgetSnapshot:
    return BudgetSnapshot(
        budget_id=b.id,
        currency=b.currency,
        limit_micros=b.limit,
        balance_micros=b.balance,
        soft_limit_micros=b.soft_limit,
        status=b.status,
        soft_acknowledged=b.acknowledged,
        warn_fraction_ppm=b.warn_ppm,
        subject_type=b.subject_type,
        subject_id=b.subject_id,
    )


BUDGET_FIELDS = tuple(bk.Budget.model_fields)


def expected_budget(b: Budget) -> dict[str, Any]:
    return {
        "id": b.id,
        "organization_id": b.organization_id,
        "subject_type": bk.BudgetSubjectType.parse(b.subject_type),
        "subject_id": b.subject_id,
        "currency": b.currency,
        "limit": units(b.limit),
        "soft_limit": units(b.soft_limit),
        "balance": units(b.balance),
        "period": None if b.period is None else bk.parse_period(b.period),
        "period_started_at": None if b.period_start is None else ms_to_datetime(b.period_start),
        "metadata": b.metadata,
        "status": bk.BudgetStatus(b.status),
        "created_at": ms_to_datetime(b.created_ms),
        "updated_at": ms_to_datetime(b.updated_ms),
        "rollover_max": units(b.rollover_max),
    }


def actual_budget(budget: bk.Budget) -> dict[str, Any]:
    return {name: getattr(budget, name) for name in BUDGET_FIELDS}


#: Entries whose ref_type / ref_id the SPEC leaves to the implementation (not compared).
UNSPECIFIED_REFS = ("period_reset", "limit_change")


def _refs(meter_source: str, ref_type: str | None, ref_id: str | None) -> tuple[Any, ...]:
    return (None, None) if meter_source in UNSPECIFIED_REFS else (ref_type, ref_id)


def expected_entry(e: Entry) -> tuple[Any, ...]:
    return (
        e.budget_id,
        units(e.amount),
        e.meter_source,
        *_refs(e.meter_source, e.ref_type, e.ref_id),
        e.session_id,
        e.description,
        ms_to_datetime(e.created_ms),
    )


def actual_entry(e: bk.LedgerEntry) -> tuple[Any, ...]:
    return (
        e.budget_id,
        e.amount,
        e.meter_source,
        *_refs(e.meter_source, e.ref_type, e.ref_id),
        e.session_id,
        e.description,
        e.created_at,
    )


def expected_event(e: Event) -> tuple[Any, ...]:
    message = event_message(e.type, e.limit, e.balance, e.soft_limit, e.currency, e.acknowledged)
    return (
        e.type,
        e.budget_id,
        units(e.balance),
        units(e.limit),
        e.currency,
        units(e.soft_limit),
        message,
        ORG,
        ms_to_datetime(e.created_ms),
    )


def actual_event(e: bk.BudgetEvent) -> tuple[Any, ...]:
    d = e.data
    return (
        e.type,
        d.budget_id,
        d.balance,
        d.limit,
        d.currency,
        d.soft_limit,
        d.message,
        e.organization_id,
        e.created_at,
    )


def by_budget(rows: Sequence[tuple[Any, ...]], index: int) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for row in rows:
        out[row[index]].append(row)
    return dict(out)


def assert_rows(
    what: str,
    actual: Sequence[tuple[Any, ...]],
    expected: Sequence[tuple[Any, ...]],
    *,
    per_budget: bool,
    index: int,
) -> None:
    """Same rows; in order, or in order per budget (``row[index]`` is the budget id)."""
    if per_budget:
        assert len(actual) == len(expected), (what, actual, expected)
        assert by_budget(actual, index) == by_budget(expected, index), (what, actual, expected)
    else:
        assert list(actual) == list(expected), (what, actual, expected)


# -- the harness -----------------------------------------------------------------------------


class Harness:
    """Runs each operation on the kit and on the model, and compares everything."""

    def __init__(self, client: redis_asyncio.Redis, start: datetime) -> None:
        self.client = client
        self.clock = ManualClock(start)
        self.kit = bk.BudgetKit(client, clock=self.clock)
        self.model = Model(ORG, datetime_to_ms(start))
        self.created: list[str] = []  # budget ids in creation order
        self.last_event_id: str | None = None
        self.stream_ids: list[str] = []
        self.steps = 0
        self.avoid_pausing_disabled = AVOID_PAUSING_DISABLED
        self.avoided = 0
        self.log: list[str] = []

    # -- plumbing ---------------------------------------------------------------------------

    def ref(self, index: int) -> str:
        if index < 0:
            wanted: Callable[[Budget], bool] = {
                -1: lambda b: b.acknowledged,
                -2: lambda b: b.status == "paused",
                -3: lambda b: b.status == "exhausted",
                -4: lambda b: b.operator_pause,
            }[index]
            for bid in self.created:
                if wanted(self.model.budgets[bid]):
                    return bid
        return self.created[index % len(self.created)]

    def set_now(self, ms: int) -> None:
        assert ms % 1000 == 0  # whole seconds: the kit's float timestamp is then exact
        self.model.now_ms = ms
        self.clock.set(ms_to_datetime(ms))

    async def both(
        self, model_call: Callable[[], Outcome], kit_call: Callable[[], Any]
    ) -> tuple[Outcome | None, Any]:
        """Runs the model, then the kit; an error must be expected by both, of the same kind."""
        expected: ModelError | None = None
        outcome: Outcome | None = None
        try:
            outcome = model_call()
        except ModelError as error:
            expected = error
        try:
            result = await kit_call()
        except bk.BudgetkitError as error:
            assert expected is not None, f"kit raised {error!r}, the model did not"
            assert isinstance(error, getattr(bk, expected.kind)), (error, expected)
            return None, error
        assert expected is None, f"model raised {expected}, the kit returned {result!r}"
        return outcome, result

    async def new_events(self) -> list[tuple[Any, ...]]:
        events = [e async for e in self.kit.events(ORG, after=self.last_event_id, follow=False)]
        if events:
            self.last_event_id = events[-1].id
            self.stream_ids += [e.id for e in events]
        return [actual_event(e) for e in events]

    async def assert_stored_state(self) -> None:
        """Every budget's stored fields equal the model's (a read that rolls nothing over)."""
        if not self.created:
            return
        pipe = self.client.pipeline(transaction=False)
        for bid in self.created:
            pipe.hgetall(self.kit.keys.budget(ORG, bid))
        rows = await pipe.execute()
        for bid, raw in zip(self.created, rows, strict=True):
            stored = {k.decode(): v.decode() for k, v in raw.items()}
            b = self.model.budgets[bid]
            expected = {
                "bal": str(b.balance),
                "lim": str(b.limit),
                "soft": "" if b.soft_limit is None else str(b.soft_limit),
                "wf": str(b.warn_ppm),
                "status": b.status,
                "pstart": "" if b.period_start is None else str(b.period_start),
                "op": "1" if b.operator_pause else "0",
                "ack": "1" if b.acknowledged else "0",
                "wz": "1" if b.warning_zone else "0",
                "updated": str(b.updated_ms),
                "roll": "" if b.rollover_max is None else str(b.rollover_max),
            }
            actual = {name: stored.get(name) for name in expected}
            assert actual == expected, (bid, actual, expected)

    # -- one step ---------------------------------------------------------------------------

    async def step(self, op: Any) -> None:
        self.log.append(repr(op))
        handler = getattr(self, f"op_{type(op).__name__.lower()}")
        per_budget_events = await handler(op)
        if per_budget_events is None:
            return  # skipped: not a step
        expected = [expected_event(e) for e in self.pending_events]
        assert_rows(
            f"events of {op!r}",
            await self.new_events(),
            expected,
            per_budget=per_budget_events,
            index=1,
        )
        await self.assert_stored_state()
        self.steps += 1

    pending_events: list[Event]

    def expect_events(self, outcome: Outcome | None) -> None:
        self.pending_events = [] if outcome is None else outcome.events

    def assert_budgets(self, actual: Sequence[bk.Budget], expected: Sequence[Budget]) -> None:
        assert [actual_budget(b) for b in actual] == [expected_budget(b) for b in expected]

    async def op_create(self, op: Create) -> bool | None:
        if len(self.created) >= BUDGETS_MAX:
            return None
        subject_type, subject_id = SUBJECTS[op.subject]
        warn: dict[str, Any] = {} if op.warn is None else {"warn_fraction": op.warn}
        kwargs: dict[str, Any] = {
            "limit": api_amount(op.limit, "float"),
            "soft_limit": None if op.soft is None else api_amount(op.soft, "decimal"),
            "period": op.period,
            "metadata": op.metadata,
            "rollover_max": None if op.rollover is None else api_amount(op.rollover, "int"),
            **warn,
        }
        try:
            budget = await self.kit.create_budget(
                ORG, subject_type, subject_id, op.currency, **kwargs
            )
        except (bk.InvalidLimit, bk.InvalidInput):
            budget = None
        model_kwargs: dict[str, Any] = {
            "soft_limit": op.soft,
            "period": op.period,
            "metadata": op.metadata,
            "rollover_max": op.rollover,
        }
        if op.warn is not None:
            model_kwargs["warn_ppm"] = fraction_ppm(op.warn)
        try:
            outcome = self.model.create(
                budget.id if budget else "bdgt_x",
                subject_type,
                subject_id,
                op.currency,
                op.limit,
                **model_kwargs,
            )
        except ModelError as error:
            assert budget is None, f"model raised {error}, the kit created {budget!r}"
            self.expect_events(None)
            return False
        assert budget is not None, "the kit rejected a create the model accepts"
        self.created.append(budget.id)
        self.assert_budgets([budget], outcome.budgets)
        self.expect_events(outcome)
        return False

    async def op_debit(self, op: Debit) -> bool:
        scope = SCOPES[op.scope]
        targets = {}
        for b in reversed(self.model.scope_budgets(scope)):
            targets[b.currency] = b  # the most specific budget of each currency
        given = [(c, resolve(spec, targets.get(c.lower()))) for c, spec in op.amounts]
        micros = {c.lower(): m for c, m in given}
        ref_id = f"r{self.steps}"
        outcome, result = await self.both(
            lambda: self.model.debit(scope, micros, DEBIT_METER, "llm_generation", ref_id),
            lambda: self.kit.debit(
                to_bk_scope(scope),
                {c: api_amount(m, op.form) for c, m in given},
                meter_source=DEBIT_METER,
                ref_type="llm_generation",
                ref_id=ref_id,
            ),
        )
        assert outcome is not None
        expected_check = check_result([snapshot(b) for b in outcome.budgets])
        assert result.check.model_dump() == expected_check.model_dump(), (
            result.check,
            expected_check,
        )
        assert_rows(
            "debit entries",
            [actual_entry(e) for e in result.entries],
            [expected_entry(e) for e in outcome.entries],
            per_budget=True,
            index=0,
        )
        assert_rows(
            "debit events",
            [actual_event(e) for e in result.events],
            [expected_event(e) for e in outcome.events],
            per_budget=True,
            index=1,
        )
        self.expect_events(outcome)
        return True

    async def op_topup(self, op: TopUp) -> bool | None:
        if not self.created:
            return None
        bid = self.ref(op.budget)
        amount = resolve(op.amount, self.model.budgets[bid], credit=True)
        outcome, result = await self.both(
            lambda: self.model.top_up(bid, amount, op.description),
            lambda: self.kit.top_up(
                ORG, bid, api_amount(amount, op.form), description=op.description
            ),
        )
        assert outcome is not None
        self.assert_budgets([result], outcome.budgets)
        self.expect_events(outcome)
        return False

    def update_args(self, op: Update, b: Budget) -> tuple[dict[str, Any], dict[str, Any]]:
        """(kit kwargs, model kwargs) of an update, resolved against the model's budget."""
        kit: dict[str, Any] = {}
        model: dict[str, Any] = {}
        new_limit = b.limit
        if op.limit is not None:
            kind, value = op.limit
            if kind == "abs":
                new_limit = value
            elif kind == "scale":
                new_limit = max(1, b.limit * value // PPM)
            else:
                new_limit = max(1, b.spent + value)
            kit["limit"] = api_amount(new_limit, "float")
            model["limit"] = new_limit
        if op.soft is not None:
            if op.soft[0] == "clear":
                soft = None
            elif op.soft[0] == "frac":
                soft = max(1, new_limit * op.soft[1] // PPM)
            elif op.soft[0] == "at_spent":
                soft = max(1, b.spent + op.soft[1])
            else:
                soft = op.soft[1]
            kit["soft_limit"] = None if soft is None else api_amount(soft, "decimal")
            model["soft_limit"] = soft
        if op.status is not None:
            kit["status"] = op.status
            model["status"] = op.status
        if op.period is not None:
            period = {"clear": None, "same": b.period}.get(op.period[0], op.period[-1])
            kit["period"] = period
            model["period"] = period
        if op.warn is not None:
            kit["warn_fraction"] = op.warn
            model["warn_ppm"] = fraction_ppm(op.warn)
        if op.metadata is not None:
            kit["metadata"] = op.metadata[1]
            model["metadata"] = op.metadata[1]
        if op.rollover is not None:
            roll = None if op.rollover[0] == "clear" else op.rollover[1]
            kit["rollover_max"] = None if roll is None else api_amount(roll, "decimal")
            model["rollover_max"] = roll
        return kit, model

    async def op_update(self, op: Update) -> bool | None:
        if not self.created:
            return None
        bid = self.ref(op.budget)
        target = self.model.budgets[bid]
        avoid = self.avoid_pausing_disabled
        if avoid and op.status == "paused" and target.status == "disabled":
            self.avoided += 1  # see test_pausing_a_disabled_budget_keeps_it_disabled
            return None
        kit_kwargs, model_kwargs = self.update_args(op, self.model.budgets[bid])
        outcome, result = await self.both(
            lambda: self.model.update(bid, **model_kwargs),
            lambda: self.kit.update_budget(ORG, bid, **kit_kwargs),
        )
        if outcome is not None:
            self.assert_budgets([result], outcome.budgets)
        self.expect_events(outcome)
        return False

    async def op_disable(self, op: Disable) -> bool | None:
        if not self.created:
            return None
        bid = self.ref(op.budget)
        outcome, result = await self.both(
            lambda: self.model.update(bid, status="disabled"),
            lambda: self.kit.disable_budget(ORG, bid),
        )
        assert outcome is not None
        self.assert_budgets([result], outcome.budgets)
        self.expect_events(outcome)
        return False

    async def op_resume(self, op: Resume) -> bool:
        scope, levels = SCOPES[op.scope % len(SCOPES)], op.levels
        paused = [bid for bid in self.created if self.model.budgets[bid].status == "paused"]
        if op.scope < 0 and paused:
            b = self.model.budgets[paused[0]]
            scope = SCOPES[SUBJECT_SCOPES[(b.subject_type, b.subject_id)]]
            levels = (b.subject_type,)
        levels = ("session",) if levels is None else levels
        wire = tuple("org" if level == "organization" else level for level in levels)
        default = levels == ("session",)  # also exercise the default argument
        outcome, result = await self.both(
            lambda: self.model.resume(scope, wire),
            lambda: (
                self.kit.resume(to_bk_scope(scope))
                if default
                else self.kit.resume(to_bk_scope(scope), levels=levels)
            ),
        )
        assert outcome is not None
        self.assert_budgets(result, outcome.budgets)
        self.expect_events(outcome)
        return True

    async def op_check(self, op: Check) -> bool:
        scope = SCOPES[op.scope]
        kit_scope = to_bk_scope(scope)
        outcome, result = await self.both(
            lambda: self.model.check(scope),
            lambda: self.kit.check_tool(kit_scope) if op.tool else self.kit.check(kit_scope),
        )
        assert outcome is not None
        snapshots = [snapshot(b) for b in outcome.budgets]
        expected = (
            with_root_session_note(tool_response(snapshots), kit_scope)
            if op.tool
            else check_result(snapshots)
        )
        assert result.model_dump() == expected.model_dump(), (result, expected)
        self.expect_events(outcome)
        return False

    async def op_get(self, op: Get) -> bool | None:
        if not self.created:
            return None
        bid = self.ref(op.budget)
        outcome, result = await self.both(
            lambda: self.model.get(bid), lambda: self.kit.get_budget(ORG, bid)
        )
        assert outcome is not None
        self.assert_budgets([result], outcome.budgets)
        self.expect_events(outcome)
        return False

    async def op_listall(self, op: ListAll) -> bool:
        outcome, result = await self.both(
            lambda: self.model.list_budgets(op.include_disabled),
            lambda: self.kit.list_budgets(ORG, include_disabled=op.include_disabled),
        )
        assert outcome is not None
        self.assert_budgets(result, outcome.budgets)
        self.expect_events(outcome)
        return False

    async def op_advance(self, op: Advance) -> bool:
        self.set_now(self.model.now_ms + op.seconds * 1000)
        self.expect_events(None)
        return False

    async def op_toboundary(self, op: ToBoundary) -> bool:
        target = next_bucket_start(self.model.now_ms, op.unit) + op.offset_seconds * 1000
        self.set_now(target)
        self.expect_events(None)
        return False

    # -- the end ----------------------------------------------------------------------------

    async def final_checks(self) -> None:
        for index in range(len(self.created)):
            await self.step(Get(index))
        await self.step(ListAll(include_disabled=True))
        for bid in self.created:
            b = self.model.budgets[bid]
            entries = await all_entries(self.kit, ORG, bid)
            assert [actual_entry(e) for e in entries] == [
                expected_entry(e) for e in reversed(b.ledger)
            ], bid
            assert len({e.id for e in entries}) == len(entries)
            budget = await self.kit.get_budget(ORG, bid)  # no rollover: the clock did not move
            total = sum(round(e.amount * PPM) for e in entries)
            assert round(budget.balance * PPM) == b.initial_limit - total, bid
        stream = [e async for e in self.kit.events(ORG, follow=False)]
        assert [e.id for e in stream] == self.stream_ids
        assert_rows(
            "event stream",
            [actual_event(e) for e in stream],
            [expected_event(e) for e in self.model.events],
            per_budget=True,
            index=1,
        )


async def run_example(
    client: redis_asyncio.Redis, start: datetime, setup: list[Create], ops: list[Any]
) -> int:
    harness = Harness(client, start)
    try:
        for op in [*setup, *ops]:
            await harness.step(op)
        await harness.final_checks()
    except AssertionError as error:
        raise AssertionError(f"step {len(harness.log)}: {harness.log[-1]}: {error}") from error
    return harness.steps


def run_property(
    tier: str,
    make_client: Callable[[], Any],
    *,
    max_examples: int,
    min_ops: int,
    max_ops: int,
) -> None:
    @settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        start=starts,
        setup=st.lists(creates(), min_size=2, max_size=6),
        ops=st.lists(operations, min_size=min_ops, max_size=max_ops),
    )
    def prop(start: datetime, setup: list[Create], ops: list[Any]) -> None:
        async def main() -> int:
            client = make_client()
            try:
                await client.flushall()
                return await run_example(client, start, setup, ops)
            finally:
                await client.aclose()

        STEPS[tier] += asyncio.run(main())

    prop()


@pytest.mark.slow
@pytest.mark.real
def test_model_real(redis_server_url: str, record_property: Callable[[str, object], None]) -> None:
    STEPS["real"] = 0
    started = datetime.now(UTC)
    run_property(
        "real",
        lambda: redis_asyncio.Redis.from_url(redis_server_url),
        max_examples=60,
        min_ops=30,
        max_ops=80,
    )
    seconds = (datetime.now(UTC) - started).total_seconds()
    record_property("steps", STEPS["real"])
    print(f"\nproperty test (real redis): {STEPS['real']} steps in {seconds:.1f} s")
    assert STEPS["real"] >= REAL_STEPS_MIN, STEPS["real"]


def test_model_fake(record_property: Callable[[str, object], None]) -> None:
    import fakeredis

    STEPS["fake"] = 0
    run_property(
        "fake",
        lambda: fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(version=(7, 0))),
        max_examples=12,
        min_ops=10,
        max_ops=30,
    )
    record_property("steps", STEPS["fake"])
    print(f"\nproperty test (fakeredis): {STEPS['fake']} steps")
    assert STEPS["fake"] > 0


# -- pinned sequences: a known disagreement, and a decision the brief left open -------------------

SESSION_USD = Create(0, "usd", 100_000_000, 50_000_000, None, None, None)  # s_a: 100 usd, soft 50


async def run_ops(client: redis_asyncio.Redis, ops: list[Any], *, avoid: bool = True) -> Harness:
    harness = Harness(client, datetime(2026, 1, 15, 12, 0, tzinfo=UTC))
    harness.avoid_pausing_disabled = avoid
    for op in ops:
        await harness.step(op)
    await harness.final_checks()
    return harness


async def test_pausing_a_disabled_budget_keeps_it_disabled(redis: redis_asyncio.Redis) -> None:
    kit = bk.BudgetKit(redis, clock=ManualClock())
    b = await kit.create_budget(ORG, "session", "s_a", "usd", 10)
    await kit.disable_budget(ORG, b.id)
    paused = await kit.update_budget(ORG, b.id, status="paused")
    assert paused.status == bk.BudgetStatus.DISABLED, paused.status
    result = await kit.debit(bk.Scope(ORG, session_id="s_a"), {"usd": 1})
    assert result.entries == []  # disabled budgets are never debited
    # The same sequence against the model, every step compared.
    await redis.flushall()
    await run_ops(
        redis, [SESSION_USD, Disable(0), Update(0, *[None] * 2, "paused", *[None] * 3)], avoid=False
    )


async def test_resume_acknowledgement_lasts_the_period(redis: redis_asyncio.Redis) -> None:
    """SPEC §4: a resumed soft limit counts as acknowledged "for the rest of the current period",
    so resuming a later operator pause (spent now below the soft limit) does not drop it."""
    usd = "usd"
    harness = await run_ops(
        redis,
        [
            SESSION_USD,
            Debit(0, ((usd, ("abs", 60_000_000)),), "float"),  # spent 60 >= soft 50: paused
            Resume(0, None),  # active, soft limit acknowledged
            TopUp(0, ("abs", 20_000_000), "float", None),  # spent 40
            Update(0, None, None, "paused", None, None, None),  # operator pause
            Resume(0, None),  # active again; the acknowledgement stands
            Debit(0, ((usd, ("abs", 15_000_000)),), "float"),  # spent 55 >= soft 50
        ],
    )
    (budget,) = harness.model.budgets.values()
    assert budget.status == "active" and budget.acknowledged
