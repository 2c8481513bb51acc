"""Turn per-budget snapshots into a check result and a check_budget tool response (SPEC §3-§5).

Pure Python, no Redis: the Lua scripts roll periods over and re-derive statuses, then hand back one
snapshot per budget of the scope; this module decides what the caller sees. Every decision, every
rounding and every formatted number is computed from integer micro-units (10⁻⁶ of a currency
unit); floats appear only in the output fields (``micros / 1_000_000``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from budgetkit._core.amounts import MICROS_PER_UNIT
from budgetkit._core.models import (
    ACTION_SEVERITY,
    ActionKind,
    BudgetCheckResult,
    BudgetSubjectType,
    BudgetSummary,
    BudgetToolResponse,
    ErrorFields,
    SummaryStatus,
)
from budgetkit._core.periods import aligned_period_start_ms, bucket_start_ms
from budgetkit._core.scope import Scope

__all__ = [
    "DEFAULT_WARN_FRACTION_PPM",
    "NO_BUDGETS_HINT",
    "PPM",
    "BudgetSnapshot",
    "Decision",
    "budget_action",
    "check_result",
    "derive_status",
    "event_message",
    "format_amount_2dp",
    "format_percent",
    "in_warn_zone",
    "insufficient_result",
    "message_for",
    "percent_remaining_tenths",
    "rollover_start_ms",
    "root_session_note",
    "severity",
    "threshold_message",
    "threshold_spend_micros",
    "thresholds_reached",
    "tool_response",
    "with_root_session_note",
]

#: Parts per million of a fraction (a warn fraction of 1 is PPM).
PPM = MICROS_PER_UNIT
#: Default warn fraction (0.2) in parts per million.
DEFAULT_WARN_FRACTION_PPM = 200_000
#: Hint of the tool response when the scope has no budget.
NO_BUDGETS_HINT = (
    "No budgets are configured for this session. You can proceed without budget constraints."
)
#: Below this percent remaining (in tenths of a percent) the active hint nudges towards completion.
LOW_PERCENT_TENTHS = 500

_SUMMARY_STATUS: dict[ActionKind, SummaryStatus] = {
    "continue": "active",
    "warn": "warning",
    "pause": "paused",
    "stop": "exhausted",
}
_SNAPSHOT_STATUSES = frozenset({"active", "paused", "exhausted"})
_EVENT_ACTIONS: dict[str, ActionKind | None] = {
    "budget.exhausted": "stop",
    "budget.paused": "pause",
    "budget.warning": "warn",
    "budget.resumed": None,
}


@dataclass(frozen=True, slots=True)
class BudgetSnapshot:
    """One budget as a script sees it after rollover and status re-derivation.

    Amounts are integer micro-units. ``balance_micros`` is the *available* balance (stored balance
    minus outstanding holds) and may be negative; ``held_micros`` the outstanding holds (named in
    stop and pause texts, SPEC §10). ``soft_limit_micros`` is an amount *spent*.
    ``subject_type``/``subject_id``: the scope level the budget was found at (None = unknown).
    Raises ValueError on an impossible snapshot (non-positive limit, unknown status, ...).
    """

    budget_id: str
    currency: str
    limit_micros: int
    balance_micros: int
    soft_limit_micros: int | None
    status: str
    soft_acknowledged: bool
    warn_fraction_ppm: int
    held_micros: int = 0
    subject_type: str | None = None
    subject_id: str | None = None

    def __post_init__(self) -> None:
        if self.limit_micros <= 0:
            raise ValueError(f"snapshot {self.budget_id}: limit_micros must be > 0")
        if self.soft_limit_micros is not None and self.soft_limit_micros <= 0:
            raise ValueError(f"snapshot {self.budget_id}: soft_limit_micros must be > 0")
        if self.status not in _SNAPSHOT_STATUSES:
            raise ValueError(f"snapshot {self.budget_id}: status {self.status!r} cannot be checked")
        if not 0 <= self.warn_fraction_ppm <= PPM:
            raise ValueError(f"snapshot {self.budget_id}: warn_fraction_ppm must be 0..{PPM}")

    @property
    def spent_micros(self) -> int:
        """Amount spent (holds excluded) in micro-units, never negative."""
        return max(self.limit_micros - self.balance_micros - self.held_micros, 0)


@dataclass(frozen=True, slots=True)
class Decision:
    """What one budget says: its action, and the message and error details that go with it."""

    kind: ActionKind
    message: str | None
    error_code: str | None
    error_fields: ErrorFields | None
    snapshot: BudgetSnapshot


def severity(kind: ActionKind) -> int:
    """Rank of an action, most restrictive highest: continue 0, warn 1, pause 2, stop 3."""
    return ACTION_SEVERITY[kind]


def format_amount_2dp(micros: int) -> str:
    """Format micro-units with exactly two decimals, rounded half away from zero, no separators.

    Integer arithmetic only: 125_000 → "0.13", -3_250_000 → "-3.25", -4_000 → "0.00".
    """
    cents = (abs(micros) + 5_000) // 10_000
    sign = "-" if micros < 0 and cents else ""
    return f"{sign}{cents // 100}.{cents % 100:02d}"


def percent_remaining_tenths(balance_micros: int, limit_micros: int) -> int:
    """Percent of the limit remaining, clamped to 0..100, in tenths of a percent (0..1000).

    ``round(balance / limit x 100, 1)`` half away from zero, exactly: limit_micros must be > 0.
    """
    if limit_micros <= 0:
        raise ValueError("limit_micros must be > 0")
    if balance_micros <= 0:
        return 0
    if balance_micros >= limit_micros:
        return 1000
    quotient, remainder = divmod(balance_micros * 1000, limit_micros)
    return quotient + 1 if 2 * remainder >= limit_micros else quotient


def format_percent(tenths: int) -> str:
    """Shortest decimal form of a percent given in tenths: 1000 → "100", 512 → "51.2", 0 → "0"."""
    whole, tenth = divmod(tenths, 10)
    return str(whole) if tenth == 0 else f"{whole}.{tenth}"


def _soft_pause_applies(
    spent_micros: int, soft_limit_micros: int | None, soft_acknowledged: bool
) -> bool:
    return (
        soft_limit_micros is not None
        and not soft_acknowledged
        and spent_micros >= soft_limit_micros
    )


def _reached(spent_micros: int, bound_micros: int) -> str:
    return "exceeded" if spent_micros > bound_micros else "reached"


def message_for(
    kind: ActionKind,
    limit_micros: int,
    balance_micros: int,
    soft_limit_micros: int | None,
    currency: str,
    soft_acknowledged: bool = False,
    held_micros: int = 0,
) -> str | None:
    """The SPEC §5 message of an action for one budget; None for continue.

    Amounts in integer micro-units; ``balance_micros`` is the available balance, ``held_micros``
    the outstanding holds: when > 0, stop and pause texts say ``{spent} {cur} spent and {held}
    {cur} reserved`` and reached/exceeded compares spent + held (SPEC §10). A pause gets the
    soft-limit message when the soft limit is set, not acknowledged and reached; otherwise it is an
    operator pause.
    """
    cur = currency
    used = max(limit_micros - balance_micros, 0)  # spent + held
    spent_s = format_amount_2dp(max(limit_micros - balance_micros - held_micros, 0))
    if held_micros > 0:
        spent_s += f" {cur} spent and {format_amount_2dp(held_micros)} {cur} reserved"
    else:
        spent_s += f" {cur} spent"
    limit_s = format_amount_2dp(limit_micros)
    if kind == "stop":
        return (
            f"Budget exhausted. {spent_s} {_reached(used, limit_micros)} the "
            f"{limit_s} {cur} limit. Increase the budget to continue."
        )
    if kind == "pause":
        if soft_limit_micros is not None and _soft_pause_applies(
            limit_micros - balance_micros, soft_limit_micros, soft_acknowledged
        ):
            soft_s = format_amount_2dp(soft_limit_micros)
            return (
                f"Budget paused. {spent_s} {_reached(used, soft_limit_micros)} the "
                f"{soft_s} {cur} soft limit. Increase or resume the budget to continue."
            )
        return f"Budget paused with {spent_s}. Increase or resume the budget to continue."
    if kind == "warn":
        balance_s = format_amount_2dp(balance_micros)
        return f"Budget running low. {balance_s} {cur} remaining of {limit_s} {cur} limit."
    return None


def threshold_message(
    threshold_ppm: int, limit_micros: int, balance_micros: int, currency: str
) -> str:
    """``Budget threshold reached. {spent} {cur} spent, {pct}% of the {limit} {cur} limit.``"""
    spent = format_amount_2dp(limit_micros - balance_micros)
    whole, rest = divmod(threshold_ppm, 10_000)  # ppm → percent with up to 2 decimals
    percent = str(whole) if rest == 0 else f"{whole}.{rest:02d}".rstrip("0")
    limit = format_amount_2dp(limit_micros)
    return (
        f"Budget threshold reached. {spent} {currency} spent, {percent}% of the "
        f"{limit} {currency} limit."
    )


def event_message(
    event_type: str,
    limit_micros: int,
    balance_micros: int,
    soft_limit_micros: int | None,
    currency: str,
    soft_acknowledged: bool = False,
    threshold_ppm: int | None = None,
) -> str | None:
    """Message of an event: exhausted → stop, paused → pause, warning → warn, resumed → None,
    threshold → which share of the limit the spend reached.

    Raises ValueError on an unknown event type.
    """
    if event_type == "budget.threshold" and threshold_ppm is not None:
        return threshold_message(threshold_ppm, limit_micros, balance_micros, currency)
    if event_type not in _EVENT_ACTIONS:
        raise ValueError(
            f"unknown event type {event_type!r}; expected one of {list(_EVENT_ACTIONS)}"
        )
    kind = _EVENT_ACTIONS[event_type]
    if kind is None:
        return None
    return message_for(
        kind, limit_micros, balance_micros, soft_limit_micros, currency, soft_acknowledged
    )


def _rule_action(s: BudgetSnapshot) -> ActionKind:
    if s.status == "exhausted" or s.balance_micros <= 0:
        return "stop"
    if s.status == "paused":
        return "pause"
    spent = s.limit_micros - s.balance_micros
    if _soft_pause_applies(spent, s.soft_limit_micros, s.soft_acknowledged):
        return "pause"
    if in_warn_zone(s.balance_micros, s.limit_micros, s.warn_fraction_ppm):
        return "warn"
    return "continue"


def _error_details(kind: ActionKind, s: BudgetSnapshot) -> tuple[str | None, ErrorFields | None]:
    spent = s.spent_micros / MICROS_PER_UNIT
    held = s.held_micros / MICROS_PER_UNIT if s.held_micros > 0 else None
    if kind == "stop":
        fields = ErrorFields(
            budget_id=s.budget_id,
            currency=s.currency,
            limit=s.limit_micros / MICROS_PER_UNIT,
            spent=spent,
            held=held,
        )
        return "budget_exhausted", fields
    if kind == "pause":
        soft = None if s.soft_limit_micros is None else s.soft_limit_micros / MICROS_PER_UNIT
        fields = ErrorFields(
            budget_id=s.budget_id, currency=s.currency, soft_limit=soft, spent=spent, held=held
        )
        return "budget_paused", fields
    return None, None


def _decision(kind: ActionKind, s: BudgetSnapshot) -> Decision:
    message = message_for(
        kind,
        s.limit_micros,
        s.balance_micros,
        s.soft_limit_micros,
        s.currency,
        s.soft_acknowledged,
        s.held_micros,
    )
    error_code, error_fields = _error_details(kind, s)
    return Decision(kind, message, error_code, error_fields, s)


def budget_action(s: BudgetSnapshot) -> Decision:
    """Decide one budget: exhausted or balance ≤ 0 → stop; paused → pause; else the §3 rules."""
    return _decision(_rule_action(s), s)


def _more_restrictive(
    c_kind: ActionKind, c: BudgetSnapshot, b_kind: ActionKind, b: BudgetSnapshot
) -> bool:
    """True iff candidate c strictly beats best b: higher severity, then smaller fraction left."""
    c_rank, b_rank = severity(c_kind), severity(b_kind)
    if c_rank != b_rank:
        return c_rank > b_rank
    # balance_c / limit_c < balance_b / limit_b, limits > 0: compare by cross-multiplication.
    return c.balance_micros * b.limit_micros < b.balance_micros * c.limit_micros


def _deciding(snapshots: Sequence[BudgetSnapshot]) -> Decision | None:
    """The deciding budget's full decision; messages are built for that budget only."""
    best: BudgetSnapshot | None = None
    best_kind: ActionKind = "continue"
    for snapshot in snapshots:
        kind = _rule_action(snapshot)
        if best is None or _more_restrictive(kind, snapshot, best_kind, best):
            best, best_kind = snapshot, kind
    return None if best is None else budget_action(best)


