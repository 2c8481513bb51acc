"""Webhooks (issue 16): Standard Webhooks signatures, order, retries, dead letters, filters, and a
sender killed with SIGKILL mid-run that loses nothing and re-sends nothing accepted.

A local receiver (an asyncio HTTP/1.1 server on 127.0.0.1) answers as each test plans: accept,
fail (500) or stall past the sender's timeout. It checks every signature with the
``standardwebhooks`` package. Retry delays are hundredths of a second: nothing here sleeps long.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from standardwebhooks.webhooks import Webhook

import budgetkit as bk
from budgetkit.webhooks import (
    DeadLetter,
    WebhookOptions,
    WebhookSender,
    WebhookStats,
    dead_letters,
    run_webhooks,
)

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
GROUP = "budgetkit-webhooks"
FAST = (0.01, 0.02)  # retry delays of the tests, in seconds
SLOW = -1  # a plan's answer: stall longer than the sender's timeout, then hang up
STALL_S = 2.0
WAIT_S = 10.0  # bound of every wait for the receiver


# -- the receiver ---------------------------------------------------------------------------------


@dataclass
class Request:
    webhook_id: str
    headers: dict[str, str]
    body: bytes
    status: int  # answered; SLOW: none (the sender had given up)


class Receiver:
    """A webhook endpoint on 127.0.0.1. ``plan(n)`` is the status of the n-th request (0-based),
    or SLOW; ``accepted`` lists the webhook ids answered 2xx, in order; ``on_answer(n)`` runs
    once the n-th answer is flushed."""

    def __init__(self, plan: Callable[[int], int] | None = None) -> None:
        self.plan = plan or (lambda n: 200)
        self.verifier = Webhook(SECRET)
        self.requests: list[Request] = []
        self.accepted: list[str] = []
        self.payloads: list[Any] = []
        self.on_answer: Callable[[int], None] = lambda n: None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hooks/budget?token=t0ps3cret"

    async def __aenter__(self) -> Receiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def wait_accepted(self, count: int) -> None:
        deadline = time.monotonic() + WAIT_S
        while len(self.accepted) < count:
            assert time.monotonic() < deadline, f"accepted {len(self.accepted)} of {count}"
            await asyncio.sleep(0.01)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            while (request := await _read_request(reader)) is not None:
                await self._answer(writer, *request)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _answer(
        self, writer: asyncio.StreamWriter, head: str, headers: dict[str, str], body: bytes
    ) -> None:
        assert head.startswith("POST /hooks/budget?token=t0ps3cret "), head
        n = len(self.requests)
        status = self.plan(n)
        self.requests.append(Request(headers.get("webhook-id", ""), headers, body, status))
        self.payloads.append(self.verifier.verify(body, headers))  # raises when not signed right
        if status == SLOW:
            await asyncio.sleep(STALL_S)
            raise ConnectionError("stalled")
        writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n".encode())
        await writer.drain()
        if 200 <= status < 300:
            self.accepted.append(headers["webhook-id"])
        self.on_answer(n)


async def _read_request(
    reader: asyncio.StreamReader,
) -> tuple[str, dict[str, str], bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    first, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        if line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return first, headers, body


# -- helpers --------------------------------------------------------------------------------------


@pytest.fixture
def org() -> str:
    return f"org_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def kit(real_redis: redis_asyncio.Redis) -> bk.BudgetKit:
    return bk.BudgetKit(real_redis)  # the fixture closes its client


async def make_events(kit: bk.BudgetKit, org: str, budgets: int = 1) -> list[bk.BudgetEvent]:
    """Four events per budget (threshold, paused, warning, exhausted); the org's whole stream."""
    for i in range(budgets):
        await kit.create_budget(
            org, "session", f"s{i}", "usd", 1, soft_limit=0.5, thresholds=[0.25]
        )
        scope = bk.Scope(organization_id=org, session_id=f"s{i}")
        for _ in range(4):
            await kit.debit(scope, {"usd": 0.3})
    return [event async for event in kit.events(org)]


def sender(kit: bk.BudgetKit, org: str, receiver: Receiver, **kwargs: Any) -> WebhookSender:
    kwargs.setdefault("retry_delays_s", FAST)
    kwargs.setdefault("timeout_s", 0.5)
    return WebhookSender(kit, org, url=receiver.url, secret=SECRET, **kwargs)


