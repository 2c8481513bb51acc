"""Exactly once, whoever retries: per-call request records and the redelivery window.

Every mutating script call carries a *request record* key (SPEC §10). With an idempotency key
it is ``P:{org}:idem:<operation>:<key>`` holding the whole reply (kept for the idempotency TTL;
a create's for good); without one, ``P:{org}:rq:<request id>``, where the request id is the
call's random ledger id base, with the fingerprint ``=`` and a TTL of the *redelivery window*:
a small receipt (the stream ids of the entries and events the call wrote, its tags and budget
ids; lua/_lib.lua). The same command sent again — by redis-py's own retry after a lost reply, by
budgetkit's resend (``RESENDS_MAX``), by a pipeline sent again — finds the record and returns the
first reply (rebuilt from the receipt: its entries and events as written, its budgets as they
are now) without applying anything. So a mutation applies exactly once and returns, or raises
``OutcomeUnknown`` having applied at most once.

The window must outlast every resend of the same command. It is derived from the client's own
retry policy: SENDS_MAX x (retries + 1) x (socket timeout + connect timeout + backoff cap),
plus a margin, clamped to [WINDOW_S_MIN, WINDOW_S_MAX]. A client whose retries could outlast
WINDOW_S_MAX (no socket timeout, huge retry counts) is warned about at construction.

Cost (``python3 scripts/measure_exactly_once.py``; docs/guarantees.md): one GET of an absent key
before and one SET ... PX after every mutation, about 5 us of Redis CPU per 3-budget debit
(+10 %); memory = one receipt (about 330 bytes) per mutation for the window.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("budgetkit")

#: The fingerprint of a per-call request record (never a SHA-256 hex digest).
AUTO_FINGERPRINT = "="
#: The record TTL that keeps a record for good (2^53 - 1 ms; lua/_lib.lua NEVER_MS).
KEEP_FOREVER_MS = 2**53 - 1
#: How many times budgetkit sends a call again after its reply was lost.
RESENDS_MAX = 2
#: How many times budgetkit may send one call in all: a batched call whose pipeline lost its
#: replies is sent alone, and then resent RESENDS_MAX times.
SENDS_MAX = RESENDS_MAX + 2
WINDOW_S_MIN = 10.0
WINDOW_S_MAX = 900.0
WINDOW_MARGIN_S = 5.0
#: Assumed per-attempt wait when a client's timeouts or backoff cannot be read.
UNKNOWN_WAIT_S = 10.0


def _connection_settings(client: Any) -> dict[str, Any]:
    """The connection keywords of a redis.asyncio client (single, Sentinel or Cluster)."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if isinstance(kwargs, dict):
        return kwargs
    nodes = getattr(client, "nodes_manager", None)  # RedisCluster
    kwargs = getattr(nodes, "connection_kwargs", None)
    return kwargs if isinstance(kwargs, dict) else {}


def _backoff_cap_s(retry: Any) -> float:
    backoff = getattr(retry, "_backoff", None)
    for name in ("_cap", "_backoff"):
        value = getattr(backoff, name, None)
        if isinstance(value, int | float):
            return float(value)
    return 0.0 if type(backoff).__name__ == "NoBackoff" else UNKNOWN_WAIT_S


def retry_horizon_s(client: Any) -> float | None:
    """How long after its first send a command of ``client`` may still be sent again
    (redis-py's retries plus budgetkit's resends); None when unbounded (no socket timeout)."""
    settings = _connection_settings(client)
    retry = getattr(client, "retry", None) or settings.get("retry")
    retries = retry.get_retries() if retry is not None and hasattr(retry, "get_retries") else 0
    read_s = settings.get("socket_timeout", UNKNOWN_WAIT_S)
    if read_s is None:
        return None
    connect_s = settings.get("socket_connect_timeout") or read_s
    attempt_s = float(read_s) + float(connect_s) + _backoff_cap_s(retry)
    return SENDS_MAX * (retries + 1) * attempt_s


def request_window_ms(client: Any) -> int:
    """The TTL of per-call request records for ``client`` (see the module docstring)."""
    horizon = retry_horizon_s(client)
    if horizon is None or horizon + WINDOW_MARGIN_S > WINDOW_S_MAX:
        log.warning(
            "budgetkit: this Redis client may resend a command for %s; a resend after %.0f s "
            "could apply a mutation twice. Set a socket_timeout and fewer retries, or use "
            "BudgetKit.from_url (no redis-py retries).",
            "ever (no socket_timeout)" if horizon is None else f"up to {horizon:.0f} s",
            WINDOW_S_MAX,
        )
        return int(WINDOW_S_MAX * 1000)
    return int(max(WINDOW_S_MIN, horizon + WINDOW_MARGIN_S) * 1000)
