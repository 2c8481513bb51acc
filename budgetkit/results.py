"""Result types of budgetkit's own operations (not in the seed)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from budgetkit.models import BudgetCheckResult, BudgetEvent, LedgerEntry


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
