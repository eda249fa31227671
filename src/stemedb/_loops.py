"""Handing results from an engine thread to the event loops that wait for them.

The writer and the readers finish work in batches; each batch wakes every event loop
it concerns once (one ``call_soon_threadsafe``), not once per request: a wake-up of a
busy loop is a GIL hand-off, and those are what used to dominate read and write
latency under load.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

# (the loop's future, its result, or the exception to set instead)
Outcome = tuple["asyncio.Future[Any]", Any, "BaseException | None"]


def _set_outcomes(outcomes: list[Outcome]) -> None:
    """On the loop: set each future that is still waiting."""
    for fut, result, exc in outcomes:
        if fut.done():  # the waiting request was cancelled or went away
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)


def settle_by_loop(by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]]) -> None:
    """From any thread: one loop callback per loop that settles its outcomes."""
    for loop, outcomes in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
            loop.call_soon_threadsafe(_set_outcomes, outcomes)
