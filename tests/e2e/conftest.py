"""Fixtures of the end-to-end tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.binderhelpers import Binder, user_token
from tests.conftest import SHARED_SCRATCH, DevCluster, running_build_server
from tests.hubhelpers import Hub, close_hub, new_hub, site_with, stop_server


@contextmanager
def running_binder(extra: dict[str, Any] | None = None) -> Iterator[Binder]:
    """The Binder service with its hub and build server, for a site with
    ``extra`` settings; repositories below a fresh local root."""
    root = SHARED_SCRATCH / f"binder-{uuid.uuid4().hex[:8]}"
    root.mkdir(parents=True)
    site = site_with(
        {
            "repos": {
                "local_roots": [str(root)],
                "protocols": ["https", "file"],
                "ban": [".*/banned-.*"],
            },
            "binder": {"max_parallel_builds": 1, "max_launches_per_user": 1},
            **(extra or {}),
        }
    )
    with running_build_server(site):
        hub = new_hub(site)
        try:
            yield Binder(hub, hub.binder_url, user_token(hub, "alice"), root)
        finally:
            close_hub(hub)


@pytest.fixture
def hub(devcluster: DevCluster) -> Iterator[Hub]:
    """A hub of the dev site, as the service account."""
    hub = new_hub()
    try:
        yield hub
    finally:
        close_hub(hub)


@pytest.fixture(scope="module")
def module_hub(devcluster: DevCluster) -> Iterator[Hub]:
    """One hub of the dev site for a module's tests that start no server
    (refusals, pages): starting one takes 5-7 s."""
    hub = new_hub()
    try:
        yield hub
    finally:
        close_hub(hub)


@pytest.fixture(scope="module")
def module_binder(devcluster: DevCluster) -> Iterator[Binder]:
    """One Binder service of the dev site (its hub, proxy and build server)
    for a module's tests: starting them takes 10-15 s."""
    with running_binder() as service:
        yield service


@pytest.fixture
def binder(module_binder: Binder) -> Iterator[Binder]:
    """The module's Binder service; each test leaves no server running."""
    yield module_binder
    for user in ("alice", "bob"):
        for name in module_binder.hub.api("GET", f"/users/{user}")["servers"]:
            stop_server(module_binder.hub, user, name)
