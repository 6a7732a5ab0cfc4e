"""Images built for real: fixture repositories through every backend with
their verify scripts run inside the image; one build per env key however
many ask; faults end in a failed event with no image and no lock left."""

from __future__ import annotations

import json
import shlex
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpcbinder.config import Site
from hpcbinder.images.builder import Builder, ImageBuildError
from hpcbinder.images.launch import image_entrypoint, launch_argv
from hpcbinder.images.store import BuildEvent, ImageRecord
from hpcbinder.jobs.request import request_for
from hpcbinder.jobs.serverscript import ServerJob, render_server_script, workspace_for
from hpcbinder.render import pipeline
from hpcbinder.seams.slurm import SubmitOptions
from tests.conftest import SITE_BIN, DevCluster, as_account, running_build_server
from tests.repohelpers import git, local_spec, make_repo
from tests.sshhelpers import running_sshd
from tests.storehelpers import DEV_BASE, build_workspace, dev_cluster_base, workspace_site

BUILDABLE = ["python/requirements", "python/setup-py", "base/apt", "base/postbuild", "base/start"]
#: Built with the local backend only (the backends are covered above).
PIPFILES = ["pipfile/locked", "pipfile/unlocked", "pipfile/editable", "pipfile/old-python"]
#: Other configuration files, built with the local backend: a Dockerfile FROM
#: an image of the site's from_map, and a .binder/ folder read in place of the top.
OTHER_CONFIGS = ["dockerfile/mapped", "binder-dir/dotbinder"]
_LOCK_WITH_A_WRONG_HASH = json.dumps(
    {
        "_meta": {"requires": {"python_version": "3.11"}},
        "default": {"six": {"version": "==1.16.0", "hashes": ["sha256:" + "0" * 64]}},
    }
)

pytestmark = [pytest.mark.slurm, pytest.mark.apptainer]


@pytest.fixture(scope="session")
def dev_base(devcluster: DevCluster) -> Path:
    return dev_cluster_base()


@pytest.fixture
def workspace(dev_base: Path) -> Iterator[Path]:
    """A store, checkout cache and repos folder the build account can use,
    whose default base is the dev cluster's."""
    with build_workspace("build", dev_base) as root:
        yield root


def build(site: Site, repo: Path, ref: str = "HEAD") -> tuple[ImageRecord, list[BuildEvent]]:
    events: list[BuildEvent] = []
    prepared = pipeline.prepare(local_spec(repo, ref), site)
    return Builder(site).build_image(prepared, events.append), events


def run_verify(
    record: ImageRecord, repo: Path, user: str = "alice"
) -> subprocess.CompletedProcess[str]:
    """The fixture's verify script, inside the image, as a researcher,
    through the image's entrypoint (start) as every command in it."""
    argv = launch_argv(record)
    command = [
        *argv[:-1],
        "--bind",
        f"{repo}:/mnt/verify:ro",
        argv[-1],
        *image_entrypoint(record),
        "sh",
        "-c",
        "cd /mnt/verify && sh ./verify",
    ]
    return subprocess.run(
        ["sudo", "-n", "-u", user, "--", *command], capture_output=True, text=True, timeout=300
    )


def no_leftovers(site: Site, key: str) -> None:
    store = site.image_store
    assert not (store / "locks" / f"{key}.lock").exists()
    assert list((store / "staging").glob(f"{key}-*")) == []


@pytest.mark.parametrize("backend", ["local", "slurm"])
@pytest.mark.parametrize("case", BUILDABLE)
def test_fixture_builds_and_verifies(workspace: Path, case: str, backend: str) -> None:
    repo = make_repo(case, workspace / "repos" / "repo")
    repo.chmod(0o755)
    site = workspace_site(workspace, backend=backend)
    record, events = build(site, repo)
    phases = [e.phase for e in events]
    assert phases[0] == "building" and phases[-1] == "ready"
    assert record.meta.strategy == ("sif" if case == "base/apt" else "overlay")
    assert record.meta.backend == backend
    verified = run_verify(record, repo)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    no_leftovers(site, record.key)


