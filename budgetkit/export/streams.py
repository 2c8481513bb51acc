"""The Redis side of the books: finding organizations and budgets, paging and positioning streams.

Shared by the exporter (reads through a consumer group), ``reconcile`` (reads balances and the
entries not exported yet) and ``restore`` (writes streams back). Every loop is paged with a named
bound; nothing here formats a key (``Keyspace`` does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from budgetkit._core.client import BudgetKit
from budgetkit._core.keys import Keyspace
from budgetkit._core.replies import text_of
from budgetkit.export.records import LedgerRecord

__all__ = [
    "DEFAULT_CONSUMER",
    "DEFAULT_GROUP",
    "SCAN_COUNT",
    "budget_ids",
    "discover_organizations",
    "keyspace",
]

T = TypeVar("T")

#: Consumer group and consumer name of the exporter (restore creates the group too).
DEFAULT_GROUP = "budgetkit-export"
DEFAULT_CONSUMER = "exporter"

#: Keys examined per SCAN step when discovering organizations.
SCAN_COUNT = 1000
#: Budget ids read per ZRANGE page of an organization index.
INDEX_PAGE = 1000
#: Stream entries per XRANGE page (reconcile) and per XADD pipeline (restore).
STREAM_PAGE = 1000
#: Streams positioned per pipeline (restore).
POSITIONS_PER_PIPELINE = 256

#: An entry of a stream read: (stream key, stream id, fields; None when deleted while pending).
StreamRows = list[tuple[str, list[tuple[str, dict[str, str] | None]]]]


def keyspace(kit: BudgetKit) -> Keyspace:
    """The key builder of ``kit`` (its prefix): the one place export reaches into the client."""
    return kit.keys


def chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size``."""
    return [items[start : start + size] for start in range(0, len(items), size)]


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


async def discover_organizations(
    redis: Redis, keys: Keyspace, *, scan_count: int = SCAN_COUNT
) -> list[str]:
    """Every organization with a budget index (``P:{org}:all``), by SCAN (never KEYS).

    Bounded work per step (``scan_count`` keys per SCAN call); a full iteration visits the
    keyspace once. On a Redis Cluster, redis-py's ``scan_iter`` fans out over every primary.
    """
    pattern = _glob_escape(keys.prefix) + ":{*}:all"
    head = keys.prefix + ":{"
    found: set[str] = set()
    async for raw in redis.scan_iter(match=pattern, count=scan_count, _type="zset"):
        name = text_of(raw)
        if name.startswith(head) and name.endswith("}:all"):
            found.add(name[len(head) : -len("}:all")])
    return sorted(found)


async def budget_ids(redis: Redis, keys: Keyspace, organization_id: str) -> list[str]:
    """Every budget id of the organization's index, oldest first (paged ZRANGE)."""
    index = keys.org_index(organization_id)
    seen: dict[str, None] = {}  # ordered set: a budget created meanwhile may shift a page
    start = 0
    while True:
        page: Sequence[Any] = await redis.zrange(index, start, start + INDEX_PAGE - 1)
        seen.update((text_of(v), None) for v in page)
        start += INDEX_PAGE
        if len(page) < INDEX_PAGE:
            return list(seen)


def stream_replies(raw: Any) -> StreamRows:
    """XREADGROUP's reply (RESP2 list or RESP3 dict) as [(key, [(id, fields or None)])]."""
    if not raw:
        return []
    pairs = raw.items() if isinstance(raw, dict) else raw
    out = []
    for key, entries in pairs:
        rows = entries
        if isinstance(raw, dict) and entries and isinstance(entries[0], list):
            rows = entries[0]  # RESP3: {key: [[entries]]}
        decoded: list[tuple[str, dict[str, str] | None]] = []
        for sid, values in rows:
            if values:
                decoded.append((text_of(sid), {text_of(k): text_of(v) for k, v in values.items()}))
            else:
                decoded.append((text_of(sid), None))  # deleted while pending
        out.append((text_of(key), decoded))
    return out


def is_missing_key(error: Exception) -> bool:
    return isinstance(error, ResponseError) and "requires the key to exist" in str(error)


def is_busy_group(error: Exception) -> bool:
    return isinstance(error, ResponseError) and str(error).startswith("BUSYGROUP")


def last_stream_id(info: object) -> str | None:
    """The last id of a stream from its XINFO STREAM reply; None when the stream does not exist.
    Raises any other error the reply carries."""
    if isinstance(info, dict):
        return text_of(info["last-generated-id"])
    if isinstance(info, Exception) and not str(info).startswith("no such key"):
        raise info
    return None


async def stream_upto(redis: Redis, key: str, last: str) -> list[tuple[str, dict[str, str]]]:
    """Entries of a stream with id ≤ last, oldest first (paged XRANGE)."""
    out: list[tuple[str, dict[str, str]]] = []
    start = "-"
    while True:
        page: Any = await redis.xrange(key, start, last, count=STREAM_PAGE)
        for sid, values in page:
            out.append((text_of(sid), {text_of(k): text_of(v) for k, v in values.items()}))
        if len(page) < STREAM_PAGE:
            return out
        start = "(" + out[-1][0]


def ledger_fields(rec: LedgerRecord) -> dict[str, str]:
    """A ledger record as the fields of its stream entry (the inverse of from_stream)."""
    return {
        "id": rec.entry_id,
        "bid": rec.budget_id,
        "amt": str(rec.amount_micros),
        "src": rec.meter_source,
        "rt": rec.ref_type or "",
        "ri": rec.ref_id or "",
        "sess": rec.session_id or "",
        "desc": rec.description or "",
        "ts": str(rec.created_ms),
    }


async def write_ledger(redis: Redis, key: str, rows: Sequence[LedgerRecord]) -> None:
    """XADDs the records at their own stream ids (restore with ``ledger=True``)."""
    for page in chunks(rows, STREAM_PAGE):
        pipe = redis.pipeline(transaction=False)
        for rec in page:
            pipe.xadd(key, ledger_fields(rec), id=rec.stream_id)  # type: ignore[arg-type]
        await pipe.execute()


async def position_streams(
    redis: Redis, positions: Sequence[tuple[str, str]], group: str, force: bool
) -> None:
    """Each stream exists with last id ``last`` (new entries get greater ids) and the
    exporter's group starts there: its entries are in the books already."""
    for chunk in chunks(positions, POSITIONS_PER_PIPELINE):
        pipe = redis.pipeline(transaction=False)
        for key, last in chunk:
            pipe.xgroup_create(key, group, id=last, mkstream=True)
            pipe.execute_command("XSETID", key, last)
        replies = await pipe.execute(raise_on_error=False)
        for i, reply in enumerate(replies):
            if not isinstance(reply, ResponseError) or is_busy_group(reply):
                continue
            if "unknown command" in str(reply):  # no XSETID (fakeredis): add and delete one
                key, last = chunk[i // 2]
                await redis.xadd(key, {"restored": "1"}, id=last)
                await redis.xdel(key, last)
            elif not force:
                raise reply
