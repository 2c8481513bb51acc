"""Result types of budgetkit's own operations (not in the seed)."""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import ConfigDict, Field, field_serializer

from budgetkit._core.models import (
    Amount,
    BudgetCheckResult,
    BudgetEvent,
    LedgerEntry,
    Timestamp,
    _WireModel,
)
from budgetkit._core.scope import Scope


class DebitResult(_WireModel):
    """What one atomic debit did: the check after it, the entries written, the events emitted.

    ``entries`` holds every ledger entry the call wrote, in order: a ``period_reset`` entry for a
    budget whose period elapsed, then one debit entry per charged budget. ``unbudgeted`` lists
    the currencies of the call (with an amount > 0) that no budget of the scope was charged in —
    a misspelt currency, a scope without budgets, budgets lost with a Redis without persistence
    (SPEC §10). ``replayed``: True when an idempotency key matched an earlier call.
    """

    check: BudgetCheckResult
    entries: list[LedgerEntry] = Field(default_factory=list)
    events: list[BudgetEvent] = Field(default_factory=list)
    unbudgeted: list[str] = Field(default_factory=list)
    replayed: bool = False


class Reservation(_WireModel):
    """A hold on a scope's budgets (two-phase: reserve, then commit or release).

    ``granted`` False means nothing was held and nothing written; ``check`` explains why. A
    granted hold counts against the available balance of every budget it is on until it is
    committed, released, or expires at ``expires_at`` (by the same clock as periods).
    ``amounts``: what was asked for, per currency, in currency units. ``check`` of a granted
    hold is the scope's check without this hold (its holder is never stopped by it).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    granted: bool
    id: str | None = None
    scope: Scope
    amounts: dict[str, Amount] = Field(default_factory=dict)
    expires_at: Timestamp | None = None
    check: BudgetCheckResult
    replayed: bool = False

    @field_serializer("scope")
    def _scope_fields(self, scope: Scope) -> dict[str, Any]:
        """The scope's given levels only (None fields omitted, as everywhere in budgetkit)."""
        return {k: v for k, v in dataclasses.asdict(scope).items() if v is not None}
