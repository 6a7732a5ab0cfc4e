"""The build server refuses what it cannot do, in one line, as the
researcher's error: never an internal error with a traceback in its log."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from hpcbinder.errors import NoAccess
from hpcbinder.seams import proc
from tests.conftest import SITE_BIN, DevCluster, as_account, running_build_server
from tests.repohelpers import local_spec

pytestmark = pytest.mark.slurm


@pytest.fixture
def private_repo(devcluster: DevCluster) -> Iterator[Path]:
    """A repository in a mode-700 folder of alice's home."""
    home = Path("/home/alice")
    private = home / f"private-{uuid.uuid4().hex[:8]}"
    repo = private / "analysis"

    def as_alice(*argv: str) -> None:
        proc.check(proc.run(list(argv), user="alice", cwd=home, timeout=60))

    as_alice("mkdir", "-m", "700", str(private))
    as_alice("git", "init", "-q", "-b", "main", str(repo))
    as_alice(
        "git",
        "-C",
        str(repo),
        "-c",
        "user.name=a",
        "-c",
        "user.email=a@x.invalid",
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "one",
    )
    try:
        yield repo
    finally:
        proc.run(["rm", "-rf", str(private)], user="alice", timeout=60)


def test_a_repository_the_build_server_cannot_read_is_refused(
    private_repo: Path, shared_dir: Path
) -> None:
    """bob asks for alice's repository in a mode-700 folder: the build
    server cannot read it (it answered 500 with a traceback once), bob
    neither; one line, the words of a repository that does not exist."""
    site = yaml.safe_load(Path("/etc/hpcbinder/site.yaml").read_text())
    site["repos"] = {
        **site.get("repos", {}),
        "local_roots": [str(private_repo.parent)],
        "cache_dir": str(shared_dir / "checkouts"),
    }
    site_file = shared_dir / "site.yaml"
    site_file.write_text(yaml.safe_dump(site))
    argv = [str(SITE_BIN / "hpcbinder"), "--site", str(site_file), "build"]
    with running_build_server(site_file):
        done = as_account("bob", [*argv, local_spec(private_repo, "main")], timeout=300)
    server_log = site_file.with_suffix(".build-server.log").read_text()
    assert done.returncode == 2, (done.stdout, done.stderr)
    error = done.stderr.strip().splitlines()
    name = f"{private_repo.parent.name}/{private_repo.name} @ main"
    assert error == [f"error: {NoAccess.about(name)}"], done.stderr
    assert "internal error" not in done.stderr
    assert "Traceback" not in server_log, server_log
