"""The dev cluster itself: jobs run as the submitting user inside an Apptainer
image built by the build account, and the script's `down` stops exactly
what `up` started."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hpcbinder.seams.slurm import SubmitOptions
from tests.conftest import DEVCLUSTER, DevCluster

PID_DIR = Path("/run/hpcbinder-devcluster")
DAEMONS = ("munged", "slurmctld", "slurmd")


@pytest.mark.slurm
@pytest.mark.apptainer
@pytest.mark.parametrize("user", ["alice", "bob"])
def test_job_runs_container_as_submitting_user(
    devcluster: DevCluster, busybox_image: Path, shared_dir: Path, user: str
) -> None:
    out = shared_dir / f"{user}.out"
    script = (
        "#!/bin/sh\n"
        f"apptainer exec {busybox_image} /bin/busybox sh -c "
        "'echo \"uid=$(/bin/busybox id -u) in=$(/bin/busybox ls /)\"'\n"
    )
    job_id = devcluster.slurm.submit(
        script, SubmitOptions(output=str(out), chdir=str(shared_dir), time="00:02:00"), user=user
    )
    info = devcluster.slurm.wait(job_id, timeout=120)

    assert (info.state, info.exit_code) == ("COMPLETED", 0)
    text = out.read_text()
    expected_uid = int(subprocess.check_output(["id", "-u", user]))
    assert f"uid={expected_uid} " in text
    # It ran inside the image: the root there holds busybox's /bin, not the host's /usr.
    listing = text.split("in=", 1)[1].split()
    assert "bin" in listing and "usr" not in listing
    assert out.stat().st_uid == expected_uid


@pytest.mark.slurm
@pytest.mark.apptainer
def test_failing_container_command_fails_the_job(
    devcluster: DevCluster, busybox_image: Path, shared_dir: Path
) -> None:
    script = f"#!/bin/sh\nexec apptainer exec {busybox_image} /bin/busybox sh -c 'exit 3'\n"
    job_id = devcluster.slurm.submit(
        script,
        SubmitOptions(output=str(shared_dir / "fail.out"), chdir=str(shared_dir)),
        user="alice",
    )
    info = devcluster.slurm.wait(job_id, timeout=120)
    assert (info.state, info.exit_code) == ("FAILED", 3)


def _our_pids() -> dict[str, int]:
    pids = {}
    for name in DAEMONS:
        file = PID_DIR / f"{name}.pid"
        if file.exists():
            pids[name] = int(file.read_text())
    return pids


@pytest.mark.slurm
def test_down_stops_exactly_our_daemons_and_up_restores(devcluster: DevCluster) -> None:
    started = _our_pids()
    assert set(started) == set(DAEMONS), "make test starts all three daemons through devcluster"
    bystander = subprocess.Popen(["sleep", "60"])  # a process devcluster must leave alone
    try:
        down = subprocess.run(
            [str(DEVCLUSTER), "down"], capture_output=True, text=True, timeout=120, check=True
        )
        for name, pid in started.items():
            assert f"stopped {name} (pid {pid})" in down.stdout
            assert not Path(f"/proc/{pid}").exists(), f"{name} still running"
        for name in DAEMONS:
            assert subprocess.run(["pgrep", "-x", name], capture_output=True).returncode == 1
        assert bystander.poll() is None
        # The hosts it made are gone: namespaces, bridge, names in /etc/hosts.
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert "hpcb-" not in netns
        assert subprocess.run(["ip", "link", "show", "hpcb0"], capture_output=True).returncode != 0
        assert "hpcb-" not in Path("/etc/hosts").read_text()

        status = subprocess.run([str(DEVCLUSTER), "status"], capture_output=True, text=True)
        assert status.returncode != 0
        assert "slurmctld: not running" in status.stdout
    finally:
        bystander.kill()
        devcluster.up()
    status = subprocess.run([str(DEVCLUSTER), "status"], capture_output=True, text=True)
    assert status.returncode == 0, status.stdout
    assert "slurmctld: running (pid" in status.stdout
