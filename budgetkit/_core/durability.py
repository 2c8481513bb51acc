"""Opt-in durable mode: a mutation is acknowledged only once N replicas have it.

Redis replicates asynchronously: a primary answers a write before any replica has it, so a
failover that promotes a replica can lose the last acknowledged writes (the replication lag).
``BudgetKit(..., durability=Durability(replicas=N, timeout_ms=T))`` closes that window for
budgetkit's mutations (create, update, top_up, debit, reserve, commit, release, resume): after
the script, on the same connection, it sends ``WAIT N T`` and raises ``ReplicationTimeout`` (an
``OutcomeUnknown``: the write *was* applied on the primary) when fewer than N replicas
acknowledged it within T ms. Retrying with the same idempotency key is then safe either way:
it replays the record if it survived, or applies the call once if it was lost.

How WAIT is made to cover the call: the scripts, then a write of a short-lived marker key in
the organization's slot (``P:{org}:!durable``, expires after MARKER_TTL_MS), then ``WAIT``, go
out as one pipeline on one connection, so they run on one server in that order. WAIT waits for
that connection's last write — the marker — and the replication stream is ordered, so a
replica that acknowledged it has everything that server applied before: the scripts' writes,
and for a replayed idempotent call (which writes nothing) the original write it found. Reading a
record on one server and confirming on another (two connections during a failover) could
acknowledge a write that only the demoted primary has; one pipeline rules that out.

- One server / Sentinel: one pipeline per call or per batch of concurrent calls (they share the
  marker and the WAIT): no extra round trip, the cost is the replicas' acknowledgement.
- Redis Cluster: one such pipeline per node (the calls are grouped by the node that owns their
  slot); redirects are not followed inside it (MOVED/ASK/TRYAGAIN mean the script did not run:
  budgetkit's runtime retries it on the new owner, where it gets its own marker and WAIT).

``aof=True`` uses ``WAITAOF 0 N T`` instead (Redis >= 7.2): the replicas have also written the
change to their append-only file and fsynced it. Redis 7.0 has no WAITAOF; budgetkit refuses
the option there.

What WAIT does not cover (see docs/deployment.md): a replica that acknowledged can still lose
the write if it crashes too before persisting it (WAITAOF closes that), and reads served by the
primary (``check``) see writes that may still be lost if the primary fails before they
replicate (their rollovers are recomputed, not lost).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import MovedError

from budgetkit._core.errors import InvalidInput, ReplicationTimeout
from budgetkit._core.runtime import ScriptArg, guard_key, slot_prefix

#: The scripts whose writes must survive a failover (check, get, list, ledger only roll periods
#: over, which is recomputed identically if lost).
MUTATIONS = frozenset(
    {"create", "update", "top_up", "debit", "reserve", "commit", "release", "resume"}
)
DEFAULT_TIMEOUT_MS = 1000
TIMEOUT_MS_MAX = 60_000
REPLICAS_MAX = 16
MARKER_NAME = "!durable"
MARKER_TTL_MS = 10_000
#: Cluster: the marker is written by a guarded script, so it is refused (TRYAGAIN) while the
#: slot migrates instead of being redirected to a connection WAIT does not watch.
#: (The guard is the last key; the script drops it before it writes.)
MARKER_SCRIPT = "table.remove(KEYS) redis.call('SET', KEYS[1], '1', 'PX', ARGV[1]) return 1"


def marker_key(key: str) -> str:
    """The durability marker of ``key``'s organization (its slot, on a Cluster)."""
    return f"{slot_prefix(key)}:{MARKER_NAME}"


def _node(client: RedisCluster, key: str) -> Any:
    return client.nodes_manager.get_node_from_slot(client.keyslot(key))


@dataclass(frozen=True, slots=True)
class Durability:
    """Durable mode's settings: wait for ``replicas`` replica acknowledgements (at most
    ``timeout_ms`` ms, 1..60000) after each mutation; ``aof``: WAITAOF (the replicas fsynced it
    to their AOF; Redis >= 7.2). ``BudgetKit(client, durability=Durability(1))``."""

    replicas: int
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    aof: bool = False

    def __post_init__(self) -> None:
        replicas, timeout_ms = self.replicas, self.timeout_ms
        if isinstance(replicas, bool) or not isinstance(replicas, int):
            raise InvalidInput("durability replicas must be an integer")
        if not 1 <= replicas <= REPLICAS_MAX:
            raise InvalidInput(f"durability replicas must be in [1, {REPLICAS_MAX}]")
        if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int):
            raise InvalidInput("durability timeout_ms must be an integer")
        if not 1 <= timeout_ms <= TIMEOUT_MS_MAX:
            raise InvalidInput(f"durability timeout_ms must be in [1, {TIMEOUT_MS_MAX}]")
        if not isinstance(self.aof, bool):
            raise InvalidInput("durability aof must be True or False")


