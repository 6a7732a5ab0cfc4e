"""Repository code is contained: a hostile postBuild reaches nothing of the
build host but its own build, leaves nothing running and cannot change what
another repository's build installs; a server or batch job in the image
cannot read the researcher's home outside its workspace."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcbinder.config import Site
from hpcbinder.images.builder import Builder, cache_dir
from hpcbinder.images.launch import launch_argv
from hpcbinder.images.store import BuildEvent, ImageMeta, ImageRecord
from hpcbinder.jobs import batch
from hpcbinder.jobs.request import request_for
from hpcbinder.jobs.serverscript import ServerJob, render_server_script, workspace_for
from hpcbinder.render import pipeline
from hpcbinder.render.pipeline import Fetched
from hpcbinder.seams.slurm import SubmitOptions
from hpcbinder.sources.providers import ResolvedRepo
from tests.conftest import DevCluster
from tests.repohelpers import git, local_spec
from tests.storehelpers import DEV_BASE, build_workspace, dev_cluster_base, workspace_site

BUILD_HOME = Path("/home/hpcbuild")
CACHE_IN_IMAGE = "/opt/hpcbinder/build-cache"

pytestmark = [pytest.mark.slurm, pytest.mark.apptainer]


@pytest.fixture
def root(devcluster: DevCluster) -> Iterator[Path]:
    with build_workspace("contain", dev_cluster_base()) as folder:
        yield folder


def make_site(root: Path) -> Site:
    """A workspace site whose builds share the workspace's download cache."""
    return workspace_site(root, cache_dir=str(root / "cache"))


def make_repo(path: Path, files: dict[str, str]) -> Path:
    path.mkdir()
    for name, text in files.items():
        (path / name).write_text(text)
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "fixture")
    return path


def hostile_post_build(tag: str, site: Site, sleep: int) -> str:
    """Tries every place a build must not reach, and to outlive its build."""
    targets = [
        BUILD_HOME / f"hostile-{tag}",
        BUILD_HOME / ".config" / "uv" / "uv.toml",
        Path(CACHE_IN_IMAGE) / f"hostile-{tag}",
        Path(CACHE_IN_IMAGE) / "uv" / f"hostile-{tag}",
        Path(str(site.build.cache_dir)) / f"hostile-{tag}",
        site.image_store / f"hostile-{tag}",
        Path("/tmp") / f"hostile-{tag}",
        Path("/var/tmp") / f"hostile-{tag}",
    ]
    lines = ["#!/bin/sh"]
    for target in targets:
        lines.append(f"mkdir -p {target.parent} 2>/dev/null; echo {tag} > {target} 2>/dev/null")
    lines.append(f"setsid sh -c 'exec sleep {sleep}' </dev/null >/dev/null 2>&1 &")
    lines.append("sleep 1")
    return "\n".join(lines) + "\n"


def hostile_files(tag: str, site: Site, own_cache: Path) -> list[Path]:
    """Every file on the host a hostile build could have left, but in its
    own repository's cache (its own later builds are its own code anyway)."""
    found = [
        path
        for folder in (BUILD_HOME, Path("/tmp"), Path("/var/tmp"), site.image_store)
        for path in folder.glob(f"hostile-{tag}")
    ]
    found += [
        path
        for path in Path(str(site.build.cache_dir)).rglob(f"hostile-{tag}")
        if not path.is_relative_to(own_cache)
    ]
    uv_toml = BUILD_HOME / ".config" / "uv" / "uv.toml"
    if uv_toml.is_file() and tag in uv_toml.read_text():
        found.append(uv_toml)
    return found


def running(sleep: int) -> list[str]:
    done = subprocess.run(["pgrep", "-a", "-f", f"sleep {sleep}"], capture_output=True, text=True)
    return [line for line in done.stdout.splitlines() if "pgrep" not in line]


def build(site: Site, repo: Path) -> ImageRecord:
    events: list[BuildEvent] = []
    prepared = pipeline.prepare(local_spec(repo), site)
    return Builder(site).build_image(prepared, events.append)


@pytest.mark.parametrize("strategy", ["overlay", "sif"])
def test_a_hostile_build_reaches_nothing_and_leaves_nothing(root: Path, strategy: str) -> None:
    site = make_site(root)
    tag = uuid.uuid4().hex[:12]
    sleep = 100000 + int(tag[:4], 16)
    files = {"postBuild": hostile_post_build(tag, site, sleep)}
    if strategy == "sif":  # apt.txt: a full SIF build, %post runs the postBuild
        files["apt.txt"] = "file\n"
    hostile = make_repo(root / "repos" / "hostile", files)
    own_cache = cache_dir(site, pipeline.prepare(local_spec(hostile), site).rendered.env_key)
    assert own_cache is not None
    try:
        record = build(site, hostile)
        assert record.meta.strategy == strategy
        assert hostile_files(tag, site, own_cache) == []
        assert running(sleep) == []
    finally:
        subprocess.run(["pkill", "-f", f"sleep {sleep}"], check=False)
        for path in hostile_files(tag, site, own_cache):
            path.unlink()

    # The next repository's build sees a cache the hostile one never touched.
    checker = make_repo(
        root / "repos" / "other",
        {
            "postBuild": "#!/bin/sh\n"
            f"if grep -rl {tag} {CACHE_IN_IMAGE} /tmp /var/tmp; then exit 7; fi\n"
            "echo clean > clean.txt\n"
        },
    )
    other = build(site, checker)
    assert other.meta.strategy == "overlay"
    other_cache = cache_dir(site, pipeline.prepare(local_spec(checker), site).rendered.env_key)
    assert other_cache is not None and list(other_cache.rglob(f"*{tag}*")) == []


