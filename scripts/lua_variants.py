"""What each part of a scope operation costs Redis: the library with parts removed, A/B.

Usage:
    python3 scripts/lua_variants.py VARIANTS.py [--calls 3000] [--rounds 5]
    python3 scripts/lua_variants.py --fcall-vs-evalsha [--calls 2000] [--rounds 5]

VARIANTS.py defines ``VARIANTS = [(name, {lua_file: [(old, new), ...]}), ...]``: each variant is
lua/ with those text replacements, loaded as its own Functions library (its own name). A private
redis-server is started; in every round each variant runs ``--calls`` debits and then as many
checks of a 3-budget scope (16 in flight), and Redis's own ``INFO commandstats``
``usec_per_call`` of ``FCALL`` is read after each; the lean reference debit script of
benchmarks/server_cost.py runs in the same rounds. Prints the median and the minimum of the
rounds per variant and operation, and the ratio to the reference.

``--fcall-vs-evalsha``: the same debit (the command the client sends, with a fresh request id
each call) as ``FCALL`` of the library and as ``EVALSHA`` of the standalone script (prelude +
body), interleaved: what running the prelude once per load instead of once per call saves.

Example variant file (the cost of the request record and of the reply):

    VARIANTS = [
        ("base", {}),
        ("no_request_record", {"debit.lua": [
            ("idem_store(idem_key, fingerprint, batch, idem_ttl_ms, out)", "")]}),
        ("reply_minimal", {"debit.lua": [
            ("local out = reply(batch, budgets, push_snapshot)",
             "local out = {batch.now, 0, 0, 0}")]}),
    ]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import secrets
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import redis.asyncio as redis_asyncio  # noqa: E402
import redis_server  # noqa: E402

import budgetkit as bk  # noqa: E402
from benchmarks.server_cost import REFERENCE_SCRIPT  # noqa: E402
from budgetkit._core.runtime import Library, ScriptRuntime, load_library, load_scripts, lua_dir  # noqa: E402

ORG = "org_ab"
SCOPE = bk.Scope(ORG, session_id="s1", agent_id="a1", user_id="u1")
IN_FLIGHT = 16


def variant_library(edits: dict[str, list[tuple[str, str]]]) -> Library:
    directory = Path(tempfile.mkdtemp()) / "lua"
    shutil.copytree(lua_dir(), directory)
    for name, pairs in edits.items():
        path = directory / name
        text = path.read_text(encoding="utf-8")
        for old, new in pairs:
            if old not in text:
                raise SystemExit(f"{name}: text to replace not found: {old[:60]!r}")
            text = text.replace(old, new)
        path.write_text(text, encoding="utf-8")
    return load_library(directory)


async def scope_kit(client: Any, library: Library | None = None) -> bk.BudgetKit:
    await client.flushall()
    kit = bk.BudgetKit(client, batching=False)
    if library is not None:
        kit._runtime = ScriptRuntime(client, library)
        kit._dispatch = kit._runtime.call
    for kind, sid in (("session", "s1"), ("agent", "a1"), ("user", "u1")):
        await kit.create_budget(ORG, kind, sid, "usd", 10**9)
    await kit.check(SCOPE)
    return kit


async def usec(client: Any, command: str, calls: int, call: Any) -> float:
    await client.config_resetstat()
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one() -> None:
        async with gate:
            await call()

    await asyncio.gather(*(one() for _ in range(calls)))
    stats = await client.info("commandstats")
    return float(stats[f"cmdstat_{command}"]["usec_per_call"])


async def reference(client: Any, calls: int) -> float:
    await client.flushall()
    keys = [f"ref:{{o}}:b:{i}" for i in range(3)]
    for key in keys:
        await client.hset(key, mapping={"bal": 10**12, "held": 0, "status": "active"})
    sha = await client.script_load(REFERENCE_SCRIPT)
    return await usec(
        client,
        "evalsha",
        calls,
        lambda: client.evalsha(sha, 4, *keys, "ref:{o}:l", 1000, "ledger_x", "manual"),
    )


def report(results: dict[Any, list[float]], ref: list[float]) -> None:
    ref_median = statistics.median(ref)
    print(f"reference median {ref_median:.1f} µs, min {min(ref):.1f} µs")
    for (name, op), values in results.items():
        median = statistics.median(values)
        print(
            f"{name:24s} {op:6s} median {median:6.1f} µs ({median / ref_median:5.2f}x)  "
            f"min {min(values):6.1f} µs"
        )


async def variants(url: str, path: Path, calls: int, rounds: int) -> None:
    spec = importlib.util.spec_from_file_location("variants", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    libraries = {name: variant_library(edits) for name, edits in module.VARIANTS}
    client = redis_asyncio.Redis.from_url(url)
    results: dict[Any, list[float]] = {}
    ref: list[float] = []
    for _ in range(rounds):
        ref.append(await reference(client, calls))
        for name, library in libraries.items():
            kit = await scope_kit(client, library)
            debit = await usec(client, "fcall", calls, lambda k=kit: k.debit(SCOPE, {"usd": 0.001}))
            check = await usec(client, "fcall", calls, lambda k=kit: k.check(SCOPE))
            results.setdefault((name, "debit"), []).append(debit)
            results.setdefault((name, "check"), []).append(check)
    await client.aclose()
    report(results, ref)


async def fcall_vs_evalsha(url: str, calls: int, rounds: int) -> None:
    client = redis_asyncio.Redis.from_url(url)
    kit = await scope_kit(client)
    sent: list[tuple[list[str], list[Any]]] = []
    command = kit._runtime.command

    def recording(name: str, keys: Any, args: Any, readonly: bool = False) -> list[Any]:
        sent.append((list(keys), list(args)))
        return command(name, keys, args, readonly)

    kit._runtime.command = recording  # type: ignore[method-assign]
    await kit.debit(SCOPE, {"usd": 0.001})
    keys, args = sent[-1]
    function = kit._runtime.command("debit", keys, args)[1]
    sha = await client.script_load(load_scripts()["debit"].source)
    record_prefix = keys[-2].rsplit(":", 1)[0]

    def fresh() -> tuple[list[str], list[Any]]:  # a new request id: a new request record
        request_id = secrets.token_hex(15)
        return [*keys[:-2], f"{record_prefix}:{request_id}", keys[-1]], [
            *args[:2],
            f"ledger_{request_id}",
            *args[3:],
        ]

    async def by_fcall() -> None:
        k, a = fresh()
        await client.execute_command("FCALL", function, len(k), *k, *a)

    async def by_evalsha() -> None:
        k, a = fresh()
        await client.execute_command("EVALSHA", sha, len(k), *k, *a)

    results: dict[Any, list[float]] = {}
    for _ in range(rounds):
        results.setdefault(("FCALL (library)", "debit"), []).append(
            await usec(client, "fcall", calls, by_fcall)
        )
        results.setdefault(("EVALSHA (script)", "debit"), []).append(
            await usec(client, "evalsha", calls, by_evalsha)
        )
    ref = [await reference(client, calls) for _ in range(rounds)]
    await client.aclose()
    report(results, ref)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="?", type=Path)
    parser.add_argument("--fcall-vs-evalsha", action="store_true")
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    a = parser.parse_args()
    if not a.fcall_vs_evalsha and a.variants is None:
        parser.error("give a variants file or --fcall-vs-evalsha")
    with redis_server.RedisServer() as server:
        if a.fcall_vs_evalsha:
            asyncio.run(fcall_vs_evalsha(server.url, a.calls, a.rounds))
        else:
            asyncio.run(variants(server.url, a.variants, a.calls, a.rounds))


if __name__ == "__main__":
    main()
