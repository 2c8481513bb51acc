"""Result types of budgetkit's own operations (not in the seed)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from budgetkit.models import BudgetCheckResult, BudgetEvent, LedgerEntry
from budgetkit.scope import Scope


class DebitResult(BaseModel):
    """What one atomic debit did: the check after it, the entries written, the events emitted.

    ``entries`` holds every ledger entry the call wrote, in order: a ``period_reset`` entry for a
    budget whose period elapsed, then one debit entry per charged budget.
    """

    model_config = ConfigDict(frozen=True)

    check: BudgetCheckResult
    entries: list[LedgerEntry] = Field(default_factory=list)
    events: list[BudgetEvent] = Field(default_factory=list)
    replayed: bool = False


class Reservation(BaseModel):
    """A hold on a scope's budgets (two-phase: reserve, then commit or release).

    ``granted`` False means nothing was held and nothing written; ``check`` explains why. A
    granted hold counts against the available balance of every budget it is on until it is
    committed, released, or expires at ``expires_at`` (by the same clock as periods).
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    granted: bool
    id: str | None = None
    scope: Scope
    amounts_micros: dict[str, int] = Field(default_factory=dict)
    expires_at: datetime | None = None
    check: BudgetCheckResult
    replayed: bool = False
