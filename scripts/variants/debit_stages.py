"""Where Redis's time goes in a 3-budget debit: the debit stopped after each stage, cumulative.

Run: ``python3 scripts/lua_variants.py scripts/variants/debit_stages.py --calls 2000 --rounds 3``
(the debit rows; each variant returns an empty reply at its stage; the last is the real debit).
The difference between consecutive rows is what that stage costs, measured the way the
benchmark drives a debit (FCALL, Redis ``commandstats``).
"""

from __future__ import annotations

DEBIT = "debit.lua"
EMPTY = "if true then return {1, 0, 0, 0, 1} end\n"  # now, no budgets/entries/events, valid_until


def _stop_before(anchor: str) -> dict[str, list[tuple[str, str]]]:
    return {DEBIT: [(anchor, EMPTY + anchor)]}


VARIANTS = [
    ("0 call, no work", _stop_before("local events_key, idem_key = KEYS[#KEYS]")),
    ("1 +clock, batch", _stop_before("local fingerprint, idem_ttl_ms =")),
    ("2 +arguments", _stop_before("local earlier = earlier_reply(")),
    ("3 +record read", _stop_before("local budgets = load_scope(")),
    ("4 +scope load", _stop_before("refuse_unpriced(budgets, unpriced)")),
    ("5 +charge", _stop_before("flush(batch, events_key)")),
    ("6 +HSET, XADD", _stop_before("local out = reply(batch, budgets, push_snapshot)")),
    (
        "7 +reply",
        {DEBIT: [("idem_store(idem_key, fingerprint, batch, idem_ttl_ms, out)", "")]},
    ),
    ("8 +record write", {}),
]
