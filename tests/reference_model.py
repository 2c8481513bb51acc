"""A pure-Python reference model of budgetkit's state machine (SPEC.md §2-7, §9).

Written from SPEC.md and the implementation decisions that fill its gaps, never from the Lua
scripts: tests/test_property.py runs random operation sequences against the real implementation
and this model and compares every result. Everything is integers: amounts in micro-units
(10⁻⁶ of a currency unit), times in unix milliseconds, fractions in parts per million. Nothing
here touches Redis or budgetkit's internals; turning a model budget into a check result reuses
``budgetkit._core.rules`` (which is unit-tested on its own), since the model's job is the state.

Decisions beyond the SPEC text (from the brief of the property test):

- Status after every mutation (disabled sticks): exhausted iff balance <= 0; else paused iff
  operator pause, or soft limit set, not acknowledged and spent >= soft; else active.
- Events after each mutation of a budget, in this order: ``budget.warning`` iff the warning-zone
  flag (balance <= floor(warn_ppm x limit / 10⁶)) goes 0 → 1 and the new status is neither
  exhausted nor disabled (the flag itself is always updated); ``budget.paused`` on entering
  paused; ``budget.exhausted`` on entering exhausted; ``budget.resumed`` on going from paused or
  exhausted to active. Creation counts as a mutation from (active, outside the zone).
- Rollover when any operation reads a budget (debit, check and resume read only non-disabled
  budgets of the scope; get, list, update and top_up read any budget). Duration: elapsed iff
  now - start >= seconds x 1000, new start = start + k x length (largest k); calendar: elapsed
  iff bucket_start(now) > start, new start = bucket_start(now); a start in the future never
  resets. On rollover: a ``period_reset`` entry of balance - limit, balance = limit, the soft
  acknowledgement ends, then status and events.
- Hierarchy order: session (the root session when given), app_channel, app, agent, user, org;
  within a level by budget id.
- update: rollover; limit delta moves the balance (``limit_change`` entry of -delta when
  delta != 0); the acknowledgement ends when delta != 0 or the soft limit changes; a different
  period (different JSON) restarts its start at now (duration) or the current bucket
  (calendar); status ``paused`` sets the operator pause, ``active`` clears it and un-disables,
  ``disabled`` disables. ``0 < soft <= limit`` is validated on the result (InvalidLimit,
  nothing changes, not even a rollover).
- resume: for the paused budgets of the given levels: the operator pause ends and, when a soft
  limit is set and spent >= soft, the soft limit counts as acknowledged. SPEC §4 says the
  acknowledgement lasts "for the rest of the current period", so an acknowledgement given earlier
  in the period is kept (the brief's "acknowledged iff spent >= soft" would drop it).
- Disabled budgets: SPEC §4 says ``disabled`` "sticks until an explicit active", so an explicit
  ``paused`` on a disabled budget only sets the operator pause and the budget stays disabled.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

PPM = 1_000_000
MS_PER_SECOND = 1000
MAX_MICROS = 2**53 - 1  # SPEC §2: the largest amount, limit or balance
LEVELS = ("session", "app_channel", "app", "agent", "user", "org")
CALENDAR_UNITS = ("hour", "day", "week", "month", "year")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DEFAULT_WARN_PPM = 200_000

# SPEC §1 rolling-window units.
_WINDOW_UNITS: dict[str, int] = {}
for _names, _seconds in (
    (("", "s", "sec", "secs", "second", "seconds"), 1),
    (("m", "min", "mins", "minute", "minutes"), 60),
    (("h", "hr", "hrs", "hour", "hours"), 3600),
    (("d", "day", "days"), 86400),
    (("w", "wk", "wks", "week", "weeks"), 604800),
):
    for _name in _names:
        _WINDOW_UNITS[_name] = _seconds


class ModelError(Exception):
    """An operation the model rejects; ``kind`` names the budgetkit error class expected."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


# -- time -----------------------------------------------------------------------------------


