"""Builds behind the ``/build`` stream, shared by everyone watching.

The Binder service builds nothing itself: it asks the build server (as
its service account, on behalf of the researcher) and relays what it
says. One request per spec and researcher is in flight at a time; their
later viewers replay what it said so far and follow it, and a viewer
closing its browser cancels nothing. Another researcher's request for
the same spec is a request of their own: the build server's answer
(limits, disk quota, use record, refusal) is for whom it was asked, so a
session shared by spec would give a later researcher the first one's
refusal ("alice is over her disk limit") or image. The build itself is
still done once: the queue, per-user limits and the sharing of one
build between requests of the same environment are the build server's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

from hpcbinder.config import Site
from hpcbinder.images import builder
from hpcbinder.images.client import (
    BuildRefused,
    BuildServerClient,
    BuildServerError,
    NoAnonymousAccess,
    ServerEvent,
    published_image,
)
from hpcbinder.images.store import ImageRecord
from hpcbinder.images.streams import SharedStream
from hpcbinder.render.pipeline import Fetched
from hpcbinder.web.events import Event, failed
from hpcbinder.web.metrics import Metrics
from hpcbinder.web.privatebuilds import PrivateBuildFailed, PrivateBuilds, PrivateBuilt

log = logging.getLogger("hpcbinder.web")


@dataclass(frozen=True)
class Built:
    """An image of the shared store, as the build server reported it."""

    fetched: Fetched
    record: ImageRecord
    private: ClassVar[bool] = False

    @property
    def key(self) -> str:
        return self.record.key

    @property
    def commit(self) -> str:
        return self.fetched.repo.commit

    @property
    def from_image(self) -> bool:
        return self.fetched.reads_whole_repo


BuildSession = SharedStream[Event, Built | PrivateBuilt]


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
    """One build-server request per spec and researcher, shared by their
    viewers. ``client``: the site's build server unless given. A
    repository the build server cannot fetch is built by the researcher's
    own job (``private``; :mod:`hpcbinder.web.privatebuilds`)."""

    def __init__(
        self,
        site: Site,
        metrics: Metrics,
        client: BuildRequester | None = None,
        private: PrivateBuilds | None = None,
    ) -> None:
        self.site = site
        self.metrics = metrics
        self.client = BuildServerClient(site) if client is None else client
        self.private = PrivateBuilds(site, None) if private is None else private
        self._sessions: dict[tuple[str, str], BuildSession] = {}  # by (spec, researcher)
        self._building: set[tuple[str, str]] = set()
        self._queued: set[tuple[str, str]] = set()

    def session(self, spec: str, user: str) -> BuildSession:
        """``user``'s running session for ``spec``, or a new one."""
        key = (spec, user)
        session = self._sessions.get(key)
        if session is None or session.done:
            session = BuildSession(spec)
            self._sessions[key] = session
            task = asyncio.get_running_loop().create_task(self._run(session, user))
            task.add_done_callback(lambda _: self._forget(key, session))
        return session

    def _forget(self, key: tuple[str, str], session: BuildSession) -> None:
        if self._sessions.get(key) is session:
            del self._sessions[key]

    def _report(self, key: tuple[str, str], phase: str | None) -> None:
        """Builds in progress and queued (specs), as this service's viewers see them."""
        self._building.discard(key)
        self._queued.discard(key)
        if phase == "building":
            self._building.add(key)
        elif phase == "waiting":
            self._queued.add(key)
        building = {spec for spec, _ in self._building}
        self.metrics.set_builds(len(building), len({spec for spec, _ in self._queued} - building))

    async def _run(self, session: BuildSession, user: str) -> None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        built_here = False

        def on_event(event: ServerEvent) -> None:
            nonlocal built_here
            built_here = built_here or event.phase == "building"
            relayed = _relayed(event)
            self._report((session.key, user), relayed.phase)
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
        except NoAnonymousAccess:
            await self._private(session, user)
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
            self._report((session.key, user), None)

    async def _private(self, session: BuildSession, user: str) -> None:
        """``user``'s own job builds the spec into her store; her page gets
        its phases, then the image or the one line that says why not (for a
        repository she cannot read: the build server's, word for word)."""
        request = self.private.request("build", session.key)
        try:
            outcome = await self.private.run(request, user, session.publish)
        except PrivateBuildFailed as exc:
            await session.finish(failed(str(exc)))
            return
        await session.finish(
            Event(
                "built",
                f"Built in your private store: {outcome.env_key}\n",
                {"imageName": outcome.env_key},
            ),
            PrivateBuilt(outcome.env_key, outcome.commit, outcome.from_image),
        )
