"""Slow fetches hold only the build server's fetch pool (review of issue
23): a few hostile record services that never answer used to hold every
thread of asyncio's default executor for ``repos.fetch_timeout_seconds``,
and every request (its MUNGE check, a lookup of a built image) waited."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from pathlib import Path

import pytest

from hpcbinder.images.client import ServerEvent
from hpcbinder.images.server import BuildQueue
from hpcbinder.images.store import ImageRecord, image_store
from hpcbinder.render.pipeline import Prepared
from tests.repohelpers import site_for_tests
from tests.unit.fakes import publish_fake_image

KEY = "0123456789abcdef0123456789abcdef"
#: More fetches than asyncio's default executor has threads here.
STALLED = min(32, (os.cpu_count() or 1) + 4) + 2


def test_stalled_fetches_leave_lookups_to_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = site_for_tests(
        tmp_path,
        image_store=str(tmp_path / "store"),
        build={"max_parallel_fetches": 2, "max_builds_per_user": 100},
    )
    store = image_store(site)
    publish_fake_image(store, KEY)
    release = threading.Event()
    fetching: list[str] = []

    def stalled(_queue: BuildQueue, spec: str, _user: str) -> Prepared:
        """A record service that does not answer until the fetch's deadline."""
        fetching.append(spec)
        release.wait(30)
        raise OSError(errno.ETIMEDOUT, "timed out")

    monkeypatch.setattr(BuildQueue, "prepare", stalled)
    monkeypatch.setattr(BuildQueue, "_readable_name", lambda _queue, spec: spec)

    async def scenario() -> tuple[ImageRecord | None, int, list[list[ServerEvent]]]:
        queue = BuildQueue(site)
        streams = [queue.stream(f"gh/org/repo{i}/main", "alice") for i in range(STALLED)]
        try:
            while len(fetching) < 2:
                await asyncio.sleep(0.05)
            # What /used and every request's MUNGE check do, in the default executor.
            found = await asyncio.wait_for(asyncio.to_thread(store.find, KEY, "bob"), 10)
            at_once = len(fetching)
        finally:
            release.set()
        heard = [[event async for event in stream.follow()] for stream in streams]
        return found, at_once, heard

    found, at_once, heard = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert found is not None and found.meta.key == KEY
    assert at_once == 2  # the site's limit, not the pool's threads
    waited = [e for events in heard for e in events if e.phase == "waiting"]
    assert len(waited) == STALLED - 2
    assert "build.max_parallel_fetches" in waited[0].message
    assert all(events[-1].phase == "failed" for events in heard)
