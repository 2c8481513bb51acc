"""Builds a redis-py asyncio client from a budgetkit URL."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from budgetkit.errors import InvalidInput

SOCKET_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 2.0
SINGLE_NODE_SCHEMES = ("redis://", "rediss://", "unix://")


def client_from_url(
    url: str,
    *,
    socket_timeout_s: float = SOCKET_TIMEOUT_S,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    max_connections: int | None = None,
) -> Redis:
    """A client for one server, with bounded timeouts (a server that stops answering surfaces
    after ``socket_timeout_s``). Scripts are not idempotent, so redis-py's automatic retry of a
    command after a dropped connection is switched off: a lost reply surfaces as OutcomeUnknown.
    """
    if not isinstance(url, str) or not url.startswith(SINGLE_NODE_SCHEMES):
        raise InvalidInput(f"unsupported Redis URL scheme (use {', '.join(SINGLE_NODE_SCHEMES)})")
    return Redis.from_url(
        url,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=connect_timeout_s,
        retry=Retry(NoBackoff(), 0),
        max_connections=max_connections,
    )