class Recorder:
    """A budgetkit instrument that keeps (operation, outcome) of every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    @contextlib.contextmanager
    def call(self, record: Any) -> Iterator[None]:
        yield
        self.calls.append((record.operation, record.outcome))

    def check_decided(self, action: str, policy: str | None) -> None:
        pass

    def reservation_decided(self, granted: bool, reason: str | None) -> None:
        pass

    def batch_sent(self, size: int) -> None:
        pass

    def script_reloaded(self) -> None:
        pass


# -- delivery -------------------------------------------------------------------------------------


@pytest.mark.real
async def test_delivers_every_event_in_order_signed(kit: bk.BudgetKit, org: str) -> None:
    events = await make_events(kit, org, budgets=2)
    assert len(events) == 8
    async with Receiver() as receiver, sender(kit, org, receiver) as s:
        assert await s.lag() == 8  # no group yet: everything is to send
        before = int(time.time())
        assert await s.deliver_pending() == 8
        assert await s.deliver_pending() == 0  # nothing is sent twice
        assert await s.lag() == 0
        assert s.stats == WebhookStats(delivered=8)

    assert receiver.accepted == [e.id for e in events]
    assert receiver.payloads == [e.model_dump(mode="json") for e in events]
    for request, event in zip(receiver.requests, events, strict=True):
        assert request.body == event.model_dump_json().encode()
        assert request.headers["content-type"] == "application/json"
        assert request.headers["webhook-signature"].startswith("v1,")
        assert before <= int(request.headers["webhook-timestamp"]) <= time.time() + 1


@pytest.mark.real
async def test_retries_failures_and_timeouts_then_the_next_event(
    kit: bk.BudgetKit, org: str
) -> None:
    """The first event fails (500), stalls past the timeout, then is accepted; the second is
    sent only after that."""
    first, second = (await make_events(kit, org))[:2]
    answers = [500, SLOW, 200]
    recorder = Recorder()
    async with (
        Receiver(lambda n: answers[n] if n < len(answers) else 200) as receiver,
        sender(kit, org, receiver, timeout_s=0.2, instruments=[recorder]) as s,
    ):
        started = time.monotonic()
        assert await s.deliver_pending() == 4
        assert time.monotonic() - started < STALL_S  # the timeout cut the stalled attempt
        assert s.stats.failed_attempts == 2 and s.stats.delivered == 4

    assert [r.webhook_id for r in receiver.requests][:4] == [first.id] * 3 + [second.id]
    assert receiver.accepted[:2] == [first.id, second.id]
    sends = [outcome for operation, outcome in recorder.calls if operation == "webhook_send"]
    assert sends == ["http_500", "TimeoutError", "ok", "ok", "ok", "ok"]


@pytest.mark.real
async def test_dead_letters_after_the_last_attempt(
    kit: bk.BudgetKit, org: str, real_redis: redis_asyncio.Redis
) -> None:
    events = await make_events(kit, org)
    async with Receiver(lambda n: 500) as receiver, sender(kit, org, receiver) as s:
        assert await s.deliver_pending() == 0
        assert s.stats == WebhookStats(failed_attempts=12, dead_lettered=4)
        assert await s.lag() == 0  # parked and acknowledged

    # three attempts each (two retries), one event after the other
    assert [r.webhook_id for r in receiver.requests] == [e.id for e in events for _ in range(3)]
    letters = await dead_letters(kit, org)
    assert [d.event for d in letters] == events[::-1]  # newest first
    newest = letters[0]
    assert isinstance(newest, DeadLetter)
    assert (newest.event_id, newest.status, newest.error, newest.attempts) == (
        events[-1].id,
        500,
        "HTTP 500",
        3,
    )
    assert newest.body == events[-1].model_dump_json()
    assert abs(newest.dead_at.timestamp() - time.time()) < 60
    assert [d.event_id for d in await dead_letters(kit, org, limit=2)] == [
        events[3].id,
        events[2].id,
    ]
    assert await real_redis.exists(f"bk:{{{org}}}:webhooks:dead")


@pytest.mark.real
async def test_dead_letter_after_a_timeout_keeps_the_error(kit: bk.BudgetKit, org: str) -> None:
    first = (await make_events(kit, org))[0]
    async with (
        Receiver(lambda n: SLOW if n == 0 else 200) as receiver,
        sender(kit, org, receiver, retry_delays_s=(), timeout_s=0.2) as s,
    ):
        assert await s.deliver_pending() == 3
    (letter,) = await dead_letters(kit, org)
    assert (letter.event_id, letter.status, letter.attempts) == (first.id, None, 1)
    assert letter.error == "timed out after 0.2 s"
    assert "t0ps3cret" not in letter.model_dump_json()


@pytest.mark.real
async def test_an_endpoint_that_is_down_is_retried_then_dead_lettered(
    kit: bk.BudgetKit, org: str
) -> None:
    first = (await make_events(kit, org))[0]
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/hooks"
    async with WebhookSender(kit, org, url=url, secret=SECRET, retry_delays_s=FAST) as s:
        assert await s.deliver_pending() == 0
        assert s.stats == WebhookStats(failed_attempts=12, dead_lettered=4)
    letter = (await dead_letters(kit, org))[-1]
    assert (letter.event_id, letter.status, letter.attempts) == (first.id, None, 3)
    assert letter.error.startswith("ConnectError")


@pytest.mark.real
async def test_event_type_filter_acknowledges_the_others_unsent(
    kit: bk.BudgetKit, org: str
) -> None:
    events = await make_events(kit, org, budgets=2)
    wanted = {"budget.exhausted", "budget.paused"}
    async with (
        Receiver() as receiver,
        sender(kit, org, receiver, event_types=wanted) as s,
    ):
        assert await s.deliver_pending() == 4
        assert s.stats.filtered == 4
        assert await s.lag() == 0
    assert receiver.accepted == [e.id for e in events if e.type in wanted]


@pytest.mark.real
async def test_run_follows_new_events_until_stopped(kit: bk.BudgetKit, org: str) -> None:
    stop = asyncio.Event()
    async with Receiver() as receiver, sender(kit, org, receiver) as s:
        task = asyncio.create_task(s.run(stop))
        await asyncio.sleep(0.05)
        events = await make_events(kit, org)
        await receiver.wait_accepted(len(events))
        stop.set()
        await asyncio.wait_for(task, WAIT_S)
    assert receiver.accepted == [e.id for e in events]


@pytest.mark.real
async def test_run_webhooks_serves_many_organizations(kit: bk.BudgetKit) -> None:
    orgs = [f"org_{uuid.uuid4().hex[:8]}" for _ in range(3)]
    streams = {org: await make_events(kit, org) for org in orgs}
    stop = asyncio.Event()
    async with Receiver() as receiver:
        runner = asyncio.create_task(
            run_webhooks(kit, orgs, url=receiver.url, secret=SECRET, stop=stop, concurrency_max=2)
        )
        await receiver.wait_accepted(12)
        stop.set()
        stats = await asyncio.wait_for(runner, WAIT_S)
    assert stats.delivered == 12
    for org, events in streams.items():
        mine = [p["id"] for p in receiver.payloads if p["organization_id"] == org]
        assert mine == [e.id for e in events]  # in order per organization


# -- crashes --------------------------------------------------------------------------------------


@pytest.mark.real
async def test_takes_over_what_a_dead_consumer_left_pending(
    kit: bk.BudgetKit, org: str, real_redis: redis_asyncio.Redis
) -> None:
    events = await make_events(kit, org)
    key = kit.keys.events(org)
    await real_redis.xgroup_create(key, GROUP, id="0")
    await real_redis.xreadgroup(GROUP, "gone", {key: ">"}, count=2)  # read, never acknowledged
    options = WebhookOptions(consumer="next", claim_idle_ms=0)
    async with Receiver() as receiver, sender(kit, org, receiver, options=options) as s:
        assert await s.deliver_pending() == 4
    assert receiver.accepted == [e.id for e in events]


@pytest.mark.real
async def test_a_stream_made_again_gets_the_group_again(
    kit: bk.BudgetKit, org: str, real_redis: redis_asyncio.Redis
) -> None:
    async with Receiver() as receiver, sender(kit, org, receiver) as s:
        assert await s.deliver_pending() == 0  # the group is made (MKSTREAM)
        await real_redis.delete(kit.keys.events(org))
        events = await make_events(kit, org)
        assert await s.deliver_pending() == 4
    assert receiver.accepted == [e.id for e in events]


SENDER_PROGRAM = """
import asyncio, os, sys
import budgetkit as bk
from budgetkit.webhooks import WebhookOptions, WebhookSender

