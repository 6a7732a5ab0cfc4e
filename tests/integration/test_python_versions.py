"""Python versions on a site with bases on two Debian releases, as the dev
cluster offers them (bookworm's 3.11 ``default``, trixie's 3.13 ``py313``):
runtime.txt picks the base, a 3.13 image launches JupyterLab in a Slurm job,
and a version no base offers follows the site's ``python_policy``."""

from __future__ import annotations

import asyncio
import os
import secrets
import shlex
from pathlib import Path
from typing import Any

import pytest

from hpcbinder.config import Site
from hpcbinder.images.launch import image_entrypoint, launch_argv
from hpcbinder.jobs.request import request_for
from hpcbinder.jobs.servers import ServerJobs, accepts_connections
from hpcbinder.jobs.serverscript import ServerJob, render_server_script, workspace_for
from tests.conftest import SITE_BIN, DevCluster, as_account, free_port, running_build_server
from tests.hubhelpers import Hub, execute
from tests.integration.test_build import (  # noqa: F401 (dev_base, workspace: fixtures)
    build,
    dev_base,
    workspace,
)
from tests.repohelpers import git, local_spec
from tests.storehelpers import DEV_BASE, dev_cluster_base, workspace_site

DEV_PY313 = DEV_BASE.with_name("py313.sif")
#: Both bases as the dev cluster's site file declares them.
BASES = {
    "default": {"python": "3.11", "source": "bookworm"},
    "py313": {"python": "3.13", "source": "trixie"},
}
#: What a researcher's code sees: the interpreter's version and the
#: repository's requirement.
PROBE = "import sys, six; print(f'{sys.version_info[0]}.{sys.version_info[1]}', six.__version__)"
PROBED = "3.13 1.16.0"
LAB_SECONDS = 180

pytestmark = [pytest.mark.slurm, pytest.mark.apptainer]


@pytest.fixture(scope="session")
def py313_base(devcluster: DevCluster) -> Path:
    return dev_cluster_base(DEV_PY313)


@pytest.fixture
def two_bases(workspace: Path, py313_base: Path) -> Path:  # noqa: F811 (the fixture)
    """test_build's workspace, whose store has the trixie base beside the default."""
    (workspace / "store" / "bases" / "py313.sif").symlink_to(py313_base)
    return workspace


def two_base_site(root: Path, **changes: Any) -> Site:
    settings = workspace_site(root).model_dump()
    settings["bases"] = BASES
    settings.update(changes)
    return Site.model_validate(settings)


def python_repo(root: Path, version: str) -> Path:
    """A repository asking for Python ``version`` with one requirement."""
    repo = root / "repos" / f"python-{version}"
    repo.mkdir()
    (repo / "runtime.txt").write_text(f"python-{version}\n")
    (repo / "requirements.txt").write_text("six==1.16.0\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"python {version}")
    return repo


def build_as_alice(site: Site, root: Path, repo: Path) -> tuple[int, list[str], list[str]]:
    """``hpcbinder build`` as a researcher through a build server for
    ``site``: exit status, stdout and stderr lines."""
    site_file = root / "site.yaml"
    site_file.write_text(site.model_dump_json())
    with running_build_server(site_file):
        built = as_account(
            "alice",
            [str(SITE_BIN / "hpcbinder"), "--site", str(site_file), "build", local_spec(repo)],
            timeout=600,
        )
    return built.returncode, built.stdout.splitlines(), built.stderr.splitlines()


def no_images(site: Site) -> list[Path]:
    """Whatever the store holds besides its bases and empty folders."""
    return [p for p in site.image_store.rglob("*") if p.is_file() and "bases" not in p.parts]


def test_python_313_builds_and_launches_jupyterlab_on_the_trixie_base(
    two_bases: Path, devcluster: DevCluster
) -> None:
    repo = python_repo(two_bases, "3.13")
    (two_bases / "ws").mkdir()
    (two_bases / "ws").chmod(0o1777)
    site = two_base_site(two_bases, workspace={"root": str(two_bases / "ws"), "mode": "ephemeral"})
    record, events = build(site, repo)
    assert events[-1].phase == "ready"
    assert record.meta.base == "py313"
    ran = as_account("alice", [*launch_argv(record), "python", "-c", PROBE], timeout=120)
    assert ran.stdout.strip() == PROBED, ran.stdout + ran.stderr

    # The server job a launch submits, with JupyterLab as its command.
    home = Path("/home/alice")
    port = free_port()
    token = secrets.token_hex(16)
    job = ServerJob(
        "alice",
        home,
        request_for(site, None, {"time": "00:10:00"}, user="alice"),
        launch_argv(record),
        # A hub's token travels in the job's environment (APPTAINERENV_*);
        # this throwaway one of a loopback server goes in argv.
        [
            "jupyter-lab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--IdentityProvider.token={token}",
        ],
        workspace=workspace_for(site, "alice", home, "python-313"),
        entrypoint=tuple(image_entrypoint(record)),
    )
    jobs = ServerJobs("alice", devcluster.slurm)
    job_id = asyncio.run(jobs.submit(render_server_script(site, job), {}))
    try:
        listening = jobs.wait_listening(job_id, 1.0, lambda: accepts_connections("127.0.0.1", port))
        asyncio.run(asyncio.wait_for(listening, LAB_SECONDS))
        # hubhelpers' kernel client, pointed at the lab itself (token auth).
        lab = Hub(f"http://127.0.0.1:{port}", token, Path(os.devnull), {}, two_bases)
        assert execute(lab, "/", PROBE).strip() == PROBED
    finally:
        asyncio.run(jobs.cancel(job_id))
        log = home / f".hpcbinder-server-{job_id}.log"
        print(log.read_text(errors="replace") if log.is_file() else "no server log")
        log.unlink(missing_ok=True)


def test_python_312_under_nearest_builds_on_the_newer_of_two_equally_near(
    two_bases: Path,
) -> None:
    """3.11 and 3.13 are both one minor version away: the newer is used and
    the researcher is told which."""
    repo = python_repo(two_bases, "3.12")
    status, _, err = build_as_alice(two_base_site(two_bases), two_bases, repo)
    assert status == 0, "\n".join(err)
    assert any(
        "Python 3.12 is not offered by this site; using the nearest, 3.13" in line for line in err
    ), err
    run = next(x for x in err if x.startswith("run it with: "))
    argv = shlex.split(run.removeprefix("run it with: ").removesuffix(" COMMAND"))
    ran = as_account("alice", [*argv, "python", "-c", PROBE], timeout=120)
    assert ran.stdout.strip() == PROBED, ran.stdout + ran.stderr


def test_python_312_under_exact_fails_in_one_line_and_builds_nothing(two_bases: Path) -> None:
    repo = python_repo(two_bases, "3.12")
    site = two_base_site(two_bases, python_policy="exact")
    status, out, err = build_as_alice(site, two_bases, repo)
    assert status != 0 and out == []
    # Past the progress lines ("[  0.0s] fetching: ..."), one line says why.
    (error,) = [line for line in err if not line.startswith("[")]
    assert error.startswith("error: runtime.txt: Python 3.12 is not offered"), err
    assert "3.11, 3.13" in error and "exact" in error, err
    assert no_images(site) == []
