"""Builds a redis-py asyncio client from a budgetkit URL."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from budgetkit.errors import InvalidInput

SOCKET_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 2.0
SINGLE_NODE_SCHEMES = ("redis://", "rediss://", "unix://")


def client_from_url(url: str) -> Redis:
    """A client for one server. Scripts are not idempotent, so redis-py's automatic retry of a
    command after a dropped connection is switched off: a lost reply surfaces as OutcomeUnknown.
    """
    if not isinstance(url, str) or not url.startswith(SINGLE_NODE_SCHEMES):
        raise InvalidInput(f"unsupported Redis URL scheme (use {', '.join(SINGLE_NODE_SCHEMES)})")
    return Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
    )
