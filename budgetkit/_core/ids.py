"""Identifiers: the typed ids budgetkit creates, and validation of the opaque ids callers supply.

Ids budgetkit creates are ``<prefix>_<32 lowercase hex>`` of a UUIDv7, so they sort by creation
time: budget ``bdgt``, ledger entry ``ledger``, reservation ``hold``.

Ids callers supply (organization, subject, session, idempotency keys) are opaque strings, checked
only so that they cannot break a Redis key: 1-256 UTF-8 bytes, printable, no whitespace or control
characters, no ``{`` or ``}`` (they delimit Redis Cluster hash tags).
"""

from __future__ import annotations

import os
import re
import threading
import time
import unicodedata

from budgetkit._core.errors import InvalidIdentifier, InvalidInput, short_repr

__all__ = [
    "BUDGET_ID_PREFIX",
    "CURRENCY_CHARS_MAX",
    "HOLD_ID_PREFIX",
    "IDENTIFIER_BYTES_MAX",
    "LEDGER_ID_BASE_LEN",
    "LEDGER_ID_PREFIX",
    "new_budget_id",
    "new_hold_id",
    "new_ledger_id",
    "new_ledger_id_base",
    "normalize_currency",
    "parse_budget_id",
    "parse_hold_id",
    "parse_ledger_id",
    "uuid7_hex",
    "validate_identifier",
]

BUDGET_ID_PREFIX = "bdgt"
LEDGER_ID_PREFIX = "ledger"
HOLD_ID_PREFIX = "hold"

#: Longest caller-supplied identifier, in UTF-8 bytes.
IDENTIFIER_BYTES_MAX = 256
#: A call's ledger id base: "ledger_" + the first 30 hex digits of a new ledger id; the scripts
#: append 2 hex digits per entry the call writes (lua/_lib.lua LEDGER_ID_BASE_LEN).
LEDGER_ID_BASE_LEN = 37

#: Longest currency code, in characters (ASCII, so also bytes).
CURRENCY_CHARS_MAX = 32

#: Largest unix timestamp a UUIDv7 can carry, in milliseconds (48 bits).
_UUID7_MS_MAX = 2**48 - 1

#: Largest value of the 12-bit ``rand_a`` field, used as a per-millisecond counter.
_COUNTER_MAX = 0xFFF

#: A fresh counter starts below this, leaving at least 2048 increments before it overflows.
_COUNTER_SEED_BOUND = 0x800

#: Random 64-bit words read from the OS's CSPRNG per refill of the pool (one read of 512 bytes).
_RANDOM_WORDS_PER_READ = 64
_RAND_B_MASK = (1 << 62) - 1

#: A caller-supplied identifier that is certainly valid: 1-256 printable ASCII characters other
#: than space, ``{`` and ``}`` (validate_identifier's rules, checked by one regex in C).
_PLAIN_IDENTIFIER_RE = re.compile(f"[!-z|~]{{1,{IDENTIFIER_BYTES_MAX}}}")

_HEX32 = "[0-9a-f]{32}"
_CURRENCY_RE = re.compile(f"[a-z0-9_]{{1,{CURRENCY_CHARS_MAX}}}")
_TYPED_ID_RES = {
    prefix: re.compile(f"{prefix}_{_HEX32}")
    for prefix in (BUDGET_ID_PREFIX, LEDGER_ID_PREFIX, HOLD_ID_PREFIX)
}


class _Uuid7State:
    """The last (timestamp, counter) handed out, so ids of one process sort in creation order."""

    def __init__(self) -> None:
        self.last_ms = -1
        self.last_counter = 0


_LOCK = threading.Lock()

#: Random words not handed out yet (os.urandom, read in batches: one syscall per 64 ids).
_RANDOM_WORDS: list[int] = []


def _random_word() -> int:
    """A 64-bit random integer from the OS's CSPRNG (as ``secrets``), read in batches.

    Why: one ``os.urandom`` call per id costs more than the rest of the id. Call with ``_LOCK``
    held. A forked child never reuses its parent's words (the pool is emptied in the child).
    """
    if not _RANDOM_WORDS:
        data = os.urandom(8 * _RANDOM_WORDS_PER_READ)
        _RANDOM_WORDS.extend(memoryview(data).cast("Q").tolist())
    return _RANDOM_WORDS.pop()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_RANDOM_WORDS.clear)

