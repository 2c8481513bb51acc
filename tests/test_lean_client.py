"""The lean hot path (issue 14): every shortcut gives exactly what the long way gives.

The client builds its result models without validating them again (``models.trusted``), reads
common amounts and TTLs without Decimal arithmetic, accepts plain identifiers with one regex,
computes a scope's keys once, draws ids from a pooled CSPRNG and hashes a request only when it
carries an idempotency key. Each test here compares a shortcut with the long way on random
inputs: the same objects (equality, field values and their types, fields set, ``repr``), the same
``model_dump`` and the same JSON, the same micros, the same errors.
"""

from __future__ import annotations

import os
import types
import warnings
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import pytest
from cluster_fixtures import local_cluster  # noqa: F401  (a fixture: used by name)
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from redis.asyncio import Redis

import budgetkit as bk
from budgetkit._core import client as client_module
from budgetkit._core import ids
from budgetkit._core.amounts import MAX_MICROS, from_micros, plain_micros, to_micros
from budgetkit._core.convert import amounts_micros, ttl_ms
from budgetkit._core.errors import InvalidAmount, InvalidIdentifier, InvalidInput
from budgetkit._core.keys import SCOPES_CACHED_MAX, Keyspace
from budgetkit._core.models import (
    BudgetCheckResult,
    BudgetEventData,
    ErrorFields,
    LedgerEntry,
    trusted,
)
from budgetkit._core.replies import (
    ENTRY_WIDTH,
    EVENT_WIDTH,
    SNAPSHOT_WIDTH,
    ms_to_datetime,
    parse_reply,
)
from budgetkit._core.results import DebitResult, Reservation

ORG = "org_lean"
HEX = "0123456789abcdef"
EVENT_TYPES = ("budget.warning", "budget.paused", "budget.exhausted", "budget.resumed")
#: The last millisecond of year 9999 (datetime's range).
MS_MAX = 253_402_300_799_999


def assert_same_model(fast: BaseModel, slow: BaseModel) -> None:
    """``fast`` is the object ``slow`` is: type, equality, fields in order with the same values
    and value types, fields set, repr, dumps and JSON (nested models compared the same way)."""
    assert type(fast) is type(slow)
    assert fast == slow
    assert list(fast.__dict__) == list(slow.__dict__)
    for (name, a), b in zip(fast.__dict__.items(), slow.__dict__.values(), strict=True):
        assert type(a) is type(b), name
        if isinstance(a, BaseModel):
            assert_same_model(a, b)
        elif isinstance(a, list):
            assert len(a) == len(b)
            for x, y in zip(a, b, strict=True):
                if isinstance(x, BaseModel):
                    assert_same_model(x, y)
                else:
                    assert type(x) is type(y) and x == y
    assert fast.model_fields_set == slow.model_fields_set
    assert fast.__pydantic_extra__ == slow.__pydantic_extra__
    assert fast.__pydantic_private__ == slow.__pydantic_private__
    assert repr(fast) == repr(slow)
    assert fast.model_dump() == slow.model_dump()
    assert fast.model_dump(mode="json") == slow.model_dump(mode="json")
    assert fast.model_dump(exclude_unset=True) == slow.model_dump(exclude_unset=True)
    assert fast.model_dump_json() == slow.model_dump_json()


# -- strategies: values as the scripts reply them -----------------------------------------------

identifiers = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp")).filter(
        lambda c: c not in "{}" and not c.isspace() and c.isprintable()
    ),
    min_size=1,
    max_size=20,
)
texts = st.text(st.characters(codec="utf-8"), max_size=30)
hex_ids = st.text(st.sampled_from(HEX), min_size=32, max_size=32)
budget_ids = hex_ids.map(lambda h: f"bdgt_{h}")
ledger_ids = hex_ids.map(lambda h: f"ledger_{h}")
currencies = st.from_regex(r"[a-z0-9_]{1,8}", fullmatch=True)
times_ms = st.integers(0, MS_MAX)
micros = st.integers(-MAX_MICROS, MAX_MICROS)
limits = st.integers(1, MAX_MICROS)


