"""The spend guard (SPEC §12): reserve an estimate, record usage as it happens, charge exactly
what was used on exit — also when the block raises or its task is cancelled.

    async with kit.spend(scope, {"usd": 0.05}) as s:     # reserve; denied: BudgetExceeded
        async for chunk in stream:
            await s.record(chunk_usage)                  # any number of times
    s.result                                             # the DebitResult (None: released)

On exit the recorded total is committed against the hold in one call (it may exceed the
estimate); nothing recorded releases the hold. An exception or a cancellation inside the block
still commits what was recorded, then propagates: the settlement is shielded from the
cancellation it handles and bounded by SETTLE_TIMEOUT_S. A hold that expired meanwhile is
charged with a debit instead, so usage is never dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from budgetkit._core import convert
from budgetkit._core.amounts import from_micros
from budgetkit._core.errors import (
    BudgetExceeded,
    HoldExpired,
    HoldNotFound,
    InvalidInput,
    OutcomeUnknown,
)
from budgetkit._core.metering import meter_for_charge
from budgetkit._core.results import DebitResult, Reservation
from budgetkit._core.scope import Scope

if TYPE_CHECKING:
    from budgetkit._core.client import BudgetKit, _Usage

#: How long exiting a guard may take to commit or release (shielded from cancellation).
SETTLE_TIMEOUT_S = 10.0
#: Settlements still running after their caller gave up waiting (kept referenced until done).
_SETTLING: set[asyncio.Future[Any]] = set()


class SpendGuard:
    """``async with kit.spend(scope, estimate, ...) as s`` (see the module docstring).

    ``estimate``: amounts per currency, or a usage record (an LlmUsage with the prompt's tokens
    and the call's maximum output tokens) priced by the meter. ``record(usage)`` takes the same
    kinds. ``hold`` is the reservation while the block runs; ``result`` the DebitResult after
    exit (None when nothing was recorded and the hold was released).
    """

    def __init__(
        self,
        kit: BudgetKit,
        scope: Scope,
        estimate: Mapping[str, Any] | Any,
        *,
        ttl_seconds: float,
        usage: _Usage,
        meter: Any,
        currencies: Sequence[str] | None,
    ) -> None:
        if not isinstance(scope, Scope):
            raise InvalidInput("scope must be a budgetkit.Scope")
        self._kit = kit
        self._scope = scope
        self._ttl_seconds = ttl_seconds
        self._usage = usage
        self._meter = meter
        self._currencies = currencies
        self._estimate = self._micros(estimate)[0]
        self._recorded: dict[str, int] = {}
        self._unpriced: set[str] = set()
        self.hold: Reservation | None = None
        self.result: DebitResult | None = None

    @property
    def recorded(self) -> dict[str, float]:
        """What was recorded so far, per currency, in currency units."""
        return {currency: from_micros(m) for currency, m in self._recorded.items()}

    def _micros(self, usage: Mapping[str, Any] | Any) -> tuple[dict[str, int], tuple[str, ...]]:
        """Amounts (validated like debit's) or a usage record metered like record_usage."""
        if isinstance(usage, Mapping):
            return convert.amounts_micros(usage, strict=self._kit._strict), ()
        metered = meter_for_charge(usage, meter=self._meter, currencies=self._currencies)
        return metered.micros, metered.unpriced

    async def __aenter__(self) -> SpendGuard:
        amounts = {c: from_micros(m) for c, m in self._estimate.items()}
        key = self._usage.idempotency_key
        hold = await self._kit.reserve(
            self._scope,
            amounts,
            ttl_seconds=self._ttl_seconds,
            idempotency_key=None if key is None else f"{key}:hold",
        )
        if not hold.granted:
            message = hold.check.message or "the spend's reservation was denied"
            raise BudgetExceeded(message, check=hold.check)
        self.hold = hold
        return self

    async def record(self, usage: Mapping[str, Any] | Any) -> None:
        """Adds usage: amounts per currency, or a usage record (metered like record_usage)."""
        micros, unpriced = self._micros(usage)
        for currency, amount in micros.items():
            self._recorded[currency] = self._recorded.get(currency, 0) + amount
        self._unpriced.update(unpriced)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        settlement = asyncio.ensure_future(self._settle())
        _SETTLING.add(settlement)
        settlement.add_done_callback(_SETTLING.discard)
        try:
            self.result = await asyncio.wait_for(asyncio.shield(settlement), SETTLE_TIMEOUT_S)
        except TimeoutError:
            if exc is None:
                raise OutcomeUnknown(
                    f"settling the spend took longer than {SETTLE_TIMEOUT_S} s; it goes on"
                ) from None
        return False  # the block's own exception (or cancellation) propagates

    async def _settle(self) -> DebitResult | None:
        """Commits what was recorded against the hold (a debit when it expired meanwhile);
        releases the hold when nothing was recorded."""
        hold = self.hold
        assert hold is not None and hold.id is not None, "settled before it was entered"
        charged = {c: m for c, m in self._recorded.items() if m > 0}
        if not charged and not self._unpriced:
            await self._kit.release(hold)
            return None
        kit, scope, unpriced = self._kit, self._scope, sorted(self._unpriced)
        try:
            return await kit._charge(scope, charged, self._usage, hold.id, unpriced)
        except (HoldExpired, HoldNotFound):
            return await kit._charge(scope, charged, self._usage, None, unpriced)