#: State of ids stamped by the system clock, and (apart, so that an explicit far-future or past
#: ``now_ms`` never drags the clock's ids along) of ids stamped with an explicit ``now_ms``.
_CLOCK_STATE = _Uuid7State()
_EXPLICIT_STATE = _Uuid7State()


def _show(value: object) -> str:
    """A short repr of a caller's value for an error message (see errors.short_repr)."""
    return short_repr(value)


def _next_ms_and_counter(now_ms: int, *, from_clock: bool) -> tuple[int, int, int]:
    """Pick the timestamp (ms), 12-bit counter and 62 random bits of the next UUIDv7.

    Why: within one millisecond the counter increments, so ids of one process are strictly
    increasing. With the system clock (``from_clock``) a clock that steps back reuses the last
    timestamp, and a counter overflow borrows the next millisecond (RFC 9562 §6.2, method 1).
    An explicit ``now_ms`` is always honoured: it only shares the counter when it repeats.
    """
    state = _CLOCK_STATE if from_clock else _EXPLICIT_STATE
    with _LOCK:
        ms = max(now_ms, state.last_ms) if from_clock else now_ms
        if ms == state.last_ms and state.last_counter < _COUNTER_MAX:
            counter = state.last_counter + 1
        else:
            if ms == state.last_ms and from_clock and ms < _UUID7_MS_MAX:
                ms += 1
            counter = _random_word() % _COUNTER_SEED_BOUND  # a power of 2: uniform
        state.last_ms = ms
        state.last_counter = counter
        rand_b = _random_word() & _RAND_B_MASK
    return ms, counter, rand_b


def uuid7_hex(now_ms: int | None = None) -> str:
    """Return a new UUIDv7 as 32 lowercase hex characters (no dashes).

    Why: UUIDv7 ids sort by creation time, which keeps listings and Redis keys in time order.
    Layout: 48-bit unix time in ms, version 7, 12-bit counter (``rand_a``), variant ``10``, 62
    random bits from the OS's CSPRNG (``os.urandom``, as ``secrets`` reads it). ``now_ms``: unix
    time in ms, ``0 <= now_ms < 2**48``; None uses the system clock. Raises InvalidInput for an
    out-of-range ``now_ms``.
    """
    return f"{_uuid7_int(now_ms):032x}"