def optional(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A reply field: '' for none, else the value."""
    return st.one_of(st.just(""), values)


@st.composite
def snapshot_fields(draw: st.DrawFn, budget_id: str, levels: int) -> list[Any]:
    limit = draw(limits)
    return [
        budget_id.encode(),
        draw(currencies).encode(),
        limit,
        draw(st.integers(-MAX_MICROS, limit)),
        draw(st.integers(0, 10**9)),
        draw(optional(st.integers(1, limit))),
        draw(st.sampled_from([b"active", b"paused", b"exhausted"])),
        draw(st.integers(0, 1)),
        draw(st.integers(0, 1_000_000)),
        draw(st.integers(0, levels)),
    ]


@st.composite
def entry_fields(draw: st.DrawFn, budget_ids_: Sequence[str]) -> list[Any]:
    return [
        draw(ledger_ids).encode(),
        draw(st.sampled_from(budget_ids_)).encode(),
        draw(micros),
        draw(texts.filter(bool)).encode(),
        draw(optional(texts.filter(bool))).encode(),
        draw(optional(texts.filter(bool))).encode(),
        draw(optional(identifiers)).encode(),
        draw(optional(texts.filter(bool))).encode(),
        draw(times_ms),
    ]


@st.composite
def event_fields(draw: st.DrawFn, budget_ids_: Sequence[str]) -> list[Any]:
    limit = draw(limits)
    threshold = draw(st.booleans())
    return [
        f"{draw(times_ms)}-{draw(st.integers(0, 99))}".encode(),
        b"budget.threshold" if threshold else draw(st.sampled_from(EVENT_TYPES)).encode(),
        draw(st.sampled_from(budget_ids_)).encode(),
        draw(st.integers(-MAX_MICROS, limit)),
        limit,
        draw(currencies).encode(),
        draw(optional(st.integers(1, limit))),
        draw(st.integers(0, 1)),
        draw(times_ms),
        draw(st.integers(1, 10_000_000)) if threshold else b"",
    ]


@st.composite
def scope_replies(draw: st.DrawFn) -> tuple[list[Any], list[tuple[str, str]]]:
    """A raw reply of the scope scripts (debit, commit, check): snapshots, entries, events."""
    levels = [("session", "s1"), ("user", "u1"), ("org", ORG)][: draw(st.integers(0, 3))]
    bids = draw(st.lists(budget_ids, min_size=1, max_size=4, unique=True))
    raw: list[Any] = [b"replayed"] if draw(st.booleans()) else []
    raw += [draw(times_ms), len(bids)]
    for bid in bids:
        raw += draw(snapshot_fields(bid, len(levels)))
    entries = draw(st.lists(entry_fields(bids), max_size=4))
    raw.append(len(entries))
    raw += [field for entry in entries for field in entry]
    events = draw(st.lists(event_fields(bids), max_size=3))
    raw.append(len(events))
    raw += [field for event in events for field in event]
    return raw, levels


def test_reply_widths_are_the_strategies() -> None:
    assert (SNAPSHOT_WIDTH, ENTRY_WIDTH, EVENT_WIDTH) == (10, 9, 10)


# -- models built from replies ------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(scope_replies())
def test_reply_models_equal_validated_models(reply: tuple[list[Any], list[Any]]) -> None:
    raw, levels = reply
    parsed = parse_reply(raw, snapshots=True, levels=levels)
    currencies_of = parsed.currencies()
    slow_entries = [e.to_entry(currencies_of.get(e.budget_id)) for e in parsed.entries]
    fast_entries = parsed.ledger_entries()
    assert len(fast_entries) == len(slow_entries) == len(parsed.entries)
    for fast, slow in zip(fast_entries, slow_entries, strict=True):
        assert_same_model(fast, slow)
    slow_events = [e.to_event(ORG) for e in parsed.events]
    fast_events = parsed.budget_events(ORG)
    for fast_event, slow_event in zip(fast_events, slow_events, strict=True):
        assert_same_model(fast_event, slow_event)
    check = bk.BudgetCheckResult(action="continue")
    values: dict[str, Any] = {
        "check": check,
        "entries": fast_entries,
        "events": fast_events,
        "unbudgeted": ["eur"],
        "replayed": parsed.replayed,
    }
    assert_same_model(trusted(DebitResult, **values), DebitResult(**values))


@settings(max_examples=200, deadline=None)
@given(
    granted=st.booleans(),
    amounts=st.dictionaries(currencies, micros.map(abs).map(from_micros), max_size=3),
    expires_ms=times_ms,
    hold=hex_ids,
    replayed=st.booleans(),
)
def test_reservations_equal_validated_ones(
    granted: bool, amounts: dict[str, float], expires_ms: int, hold: str, replayed: bool
) -> None:
    scope = bk.Scope(organization_id=ORG, session_id="s1", user_id="u1")
    fields = ErrorFields(budget_id=f"bdgt_{hold}", currency="usd", limit=1.0, spent=0.5)
    check = BudgetCheckResult(action="stop", message="no", error_fields=fields, balance=0.0)
    values: dict[str, Any] = {"granted": granted, "scope": scope, "amounts": amounts}
    if granted:  # as reserve() passes them
        values |= {
            "id": f"hold_{hold}",
            "expires_at": ms_to_datetime(expires_ms),
            "check": BudgetCheckResult.ok(),
            "replayed": replayed,
        }
    else:
        values["check"] = check
    assert_same_model(trusted(Reservation, **values), Reservation(**values))


def test_trusted_fills_defaults_and_rejects_unknown_or_missing_fields() -> None:
    assert_same_model(trusted(ErrorFields), ErrorFields())
    assert_same_model(trusted(ErrorFields, held=1.5), ErrorFields(held=1.5))
    check = BudgetCheckResult.ok()
    assert_same_model(trusted(DebitResult, check=check), DebitResult(check=check))
    first, second = trusted(DebitResult, check=check), trusted(DebitResult, check=check)
    assert first.entries is not second.entries  # each its own default list
    with pytest.raises(TypeError, match="unknown"):
        trusted(ErrorFields, nope=1)
    with pytest.raises(TypeError, match="missing"):
        trusted(BudgetEventData, budget_id="bdgt_" + "0" * 32)


def test_trusted_refuses_models_it_cannot_build_exactly() -> None:
    class WithPrivate(BaseModel):
        _cache: int = 0
        x: int = 1

    class WithMutableDefault(BaseModel):
        x: list[int] = []  # pydantic copies it per instance; trusted() cannot

    for model in (WithPrivate, WithMutableDefault):
        with pytest.raises(TypeError, match="cannot build"):
            trusted(model)


# -- the hot path, end to end -------------------------------------------------------------------


def revalidated(model: BaseModel) -> BaseModel:
    """The same model built the long way from the fields it was given (nested models too)."""
    values: dict[str, Any] = {}
    for name, value in model.__dict__.items():
        if name not in model.model_fields_set:
            continue
        if isinstance(value, BaseModel):
            value = revalidated(value)
        elif isinstance(value, list):
            value = [revalidated(v) if isinstance(v, BaseModel) else v for v in value]
        values[name] = value
    return type(model)(**values)


async def test_hot_path_results_equal_validated_models(redis: Redis) -> None:
    kit = bk.BudgetKit(redis, batching=False)
    scope = bk.Scope(organization_id=ORG, session_id="s1", user_id="u1")
    for kind, sid, limit in (("session", "s1", 1), ("user", "u1", 10), ("org", ORG, 100)):
        await kit.create_budget(ORG, kind, sid, "usd", limit, thresholds=[0.1])
    debit = await kit.debit(scope, {"usd": 0.5, "eur": 1}, ref_id="gen_1", description="d")
    assert debit.entries and debit.events and debit.unbudgeted == ["eur"]
    hold = await kit.reserve(scope, {"usd": 0.1}, ttl_seconds=30)
    denied = await kit.reserve(scope, {"usd": 5})
    assert hold.granted and not denied.granted
    commit = await kit.commit(hold, {"usd": 0.2}, idempotency_key="c1")
    replay = await kit.commit(hold, {"usd": 0.2}, idempotency_key="c1")
    assert replay.replayed
    for result in (debit, hold, denied, commit, replay):
        assert_same_model(result, revalidated(result))
    assert denied.model_fields_set == {"granted", "scope", "amounts", "check"}  # as before


async def test_no_hash_and_no_json_without_an_idempotency_key(
    fake_redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    kit = bk.BudgetKit(fake_redis, batching=False)
    scope = bk.Scope(organization_id=ORG, session_id="s1")
    await kit.create_budget(ORG, "session", "s1", "usd", 10)

    def refuse(*args: object, **kwargs: object) -> Any:
        raise AssertionError("a call without an idempotency key hashed or serialized it")

    monkeypatch.setattr(client_module, "hashlib", types.SimpleNamespace(sha256=refuse))
    monkeypatch.setattr(client_module, "json", types.SimpleNamespace(dumps=refuse))
    await kit.check(scope)
    await kit.check_tool(scope)
    await kit.debit(scope, {"usd": 1})
    hold = await kit.reserve(scope, {"usd": 1})
    await kit.commit(hold, {"usd": 1})
    await kit.release(await kit.reserve(scope, {"usd": 1}))
    async with kit.spend(scope, {"usd": 1}) as guard:
        await guard.record({"usd": 0.5})
    with pytest.raises(AssertionError, match="idempotency"):
        await kit.debit(scope, {"usd": 1}, idempotency_key="k1")


# -- scope keys ----------------------------------------------------------------------------------


def test_scope_keys_are_the_keyspace_keys_and_computed_once() -> None:
    keys = Keyspace("pfx")
    scope = bk.Scope(organization_id=ORG, session_id="c", root_session_id="r", agent_id="a")
    got = keys.scope(scope)
    levels = scope.levels()
    assert got.levels == tuple(levels)
    assert got.subjects == tuple(keys.subject(ORG, kind, sid) for kind, sid in levels)
    assert got.org == keys.org(ORG) and got.events == keys.events(ORG)
    assert got.subjects[0] == "pfx:{org_lean}:s:session:r"  # the root session's budgets
    same = bk.Scope(organization_id=ORG, session_id="c", root_session_id="r", agent_id="a")
    assert keys.scope(same) is got  # an equal scope: the keys computed once
    other = Keyspace("other").scope(scope)
    assert other.org == "other:{org_lean}:" and other is not got
    assert SCOPES_CACHED_MAX >= 1024


# -- ids -----------------------------------------------------------------------------------------


def test_ledger_id_base_is_the_head_of_a_ledger_id() -> None:
    bases = [ids.new_ledger_id_base() for _ in range(20_000)]
    assert len(set(bases)) == len(bases)
    assert bases == sorted(bases)  # time-ordered, as the ledger ids they start
    for base in bases[:100]:
        assert len(base) == ids.LEDGER_ID_BASE_LEN and base.startswith("ledger_")
        ids.parse_ledger_id(base + "00")
        assert base[7 + 12] == "7"  # the UUIDv7 version nibble after 48 bits of time
        assert base[7 + 16] in "89ab"  # its variant
    head = ids.new_ledger_id()[: ids.LEDGER_ID_BASE_LEN]
    assert head[:19] <= ids.new_ledger_id_base()[:19]  # the same clock (ms, hex)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_never_repeats_its_parents_random_bits() -> None:
    ids.uuid7_hex()
    assert ids._RANDOM_WORDS  # words the child would inherit
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # the child: its ids, then exit without running the parent's cleanup
        os.close(read)
        os.write(write, " ".join(ids.uuid7_hex() for _ in range(40)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split()
    os.waitpid(pid, 0)
    parent = [ids.uuid7_hex() for _ in range(40)]
    assert len(child) == 40
    assert not {c[16:] for c in child} & {p[16:] for p in parent}


# -- identifiers -------------------------------------------------------------------------------


class Text(str):
    """A str subclass: validate_identifier's fast path never takes it (the long way)."""


def outcome(check: Callable[[], str]) -> tuple[str, str]:
    try:
        return "ok", check()
    except InvalidIdentifier as error:
        return "error", str(error)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.text(max_size=300),
        st.text(st.characters(min_codepoint=0xD7F0, max_codepoint=0xE010), max_size=4),
        st.text(st.characters(min_codepoint=0, max_codepoint=127), min_size=250, max_size=260),
        st.text(st.characters(min_codepoint=32, max_codepoint=127), max_size=20),
    )
)
def test_identifier_fast_path_agrees_with_the_rules(value: str) -> None:
    fast = outcome(lambda: ids.validate_identifier(value, field="f"))
    slow = outcome(lambda: ids.validate_identifier(Text(value), field="f"))
    assert fast == slow


