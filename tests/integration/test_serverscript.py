"""A notebook server's job script: resources, binds, workspace seeding, and
the command inside the image, run for real as a researcher."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from hpcbinder.config import Site
from hpcbinder.jobs.request import request_for
from hpcbinder.jobs.serverscript import Seed, ServerJob, render_server_script, workspace_for
from hpcbinder.seams import apptainer
from hpcbinder.seams.slurm import SubmitOptions
from tests.conftest import DevCluster
from tests.repohelpers import git

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


#: A git config section that makes any ``git status`` run a command.
ARMED = '[core]\n\tfsmonitor = "touch {ran}; false"\n'


def git_repo(folder: Path) -> None:
    """A git repository with one commit (notes.txt) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("notes\n")
    git(folder, "init", "-q")
    git(folder, "add", "-A")
    git(folder, "commit", "-q", "-m", "notes")


def git_status_as_alice(folder: Path) -> None:
    """The researcher's own ``git status`` in ``folder`` on the host."""
    subprocess.run(
        ["runuser", "-u", "alice", "--", "env", "HOME=/home/alice", "git", "status"],
        cwd=folder,
        capture_output=True,
        check=False,
    )


def run_server_job(devcluster: DevCluster, site: Site, job: ServerJob) -> None:
    job_id = devcluster.slurm.submit(render_server_script(site, job), SubmitOptions(), user="alice")
    info = devcluster.slurm.wait(job_id, timeout=120)
    log = job.home / f".hpcbinder-server-{job_id}.log"
    output = log.read_text() if log.exists() else ""
    log.unlink(missing_ok=True)
    assert (info.state, info.exit_code) == ("COMPLETED", 0), output


@pytest.mark.slurm
@pytest.mark.apptainer
def test_seeding_from_the_image_writes_through_none_of_its_links_and_keeps_no_git(
    devcluster: DevCluster, shared_dir: Path
) -> None:
    """postBuild made the image's repository folder: a link where the job
    writes its marker, leading to a file of the researcher's, and git
    repositories (top and nested) whose config runs a command on any
    ``git status``. Seeding copies that folder, and the researcher later
    runs git in the workspace on a login node."""
    victim = Path(f"/home/alice/.hpcbinder-test-victim-{shared_dir.name}")
    victim.write_text("untouched\n")
    subprocess.run(["chown", "alice:alice", str(victim)], check=True)
    ran = shared_dir / "fsmonitor-ran"
    sandbox = shared_dir / "image"
    repo = sandbox / "srv" / "repo"
    for folder in (repo, repo / "sub"):
        git_repo(folder)
        with (folder / ".git" / "config").open("a") as config:
            config.write(ARMED.format(ran=ran))
    (repo / ".hpcbinder-workspace").symlink_to(victim)
    # The trap is armed: git on the host runs the config's command.
    subprocess.run(["git", "-c", f"safe.directory={repo}", "status"], cwd=repo, capture_output=True)
    assert ran.exists()
    ran.unlink()
    (sandbox / "bin").mkdir()
    shutil.copy("/bin/busybox", sandbox / "bin" / "busybox")
    for applet in ("sh", "cp"):
        (sandbox / "bin" / applet).symlink_to("busybox")
    subprocess.run(["chmod", "-R", "a+rX", str(sandbox)], check=True)
    image = shared_dir / "postbuild.sif"
    apptainer.build(sandbox, image, user=devcluster.build_user, timeout=300)

    site = site_with(shared_dir / "workspaces")
    home = Path("/home/alice")
    workspace = workspace_for(site, "alice", home, "repo-postbuild")
    job = ServerJob(
        "alice",
        home,
        request_for(site, None, {"time": "00:05:00"}, user="alice"),
        ["apptainer", "exec", str(image)],
        ["/bin/busybox", "true"],
        workspace=workspace,
        seed=Seed(shared_dir / "no-checkout", COMMIT, from_image=True),
    )
    try:
        run_server_job(devcluster, site, job)
        assert victim.read_text() == "untouched\n"
        marker = workspace / ".hpcbinder-workspace"
        assert not marker.is_symlink() and marker.read_text() == f"{COMMIT}\n"
        assert (workspace / "notes.txt").read_text() == "notes\n"
        assert (workspace / "sub" / "notes.txt").is_file()
        assert not list(workspace.rglob(".git"))
        git_status_as_alice(workspace)
        git_status_as_alice(workspace / "sub")
        assert not ran.exists()
    finally:
        victim.unlink(missing_ok=True)


