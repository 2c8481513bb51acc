"""Exact fixed-point amounts: every amount is an integer number of micro-units.

Amounts cross the API as ``int | float | Decimal`` and leave it as ``float`` (the seed's f64), but
inside budgetkit and Redis they are integers of micro-units (10**-6 of a currency unit), so that
``0.1 + 0.2`` debits leave exactly ``0.3`` spent and the ledger invariant holds with zero error.

Bounds: every amount, limit and balance has a magnitude of at most ``MAX_MICROS`` (2**53 - 1
micro-units, about 9.007e9 units), so Lua's doubles represent every value exactly.

Precision out: ``from_micros`` returns the float nearest to the exact value. Below 2**33 units
(about 8.59e9) that float reads back (``to_micros``) as the same micros. Above it floats are
coarser than a micro-unit, so a float read back may differ by one micro-unit, and
``from_micros(MAX_MICROS)`` reads back as ``MAX_MICROS + 1`` (rejected). Exact values travel as
integer micros; the floats are for display and the seed's wire format.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation

from budgetkit._core.errors import InvalidAmount, short_repr

__all__ = [
    "MAX_MICROS",
    "MICROS_PER_UNIT",
    "from_micros",
    "plain_micros",
    "round_micros",
    "to_micros",
]

#: Micro-units per currency unit (the fixed-point scale, 10**6).
MICROS_PER_UNIT = 1_000_000

#: Largest magnitude of any amount, limit or balance, in micro-units (2**53 - 1, exact in a double).
MAX_MICROS = 2**53 - 1

#: ``MAX_MICROS`` in currency units, exactly (the float ``MAX_MICROS / 10**6`` rounds up).
_MAX_UNITS_TEXT = "9007199254.740991"

#: Decimal places an amount given to the API may carry (log10 of ``MICROS_PER_UNIT``).
_DECIMALS_MAX = 6

#: One micro-unit as a Decimal exponent template, for quantize().
_MICRO_STEP = Decimal(1).scaleb(-_DECIMALS_MAX)

#: Largest ``Decimal.adjusted()`` (power of ten of the leading digit) a bounded value can have:
#: MAX_MICROS / 10**6 ≈ 9.007e9, so anything at or above 1e10 units is out of range.
_ADJUSTED_MAX = 9

#: Decimal context for quantize(): bounded values have at most 16 significant digits.
_CONTEXT = Context(prec=40, rounding=ROUND_HALF_UP, traps=[InvalidOperation])


def _show(value: object) -> str:
    """A short repr of a caller's value for an error message (see errors.short_repr)."""
    return short_repr(value)


#: Longest numeric string accepted as an amount (a bound on what Decimal has to parse).
_TEXT_LENGTH_MAX = 64


def _text_decimal(value: str, *, field: str) -> Decimal:
    """A numeric string (``"0.25"``, ``"1e-3"``) as a Decimal; anything else is rejected."""
    text = value.strip()
    try:
        if len(text) > _TEXT_LENGTH_MAX:
            raise InvalidOperation
        return Decimal(text)
    except InvalidOperation:
        raise InvalidAmount(f"{field} must be a number, got {_show(value)}") from None


def _as_decimal(value: object, *, field: str) -> Decimal:
    """Return ``value`` as a finite Decimal, reading a float as its shortest round-trip decimal.

    Only int, float, Decimal and numeric strings are amounts; bool is an int to Python but never
    an amount.
    """
    if isinstance(value, str):
        value = _text_decimal(value, field=field)
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise InvalidAmount(
            f"{field} must be an int, float, Decimal or numeric string, "
            f"got {type(value).__name__} {_show(value)}"
        )
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidAmount(f"{field} must be a finite number, got {_show(value)}")
        return Decimal(repr(value))
    if isinstance(value, int):
        return Decimal(value)
    if not value.is_finite():
        raise InvalidAmount(f"{field} must be a finite number, got {_show(value)}")
    return value


def _check_magnitude(value: Decimal, *, field: str) -> None:
    """Reject a value whose magnitude is certainly beyond ``MAX_MICROS``.

    Done before any arithmetic so that a value like ``Decimal("1e999999999")`` costs nothing.
    """
    if not value.is_zero() and value.adjusted() > _ADJUSTED_MAX:
        raise InvalidAmount(
            f"{field} is too large: {_show(value)} exceeds {_MAX_UNITS_TEXT} "
            f"(at most {MAX_MICROS} micro-units)"
        )


def _micros_of(value: Decimal) -> int:
    """Return the integer micros of a Decimal that is already a whole number of micro-units."""
    return int(value.scaleb(_DECIMALS_MAX, context=_CONTEXT))


def _check_bounds(micros: int, value: object, *, field: str) -> None:
    """Reject micros whose magnitude exceeds ``MAX_MICROS``."""
    if abs(micros) > MAX_MICROS:
        raise InvalidAmount(
            f"{field} is too large: {_show(value)} exceeds {_MAX_UNITS_TEXT} "
            f"(at most {MAX_MICROS} micro-units)"
        )