def _subject_type(s: BudgetSnapshot) -> BudgetSubjectType | None:
    return None if s.subject_type is None else BudgetSubjectType.parse(s.subject_type)


#: The result of every check that finds nothing to report (results are immutable: shared).
_CONTINUE = BudgetCheckResult(action="continue")


def _result_of(best: Decision | None) -> BudgetCheckResult:
    if best is None or best.kind == "continue":
        return _CONTINUE
    s = best.snapshot
    return BudgetCheckResult(
        action=best.kind,
        message=best.message,
        budget_id=s.budget_id,
        balance=s.balance_micros / MICROS_PER_UNIT,
        currency=s.currency,
        error_code=best.error_code,
        error_fields=best.error_fields,
        subject_type=_subject_type(s),
        subject_id=s.subject_id,
    )


def check_result(snapshots: Sequence[BudgetSnapshot]) -> BudgetCheckResult:
    """The most restrictive decision of the scope as a BudgetCheckResult (SPEC §4 check, §5).

    Snapshots are ordered most specific first; on equal action and equal fraction of limit
    remaining the earlier one decides. No snapshot, or all continue → ``{"action": "continue"}``.
    """
    return _result_of(_deciding(snapshots))


def _summary(s: BudgetSnapshot) -> tuple[BudgetSummary, int]:
    tenths = percent_remaining_tenths(s.balance_micros, s.limit_micros)
    summary = BudgetSummary(
        currency=s.currency,
        limit=s.limit_micros / MICROS_PER_UNIT,
        balance=s.balance_micros / MICROS_PER_UNIT,
        soft_limit=None if s.soft_limit_micros is None else s.soft_limit_micros / MICROS_PER_UNIT,
        percent_remaining=tenths / 10,
        status=_SUMMARY_STATUS[_rule_action(s)],
    )
    return summary, tenths


