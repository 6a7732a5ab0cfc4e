"""Fixtures of the end-to-end tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.binderhelpers import Binder, user_token
from tests.conftest import SHARED_SCRATCH, DevCluster, running_build_server
from tests.hubhelpers import close_hub, new_hub, site_with


@pytest.fixture
def binder(devcluster: DevCluster) -> Iterator[Binder]:
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
        }
    )
    with running_build_server(site):
        hub = new_hub(site)
        try:
            yield Binder(hub, hub.binder_url, user_token(hub, "alice"), root)
        finally:
            close_hub(hub)
