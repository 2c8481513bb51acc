"""What the Lua of a scope operation costs, piece by piece, without the noise of a call each.

Usage: ``python3 scripts/lua_microprofile.py [--repeat 300] [--rounds 5] [--lua DIR]``

A private redis-server gets a 3-budget scope (made by budgetkit); each piece below runs
``--repeat`` times inside ONE ``EVAL`` of the prelude (lua/_lib.lua) plus a loop, and Redis's
``usec_per_call`` divided by the repeat count, minus an empty loop's, is its cost in µs. One long
call per piece: the machine's noise (scheduling, the client) mostly cancels out, which A/B runs
of whole calls (scripts/lua_variants.py) cannot do on a shared machine. The pieces that build
on each other (scope load, charge, reply, writes) are cumulative. Prints the median and the
minimum of ``--rounds``. ``--lua DIR``: the prelude of another checkout's ``lua/`` (an A/B:
run it with both, ``git worktree add /tmp/base HEAD``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import redis.asyncio as redis_asyncio  # noqa: E402
import redis_server  # noqa: E402

import budgetkit as bk  # noqa: E402
from budgetkit._core.runtime import lua_dir  # noqa: E402

ORG = "org_mp"
NOW_MS = 1733000000000
SUBJECTS = (("session", "s1"), ("agent", "a1"), ("user", "u1"))
BATCH = "local batch = new_batch(P, NOW, IDB) "
LOADED = BATCH + "local bs = load_scope(batch, SK, false, CHARGE) "
CHARGED = LOADED + "charge(batch, bs, AM, 'manual', '', '', '', '') "
#: piece -> Lua run in the loop (cumulative where it builds on the one before).
PIECES = {
    "empty loop": "",
    "HMGET 15 fields (READ)": "redis.call('HMGET', BK, 'id', 'cur', 'lim', 'soft', 'bal', "
    "'held', 'wf', 'pk', 'ps', 'pu', 'pstart', 'status', 'op', 'ack', 'wz')",
    "HGET 1 field": "redis.call('HGET', BK, 'bal')",
    # A packed layout (issue 14's alternative): the 9 balance-state fields as one text field
    # ('pk' stands in for it here: the read costs the same), read with the configuration and
    # parsed, or built and written.
    "packed: HMGET 9 + parse": "local v = redis.call('HMGET', BK, 'id', 'cur', 'lim', 'soft', "
    "'wf', 'pk', 'ps', 'pu', 'status') local a, b, c, d, e, f, g, h, i = string.match(STATE, "
    "'^([^:]*):([^:]*):([^:]*):([^:]*):([^:]*):([^:]*):([^:]*):([^:]*):([^:]*)$')",
    "HSET 9 state fields": "redis.call('HSET', SCRATCH, 'bal', fmt(999000), 'held', fmt(0), "
    "'pstart', '', 'status', 'active', 'op', fmt(0), 'ack', fmt(0), 'wz', fmt(0), 'thrf', "
    "fmt(0), 'updated', fmt(NOW))",
    "packed: build + HSET 1": "redis.call('HSET', SCRATCH, 's', table.concat({ fmt(999000), "
    "fmt(0), '', 'active', fmt(0), fmt(0), fmt(0), fmt(0), fmt(NOW) }, ':'))",
    "SMEMBERS": "redis.call('SMEMBERS', SK[1])",
    "load_budget READ": "load_budget(BK, READ)",
    "load_budget CHARGE": "load_budget(BK, CHARGE)",
    "load_budget FULL": "load_budget(BK, FULL)",
    "new_batch": BATCH,
    "scope load (3 budgets)": LOADED,
    "+ charge in memory": CHARGED,
    "+ reply": CHARGED + "for _, e in ipairs(batch.entries) do e.sid = '1-1' end "
    "reply(batch, bs, push_snapshot)",
    "+ writes instead (flush)": CHARGED + "flush(batch, EV)",
}


async def profile(url: str, repeat: int, rounds: int, lua: Path) -> dict[str, list[float]]:
    client = redis_asyncio.Redis.from_url(url)
    kit = bk.BudgetKit(client, batching=False)
    ids = [(await kit.create_budget(ORG, t, s, "usd", 10**9)).id for t, s in SUBJECTS]
    budget_key = kit.keys.budget(ORG, ids[0])
    prefix = budget_key[: budget_key.index("b:")]
    subject_keys = ", ".join(f"'{kit.keys.subject(ORG, t, s)}'" for t, s in SUBJECTS)
    head = (
        f"local P, BK, EV = '{prefix}', '{budget_key}', '{prefix}events' "
        f"local SK = {{{subject_keys}}} local NOW = {NOW_MS} "
        "local IDB = 'ledger_' .. string.rep('a', 30) local AM = { usd = 1 } "
        f"local SCRATCH = '{prefix}scratch' local STATE = '999000:0::active:0:0:0:0:{NOW_MS}'\n"
    )
    prelude = (lua / "_lib.lua").read_text(encoding="utf-8")
    results: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name, body in PIECES.items():
            source = f"{prelude}\n{head}for _ = 1, {repeat} do {body} end return 1"
            await client.config_resetstat()
            await client.eval(source, 0)
            stats = await client.info("commandstats")
            results.setdefault(name, []).append(stats["cmdstat_eval"]["usec_per_call"] / repeat)
    await client.aclose()
    return results


def report(results: dict[str, list[float]]) -> None:
    empty = statistics.median(results["empty loop"])
    for name, values in results.items():
        if name == "empty loop":
            continue
        median, low = statistics.median(values) - empty, min(values) - empty
        print(f"{name:28s} {median:7.2f} µs  (min {low:6.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lua", type=Path, default=lua_dir())
    a = parser.parse_args()
    with redis_server.RedisServer() as server:
        report(asyncio.run(profile(server.url, a.repeat, a.rounds, a.lua)))


if __name__ == "__main__":
    main()
