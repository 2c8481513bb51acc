"""Measures Redis memory per budget, per ledger entry, per event and per idempotency record.

Usage: python3 scripts/measure_memory.py [--redis-url URL] [--budgets N] [--debits N]
Without --redis-url it starts a private redis-server (scripts/redis_server.py). Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from redis_server import RedisServer

import budgetkit as bk


async def _used(kit: bk.BudgetKit) -> int:
    info: Any = await kit.redis.info("memory")
    return int(info["used_memory"])


async def measure(url: str, budgets: int, debits: int) -> dict[str, float]:
    kit = bk.BudgetKit.from_url(url)
    await kit.redis.flushall()
    base = await _used(kit)
    for i in range(budgets):
        await kit.create_budget("org_m", "session", f"s{i}", "usd", 1_000_000, soft_limit=900_000)
    after_budgets = await _used(kit)
    scope = bk.Scope(organization_id="org_m", session_id="s0")
    for _ in range(debits):
        await kit.debit(
            scope, {"usd": 0.000123}, meter_source="llm_tokens", ref_id="gen_0123456789"
        )
    after_ledger = await _used(kit)
    for i in range(debits):
        await kit.debit(scope, {"usd": 0.000123}, idempotency_key=f"req-{i:08d}")
    after_idem = await _used(kit)
    events_key = kit.keys.events("org_m")
    for i in range(debits):
        await kit.redis.xadd(
            events_key,
            {
                "type": "budget.warning",
                "bid": f"bdgt_{i:032x}",
                "bal": "1",
                "lim": "2",
                "cur": "usd",
                "soft": "",
                "ack": "0",
                "ts": "1700000000000",
            },
        )
    after_events = await _used(kit)
    await kit.aclose()
    return {
        "bytes_per_budget": round((after_budgets - base) / budgets, 1),
        "bytes_per_ledger_entry": round((after_ledger - after_budgets) / debits, 1),
        "bytes_per_idempotent_debit": round((after_idem - after_ledger) / debits, 1),
        "bytes_per_idempotency_record": round(
            (after_idem - after_ledger) / debits - (after_ledger - after_budgets) / debits, 1
        ),
        "bytes_per_event": round((after_events - after_idem) / debits, 1),
        "budgets": budgets,
        "debits": debits,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-url")
    parser.add_argument("--budgets", type=int, default=10_000)
    parser.add_argument("--debits", type=int, default=20_000)
    a = parser.parse_args()
    if a.redis_url:
        result = asyncio.run(measure(a.redis_url, a.budgets, a.debits))
    else:
        with RedisServer() as server:
            result = asyncio.run(measure(server.url, a.budgets, a.debits))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
