"""The blocking facade: ``budgetkit.sync.BudgetKit`` has the async client's methods, without await.

For Celery, RQ, threads and scripts. It owns one event loop on a private daemon thread and runs
every call of the async core there (``asyncio.run_coroutine_threadsafe``), so it duplicates no
logic and is thread-safe: any number of threads may call it at once, and their calls are batched
by the core like concurrent tasks. Each call waits at most ``call_timeout_s``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from redis.asyncio import Redis

from budgetkit.client import BudgetKit as AsyncBudgetKit
from budgetkit.errors import BudgetUnavailable
from budgetkit.models import BudgetEvent

CALL_TIMEOUT_S = 30.0
EVENTS_BLOCK_MS = 1000

#: The async methods the facade exposes (everything public that is awaited).
_METHODS = frozenset(
    {
        "create_budget",
        "get_budget",
        "list_budgets",
        "update_budget",
        "disable_budget",
        "top_up",
        "check",
        "check_tool",
        "debit",
        "reserve",
        "commit",
        "release",
        "resume",
        "ledger",
        "trim_history",
        "record_usage",
    }
)


class BudgetKit:
    """Blocking budgetkit client; same constructor keywords and methods as the async one."""

    def __init__(
        self,
        client_factory: Callable[[], Redis],
        *,
        call_timeout_s: float = CALL_TIMEOUT_S,
        **kwargs: Any,
    ) -> None:
        """``client_factory`` builds the redis.asyncio client (it is called on the loop
        thread, where its connections live); ``kwargs`` go to the async BudgetKit."""
        self._timeout_s = call_timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="budgetkit-sync", daemon=True
        )
        self._thread.start()

        async def build() -> AsyncBudgetKit:
            return AsyncBudgetKit(client_factory(), **kwargs)

        self._kit: AsyncBudgetKit = self._run(build())
        self._closed = False

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> BudgetKit:
        """Like ``budgetkit.BudgetKit.from_url``; ``call_timeout_s`` bounds each blocking call."""
        from budgetkit.urls import client_from_url

        url_keys = ("socket_timeout_s", "connect_timeout_s", "max_connections")
        url_kwargs = {k: kwargs.pop(k) for k in url_keys if k in kwargs}
        return cls(lambda: client_from_url(url, **url_kwargs), **kwargs)

    @property
    def async_kit(self) -> AsyncBudgetKit:
        """The async core (its keys, runtime, counters, batcher)."""
        return self._kit

    def _run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(self._timeout_s)
        except TimeoutError:
            future.cancel()
            raise BudgetUnavailable(f"no answer within {self._timeout_s} s") from None

    def __getattr__(self, name: str) -> Any:
        if name not in _METHODS:
            raise AttributeError(name)
        method = getattr(self._kit, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._run(method(*args, **kwargs))

        call.__name__ = name
        call.__doc__ = method.__doc__
        return call

    def add_check_rule(self, rule: Any) -> None:
        self._kit.add_check_rule(rule)

    def events(
        self, organization_id: str, after: str | None = None, *, follow: bool = False
    ) -> Iterator[BudgetEvent]:
        """The organization's events after ``after``; with ``follow`` waits for new ones."""
        while True:
            batch: list[BudgetEvent] = self._run(self._collect(organization_id, after))
            yield from batch
            if batch:
                after = batch[-1].id
            elif not follow:
                return
            else:
                self._run(asyncio.sleep(EVENTS_BLOCK_MS / 1000))

    async def _collect(self, organization_id: str, after: str | None) -> list[BudgetEvent]:
        return [e async for e in self._kit.events(organization_id, after, follow=False)]

    def close(self) -> None:
        """Closes the connections and stops the loop thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._run(self._kit.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=self._timeout_s)
        self._loop.close()

    def __enter__(self) -> BudgetKit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