# -- amounts, TTLs, times ------------------------------------------------------------------------

_MICRO = Decimal("0.000001")


def exact_micros(value: int | float) -> int | None:
    """SPEC §2 the long way: the shortest decimal, rounded half-up to the micro-unit (None when
    out of range or negative)."""
    exact = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if not exact.is_finite() or exact < 0:
        return None
    try:
        micros_ = int(exact.quantize(_MICRO, rounding=ROUND_HALF_UP).scaleb(6))
    except InvalidOperation:
        return None
    return micros_ if micros_ <= MAX_MICROS else None


amounts = st.one_of(
    st.floats(min_value=0, max_value=1e11, allow_nan=False),
    st.floats(min_value=0, max_value=1e-3),
    st.decimals(min_value=0, max_value=10**9, places=6).map(lambda d: float(str(d))),
    st.integers(-(10**12), 10**12),
    st.floats(),
)


@settings(max_examples=2000, deadline=None)
@given(amounts)
def test_plain_micros_is_exact_or_declines(value: float) -> None:
    fast = plain_micros(value)
    if fast is None:
        return
    assert fast == exact_micros(value)
    assert to_micros(value, field="x", strict=True) == fast  # nothing to round
    assert amounts_micros({"usd": value}) == {"usd": fast}


@settings(max_examples=1000, deadline=None)
@given(amounts)
def test_to_micros_is_spec_rounding(value: float) -> None:
    expected = exact_micros(value)
    if expected is None:
        with pytest.raises(InvalidAmount):
            to_micros(value, field="x")
    else:
        assert to_micros(value, field="x") == expected