class DurableWriter:
    """Runs mutations under a Durability: the scripts, a marker write and WAIT in one pipeline
    (see the module docstring); counts what it sent."""

    def __init__(self, settings: Durability) -> None:
        self.replicas = settings.replicas
        self.timeout_ms = settings.timeout_ms
        self.aof = settings.aof
        self._aof_checked = False
        self.waits = 0  # WAIT / WAITAOF commands sent
        self.markers = 0  # marker writes (one per pipeline that holds a mutation)
        self.timeouts = 0  # mutations answered ReplicationTimeout

    def __repr__(self) -> str:
        kind = "WAITAOF" if self.aof else "WAIT"
        return f"DurableWriter({kind} {self.replicas} replicas, {self.timeout_ms} ms)"

    @staticmethod
    def covers(name: str) -> bool:
        return name in MUTATIONS

    def wait_command(self) -> list[ScriptArg]:
        self.waits += 1
        if self.aof:
            return ["WAITAOF", 0, self.replicas, self.timeout_ms]
        return ["WAIT", self.replicas, self.timeout_ms]

    def acknowledged(self, reply: Any) -> int:
        """Replicas that acknowledged, from a WAIT (int) or WAITAOF ([local, replicas]) reply."""
        if isinstance(reply, list | tuple):
            return int(reply[1])
        return int(reply)

    def _verdict(self, ack: Any) -> ReplicationTimeout | None:
        if isinstance(ack, BaseException):
            return ReplicationTimeout(
                f"applied on the primary; its replication could not be confirmed: {ack}"
            )
        count = self.acknowledged(ack)
        if count >= self.replicas:
            return None
        return ReplicationTimeout(
            f"applied on the primary, but acknowledged by {count} of {self.replicas} replicas "
            f"within {self.timeout_ms} ms: a failover could lose it; retry with the same "
            "idempotency key"
        )

    async def _prepare(self, client: Any) -> None:
        if not self.aof or self._aof_checked:
            return
        info = await client.info("server")
        # one server: its INFO; a Cluster: {node: INFO} (every node must have WAITAOF)
        infos = [info] if "redis_version" in info else list(info.values())
        for node_info in infos:
            version = str(node_info.get("redis_version", "0.0"))
            major, minor = (int(part) for part in version.split(".")[:2])
            if (major, minor) < (7, 2):
                raise InvalidInput(f"durable AOF mode needs WAITAOF (Redis >= 7.2), not {version}")
        self._aof_checked = True

    # -- one call ---------------------------------------------------------------------------

    async def run(self, client: Any, command: Sequence[ScriptArg], key: str) -> Any:
        """Runs one script ``command`` (routed by ``key``) and waits for its replication;
        returns the script's reply or raises (the script's error, or ReplicationTimeout)."""
        replies = await self.run_batch(client, [command], [key], [True])
        reply = replies[0]
        if isinstance(reply, BaseException):
            raise reply
        return reply

    # -- a batch ----------------------------------------------------------------------------

    async def run_batch(
        self,
        client: Any,
        commands: Sequence[Sequence[ScriptArg]],
        keys: Sequence[str],
        mutations: Sequence[bool],
    ) -> list[Any]:
        """Runs ``commands`` (each routed by its key) in one pipeline per server, each followed
        by a marker write and WAIT when it holds a mutation. Returns each command's reply or
        exception, with a ReplicationTimeout in place of the reply of a mutation that too few
        replicas acknowledged (or whose acknowledgement could not be read)."""
        await self._prepare(client)
        if isinstance(client, RedisCluster):
            return await self._run_cluster(client, commands, keys, mutations)
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        tail = 0
        if any(mutations):
            marker = marker_key(next(k for k, m in zip(keys, mutations, strict=True) if m))
            self.markers += 1
            pipe.set(marker, b"1", px=MARKER_TTL_MS)
            pipe.execute_command(*self.wait_command())
            tail = 2
        results = await pipe.execute(raise_on_error=False)
        replies = list(results[: len(commands)])
        if tail:
            marked, ack = results[-2:]
            self._judge(replies, mutations, marked if isinstance(marked, BaseException) else ack)
        return replies

    async def _run_cluster(
        self,
        client: RedisCluster,
        commands: Sequence[Sequence[ScriptArg]],
        keys: Sequence[str],
        mutations: Sequence[bool],
    ) -> list[Any]:
        await client.initialize()
        groups: dict[str, tuple[Any, list[int]]] = {}
        for index, key in enumerate(keys):
            node = _node(client, key)
            groups.setdefault(node.name, (node, []))[1].append(index)
        pipe = client.pipeline()
        layout: list[tuple[list[int], bool]] = []
        for node, indexes in groups.values():
            for index in indexes:
                pipe.execute_command(*commands[index], target_nodes=node)
            durable = [i for i in indexes if mutations[i]]
            if durable:
                marker = marker_key(keys[durable[0]])
                self.markers += 1
                pipe.execute_command(
                    "EVAL",
                    MARKER_SCRIPT,
                    2,
                    marker,
                    guard_key(marker),
                    MARKER_TTL_MS,
                    target_nodes=node,
                )
                pipe.execute_command(*self.wait_command(), target_nodes=node)
            layout.append((indexes, bool(durable)))
        results = await pipe.execute(raise_on_error=False, allow_redirections=False)
        replies: list[Any] = [None] * len(commands)
        position = 0
        for indexes, waited in layout:
            for index in indexes:
                replies[index] = results[position]
                position += 1
            if waited:
                marked, ack = results[position : position + 2]
                position += 2
                group_replies = [replies[i] for i in indexes]
                verdict = marked if isinstance(marked, BaseException) else ack
                self._judge(group_replies, [mutations[i] for i in indexes], verdict)
                for i, reply in zip(indexes, group_replies, strict=True):
                    replies[i] = reply
        for reply in replies:
            if isinstance(reply, MovedError):  # not followed here: learn the new owner
                await client.nodes_manager.move_slot(reply)
        return replies

    def _judge(self, replies: list[Any], mutations: Sequence[bool], ack: Any) -> None:
        """Replaces (in place) the reply of each mutation that ran by ReplicationTimeout when
        ``ack`` (a WAIT reply, or the error of the marker or the WAIT) is not enough."""
        error = self._verdict(ack)
        if error is None:
            return
        for index, mutation in enumerate(mutations):
            if mutation and not isinstance(replies[index], BaseException):
                self.timeouts += 1
                replies[index] = ReplicationTimeout(str(error))