@pytest.mark.slurm
@pytest.mark.apptainer
def test_a_workspace_seeded_from_a_checkout_has_no_git_the_container_can_arm(
    devcluster: DevCluster, busybox_image: Path, shared_dir: Path
) -> None:
    """The repository's code (here the server's command) sets core.fsmonitor
    in the workspace's .git/config where there is one; the researcher's own
    ``git status`` on a login node would then run it."""
    checkout = shared_dir / "checkout"
    ran = shared_dir / "fsmonitor-ran"
    git_repo(checkout)
    subprocess.run(["chmod", "-R", "a+rX", str(checkout)], check=True)
    site = site_with(shared_dir / "workspaces")
    home = Path("/home/alice")
    workspace = workspace_for(site, "alice", home, "repo-git")
    section = ARMED.format(ran=ran).replace("\n", "\\n").replace("\t", "\\t")
    arm = f"[ -d .git ] && printf {shlex.quote(section)} >> .git/config"  # printf's escapes
    job = ServerJob(
        "alice",
        home,
        request_for(site, None, {"time": "00:05:00"}, user="alice"),
        ["apptainer", "exec", str(busybox_image)],
        ["/bin/busybox", "sh", "-c", f"{arm}; true"],
        workspace=workspace,
        seed=Seed(checkout, COMMIT, from_image=False),
    )
    run_server_job(devcluster, site, job)
    assert (workspace / "notes.txt").read_text() == "notes\n"
    git_status_as_alice(workspace)
    assert not ran.exists(), "git status ran the container's command"
    assert not (workspace / ".git").exists()


@pytest.mark.slurm
@pytest.mark.apptainer
def test_a_workspace_a_container_linked_to_the_home_is_never_bound(
    devcluster: DevCluster, busybox_image: Path, shared_dir: Path
) -> None:
    """One server's container, which can write the workspace root (bound
    at /scratch, as a root below a site's /scratch/USER bind would be, a
    bind the site-file check does not know of), links another repository's
    workspace name to alice's home. Its next launch skipped seeding (the name exists) and bound her
    whole home into the container; now it refuses the workspace in one line
    and starts nothing."""
    root = shared_dir / "workspaces"
    root.mkdir()
    root.chmod(0o777)
    site = site_with(root)
    home = Path("/home/alice")
    target = workspace_for(site, "alice", home, "target")
    checkout = shared_dir / "checkout"
    checkout.mkdir()
    (checkout / "notes.txt").write_text("notes\n")
    pwned = home / ".hpcbinder-test-pwned"
    pwned.unlink(missing_ok=True)
    states = []
    for slug, command in [
        ("planter", f"/bin/busybox ln -s {home} /scratch/{target.name}"),
        ("target", "/bin/busybox touch .hpcbinder-test-pwned"),
    ]:
        job = ServerJob(
            "alice",
            home,
            request_for(site, None, {"time": "00:05:00"}, user="alice"),
            ["apptainer", "exec", "--bind", f"{root}:/scratch", str(busybox_image)],
            ["/bin/busybox", "sh", "-c", command],
            workspace=workspace_for(site, "alice", home, slug),
            seed=Seed(checkout, COMMIT, from_image=False) if slug == "target" else None,
        )
        job_id = devcluster.slurm.submit(
            render_server_script(site, job), SubmitOptions(), user="alice"
        )
        info = devcluster.slurm.wait(job_id, timeout=120)
        log = home / f".hpcbinder-server-{job_id}.log"
        states.append((info.state, log.read_text()))
        log.unlink()
    assert states[0][0] == "COMPLETED" and target.is_symlink(), states[0]
    state, log_text = states[1]
    assert state == "FAILED" and not pwned.exists()
    assert f"hpcbinder: workspace {target} is a link" in log_text
    assert len(log_text.splitlines()) == 1
