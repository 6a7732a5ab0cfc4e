"""The image store keeps what is used: launches recorded through the real
build server (build requests and the spawner's use reports), images and
checkouts named by real Slurm jobs, builds in progress; ``images gc`` runs
as the build account and removes only the rest."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcbinder.config import Site
from hpcbinder.images import store as images
from hpcbinder.images.store import ImageStore
from hpcbinder.jobs.request import request_for
from hpcbinder.jobs.serverscript import ServerJob, render_server_script
from hpcbinder.render import pipeline
from hpcbinder.seams.slurm import QueueState, SubmitOptions
from tests.conftest import SITE_BIN, DevCluster, as_account, running_build_server
from tests.repohelpers import local_spec, make_repo
from tests.storehelpers import build_workspace, dev_cluster_base, workspace_site

DAY = 86400.0

pytestmark = [pytest.mark.slurm, pytest.mark.apptainer]


@pytest.fixture
def workspace(devcluster: DevCluster) -> Iterator[Path]:
    """A store and checkout cache owned by the build account, on the dev base."""
    with build_workspace("store", dev_cluster_base()) as root:
        yield root


def hpcbinder(user: str, site_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return as_account(
        user, [str(SITE_BIN / "hpcbinder"), "--site", str(site_file), *args], timeout=600
    )


def report_use(
    user: str, site_file: Path, key: str, for_user: str
) -> subprocess.CompletedProcess[str]:
    """What the spawner does at a server's start, as ``user``."""
    code = (
        "import sys; from pathlib import Path\n"
        "from hpcbinder.images.client import BuildServerClient\n"
        "from hpcbinder.config import load_site\n"
        "BuildServerClient(load_site(Path(sys.argv[1]))).record_use(sys.argv[2], sys.argv[3])\n"
    )
    return as_account(
        user, [str(SITE_BIN / "python"), "-c", code, str(site_file), key, for_user], timeout=60
    )


def use_of(store: ImageStore, key: str) -> dict[str, object]:
    data: dict[str, object] = json.loads(store.use_path(key).read_text())
    return data


def fake_image(store: ImageStore, key: str, last_used_days_ago: float) -> None:
    """A published image (its file's content does not matter to gc)."""
    lock = store.try_lock(key)
    assert lock is not None
    with lock:
        staging = store.new_staging(key)
        store.write(staging / images.IMAGE, "not really a SIF")
        store.publish(lock, staging, images.ImageMeta(key=key, spec="fake"))
    store.record_use(key, "alice", at=time.time() - last_used_days_ago * DAY)


def server_job_using(devcluster: DevCluster, site: Site, busybox_image: Path, key: str) -> str:
    """A real server job of alice's (the spawner's script) that names image
    ``key`` and runs busybox's sleep in the busybox image."""
    job = ServerJob(
        "alice",
        Path("/home/alice"),
        request_for(site, None, {"time": "00:05:00"}, user="alice"),
        ["apptainer", "exec", str(busybox_image)],
        ["/bin/busybox", "sleep", "300"],
        job_name="hpcbinder-store-test",
        image_key=key,
    )
    job_id = devcluster.slurm.submit(render_server_script(site, job), SubmitOptions(), user="alice")
    for _ in range(300):
        state = devcluster.slurm.queue_entry(job_id, user="alice").state
        if state is QueueState.RUNNING:
            return job_id
        assert state is not QueueState.GONE, f"server job {job_id} ended"
        time.sleep(0.1)
    pytest.fail(f"server job {job_id} did not start")


