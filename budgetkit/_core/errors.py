"""Every error budgetkit raises.

A limit being reached is *not* an error: it is the ``action`` of a BudgetCheckResult.
Exceptions are for misuse (invalid input) and failures (store unavailable, corrupt state).

    BudgetkitError
    ├── InvalidInput (ValueError)            bad argument; nothing was written
    │   ├── InvalidAmount                    NaN, inf, negative, too large, > 6 decimals
    │   ├── InvalidIdentifier                empty, too long, whitespace, control chars, braces
    │   ├── InvalidPeriod                    bad rolling window or calendar unit
    │   ├── InvalidLimit                     limit / soft limit / warn fraction out of range
    │   ├── InvalidStatus                    unknown status, or one that cannot be set
    │   └── UnpricedModel                    usd budget in scope, model has no price, no cost
    ├── BudgetNotFound (LookupError)         unknown id, or another organization's
    ├── HoldNotFound (LookupError)           unknown or already resolved reservation
    ├── HoldExpired                          reservation outlived its TTL
    ├── IdempotencyConflict                  same key, different request
    ├── BudgetExceeded                       a spend guard's reservation was denied (.check)
    ├── CorruptState                         a stored record fails validation; nothing written
    ├── BudgetUnavailable                    Redis unreachable or refused it; not applied
    │   ├── PermissionDenied                 Redis refused a command or key (ACL)
    │   └── OutcomeUnknown                   the request may or may not have been applied
    │       └── ReplicationTimeout           applied on the primary, too few replicas confirmed
    ├── ScriptError                          an unexpected script reply (a bug)
    └── ClientClosed (RuntimeError)          a call on a blocking client after its close()
"""

from __future__ import annotations

from typing import Any


class BudgetkitError(Exception):
    """Base of every budgetkit error."""


class InvalidInput(BudgetkitError, ValueError):
    """An argument is invalid; nothing was written."""


class InvalidAmount(InvalidInput):
    """An amount is not a finite, in-range number with at most 6 decimals."""


class InvalidIdentifier(InvalidInput):
    """An identifier is empty, too long, or contains forbidden characters."""


class InvalidPeriod(InvalidInput):
    """A budget period cannot be parsed (bad rolling window, unknown calendar unit)."""


class InvalidLimit(InvalidInput):
    """A limit, soft limit or warn fraction is out of range."""


class InvalidStatus(InvalidInput):
    """A status string is unknown or cannot be set explicitly."""


class UnpricedModel(InvalidInput):
    """A usd budget is in scope but the model has no price and no provider cost."""


class BudgetNotFound(BudgetkitError, LookupError):
    """No budget with this id exists in this organization."""


class HoldNotFound(BudgetkitError, LookupError):
    """No outstanding reservation with this id exists (unknown or already resolved)."""


class HoldExpired(BudgetkitError):
    """The reservation outlived its TTL; record the usage with ``debit`` instead."""


class BudgetExceeded(BudgetkitError):
    """``kit.spend``'s reservation was denied: nothing was held. ``check`` is the denial's
    BudgetCheckResult (why: the budget that cannot cover the estimate, a pause, a stop)."""

    def __init__(self, message: str, *, check: Any) -> None:
        super().__init__(message)
        self.check = check


class IdempotencyConflict(BudgetkitError):
    """The idempotency key was already used for a different request."""


class CorruptState(BudgetkitError):
    """A stored record fails validation; the operation wrote nothing."""


class BudgetUnavailable(BudgetkitError):
    """Redis could not be reached, or refused the request; it was not applied.

    ``server_error`` is Redis's reply when it refused (``NOPERM ...``, ``ERR DB index is out of
    range``, ``READONLY ...``, ``OOM ...``, ``LOADING ...``: see budgetkit._core.store_errors), None
    when it could not be reached. ``check`` answers by the failure policy in both cases.
    """

    def __init__(self, message: str, *, server_error: str | None = None) -> None:
        super().__init__(message)
        self.server_error = server_error


class OutcomeUnknown(BudgetUnavailable):
    """The connection failed after the request was sent: it may have been applied.

    Retry with the same idempotency key to apply it at most once.
    """


class ReplicationTimeout(OutcomeUnknown):
    """A mutation was applied on the primary, but fewer than the required replicas acknowledged
    it in time (``BudgetKit(durability=...)``): a failover now could lose it. Retry with the
    same idempotency key."""


class StoreFormatMismatch(BudgetUnavailable):
    """The store's data is in a layout this budgetkit version does not read (its stored-format
    version, ``P:format``, differs from ``budgetkit.STORE_FORMAT``): an older version after
    ``budgetkit migrate``, or a newer one before it. Nothing was run; ``check`` answers by the
    failure policy. ``found`` is the store's version, ``expected`` this client's."""

    def __init__(self, message: str, *, found: int, expected: int) -> None:
        super().__init__(message)
        self.found = found
        self.expected = expected


class ScriptError(BudgetkitError):
    """A script replied with something budgetkit does not understand (a bug)."""


class PermissionDenied(BudgetUnavailable):
    """Redis refused a command (ACL): the user lacks a command or key permission.

    An unavailable store for the failure policy (``check`` fails closed or open); Redis refuses
    before running the command, or, for a command a script runs, when the script reaches it.
    """


class ClientClosed(BudgetkitError, RuntimeError):
    """The blocking client (``budgetkit.sync.BudgetKit``) was closed.

    Every call made after ``close()`` raises it before anything is sent. A call still running
    when another thread closes the client raises it too, and may then have been applied (retry
    on a new client with the same idempotency key).
    """


SHORT_REPR_CHARS_MAX = 80


def short_repr(value: object) -> str:
    """A short repr of a caller's value for an error message: a huge input (a long string, an
    int beyond Python's 4,300-digit repr limit) never makes a huge message or a second error."""
    try:
        text = repr(value)
    except ValueError:  # int too large to convert to str
        return (
            f"<{type(value).__name__} of about {value.bit_length() * 3 // 10} digits>"
            if isinstance(value, int)
            else f"<unprintable {type(value).__name__}>"
        )
    if len(text) <= SHORT_REPR_CHARS_MAX:
        return text
    return text[: SHORT_REPR_CHARS_MAX - 3] + "..."


#: Error code in a ``BK_<CODE> message`` script reply → the error raised for it.
SCRIPT_ERROR_CODES: dict[str, type[BudgetkitError]] = {
    "INVALID": InvalidInput,
    "LIMIT": InvalidLimit,
    "STATUS": InvalidStatus,
    "NOT_FOUND": BudgetNotFound,
    "HOLD_NOT_FOUND": HoldNotFound,
    "HOLD_EXPIRED": HoldExpired,
    "IDEMPOTENCY_CONFLICT": IdempotencyConflict,
    "CORRUPT": CorruptState,
    "UNPRICED": UnpricedModel,
}