def submit_and_wait(devcluster: DevCluster, script: str) -> str:
    job_id = devcluster.slurm.submit(script, SubmitOptions(), user="alice")
    info = devcluster.slurm.wait(job_id, timeout=180)
    assert info.state == "COMPLETED", (info.state, info.exit_code)
    return job_id


@pytest.fixture
def alice_secret() -> Iterator[str]:
    """A file in alice's home, outside any workspace."""
    secret = Path("/home/alice/secret.txt")
    text = f"alice-secret-{uuid.uuid4().hex}"
    secret.write_text(text + "\n")
    subprocess.run(["chown", "alice:alice", str(secret)], check=True)
    secret.chmod(0o600)
    yield text
    secret.unlink(missing_ok=True)


PROBE = (
    "cat /home/alice/secret.txt 2>&1; ls -a /home/alice 2>&1; "
    "echo home=$HOME; echo pwd=$(pwd); echo seen > probe-output.txt"
)


def test_a_server_sees_its_workspace_not_the_home(
    devcluster: DevCluster, shared_dir: Path, alice_secret: str
) -> None:
    site = Site.model_validate({"workspace": {"root": str(shared_dir / "ws")}})
    home = Path("/home/alice")
    workspace = workspace_for(site, "alice", home, "probe")
    job = ServerJob(
        "alice",
        home,
        request_for(site, None, {"time": "00:05:00"}, user="alice"),
        launch_argv(ImageRecord("0" * 32, DEV_BASE.resolve(), ImageMeta(key="0" * 32))),
        ["sh", "-c", PROBE],
        workspace=workspace,
    )
    job_id = submit_and_wait(devcluster, render_server_script(site, job))
    log = home / f".hpcbinder-server-{job_id}.log"
    output = log.read_text()
    log.unlink()
    assert alice_secret not in output and not re.search(r"^secret\.txt$", output, re.MULTILINE)
    assert f"home={workspace}" in output and f"pwd={workspace}" in output
    assert (workspace / "probe-output.txt").read_text() == "seen\n"


def run_script(devcluster: DevCluster, shared_dir: Path, script: str, run_dir: Path) -> str:
    """A batch run of ``script`` (a repository's only file) as alice, in the
    dev base, into ``run_dir``; its job id, once it completed."""
    checkout = shared_dir / "checkout"
    checkout.mkdir()
    (checkout / "run.sh").write_text(script)
    site = Site()
    repo = ResolvedRepo("local/x/HEAD", "file:///x/probe", "HEAD", "b" * 40)
    record = ImageRecord("0" * 32, DEV_BASE.resolve(), ImageMeta(key="0" * 32))
    run = batch.plan_run(
        site,
        Fetched(repo, checkout, "0" * 32, False),
        record,
        launch_argv(record),
        user="alice",
        request=request_for(site, None, {"time": "00:05:00"}, user="alice"),
        plan=batch.TaskPlan("run.sh", [], [batch.BatchTask(0, {})], False, None),
        output_dir=run_dir,
    )
    return submit_and_wait(devcluster, batch.render_batch_script(run))


def test_a_batch_run_sees_its_run_folder_not_the_home(
    devcluster: DevCluster, shared_dir: Path, alice_secret: str
) -> None:
    run_dir = shared_dir / "runs"
    job_id = run_script(devcluster, shared_dir, PROBE + "\n", run_dir)
    output = (run_dir / f"slurm-{job_id}.out").read_text()
    work = run_dir / f"job-{job_id}" / "task-0" / "work"
    assert alice_secret not in output and not re.search(r"^secret\.txt$", output, re.MULTILINE)
    assert f"home={work}" in output and f"pwd={work}" in output
    assert (work / "probe-output.txt").read_text() == "seen\n"
    provenance = json.loads((work.parent / "provenance.json").read_text())
    assert provenance["state"] == "completed"


def test_a_batch_run_cannot_plant_links_the_job_then_writes_through(
    devcluster: DevCluster, shared_dir: Path
) -> None:
    """The run's code links the names the job script writes after it
    (provenance, its temporary file, the run folder's next log) to a file of
    the researcher's; the job replaces its own files and never writes
    through a link, and the run folder is out of the container's sight."""
    victim = Path("/home/alice/victim-notes.txt")
    victim.write_text("untouched\n")
    subprocess.run(["chown", "alice:alice", str(victim)], check=True)
    plant = (
        f"ln -sf {victim} ../provenance.json.tmp; ln -sf {victim} ../provenance.json\n"
        f"for n in $(seq 1 50); do ln -s {victim} ../../../slurm-$(( $SLURM_JOB_ID + n )).out"
        " 2>/dev/null; done\n"
        '[ -e "../../../slurm-$SLURM_JOB_ID.out" ] && echo saw-run-folder'
        " || echo run-folder-hidden\n"
    )
    run_dir = shared_dir / "runs"
    try:
        job_id = run_script(devcluster, shared_dir, plant, run_dir)
        assert victim.read_text() == "untouched\n"
        task = run_dir / f"job-{job_id}" / "task-0"
        assert not (task / "provenance.json").is_symlink()
        assert json.loads((task / "provenance.json").read_text())["state"] == "completed"
        assert not list(run_dir.glob("slurm-*.out.*")) and not any(
            path.is_symlink() for path in run_dir.glob("slurm-*.out")
        )
        assert "run-folder-hidden" in (run_dir / f"slurm-{job_id}.out").read_text()
    finally:
        victim.unlink(missing_ok=True)
