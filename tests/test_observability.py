"""Metrics (Prometheus registry) and traces (OpenTelemetry in-memory exporter)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

import budgetkit as bk
from budgetkit._core.observability import (
    CHECK_CACHE_COUNTERS,
    CallRecord,
    CheckCacheReader,
    OpenTelemetryTracing,
    PrometheusMetrics,
)

ORG = "org_obs"


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_prometheus_metrics(redis: Redis) -> None:
    registry = CollectorRegistry()
    kit = bk.BudgetKit(redis, instruments=[PrometheusMetrics(registry)])
    await kit.create_budget(ORG, "session", "s1", "usd", 1)
    scope = bk.Scope(organization_id=ORG, session_id="s1")
    await kit.check(scope)
    await asyncio.gather(*(kit.debit(scope, {"usd": 0.1}) for _ in range(12)))
    assert (await kit.check(scope)).action == "stop"
    assert not (await kit.reserve(scope, {"usd": 0.5})).granted
    await redis.function_flush()
    await kit.check(scope)
    assert sample(registry, "budgetkit_calls_total", operation="debit", outcome="ok") == 12
    assert sample(registry, "budgetkit_script_seconds_count", operation="check") == 3
    assert sample(registry, "budgetkit_checks_total", action="continue") == 1
    assert sample(registry, "budgetkit_checks_total", action="stop") == 2
    assert (
        sample(
            registry, "budgetkit_reservations_total", verdict="denied", reason="budget_exhausted"
        )
        == 1
    )
    assert sample(registry, "budgetkit_batch_size_count") >= 1
    assert sample(registry, "budgetkit_batch_size_sum") >= 2
    assert sample(registry, "budgetkit_noscript_reloads_total") == 1
    text = "\n".join(f"{s.name} {s.labels}" for m in registry.collect() for s in m.samples)
    assert ORG not in text and "s1" not in text  # no identifiers in metrics


async def test_failure_policy_is_counted() -> None:
    registry = CollectorRegistry()
    kit = bk.BudgetKit.from_url(
        "redis://127.0.0.1:1/0",
        connection=bk.ConnectionOptions(connect_timeout_s=0.2),
        instruments=[PrometheusMetrics(registry)],
    )
    result = await kit.check(bk.Scope(organization_id=ORG, session_id="s1"))
    assert result.error_code == "budget_unavailable"
    assert sample(registry, "budgetkit_failure_policy_decisions_total", policy="fail_closed") == 1
    assert (
        sample(registry, "budgetkit_calls_total", operation="check", outcome="BudgetUnavailable")
        == 2
    )  # two attempts
    await kit.aclose()


async def test_opentelemetry_spans(redis: Redis) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = OpenTelemetryTracing(provider.get_tracer("test"))
    kit = bk.BudgetKit(redis, instruments=[tracing])
    await kit.create_budget(ORG, "session", "s1", "usd", 1)
    scope = bk.Scope(organization_id=ORG, session_id="s1")
    await kit.debit(scope, {"usd": 0.5}, idempotency_key="secret-key-1")
    with pytest.raises(bk.BudgetNotFound):
        await kit.get_budget(ORG, "bdgt_" + "0" * 32)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert {"budgetkit.create", "budgetkit.debit", "budgetkit.get"} <= set(spans)
    assert spans["budgetkit.debit"].attributes == {
        "budgetkit.operation": "debit",
        "budgetkit.outcome": "ok",
    }
    assert spans["budgetkit.get"].attributes["budgetkit.outcome"] == "BudgetNotFound"
    for span in exporter.get_finished_spans():
        values = " ".join(str(v) for v in (span.attributes or {}).values())
        assert "secret-key-1" not in values and ORG not in values


async def test_no_instruments_no_overhead_objects(redis: Redis) -> None:
    kit = bk.BudgetKit(redis)
    assert not kit._instruments  # the hot path skips every instrument call


# -- the check cache's counters ------------------------------------------------------------------


async def cache_serves(kit: bk.BudgetKit) -> bk.CheckCacheStats:
    """Waits (bounded) until the kit's check cache serves; its counters then."""
    deadline = time.monotonic() + 2
    while True:
        stats = kit.check_cache_stats()
        assert stats is not None
        if stats.serving:
            return stats
        assert time.monotonic() < deadline, "the check cache never served"
        await asyncio.sleep(0.005)