def test_plain_micros_declines_what_it_cannot_decide() -> None:
    assert plain_micros(0.000001) == 1 and plain_micros(1.5e-05) == 15
    assert plain_micros(0.0123) == 12_300 and plain_micros(3) == 3_000_000
    for value in (True, -1, -0.0, 2.5e-07, 1e16, float("nan"), float("inf"), "1", Decimal(1)):
        assert plain_micros(value) is None, value
    assert plain_micros(9007199254.740991) is None  # the float is 9007199254.740992: too large


def exact_ttl_ms(value: float) -> int:
    exact = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    return max(1, int(exact.scaleb(3).quantize(Decimal(1), rounding=ROUND_HALF_UP)))


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.integers(-10, 7 * 86_400 + 10),
        st.floats(min_value=-1, max_value=7 * 86_400 + 1),
        st.integers(0, 7 * 86_400).map(float),
    )
)
def test_ttl_fast_path_agrees(value: float) -> None:
    if 0 < value <= 7 * 86_400:
        assert ttl_ms(value) == exact_ttl_ms(value)
    else:
        with pytest.raises(InvalidInput):
            ttl_ms(value)


def old_ms_to_datetime(ms: int) -> datetime:
    seconds, millis = divmod(ms, 1000)
    return datetime.fromtimestamp(seconds, tz=UTC).replace(microsecond=millis * 1000)


