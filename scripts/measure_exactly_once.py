"""Measures what exactly-once costs: Redis CPU, memory and request bytes of a request record.

Every mutation carries a request record (budgetkit/_core/redelivery.py): the debit script stores
a small receipt under ``P:{org}:rq:<request id>`` for the redelivery window. This drives the
same 3-budget debit command (recorded from BudgetKit.debit) twice in one run: as sent (with its
record, a fresh request id per call) and with the record switched off (fingerprint ''). It reads
Redis's own ``INFO commandstats`` (usec_per_call of EVALSHA) and ``MEMORY USAGE`` of a record
(what one call keeps for the redelivery window). Rounds alternate the two variants; medians are
reported.

Usage: python3 scripts/measure_exactly_once.py [--calls N] [--rounds R]   (prints JSON)
It starts a private redis-server on a free loopback port (scripts/redis_server.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # redis_server
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # the benchmarks package

from redis.asyncio import Redis
from redis_server import RedisServer

import budgetkit as bk
from benchmarks.record import recorded_command

ORG = "org_x1"
PIPELINE_DEPTH = 100
FINGERPRINT_ARG = 3  # debit.lua: ARGV[4] (0-based offset 3 after the keys)


def resp_bytes(command: list[str]) -> int:
    """Size of the command as RESP on the wire."""
    size = len(f"*{len(command)}\r\n")
    for arg in command:
        data = arg.encode()
        size += len(f"${len(data)}\r\n") + len(data) + 2
    return size


def variant(command: list[str], call: int, with_record: bool) -> list[str]:
    """The debit command of one call: a fresh request id, or no record at all."""
    out = list(command)
    numkeys = int(out[2])
    key_at = next(i for i in range(3, 3 + numkeys) if ":rq:" in out[i])
    out[key_at] = out[key_at][:-12] + f"{call:012d}"
    if not with_record:
        out[3 + numkeys + FINGERPRINT_ARG] = ""
    return out


async def drive(client: Redis, command: list[str], calls: int, with_record: bool) -> float:
    """EVALSHA usec_per_call of ``calls`` debits of one variant."""
    await client.config_resetstat()
    for start in range(0, calls, PIPELINE_DEPTH):
        pipe = client.pipeline(transaction=False)
        for call in range(start, min(start + PIPELINE_DEPTH, calls)):
            pipe.execute_command(*variant(command, call + with_record * 10**9, with_record))
        for reply in await pipe.execute(raise_on_error=False):
            if isinstance(reply, Exception):
                raise reply
    stats: Any = await client.info("commandstats")
    return float(stats["cmdstat_evalsha"]["usec_per_call"])


async def measure(url: str, calls: int, rounds: int) -> dict[str, Any]:
    client = Redis.from_url(url)
    kit = bk.BudgetKit(client)
    scope = bk.Scope(organization_id=ORG, session_id="s1", user_id="u1")
    await kit.create_budget(ORG, "session", "s1", "usd", 10**9)
    await kit.create_budget(ORG, "user", "u1", "usd", 10**9)
    await kit.create_budget(ORG, "org", ORG, "usd", 10**9)
    await kit.debit(scope, {"usd": 0.001})  # loads the script
    command = await recorded_command("bk", lambda k: k.debit(scope, {"usd": 0.000123}))
    results: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(rounds):
        for with_record in (False, True):
            results[with_record].append(await drive(client, command, calls, with_record))
    record_key = next(a for a in variant(command, 1 + 10**9, True) if ":rq:" in a)
    record_bytes = int(await client.memory_usage(record_key))
    await client.aclose()
    with_us, without_us = statistics.median(results[True]), statistics.median(results[False])
    window_s = bk.BudgetKit.from_url(url)._request_window_ms / 1000
    return {
        "command": f"python3 scripts/measure_exactly_once.py --calls {calls} --rounds {rounds}",
        "budgets_per_debit": 3,
        "debit_usec_per_call_with_record": with_us,
        "debit_usec_per_call_without_record": without_us,
        "record_cpu_usec_per_call": round(with_us - without_us, 2),
        "record_cpu_ratio": round(with_us / without_us, 3),
        "record_memory_usage_b": record_bytes,
        "request_bytes_with_record": resp_bytes(variant(command, 1, True)),
        "request_bytes_without_record": resp_bytes(variant(command, 1, False)),
        "window_s_from_url": window_s,
        "records_mb_at_1000_mutations_per_s": round(1000 * window_s * record_bytes / 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000, help="debits per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (medians are reported)")
    args = parser.parse_args()
    with RedisServer() as server:
        report = asyncio.run(measure(server.url, args.calls, args.rounds))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