def cache_samples(registry: CollectorRegistry) -> dict[str, float]:
    """The check cache's counters as Prometheus scrapes them, by CheckCacheStats field."""
    return {
        field: sample(registry, f"budgetkit_check_cache_{metric}_total")
        for field, (metric, _) in CHECK_CACHE_COUNTERS.items()
    }


def stats_counts(stats: bk.CheckCacheStats) -> dict[str, float]:
    return {field: float(getattr(stats, field)) for field in CHECK_CACHE_COUNTERS}


async def test_check_cache_counters_reach_prometheus_and_never_go_down(real_redis: Redis) -> None:
    registry = CollectorRegistry()
    kit = bk.BudgetKit(real_redis, instruments=[PrometheusMetrics(registry)])
    other = bk.BudgetKit(real_redis)
    try:
        await kit.create_budget(ORG, "session", "s1", "usd", 10)
        scope = bk.Scope(organization_id=ORG, session_id="s1")
        assert cache_samples(registry) == dict.fromkeys(CHECK_CACHE_COUNTERS, 0.0)
        assert sample(registry, "budgetkit_check_cache_serving") == 0
        await kit.enable_check_cache(heartbeat_ms=20, canary_every=4)
        await cache_serves(kit)
        deadline = time.monotonic() + 2
        while (stats := await cache_serves(kit)).canary_checks < 1 or stats.invalidations < 1:
            assert time.monotonic() < deadline, stats
            await kit.check(scope)
            if stats.hits > 20 and stats.invalidations < 1:
                await other.debit(scope, {"usd": 0.01})  # another client: an invalidation
            await asyncio.sleep(0.002)
        assert sample(registry, "budgetkit_check_cache_serving") == 1
        final = kit.check_cache_stats()
        await kit.disable_check_cache()
        assert final is not None and final.hits > 0 and final.fills > 0, final
        assert cache_samples(registry) == stats_counts(final)  # kept after the cache stopped
        assert sample(registry, "budgetkit_check_cache_serving") == 0
        await kit.enable_check_cache(heartbeat_ms=20, canary_every=0)
        await cache_serves(kit)
        deadline = time.monotonic() + 2
        while (again := await cache_serves(kit)).hits < 1:  # (once the org is tracked: a hit)
            assert time.monotonic() < deadline, again
            await kit.check(scope)
        assert sample(registry, "budgetkit_check_cache_hits_total") == final.hits + again.hits
        await kit.disable_check_cache()
    finally:  # a failure must not leave the heartbeat running
        await kit.aclose()
        await other.aclose()


class Minimal:
    """An instrument a user wrote before the check cache had hooks: the Instrument methods."""

    @contextmanager
    def call(self, record: CallRecord) -> Iterator[None]:
        yield

    def check_decided(self, action: str, policy: str | None) -> None:
        return None

    def reservation_decided(self, granted: bool, reason: str | None) -> None:
        return None

    def batch_sent(self, size: int) -> None:
        return None

    def script_reloaded(self) -> None:
        return None


class Hooked(Minimal):
    """One with the optional check cache hooks (CheckCacheInstrument)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bk.CheckCacheStats]] = []

    def check_cache_enabled(self, stats: CheckCacheReader) -> None:
        self.seen.append(("enabled", stats()))

    def check_cache_disabled(self, stats: CheckCacheReader) -> None:
        self.seen.append(("disabled", stats()))


async def test_check_cache_hooks_are_optional(real_redis: Redis) -> None:
    hooked = Hooked()
    kit = bk.BudgetKit(real_redis, instruments=[Minimal(), hooked])
    await kit.create_budget(ORG, "session", "s1", "usd", 10)
    await kit.enable_check_cache(heartbeat_ms=20)
    await cache_serves(kit)
    for _ in range(3):
        await kit.check(bk.Scope(organization_id=ORG, session_id="s1"))
    await kit.disable_check_cache()
    assert [what for what, _ in hooked.seen] == ["enabled", "disabled"]
    assert hooked.seen[1][1].misses + hooked.seen[1][1].hits == 3, hooked.seen


def test_every_check_cache_counter_is_exported() -> None:
    counters = set(bk.CheckCacheStats.model_fields) - {"serving"}
    assert set(CHECK_CACHE_COUNTERS) == counters
    names = [metric for metric, _ in CHECK_CACHE_COUNTERS.values()]
    assert len(set(names)) == len(names) and "stale" in names
