"""Webhooks: an organization's budget events, POSTed to an HTTP endpoint, signed, in order.

Why: budget events sit in the organization's Redis stream (SPEC §9); platforms want them at an
HTTP endpoint (Slack, PagerDuty, their own backend), signed, retried and in order.

``WebhookSender(kit, org, url=..., secret="whsec_...")`` follows the Standard Webhooks spec: a
POST whose body is the ``BudgetEvent``'s JSON (``event.model_dump_json()``), with the headers
``webhook-id`` (the event id, its stream id), ``webhook-timestamp`` (unix seconds of the send)
and ``webhook-signature`` (``v1,`` + base64 of HMAC-SHA256 over ``"{id}.{timestamp}.{body}"``,
keyed with the base64-decoded part of the ``whsec_`` secret).

Delivery goes through a Redis consumer group (``WebhookOptions.group``, created at id 0 on first
use) on ``P:{org}:events``:

- **At least once.** An entry is acknowledged (XACK) only after a 2xx reply, or once it is parked
  on the dead-letter stream (in the same MULTI). A sender that died re-sends, when it starts
  again, what it had read but not acknowledged (its pending entries, XREADGROUP from id 0; a dead
  consumer's, by XAUTOCLAIM after ``claim_idle_ms``). So an event is sent twice only if it was in
  flight when the sender died: receivers deduplicate on ``webhook-id``.
- **In order.** One organization's events are sent strictly one after another: an event is sent
  only once the previous one was accepted or dead-lettered. Run one sender per organization and
  group. ``run_webhooks`` runs many organizations' senders with a bound on the requests in flight
  across them.
- **Retries.** A non-2xx reply, a timeout (``timeout_s``, the whole attempt) or a connection error
  is retried after each of ``retry_delays_s`` in turn; after the last attempt the event goes to
  the dead-letter stream ``P:{org}:webhooks:dead`` (``dead_letters`` lists it).
- **Filters.** Events of a type not in ``event_types`` are acknowledged without being sent.

Measurements: ``sender.stats`` (delivered, failed attempts, dead-lettered, filtered),
``await sender.lag()`` (entries of the stream not acknowledged yet), and the budgetkit
instruments (``instruments=``): each HTTP attempt is a call ``webhook_send`` (outcome ``ok``,
``http_<status>`` or the error's class name), each dead letter a call ``webhook_dead_letter``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import functools
import hashlib
import hmac
import json
import logging
import math
import time
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, TypedDict, Unpack

from pydantic import BaseModel, ConfigDict, ValidationError
from redis import exceptions as redis_errors

import budgetkit as bk
from budgetkit._core.ids import validate_identifier
from budgetkit._core.observability import Instruments
from budgetkit._core.replies import EventRecord, text_of
from budgetkit._core.runtime import translate_error

if TYPE_CHECKING:
    import httpx  # the webhooks extra: imported when a sender is made

__all__ = [
    "DeadLetter",
    "WebhookOptions",
    "WebhookSender",
    "WebhookStats",
    "dead_letters",
    "run_webhooks",
]

logger = logging.getLogger("budgetkit.webhooks")

#: Delays before the 2nd, 3rd, ... attempt of one event, in seconds: six attempts in ~13 min.
RETRY_DELAYS_S_DEFAULT: Final = (1.0, 5.0, 30.0, 120.0, 600.0)
#: Bounds of ``retry_delays_s``: retries per event, and each delay in seconds.
RETRIES_MAX: Final = 20
RETRY_DELAY_S_MAX: Final = 86_400.0
#: Bound of one HTTP attempt (connect, send, reply), in seconds: default and maximum.
TIMEOUT_S_DEFAULT: Final = 10.0
TIMEOUT_S_MAX: Final = 300.0
#: A ``whsec_`` secret's key length in bytes (Standard Webhooks: 24 to 64).
SECRET_PREFIX: Final = "whsec_"
SECRET_BYTES_MIN: Final = 24
SECRET_BYTES_MAX: Final = 64
#: Entries per XREADGROUP / XAUTOCLAIM: default and maximum.
BATCH_SIZE_DEFAULT: Final = 100
BATCH_SIZE_MAX: Final = 1000
#: How long ``run`` waits for a new event per XREADGROUP, in ms; keep it under the connection's
#: socket timeout (``ConnectionOptions.socket_timeout_s``, 5 s by default).
BLOCK_MS_DEFAULT: Final = 1000
BLOCK_MS_MAX: Final = 60_000
#: Entries pending that long for another consumer of the group are taken over (ms).
CLAIM_IDLE_MS_DEFAULT: Final = 60_000
#: ``run`` looks for such entries at most this often (seconds); ``deliver_pending`` always does.
CLAIM_INTERVAL_S: Final = 10.0
#: XAUTOCLAIM pages per claim, and reads per phase of one pass (a pass always ends).
CLAIM_PAGES_MAX: Final = 100
READS_PER_PASS_MAX: Final = 1000
#: ``run`` waits this long after Redis was unavailable, doubling up to the maximum (seconds).
REDIS_RETRY_DELAY_S: Final = 0.5
REDIS_RETRY_DELAY_S_MAX: Final = 30.0
#: The dead-letter stream keeps about this many entries (XADD MAXLEN ~): the oldest go first.
DEAD_LETTERS_MAX: Final = 100_000
#: ``dead_letters``' page: default and maximum entries.
DEAD_LETTERS_LIMIT_DEFAULT: Final = 50
DEAD_LETTERS_LIMIT_MAX: Final = 1000
#: Length bound of an error text stored with a dead letter.
ERROR_TEXT_MAX: Final = 500
#: ``run_webhooks``: organizations per call, and requests in flight across them.
ORGANIZATIONS_MAX: Final = 1000
CONCURRENCY_DEFAULT: Final = 16
CONCURRENCY_MAX: Final = 1024

DEFAULT_GROUP: Final = "budgetkit-webhooks"
DEFAULT_CONSUMER: Final = "sender"

#: One stream entry as read: (stream id, fields; None when it was deleted while pending).
_Entry = tuple[str, dict[str, str] | None]


# -- options and results --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WebhookOptions:
    """How a sender reads its organization's stream (validated on construction: InvalidInput).

    ``group``: the consumer group, one per endpoint (two endpoints of one organization need two
    groups). ``consumer``: this sender's name in it; a sender started again under the same name
    re-sends at once what its predecessor read and did not acknowledge. ``batch_size``: entries
    per read (1..1000). ``block_ms``: how long ``run`` waits for new events per read
    (1..60,000 ms). ``claim_idle_ms``: entries pending that long for another consumer of the
    group (a sender that ran under another name and died) are taken over and sent.
    """

    group: str = DEFAULT_GROUP
    consumer: str = DEFAULT_CONSUMER
    batch_size: int = BATCH_SIZE_DEFAULT
    block_ms: int = BLOCK_MS_DEFAULT
    claim_idle_ms: int = CLAIM_IDLE_MS_DEFAULT

    def __post_init__(self) -> None:
        validate_identifier(self.group, field="group")
        validate_identifier(self.consumer, field="consumer")
        if not _int_in(self.batch_size, 1, BATCH_SIZE_MAX):
            raise bk.InvalidInput(f"batch_size must be an int in [1, {BATCH_SIZE_MAX}]")
        if not _int_in(self.block_ms, 1, BLOCK_MS_MAX):
            raise bk.InvalidInput(f"block_ms must be an int in [1, {BLOCK_MS_MAX}]")
        if not _int_in(self.claim_idle_ms, 0, 2**63 - 1):
            raise bk.InvalidInput("claim_idle_ms must be an int >= 0")


class WebhookStats(BaseModel):
    """What a sender did since it was made (``run_webhooks``: summed over its senders).

    ``failed_attempts`` counts every attempt that got no 2xx (a retried event counts once per
    failed attempt); ``filtered``: events acknowledged unsent because of ``event_types``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    delivered: int = 0
    failed_attempts: int = 0
    dead_lettered: int = 0
    filtered: int = 0

    def __add__(self, other: WebhookStats) -> WebhookStats:
        return WebhookStats(
            delivered=self.delivered + other.delivered,
            failed_attempts=self.failed_attempts + other.failed_attempts,
            dead_lettered=self.dead_lettered + other.dead_lettered,
            filtered=self.filtered + other.filtered,
        )


