"""Each researcher's build request is their own, at the Binder service and
at the build server: alice over her disk limit does not refuse bob's
request for the same spec, nor does her message reach him; the image is
still built once, bob following alice's build without a build slot and
getting its image, his use recorded."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

from hpcbinder.images import server as buildserver
from hpcbinder.images.builder import Emit
from hpcbinder.images.client import BuildRefused, ServerEvent
from hpcbinder.images.server import BuildQueue, BuildStream
from hpcbinder.images.store import BuildEvent, ImageRecord, image_store
from hpcbinder.render.pipeline import Fetched, Prepared
from hpcbinder.web.builds import BuildCoordinator
from hpcbinder.web.events import Event
from hpcbinder.web.metrics import Metrics
from tests.repohelpers import git, local_spec, site_for_tests
from tests.unit.fakes import publish_fake_image
from tests.unit.test_build_coordinator import KEY, SPEC, fetched, heard

ALICE_REFUSED = (
    "alice's builds and checkouts take 3 MB, this site's limit of 2 MB "
    "(site file: build.max_user_disk_mb)"
)


class PerUserBuildServer:
    """A :class:`hpcbinder.web.builds.BuildRequester` that refuses alice
    (over her disk limit) and builds for anyone else, once :attr:`release`
    is set."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []
        self.release = threading.Event()

    def request(
        self, spec: str, on_event: Callable[[ServerEvent], None], *, for_user: str | None = None
    ) -> Fetched:
        self.requests.append((spec, for_user))
        on_event(ServerEvent("fetching", f"Fetching {spec}"))
        if for_user == "alice":
            raise BuildRefused(ALICE_REFUSED)
        self.release.wait(5)
        return fetched()


def test_the_binder_service_asks_for_each_researcher(tmp_path: Path) -> None:
    site = site_for_tests(tmp_path, image_store=str(tmp_path / "images"))
    publish_fake_image(image_store(site), KEY)
    server = PerUserBuildServer()
    coordinator = BuildCoordinator(site, Metrics(), client=server)

    async def scenario() -> tuple[list[Event], list[Event], list[Event]]:
        alice = coordinator.session(SPEC, "alice")
        bob = coordinator.session(SPEC, "bob")  # while alice's is in progress
        again = coordinator.session(SPEC, "bob")  # bob's second viewer shares his
        assert again is bob
        alices = await heard(alice)
        server.release.set()
        return alices, await heard(bob), await heard(again)

    alices, bobs, again = asyncio.run(scenario())
    assert not any("alice" in e.message for e in bobs)
    assert [e.phase for e in bobs] == ["fetching", "built"] and bobs == again
    assert alices[-1].phase == "failed" and ALICE_REFUSED in alices[-1].message
    assert sorted(server.requests, key=str) == [(SPEC, "alice"), (SPEC, "bob")]


# --- the build server ---------------------------------------------------------


def three_megabyte_repo(path: Path) -> str:
    path.mkdir(parents=True)
    (path / "data.bin").write_bytes(b"\0" * (3 << 20))
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "data")
    return local_spec(path)


async def outcome(stream: BuildStream) -> list[ServerEvent]:
    return await asyncio.wait_for(_events(stream), 60)


async def _events(stream: BuildStream) -> list[ServerEvent]:
    return [event async for event in stream.follow()]


def test_the_build_server_refuses_only_the_researcher_over_the_limit(tmp_path: Path) -> None:
    site = site_for_tests(
        tmp_path, image_store=str(tmp_path / "store"), build={"max_user_disk_mb": 2}
    )
    queue = BuildQueue(site)
    spec = three_megabyte_repo(tmp_path / "repo")
    # alice's earlier checkout of it counts: she is at her limit. Its image is built.
    publish_fake_image(image_store(site), queue.prepare(spec, "alice").rendered.env_key)

    async def scenario() -> tuple[list[ServerEvent], list[ServerEvent], BuildStream]:
        alice = queue.stream(spec, "alice")
        bob = queue.stream(spec, "bob")  # while alice's is in progress
        return await outcome(alice), await outcome(bob), bob

    alices, bobs, bob = asyncio.run(scenario())
    assert not any("alice" in event.message for event in bobs)
    assert bobs[-1].phase == "built" and bob.result is not None
    assert alices[-1].phase == "failed" and "alice's builds and checkouts" in alices[-1].message


class OneSlowBuild:
    """Stands in for :class:`hpcbinder.images.builder.Builder`: each build
    says a log line, takes a moment and publishes a stand-in image for its
    requester, counted in :attr:`builds`."""

    builds: ClassVar[list[str]] = []

    def __init__(self, site: Any) -> None:
        self.store = image_store(site)

    def build_image(self, prepared: Prepared, emit: Emit, user: str = "") -> ImageRecord:
        key = prepared.rendered.env_key
        self.builds.append(user)
        emit(BuildEvent("log", "Step 1/1: the build's own output", 0.0))
        time.sleep(0.5)
        publish_fake_image(self.store, key)
        self.store.record_use(key, user)
        record = self.store.lookup(key)
        assert record is not None
        return record


def test_the_build_server_builds_one_image_for_two_researchers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = site_for_tests(
        tmp_path,
        image_store=str(tmp_path / "store"),
        binder={"max_parallel_builds": 2},
        build={"max_user_disk_mb": 100},
    )
    monkeypatch.setattr(buildserver.builder, "Builder", OneSlowBuild)
    monkeypatch.setattr(OneSlowBuild, "builds", [])
    queue = BuildQueue(site)
    spec = three_megabyte_repo(tmp_path / "repo")

    async def scenario() -> tuple[list[ServerEvent], list[ServerEvent]]:
        alice = queue.stream(spec, "alice")
        bob = queue.stream(spec, "bob")
        return await outcome(alice), await outcome(bob)

    alices, bobs = asyncio.run(scenario())
    assert len(OneSlowBuild.builds) == 1  # for whoever's fetch ended first
    assert alices[-1].phase == bobs[-1].phase == "built"
    for events in (alices, bobs):  # the other followed the one build's progress
        assert "Step 1/1: the build's own output" in [e.message for e in events]
    store = image_store(site)
    [key] = [path.name for path in (store.root / "envs").iterdir()]
    assert store.users(key) == {"alice", "bob"}  # bob may launch it, and it is kept for him
