"""Overhead of metrics + tracing on check and debit: interleaved rounds, medians.

Usage: python3 scripts/observability_overhead.py [--rounds 6] [--calls 2000]
Starts a private redis-server; runs the same sequential 3-budget check and debit loops through a
client without instruments, one with PrometheusMetrics, and one with PrometheusMetrics +
OpenTelemetryTracing (an SDK tracer provider with no exporter: spans are created and ended),
alternating, and prints JSON with the median per-call time of each and the ratios to the plain
client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis_server import RedisServer

import budgetkit as bk
from budgetkit._core.observability import OpenTelemetryTracing, PrometheusMetrics


async def _round(kit: bk.BudgetKit, scope: bk.Scope, op: str, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        if op == "check":
            await kit.check(scope)
        else:
            await kit.debit(scope, {"usd": 0.000001})
    return (time.perf_counter() - start) / calls * 1e6


async def measure(url: str, rounds: int, calls: int) -> dict[str, float]:
    plain = bk.BudgetKit(Redis.from_url(url))
    tracer = TracerProvider().get_tracer("overhead")
    metrics_only = bk.BudgetKit(
        Redis.from_url(url), instruments=[PrometheusMetrics(CollectorRegistry())]
    )
    both = [PrometheusMetrics(CollectorRegistry()), OpenTelemetryTracing(tracer)]
    observed = bk.BudgetKit(Redis.from_url(url), instruments=both)
    kits = {"plain": plain, "metrics": metrics_only, "metrics_tracing": observed}
    org = "org_overhead"
    for subject_type, subject_id in (("session", "s"), ("user", "u"), ("org", org)):
        await plain.create_budget(org, subject_type, subject_id, "usd", 1_000_000)
    scope = bk.Scope(organization_id=org, session_id="s", user_id="u")
    out: dict[str, float] = {}
    for op in ("check", "debit"):
        times: dict[str, list[float]] = {name: [] for name in kits}
        for kit in kits.values():
            await _round(kit, scope, op, calls // 4)
        for _ in range(rounds):
            for name, kit in kits.items():
                times[name].append(await _round(kit, scope, op, calls))
        medians = {name: statistics.median(values) for name, values in times.items()}
        for name, median in medians.items():
            out[f"{op}_us_{name}"] = round(median, 1)
            if name != "plain":
                out[f"{op}_ratio_{name}"] = round(median / medians["plain"], 3)
    for kit in kits.values():
        await kit.aclose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=2000)
    a = parser.parse_args()
    with RedisServer() as server:
        print(json.dumps(asyncio.run(measure(server.url, a.rounds, a.calls)), indent=2))


if __name__ == "__main__":
    main()