@pytest.mark.parametrize("case", PIPFILES)
def test_pipfile_fixture_builds_and_verifies(workspace: Path, case: str) -> None:
    """Pipfile.lock installed exactly (hashes checked), a Pipfile locked then
    installed, an editable path, an older python_version: no pipenv."""
    repo = make_repo(case, workspace / "repos" / "repo")
    repo.chmod(0o755)
    record, events = build(workspace_site(workspace), repo)
    assert events[-1].phase == "ready"
    log = "\n".join(e.message for e in events if e.phase == "log")
    assert "pipenv" not in log
    verified = run_verify(record, repo)
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.parametrize("case", OTHER_CONFIGS)
def test_other_configuration_fixture_builds_and_verifies(workspace: Path, case: str) -> None:
    repo = make_repo(case, workspace / "repos" / "repo")
    repo.chmod(0o755)
    record, events = build(workspace_site(workspace), repo)
    assert events[-1].phase == "ready"
    assert record.meta.strategy == "sif"
    verified = run_verify(record, repo)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_server_job_runs_through_the_repositorys_start(
    workspace: Path, devcluster: DevCluster
) -> None:
    """The notebook server's command goes through the repository's start,
    as on mybinder.org: the job script the spawner renders, run by Slurm."""
    repo = make_repo("base/start", workspace / "repos" / "repo")
    record, _ = build(workspace_site(workspace), repo)
    assert image_entrypoint(record) == ["/opt/hpcbinder/env/start"]
    (workspace / "ws").mkdir()
    (workspace / "ws").chmod(0o1777)
    settings = workspace_site(workspace).model_dump()
    settings["workspace"] = {"root": str(workspace / "ws"), "mode": "ephemeral"}
    site = Site.model_validate(settings)
    home = Path("/home/alice")
    job = ServerJob(
        "alice",
        home,
        request_for(site, None, {"time": "00:05:00"}, user="alice"),
        launch_argv(record),
        ["sh", "-c", "echo from-start=${FROM_START:-unset}"],
        workspace=workspace_for(site, "alice", home, "repo"),
        entrypoint=tuple(image_entrypoint(record)),
    )
    job_id = devcluster.slurm.submit(render_server_script(site, job), SubmitOptions(), user="alice")
    info = devcluster.slurm.wait(job_id, timeout=120)
    log = home / f".hpcbinder-server-{job_id}.log"
    output = log.read_text()
    log.unlink()
    assert (info.state, info.exit_code) == ("COMPLETED", 0), output
    assert "from-start=yes" in output, output


def test_the_run_it_with_line_goes_through_start(workspace: Path) -> None:
    """``hpcbinder build`` prints how to run the image; that line, followed
    by a command, runs it through the repository's start."""
    repo = make_repo("base/start", workspace / "repos" / "repo")
    site_file = workspace / "site.yaml"
    site_file.write_text(workspace_site(workspace).model_dump_json())
    with running_build_server(site_file):
        built = as_account(
            "alice",
            [str(SITE_BIN / "hpcbinder"), "--site", str(site_file), "build", local_spec(repo)],
            timeout=600,
        )
    assert built.returncode == 0, built.stderr
    line = next(x for x in built.stderr.splitlines() if x.startswith("run it with: "))
    argv = shlex.split(line.removeprefix("run it with: ").removesuffix(" COMMAND"))
    assert argv[-1] == "/opt/hpcbinder/env/start", line
    ran = as_account("alice", [*argv, "sh", "-c", "echo from-start=$FROM_START"], timeout=120)
    assert "from-start=yes" in ran.stdout, ran.stdout + ran.stderr


def test_code_only_commit_builds_nothing(workspace: Path) -> None:
    repo = make_repo("python/requirements", workspace / "repos" / "repo")
    site = workspace_site(workspace)
    first, _ = build(site, repo)
    (repo / "index.ipynb").write_text('{"cells": []}\n')
    git(repo, "commit", "-q", "-am", "notebook only")
    second, events = build(site, repo)
    assert second.path == first.path
    assert [e.phase for e in events] == ["ready"]


def test_concurrent_requests_build_once(workspace: Path) -> None:
    """Researchers ask two build servers sharing one store (two build
    hosts): one builds, the other follows its lock; all get one image."""
    repo = make_repo("python/requirements", workspace / "repos" / "repo")
    sites = [workspace / "site-a.yaml", workspace / "site-b.yaml"]
    for site_file in sites:
        site_file.write_text(workspace_site(workspace).model_dump_json())
    with running_build_server(sites[0]), running_build_server(sites[1]):
        runs = [
            subprocess.Popen(
                [
                    "sudo",
                    "-n",
                    "-u",
                    user,
                    "--",
                    str(SITE_BIN / "hpcbinder"),
                    "--site",
                    str(site_file),
                    "build",
                    local_spec(repo),
                    "-v",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd="/",
            )
            for site_file in sites
            for user in ("alice", "bob")
        ]
        outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0, 0], outputs
    assert len({out for out, _ in outputs}) == 1
    # The clients of the server that lost the race see it follow the other's build.
    assert sum("following it" in err for _, err in outputs) == 2, outputs


