"""A/B the Redis server time of a script: the working tree's Lua against a git revision's.

Usage: python3 scripts/lua_ab.py check|debit [REV=HEAD]
Interleaved rounds of 1,500 calls on a 3-budget scope against a private redis-server; prints the
minimum usec_per_call (INFO commandstats) of each variant, which is robust on a shared machine.
"""

import asyncio
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from redis.asyncio import Redis
from redis_server import RedisServer

import budgetkit as bk

ROOT = Path(__file__).resolve().parent.parent


def src_at(rev, name):
    lib = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:lua/_lib.lua"], capture_output=True, text=True
    ).stdout
    body = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:lua/{name}.lua"], capture_output=True, text=True
    ).stdout
    return lib + "\n" + body


def src_now(name):
    return open(ROOT / "lua" / "_lib.lua").read() + "\n" + open(ROOT / "lua" / f"{name}.lua").read()


async def main(url, name, rev):
    r = Redis.from_url(url)
    kit = bk.BudgetKit(r)
    org = "o"
    for st, sid in [("session", "s"), ("user", "u"), ("org", org)]:
        await kit.create_budget(org, st, sid, "usd", 1e9)
    scope = bk.Scope(organization_id=org, session_id="s", user_id="u")
    keys = kit._scope_keys(scope)
    variants = {"old": src_at(rev, name), "new": src_now(name)}
    shas = {k: await r.script_load(v) for k, v in variants.items()}
    best = {k: 1e9 for k in shas}
    for _ in range(8):
        for k, sha in shas.items():
            await r.config_resetstat()
            for _ in range(1500):
                args = kit._common_args(org)
                if name == "debit":
                    args = [*args, "", "1000", "manual", "", "", "", "", "", "1", "usd", "1000"]
                    await r.evalsha(
                        sha, len(keys) + 1, *keys[:-1], "bk:{o}:idem:debit:-", keys[-1], *args
                    )
                else:
                    await r.evalsha(sha, len(keys), *keys, *args)
            info = await r.info("commandstats")
            best[k] = min(best[k], info["cmdstat_evalsha"]["usec_per_call"])
    print(name, {k: round(v, 2) for k, v in best.items()})


with RedisServer() as s:
    asyncio.run(main(s.url, sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "HEAD"))
