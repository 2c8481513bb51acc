"""Constants the Lua scripts and the Python layer share are stated once per language and equal.

The scripts cannot import Python, so a bound like the largest amount or the threshold count is
written in lua/_lib.lua and in a Python module; this test reads the Lua prelude's ``local NAME =
value`` lines and compares each with its Python twin.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from budgetkit._core import amounts, convert, ids, keys, redelivery, replies
from budgetkit._core import rules as evaluate

LIB = Path(__file__).resolve().parent.parent / "lua" / "_lib.lua"
_LOCAL = re.compile(r"^local ([A-Z_, ]+?) = (.+?)(?:\s*--.*)?$", re.MULTILINE)


def lua_constants() -> dict[str, str]:
    """``local NAME = value`` (and ``local A, B = x, y``) of the prelude, as source text."""
    found: dict[str, str] = {}
    for names, values in _LOCAL.findall(LIB.read_text(encoding="utf-8")):
        name_list = [n.strip() for n in names.split(",")]
        value_list = [v.strip() for v in values.split(",")] if len(name_list) > 1 else [values]
        found.update(zip(name_list, value_list, strict=True))
    return found


def lua_value(name: str) -> int | str:
    """A constant's value: an integer expression of other constants, or a quoted string."""
    constants = lua_constants()
    text = constants[name].strip()
    if text[:1] == "'":
        return text.strip("'")
    for other, value in constants.items():  # e.g. THRESHOLD_PPM_MAX = 10 * PPM
        text = re.sub(rf"\b{other}\b", value.strip(), text)
    assert re.fullmatch(r"[0-9 *+()-]+", text), (name, text)
    return int(eval(text))


def lua_list_length(name: str) -> int:
    """How many quoted strings a ``local NAME = { 'a', 'b' }`` table lists."""
    source = LIB.read_text(encoding="utf-8")
    match = re.search(rf"^local {name} = \{{([^}}]*)\}}", source, re.MULTILINE)
    assert match is not None, name
    return len(re.findall(r"'[^']*'", match.group(1)))


@pytest.mark.parametrize(
    ("lua_name", "python_value"),
    [
        ("MAX_MICROS", amounts.MAX_MICROS),
        ("PPM", evaluate.PPM),
        ("THRESHOLDS_MAX", convert.THRESHOLDS_MAX),
        ("THRESHOLD_PPM_MAX", convert.THRESHOLD_PPM_MAX),
        ("CURRENCIES_PER_CALL_MAX", convert.CURRENCIES_PER_DEBIT_MAX),
        ("ID_CHARS_MAX", ids.IDENTIFIER_BYTES_MAX),
        ("LEDGER_ID_BASE_LEN", ids.LEDGER_ID_BASE_LEN),
        ("AUTO_FINGERPRINT", redelivery.AUTO_FINGERPRINT),
        ("NEVER_MS", redelivery.KEEP_FOREVER_MS),
        ("BUDGET_KEY", keys.KEY_SUFFIXES["budget"]),
        ("LEDGER_KEY", keys.KEY_SUFFIXES["ledger"]),
        ("HOLD_INDEX_KEY", keys.KEY_SUFFIXES["hold_index"]),
        ("HOLD_AMOUNTS_KEY", keys.KEY_SUFFIXES["hold_amounts"]),
    ],
)
def test_lua_and_python_constants_agree(lua_name: str, python_value: int | str) -> None:
    assert lua_value(lua_name) == python_value


def test_reply_widths_agree() -> None:
    assert lua_list_length("ENTRY_FIELDS") == replies.ENTRY_WIDTH
    assert lua_list_length("EVENT_FIELDS") + 1 == replies.EVENT_WIDTH  # + the stream id


def test_ledger_id_base_is_a_prefix_of_a_ledger_id() -> None:
    ledger_id = ids.new_ledger_id()
    base = ledger_id[: ids.LEDGER_ID_BASE_LEN]
    assert base.startswith("ledger_") and len(ledger_id) == ids.LEDGER_ID_BASE_LEN + 2


def test_python_builds_every_key_from_the_suffix_table() -> None:
    space = keys.Keyspace("p")
    org = "o1"
    built = {
        "budget": space.budget(org, "x"),
        "subject": space.subject(org, "user", "x"),
        "org_index": space.org_index(org),
        "ledger": space.ledger(org, "x"),
        "events": space.events(org),
        "idempotency": space.idempotency(org, "debit", "x"),
        "request": space.request(org, "x"),
        "hold": space.hold(org, "x"),
        "hold_index": space.hold_index(org, "x"),
        "hold_amounts": space.hold_amounts(org, "x"),
        "webhook_dead_letters": space.webhook_dead_letters(org),
    }
    assert set(built) == set(keys.KEY_SUFFIXES)
    for name, key in built.items():
        assert key.startswith("p:{o1}:" + keys.KEY_SUFFIXES[name]), name
    assert len(set(built.values())) == len(built)  # no two kinds share a key