#: name: (repository files, build settings, failing step, text in the
#: error or tail, what the error starts with: the log line that says why).
FAULTS: dict[str, tuple[dict[str, str], dict[str, Any], str, str, str | None]] = {
    "bad-requirement": (
        {"requirements.txt": "hpcbinder-no-such-package==0.0.1\n"},
        {},
        "install environment",
        "hpcbinder-no-such-package",
        "error: No solution found when resolving dependencies cause: Because "
        "hpcbinder-no-such-package was not found",
    ),
    # A lock whose package does not match its hash: the build fails naming it.
    "pipfile-lock-hash-mismatch": (
        {"Pipfile.lock": _LOCK_WITH_A_WRONG_HASH},
        {},
        "install environment",
        "six",
        "error: Failed to",
    ),
    "postbuild-fails": (
        {"postBuild": "#!/bin/sh\necho postbuild-broke\nexit 3\n"},
        {},
        "install environment",
        "postbuild-broke",
        None,
    ),
    "apt-missing": (
        {"apt.txt": "hpcbinder-no-such-debian-package\n"},
        {},
        "build image",
        "hpcbinder-no-such-debian-package",
        "E: Unable to locate package hpcbinder-no-such-debian-package",
    ),
    "timeout": (
        {"postBuild": "#!/bin/sh\necho sleeping\nsleep 120\n"},
        {"timeout_minutes": 0.5},
        "install environment",
        "time limit",
        None,
    ),
    "repo-too-big": (
        {"postBuild": "#!/bin/sh\ntrue\n", "data.bin": "x" * (2 << 20)},
        {"max_repo_mb": 1},
        "check repository size",
        "over this site's limit",
        None,
    ),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_faults_fail_cleanly(workspace: Path, fault: str) -> None:
    files, settings, step, expected, reason = FAULTS[fault]
    repo = workspace / "repos" / "repo"
    repo.mkdir()
    for name, text in files.items():
        (repo / name).write_text(text)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", fault)
    site = workspace_site(workspace, **settings)
    events: list[BuildEvent] = []
    prepared = pipeline.prepare(local_spec(repo), site)
    with pytest.raises(ImageBuildError) as caught:
        Builder(site).build_image(prepared, events.append)
    assert caught.value.step == step
    assert expected in str(caught.value) + "\n".join(caught.value.tail)
    assert events[-1].phase == "failed" and step in events[-1].message
    # The failure starts with the log line that says why (then the step and tail).
    if reason is None:  # no line of the log says why: none is made up
        assert caught.value.reason is None, caught.value.reason
    else:
        assert str(caught.value).startswith(reason), str(caught.value)
        assert events[-1].message.startswith(reason), events[-1].message
    key = prepared.rendered.env_key
    assert Builder(site).store.lookup(key) is None
    no_leftovers(site, key)
    failure = Builder(site).store.failure(key)
    assert failure is not None and failure["step"] == step


def test_full_store_fails_cleanly(workspace: Path) -> None:
    store = workspace / "store"
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=755", "tmpfs", str(store)], check=True
    )
    try:
        (store / "bases").mkdir()
        (store / "bases" / "default.sif").symlink_to(DEV_BASE.resolve())
        subprocess.run(["chown", "-R", "hpcbuild:hpcbuild", str(store)], check=True)
        repo = make_repo("base/postbuild", workspace / "repos" / "repo")
        (repo / "postBuild").write_text("#!/bin/sh\nhead -c 8000000 /dev/urandom > big.bin\n")
        git(repo, "commit", "-q", "-am", "big output")
        site = workspace_site(workspace)
        events: list[BuildEvent] = []
        prepared = pipeline.prepare(local_spec(repo), site)
        with pytest.raises(ImageBuildError):
            Builder(site).build_image(prepared, events.append)
        assert events[-1].phase == "failed"
        assert Builder(site).store.lookup(prepared.rendered.env_key) is None
        assert not (store / "locks" / f"{prepared.rendered.env_key}.lock").exists()
    finally:
        subprocess.run(["umount", "-l", str(store)], check=False)


def slow_postbuild(repo: Path, seconds: int) -> None:
    """The fixture's postBuild, with a wait first: what it builds and its
    verify still hold."""
    shebang, rest = (repo / "postBuild").read_text().split("\n", 1)
    (repo / "postBuild").write_text(f"{shebang}\nsleep {seconds}\n{rest}")
    git(repo, "commit", "-q", "-am", "slow postBuild")


