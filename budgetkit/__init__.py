"""budgetkit: Redis-native budget enforcement for AI-agent platforms.

Every budget's balance lives in Redis; one Lua call debits a whole session hierarchy atomically,
in exact integer micro-units, and emits edge-triggered events. See README.md.
"""

from budgetkit.client import UNSET, BudgetKit
from budgetkit.errors import (
    BudgetkitError,
    BudgetNotFound,
    BudgetUnavailable,
    CorruptState,
    HoldExpired,
    HoldNotFound,
    IdempotencyConflict,
    InvalidAmount,
    InvalidIdentifier,
    InvalidInput,
    InvalidLimit,
    InvalidPeriod,
    InvalidStatus,
    OutcomeUnknown,
    ScriptError,
    UnpricedModel,
)
from budgetkit.models import (
    Budget,
    BudgetAction,
    BudgetCheckResult,
    BudgetEvent,
    BudgetEventData,
    BudgetPeriod,
    BudgetStatus,
    BudgetSubjectType,
    BudgetSummary,
    BudgetToolResponse,
    CalendarPeriod,
    DurationPeriod,
    ErrorFields,
    LedgerEntry,
    RollingPeriod,
    json_schemas,
    parse_period,
)
from budgetkit.periods import parse_rolling_window
from budgetkit.results import DebitResult, Reservation
from budgetkit.scope import Scope

__version__ = "0.1.0"

__all__ = [
    "UNSET",
    "Budget",
    "BudgetAction",
    "BudgetCheckResult",
    "BudgetEvent",
    "BudgetEventData",
    "BudgetKit",
    "BudgetNotFound",
    "BudgetPeriod",
    "BudgetStatus",
    "BudgetSubjectType",
    "BudgetSummary",
    "BudgetToolResponse",
    "BudgetUnavailable",
    "BudgetkitError",
    "CalendarPeriod",
    "CorruptState",
    "DebitResult",
    "DurationPeriod",
    "ErrorFields",
    "HoldExpired",
    "HoldNotFound",
    "IdempotencyConflict",
    "InvalidAmount",
    "InvalidIdentifier",
    "InvalidInput",
    "InvalidLimit",
    "InvalidPeriod",
    "InvalidStatus",
    "LedgerEntry",
    "OutcomeUnknown",
    "Reservation",
    "RollingPeriod",
    "Scope",
    "ScriptError",
    "UnpricedModel",
    "__version__",
    "json_schemas",
    "parse_period",
    "parse_rolling_window",
]
