"""Builds a redis-py asyncio client from a budgetkit URL.

Schemes (the cluster and sentinel ones follow the ``limits`` library's convention):

- ``redis://``, ``rediss://``, ``unix://``: one server (redis-py's own URL syntax);
- ``redis+cluster://[[user]:password@]h1:p1,h2:p2`` (``rediss+cluster://`` for TLS): a Redis
  Cluster, the hosts are startup nodes (one reachable node is enough to discover the others);
- ``redis+sentinel://[[user]:password@]h1:p1,h2:p2/service_name`` (``rediss+sentinel://``):
  the primary of ``service_name`` as the sentinels report it; the password is used for the
  sentinels and for the data nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.cluster import PRIMARY
from redis.maint_notifications import MaintNotificationsConfig

from budgetkit._core import packing
from budgetkit._core.errors import InvalidInput

SOCKET_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 2.0
#: Sentinels answer one small command each: a silent one is skipped quickly.
SENTINEL_TIMEOUT_S = 0.5
TIMEOUT_S_MAX = 600.0
SINGLE_NODE_SCHEMES = ("redis://", "rediss://", "unix://")
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
SCHEMES = SINGLE_NODE_SCHEMES + CLUSTER_SCHEMES + SENTINEL_SCHEMES

#: Any client budgetkit runs on: one server (also a Sentinel-managed primary) or a Cluster.
RedisClient: TypeAlias = Redis | RedisCluster


@dataclass(frozen=True, slots=True)
class ConnectionOptions:
    """How ``BudgetKit.from_url`` connects: ``socket_timeout_s`` bounds how long a call waits
    for a silent server, ``connect_timeout_s`` a connection attempt (both > 0, at most 600 s);
    ``max_connections`` caps the pool (None: redis-py's default)."""

    socket_timeout_s: float = SOCKET_TIMEOUT_S
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    max_connections: int | None = None

    def __post_init__(self) -> None:
        for name in ("socket_timeout_s", "connect_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidInput(f"{name} must be a number of seconds")
            if not 0 < value <= TIMEOUT_S_MAX:
                raise InvalidInput(f"{name} must be in (0, {TIMEOUT_S_MAX}]")
        count = self.max_connections
        if count is not None and (
            isinstance(count, bool) or not isinstance(count, int) or count < 1
        ):
            raise InvalidInput("max_connections must be a positive integer or None")


def _no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


def _no_maintenance() -> MaintNotificationsConfig:
    """Maintenance push notifications off (they need RESP3, which budgetkit does not use).
    redis-py 8.1 leaves them at "auto", and its pool then skips the check that a pooled
    connection is still open before handing it out: after a restart or a failover the first
    call on each stale connection failed with "Connection closed by server" after sending
    (OutcomeUnknown) instead of reconnecting (or reporting BudgetUnavailable: nothing sent)."""
    return MaintNotificationsConfig(enabled=False)


def client_from_url(
    url: str,
    *,
    socket_timeout_s: float = SOCKET_TIMEOUT_S,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    max_connections: int | None = None,
) -> Any:
    """A client with bounded timeouts (a server that stops answering surfaces after
    ``socket_timeout_s``). redis-py's automatic retry of a command after a dropped connection
    is switched off (for a Cluster too): budgetkit resends a call whose reply was lost itself,
    a bounded number of times, and its request record makes the resend apply nothing twice
    (budgetkit._core.redelivery); with no retries of redis-py's, the redelivery window is short.
    Following a failover (a redirect, a new primary) is budgetkit's job: see
    ``budgetkit._core.runtime.ScriptRuntime`` — it retries only what provably did not run.

    Returns a ``redis.asyncio.Redis`` (single server, Sentinel-managed primary) or a
    ``redis.asyncio.cluster.RedisCluster`` (typed ``Any`` so both fit the callers' types), whose
    connections pack budgetkit's own commands with hiredis (budgetkit._core.packing).
    """
    if not isinstance(url, str) or not url.startswith(SCHEMES):
        raise InvalidInput(f"unsupported Redis URL scheme (use {', '.join(SCHEMES)})")
    timeouts: dict[str, Any] = {
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": connect_timeout_s,
    }
    if url.startswith(CLUSTER_SCHEMES):
        return packing.install(cluster_from_url(url, max_connections=max_connections, **timeouts))
    if url.startswith(SENTINEL_SCHEMES):
        return packing.install(sentinel_from_url(url, max_connections=max_connections, **timeouts))
    return packing.install(
        Redis.from_url(
            url,
            retry=_no_retry(),
            max_connections=max_connections,
            maint_notifications_config=_no_maintenance(),
            **timeouts,
        )
    )


def _hosts_and_auth(url: str) -> tuple[list[tuple[str, int]], dict[str, Any], str, bool]:
    """(host, port) pairs, auth keywords, path, tls of a multi-host URL."""
    scheme, rest = url.split("://", 1)
    if "?" in rest or "#" in rest:
        raise InvalidInput("query strings and fragments are not supported in cluster/sentinel URLs")
    netloc, _, path = rest.partition("/")
    auth: dict[str, Any] = {}
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, sep, password = userinfo.partition(":")
        if sep:
            if user:
                auth["username"] = unquote(user)
            auth["password"] = unquote(password)
        elif user:
            auth["password"] = unquote(user)  # redis://secret@host: a bare password
    hosts: list[tuple[str, int]] = []
    for item in netloc.split(","):
        if not item:
            continue
        parsed = urlsplit(f"//{item}")
        try:
            port = parsed.port
        except ValueError:
            port = None
        if not parsed.hostname or port is None:
            raise InvalidInput(f"expected host:port in the Redis URL, got {item!r}")
        hosts.append((parsed.hostname, port))
    if not hosts:
        raise InvalidInput("the Redis URL names no host:port")
    return hosts, auth, path, scheme.startswith("rediss")


class Cluster(RedisCluster):
    """redis-py's RedisCluster with one fix: an ASK redirect to a node this client does not
    know — a node added after the client started, which owns no slot until the migration to it
    ends — fails in redis-py 8.1 with ``AttributeError: 'NoneType' object has no attribute
    'execute_command'`` (redis-py issue #4015). Here the redirect target is added to the
    client's nodes (as a primary: the next topology refresh corrects it) and the ASK is
    followed."""

    def get_node(
        self, host: str | None = None, port: int | None = None, node_name: str | None = None
    ) -> ClusterNode | None:
        node = super().get_node(host, port, node_name)
        if node is not None or host or port or not node_name or ":" not in node_name:
            return node
        node_host, _, node_port = node_name.rpartition(":")
        if not node_port.isdigit():
            return None
        node = ClusterNode(node_host, int(node_port), PRIMARY, **self.connection_kwargs)
        self.nodes_manager.nodes_cache[node.name] = node
        return node


def cluster_from_url(url: str, *, max_connections: int | None = None, **kwargs: Any) -> Any:
    """``redis+cluster://h1:p1,h2:p2``: a RedisCluster (``Cluster``) with redis-py's retry off.

    MOVED and ASK redirects and TRYAGAIN are still followed by redis-py (they mean the command
    did not run); connection errors and CLUSTERDOWN surface to budgetkit's runtime, which
    retries only what provably did not run.
    """
    hosts, auth, path, tls = _hosts_and_auth(url)
    if path.strip("/") not in ("", "0"):
        raise InvalidInput("a Redis Cluster has only database 0")
    return Cluster(
        startup_nodes=[ClusterNode(host, port) for host, port in hosts],
        retry=_no_retry(),
        max_connections=max_connections or 100,
        maint_notifications_config=_no_maintenance(),
        ssl=tls,
        **auth,
        **kwargs,
    )


class OwnedSentinelPool(SentinelConnectionPool):
    """The primary's pool, which also owns the Sentinel it asks: closing the client built by
    ``sentinel_from_url`` closes the sentinel connections too."""

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            await self.sentinel_manager.aclose()


def sentinel_from_url(url: str, *, max_connections: int | None = None, **kwargs: Any) -> Redis:
    """``redis+sentinel://h1:p1,h2:p2/service_name``: the service's primary, discovered through
    the sentinels on every new connection (and refreshed by budgetkit's runtime)."""
    hosts, auth, path, tls = _hosts_and_auth(url)
    service = unquote(path.strip("/"))
    if not service or "/" in service:
        raise InvalidInput("a redis+sentinel URL ends with /service_name")
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": SENTINEL_TIMEOUT_S,
        "socket_connect_timeout": SENTINEL_TIMEOUT_S,
        "retry": _no_retry(),
        **auth,
    }
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        hosts, sentinel_kwargs=sentinel_kwargs, ssl=tls, **auth, **kwargs
    )
    pool_kwargs: dict[str, Any] = {
        "retry": _no_retry(),
        "maint_notifications_config": _no_maintenance(),
    }
    if max_connections is not None:
        pool_kwargs["max_connections"] = max_connections
    master: Redis = sentinel.master_for(
        service, connection_pool_class=OwnedSentinelPool, **pool_kwargs
    )
    return master
