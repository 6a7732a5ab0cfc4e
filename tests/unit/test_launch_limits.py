"""Launch quotas of the Binder service: per user and per repository, held
only while a launch is in progress."""

from __future__ import annotations

import pytest

from hpcbinder.web.launcher import server_name
from hpcbinder.web.policy import LaunchLimits, LaunchRefused


def test_launches_are_limited_per_user_and_per_repository() -> None:
    limits = LaunchLimits(per_user=1, per_repo=2)
    with limits.hold("alice", "repo-a"):
        busy = pytest.raises(LaunchRefused, match="You already have 1 launches in progress")
        with busy, limits.hold("alice", "repo-b"):
            pass
        full = pytest.raises(LaunchRefused, match="repo-a is being launched 2 times")
        with limits.hold("bob", "repo-a"), full, limits.hold("carol", "repo-a"):
            pass
    with limits.hold("alice", "repo-b"):  # released when the launch ends
        pass


def test_a_failed_launch_releases_its_slot() -> None:
    limits = LaunchLimits(per_user=1, per_repo=1)
    with pytest.raises(RuntimeError), limits.hold("alice", "repo"):
        raise RuntimeError("spawn failed")
    with limits.hold("alice", "repo"):
        pass


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/org/repo",
        "https://github.com/Some_Org/Very.Long.Repository.Name-With-Stuff.git",
        "file:///var/tmp/x/2024-data",
        "https://gitlab.com/a/b/c/d",
        "git://host/---/___",
    ],
)
def test_server_names_are_jupyterhub_safe_slugs(url: str) -> None:
    from jupyterhub.slugs import is_valid_safe_slug

    name = server_name(url)
    assert is_valid_safe_slug(name), name
    assert server_name(url) == name and server_name(url + "x") != name
