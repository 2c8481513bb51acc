"""Metrics and traces: optional instruments the client reports to.

``BudgetKit(client, instruments=[PrometheusMetrics(), OpenTelemetryTracing()])``. With no
instrument (the default) the client does no extra work. The two built-ins need the ``metrics``
extra (``prometheus-client``, ``opentelemetry-api``); they are imported only when constructed.

What is reported never carries a secret or an identifier: operation names, outcomes (an error
class name or ``ok``), check actions, denial reasons, batch sizes — no organization, subject,
session, budget or idempotency ids, no amounts.

The check cache (``kit.enable_check_cache()``) counts its events in plain integers on its hot
path (a hit costs no instrument call); an instrument that wants them implements the optional
hooks of ``CheckCacheInstrument`` and reads the counters when it likes: ``PrometheusMetrics``
reads them at each scrape (a collector), so they cost nothing between scrapes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from budgetkit._core.checkcache import CheckCacheStats

#: Reads the current counters of one kit's check cache (``kit.check_cache_stats`` while on).
CheckCacheReader = Callable[[], "CheckCacheStats"]

#: Buckets of the script latency histogram, in seconds (50 µs .. 1 s).
LATENCY_BUCKETS_S = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 1.0)
#: Buckets of the batch size histogram (calls per pipeline).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
#: The check cache's counters as PrometheusMetrics exports them: CheckCacheStats field ->
#: (metric name after ``<namespace>_check_cache_``, then ``_total``; help).
CHECK_CACHE_COUNTERS = {
    "hits": ("hits", "Checks answered from memory by the check cache"),
    "misses": ("misses", "Checks the check cache sent to Redis"),
    "fills": ("fills", "Replies the check cache stored"),
    "fills_refused": (
        "fills_refused",
        "Replies not stored: a key they show was written meanwhile, tracking was not proven, "
        "or the slot moved",
    ),
    "invalidations": ("invalidations", "Keys Redis pushed to the check cache"),
    "resets": ("resets", "Times the check cache dropped everything"),
    "lease_expiries": (
        "lease_expiries",
        "Times a heartbeat came back late: nothing served from memory meanwhile",
    ),
    "joined": ("joined", "Check cache misses answered by a round trip already in flight"),
    "canary_checks": ("canary_checks", "Answers from memory compared with a fresh round trip"),
    "canary_stale": ("stale", "Answers from memory the canary found stale (should stay 0)"),
}


class CallRecord:
    """What an instrument learns about one script call while it runs."""

    __slots__ = ("operation", "outcome")

    def __init__(self, operation: str) -> None:
        self.operation = operation
        self.outcome = "ok"


class Instrument(Protocol):
    """Receives budgetkit's measurements. Every method must be cheap and must not raise.

    An instrument may also have the optional hooks of ``CheckCacheInstrument`` (called only
    when present)."""

    def call(self, record: CallRecord) -> Any:
        """A context manager around one script call; ``record.outcome`` is final at exit."""

    def check_decided(self, action: str, policy: str | None) -> None:
        """A check's action; ``policy`` is fail_closed/fail_open when the store was down."""

    def reservation_decided(self, granted: bool, reason: str | None) -> None:
        """A reserve's verdict; ``reason`` is the denial's error code."""

    def batch_sent(self, size: int) -> None:
        """A pipeline of ``size`` script calls went out (auto-batching)."""

    def script_reloaded(self) -> None:
        """The server had lost the function library (``Function not found``): the runtime loaded
        it again."""


class CheckCacheInstrument(Protocol):
    """The optional hooks of an ``Instrument`` for the check cache. Not part of ``Instrument``:
    an instrument may leave them out, and budgetkit calls each only when the instrument has it
    (``getattr``). Both are called on the kit's event loop; the reader may be called from any
    thread (a scrape) and returns a snapshot of the cache's counters (``CheckCacheStats``)."""

    def check_cache_enabled(self, stats: CheckCacheReader) -> None:
        """A kit's check cache started; ``stats()`` reads its counters from now on."""

    def check_cache_disabled(self, stats: CheckCacheReader) -> None:
        """That cache stopped; ``stats()`` returns its final counters (read them now: the
        reader is not called again by budgetkit)."""