#: Largest power of ten the fast path scales digits by (a float's text with a larger exponent
#: is beyond MAX_MICROS anyway).
_FAST_SHIFT_MAX = 15


def plain_micros(value: object) -> int | None:
    """The micros of a common amount, or None when ``to_micros`` must decide.

    Why: nearly every amount is an int, or a float whose shortest decimal (``repr``) has at most
    6 decimals, e.g. ``0.0123`` or ``1.5e-05``; its micros are exact from its digits, with no
    Decimal arithmetic. Returns only what ``to_micros`` would return for a non-negative value in
    any mode (nothing to round, so ``strict`` agrees); anything else — negative, NaN, bool, a
    string, a Decimal, more than 6 decimals, beyond MAX_MICROS — is None.
    """
    kind = type(value)
    if kind is int:
        micros: int = value * MICROS_PER_UNIT  # type: ignore[operator]
        return micros if 0 <= micros <= MAX_MICROS else None
    if kind is not float:
        return None
    mantissa, e, exponent = repr(value).partition("e")
    whole, _, fraction = mantissa.partition(".")
    if not whole.isdigit() or not (fraction.isdigit() or not fraction):
        return None  # a sign, inf, nan: the exact path decides
    shift = _DECIMALS_MAX - len(fraction) + (int(exponent) if e else 0)
    if not 0 <= shift <= _FAST_SHIFT_MAX:
        return None  # more than 6 decimals (to round), or far too large
    micros = int(whole + fraction) * 10**shift
    return micros if micros <= MAX_MICROS else None


def to_micros(
    value: object,
    *,
    field: str,
    allow_negative: bool = False,
    allow_zero: bool = True,
    strict: bool = False,
) -> int:
    """Convert an amount given to the API into integer micro-units, or reject it (SPEC §2).

    Why: amounts are stored as integers so that sums are exact. A computed float such as
    ``1500 * 3e-6`` (0.0045000000000000005) is rounded half-up to the micro-unit (0.0045);
    ``strict`` rejects more than 6 decimals instead. NaN, ±inf, a wrong type or a value beyond
    ``MAX_MICROS`` is always rejected before anything is written.

    ``value``: int, float, Decimal or numeric string, in currency units; a float is read as its
    shortest round-trip decimal (``repr``), so ``0.1`` is exactly 100,000 micros. ``field`` names
    the argument in error messages. Returns micros in ``[-MAX_MICROS, MAX_MICROS]``
    (``[0, ...]`` unless ``allow_negative``; never 0 unless ``allow_zero``: a value that rounds
    to 0 is then rejected). Raises InvalidAmount.
    """
    micros = plain_micros(value)
    if micros is not None and (allow_zero or micros != 0):
        return micros
    exact = _as_decimal(value, field=field)
    if exact.is_signed() and not exact.is_zero() and not allow_negative:
        raise InvalidAmount(f"{field} must not be negative, got {_show(value)}")
    _check_magnitude(exact, field=field)
    quantized = exact.quantize(_MICRO_STEP, context=_CONTEXT)
    if strict and quantized != exact:
        raise InvalidAmount(
            f"{field} has more than {_DECIMALS_MAX} decimal places: {_show(value)} "
            f"(amounts are exact to 1e-{_DECIMALS_MAX})"
        )
    micros = _micros_of(quantized)
    _check_bounds(micros, value, field=field)
    if micros == 0 and not allow_zero:
        rounded = "" if quantized == exact else " after rounding to the micro-unit"
        raise InvalidAmount(f"{field} must not be zero{rounded}, got {_show(value)}")
    return micros


def round_micros(value: Decimal | int | float) -> int:
    """Round an amount computed by budgetkit (a price estimate, a provider cost) to micro-units.

    Why: computed values legitimately carry more than 6 decimals; they are rounded half-up (a
    tie goes away from zero), as ``to_micros`` rounds amounts given by a caller.

    ``value`` in currency units; a float is read as its shortest round-trip decimal. Returns
    micros in ``[-MAX_MICROS, MAX_MICROS]``. Raises InvalidAmount for NaN, ±inf, a wrong type, or
    a result beyond ``MAX_MICROS``.
    """
    field = "computed amount"
    exact = _as_decimal(value, field=field)
    _check_magnitude(exact, field=field)
    micros = _micros_of(exact.quantize(_MICRO_STEP, context=_CONTEXT))
    _check_bounds(micros, value, field=field)
    return micros


def from_micros(micros: int) -> float:
    """Convert integer micro-units to a float amount in currency units (the nearest float).

    Why: the seed's types carry f64 amounts; int true division is correctly rounded, so the
    result is the float closest to the exact value.
    """
    return micros / MICROS_PER_UNIT
