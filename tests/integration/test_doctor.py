"""`hpcbinder doctor` against the real dev cluster: passes when it is up, and
names the broken piece when a daemon is stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import SITE_BIN, DevCluster, as_account

PID_DIR = Path("/run/hpcbinder-devcluster")


def _doctor(cli: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cli, "doctor", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slurm
@pytest.mark.apptainer
def test_doctor_passes_on_dev_cluster_with_a_real_job(
    devcluster: DevCluster, hpcbinder_cli: list[str]
) -> None:
    result = _doctor(hpcbinder_cli, "--user", "alice")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for name in (
        "munge",
        "slurm controller",
        "slurm partitions",
        "apptainer",
        "fakeroot builds",
        "image store",
        "jupyterhub",
        "test job",
    ):
        assert any(line.startswith(f"✓ {name}:") for line in lines), (name, lines)
    assert not any(line.startswith("✗") for line in lines)
    job_line = next(line for line in lines if line.startswith("✓ test job:"))
    assert "as alice" in job_line


def test_doctor_refuses_a_job_as_root_without_user(hpcbinder_cli: list[str]) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root is refused")
    result = _doctor(hpcbinder_cli, "--job")
    assert result.returncode == 2
    assert "name an account with --user" in result.stderr


def _stop(daemon: str) -> None:
    pid = int((PID_DIR / f"{daemon}.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


@pytest.mark.slurm
@pytest.mark.parametrize(
    ("daemon", "failing_line"),
    [("slurmctld", "✗ slurm controller: slurmctld is not reachable"), ("munged", "✗ munge:")],
)
def test_doctor_names_a_stopped_daemon(
    devcluster: DevCluster, hpcbinder_cli: list[str], daemon: str, failing_line: str
) -> None:
    _stop(daemon)
    try:
        result = _doctor(hpcbinder_cli)
    finally:
        devcluster.up()
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    failing = [line for line in lines if line.startswith(failing_line)]
    assert failing, lines
    assert "fix: start the daemon" in failing[0]
    # Checks that do not depend on the daemon still report on their own.
    assert any(line.startswith("✓ fakeroot builds:") for line in lines)
    assert _doctor(hpcbinder_cli).returncode == 0


@pytest.mark.slurm
def test_doctor_as_the_service_account_checks_its_sudo_rules(devcluster: DevCluster) -> None:
    """The shipped rules pass; a rule that lets the service account set any
    variable (SETENV) for a researcher's program fails, naming it."""
    doctor = [str(SITE_BIN / "hpcbinder"), "doctor"]
    shipped = as_account("hpcbinder", doctor, timeout=120)
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    assert any(line.startswith("✓ sudo rules:") for line in shipped.stdout.splitlines())
    extra = Path("/etc/sudoers.d/zz-hpcbinder-doctor-test")
    extra.write_text("hpcbinder ALL=(%hpcusers) NOPASSWD:SETENV: /usr/bin/sbatch\n")
    extra.chmod(0o440)
    try:
        loose = as_account("hpcbinder", doctor, timeout=120)
    finally:
        extra.unlink()
    assert loose.returncode == 1
    failing = [line for line in loose.stdout.splitlines() if line.startswith("✗ sudo rules:")]
    assert failing and "SETENV" in failing[0], loose.stdout