#: The context of a call with no instrument: shared, it does nothing.
_NOTHING: AbstractContextManager[None] = nullcontext()


class Instruments:
    """Fans measurements out to several instruments (the client holds one of these)."""

    def __init__(self, instruments: Sequence[Instrument] = ()) -> None:
        self._all = tuple(instruments)

    def __bool__(self) -> bool:
        return bool(self._all)

    def call(self, operation: str) -> AbstractContextManager[CallRecord | None]:
        """Measures one call with every instrument; nothing at all when there are none."""
        if not self._all:
            return _NOTHING
        return self._measured(operation)

    @contextmanager
    def _measured(self, operation: str) -> Iterator[CallRecord]:
        record = CallRecord(operation)
        managers = [i.call(record) for i in self._all]
        for manager in managers:
            manager.__enter__()
        try:
            yield record
        except BaseException as error:
            record.outcome = type(error).__name__
            raise
        finally:
            for manager in reversed(managers):
                manager.__exit__(None, None, None)

    def check_decided(self, action: str, policy: str | None = None) -> None:
        for i in self._all:
            i.check_decided(action, policy)

    def reservation_decided(self, granted: bool, reason: str | None) -> None:
        for i in self._all:
            i.reservation_decided(granted, reason)

    def batch_sent(self, size: int) -> None:
        for i in self._all:
            i.batch_sent(size)

    def script_reloaded(self) -> None:
        for i in self._all:
            i.script_reloaded()

    def check_cache_enabled(self, stats: CheckCacheReader) -> None:
        """Tells every instrument that has the hook (``CheckCacheInstrument``)."""
        self._optional_hook("check_cache_enabled", stats)

    def check_cache_disabled(self, stats: CheckCacheReader) -> None:
        self._optional_hook("check_cache_disabled", stats)

    def _optional_hook(self, name: str, stats: CheckCacheReader) -> None:
        for i in self._all:
            hook = getattr(i, name, None)
            if hook is not None:
                hook(stats)


