"""Identifiers: UUIDv7 ids budgetkit creates, and caller-supplied opaque ids (SPEC §1, §4)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from budgetkit._core.errors import InvalidIdentifier, InvalidInput
from budgetkit._core.ids import (
    IDENTIFIER_BYTES_MAX,
    new_budget_id,
    new_hold_id,
    new_ledger_id,
    normalize_currency,
    parse_budget_id,
    parse_hold_id,
    parse_ledger_id,
    uuid7_hex,
    validate_identifier,
)

HEX32 = "01933b5a000070008000000000000001"


def as_uuid(hex32: str) -> uuid.UUID:
    return uuid.UUID(hex=hex32)


# ---------------------------------------------------------------------------
# UUIDv7
# ---------------------------------------------------------------------------


def test_uuid7_layout() -> None:
    value = uuid7_hex(now_ms=0x01933B5A0000)
    assert len(value) == 32
    assert value == value.lower()
    parsed = as_uuid(value)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert parsed.int >> 80 == 0x01933B5A0000


def test_uuid7_uses_the_clock() -> None:
    before_ms = time.time_ns() // 1_000_000
    value = uuid7_hex()
    after_ms = time.time_ns() // 1_000_000
    stamp_ms = as_uuid(value).int >> 80
    # A burst of ids may borrow a few milliseconds ahead (counter overflow); never behind.
    assert before_ms <= stamp_ms <= after_ms + 50


def test_uuid7_is_monotonic_within_a_process() -> None:
    values = [uuid7_hex() for _ in range(20_000)]
    assert values == sorted(values)
    assert len(set(values)) == len(values)
    assert all(as_uuid(v).version == 7 for v in values)


def test_uuid7_monotonic_within_one_explicit_millisecond() -> None:
    values = [uuid7_hex(now_ms=1_700_000_000_000) for _ in range(1000)]
    assert len(set(values)) == len(values)
    assert all(as_uuid(v).int >> 80 == 1_700_000_000_000 for v in values)


def test_uuid7_explicit_time_is_honoured_and_does_not_drag_the_clock() -> None:
    far_future_ms = 2**48 - 1
    assert as_uuid(uuid7_hex(now_ms=far_future_ms)).int >> 80 == far_future_ms
    assert as_uuid(uuid7_hex(now_ms=5)).int >> 80 == 5
    assert as_uuid(uuid7_hex()).int >> 80 < far_future_ms


def test_uuid7_threads_get_distinct_ids() -> None:
    results: list[list[str]] = [[] for _ in range(8)]

    def work(out: list[str]) -> None:
        out.extend(uuid7_hex() for _ in range(2000))

    threads = [threading.Thread(target=work, args=(out,)) for out in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    merged = [value for out in results for value in out]
    assert len(set(merged)) == len(merged)
    assert all(out == sorted(out) for out in results)


@pytest.mark.parametrize("now_ms", [-1, 2**48, True, 1.5, "1"])
def test_uuid7_rejects_bad_time(now_ms: object) -> None:
    with pytest.raises(InvalidInput):
        uuid7_hex(now_ms=now_ms)  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=2**48 - 1))
def test_uuid7_valid_for_any_time(now_ms: int) -> None:
    parsed = as_uuid(uuid7_hex(now_ms=now_ms))
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert parsed.int >> 80 == now_ms


# ---------------------------------------------------------------------------
# Typed ids
# ---------------------------------------------------------------------------

TYPED: list[tuple[str, Callable[[], str], Callable[[object], str]]] = [
    ("bdgt", new_budget_id, parse_budget_id),
    ("ledger", new_ledger_id, parse_ledger_id),
    ("hold", new_hold_id, parse_hold_id),
]


@pytest.mark.parametrize(("prefix", "new", "parse"), TYPED)
def test_new_ids_have_prefix_and_parse(
    prefix: str, new: Callable[[], str], parse: Callable[[object], str]
) -> None:
    value = new()
    head, _, tail = value.partition("_")
    assert head == prefix
    assert as_uuid(tail).version == 7
    assert parse(value) == value
    assert parse(f"{prefix}_{HEX32}") == f"{prefix}_{HEX32}"


def test_spec_example_budget_id() -> None:
    assert parse_budget_id("bdgt_01933b5a000070008000000000000001").startswith("bdgt_")


@pytest.mark.parametrize(("prefix", "new", "parse"), TYPED)
@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: f"{p}_{HEX32.upper()}",
        lambda p: f"{p}_{HEX32[:-1]}",
        lambda p: f"{p}_{HEX32}0",
        lambda p: f"{p}_01933b5a00007000800000000000001",  # the seed's 31-hex example
        lambda p: f"{p}_{HEX32[:-1]}g",
        lambda p: f"{p}-{HEX32}",
        lambda p: f"{p.upper()}_{HEX32}",
        lambda p: f"x{p}_{HEX32}",
        lambda p: f"{p}_{HEX32}\n",
        lambda p: f" {p}_{HEX32}",
        lambda p: f"{p}_01933b5a-0000-7000-8000-000000000001",
        lambda p: HEX32,
        lambda p: "",
    ],
)
def test_typed_ids_reject_malformed(
    prefix: str,
    new: Callable[[], str],
    parse: Callable[[object], str],
    mutate: Callable[[str], str],
) -> None:
    with pytest.raises(InvalidIdentifier):
        parse(mutate(prefix))


@pytest.mark.parametrize("value", [None, 5, b"bdgt_" + HEX32.encode(), ["bdgt"]])
def test_typed_ids_reject_non_str(value: object) -> None:
    with pytest.raises(InvalidIdentifier, match="must be a str"):
        parse_budget_id(value)


def test_typed_ids_reject_other_prefixes() -> None:
    with pytest.raises(InvalidIdentifier, match="bdgt_"):
        parse_budget_id(f"hold_{HEX32}")
    with pytest.raises(InvalidIdentifier, match="hold_"):
        parse_hold_id(f"ledger_{HEX32}")
    with pytest.raises(InvalidIdentifier, match="ledger_"):
        parse_ledger_id(f"bdgt_{HEX32}")


# ---------------------------------------------------------------------------
# Opaque identifiers
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "org_1",
        "session_01933b5a000070008000000000000001",
        "a",
        "x" * IDENTIFIER_BYTES_MAX,
        "é" * (IDENTIFIER_BYTES_MAX // 2),
        "用户-42",
        "user@example.com",
        "a:b/c|d#e[f]",
        "🙂",
    ],
)
def test_identifier_accepted(value: str) -> None:
    assert validate_identifier(value, field="subject_id") == value


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("", "must not be empty"),
        ("x" * (IDENTIFIER_BYTES_MAX + 1), "too long: 257 UTF-8 bytes"),
        ("é" * (IDENTIFIER_BYTES_MAX // 2 + 1), "too long: 258 UTF-8 bytes"),
        ("a b", "whitespace"),
        ("a\tb", "whitespace"),
        ("a\nb", "whitespace"),
        ("a\u00a0b", "whitespace"),
        ("a\u3000b", "whitespace"),
        ("a\u2028b", "whitespace"),
        ("a\x00b", "control characters"),
        ("a\x7fb", "control characters"),
        ("a\x1bb", "control characters"),
        ("a\u200bb", "printable"),
        ("a\ufeffb", "printable"),
        ("a\ud800b", "UTF-8"),
        ("{org}", "'{' or '}'"),
        ("a}", "'{' or '}'"),
    ],
)
def test_identifier_rejected_with_rule(value: str, rule: str) -> None:
    with pytest.raises(InvalidIdentifier) as caught:
        validate_identifier(value, field="organization_id")
    message = str(caught.value)
    assert message.startswith("organization_id ")
    assert rule in message


@pytest.mark.parametrize("value", [None, 1, b"org", ["org"]])
def test_identifier_rejects_non_str(value: object) -> None:
    with pytest.raises(InvalidIdentifier, match="session_id must be a str"):
        validate_identifier(value, field="session_id")


@given(st.text(min_size=1, max_size=80))
def test_identifier_accepts_exactly_the_documented_set(value: str) -> None:
    allowed = (
        len(value.encode("utf-8", errors="surrogatepass")) <= IDENTIFIER_BYTES_MAX
        and not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
        and all(c.isprintable() and not c.isspace() and c not in "{}" for c in value)
    )
    if allowed:
        assert validate_identifier(value, field="f") == value
    else:
        with pytest.raises(InvalidIdentifier):
            validate_identifier(value, field="f")


# ---------------------------------------------------------------------------
# Currencies
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("usd", "usd"),
        ("USD", "usd"),
        ("Tokens", "tokens"),
        ("credits", "credits"),
        ("gpu_seconds_2", "gpu_seconds_2"),
        ("A" * 32, "a" * 32),
        ("_", "_"),
    ],
)
def test_currency_normalized(value: str, expected: str) -> None:
    assert normalize_currency(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "a" * 33,
        "us d",
        "usd ",
        "us-d",
        "€",
        "usd\n",
        "\u212a",
        "\uff55\uff53\uff44",
        "us.d",
        "{usd}",
    ],
)
def test_currency_rejected(value: str) -> None:
    with pytest.raises(InvalidIdentifier, match="currency"):
        normalize_currency(value)


@pytest.mark.parametrize("value", [None, 1, b"usd"])
def test_currency_rejects_non_str(value: object) -> None:
    with pytest.raises(InvalidIdentifier, match="currency must be a str"):
        normalize_currency(value)