@settings(max_examples=500, deadline=None)
@given(st.one_of(times_ms, st.integers(-(10**13), 0), st.integers(MS_MAX - 10, 2**53)))
def test_ms_to_datetime_is_the_exact_utc_time(ms: int) -> None:
    try:
        expected = old_ms_to_datetime(ms)
    except (ValueError, OverflowError, OSError) as error:
        with pytest.raises(type(error)):
            ms_to_datetime(ms)
        return
    got = ms_to_datetime(ms)
    assert got == expected and got.tzinfo is UTC and got.utcoffset() == expected.utcoffset()
    assert ms_to_datetime(ms) is got  # the same time again: the same object


def test_trusted_models_are_frozen_too() -> None:
    entry = LedgerEntry(
        id="ledger_" + "0" * 32,
        budget_id="bdgt_" + "0" * 32,
        amount=1.0,
        meter_source="m",
        created_at=ms_to_datetime(0),
    )
    given = {name: entry.__dict__[name] for name in entry.model_fields_set}
    fast = trusted(LedgerEntry, **given)
    with pytest.raises(Exception, match="frozen"):
        fast.amount = 2.0
    assert_same_model(fast, entry)


# -- hiredis packing of budgetkit's own commands ---------------------------------------------


def _debit_command(runtime_cluster: bool = False) -> list[Any]:
    """The FCALL of a debit as the script runtime builds it: str and int arguments."""
    keys = [f"bk:{{{ORG}}}:s:session:s1", f"bk:{{{ORG}}}:rq:{'ab' * 15}", f"bk:{{{ORG}}}:events"]
    args: list[Any] = [f"bk:{{{ORG}}}:", "", f"ledger_{'cd' * 15}", "=", 86_400_000, "manual"]
    args += ["", "", "", "dé", "", 2, "usd", 1_000, "tokens", 9_007_199_254_740_991]
    return ["FCALL", "budgetkit_0123456789ab_debit", len(keys), *keys, *args]