def test_gc_keeps_images_jobs_and_recent_launches_use(
    workspace: Path, devcluster: DevCluster, busybox_image: Path
) -> None:
    site = workspace_site(workspace)
    site_file = workspace / "site.yaml"
    site_file.write_text(site.model_dump_json())
    store = ImageStore(site.image_store, owner="hpcbuild")
    repo = make_repo("base/start", workspace / "repos" / "repo")
    repo.chmod(0o755)
    spec = local_spec(repo)

    with running_build_server(site_file):
        built = hpcbinder("alice", site_file, "build", spec)
        assert built.returncode == 0, built.stdout + built.stderr
        key = Path(built.stdout.strip()).parent.name
        # Used again a minute later: the image is found, and that use recorded.
        store.record_use(key, "", at=time.time() - 60)
        again = hpcbinder("alice", site_file, "build", spec)
        assert again.returncode == 0, again.stderr
        recorded = use_of(store, key)
        assert recorded["user"] == "alice" and time.time() - float(str(recorded["time"])) < 30

        # The spawner's report of a server (re)start, as the service account for alice.
        store.record_use(key, "alice", at=time.time() - 60)
        reported = report_use("hpcbinder", site_file, key, "alice")
        assert reported.returncode == 0, reported.stderr
        assert time.time() - float(str(use_of(store, key)["time"])) < 30
        # Only for an image the researcher may launch: bob never built or
        # used this image of a repository on this host, so he cannot pin it.
        pinned = report_use("hpcbinder", site_file, key, "bob")
        assert pinned.returncode != 0 and "may launch" in pinned.stderr, pinned.stderr
        assert use_of(store, key)["users"] == ["alice"]
        # Researchers report only their own use; unknown images are refused.
        assert report_use("alice", site_file, key, "bob").returncode != 0
        unknown = report_use("hpcbinder", site_file, "f" * 32, "bob")
        assert unknown.returncode != 0 and "no image" in unknown.stderr

    # Launched yesterday (its use record aged; its files are older still).
    yesterday = time.time() - DAY
    store.use_path(key).write_text(json.dumps({"time": yesterday, "user": "alice"}))
    old = time.time() - 30 * DAY
    os.utime(store.image_dir(key) / images.META, (old, old))

    running, unused = "1" * 32, "2" * 32
    fake_image(store, running, last_used_days_ago=30)
    fake_image(store, unused, last_used_days_ago=30)
    job_id = server_job_using(devcluster, site, busybox_image, running)

    # A base build in progress (this process holds its lock) and a dead build's leftovers.
    base = store.try_lock("base-default")
    assert base is not None
    base_staging = store.new_staging("base-default")
    dead = store.new_staging("base-default-gpu")
    checkout = pipeline.prepare(spec, site).checkout
    stale_checkout = checkout.with_name("d" * 40)
    subprocess.run(["cp", "-a", str(checkout), str(stale_checkout)], check=True)
    os.utime(stale_checkout, (old, old))
    try:
        gc = hpcbinder("hpcbuild", site_file, "images", "gc", "--older-than", "2")
        assert gc.returncode == 0, gc.stderr
        assert f"removed {unused}" in gc.stdout
        assert f"removed checkout {stale_checkout}" in gc.stdout
        assert gc.stdout.strip().endswith("1 images removed"), gc.stdout
        assert store.lookup(running) is not None, "the image of a running job was removed"
        assert store.lookup(key) is not None, "an image used yesterday was removed"
        assert base_staging.is_dir() and not dead.exists()
        assert checkout.is_dir() and not stale_checkout.exists()
    finally:
        devcluster.slurm.cancel(job_id, user="alice")
        base.release()
        Path(f"/home/alice/.hpcbinder-server-{job_id}.log").unlink(missing_ok=True)

    for _ in range(100):  # the job is gone: nothing keeps its image any more
        if devcluster.slurm.queue_entry(job_id, user="alice").state is QueueState.GONE:
            break
        time.sleep(0.2)
    gc = hpcbinder("hpcbuild", site_file, "images", "gc", "--older-than", "2")
    assert gc.returncode == 0, gc.stderr
    assert f"removed {running}" in gc.stdout and store.lookup(key) is not None


def test_use_reports_never_hold_up_a_launch(workspace: Path) -> None:
    """A build server that is down: the spawner's report fails at once."""
    site = workspace_site(workspace)
    site_file = workspace / "site.yaml"
    site_file.write_text(
        site.model_copy(
            update={"build": site.build.model_copy(update={"server_url": "http://127.0.0.1:9"})}
        ).model_dump_json()
    )
    started = time.monotonic()
    reported = report_use("hpcbinder", site_file, "1" * 32, "bob")
    assert reported.returncode != 0 and "cannot reach the build server" in reported.stderr
    assert time.monotonic() - started < 10
