"""A private repository through the Binder link, after login: bob's build
stream ends with the line it ends with for a repository that does not
exist, so the Binder service tells him nothing of alice's (the old build
server said "is mode 700" of hers and "is not a git repository" of the
missing one); nothing is built or launched for him."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcbinder.errors import NoAccess
from hpcbinder.seams import proc
from tests.binderhelpers import build_events, user_token
from tests.conftest import DevCluster
from tests.e2e.conftest import running_binder
from tests.repohelpers import local_spec

pytestmark = pytest.mark.e2e


@pytest.fixture
def passable(devcluster: DevCluster) -> Iterator[Path]:
    """A folder of alice's that others may pass through but not list (711),
    holding her mode-700 repository ``analysis``."""
    folder = Path("/home/alice") / f"hpcbinder-binder-{uuid.uuid4().hex[:8]}"

    def as_alice(*argv: str) -> None:
        proc.check(proc.run(list(argv), user="alice", cwd=Path("/home/alice"), timeout=60))

    as_alice("mkdir", "-m", "711", str(folder))
    as_alice("git", "init", "-q", "-b", "main", str(folder / "analysis"))
    identity = ["-c", "user.name=a", "-c", "user.email=a@hpcbinder.invalid"]
    as_alice(
        "git",
        "-C",
        str(folder / "analysis"),
        *identity,
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "one",
    )
    as_alice("chmod", "700", str(folder / "analysis"))
    try:
        yield folder
    finally:
        proc.run(["rm", "-rf", str(folder)], user="alice", timeout=60)


def test_bob_learns_nothing_of_alices_private_repository_through_the_binder_link(
    passable: Path,
) -> None:
    repos = {"local_roots": [str(passable)], "protocols": ["https", "file"]}
    with running_binder({"repos": repos}) as binder:
        bob = user_token(binder.hub, "bob")
        answers = []
        for name in ("analysis", "nothing"):
            events = build_events(binder.url, local_spec(passable / name, "main"), bob)
            assert events[-1]["phase"] == "failed", events
            readable = f"{passable.name}/{name} @ main"
            assert events[-1]["message"].strip() == str(NoAccess.about(readable)), events
            answers.append([(e["phase"], e["message"].replace(readable, "NAME")) for e in events])
        assert answers[0] == answers[1]
        assert binder.hub.api("GET", "/users/bob")["servers"] == {}
