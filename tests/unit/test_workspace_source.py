"""Where a server's workspace comes from: the build server's checkout of the
launch's commit, found by the spawner; never a path in ``user_options``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tornado import web

from tests.unit.fakes import ScriptedSlurm
from tests.unit.test_spawner import spawner_for

COMMIT = "c" * 40


def test_the_workspace_is_seeded_from_the_build_servers_checkout(tmp_path: Path) -> None:
    cache = tmp_path / "repos"
    checkout = cache / "0123456789abcdef" / COMMIT
    checkout.mkdir(parents=True)
    options = {"image": "base:default", "workspace": {"slug": "org-repo", "commit": COMMIT}}
    spawner = spawner_for(tmp_path, ScriptedSlurm([]), options, repos={"cache_dir": str(cache)})
    job = spawner.server_job()
    assert job.seed is not None and job.seed.checkout == checkout


@pytest.mark.parametrize("planted", ["link", "none"])
def test_a_commit_without_a_checkout_is_a_400_before_a_job(tmp_path: Path, planted: str) -> None:
    cache = tmp_path / "repos"
    (cache / "0123456789abcdef").mkdir(parents=True)
    if planted == "link":  # only the build account writes there; still, no link is followed
        (cache / "0123456789abcdef" / COMMIT).symlink_to(Path.home())
    options = {"image": "base:default", "workspace": {"slug": "org-repo", "commit": COMMIT}}
    slurm = ScriptedSlurm([])
    spawner = spawner_for(tmp_path, slurm, options, repos={"cache_dir": str(cache)})
    with pytest.raises(web.HTTPError) as caught:
        asyncio.run(spawner.submit_batch_script())
    assert caught.value.status_code == 400
    assert f"workspace.commit: no checkout of {COMMIT}" in str(caught.value.log_message)
    assert not slurm.submissions