def tool_response(snapshots: Sequence[BudgetSnapshot]) -> BudgetToolResponse:
    """The check_budget tool response (SPEC §5): one summary per snapshot, in the given order."""
    if not snapshots:
        return BudgetToolResponse(status="no_budgets", budgets=[], hint=NO_BUDGETS_HINT)
    pairs = [_summary(s) for s in snapshots]
    best = _deciding(snapshots)
    assert best is not None  # snapshots is not empty
    status = _SUMMARY_STATUS[best.kind]
    hint: str | None
    if status == "active":
        min_tenths = min(tenths for _, tenths in pairs)
        hint = f"{format_percent(min_tenths)}% of budget remaining."
        if min_tenths < LOW_PERCENT_TENTHS:
            hint += " Consider prioritizing task completion."
    else:
        hint = best.message  # the check result's message: set for warn, pause and stop
    return BudgetToolResponse(status=status, budgets=[summary for summary, _ in pairs], hint=hint)


INSUFFICIENT_CODE = "budget_insufficient"


def insufficient_result(s: BudgetSnapshot, requested_micros: int) -> BudgetCheckResult:
    """Why a reservation was denied on budget ``s`` (SPEC §4 reserve).

    The budget's own stop or pause when it is exhausted or paused (by its stored status, also
    when nothing is available: a paused budget says pause); otherwise a stop with error_code
    ``budget_insufficient``: the amount exceeds the available balance.
    """
    if s.status == "exhausted":
        return _result_of(_decision("stop", s))
    if s.status == "paused":
        return _result_of(_decision("pause", s))
    cur = s.currency
    message = (
        f"Budget insufficient. {format_amount_2dp(requested_micros)} {cur} requested, "
        f"{format_amount_2dp(s.balance_micros)} {cur} available of the "
        f"{format_amount_2dp(s.limit_micros)} {cur} limit."
    )
    fields = ErrorFields(
        budget_id=s.budget_id,
        currency=cur,
        limit=s.limit_micros / MICROS_PER_UNIT,
        spent=s.spent_micros / MICROS_PER_UNIT,
        held=s.held_micros / MICROS_PER_UNIT if s.held_micros > 0 else None,
    )
    return BudgetCheckResult(
        action="stop",
        message=message,
        budget_id=s.budget_id,
        balance=s.balance_micros / MICROS_PER_UNIT,
        currency=cur,
        error_code=INSUFFICIENT_CODE,
        error_fields=fields,
        subject_type=_subject_type(s),
        subject_id=s.subject_id,
    )


