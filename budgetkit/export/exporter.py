"""The exporter: drains every organization's ledger and event streams into durable books.

It reads each stream through a Redis consumer group (at-least-once), writes what it read to a
sink (``JsonlSink``, ``PostgresSink``: idempotent on the entry id), and only then acknowledges
the entries (XACK) and trims them from Redis (XTRIM MINID below the oldest entry any group of
the stream has not acknowledged). So Redis keeps only what is not exported yet, and its memory
stays bounded under continuous load.

One pass (``export_once``), per organization (found by SCAN of ``P:{org}:all``):

1. per chunk of budgets, in one MULTI: Redis TIME, each budget hash (HGETALL) and the last id of
   its ledger stream (XINFO STREAM). A budget whose hash or ledger position changed since this
   exporter last wrote it gets a snapshot record: the books can rebuild the budget from it.
2. the chunk's ledger streams: first the entries delivered to this consumer but never
   acknowledged (a crash between the sink write and XACK), then new ones (XREADGROUP ``>``),
   ``batch`` per stream per read, at most ``rounds_max`` reads per pass; each read is written to
   the sink (with the chunk's snapshots in the first write), then acknowledged.
3. the organization's event stream, the same way.
4. with ``trim``: XTRIM MINID of every stream this pass acknowledged entries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from budgetkit._core.client import BudgetKit
from budgetkit._core.errors import InvalidInput
from budgetkit._core.replies import text_of
from budgetkit.export.records import (
    ZERO_STREAM_ID,
    BudgetSnapshotRecord,
    EventRow,
    ExportBatch,
    LedgerRecord,
    next_stream_id,
    parse_stream_id,
)
from budgetkit.export.sinks import ExportSink
from budgetkit.export.streams import (
    DEFAULT_CONSUMER,
    DEFAULT_GROUP,
    SCAN_COUNT,
    budget_ids,
    chunks,
    discover_organizations,
    is_busy_group,
    is_missing_key,
    keyspace,
    last_stream_id,
    stream_replies,
)

__all__ = ["ExportOptions", "ExportStats", "Exporter", "export_once", "run_exporter"]

#: Entries read per stream per XREADGROUP (``batch``), default and bound.
BATCH_DEFAULT = 500
BATCH_MAX = 10_000
#: Bound of ``rounds_max`` and ``scan_count``.
ROUNDS_SCAN_MAX = 1_000_000
#: Ledger streams per XREADGROUP / budgets per snapshot MULTI.
STREAMS_PER_READ = 64
#: A budget whose balance keeps moving is snapshotted at most this often (config changes and
#: rest are snapshotted at once).
SNAPSHOT_INTERVAL_S = 60.0
#: Idle time after which entries pending for another consumer of the group are claimed.
CLAIM_IDLE_MS = 60_000
#: Reads per stream group per pass: under a load the exporter cannot drain, a pass still ends.
ROUNDS_MAX = 100

#: Rows of one read: (stream key, stream id, fields).
Rows = list[tuple[str, str, dict[str, str]]]


@dataclass(frozen=True, slots=True)
class ExportOptions:
    """How an exporter reads, writes and trims (validated on construction: InvalidInput).

    ``group``/``consumer``: the Redis consumer group and this exporter's name in it; a
    replacement with the same ``consumer`` takes over the entries its predecessor read but never
    acknowledged. ``batch``: entries per stream per read (1..10,000). ``trim``: trim exported
    entries from Redis. ``rounds_max``: reads per stream group per pass (1..10⁶).
    ``scan_count``: SCAN COUNT of organization discovery (1..10⁶). ``claim_idle_ms``: entries of
    the group pending that long for another consumer are taken over (XAUTOCLAIM) and exported by
    this one. ``snapshot_interval_s``: how often a budget whose balance keeps moving is
    snapshotted.
    """

    group: str = DEFAULT_GROUP
    consumer: str = DEFAULT_CONSUMER
    batch: int = BATCH_DEFAULT
    trim: bool = True
    rounds_max: int = ROUNDS_MAX
    scan_count: int = SCAN_COUNT
    claim_idle_ms: int = CLAIM_IDLE_MS
    snapshot_interval_s: float = SNAPSHOT_INTERVAL_S

    def __post_init__(self) -> None:
        if not _int_in(self.batch, 1, BATCH_MAX):
            raise InvalidInput(f"batch must be an int in [1, {BATCH_MAX}]")
        if not _int_in(self.rounds_max, 1, ROUNDS_SCAN_MAX):
            raise InvalidInput(f"rounds_max must be an int in [1, {ROUNDS_SCAN_MAX}]")
        if not _int_in(self.scan_count, 1, ROUNDS_SCAN_MAX):
            raise InvalidInput(f"scan_count must be an int in [1, {ROUNDS_SCAN_MAX}]")
        if not _int_in(self.claim_idle_ms, 0, 2**63 - 1):
            raise InvalidInput("claim_idle_ms must be an int >= 0")
        if not self.group or not self.consumer:
            raise InvalidInput("group and consumer must be non-empty names")


def _int_in(value: object, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


@dataclass(slots=True)
class ExportStats:
    """What export passes did (summed over passes by ``run_exporter``)."""

    passes: int = 0
    organizations: int = 0
    budgets: int = 0
    snapshots: int = 0
    entries: int = 0
    events: int = 0
    trimmed: int = 0
    elapsed_s: float = 0.0

    def add(self, other: ExportStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass(frozen=True, slots=True)
class _Written:
    snapshot_id: str
    config: str
    at: float  # monotonic s


#: Budget hash fields that move with the ledger (debits, resets) or with holds; a change of any
#: other field (limit, soft limit, period, status, acknowledgement, operator pause, …) is
#: snapshotted at once.
_BALANCE_STATE_FIELDS = frozenset({"bal", "held", "updated", "wz", "thrf", "pstart"})


def _config_digest(snap: BudgetSnapshotRecord) -> str:
    stable = sorted((k, v) for k, v in snap.fields.items() if k not in _BALANCE_STATE_FIELDS)
    return hashlib.sha256(json.dumps(stable).encode("utf-8")).hexdigest()


class Exporter:
    """Drains ledger and event streams into ``sink``; keeps state between passes (which streams
    have the group, which snapshots were written). One exporter per consumer group at a time
    (``options``: ``ExportOptions``, its defaults when None)."""

    def __init__(
        self, kit: BudgetKit, sink: ExportSink, *, options: ExportOptions | None = None
    ) -> None:
        self._kit = kit
        self._sink = sink
        self._options = options or ExportOptions()
        self._redis: Redis = kit.redis
        self._keys = keyspace(kit)
        self._grouped: set[str] = set()  # streams known to have our group
        self._written: dict[tuple[str, str], _Written] = {}  # last snapshot written per budget
        self._seen_last_id: dict[tuple[str, str], str] = {}  # ledger last id at the last pass
        self._currency: dict[tuple[str, str], str] = {}
        self._organizations: list[str] = []

    @property
    def options(self) -> ExportOptions:
        """The options this exporter runs with (read-only)."""
        return self._options

    # -- passes -------------------------------------------------------------------------------

    async def export_once(
        self,
        organizations: Sequence[str] | None = None,
        *,
        rediscover: bool = True,
        sweep: bool = True,
    ) -> ExportStats:
        """One pass over the organizations (default: every organization, by SCAN).

        ``sweep``: examine every stream's groups, not only the streams this pass acknowledged
        entries on: claims entries left pending by another consumer and trims what is left.
        """
        started = time.perf_counter()
        stats = ExportStats(passes=1)
        if organizations is not None:
            orgs = list(organizations)
        else:
            if rediscover or not self._organizations:
                self._organizations = await discover_organizations(
                    self._redis, self._keys, scan_count=self._options.scan_count
                )
            orgs = self._organizations
        for org in orgs:
            await self._export_org(org, stats, sweep)
        stats.organizations = len(orgs)
        stats.elapsed_s = time.perf_counter() - started
        return stats

    async def run(
        self,
        *,
        interval_s: float = 0.5,
        stop_after_s: float | None = None,
        passes_max: int | None = None,
        stop: asyncio.Event | None = None,
        rediscover_s: float = 10.0,
        sweep_s: float = 60.0,
    ) -> ExportStats:
        """Passes until ``stop`` is set, ``stop_after_s`` elapsed or ``passes_max`` done (one
        of them, or cancel the task). Waits ``interval_s`` between passes; rediscovers the
        organizations at most every ``rediscover_s`` and sweeps (see export_once) every
        ``sweep_s``, the first pass included. A stop request is honoured after a pass that began
        after it, so what was written before the stop is exported."""
        total = ExportStats()
        stop = stop or asyncio.Event()
        deadline = None if stop_after_s is None else time.monotonic() + stop_after_s
        discovered_at = swept_at = -float("inf")
        while True:
            stopping = stop.is_set()  # set before this pass began: this pass is the last
            now = time.monotonic()
            rediscover = now - discovered_at >= rediscover_s
            sweep = now - swept_at >= sweep_s
            discovered_at = now if rediscover else discovered_at
            swept_at = now if sweep else swept_at
            total.add(await self.export_once(rediscover=rediscover, sweep=sweep))
            done = stopping or (passes_max is not None and total.passes >= passes_max)
            if deadline is not None and time.monotonic() >= deadline:
                done = True
            if done:
                return total
            timeout = interval_s
            if deadline is not None:
                timeout = max(0.0, min(interval_s, deadline - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout)

    # -- one organization ---------------------------------------------------------------------

    async def _export_org(self, org: str, stats: ExportStats, sweep: bool) -> None:
        touched: set[str] = set()
        await self._export_ledgers(org, stats, sweep, touched)
        await self._export_events(org, stats, sweep, touched)
        if self._options.trim and touched:
            stats.trimmed += await self._trim(sorted(touched))

    async def _export_ledgers(
        self, org: str, stats: ExportStats, sweep: bool, touched: set[str]
    ) -> None:
        """Every ledger stream of the organization, ``STREAMS_PER_READ`` budgets at a time."""
        ids = await budget_ids(self._redis, self._keys, org)
        stats.budgets += len(ids)
        for chunk in chunks(ids, STREAMS_PER_READ):
            snapshots = await self._snapshots(org, chunk)
            streams = {self._keys.ledger(org, bid): bid for bid in chunk}
            await self._ensure_groups(list(streams))
            readable = [k for k in streams if k in self._grouped]

            def ledger_batch(rows: Rows, streams: Mapping[str, str] = streams) -> ExportBatch:
                batch = ExportBatch()
                for key, sid, values in rows:
                    currency = self._currency.get((org, streams[key]), "")
                    batch.ledger.append(LedgerRecord.from_stream(org, currency, sid, values))
                return batch

            stats.entries += await self._drain(readable, ledger_batch, snapshots, touched)
            stats.snapshots += len(snapshots)
            if sweep:
                touched.update(readable)

    async def _export_events(
        self, org: str, stats: ExportStats, sweep: bool, touched: set[str]
    ) -> None:
        events_key = self._keys.events(org)
        await self._ensure_groups([events_key])
        if events_key not in self._grouped:
            return

        def event_batch(rows: Rows) -> ExportBatch:
            return ExportBatch(events=[EventRow.from_stream(org, s, v) for _, s, v in rows])

        stats.events += await self._drain([events_key], event_batch, [], touched)
        if sweep:
            touched.add(events_key)

    async def _snapshots(self, org: str, chunk: Sequence[str]) -> list[BudgetSnapshotRecord]:
        """Changed budgets of the chunk, read in one MULTI with their ledgers' last ids."""
        keys = self._keys
        pipe = self._redis.pipeline(transaction=True)
        pipe.time()
        for bid in chunk:
            pipe.hgetall(keys.budget(org, bid))
            pipe.xinfo_stream(keys.ledger(org, bid))
        replies = await pipe.execute(raise_on_error=False)
        seconds, micros = replies[0]
        taken_us = int(seconds) * 1_000_000 + int(micros)
        out = []
        for i, bid in enumerate(chunk):
            raw_hash, info = replies[1 + 2 * i], replies[2 + 2 * i]
            if isinstance(raw_hash, Exception) or not raw_hash:
                continue  # indexed but gone: nothing to snapshot
            values = {text_of(k): text_of(v) for k, v in raw_hash.items()}
            last = last_stream_id(info) or ZERO_STREAM_ID
            snap = BudgetSnapshotRecord(org, bid, taken_us, last, values)
            self._currency[(org, bid)] = values.get("cur", "")
            if self._wants_snapshot(snap):
                out.append(snap)
            self._seen_last_id[(org, bid)] = last
        return out

    def _wants_snapshot(self, snap: BudgetSnapshotRecord) -> bool:
        """Whether to write this snapshot: always when the configuration or status changed;
        when only the balance state moved, once the budget is at rest (its ledger did not move
        since the last pass) or its last snapshot is ``snapshot_interval_s`` old. A hot budget
        gets about one snapshot per interval; restore rolls the ledger forward from it."""
        key = (snap.organization_id, snap.budget_id)
        written = self._written.get(key)
        if written is None or written.config != _config_digest(snap):
            return True
        if written.snapshot_id == snap.snapshot_id:
            return False
        at_rest = self._seen_last_id.get(key) == snap.ledger_last_id
        return at_rest or time.monotonic() - written.at >= self._options.snapshot_interval_s

    async def _ensure_groups(self, stream_keys: Sequence[str]) -> None:
        """XGROUP CREATE at id 0 on streams not known to have the group (no MKSTREAM: a
        budget without ledger entries gets no stream key)."""
        missing = [k for k in stream_keys if k not in self._grouped]
        if not missing:
            return
        pipe = self._redis.pipeline(transaction=False)
        for key in missing:
            pipe.xgroup_create(key, self._options.group, id="0")
        for key, reply in zip(missing, await pipe.execute(raise_on_error=False), strict=True):
            if not isinstance(reply, Exception) or is_busy_group(reply):
                self._grouped.add(key)
            elif not is_missing_key(reply):
                raise reply

    async def _read(self, streams: Mapping[str, str]) -> Any:
        wanted: dict[Any, Any] = dict(streams)
        try:
            return await self._redis.xreadgroup(
                self._options.group, self._options.consumer, wanted, count=self._options.batch
            )
        except ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            # A stream was deleted and recreated (FLUSHALL, restore): create the group again.
            self._grouped.difference_update(streams)
            await self._ensure_groups(list(streams))
            present: dict[Any, Any] = {k: v for k, v in streams.items() if k in self._grouped}
            if not present:
                return []
            return await self._redis.xreadgroup(
                self._options.group, self._options.consumer, present, count=self._options.batch
            )

    async def _drain(
        self,
        stream_keys: Sequence[str],
        to_batch: Callable[[Rows], ExportBatch],
        snapshots: list[BudgetSnapshotRecord],
        touched: set[str],
    ) -> int:
        """Reads, writes, acknowledges until the streams are drained (or rounds_max reads);
        returns the entries written. Snapshots go with the first write."""
        written = 0
        carry = snapshots
        for start_id in ("0", ">"):  # "0": delivered to us, never acknowledged; ">": new
            active = dict.fromkeys(stream_keys, start_id)
            for _ in range(self._options.rounds_max):
                if not active:
                    break
                replies = stream_replies(await self._read(active))
                rows = [(k, sid, v) for k, entries in replies for sid, v in entries if v]
                acks = {k: [sid for sid, _ in entries] for k, entries in replies if entries}
                batch = to_batch(rows)
                batch.snapshots = carry
                if len(batch):
                    await self._sink.write(batch)
                    self._remember(carry)
                    carry = []
                if acks:
                    await self._ack(acks)
                    touched.update(acks)
                written += len(rows)
                # A stream is drained when a read returns fewer than `batch` entries for it.
                full = {k for k, ids in acks.items() if len(ids) >= self._options.batch}
                active = {k: active[k] for k in active if k in full}
        if carry:
            await self._sink.write(ExportBatch(snapshots=carry))
            self._remember(carry)
        return written

    def _remember(self, snapshots: Sequence[BudgetSnapshotRecord]) -> None:
        now = time.monotonic()
        for s in snapshots:
            written = _Written(s.snapshot_id, _config_digest(s), now)
            self._written[(s.organization_id, s.budget_id)] = written

    async def _ack(self, acks: Mapping[str, list[str]]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for key, ids in acks.items():
            pipe.xack(key, self._options.group, *ids)
        await pipe.execute()

    async def _trim(self, stream_keys: Sequence[str]) -> int:
        """XTRIM MINID each stream below the oldest entry that any of its groups has not
        acknowledged (never an unexported entry, also not another exporter's)."""
        pipe = self._redis.pipeline(transaction=False)
        for key in stream_keys:
            pipe.xinfo_groups(key)
        infos = await pipe.execute(raise_on_error=False)
        pending_of: list[tuple[str, str]] = []
        bounds: dict[str, list[str]] = {}
        for key, groups in zip(stream_keys, infos, strict=True):
            if isinstance(groups, Exception) or not groups:
                continue
            for g in groups:
                name = text_of(g["name"])
                if int(g["pending"]) > 0:
                    pending_of.append((key, name))
                else:
                    bounds.setdefault(key, []).append(
                        next_stream_id(text_of(g["last-delivered-id"]))
                    )
        if pending_of:
            pipe = self._redis.pipeline(transaction=False)
            for key, name in pending_of:
                pipe.xpending(key, name)
            orphaned = []
            for (key, name), summary in zip(pending_of, await pipe.execute(), strict=True):
                if summary.get("min") is None:  # acknowledged meanwhile: trim it next pass
                    bounds.setdefault(key, []).append("0-1")
                    continue
                bounds.setdefault(key, []).append(text_of(summary["min"]))
                others = [
                    c for c in summary["consumers"] if text_of(c["name"]) != self._options.consumer
                ]
                if name == self._options.group and others:
                    orphaned.append(key)
            await self._claim(orphaned)
        pipe = self._redis.pipeline(transaction=False)
        trimmed_keys = []
        for key, candidates in bounds.items():
            minid = min(candidates, key=parse_stream_id)
            if minid != "0-1":
                pipe.xtrim(key, minid=minid, approximate=False)
                trimmed_keys.append(key)
        if not trimmed_keys:
            return 0
        return sum(int(n) for n in await pipe.execute())

    async def _claim(self, stream_keys: Sequence[str]) -> None:
        """Takes over entries of our group pending for another consumer (an exporter that ran
        under another name and died) once idle for ``claim_idle_ms``; the next pass re-reads
        them as its own. Until then they hold back the trim of their stream."""
        if not stream_keys:
            return
        pipe = self._redis.pipeline(transaction=False)
        for key in stream_keys:
            pipe.xautoclaim(
                key,
                self._options.group,
                self._options.consumer,
                self._options.claim_idle_ms,
                "0-0",
                count=self._options.batch,
            )
        await pipe.execute()


async def export_once(
    kit: BudgetKit,
    sink: ExportSink,
    *,
    organizations: Sequence[str] | None = None,
    options: ExportOptions | None = None,
) -> ExportStats:
    """One export pass with a fresh ``Exporter`` (see the module docstring)."""
    return await Exporter(kit, sink, options=options).export_once(organizations)


async def run_exporter(
    kit: BudgetKit,
    sink: ExportSink,
    *,
    options: ExportOptions | None = None,
    interval_s: float = 0.5,
    stop_after_s: float | None = None,
    passes_max: int | None = None,
    stop: asyncio.Event | None = None,
) -> ExportStats:
    """Export passes every ``interval_s`` until ``stop`` is set, ``stop_after_s`` elapsed or
    ``passes_max`` passes ran (or the task is cancelled); returns the summed stats."""
    exporter = Exporter(kit, sink, options=options)
    return await exporter.run(
        interval_s=interval_s, stop_after_s=stop_after_s, passes_max=passes_max, stop=stop
    )
