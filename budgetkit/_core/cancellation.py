"""A cancelled task ends even when a Redis call swallowed its cancellation.

On CPython < 3.12, ``asyncio.wait_for`` can swallow a ``CancelledError`` when the awaited call
completes at the same moment (CPython gh-86296; fixed in 3.12 by the ``asyncio.timeout``
rewrite). redis-py 8 runs every command with a socket timeout through ``wait_for``, so a task
cancelled while it waits for Redis can find the call returning normally instead. A loop that
calls Redis again and again (``kit.events(follow=True)``, the demo's event printer) then never
ends: ``task.cancel()`` followed by ``await task`` hangs. Such loops call
``raise_if_cancelling()`` after each call: the cancellation was requested (``Task.cancelling``
counts it until someone ``uncancel``s), so it is raised again.
"""

from __future__ import annotations

import asyncio


def raise_if_cancelling() -> None:
    """Raises CancelledError when the current task was asked to cancel and is still running."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