def _uuid7_int(now_ms: int | None = None) -> int:
    """A new UUIDv7 as a 128-bit integer (see uuid7_hex)."""
    from_clock = now_ms is None
    if now_ms is None:
        now_ms = time.time_ns() // 1_000_000
    elif isinstance(now_ms, bool) or not isinstance(now_ms, int):
        raise InvalidInput(f"now_ms must be an int, got {type(now_ms).__name__}")
    if not 0 <= now_ms <= _UUID7_MS_MAX:
        raise InvalidInput(f"now_ms must be in [0, 2**48), got {now_ms}")
    ms, counter, rand_b = _next_ms_and_counter(now_ms, from_clock=from_clock)
    return (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand_b


def new_budget_id() -> str:
    """Return a new budget id, ``bdgt_<32 hex>`` (time-ordered UUIDv7)."""
    return f"{BUDGET_ID_PREFIX}_{uuid7_hex()}"


def new_ledger_id() -> str:
    """Return a new ledger entry id, ``ledger_<32 hex>`` (time-ordered UUIDv7)."""
    return f"{LEDGER_ID_PREFIX}_{uuid7_hex()}"


def new_ledger_id_base() -> str:
    """Return a call's ledger id base: ``ledger_`` + the first 30 hex digits of a new ledger id
    (LEDGER_ID_BASE_LEN characters; the scripts append 2 hex digits per entry). Its 30 hex
    digits are also the call's request id (budgetkit._core.redelivery)."""
    return f"{LEDGER_ID_PREFIX}_{_uuid7_int() >> 8:030x}"


def new_hold_id() -> str:
    """Return a new reservation id, ``hold_<32 hex>`` (time-ordered UUIDv7)."""
    return f"{HOLD_ID_PREFIX}_{uuid7_hex()}"


def _parse_typed_id(value: object, prefix: str, kind: str) -> str:
    """Return ``value`` if it is ``<prefix>_<32 lowercase hex>``, else raise InvalidIdentifier."""
    if not isinstance(value, str):
        raise InvalidIdentifier(f"{kind} id must be a str, got {type(value).__name__}")
    if _TYPED_ID_RES[prefix].fullmatch(value) is None:
        raise InvalidIdentifier(
            f"invalid {kind} id {_show(value)}: expected '{prefix}_' followed by "
            "32 lowercase hex characters"
        )
    return value


def parse_budget_id(value: object) -> str:
    """Return ``value`` if it is a budget id (``bdgt_<32 lowercase hex>``); else InvalidIdentifier.

    Why: a malformed id is a caller error, reported clearly instead of as "not found".
    """
    return _parse_typed_id(value, BUDGET_ID_PREFIX, "budget")


def parse_ledger_id(value: object) -> str:
    """Return ``value`` if it is a ledger entry id (``ledger_<32 lowercase hex>``), else raise.

    Raises InvalidIdentifier.

    Why: a malformed id is a caller error, reported clearly instead of as "not found".
    """
    return _parse_typed_id(value, LEDGER_ID_PREFIX, "ledger entry")


def parse_hold_id(value: object) -> str:
    """Return ``value`` if it is a hold id (``hold_<32 lowercase hex>``); else InvalidIdentifier.

    Why: a malformed id is a caller error, reported clearly instead of as "not found".
    """
    return _parse_typed_id(value, HOLD_ID_PREFIX, "hold")


def _forbidden_char_rule(char: str) -> str | None:
    """Return the rule a character of an identifier breaks, or None if it is allowed."""
    if char.isspace():
        return "must not contain whitespace"
    if unicodedata.category(char) == "Cc":
        return "must not contain control characters"
    if char in "{}":
        return "must not contain '{' or '}' (they delimit Redis hash tags)"
    if not char.isprintable():
        return "must contain only printable characters"
    return None


def _utf8_length(value: str, *, field: str) -> int:
    """Return the UTF-8 length of ``value`` in bytes; a lone surrogate is InvalidIdentifier."""
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidIdentifier(f"{field} must be valid UTF-8 (no lone surrogates)") from None


def validate_identifier(value: object, *, field: str) -> str:
    """Return a caller-supplied opaque identifier unchanged, or raise InvalidIdentifier.

    Why: organization, subject, session ids and idempotency keys become parts of Redis keys; an
    id with whitespace, control characters or braces could break a hash tag or alias another key.
    Rules: a str of 1-256 UTF-8 bytes; every character printable; no whitespace; no ``{`` ``}``.
    ``field`` names the argument in the error message.
    """
    if type(value) is str and _PLAIN_IDENTIFIER_RE.fullmatch(value) is not None:
        return value  # the common case, decided in C; anything else takes the checks below
    if not isinstance(value, str):
        raise InvalidIdentifier(f"{field} must be a str, got {type(value).__name__}")
    if not value:
        raise InvalidIdentifier(f"{field} must not be empty")
    length_bytes = _utf8_length(value, field=field)
    if length_bytes > IDENTIFIER_BYTES_MAX:
        raise InvalidIdentifier(
            f"{field} is too long: {length_bytes} UTF-8 bytes (at most {IDENTIFIER_BYTES_MAX})"
        )
    for index, char in enumerate(value):
        rule = _forbidden_char_rule(char)
        if rule is not None:
            raise InvalidIdentifier(
                f"{field} {rule}: {_show(value)} has {char!r} at position {index}"
            )
    return value


def normalize_currency(value: object) -> str:
    """Return a currency code lower-cased, or raise InvalidIdentifier.

    Why: currencies are case-insensitive (``USD`` and ``usd`` are one currency) and name keys,
    so they are stored in one canonical form. Rule: 1-32 characters of ``a-z 0-9 _`` after
    lower-casing; only ASCII letters are lower-cased (``'\\u212a'``, the Kelvin sign, is no ``k``).
    """
    if not isinstance(value, str):
        raise InvalidIdentifier(f"currency must be a str, got {type(value).__name__}")
    lowered = value.lower() if value.isascii() else value
    if _CURRENCY_RE.fullmatch(lowered) is None:
        raise InvalidIdentifier(
            f"invalid currency {_show(value)}: expected 1-{CURRENCY_CHARS_MAX} characters "
            "of a-z, 0-9 or '_' (case-insensitive)"
        )
    return lowered
