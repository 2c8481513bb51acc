"""Store errors: which error replies of Redis mean "the budget store cannot serve this call".

SPEC §4 ("unavailable store") and §10 ("Store errors are classified"). Every error reply of a
budgetkit call is one of three kinds, told apart here and nowhere else:

- **budgetkit's own**: ``BK_<CODE> message`` raised by a script → its typed error
  (``errors.SCRIPT_ERROR_CODES``);
- **a bug in budgetkit**: a Lua runtime error in one of its functions (``user_function:12:
  attempt to compare nil with number``), a command a script misused (``Wrong number of args
  calling Redis command from script``), a key of the wrong type (WRONGTYPE) or of two slots
  (CROSSSLOT) → ``ScriptError``;
- **a refusal**, anything else: the store did not serve the call → ``BudgetUnavailable`` carrying
  the server's reply (``server_error``), ``PermissionDenied`` for an ACL refusal. Among them:
  NOPERM, WRONGPASS / NOAUTH (replies to the connection's AUTH), ``DB index is out of range``
  (the reply to its SELECT), LOADING, READONLY, OOM, MISCONF, BUSY, NOREPLICAS, MASTERDOWN,
  CLUSTERDOWN, TRYAGAIN, MOVED / ASK, an unknown command (a server too old, a renamed command).

So ``check`` fails closed (or open, flagged) on every refusal instead of raising, and a mutation
raises ``BudgetUnavailable`` naming the server's reason. A refusal applied nothing: Redis refuses
a command before running it, and refuses a script at its first write (OOM, READONLY, MISCONF,
NOREPLICAS deny only the first write of a script; budgetkit's scripts read and validate before
they write). One exception: an ACL narrower than ``deploy/acl/budgetkit.acl`` that lacks a
command a script uses late (e.g. XADD) refuses it after the script's first writes, which Redis
does not roll back.

redis-py strips the code of the replies it knows (``NOPERM``, ``ERR``, ...) into
``status_code``; the others (MISCONF, BUSY, NOREPLICAS, WRONGTYPE) keep it as their first word.
Redis 6 wraps the error of a command a script ran in its own (``Error running script ...:
-READONLY You can't write ...``): the inner code decides.
"""

from __future__ import annotations

import re

from redis import exceptions as redis_errors

from budgetkit._core.errors import (
    SCRIPT_ERROR_CODES,
    BudgetkitError,
    BudgetUnavailable,
    PermissionDenied,
    ScriptError,
)

#: Codes of replies that mean the script or its keys are wrong (a bug), not the store.
BUG_CODES = frozenset({"WRONGTYPE", "CROSSSLOT"})
#: Codes of replies refusing the connection's credentials.
AUTH_CODES = frozenset({"WRONGPASS", "NOAUTH"})
#: Codes of refusals a failover or a resharding ends (retried on a Cluster or Sentinel).
PASSING_CODES = frozenset(
    {"TRYAGAIN", "CLUSTERDOWN", "READONLY", "LOADING", "MASTERDOWN", "NOREPLICAS", "MOVED", "ASK"}
)
#: The generic code; redis-py strips it (``status_code == "ERR"``).
GENERIC_CODE = "ERR"
_CODE = re.compile(r"[A-Z][A-Z0-9_]+")
#: Redis 6 (and fakeredis) wrap the reply of a command run by a script: ``...: -OOM command...``.
_INNER_CODE = re.compile(r"(?:^|\s)-([A-Z][A-Z0-9_]+) ")
#: The marks of an error raised while a script ran (Redis 7 suffixes ``script: <sha>, on
#: @user_script:12.``, or ``script: <function>, on @user_function:12.`` for a function; Redis 6
#: and fakeredis say ``Error running script`` or ``... from script``).
_FROM_SCRIPT = re.compile(
    r"user_script|user_function|(?:running|compiling) script|\bfrom (?:[\w-]+ )?scripts?\b",
    re.IGNORECASE,
)
#: An ACL refusal inside a script: Redis 7.0 (``The user executing the script can't run this
#: command or subcommand``, ``... can't access at least one of the keys``), Redis 7.2+ (``ACL
#: failure in script: ...``). A refusal of the call itself has the code NOPERM.
_ACL_IN_SCRIPT = re.compile(r"executing the script can't|ACL failure in script", re.IGNORECASE)
#: ``BK_<CODE> message``: the code, then the message up to the end of its line or Redis's suffix.
_BUDGETKIT_REPLY = re.compile(r"(?:^|[\s:])BK_([A-Z_]+) ?([^\n]*)")