async def main() -> None:
    org, url = sys.argv[1], sys.argv[2]
    async with bk.BudgetKit.from_url(os.environ["REDIS_URL"]) as kit:
        async with WebhookSender(
            kit, org, url=url, secret=os.environ["WEBHOOK_SECRET"], retry_delays_s=(0.01,),
            options=WebhookOptions(batch_size=4),
        ) as sender:
            await sender.run()

asyncio.run(main())
"""


@pytest.mark.real
async def test_sigkill_mid_run_loses_nothing_and_resends_nothing_acknowledged(
    kit: bk.BudgetKit, org: str, real_redis: redis_asyncio.Redis, redis_server_url: str
) -> None:
    """The receiver SIGKILLs the sending process right after its 10th 200 is flushed; a new
    sender then finishes. Every event is accepted; the only one that may be accepted twice is
    the one in flight at the kill (accepted, not yet acknowledged)."""
    ids = [e.id for e in await make_events(kit, org, budgets=6)]
    kill_at = 9
    env = {**os.environ, "REDIS_URL": redis_server_url, "WEBHOOK_SECRET": SECRET}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    async with Receiver() as receiver:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            SENDER_PROGRAM,
            org,
            receiver.url,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        receiver.on_answer = lambda n: process.send_signal(signal.SIGKILL) if n == kill_at else None
        try:
            _, stderr = await asyncio.wait_for(process.communicate(), 30)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode == -signal.SIGKILL, stderr.decode()
        accepted_before = list(receiver.accepted)
        sent_before = len(receiver.requests)
        assert accepted_before == ids[: kill_at + 1]
        pending = await real_redis.xpending_range(
            kit.keys.events(org), GROUP, min="-", max="+", count=100
        )
        pending_at_kill = {p["message_id"].decode() for p in pending}

        async with sender(kit, org, receiver) as s:
            await s.deliver_pending()
            assert await s.lag() == 0

    accepted = receiver.accepted
    assert set(accepted) == set(ids)  # nothing lost
    assert list(dict.fromkeys(accepted)) == ids  # in stream order
    in_flight = set(accepted_before) & pending_at_kill  # accepted, not acknowledged at the kill
    assert len(in_flight) <= 1
    duplicates = {i for i in accepted if accepted.count(i) > 1}
    assert duplicates <= in_flight
    resent = {r.webhook_id for r in receiver.requests[sent_before:]}
    assert not resent & (set(accepted_before) - in_flight)  # acknowledged: never sent again


# -- arguments ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "secret",
    [
        "not-a-secret",
        "whsec_",
        "whsec_!!!notbase64!!!",
        "whsec_" + base64.b64encode(b"short").decode(),
        "whsec_" + base64.b64encode(bytes(65)).decode(),
    ],
)
async def test_a_bad_secret_is_invalid_input(fake_redis: redis_asyncio.Redis, secret: str) -> None:
    kit = bk.BudgetKit(fake_redis)
    with pytest.raises(bk.InvalidInput, match="whsec_") as caught:
        WebhookSender(kit, "org_1", url="http://127.0.0.1:9/hook", secret=secret)
    if secret.startswith("whsec_") and secret[6:]:
        assert secret[6:] not in str(caught.value)


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"url": "ftp://example.com/x"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"retry_delays_s": (1, -1)}, "retry delay"),
        ({"retry_delays_s": (float("nan"),)}, "retry delay"),
        ({"retry_delays_s": (1,) * 21}, "at most 20"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"event_types": ["budget.warning", "budget.nope"]}, "budget.nope"),
        ({"event_types": "budget.warning"}, "event_types"),
        ({"options": {"group": "g"}}, "options"),
    ],
)
async def test_bad_arguments_are_invalid_input(
    fake_redis: redis_asyncio.Redis, keywords: dict[str, Any], message: str
) -> None:
    kit = bk.BudgetKit(fake_redis)
    arguments: dict[str, Any] = {"url": "http://127.0.0.1:9/hook", "secret": SECRET, **keywords}
    with pytest.raises(bk.InvalidInput, match=message):
        WebhookSender(kit, "org_1", **arguments)


@pytest.mark.parametrize(
    "options",
    [{"batch_size": 0}, {"block_ms": 60_001}, {"group": "two words"}, {"claim_idle_ms": -1}],
)
def test_bad_options_are_invalid_input(options: dict[str, Any]) -> None:
    with pytest.raises(bk.InvalidInput):
        WebhookOptions(**options)


async def test_repr_shows_neither_secret_nor_path(fake_redis: redis_asyncio.Redis) -> None:
    kit = bk.BudgetKit(fake_redis)
    async with WebhookSender(
        kit, "org_1", url="https://hooks.example.com/T000/B000/XXXX", secret=SECRET
    ) as s:
        text = repr(s)
    assert "hooks.example.com" in text and "XXXX" not in text and SECRET[6:] not in text


async def test_dead_letters_limit_is_bounded(fake_redis: redis_asyncio.Redis) -> None:
    kit = bk.BudgetKit(fake_redis)
    with pytest.raises(bk.InvalidInput, match="limit"):
        await dead_letters(kit, "org_1", limit=0)
    assert await dead_letters(kit, "org_1") == []


async def test_run_webhooks_takes_a_list_of_organizations(
    fake_redis: redis_asyncio.Redis,
) -> None:
    kit = bk.BudgetKit(fake_redis)
    with pytest.raises(bk.InvalidInput, match="list"):
        await run_webhooks(kit, "org_1", url="http://127.0.0.1:9/", secret=SECRET)


def test_importable_without_the_extra() -> None:
    """httpx is the webhooks extra: ``import budgetkit.webhooks`` needs none, a sender says what
    to install."""
    program = (
        "import sys; sys.modules['httpx'] = None\n"
        "import budgetkit as bk, budgetkit.webhooks as w, redis.asyncio as r\n"
        "try:\n"
        "    w.WebhookSender(bk.BudgetKit(r.Redis()), 'o', url='http://h/', secret='')\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'budgetkit[webhooks]'" in done.stdout
