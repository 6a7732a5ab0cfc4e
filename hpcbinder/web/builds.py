"""Builds behind the ``/build`` stream, shared by everyone watching.

The Binder service builds nothing itself: it asks the build server (as
its service account, on behalf of the researcher) and relays what it
says. One request per spec is in flight at a time; later viewers replay
what it said so far and follow it, and a viewer closing its browser
cancels nothing. The queue, per-user limits and the sharing of one
environment between specs are the build server's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from hpcbinder.config import Site
from hpcbinder.images import builder
from hpcbinder.images.client import (
    BuildRefused,
    BuildServerClient,
    BuildServerError,
    ServerEvent,
    published_image,
)
from hpcbinder.images.store import ImageRecord
from hpcbinder.images.streams import SharedStream
from hpcbinder.render.pipeline import Fetched
from hpcbinder.web.events import Event, failed
from hpcbinder.web.metrics import Metrics

log = logging.getLogger("hpcbinder.web")


@dataclass(frozen=True)
class Built:
    fetched: Fetched
    record: ImageRecord


BuildSession = SharedStream[Event, Built]


def _relayed(event: ServerEvent) -> Event:
    """The build server's event as BinderHub's client expects it."""
    message = event.message + "\n"
    if event.phase == "waiting" and event.queue_position is not None:
        return Event("waiting", message, {"queue_position": event.queue_position})
    if event.phase == "waiting":
        return Event("waiting", message)
    if event.phase == "fetching":
        return Event("fetching", message)
    return Event("building", message)


class BuildRequester(Protocol):
    """What the coordinator asks of the build server
    (:meth:`BuildServerClient.request`): the seam tests fake."""

    def request(
        self, spec: str, on_event: Callable[[ServerEvent], None], *, for_user: str | None = None
    ) -> Fetched: ...


class BuildCoordinator:
    """One build-server request per spec, shared by its viewers. ``client``:
    the site's build server unless given."""

    def __init__(self, site: Site, metrics: Metrics, client: BuildRequester | None = None) -> None:
        self.site = site
        self.metrics = metrics
        self.client = BuildServerClient(site) if client is None else client
        self._sessions: dict[str, BuildSession] = {}
        self._building: set[str] = set()
        self._queued: set[str] = set()

    def session(self, spec: str, user: str) -> BuildSession:
        """The running session for ``spec``, or a new one on behalf of ``user``."""
        session = self._sessions.get(spec)
        if session is None or session.done:
            session = BuildSession(spec)
            self._sessions[spec] = session
            task = asyncio.get_running_loop().create_task(self._run(session, user))
            task.add_done_callback(lambda _: self._forget(session))
        return session

    def _forget(self, session: BuildSession) -> None:
        if self._sessions.get(session.key) is session:
            del self._sessions[session.key]

    def _report(self, spec: str, phase: str | None) -> None:
        """Builds in progress and queued, as this service's viewers see them."""
        self._building.discard(spec)
        self._queued.discard(spec)
        if phase == "building":
            self._building.add(spec)
        elif phase == "waiting":
            self._queued.add(spec)
        self.metrics.set_builds(len(self._building), len(self._queued))

    async def _run(self, session: BuildSession, user: str) -> None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        built_here = False

        def on_event(event: ServerEvent) -> None:
            nonlocal built_here
            built_here = built_here or event.phase == "building"
            relayed = _relayed(event)
            self._report(session.key, relayed.phase)
            asyncio.run_coroutine_threadsafe(session.publish(relayed), loop)

        try:
            fetched = await asyncio.to_thread(
                self.client.request, session.key, on_event, for_user=user
            )
            record = await asyncio.to_thread(published_image, self.site, fetched)
            for warning in fetched.warnings:
                log.info("%s: warning: %s", session.key, warning)
            if built_here:
                self.metrics.build_finished("success", time.monotonic() - started)
            await session.finish(
                Event(
                    "built",
                    f"Found built image {fetched.env_key}\n",
                    {"imageName": fetched.env_key},
                ),
                Built(fetched, record),
            )
        except BuildRefused as exc:
            await session.finish(failed(str(exc)))
        except builder.ImageBuildError as exc:
            self.metrics.build_finished("failure", time.monotonic() - started)
            tail = "".join(f"  | {line}\n" for line in exc.tail[-15:])
            await session.finish(failed(f"{exc}\n{tail}"))
        except BuildServerError as exc:
            log.error("build of %s: %s", session.key, exc)
            await session.finish(failed(f"{exc}"))
        except Exception:  # a failed event beats a stream that just stops
            log.exception("build of %s failed", session.key)
            await session.finish(failed(f"Internal error while building {session.key}"))
        finally:
            self._report(session.key, None)
