"""How the CLI reports a failure: one line on stderr, what happened, then what to do (exit 2).

``explain`` turns any reported error into that line; ``unreachable`` names why a store could not
serve a command (unreachable, credentials, or a refusal named by its reply: ACL, read-only,
DB index...); ``StoreFailures`` remembers the store failure behind a check that the failure
policy answered.
"""

from __future__ import annotations

import argparse
import logging
import os
from urllib.parse import urlsplit, urlunsplit

from redis.exceptions import AuthenticationError, RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from budgetkit import (
    BudgetkitError,
    BudgetNotFound,
    BudgetUnavailable,
    CorruptState,
    HoldExpired,
    HoldNotFound,
    IdempotencyConflict,
    InvalidInput,
    OutcomeUnknown,
    UnpricedModel,
)
from budgetkit._core.store_errors import is_acl_refusal, reply_code, server_reply

__all__ = ["REPORTED_ERRORS", "CliError", "explain", "redact", "redis_url", "unreachable"]


class CliError(Exception):
    """A failure reported as one line: what happened, then what to do."""


#: Failures reported as one line (exit 2).
REPORTED_ERRORS = (CliError, BudgetkitError, RedisError, RedisClusterException, OSError, ValueError)

AUTH_HINTS = ("authenticat", "noauth", "wrongpass", "username-password", "invalid password")
ACL_HINT = "Grant its user the commands and keys budgetkit needs (docs/acl.md)"
#: What to do when Redis refused a request, by the code of its reply (budgetkit._core.store_errors).
REFUSAL_HINTS = {
    "READONLY": "Point --redis-url at the primary, not a replica",
    "OOM": "Free memory on the server or raise its maxmemory",
    "LOADING": "Wait until it has loaded its data, then retry",
    "MISCONF": "Fix its persistence (see the server's log), then retry",
}
REFUSAL_HINT = "Fix the server or --redis-url, then retry"


def redact(url: str) -> str:
    """The URL without its password (``redis://:***@host:port/0``), for messages."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))
    except ValueError:
        return "the given URL"


def redis_url(a: argparse.Namespace) -> str:
    """The Redis URL of the command: --redis-url, else $REDIS_URL; CliError when neither."""
    url: str | None = a.redis_url or os.environ.get("REDIS_URL")
    if not url:
        raise CliError("no Redis URL given. Pass --redis-url redis://HOST:PORT/0 or set REDIS_URL")
    return url


def _reason(error: BaseException) -> str:
    if isinstance(error, RedisTimeoutError | TimeoutError):
        return "timed out"
    text = str(error)
    if "Error 111 " in text or "refused" in text.lower():
        return "connection refused"
    if "Error -2 " in text or "Error -3 " in text or "not known" in text:
        return "unknown host"
    return text.rstrip(".") or type(error).__name__


def _refusal_hint(reply: str) -> str:
    if is_acl_refusal(reply):
        return ACL_HINT
    if "DB index" in reply:
        return "Use a database the server has (redis://HOST:PORT/0)"
    return REFUSAL_HINTS.get(reply_code(reply), REFUSAL_HINT)


def unreachable(url: str, error: BaseException) -> CliError:
    """The one-line error of a store that could not serve a command: unreachable, refusing the
    credentials, or refusing the command (its reply names why: ACL, DB index, read-only...)."""
    text = str(error).lower()
    if isinstance(error, AuthenticationError) or any(hint in text for hint in AUTH_HINTS):
        return CliError(
            f"Redis at {redact(url)} refused the connection's credentials "
            f"({str(error).rstrip('.')}). Put the right user and password in --redis-url "
            "(redis://USER:PASSWORD@HOST:PORT/0)"
        )
    if isinstance(error, BudgetUnavailable):
        reply = error.server_error
    else:
        reply = server_reply(error) if isinstance(error, RedisError) else None
    if reply is not None:
        reason = reply.split(" script: ", 1)[0].rstrip(".")  # without Redis's script suffix
        return CliError(
            f"Redis at {redact(url)} refused the command ({reason}). {_refusal_hint(reply)}"
        )
    return CliError(
        f"cannot reach Redis at {redact(url)} ({_reason(error)}). "
        "Start it or pass --redis-url (or set REDIS_URL)"
    )


class StoreFailures(logging.Handler):
    """Keeps the last store failure budgetkit logged (logger ``budgetkit``), so that a check
    answered by the failure policy names its cause; prints nothing."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last: BudgetUnavailable | None = None

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        for arg in args:
            if isinstance(arg, BudgetUnavailable):
                self.last = arg


def _hold_error(error: HoldNotFound | HoldExpired, a: argparse.Namespace) -> str:
    hold = getattr(a, "hold", "")
    if isinstance(error, HoldNotFound):
        return (
            f"hold {hold} is unknown or already committed or released. "
            "Check --hold and --org; record the usage with `budgetkit debit` if it is gone"
        )
    if getattr(a, "command", None) == "release":
        return f"hold {hold} already expired. Nothing is held any more; nothing to release"
    return f"hold {hold} expired (it outlived its --ttl). Record the usage with `budgetkit debit`"


def _invalid_input(error: Exception, a: argparse.Namespace) -> str:
    command = getattr(a, "path", None) or getattr(a, "command", "")
    return f"invalid input: {error}. Fix the option (see `budgetkit {command} --help`)"


def explain(error: BaseException, a: argparse.Namespace) -> str:
    """One line for a failure: what happened, then what to do."""
    org = getattr(a, "org", None)
    if isinstance(error, CliError):
        return str(error)
    if isinstance(error, BudgetNotFound):
        return (
            f"budget {getattr(a, 'id', None)} not found in organization {org}. Check --id and "
            f"--org (`budgetkit budgets list --org {org}` lists them)"
        )
    if isinstance(error, HoldNotFound | HoldExpired):
        return _hold_error(error, a)
    if isinstance(error, IdempotencyConflict):
        return f"{error}. Use a new --idempotency-key for a different request"
    if isinstance(error, OutcomeUnknown):
        return (
            f"the connection failed after the request was sent: it may have been applied "
            f"({error}). Retry with the same --idempotency-key"
        )
    if isinstance(error, UnpricedModel):
        return f"{error}. Pass the usd amount explicitly"
    if isinstance(error, CorruptState):
        return f"a stored record is corrupt ({error}). Nothing was written; inspect the key"
    if isinstance(error, InvalidInput | ValueError):
        return _invalid_input(error, a)
    if isinstance(error, BudgetUnavailable | RedisError | RedisClusterException | OSError):
        return str(unreachable(redis_url(a), error))
    return f"{error}. This is unexpected: please report it"