def root_session_note(root_session_id: str) -> str:
    """What a child session's tool hint adds (SPEC §6: child sessions pool on their root)."""
    return (
        f"Session budgets are those of the root session {root_session_id}, shared by its "
        "child sessions."
    )


def with_root_session_note(response: BudgetToolResponse, scope: Scope) -> BudgetToolResponse:
    """The tool response of a child session's scope says whose session budgets apply: a
    budget made for the child's own id is not enforced while its scopes name a root."""
    root = scope.root_session_id
    if root is None or root == scope.session_id:
        return response
    note = root_session_note(root)
    hint = note if not response.hint else f"{response.hint} {note}"
    return response.model_copy(update={"hint": hint})


# -- the rules a script applies when it settles a budget (lua/_lib.lua), stated once for Python --
# Used where Python rebuilds a budget's state without a script: restore's roll-forward over
# exported ledger entries (budgetkit.export). Amounts in integer micro-units, times in unix ms.


def derive_status(
    status: str,
    balance_micros: int,
    limit_micros: int,
    soft_limit_micros: int | None,
    soft_acknowledged: bool,
    operator_paused: bool,
) -> str:
    """The status a budget settles to after a change (lua/_lib.lua ``derive_status``, SPEC §4).

    disabled stays disabled; a stored balance ≤ 0 is exhausted; an operator pause, or a soft
    limit reached (spent = limit - balance) and not acknowledged, is paused; otherwise active.
    """
    if status == "disabled":
        return "disabled"
    if balance_micros <= 0:
        return "exhausted"
    if operator_paused:
        return "paused"
    if _soft_pause_applies(limit_micros - balance_micros, soft_limit_micros, soft_acknowledged):
        return "paused"
    return "active"