def ms_to_datetime(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def datetime_to_ms(when: datetime) -> int:
    return (when - EPOCH) // timedelta(milliseconds=1)


def bucket_start(now_ms: int, unit: str) -> int:
    """Start (ms) of the UTC calendar bucket of ``unit`` holding ``now_ms`` (ISO weeks)."""
    t = ms_to_datetime(now_ms)
    if unit == "hour":
        start = datetime(t.year, t.month, t.day, t.hour, tzinfo=UTC)
    elif unit == "day":
        start = datetime(t.year, t.month, t.day, tzinfo=UTC)
    elif unit == "week":
        start = datetime(t.year, t.month, t.day, tzinfo=UTC) - timedelta(days=t.isoweekday() - 1)
    elif unit == "month":
        start = datetime(t.year, t.month, 1, tzinfo=UTC)
    elif unit == "year":
        start = datetime(t.year, 1, 1, tzinfo=UTC)
    else:
        raise ValueError(unit)
    return datetime_to_ms(start)


def next_bucket_start(now_ms: int, unit: str) -> int:
    """Start (ms) of the bucket after the one holding ``now_ms``."""
    start = ms_to_datetime(bucket_start(now_ms, unit))
    if unit == "hour":
        nxt = start + timedelta(hours=1)
    elif unit == "day":
        nxt = start + timedelta(days=1)
    elif unit == "week":
        nxt = start + timedelta(days=7)
    elif unit == "month":
        nxt = start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    else:
        nxt = start.replace(year=start.year + 1)
    return datetime_to_ms(nxt)


def window_seconds(window: str) -> int:
    """SPEC §1 rolling-window parse (only valid windows reach the model)."""
    text = window.strip()
    digits = len(text) - len(text.lstrip("0123456789"))
    if digits == 0:
        raise ValueError(window)
    unit = text[digits:].strip().lower()
    return int(text[:digits]) * _WINDOW_UNITS[unit]


def period_kind(period: Mapping[str, Any] | None) -> tuple[str, int | None, str | None]:
    """('', None, None) for no period, ('d', seconds, None) or ('c', None, unit)."""
    if period is None:
        return "", None, None
    if period["type"] == "duration":
        return "d", int(period["seconds"]), None
    if period["type"] == "rolling":
        return "d", window_seconds(period["window"]), None
    return "c", None, str(period["unit"])


# -- state ----------------------------------------------------------------------------------


@dataclass
class Entry:
    budget_id: str
    amount: int
    meter_source: str
    ref_type: str | None
    ref_id: str | None
    session_id: str | None
    description: str | None
    created_ms: int


@dataclass
class Event:
    type: str
    budget_id: str
    balance: int
    limit: int
    currency: str
    soft_limit: int | None
    acknowledged: bool
    created_ms: int


@dataclass
class Budget:
    id: str
    organization_id: str
    subject_type: str  # wire name: session, user, org, ...
    subject_id: str
    currency: str
    limit: int
    soft_limit: int | None
    balance: int
    warn_ppm: int
    period: dict[str, Any] | None
    period_start: int | None
    metadata: Any
    status: str
    created_ms: int
    updated_ms: int
    initial_limit: int
    operator_pause: bool = False
    acknowledged: bool = False
    rollover_max: int | None = None
    warning_zone: bool = False
    ledger: list[Entry] = field(default_factory=list)

    @property
    def spent(self) -> int:
        return self.limit - self.balance


@dataclass
class Outcome:
    """What one operation did: the budgets it returns, the entries and events it wrote."""

    budgets: list[Budget] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


@dataclass(frozen=True)
class ScopeSpec:
    """The subject hierarchy of a session (SPEC §6), as plain data."""

    organization_id: str
    session_id: str | None = None
    root_session_id: str | None = None
    app_channel_id: str | None = None
    app_id: str | None = None
    agent_id: str | None = None
    user_id: str | None = None

    def levels(self) -> list[tuple[str, str]]:
        ids = {
            "session": self.root_session_id or self.session_id,
            "app_channel": self.app_channel_id,
            "app": self.app_id,
            "agent": self.agent_id,
            "user": self.user_id,
            "org": self.organization_id,
        }
        return [(level, sid) for level in LEVELS if (sid := ids[level]) is not None]


_UNSET: Any = object()


class Model:
    """Every budget of one organization, its ledger and its event stream, at time ``now_ms``."""

    UNSET = _UNSET

    def __init__(self, organization_id: str, now_ms: int) -> None:
        self.organization_id = organization_id
        self.now_ms = now_ms
        self.budgets: dict[str, Budget] = {}
        self.events: list[Event] = []

    # -- rules ------------------------------------------------------------------------------

    @staticmethod
    def derive_status(b: Budget) -> str:
        if b.status == "disabled":
            return "disabled"
        if b.balance <= 0:
            return "exhausted"
        if b.operator_pause:
            return "paused"
        if b.soft_limit is not None and not b.acknowledged and b.spent >= b.soft_limit:
            return "paused"
        return "active"

    @staticmethod
    def in_warning_zone(b: Budget) -> bool:
        return b.balance <= b.warn_ppm * b.limit // PPM

    def _event(self, out: Outcome, b: Budget, kind: str) -> None:
        event = Event(
            kind,
            b.id,
            b.balance,
            b.limit,
            b.currency,
            b.soft_limit,
            b.acknowledged,
            self.now_ms,
        )
        out.events.append(event)
        self.events.append(event)

    def _settle(self, out: Outcome, b: Budget, old_status: str, old_zone: bool) -> None:
        b.status = self.derive_status(b)
        b.warning_zone = self.in_warning_zone(b)
        new = b.status
        if not old_zone and b.warning_zone and new not in ("exhausted", "disabled"):
            self._event(out, b, "budget.warning")
        if new == "paused" and old_status != "paused":
            self._event(out, b, "budget.paused")
        if new == "exhausted" and old_status != "exhausted":
            self._event(out, b, "budget.exhausted")
        if new == "active" and old_status in ("paused", "exhausted"):
            self._event(out, b, "budget.resumed")
        b.updated_ms = self.now_ms

    def _entry(
        self,
        out: Outcome,
        b: Budget,
        amount: int,
        meter_source: str,
        ref_type: str | None = None,
        ref_id: str | None = None,
        session_id: str | None = None,
        description: str | None = None,
    ) -> None:
        entry = Entry(
            b.id, amount, meter_source, ref_type, ref_id, session_id, description, self.now_ms
        )
        b.ledger.append(entry)
        out.entries.append(entry)

    def _rollover(self, out: Outcome, b: Budget) -> None:
        kind, seconds, unit = period_kind(b.period)
        if kind == "" or b.period_start is None or self.now_ms < b.period_start:
            return
        if kind == "d":
            assert seconds is not None
            length = seconds * MS_PER_SECOND
            k = (self.now_ms - b.period_start) // length
            if k == 0:
                return
            start = b.period_start + k * length
        else:
            assert unit is not None
            start = bucket_start(self.now_ms, unit)
            if start <= b.period_start:
                return
        old_status, old_zone = b.status, b.warning_zone
        balance = b.balance
        for _ in range(self._resets_elapsed(b, kind, seconds, unit)):  # SPEC §11, one at a time
            carried = 0 if b.rollover_max is None else min(max(balance, 0), b.rollover_max)
            balance = b.limit + carried
        self._entry(out, b, b.balance - balance, "period_reset")
        b.balance = balance
        b.acknowledged = False
        b.period_start = start
        self._settle(out, b, old_status, old_zone)

    def _resets_elapsed(self, b: Budget, kind: str, seconds: int | None, unit: str | None) -> int:
        """How many period boundaries lie between the period start and now."""
        assert b.period_start is not None
        if kind == "d":
            assert seconds is not None
            return (self.now_ms - b.period_start) // (seconds * MS_PER_SECOND)
        assert unit is not None
        count, boundary = 0, next_bucket_start(b.period_start, unit)
        while boundary <= self.now_ms:
            count, boundary = count + 1, next_bucket_start(boundary, unit)
        return count

    def _period_start_at_now(self, period: Mapping[str, Any] | None) -> int | None:
        kind, _, unit = period_kind(period)
        if kind == "":
            return None
        if kind == "d":
            return self.now_ms
        assert unit is not None
        return bucket_start(self.now_ms, unit)

    # -- reading ----------------------------------------------------------------------------

    def scope_budgets(
        self, scope: ScopeSpec, levels: Iterable[str] | None = None, include_disabled: bool = False
    ) -> list[Budget]:
        """The scope's budgets in hierarchy order (levels filter: wire names)."""
        wanted = None if levels is None else set(levels)
        out: list[Budget] = []
        for level, sid in scope.levels():
            if wanted is not None and level not in wanted:
                continue
            found = [
                b for b in self.budgets.values() if b.subject_type == level and b.subject_id == sid
            ]
            found.sort(key=lambda b: b.id)
            out += [b for b in found if include_disabled or b.status != "disabled"]
        return out

    @staticmethod
    def _check_rollover(roll: int | None, period: Mapping[str, Any] | None, limit: int) -> None:
        """SPEC §11: rollover_max >= 0, only on a periodic budget, limit + it representable."""
        if roll is None:
            return
        if period is None:
            raise ModelError("InvalidInput", "rollover_max needs a period")
        if roll > MAX_MICROS - limit:
            raise ModelError("InvalidLimit", "limit + rollover_max must be representable")

    def _budget(self, budget_id: str) -> Budget:
        if budget_id not in self.budgets:
            raise ModelError("BudgetNotFound", budget_id)
        return self.budgets[budget_id]

    # -- operations -------------------------------------------------------------------------

    def create(
        self,
        budget_id: str,
        subject_type: str,
        subject_id: str,
        currency: str,
        limit: int,
        soft_limit: int | None = None,
        period: dict[str, Any] | None = None,
        metadata: Any = None,
        warn_ppm: int = DEFAULT_WARN_PPM,
        rollover_max: int | None = None,
    ) -> Outcome:
        if limit <= 0:
            raise ModelError("InvalidLimit", "Limit must be positive")
        if soft_limit is not None and not 0 < soft_limit <= limit:
            raise ModelError("InvalidLimit", "Soft limit must be between 0 and limit")
        self._check_rollover(rollover_max, period, limit)
        b = Budget(
            id=budget_id,
            organization_id=self.organization_id,
            subject_type=subject_type,
            subject_id=subject_id,
            currency=currency.lower(),
            limit=limit,
            soft_limit=soft_limit,
            balance=limit,
            warn_ppm=warn_ppm,
            period=period,
            period_start=self._period_start_at_now(period),
            metadata=metadata,
            status="active",
            created_ms=self.now_ms,
            updated_ms=self.now_ms,
            initial_limit=limit,
            rollover_max=rollover_max,
        )
        out = Outcome(budgets=[b])
        self._settle(out, b, "active", False)
        self.budgets[b.id] = b
        return out

    def get(self, budget_id: str) -> Outcome:
        b = self._budget(budget_id)
        out = Outcome(budgets=[b])
        self._rollover(out, b)
        return out

    def list_budgets(self, include_disabled: bool = False) -> Outcome:
        """Every budget (no filter, one page), newest first (created ms, then id)."""
        page = sorted(
            (b for b in self.budgets.values() if include_disabled or b.status != "disabled"),
            key=lambda b: (b.created_ms, b.id),
            reverse=True,
        )
        out = Outcome(budgets=page)
        for b in page:
            self._rollover(out, b)
        return out

    def check(self, scope: ScopeSpec) -> Outcome:
        budgets = self.scope_budgets(scope)
        out = Outcome(budgets=budgets)
        for b in budgets:
            self._rollover(out, b)
        return out

    def debit(
        self,
        scope: ScopeSpec,
        amounts: Mapping[str, int],
        meter_source: str = "manual",
        ref_type: str | None = None,
        ref_id: str | None = None,
        description: str | None = None,
    ) -> Outcome:
        """Charges every non-disabled budget of the scope; ``out.budgets`` is that set after."""
        budgets = self.scope_budgets(scope)
        out = Outcome(budgets=budgets)
        for b in budgets:
            self._rollover(out, b)
            amount = amounts.get(b.currency, 0)
            if amount > 0:
                old_status, old_zone = b.status, b.warning_zone
                self._entry(
                    out, b, amount, meter_source, ref_type, ref_id, scope.session_id, description
                )
                b.balance -= amount
                self._settle(out, b, old_status, old_zone)
        return out

    def top_up(self, budget_id: str, amount: int, description: str | None = None) -> Outcome:
        if amount <= 0:
            raise ModelError("InvalidAmount", "top-up must be > 0")
        b = self._budget(budget_id)
        out = Outcome(budgets=[b])
        self._rollover(out, b)
        old_status, old_zone = b.status, b.warning_zone
        self._entry(out, b, -amount, "manual", "top_up", None, None, description)
        b.balance += amount
        self._settle(out, b, old_status, old_zone)
        return out

    def update(
        self,
        budget_id: str,
        *,
        limit: int = _UNSET,
        soft_limit: int | None = _UNSET,
        status: str = _UNSET,
        period: dict[str, Any] | None = _UNSET,
        warn_ppm: int = _UNSET,
        metadata: Any = _UNSET,
        rollover_max: int | None = _UNSET,
    ) -> Outcome:
        b = self._budget(budget_id)
        new_limit = b.limit if limit is _UNSET else limit
        if new_limit <= 0:
            raise ModelError("InvalidLimit", "Limit must be positive")
        new_soft = b.soft_limit if soft_limit is _UNSET else soft_limit
        if new_soft is not None and not 0 < new_soft <= new_limit:
            raise ModelError("InvalidLimit", "Soft limit must be between 0 and limit")
        if status is not _UNSET and status not in ("active", "paused", "disabled"):
            raise ModelError("InvalidInput", f"status {status} cannot be set")
        new_roll = b.rollover_max if rollover_max is _UNSET else rollover_max
        self._check_rollover(new_roll, b.period if period is _UNSET else period, new_limit)
        out = Outcome(budgets=[b])
        self._rollover(out, b)
        old_status, old_zone = b.status, b.warning_zone
        delta = new_limit - b.limit
        if delta != 0:
            self._entry(out, b, -delta, "limit_change")
            b.balance += delta
        if delta != 0 or new_soft != b.soft_limit:
            b.acknowledged = False
        b.limit, b.soft_limit = new_limit, new_soft
        if warn_ppm is not _UNSET:
            b.warn_ppm = warn_ppm
        if period is not _UNSET and period != b.period:
            b.period = period
            b.period_start = self._period_start_at_now(period)
        if metadata is not _UNSET:
            b.metadata = metadata
        b.rollover_max = new_roll
        if status == "disabled":
            b.status = "disabled"
        elif status == "active":
            b.operator_pause = False
            b.status = "active"  # un-disables; re-derived by _settle
        elif status == "paused":
            b.operator_pause = True  # a disabled budget stays disabled (SPEC §4)
        self._settle(out, b, old_status, old_zone)
        return out

    def resume(self, scope: ScopeSpec, levels: Sequence[str] = ("session",)) -> Outcome:
        """Resumes the paused budgets of the levels; ``out.budgets``: those now active."""
        out = Outcome()
        for b in self.scope_budgets(scope, levels):
            self._rollover(out, b)
            if b.status != "paused":
                continue
            old_status, old_zone = b.status, b.warning_zone
            b.operator_pause = False
            if b.soft_limit is not None and b.spent >= b.soft_limit:
                b.acknowledged = True
            self._settle(out, b, old_status, old_zone)
            if b.status == "active":
                out.budgets.append(b)
        return out
