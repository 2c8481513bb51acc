#!/usr/bin/env python3
"""Start and stop a private Redis Cluster or a Sentinel group for tests, benchmarks and docs.

Importable module and CLI, standard library only (plus the ``redis-cli`` binary that ships with
``redis-server``). Every process listens on 127.0.0.1 only, on free ports (never 6379), in its
own temporary directory, and is stopped on ``stop()``, on leaving the ``with`` block, and at
interpreter exit (``scripts/redis_server.py`` kills leftovers).

Module use::

    with LocalCluster() as cluster:           # 3 primaries + 3 replicas, cluster-enabled
        cluster.url                           # "redis+cluster://127.0.0.1:p1,127.0.0.1:p2,..."
        cluster.primaries()                   # [(port, node_id, [slot ranges])]
        cluster.failover(replica_port)        # CLUSTER FAILOVER on that replica, waits for it
        cluster.migrate_slot(slot, to_port)   # the resharding protocol, key batch by key batch

    with SentinelGroup() as group:            # 1 primary + 1 replica + 3 sentinels
        group.url                             # "redis+sentinel://127.0.0.1:s1,.../budgetkit"
        group.failover()                      # SENTINEL FAILOVER, waits for the new primary

CLI use::

    python3 scripts/redis_cluster.py cluster start --dir D    # prints the redis+cluster:// url
    python3 scripts/redis_cluster.py cluster stop --dir D
    python3 scripts/redis_cluster.py sentinel start --dir D   # prints the redis+sentinel:// url
    python3 scripts/redis_cluster.py sentinel stop --dir D
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType

SCRIPTS_DIR = Path(__file__).resolve().parent
READY_TIMEOUT_S = 30.0
DEFAULT_SERVICE = "budgetkit"


def _load_redis_server() -> ModuleType:
    module = sys.modules.get("redis_server")
    if module is not None and getattr(module, "__file__", None) == str(
        SCRIPTS_DIR / "redis_server.py"
    ):
        return module
    spec = importlib.util.spec_from_file_location("redis_server", SCRIPTS_DIR / "redis_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["redis_server"] = module
    spec.loader.exec_module(module)
    return module


redis_server = _load_redis_server()
RedisServer = redis_server.RedisServer

#: A cluster node's bus listens on its port + 10,000, so node ports stay at or below this.
CLUSTER_PORT_MAX = 55_535
CLUSTER_PORT_TRIES_MAX = 200


def cluster_port() -> int:
    """A free 127.0.0.1 port for a cluster node whose bus port (port + 10,000) is free too."""
    for _ in range(CLUSTER_PORT_TRIES_MAX):
        port = redis_server.find_free_port()
        if port > CLUSTER_PORT_MAX:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


RedisServerError = redis_server.RedisServerError


def redis_cli_binary() -> str:
    found = shutil.which("redis-cli")
    if found is None:
        raise RedisServerError(
            "redis-cli not found on PATH (it ships with redis-server/redis-tools)"
        )
    return found


def cli(port: int, *args: str, timeout: float = 10.0, check: bool = True) -> str:
    """Runs one redis-cli command against 127.0.0.1:port; returns its stdout (stripped)."""
    proc = subprocess.run(
        [redis_cli_binary(), "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    out = proc.stdout.strip()
    if check and (proc.returncode != 0 or out.startswith(("ERR", "(error)"))):
        raise RedisServerError(f"redis-cli -p {port} {' '.join(args)}: {out} {proc.stderr}")
    return out


def info(port: int, section: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in cli(port, "INFO", section).splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _wait(condition: object, what: str, timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if condition():  # type: ignore[operator]
                return
        except (RedisServerError, subprocess.TimeoutExpired) as error:
            last = error
        time.sleep(0.05)
    raise RedisServerError(f"timed out after {timeout}s waiting for {what} ({last})")


# -- Redis Cluster ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterNode:
    """One line of CLUSTER NODES."""

    node_id: str
    port: int
    role: str  # "master" or "slave"
    primary_id: str  # "-" for a primary
    slots: tuple[tuple[int, int], ...]
    connected: bool


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
                connected=parts[7] == "connected" and "fail" not in flags,
            )
        )
    return nodes


class LocalCluster:
    """A private Redis Cluster: ``primaries`` primaries with ``replicas`` replicas each.

    ``node_timeout_ms`` is cluster-node-timeout (failure detection); ``extra_args`` go to every
    node (e.g. ``["--min-replicas-to-write", "1"]``).
    """

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
            raise ValueError("redis-cli --cluster create needs at least 3 primaries")
        self._given_dir = Path(dir) if dir is not None else None
        self._tmpdir: Path | None = None
        self.primaries_count = primaries
        self.replicas_count = replicas
        self.node_timeout_ms = node_timeout_ms
        self.extra_args = tuple(extra_args)
        self.servers: list[RedisServer] = []

    @property
    def dir(self) -> Path:
        d = self._given_dir or self._tmpdir
        if d is None:
            raise RedisServerError("cluster not started")
        return d

    @property
    def ports(self) -> list[int]:
        return [s.port for s in self.servers]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start(self) -> LocalCluster:
        if self._given_dir is None:
            self._tmpdir = Path(tempfile.mkdtemp(prefix="budgetkit-cluster-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            count = self.primaries_count * (1 + self.replicas_count)
            for i in range(count):
                server = RedisServer(
                    self.dir / f"node-{i}", port=cluster_port(), extra_args=self._node_args()
                )
                server.start()
                self.servers.append(server)
            cli(
                self.ports[0],
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in self.ports),
                "--cluster-replicas",
                str(self.replicas_count),
                "--cluster-yes",
                timeout=60.0,
            )
            self.wait_stable()
        except BaseException:
            self.stop()
            raise
        return self

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
        return parse_cluster_nodes(cli(port or self._live_port(), "CLUSTER", "NODES"))

    def _live_port(self) -> int:
        for server in self.servers:
            if server.running and redis_server.ping(server.port, timeout=0.3):
                return int(server.port)
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

    def wait_stable(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Every running node says cluster_state:ok, sees the same primaries and all 16384
        slots, and every replica's link to its primary is up."""

        def stable() -> bool:
            views = []
            for server in self.servers:
                if not server.running:
                    continue
                if info(server.port, "cluster").get("cluster_enabled") != "1":
                    return False
                if "cluster_state:ok" not in cli(server.port, "CLUSTER", "INFO"):
                    return False
                nodes = parse_cluster_nodes(cli(server.port, "CLUSTER", "NODES"))
                view = sorted((n.port, n.slots) for n in nodes if n.role == "master" and n.slots)
                covered = sum(high - low + 1 for _, ranges in view for low, high in ranges)
                if covered != 16384:
                    return False
                replicas = [n for n in nodes if n.role == "slave" and n.connected]
                if len(replicas) < self.primaries_count * self.replicas_count:
                    return False
                views.append(view)
                repl = info(server.port, "replication")
                if repl.get("role") == "slave" and repl.get("master_link_status") != "up":
                    return False
            return bool(views) and all(v == views[0] for v in views)

        _wait(stable, "the cluster to become stable", timeout)

    def failover(self, replica_port: int, *, mode: str = "", timeout: float = 20.0) -> None:
        """CLUSTER FAILOVER [FORCE|TAKEOVER] on a replica; waits until it is a primary that
        every node agrees on."""
        args = ["CLUSTER", "FAILOVER", *([mode] if mode else [])]
        cli(replica_port, *args)
        _wait(
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
        cli(to_port, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", source.node_id)
        cli(source.port, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", target.node_id)
        return source, target

    def move_keys(self, source_port: int, to_port: int, keys: Sequence[str]) -> None:
        """MIGRATE ``keys`` (all of one slot) from one node to another, atomically per call."""
        if keys:
            args = ["MIGRATE", "127.0.0.1", str(to_port), "", "0", "5000", "KEYS", *keys]
            cli(source_port, *args)

    def finish_migration(self, slot: int, target: ClusterNode) -> None:
        """SETSLOT NODE on the target first, then on every other primary (redis-cli's order)."""
        cli(target.port, "CLUSTER", "SETSLOT", str(slot), "NODE", target.node_id)
        for node in self.primaries():
            if node.port != target.port:
                cli(node.port, "CLUSTER", "SETSLOT", str(slot), "NODE", target.node_id)
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
            out = cli(source.port, "CLUSTER", "GETKEYSINSLOT", str(slot), str(batch))
            keys = out.split()
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
        server = RedisServer(
            self.dir / f"node-{len(self.servers)}",
            port=cluster_port(),
            extra_args=self._node_args(),
        )
        server.start()
        self.servers.append(server)
        cli(
            self.ports[0],
            "--cluster",
            "add-node",
            f"127.0.0.1:{server.port}",
            f"127.0.0.1:{self.ports[0]}",
            timeout=60.0,
        )

        def known_everywhere() -> bool:
            for other in self.servers:
                nodes = parse_cluster_nodes(cli(other.port, "CLUSTER", "NODES"))
                if not any(n.port == server.port and n.connected for n in nodes):
                    return False
            return True

        _wait(known_everywhere, f"every node to know 127.0.0.1:{server.port}")
        self.wait_stable()  # the new node, too, serves requests (cluster_state:ok)
        return int(server.port)

    def server(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def crash_primary(self, port: int, timeout: float = READY_TIMEOUT_S) -> int:
        """SIGKILLs the primary on ``port``, waits until its replica took over (automatic
        failover, after cluster-node-timeout), restarts the killed node (it rejoins as the new
        primary's replica, empty, and resyncs) and waits for a stable cluster. Returns the new
        primary's port."""
        replica = self.replica_of(port)
        self.server(port).kill()
        _wait(
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
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- Sentinel -----------------------------------------------------------------------------------


class SentinelServer(RedisServer):  # type: ignore[misc,valid-type]
    """A redis-server in sentinel mode (``redis-server sentinel.conf --sentinel``)."""

    def __init__(self, dir: Path, *, monitor_port: int, service: str, **options: int) -> None:
        super().__init__(dir)
        self.monitor_port = monitor_port
        self.service = service
        self.options = options

    def command(self) -> list[str]:
        binary = redis_server.redis_server_binary()
        if binary is None:
            raise RedisServerError("redis-server not found on PATH")
        conf = self.dir / "sentinel.conf"
        s = self.service
        conf.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    "bind 127.0.0.1",
                    "daemonize no",
                    f"dir {self.dir}",
                    f"logfile {self.logfile}",
                    f"sentinel monitor {s} 127.0.0.1 {self.monitor_port} 2",
                    f"sentinel down-after-milliseconds {s} {self.options['down_after_ms']}",
                    f"sentinel failover-timeout {s} {self.options['failover_timeout_ms']}",
                    f"sentinel parallel-syncs {s} 1",
                    "",
                ]
            )
        )
        return [binary, str(conf), "--sentinel"]


class SentinelGroup:
    """1 primary + ``replicas`` replicas + ``sentinels`` sentinels (quorum 2), service
    ``service``. ``extra_args`` go to the data nodes (e.g. min-replicas-to-write)."""

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
        self._given_dir = Path(dir) if dir is not None else None
        self._tmpdir: Path | None = None
        self.service = service
        self.replicas_count = replicas
        self.sentinels_count = sentinels
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.extra_args = tuple(extra_args)
        self.data: list[RedisServer] = []
        self.sentinels: list[SentinelServer] = []

    @property
    def dir(self) -> Path:
        d = self._given_dir or self._tmpdir
        if d is None:
            raise RedisServerError("sentinel group not started")
        return d

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}"

    def start(self) -> SentinelGroup:
        if self._given_dir is None:
            self._tmpdir = Path(tempfile.mkdtemp(prefix="budgetkit-sentinel-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        # A (re)synchronising replica gets its full sync at once, not after the 5 s default.
        data_args = ["--repl-diskless-sync-delay", "0", *self.extra_args]
        try:
            primary = RedisServer(self.dir / "data-0", extra_args=data_args).start()
            self.data.append(primary)
            for i in range(self.replicas_count):
                args = [*data_args, "--replicaof", "127.0.0.1", str(primary.port)]
                self.data.append(RedisServer(self.dir / f"data-{i + 1}", extra_args=args).start())
            for i in range(self.sentinels_count):
                sentinel = SentinelServer(
                    self.dir / f"sentinel-{i}",
                    monitor_port=primary.port,
                    service=self.service,
                    down_after_ms=self.down_after_ms,
                    failover_timeout_ms=self.failover_timeout_ms,
                )
                self.sentinels.append(sentinel.start())
            self.wait_ready(primary.port)
        except BaseException:
            self.stop()
            raise
        return self

    def primary_port(self) -> int:
        """The primary's port as the first sentinel reports it."""
        out = cli(
            self.sentinels[0].port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service
        ).split()
        return int(out[1])

    def wait_ready(
        self, primary_port: int, timeout: float = READY_TIMEOUT_S, *, replicas: bool = True
    ) -> None:
        """Every sentinel names ``primary_port`` as the primary and knows the other sentinels;
        with ``replicas``, every other data node is linked to it and the sentinels know them."""

        def ready() -> bool:
            for server in self.data if replicas else []:
                if server.port == primary_port:
                    continue
                repl = info(server.port, "replication")
                if repl.get("master_port") != str(primary_port):
                    return False
                if repl.get("master_link_status") != "up":
                    return False
            for sentinel in self.sentinels:
                port = sentinel.port
                addr = cli(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service).split()
                if addr[-1:] != [str(primary_port)]:
                    return False
                fields = cli(port, "SENTINEL", "MASTER", self.service).splitlines()
                master = dict(zip(fields[::2], fields[1::2], strict=False))
                if replicas and master.get("num-slaves") != str(self.replicas_count):
                    return False
                if master.get("num-other-sentinels") != str(self.sentinels_count - 1):
                    return False
                if "s_down" in master.get("flags", "") or "o_down" in master.get("flags", ""):
                    return False
            return True

        _wait(ready, "the sentinels and replicas to agree on the primary", timeout)

    def failover(self, timeout: float = READY_TIMEOUT_S) -> int:
        """SENTINEL FAILOVER: a replica is promoted; waits until it acts as primary and every
        sentinel names it (the old primary is turned into its replica later, within the
        sentinels' 10 s INFO period). Returns the new primary's port."""
        old = self.primary_port()
        cli(self.sentinels[0].port, "SENTINEL", "FAILOVER", self.service)
        _wait(lambda: self.primary_port() != old, "the sentinels to promote a replica", timeout)
        new = self.primary_port()
        _wait(
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
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> SentinelGroup:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- CLI ----------------------------------------------------------------------------------------


def _detach(servers: Sequence[RedisServer]) -> None:
    for server in servers:
        server.detach()


def _stop_dir(directory: Path) -> int:
    status = 0
    for pidfile in sorted(directory.glob(f"*/{redis_server.PIDFILE_NAME}"), reverse=True):
        status |= redis_server.main(["stop", "--dir", str(pidfile.parent)])
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("kind", choices=["cluster", "sentinel"])
    parser.add_argument("command", choices=["start", "stop"])
    parser.add_argument("--dir", required=True, help="directory for the nodes' dirs")
    args = parser.parse_args(argv)
    directory = Path(args.dir).resolve()
    if args.command == "stop":
        return _stop_dir(directory)
    try:
        if args.kind == "cluster":
            cluster = LocalCluster(directory).start()
            _detach(cluster.servers)
            print(cluster.url, flush=True)
        else:
            group = SentinelGroup(directory).start()
            _detach([*group.data, *group.sentinels])
            print(group.url, flush=True)
    except (RedisServerError, ValueError, subprocess.TimeoutExpired) as error:
        print(f"redis_cluster.py: {error}", file=sys.stderr)
        _stop_dir(directory)
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