def in_warn_zone(balance_micros: int, limit_micros: int, warn_fraction_ppm: int) -> bool:
    """Whether a balance is in the warning zone: balance ≤ warn fraction x limit (lua/_lib.lua
    ``warn_at``; the stored ``wz`` flag, whose 0 → 1 edge emits budget.warning, SPEC §9)."""
    return balance_micros * PPM <= warn_fraction_ppm * limit_micros


def threshold_spend_micros(threshold_ppm: int, limit_micros: int) -> int:
    """The smallest spend that reaches ``threshold_ppm`` of the limit: ceil(ppm x limit / 10⁶)
    (lua/_lib.lua ``spend_at``)."""
    return -(-threshold_ppm * limit_micros // PPM)


def thresholds_reached(
    fired_bits: int, spent_micros: int, limit_micros: int, thresholds_ppm: Sequence[int]
) -> int:
    """``fired_bits`` with the bit of every threshold the spend has reached set (bit i: the i-th
    threshold; lua/_lib.lua ``fire_thresholds``). A set bit stays set until the period resets:
    each threshold fires once per period."""
    bits = fired_bits
    for i, threshold_ppm in enumerate(thresholds_ppm):
        if spent_micros >= threshold_spend_micros(threshold_ppm, limit_micros):
            bits |= 1 << i
    return bits


def rollover_start_ms(
    started_ms: int,
    now_ms: int,
    *,
    calendar_unit: str | None = None,
    period_seconds: int | None = None,
) -> int | None:
    """The start of a new period that has begun by ``now_ms``, or None while the period that
    began at ``started_ms`` still runs (lua/_lib.lua ``rollover``, SPEC §7).

    Give ``calendar_unit`` (a calendar period: the UTC bucket of ``now_ms``) or
    ``period_seconds`` (a duration or rolling period: aligned to ``started + k x period``). On a
    rollover the balance returns to the limit, the soft limit's acknowledgement and the fired
    thresholds clear, and the period starts at the returned time.
    """
    if now_ms < started_ms:
        return None
    if calendar_unit is not None:
        start = bucket_start_ms(now_ms, calendar_unit)
        return start if start > started_ms else None
    if period_seconds is None:
        raise ValueError("rollover_start_ms needs calendar_unit or period_seconds")
    if now_ms - started_ms < period_seconds * 1000:
        return None
    return aligned_period_start_ms(started_ms, now_ms, period_seconds)
