"""A stream of events that many followers share: the first starts the work,
later ones replay what it said so far and follow it, and a follower that
leaves cancels nothing. Used for builds in the build server and for the
Binder service's viewers of one spec."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

E = TypeVar("E")
R = TypeVar("R")


class SharedStream(Generic[E, R]):
    """One piece of work's events so far, and its outcome."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.events: list[E] = []
        self.result: R | None = None
        self.done = False
        self._changed = asyncio.Condition()

    async def publish(self, event: E) -> None:
        async with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    async def finish(self, event: E, result: R | None = None) -> None:
        async with self._changed:
            self.result = result
            self.events.append(event)
            self.done = True
            self._changed.notify_all()

    async def follow(self) -> AsyncIterator[E]:
        """Every event from the first, then each new one, until the end."""
        seen = 0

        def news() -> bool:
            return len(self.events) > seen or self.done

        while True:
            async with self._changed:
                await self._changed.wait_for(news)
                fresh = self.events[seen:]
                finished = self.done
            seen += len(fresh)
            for event in fresh:
                yield event
            if finished and seen == len(self.events):
                return


async def keep_alive(
    last_write: Callable[[], float], ping: Callable[[], Awaitable[None]], seconds: float
) -> None:
    """Until cancelled: ``ping()`` whenever nothing was written for
    ``seconds`` (``last_write()``: a ``time.monotonic()`` reading), so that
    proxies and clients keep a quiet stream open."""
    while True:
        await asyncio.sleep(seconds / 2)
        if time.monotonic() - last_write() >= seconds:
            await ping()