class PrometheusMetrics:
    """Prometheus counters and histograms (``budgetkit_*``) in ``registry`` (default: global)."""

    def __init__(self, registry: Any = None, namespace: str = "budgetkit") -> None:
        from prometheus_client import REGISTRY, Counter, Histogram

        registry = REGISTRY if registry is None else registry
        kw: dict[str, Any] = {"namespace": namespace, "registry": registry}
        self.calls = Counter(
            "calls", "Script calls by operation and outcome", ["operation", "outcome"], **kw
        )
        self.latency = Histogram(
            "script_seconds",
            "Script call latency (client side)",
            ["operation"],
            buckets=LATENCY_BUCKETS_S,
            **kw,
        )
        self.checks = Counter("checks", "Check results by action", ["action"], **kw)
        self.policy = Counter(
            "failure_policy_decisions",
            "Checks answered by the failure policy because Redis was unavailable",
            ["policy"],
            **kw,
        )
        self.reservations = Counter(
            "reservations", "Reservations by verdict and denial reason", ["verdict", "reason"], **kw
        )
        self.batches = Histogram(
            "batch_size", "Script calls per auto-batched pipeline", buckets=BATCH_BUCKETS, **kw
        )
        # (The metric keeps its name from the EVALSHA days, for existing dashboards.)
        self.reloads = Counter(
            "noscript_reloads", "Function library loaded again after the server lost it", **kw
        )
        self.check_cache = _CheckCacheCollector(namespace)
        registry.register(self.check_cache)

        self._children: dict[tuple[str, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        """The labelled child of a metric, cached: labels() takes a lock and builds a key."""
        key = (metric._name, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    @contextmanager
    def call(self, record: CallRecord) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            self._child(self.latency, record.operation).observe(seconds)
            self._child(self.calls, record.operation, record.outcome).inc()

    def check_decided(self, action: str, policy: str | None) -> None:
        self._child(self.checks, action).inc()
        if policy is not None:
            self._child(self.policy, policy).inc()

    def reservation_decided(self, granted: bool, reason: str | None) -> None:
        verdict = "granted" if granted else "denied"
        self.reservations.labels(verdict, reason or "").inc()

    def batch_sent(self, size: int) -> None:
        self.batches.observe(size)

    def script_reloaded(self) -> None:
        self.reloads.inc()

    def check_cache_enabled(self, stats: CheckCacheReader) -> None:
        self.check_cache.add(stats)

    def check_cache_disabled(self, stats: CheckCacheReader) -> None:
        self.check_cache.retire(stats)


class _CheckCacheCollector:
    """The check cache's counters in Prometheus (``<namespace>_check_cache_*``), read from the
    caches of every kit this instrument serves when Prometheus scrapes: counters summed over
    them (a cache's final counts are kept after it stops, so they never go down) and the
    ``serving`` gauge, the number of those caches that serve now."""

    def __init__(self, namespace: str) -> None:
        self._prefix = f"{namespace}_check_cache_"
        self._lock = threading.Lock()  # scrapes run on the exporter's thread
        self._readers: list[CheckCacheReader] = []
        self._retired = dict.fromkeys(CHECK_CACHE_COUNTERS, 0)

    def add(self, stats: CheckCacheReader) -> None:
        with self._lock:
            self._readers.append(stats)

    def retire(self, stats: CheckCacheReader) -> None:
        final = stats()
        with self._lock:
            if stats in self._readers:
                self._readers.remove(stats)
            for name in self._retired:
                self._retired[name] += getattr(final, name)

    def describe(self) -> Iterator[Any]:
        return self._families(dict.fromkeys(CHECK_CACHE_COUNTERS, 0), 0)

    def collect(self) -> Iterator[Any]:
        with self._lock:
            readers, totals = list(self._readers), dict(self._retired)
        serving = 0
        for read in readers:
            stats = read()
            for name in totals:
                totals[name] += getattr(stats, name)
            serving += stats.serving
        return self._families(totals, serving)

    def _families(self, totals: dict[str, int], serving: int) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        for name, (metric, text) in CHECK_CACHE_COUNTERS.items():
            yield CounterMetricFamily(self._prefix + metric, text, value=totals[name])
        yield GaugeMetricFamily(
            self._prefix + "serving", "Check caches answering from memory now", value=serving
        )


class OpenTelemetryTracing:
    """One span per script call (``budgetkit.<operation>``), with non-secret attributes."""

    def __init__(self, tracer: Any = None) -> None:
        from opentelemetry import trace

        self._trace = trace
        self._tracer = tracer if tracer is not None else trace.get_tracer("budgetkit")

    @contextmanager
    def call(self, record: CallRecord) -> Iterator[None]:
        span = self._tracer.start_span(
            f"budgetkit.{record.operation}", attributes={"budgetkit.operation": record.operation}
        )
        try:
            with self._trace.use_span(span, end_on_exit=False):
                yield
        finally:
            span.set_attribute("budgetkit.outcome", record.outcome)
            if record.outcome != "ok":
                span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
            span.end()

    def check_decided(self, action: str, policy: str | None) -> None:
        span = self._trace.get_current_span()
        span.add_event("budgetkit.check", {"action": action, "policy": policy or ""})

    def reservation_decided(self, granted: bool, reason: str | None) -> None:
        span = self._trace.get_current_span()
        span.add_event("budgetkit.reservation", {"granted": granted, "reason": reason or ""})

    def batch_sent(self, size: int) -> None:
        return None  # batches are shared by many callers' spans: counted by metrics only

    def script_reloaded(self) -> None:
        self._trace.get_current_span().add_event("budgetkit.noscript_reload")