def test_killed_build_is_rebuilt_cleanly(workspace: Path) -> None:
    repo = make_repo("base/postbuild", workspace / "repos" / "repo")
    slow_postbuild(repo, 15)
    site = workspace_site(workspace)
    site_file = workspace / "site.yaml"
    site_file.write_text(site.model_dump_json())
    key = pipeline.prepare(local_spec(repo), site).rendered.env_key
    with running_build_server(site_file) as server:
        client = subprocess.Popen(
            [
                "sudo",
                "-n",
                "-u",
                "alice",
                "--",
                str(SITE_BIN / "hpcbinder"),
                "--site",
                str(site_file),
                "build",
                local_spec(repo),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd="/",
        )
        started = workspace / "store" / "locks" / f"{key}.started"
        for _ in range(600):  # up to 60 s for the build to start its container
            if started.exists() and "install environment" not in started.read_text():
                break
            time.sleep(0.1)
        time.sleep(3)
        server.kill()  # the build server only: its build is orphaned
        server.wait(timeout=30)
        output, _ = client.communicate(timeout=60)
    assert client.returncode == 1 and "build server" in output, output
    record, events = build(site, repo)
    assert events[-1].phase == "ready"
    assert any(e.phase == "building" for e in events), events
    verified = run_verify(record, repo)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    no_leftovers(site, key)


@pytest.fixture
def sshd() -> Iterator[dict[str, Any]]:
    """A real sshd on loopback letting the build account in; the site's build.ssh."""
    with running_sshd(["hpcbuild"]) as host:
        yield {**host, "user": "hpcbuild"}


@pytest.mark.parametrize("case", BUILDABLE)
def test_fixture_builds_over_ssh(workspace: Path, sshd: dict[str, Any], case: str) -> None:
    repo = make_repo(case, workspace / "repos" / "repo")
    site = workspace_site(workspace, backend="ssh", ssh=sshd)
    record, events = build(site, repo)
    assert events[-1].phase == "ready" and record.meta.backend == "ssh"
    assert any(e.phase == "log" for e in events)
    verified = run_verify(record, repo)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    no_leftovers(site, record.key)


def test_ssh_backend_refuses_an_unknown_host_key(workspace: Path, sshd: dict[str, Any]) -> None:
    Path(sshd["known_hosts"]).write_text("")
    repo = make_repo("python/requirements", workspace / "repos" / "repo")
    site = workspace_site(workspace, backend="ssh", ssh=sshd)
    with pytest.raises(ImageBuildError) as caught:
        build(site, repo)
    assert caught.value.step == "connect to build host"


def test_images_commands(workspace: Path) -> None:
    repo = make_repo("python/requirements", workspace / "repos" / "repo")
    site = workspace_site(workspace)
    site_file = workspace / "site.yaml"
    site_file.write_text(site.model_dump_json())
    record, _ = build(site, repo)

    def images(*args: str, user: str = "hpcbuild") -> subprocess.CompletedProcess[str]:
        argv = [str(SITE_BIN / "hpcbinder"), "--site", str(site_file), "images", *args]
        return as_account(user, argv, timeout=60)

    # Only the build account writes the store: not root, not a researcher.
    for user in ("root", "alice"):
        refused = images("rm", record.key, user=user)
        assert refused.returncode == 2 and "run this as the build account" in refused.stderr
    assert images("show", record.key, user="alice").returncode == 0

    listing = images("ls")
    assert record.key in listing.stdout and "python" in listing.stdout
    shown = json.loads(images("show", record.key).stdout)
    assert shown["commit"] == git(repo, "rev-parse", "HEAD")
    for field in (
        "spec",
        "key",
        "definition",
        "base",
        "build_seconds",
        "size_bytes",
        "build_log",
        "created",
    ):
        assert field in shown, field
    assert Path(shown["build_log"]).is_file()
    assert images("show", "not-a-key").returncode == 2
    assert images("gc", "--older-than", "1").stdout.strip().endswith("0 images removed")
    assert images("rm", record.key).stdout.strip() == f"removed {record.key}"
    assert images("show", record.key).returncode == 1
    assert images("ls").stdout == ""


def test_cancelled_build_job_fails_then_rebuilds(workspace: Path, devcluster: DevCluster) -> None:
    repo = make_repo("base/postbuild", workspace / "repos" / "repo")
    slow_postbuild(repo, 20)
    site = workspace_site(workspace, backend="slurm")
    prepared = pipeline.prepare(local_spec(repo), site)
    started = workspace / "store" / "locks" / f"{prepared.rendered.env_key}.started"

    def cancel_when_running() -> None:
        for _ in range(600):
            text = started.read_text() if started.exists() else ""
            if text.startswith("slurm-job "):
                time.sleep(3)
                devcluster.slurm.cancel(text.split()[1].strip(), user="hpcbuild")
                return
            time.sleep(0.1)

    canceller = threading.Thread(target=cancel_when_running)
    canceller.start()
    with pytest.raises(ImageBuildError) as caught:
        Builder(site).build_image(prepared, lambda event: None)
    canceller.join()
    assert "CANCELLED" in str(caught.value)
    no_leftovers(site, prepared.rendered.env_key)
    record, _ = build(site, repo)
    assert run_verify(record, repo).returncode == 0
