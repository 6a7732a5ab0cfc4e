"""Builds behind the ``/build`` stream, shared by everyone watching.

One :class:`BuildSession` per requested spec runs to its end on its own:
the first viewer starts it, later viewers replay what it said so far and
follow it, and a viewer closing its browser cancels nothing. Sessions for
different specs that render to the same environment share one build
through the image store's lock. At most ``binder.max_parallel_builds``
build at once; the rest wait in a queue and hear their position.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from hpcbinder import build, pipeline
from hpcbinder.config import Site
from hpcbinder.errors import UserError
from hpcbinder.images import ImageRecord
from hpcbinder.web.events import Event, failed
from hpcbinder.web.metrics import Metrics

log = logging.getLogger("hpcbinder.web")
#: Build log phases of :class:`hpcbinder.build.BuildEvent` shown as progress.
_PROGRESS = frozenset({"waiting", "building", "log", "smoke", "publishing"})


@dataclass(frozen=True)
class Built:
    prepared: pipeline.Prepared
    record: ImageRecord


class BuildSession:
    """A spec's fetch and build: its events so far, and its outcome."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.events: list[Event] = []
        self.result: Built | None = None
        self.done = False
        self._changed = asyncio.Condition()

    async def publish(self, event: Event) -> None:
        async with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    async def finish(self, event: Event, result: Built | None = None) -> None:
        async with self._changed:
            self.result = result
            self.events.append(event)
            self.done = True
            self._changed.notify_all()

    async def follow(self) -> AsyncIterator[Event]:
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


class BuildCoordinator:
    """Starts, shares and queues build sessions for one service."""

    def __init__(self, site: Site, metrics: Metrics) -> None:
        self.site = site
        self.metrics = metrics
        self._sessions: dict[str, BuildSession] = {}
        self._slots = asyncio.Semaphore(site.binder.max_parallel_builds)
        self._queue: list[BuildSession] = []
        self._building = 0

    def session(self, spec: str) -> BuildSession:
        """The running session for ``spec``, or a new one."""
        session = self._sessions.get(spec)
        if session is None or session.done:
            session = BuildSession(spec)
            self._sessions[spec] = session
            task = asyncio.get_running_loop().create_task(self._run(session))
            task.add_done_callback(lambda _: self._forget(session))
        return session

    def _forget(self, session: BuildSession) -> None:
        if self._sessions.get(session.spec) is session:
            del self._sessions[session.spec]

    async def _run(self, session: BuildSession) -> None:
        started = time.monotonic()
        try:
            await session.publish(Event("fetching", f"Fetching {session.spec}…\n"))
            prepared = await asyncio.to_thread(pipeline.prepare, session.spec, self.site)
            for warning in prepared.rendered.warnings:
                await session.publish(Event("fetching", f"warning: {warning}\n"))
            key = prepared.rendered.env_key
            store = build.image_store(self.site)
            record = await asyncio.to_thread(store.lookup, key)
            if record is None:
                record = await self._build(session, prepared)
                self.metrics.build_finished("success", time.monotonic() - started)
            await session.finish(
                Event("built", f"Found built image {key}\n", {"imageName": key}),
                Built(prepared, record),
            )
        except UserError as exc:
            await session.finish(failed(str(exc)))
        except build.ImageBuildError as exc:
            self.metrics.build_finished("failure", time.monotonic() - started)
            tail = "".join(f"  | {line}\n" for line in exc.tail[-15:])
            await session.finish(failed(f"{exc}\n{tail}"))
        except Exception:  # a failed event beats a stream that just stops
            log.exception("build of %s failed", session.spec)
            await session.finish(failed(f"Internal error while building {session.spec}"))

    async def _build(self, session: BuildSession, prepared: pipeline.Prepared) -> ImageRecord:
        self._queue.append(session)
        await self._announce_queue()
        try:
            async with self._slots:
                self._queue.remove(session)
                await self._announce_queue()
                self._building += 1
                self._report()
                try:
                    return await self._build_now(session, prepared)
                finally:
                    self._building -= 1
                    self._report()
        finally:
            if session in self._queue:  # cancelled while queued
                self._queue.remove(session)
                self._report()

    def _report(self) -> None:
        self.metrics.set_builds(self._building, len(self._queue))

    async def _announce_queue(self) -> None:
        self._report()
        for position, waiting in enumerate(self._queue, 1):
            await waiting.publish(
                Event(
                    "waiting",
                    f"Waiting for a build slot: number {position} in the queue\n",
                    {"queue_position": position},
                )
            )

    async def _build_now(self, session: BuildSession, prepared: pipeline.Prepared) -> ImageRecord:
        loop = asyncio.get_running_loop()
        await session.publish(Event("building", f"Building image {prepared.rendered.env_key}\n"))

        def emit(event: build.BuildEvent) -> None:
            if event.phase in _PROGRESS:
                progress = Event("building", event.message.rstrip("\n") + "\n")
                asyncio.run_coroutine_threadsafe(session.publish(progress), loop)

        builder = build.Builder(self.site)
        return await asyncio.to_thread(builder.build_image, prepared, emit)