class DeadLetter(BaseModel):
    """An event that was not accepted after the last attempt, as parked on the dead-letter stream.

    ``id``: the dead-letter entry's stream id; ``event_id``: the event's (its ``webhook-id``).
    ``body``: the JSON that was sent; ``event``: it parsed (None for an event entry budgetkit
    could not read, whose raw fields ``body`` then holds). ``status``: the last HTTP status (None:
    no reply); ``error``: what went wrong last; ``attempts``: attempts made.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    event_id: str
    event: bk.BudgetEvent | None
    body: str
    status: int | None
    error: str
    attempts: int
    dead_at: datetime

    @classmethod
    def from_stream(cls, stream_id: str, fields: dict[str, str]) -> DeadLetter:
        body = fields.get("event", "")
        try:
            event: bk.BudgetEvent | None = bk.BudgetEvent.model_validate_json(body)
        except ValidationError:
            event = None
        status = fields.get("status", "")
        return cls(
            id=stream_id,
            event_id=fields.get("id", ""),
            event=event,
            body=body,
            status=int(status) if status else None,
            error=fields.get("error", ""),
            attempts=int(fields.get("attempts") or 0),
            dead_at=datetime.fromtimestamp(int(fields.get("ts") or 0) / 1000, tz=UTC),
        )


@dataclass(slots=True)
class _Counts:
    """A sender's running counts (``WebhookStats``' fields)."""

    delivered: int = 0
    failed_attempts: int = 0
    dead_lettered: int = 0
    filtered: int = 0


@dataclass(frozen=True, slots=True)
class _Outcome:
    """The last attempt of one event: accepted, or its status (None: no reply) and error."""

    accepted: bool
    status: int | None
    error: str
    attempts: int


# -- the sender ------------------------------------------------------------------------------------


class WebhookSender:
    """Sends one organization's budget events to ``url``, signed with ``secret`` (module doc).

    ``secret``: ``whsec_`` + base64 of 24..64 bytes. ``retry_delays_s``: the wait before each
    retry, in seconds (at most 20 retries, each at most a day); () sends once. ``event_types``:
    the event types to send (None: all). ``timeout_s``: bound of one attempt (0 < t <= 300 s).
    ``options``: how the stream is read (``WebhookOptions``). ``instruments``: budgetkit
    instruments that get each attempt and dead letter. The sender owns an ``httpx.AsyncClient``:
    close it with ``aclose()`` or ``async with``. Invalid arguments raise ``bk.InvalidInput``.
    """

    def __init__(
        self,
        kit: bk.BudgetKit,
        organization_id: str,
        *,
        url: str,
        secret: str,
        retry_delays_s: Sequence[float] = RETRY_DELAYS_S_DEFAULT,
        event_types: Collection[str] | None = None,
        timeout_s: float = TIMEOUT_S_DEFAULT,
        options: WebhookOptions | None = None,
        instruments: Sequence[bk.Instrument] = (),
    ) -> None:
        if not isinstance(kit, bk.BudgetKit):
            raise bk.InvalidInput("kit must be a budgetkit.BudgetKit (the async client)")
        _require_httpx()
        import httpx

        if options is not None and not isinstance(options, WebhookOptions):
            raise bk.InvalidInput("options must be a budgetkit.webhooks.WebhookOptions or None")
        self._org = validate_identifier(organization_id, field="organization_id")
        self._url = _checked_url(url)
        self._key = _secret_key(secret)
        self._delays_s = _checked_delays(retry_delays_s)
        self._types = _checked_types(event_types)
        self._timeout_s = _checked_timeout(timeout_s)
        self._options = options or WebhookOptions()
        self._instruments = Instruments(instruments)
        self._redis: Any = kit.redis
        self._events_key = kit.keys.events(self._org)
        self._dead_key = _dead_letters_key(kit, self._org)
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(self._timeout_s),
            follow_redirects=False,
            headers={"user-agent": f"budgetkit/{bk.__version__}"},
        )
        self._counts = _Counts()
        self._grouped = False
        self._passing = asyncio.Lock()  # one pass at a time: run and deliver_pending share it
        self._stop: asyncio.Event | None = None  # set while run() runs
        self._slots: asyncio.Semaphore | None = None  # shared by run_webhooks' senders

    def __repr__(self) -> str:  # never the secret, nor the url's path (it may be a token)
        import httpx

        host = httpx.URL(self._url).host
        return f"WebhookSender(organization_id={self._org!r}, host={host!r})"

    @property
    def organization_id(self) -> str:
        return self._org

    @property
    def options(self) -> WebhookOptions:
        """The options this sender reads with (read-only)."""
        return self._options

    @property
    def stats(self) -> WebhookStats:
        """What this sender did so far (a snapshot)."""
        return WebhookStats(**dataclasses.asdict(self._counts))

    async def __aenter__(self) -> WebhookSender:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the HTTP client (not the kit)."""
        await self._http.aclose()

    async def lag(self) -> int | None:
        """Entries of the stream the group has not acknowledged yet (read and pending, or not
        read at all); None when Redis cannot tell (entries were deleted from the middle of the
        stream, or Redis < 7)."""
        async with _store("lag"):
            if not await self._redis.exists(self._events_key):
                return 0
            groups: Any = await self._redis.xinfo_groups(self._events_key)
            for group in groups:
                if text_of(group["name"]) == self._options.group:
                    unread = group.get("lag")
                    return None if unread is None else int(unread) + int(group["pending"])
            return int(await self._redis.xlen(self._events_key))  # no group yet: all of it

    async def deliver_pending(self) -> int:
        """Sends what is there (this consumer's unacknowledged entries first, then new ones) and
        returns the events delivered (accepted with a 2xx). Bounded: at most 1000 reads of
        ``batch_size`` per phase; with failing events it takes their retry delays. Raises
        ``bk.BudgetUnavailable`` when Redis is. Waits for a ``run`` of this sender to end."""
        async with self._passing:
            delivered, _ = await self._pass(block_ms=None, claim=True)
            return delivered

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Sends events as they come until ``stop`` is set (or the task is cancelled).

        A stop is honoured between events, during a retry's wait and at least every
        ``block_ms``; an event whose attempts were cut short is left unacknowledged and sent
        again at the next start. Redis being unavailable is logged and waited out (0.5 s,
        doubling up to 30 s); an ACL refusal (``bk.PermissionDenied``) is raised. Alone, the
        sender waits for new events in a blocking read (one Redis connection); under
        ``run_webhooks`` it polls every ``block_ms`` instead, so many organizations do not hold
        a connection each.
        """
        stop = stop if stop is not None else asyncio.Event()
        block_ms = self._options.block_ms if self._slots is None else None
        claimed_at = -math.inf
        failures = 0
        async with self._passing:
            self._stop = stop
            try:
                while not stop.is_set():
                    claim = time.monotonic() - claimed_at >= CLAIM_INTERVAL_S
                    try:
                        _, handled = await self._pass(block_ms=block_ms, claim=claim)
                    except bk.PermissionDenied:
                        raise
                    except bk.BudgetUnavailable as error:
                        failures += 1
                        exponent = min(failures - 1, 16)
                        delay_s = min(REDIS_RETRY_DELAY_S * 2**exponent, REDIS_RETRY_DELAY_S_MAX)
                        logger.warning(
                            "webhooks %s: %s; again in %.1f s", self._org, error, delay_s
                        )
                        await self._sleep(delay_s)
                        continue
                    failures = 0
                    claimed_at = time.monotonic() if claim else claimed_at
                    if block_ms is None and not handled:  # polling, and nothing came
                        await self._sleep(self._options.block_ms / 1000)
            finally:
                self._stop = None

    # -- one pass -----------------------------------------------------------------------------

    async def _pass(self, *, block_ms: int | None, claim: bool) -> tuple[int, int]:
        """Our pending entries (phase "0"), then new ones (">", the first read waiting up to
        ``block_ms``), each sent in stream order; returns (events delivered, entries handled)."""
        await self._ensure_group()
        if claim:
            await self._claim()
        delivered = handled = 0
        batch_size = self._options.batch_size
        for phase in ("0", ">"):
            cursor = phase
            for read in range(READS_PER_PASS_MAX):
                if self._stopping():
                    return delivered, handled
                wait_ms = block_ms if phase == ">" and read == 0 else None
                entries = await self._read(cursor, wait_ms)
                for stream_id, fields in entries:
                    if self._stopping():
                        return delivered, handled
                    delivered += await self._handle(stream_id, fields)
                    handled += 1
                if len(entries) < batch_size:
                    break
                if phase == "0":
                    cursor = entries[-1][0]
        return delivered, handled

    async def _handle(self, stream_id: str, fields: dict[str, str] | None) -> int:
        """Sends one entry (or filters, or parks it); 1 when it was delivered."""
        if fields is None:  # deleted from the stream while pending: nothing left to send
            logger.warning("webhooks %s: event %s was deleted unsent", self._org, stream_id)
            await self._ack(stream_id)
            return 0
        try:
            event = EventRecord.from_stream(stream_id, fields).to_event(self._org)
        except ValueError as error:  # a corrupt entry (ValidationError is a ValueError)
            body = json.dumps(fields, sort_keys=True)
            await self._dead_letter(
                stream_id, body, _Outcome(False, None, f"unreadable: {error}", 0)
            )
            return 0
        if self._types is not None and event.type not in self._types:
            await self._ack(stream_id)
            self._counts.filtered += 1
            return 0
        body = event.model_dump_json()
        outcome = await self._send(stream_id, body.encode("utf-8"))
        if outcome is None:  # stopped between attempts: sent again at the next start
            return 0
        if not outcome.accepted:
            await self._dead_letter(stream_id, body, outcome)
            return 0
        await self._ack(stream_id)
        self._counts.delivered += 1
        return 1

    async def _send(self, event_id: str, body: bytes) -> _Outcome | None:
        """Every attempt of one event until one is accepted or none is left; None when a stop
        came during a wait before a retry."""
        attempts_max = len(self._delays_s) + 1
        waits: tuple[float | None, ...] = (*self._delays_s, None)
        for attempt, wait_s in enumerate(waits, start=1):
            status, error = await self._attempt(event_id, body)
            if not error:
                return _Outcome(True, status, "", attempt)
            self._counts.failed_attempts += 1
            logger.info(
                "webhooks %s: %s attempt %d/%d: %s",
                self._org,
                event_id,
                attempt,
                attempts_max,
                error,
            )
            if wait_s is None:
                return _Outcome(False, status, error, attempt)
            if await self._sleep(wait_s):
                return None
        raise AssertionError("unreachable: the last wait is None")

    async def _attempt(self, event_id: str, body: bytes) -> tuple[int | None, str]:
        """One signed POST: (status or None, error text; "" when accepted with a 2xx)."""
        timestamp = str(int(time.time()))
        headers = {
            "content-type": "application/json",
            "webhook-id": event_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": _signature(self._key, event_id, timestamp, body),
        }
        import httpx

        status: int | None = None
        async with self._slot():
            with self._instruments.call("webhook_send") as record:
                try:
                    async with asyncio.timeout(self._timeout_s):
                        response = await self._http.post(self._url, content=body, headers=headers)
                except TimeoutError:
                    outcome, error = "TimeoutError", f"timed out after {self._timeout_s:g} s"
                except httpx.HTTPError as failure:
                    outcome, error = type(failure).__name__, self._describe(failure)
                else:
                    status = response.status_code
                    accepted = 200 <= status < 300
                    outcome = "ok" if accepted else f"http_{status}"
                    error = "" if accepted else f"HTTP {status}"
                if record is not None:
                    record.outcome = outcome
        return status, error

    def _describe(self, failure: httpx.HTTPError) -> str:
        """An HTTP error as text for logs and dead letters, without the url (it may be a token)."""
        text = f"{type(failure).__name__}: {failure}".replace(self._url, "<url>")
        return text[:ERROR_TEXT_MAX]

    # -- Redis --------------------------------------------------------------------------------

    async def _ensure_group(self) -> None:
        """XGROUP CREATE at id 0 (MKSTREAM) once: the group then starts with the first event."""
        if self._grouped:
            return
        async with _store("create group"):
            try:
                await self._redis.xgroup_create(
                    self._events_key, self._options.group, id="0", mkstream=True
                )
            except redis_errors.ResponseError as error:
                if not str(error).startswith("BUSYGROUP"):
                    raise
        self._grouped = True

    async def _claim(self) -> None:
        """Takes over the group's entries idle for ``claim_idle_ms`` (pending for a consumer that
        died), so the "0" phase sends them in stream order with our own."""
        cursor = "0-0"
        for _ in range(CLAIM_PAGES_MAX):
            claim = functools.partial(
                self._redis.xautoclaim,
                self._events_key,
                self._options.group,
                self._options.consumer,
                self._options.claim_idle_ms,
                start_id=cursor,
                count=self._options.batch_size,
            )
            reply = await self._group_command("claim", claim)
            cursor = text_of(reply[0])
            if cursor == "0-0":
                return

    async def _read(self, cursor: str, block_ms: int | None) -> list[_Entry]:
        """One XREADGROUP from ``cursor`` ("0": our pending entries after it; ">": new ones)."""
        raw = await self._group_command(
            "read",
            lambda: self._redis.xreadgroup(
                self._options.group,
                self._options.consumer,
                {self._events_key: cursor},
                count=self._options.batch_size,
                block=block_ms,
            ),
        )
        return _stream_entries(raw)

    async def _group_command(self, operation: str, command: Callable[[], Awaitable[Any]]) -> Any:
        """Runs a command of the group; when the group is gone (the stream was deleted and made
        again: FLUSHALL, an organization deleted), makes it again and runs the command again."""
        async with _store(operation):
            try:
                return await command()
            except redis_errors.ResponseError as error:
                if not str(error).startswith("NOGROUP"):
                    raise
        self._grouped = False
        await self._ensure_group()
        async with _store(operation):
            return await command()

    async def _ack(self, stream_id: str) -> None:
        async with _store("ack"):
            await self._redis.xack(self._events_key, self._options.group, stream_id)

    async def _dead_letter(self, stream_id: str, body: str, outcome: _Outcome) -> None:
        """Parks the event on the dead-letter stream and acknowledges it, in one MULTI (both
        keys carry the organization's hash tag)."""
        fields = {
            "id": stream_id,
            "event": body,
            "status": "" if outcome.status is None else str(outcome.status),
            "error": outcome.error[:ERROR_TEXT_MAX],
            "attempts": str(outcome.attempts),
            "ts": str(time.time_ns() // 1_000_000),
        }
        with self._instruments.call("webhook_dead_letter"):
            async with _store("dead letter"):
                pipe = self._redis.pipeline(transaction=True)
                pipe.xadd(self._dead_key, fields, maxlen=DEAD_LETTERS_MAX, approximate=True)
                pipe.xack(self._events_key, self._options.group, stream_id)
                await pipe.execute()
        self._counts.dead_lettered += 1
        logger.warning(
            "webhooks %s: %s dead-lettered after %d attempts: %s",
            self._org,
            stream_id,
            outcome.attempts,
            outcome.error,
        )

    # -- waiting ------------------------------------------------------------------------------

    def _stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    async def _sleep(self, delay_s: float) -> bool:
        """Waits ``delay_s``; True when run()'s stop was set meanwhile (the wait ends then)."""
        if self._stop is None:
            await asyncio.sleep(delay_s)
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay_s)
        return self._stop.is_set()

    def _slot(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """A request slot of ``run_webhooks``' shared bound (none for a sender alone: it never
        has more than one request in flight)."""
        return self._slots if self._slots is not None else contextlib.nullcontext()


# -- functions ------------------------------------------------------------------------------------


async def dead_letters(
    kit: bk.BudgetKit, organization_id: str, limit: int = DEAD_LETTERS_LIMIT_DEFAULT
) -> list[DeadLetter]:
    """The organization's dead letters, newest first, at most ``limit`` (1..1000).

    Why: ``budgetkit webhooks dead-letters --org`` shows what an endpoint never accepted.
    """
    org = validate_identifier(organization_id, field="organization_id")
    if not _int_in(limit, 1, DEAD_LETTERS_LIMIT_MAX):
        raise bk.InvalidInput(f"limit must be an int in [1, {DEAD_LETTERS_LIMIT_MAX}]")
    redis: Any = kit.redis
    async with _store("dead letters"):
        rows: Any = await redis.xrevrange(_dead_letters_key(kit, org), count=limit)
    return [
        DeadLetter.from_stream(text_of(sid), {text_of(k): text_of(v) for k, v in values.items()})
        for sid, values in rows
    ]


class SenderSettings(TypedDict, total=False):
    """The ``WebhookSender`` keywords ``run_webhooks`` passes on to each of its senders."""

    retry_delays_s: Sequence[float]
    event_types: Collection[str] | None
    timeout_s: float
    options: WebhookOptions | None
    instruments: Sequence[bk.Instrument]


async def run_webhooks(
    kit: bk.BudgetKit,
    organization_ids: Iterable[str],
    *,
    url: str,
    secret: str,
    stop: asyncio.Event | None = None,
    concurrency_max: int = CONCURRENCY_DEFAULT,
    **settings: Unpack[SenderSettings],
) -> WebhookStats:
    """Runs one sender per organization (``budgetkit webhooks run``) until ``stop`` is set (or
    the task is cancelled); returns their summed stats.

    Each organization's events go one after another; across organizations at most
    ``concurrency_max`` requests (1..1024) are in flight. At most 1000 organizations; each is
    polled every ``options.block_ms`` when idle (two Redis commands), none holds a connection.
    ``settings``: the ``WebhookSender`` keywords (retry_delays_s, event_types, timeout_s,
    options, instruments). A sender that fails (``bk.PermissionDenied``) stops them all.
    """
    if isinstance(organization_ids, str):
        raise bk.InvalidInput("organization_ids must be a list of ids, not one str")
    orgs = list(dict.fromkeys(organization_ids))
    if not 1 <= len(orgs) <= ORGANIZATIONS_MAX:
        raise bk.InvalidInput(f"organization_ids must hold 1..{ORGANIZATIONS_MAX} ids")
    if not _int_in(concurrency_max, 1, CONCURRENCY_MAX):
        raise bk.InvalidInput(f"concurrency_max must be an int in [1, {CONCURRENCY_MAX}]")
    stop = stop if stop is not None else asyncio.Event()
    slots = asyncio.Semaphore(concurrency_max)
    senders: list[WebhookSender] = []
    try:
        for org in orgs:
            senders.append(WebhookSender(kit, org, url=url, secret=secret, **settings))
            senders[-1]._slots = slots
        async with asyncio.TaskGroup() as tasks:
            for sender in senders:
                tasks.create_task(sender.run(stop))
    finally:
        for sender in senders:
            await sender.aclose()
    return sum((sender.stats for sender in senders), WebhookStats())


# -- helpers --------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _store(operation: str) -> AsyncIterator[None]:
    """The error seam: redis-py's errors become budgetkit's (_core.runtime.translate_error).
    Every call here is safe to repeat, so "maybe applied" is just unavailable."""
    try:
        yield
    except (redis_errors.RedisError, redis_errors.RedisClusterException) as error:
        failure = translate_error(f"webhooks {operation}", error)
        if type(failure) is bk.OutcomeUnknown:
            failure = bk.BudgetUnavailable(f"webhooks {operation}: cannot reach Redis: {error}")
        raise failure from error


def _dead_letters_key(kit: bk.BudgetKit, organization_id: str) -> str:
    """``P:{org}:webhooks:dead``: under the organization's hash tag, like its event stream."""
    return kit.keys.webhook_dead_letters(organization_id)


def _stream_entries(raw: Any) -> list[_Entry]:
    """An XREADGROUP reply of one stream (RESP2 list or RESP3 dict) as [(id, fields or None)]."""
    if not raw:
        return []
    if isinstance(raw, dict):
        rows = next(iter(raw.values()))
        if rows and isinstance(rows[0], list):
            rows = rows[0]  # RESP3: {key: [[entries]]}, each entry a tuple
    else:
        rows = raw[0][1]
    out: list[_Entry] = []
    for sid, values in rows:
        fields = {text_of(k): text_of(v) for k, v in values.items()} if values else None
        out.append((text_of(sid), fields))
    return out


def _signature(key: bytes, webhook_id: str, timestamp: str, body: bytes) -> str:
    """Standard Webhooks ``v1`` signature of one message."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def _secret_key(secret: object) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (24..64 bytes); the error never shows it."""
    size = f"{SECRET_BYTES_MIN}..{SECRET_BYTES_MAX} bytes"
    wanted = f"secret must be '{SECRET_PREFIX}' + base64 of {size}"
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise bk.InvalidInput(wanted)
    encoded = secret[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise bk.InvalidInput(wanted + " (it is not valid base64)") from None
    if not SECRET_BYTES_MIN <= len(key) <= SECRET_BYTES_MAX:
        raise bk.InvalidInput(wanted + f" (it decodes to {len(key)} bytes)")
    return key


def _checked_url(url: object) -> str:
    if not isinstance(url, str):
        raise bk.InvalidInput("url must be a str")
    import httpx

    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise bk.InvalidInput("url is not a valid URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise bk.InvalidInput("url must be an http:// or https:// URL with a host")
    return url


def _checked_delays(delays: object) -> tuple[float, ...]:
    if isinstance(delays, str) or not isinstance(delays, Sequence):
        raise bk.InvalidInput("retry_delays_s must be a sequence of seconds")
    if len(delays) > RETRIES_MAX:
        raise bk.InvalidInput(f"retry_delays_s holds at most {RETRIES_MAX} delays")
    for delay in delays:
        if isinstance(delay, bool) or not isinstance(delay, int | float):
            raise bk.InvalidInput("retry_delays_s must hold numbers of seconds")
        if not 0 <= delay <= RETRY_DELAY_S_MAX:
            raise bk.InvalidInput(f"each retry delay must be in [0, {RETRY_DELAY_S_MAX:g}] s")
    return tuple(float(d) for d in delays)


def _checked_types(event_types: object) -> frozenset[str] | None:
    if event_types is None:
        return None
    known = typing.get_args(bk.BudgetEvent.model_fields["type"].annotation)
    if isinstance(event_types, str) or not isinstance(event_types, Collection):
        raise bk.InvalidInput("event_types must be a collection of event types, or None")
    types = frozenset(event_types)
    unknown = sorted(str(t) for t in types if t not in known)
    if unknown or not types:
        raise bk.InvalidInput(f"event_types must be some of {', '.join(known)}; got {unknown}")
    return types


def _checked_timeout(timeout_s: object) -> float:
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float):
        raise bk.InvalidInput("timeout_s must be a number of seconds")
    if not 0 < timeout_s <= TIMEOUT_S_MAX:
        raise bk.InvalidInput(f"timeout_s must be in (0, {TIMEOUT_S_MAX:g}]")
    return float(timeout_s)


def _require_httpx() -> None:
    """httpx is the ``webhooks`` extra, imported where a sender uses it: ``import budgetkit``
    (which exports the sender) needs none. Without it, making a sender says what to install."""
    try:
        import httpx  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "budgetkit.webhooks needs httpx: pip install 'budgetkit[webhooks]'"
        ) from error


def _int_in(value: object, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi
