"""The Binder service's build coordinator with a fake build server: a
researcher's viewers of one spec share one build request (a late viewer replays what
it said so far), every viewer hears a failure, the queue and builds in
progress reach the metrics, and a finished spec is asked for afresh."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from hpcbinder.images.builder import ImageBuildError
from hpcbinder.images.client import BuildRefused, BuildServerError, ServerEvent
from hpcbinder.images.store import image_store
from hpcbinder.render.pipeline import Fetched
from hpcbinder.sources.providers import ResolvedRepo
from hpcbinder.web.builds import BuildCoordinator, BuildSession
from hpcbinder.web.events import Event
from hpcbinder.web.metrics import Metrics
from tests.repohelpers import site_for_tests
from tests.unit.fakes import publish_fake_image

SPEC = "gh/someone/analysis/main"
KEY = "0123456789abcdef0123456789abcdef"
EVENTS = [
    ServerEvent("fetching", "Fetching gh/someone/analysis/main"),
    ServerEvent("waiting", "Waiting for a build slot", queue_position=2),
    ServerEvent("building", "Building image 0123…"),
    ServerEvent("log", "Step 1/3: conda install"),
]


def fetched(key: str = KEY) -> Fetched:
    repo = ResolvedRepo(SPEC, "https://github.com/someone/analysis", "main", "c" * 40)
    return Fetched(repo, Path("/checkouts/c"), key, reads_whole_repo=False)


class FakeBuildServer:
    """A :class:`hpcbinder.web.builds.BuildRequester`: says ``EVENTS``, then
    holds each request until :attr:`release` is set and ends it with
    ``outcome`` (a result, or an exception to raise)."""

    def __init__(self, outcome: Fetched | Exception, events: list[ServerEvent] = EVENTS) -> None:
        self.outcome = outcome
        self.events = events
        self.requests: list[tuple[str, str | None]] = []
        self.said_all = threading.Event()
        self.release = threading.Event()

    def request(
        self, spec: str, on_event: Callable[[ServerEvent], None], *, for_user: str | None = None
    ) -> Fetched:
        self.requests.append((spec, for_user))
        for event in self.events:
            on_event(event)
        self.said_all.set()
        self.release.wait(5)
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


@pytest.fixture
def coordinator_for(tmp_path: Path) -> Callable[[FakeBuildServer], BuildCoordinator]:
    """A coordinator on a site whose store holds image :data:`KEY`."""
    site = site_for_tests(tmp_path, image_store=str(tmp_path / "images"))
    publish_fake_image(image_store(site), KEY)
    return lambda server: BuildCoordinator(site, Metrics(), client=server)


async def heard(session: BuildSession) -> list[Event]:
    return await asyncio.wait_for(_all(session), 5)


async def _all(session: BuildSession) -> list[Event]:
    return [event async for event in session.follow()]


def gauge(coordinator: BuildCoordinator, name: str) -> float | None:
    return coordinator.metrics.registry.get_sample_value(name)


def test_two_viewers_of_one_spec_share_one_request(
    coordinator_for: Callable[[FakeBuildServer], BuildCoordinator],
) -> None:
    server = FakeBuildServer(fetched())
    coordinator = coordinator_for(server)

    async def scenario() -> tuple[list[Event], list[Event], BuildSession]:
        first = coordinator.session(SPEC, "alice")
        following = asyncio.create_task(heard(first))
        await asyncio.to_thread(server.said_all.wait, 5)
        # Mid-build: a second viewer (the researcher's other tab) joins the same request.
        late = coordinator.session(SPEC, "alice")
        assert late is first
        assert gauge(coordinator, "hpcbinder_builds_in_progress") == 1
        server.release.set()
        return await heard(late), await following, first

    late, early, session = asyncio.run(scenario())
    assert server.requests == [(SPEC, "alice")]  # one request, for the first viewer
    assert early == late  # the late viewer replayed everything from the first event
    assert [(e.phase, e.message) for e in early] == [
        ("fetching", "Fetching gh/someone/analysis/main\n"),
        ("waiting", "Waiting for a build slot\n"),
        ("building", "Building image 0123…\n"),
        ("building", "Step 1/3: conda install\n"),
        ("built", f"Found built image {KEY}\n"),
    ]
    assert early[1].extra == {"queue_position": 2}
    assert early[-1].extra == {"imageName": KEY}
    assert session.result is not None and session.result.record.key == KEY
    assert gauge(coordinator, "hpcbinder_builds_in_progress") == 0
    assert (
        coordinator.metrics.registry.get_sample_value(
            "hpcbinder_build_duration_seconds_count", {"status": "success"}
        )
        == 1
    )


def test_a_queued_build_is_counted_until_it_starts(
    coordinator_for: Callable[[FakeBuildServer], BuildCoordinator],
) -> None:
    server = FakeBuildServer(fetched(), events=EVENTS[:2])
    coordinator = coordinator_for(server)

    async def scenario() -> None:
        session = coordinator.session(SPEC, "alice")
        await asyncio.to_thread(server.said_all.wait, 5)
        assert gauge(coordinator, "hpcbinder_build_queue_length") == 1
        assert gauge(coordinator, "hpcbinder_builds_in_progress") == 0
        server.release.set()
        await heard(session)

    asyncio.run(scenario())
    assert gauge(coordinator, "hpcbinder_build_queue_length") == 0
    # Nothing was built here (the image was there already): no build duration.
    assert (
        coordinator.metrics.registry.get_sample_value(
            "hpcbinder_build_duration_seconds_count", {"status": "success"}
        )
        is None
    )


@pytest.mark.parametrize(
    ("failure", "says"),
    [
        (
            ImageBuildError(KEY, "conda", "exited with status 1", ["Solving...", "conflict"]),
            f"build of {KEY} failed at conda: exited with status 1\n  | Solving...\n  | conflict\n",
        ),
        (BuildRefused("repos.allowed: github.com/someone is not allowed"), "repos.allowed: "),
        (BuildServerError("cannot reach the build server"), "cannot reach the build server"),
        (KeyError("surprise"), f"Internal error while building {SPEC}\n"),
        (None, f"the build server reported image {'f' * 32}, not in the store\n"),
    ],
)
def test_a_failure_reaches_every_viewer_and_the_next_viewer_asks_again(
    coordinator_for: Callable[[FakeBuildServer], BuildCoordinator],
    failure: Exception | None,
    says: str,
) -> None:
    server = FakeBuildServer(failure or fetched("f" * 32))
    coordinator = coordinator_for(server)

    async def scenario() -> tuple[list[Event], list[Event], list[Event]]:
        first = coordinator.session(SPEC, "alice")
        following = asyncio.create_task(heard(first))
        await asyncio.to_thread(server.said_all.wait, 5)
        second = heard(coordinator.session(SPEC, "alice"))  # her other tab
        server.release.set()
        early, late = await asyncio.gather(following, second)
        # A viewer after the failure is not told the old failure: a new request.
        retry = coordinator.session(SPEC, "bob")
        assert retry is not first
        return early, late, await heard(retry)

    early, late, retried = asyncio.run(scenario())
    for events in (early, late, retried):
        assert events[-1].phase == "failed"
        assert events[-1].message.startswith(says)
    assert server.requests == [(SPEC, "alice"), (SPEC, "bob")]
    assert gauge(coordinator, "hpcbinder_builds_in_progress") == 0


def test_different_specs_are_different_requests(
    coordinator_for: Callable[[FakeBuildServer], BuildCoordinator],
) -> None:
    server = FakeBuildServer(fetched())
    coordinator = coordinator_for(server)
    server.release.set()

    async def scenario() -> None:
        one = coordinator.session(SPEC, "alice")
        other = coordinator.session(SPEC + "-v2", "alice")
        assert one is not other
        await asyncio.gather(heard(one), heard(other))

    asyncio.run(scenario())
    assert sorted(server.requests) == [(SPEC, "alice"), (SPEC + "-v2", "alice")]
