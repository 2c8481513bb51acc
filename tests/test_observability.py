"""Metrics (Prometheus registry) and traces (OpenTelemetry in-memory exporter)."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

import budgetkit as bk
from budgetkit._core.observability import OpenTelemetryTracing, PrometheusMetrics

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
