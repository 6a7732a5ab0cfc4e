"""Shared fixtures: the dev cluster, its accounts, and scratch space they share.

Tests marked ``slurm``, ``apptainer`` or ``e2e`` need the dev cluster
(``slurm/devcluster up``; ``make test`` starts it). Without it they are
skipped with the reason on a developer's machine and fail loudly in CI
(``CI`` set), so a CI run can never pass by skipping them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from hpcbinder.seams import apptainer, proc
from hpcbinder.seams.slurm import SlurmCLI, SlurmError

REPO = Path(__file__).resolve().parent.parent
DEVCLUSTER = REPO / "slurm" / "devcluster"
CLUSTER_MARKERS = ("slurm", "apptainer", "e2e")
SHARED_SCRATCH = Path("/var/tmp/hpcbinder-tests")


@dataclass(frozen=True)
class DevCluster:
    """The running dev cluster and the accounts ``slurm/devcluster`` made."""

    slurm: SlurmCLI
    build_user: str = "hpcbuild"
    users: tuple[str, str] = ("alice", "bob")

    def up(self) -> None:
        """(Re)start whatever daemon is not running and wait for the node."""
        subprocess.run([str(DEVCLUSTER), "up"], check=True, capture_output=True, timeout=300)


def _cluster_problem(slurm: SlurmCLI) -> str | None:
    if os.geteuid() != 0:
        return "tests drive the dev cluster as root (sudo to its accounts)"
    try:
        slurm.ping()
        proc.check(proc.run(["apptainer", "--version"], user="hpcbuild", timeout=30))
    except (SlurmError, proc.CommandError) as exc:
        return str(exc)
    return None


@pytest.fixture(scope="session")
def devcluster() -> DevCluster:
    slurm = SlurmCLI(proc.LocalRunner())
    problem = _cluster_problem(slurm)
    if problem is not None:
        message = f"dev cluster not usable: {problem} (start it: slurm/devcluster up)"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return DevCluster(slurm)


@pytest.fixture(autouse=True)
def _cluster_for_marked_tests(request: pytest.FixtureRequest) -> None:
    if any(request.node.get_closest_marker(name) for name in CLUSTER_MARKERS):
        request.getfixturevalue("devcluster")


BUSYBOX_DEFINITION = """\
Bootstrap: scratch

%files
    /bin/busybox /bin/busybox
    /bin/busybox /bin/sh
"""


@pytest.fixture(scope="session")
def busybox_image(devcluster: DevCluster) -> Iterator[Path]:
    """A tiny SIF built in the test by the build account: static busybox only."""
    folder = SHARED_SCRATCH / f"busybox-{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o1777)
    definition = folder / "busybox.def"
    definition.write_text(BUSYBOX_DEFINITION)
    definition.chmod(0o644)
    image = folder / "busybox.sif"
    image.unlink(missing_ok=True)
    apptainer.build(definition, image, user=devcluster.build_user, timeout=300)
    yield image
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every dev cluster account can write (sticky, like /tmp)
    and that jobs on the node see at the same path."""
    path = SHARED_SCRATCH / uuid.uuid4().hex[:12]
    path.mkdir(parents=True)
    SHARED_SCRATCH.chmod(0o755)
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def hpcbinder_cli() -> list[str]:
    """argv prefix that runs the installed ``hpcbinder`` console script."""
    return [str(Path(sys.executable).parent / "hpcbinder")]


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_block(count: int, attempts: int = 50) -> int:
    """The first of ``count`` consecutive loopback ports nothing listens on
    right now (a hub takes its port and the next ones)."""
    for _ in range(attempts):
        base = free_port()
        with contextlib.ExitStack() as held:
            try:
                for port in range(base, base + count):
                    sock = held.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return base
    raise RuntimeError(f"no {count} consecutive free loopback ports")


def wait_for_port(port: int, what: str, seconds: float = 10.0, host: str = "127.0.0.1") -> None:
    """Return once something listens on ``host:port``; fail the test after
    ``seconds``."""
    for _ in range(int(seconds * 10)):
        with socket.socket() as sock:
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.1)
    pytest.fail(f"{what} did not start listening on port {port}")


#: The site-wide install (slurm/devcluster install): what researchers and
#: service accounts run. The project's .venv is root's alone.
SITE_BIN = Path("/opt/hpcbinder/venv/bin")


def as_account(user: str, argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """``argv`` run as ``user`` with no privileges of ours (sudo -n -u)."""
    return subprocess.run(
        ["sudo", "-n", "-u", user, "--", *argv],
        capture_output=True,
        text=True,
        cwd="/",
        **kwargs,  # type: ignore[arg-type]
    )


@contextmanager
def running_build_server(site: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A build server as the build account for ``site`` (a site file whose
    build.server_url is rewritten to a free loopback port)."""
    data = yaml.safe_load(site.read_text()) or {}
    port = free_port()
    data.setdefault("build", {})["server_url"] = f"http://127.0.0.1:{port}"
    site.write_text(yaml.safe_dump(data))
    site.chmod(0o644)
    log = site.with_suffix(".build-server.log")
    with log.open("w") as handle:
        server = subprocess.Popen(
            [str(SITE_BIN / "hpcbinder"), "--site", str(site), "build-server"],
            user="hpcbuild",
            group="hpcbuild",
            extra_groups=[],
            env={
                "HOME": "/home/hpcbuild",
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "LANG": "C.UTF-8",
            },
            cwd="/",
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, f"the build server (log: {log})", seconds=30)
        yield server
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=30)