def budgetkit_error(error: redis_errors.ResponseError) -> BudgetkitError | None:
    """The typed error of a ``BK_<CODE> message`` reply; None for any other reply."""
    match = _BUDGETKIT_REPLY.search(str(error))
    if match is None:
        return None
    error_type = SCRIPT_ERROR_CODES.get(match.group(1))
    if error_type is None:
        return None
    return error_type(match.group(2).split(" script:", 1)[0].strip())


def server_reply(error: redis_errors.RedisError) -> str | None:
    """The error reply as the server sent it (code and text); None for an error raised by the
    client itself (a refused connection, a timeout, a connection closed)."""
    code = getattr(error, "status_code", None)
    text = str(error)
    if code is None:
        return text if isinstance(error, redis_errors.ResponseError) else None
    return text if text.startswith(f"{code} ") else f"{code} {text}"


def reply_code(reply: str) -> str:
    """The code of an error reply (``NOPERM``, ``ERR``, ...); the inner one of a wrapped reply."""
    inner = _INNER_CODE.search(reply) if _FROM_SCRIPT.search(reply) else None
    if inner is not None:
        return inner.group(1)
    word = reply.split(" ", 1)[0]
    return word if _CODE.fullmatch(word) else GENERIC_CODE


def is_acl_refusal(reply: str) -> bool:
    return reply_code(reply) == "NOPERM" or _ACL_IN_SCRIPT.search(reply) is not None


def is_bug(reply: str) -> bool:
    """A reply that says budgetkit's script or keys are wrong, not the store."""
    code = reply_code(reply)
    if code in BUG_CODES:
        return True
    return code == GENERIC_CODE and _FROM_SCRIPT.search(reply) is not None


def refusal(operation: str, error: redis_errors.RedisError) -> BudgetUnavailable | None:
    """The BudgetUnavailable (PermissionDenied for an ACL) of a reply refusing ``operation``;
    None for budgetkit's own replies, bugs, and errors that carry no reply from the server."""
    reply = server_reply(error)
    if reply is None or _BUDGETKIT_REPLY.search(reply) is not None:
        return None
    if is_acl_refusal(reply):
        return PermissionDenied(
            f"{operation} refused by the Redis ACL: {reply}", server_error=reply
        )
    if is_bug(reply):
        return None
    credentials = isinstance(error, redis_errors.AuthenticationError)
    what = "the credentials" if credentials or reply_code(reply) in AUTH_CODES else "it"
    return BudgetUnavailable(
        f"{operation} not run, Redis refused {what}: {reply}", server_error=reply
    )


def translate_reply(operation: str, error: redis_errors.ResponseError) -> BudgetkitError:
    """The budgetkit error of an error reply to ``operation``: its typed error (``BK_``), a
    refusal (BudgetUnavailable, PermissionDenied) or a bug (ScriptError)."""
    own = budgetkit_error(error)
    if own is not None:
        return own
    refused = refusal(operation, error)
    if refused is not None:
        return refused
    return ScriptError(f"{operation}: {server_reply(error) or error}")


def passing(error: BudgetUnavailable) -> bool:
    """Whether a call refused with ``error`` may succeed when retried after a failover: the
    store could not be reached, or its refusal is one a topology change ends (PASSING_CODES);
    not an ACL refusal, bad credentials, a bad database index, OOM."""
    if isinstance(error, PermissionDenied):
        return False
    return error.server_error is None or reply_code(error.server_error) in PASSING_CODES