@pytest.mark.parametrize(
    "connection_class",
    [
        pytest.param("Connection", id="tcp"),
        pytest.param("SSLConnection", id="tls"),
        pytest.param("UnixDomainSocketConnection", id="unix"),
    ],
)
def test_fast_packing_sends_the_same_bytes(connection_class: str) -> None:
    """budgetkit's FCALLs packed by hiredis are byte for byte what redis-py packs; every other
    command (here with a float, a bytes value and a two-word name) takes redis-py's own path."""
    from redis.asyncio import connection as connections

    from budgetkit._core.packing import fast_packing

    base = getattr(connections, connection_class)
    fast = fast_packing(base)
    assert fast is not base and fast_packing(fast) is fast and fast_packing(base) is fast
    plain, quick = base(), fast()
    for command in (
        _debit_command(),
        ["FCALL_RO", "budgetkit_0123456789ab_check_ro", 1, "k", "", 7],
        ["SET", "k", 1.5],
        ["CONFIG GET", "maxmemory"],
        ["HSET", "k", b"\xff", "v"],
    ):
        assert b"".join(quick.pack_command(*command)) == b"".join(plain.pack_command(*command))
    assert len(quick.pack_command(*_debit_command())) == 1  # hiredis: one buffer


async def test_from_url_clients_pack_with_hiredis(redis_server_url: str) -> None:
    """A kit made by from_url runs on connections that pack its FCALLs with hiredis and gives
    the same results as a kit on a plain client; a client passed in is left as it is."""
    plain = Redis.from_url(redis_server_url)
    plain_class = plain.connection_pool.connection_class
    passed_in = bk.BudgetKit(plain, batching=False)
    assert plain.connection_pool.connection_class is plain_class
    assert not getattr(plain_class, "_budgetkit_fast_packing", False)
    async with passed_in, bk.BudgetKit.from_url(redis_server_url) as kit:
        assert kit.redis.connection_pool.connection_class._budgetkit_fast_packing
        await kit.redis.flushall()
        scope = bk.Scope(organization_id=ORG, session_id="s1")
        made = await kit.create_budget(ORG, "session", "s1", "usd", 10, thresholds=[0.5])
        debit = await kit.debit(scope, {"usd": 6}, description="naïve ✓")
        assert [e.type for e in debit.events] == ["budget.threshold"]
        assert (await kit.check(scope)).action == "continue"
        seen = await passed_in.get_budget(ORG, made.id)  # written by one, read by the other
        assert seen.balance == 4
        assert (await passed_in.ledger(ORG, made.id))[0].description == "naïve ✓"  # newest first


@pytest.mark.real
async def test_cluster_nodes_pack_with_hiredis(request: pytest.FixtureRequest) -> None:
    """On a Cluster from from_url every node's connections (the startup nodes and those found
    from CLUSTER SLOTS) pack budgetkit's FCALLs with hiredis, and the calls work."""
    cluster = request.getfixturevalue("local_cluster")
    ports = ",".join(f"127.0.0.1:{port}" for port in cluster.ports)
    async with bk.BudgetKit.from_url(f"redis+cluster://{ports}") as kit:
        await kit.redis.flushall()
        for org in ("org_p1", "org_p2", "org_p3"):
            scope = bk.Scope(organization_id=org, session_id="s1")
            await kit.create_budget(org, "session", "s1", "usd", 10)
            made = await kit.debit(scope, {"usd": 4})
            assert [entry.amount for entry in made.entries] == [4]
        nodes = kit.redis.nodes_manager.nodes_cache.values()
        assert len(nodes) >= 3
        for node in nodes:
            assert node.connection_class._budgetkit_fast_packing, node.name
