"""The service account's shipped sudo rules (configs/sudoers.hpcbinder, as
`slurm/devcluster install` puts them in place), tried as that account: what
the hub needs works, and nothing more does."""

from __future__ import annotations

import os
import pwd
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcbinder.jobs.servers import SERVER_ENV
from hpcbinder.seams import apptainer
from tests.conftest import REPO, SITE_BIN, DevCluster, as_account

pytestmark = pytest.mark.slurm

SERVICE = "hpcbinder"
READER = "/usr/local/libexec/hpcbinder-server-log"
ALICE_HOME = Path("/home/alice")


def as_service(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``argv`` as the service account, with ``env`` in its environment."""
    return as_account(SERVICE, ["env", *(f"{k}={v}" for k, v in (env or {}).items()), *argv])


@pytest.fixture
def alice_secret() -> Iterator[Path]:
    secret = ALICE_HOME / "secret-notes.txt"
    secret.write_text("alice's private notes\n")
    os.chown(secret, *_ids("alice"))
    secret.chmod(0o600)
    yield secret
    secret.unlink(missing_ok=True)


def _ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def test_the_service_account_cannot_read_a_researchers_files(alice_secret: Path) -> None:
    # The old rule let it run `tail` as the researcher: any file of theirs.
    tail = as_service("sudo", "-n", "-u", "alice", "/usr/bin/tail", str(alice_secret))
    assert tail.returncode != 0 and "private notes" not in tail.stdout
    cat = as_service("sudo", "-n", "-u", "alice", "/bin/cat", str(alice_secret))
    assert cat.returncode != 0 and "private notes" not in cat.stdout


def test_the_log_reader_reads_server_logs_only_and_follows_no_symlink(
    alice_secret: Path,
) -> None:
    log = ALICE_HOME / ".hpcbinder-server-990001.log"
    planted = ALICE_HOME / ".hpcbinder-server-990002.log"
    log.write_text("".join(f"line {n}\n" for n in range(50)))
    os.chown(log, *_ids("alice"))
    planted.symlink_to(alice_secret)
    os.lchown(planted, *_ids("alice"))
    try:
        read = as_service("sudo", "-n", "-u", "alice", READER, "990001", "3")
        assert read.returncode == 0, read.stderr
        assert read.stdout.splitlines() == ["line 47", "line 48", "line 49"]
        followed = as_service("sudo", "-n", "-u", "alice", READER, "990002")
        assert followed.returncode == 1 and "private notes" not in followed.stdout
        for job in ("../secret-notes", "1 2", "-1"):
            bad = as_service("sudo", "-n", "-u", "alice", READER, job)
            assert bad.returncode == 2 and "private notes" not in bad.stdout
    finally:
        log.unlink(missing_ok=True)
        planted.unlink(missing_ok=True)


def test_no_rule_runs_anything_as_root_or_the_build_account() -> None:
    for target in ("root", "hpcbuild"):
        for argv in (["/usr/bin/sbatch", "--version"], ["/usr/bin/squeue", "--version"]):
            result = as_service("sudo", "-n", "-u", target, *argv)
            assert result.returncode != 0, (target, argv)


def test_variables_other_than_the_hubs_cannot_reach_a_researchers_program() -> None:
    # With SETENV, `LD_PRELOAD=...` on sudo's command line ran the service
    # account's code as alice, and SBATCH_* changed what sbatch submits.
    preload = as_service(
        "sudo", "-n", "-u", "alice", "LD_PRELOAD=/var/tmp/evil.so", "/usr/bin/sbatch", "--version"
    )
    assert preload.returncode != 0
    assert "not allowed to set" in preload.stderr
    partition = as_service(
        "sudo",
        "-n",
        "--preserve-env=SBATCH_PARTITION",
        "-u",
        "alice",
        "/usr/bin/sbatch",
        "--version",
        env={"SBATCH_PARTITION": "build"},
    )
    assert partition.returncode != 0
    assert "not allowed to set" in partition.stderr


#: The service's own secrets, in its environment when it submits a job.
SERVICE_SECRETS = {
    "JUPYTERHUB_API_TOKEN": "marker-service-token",
    "JPY_COOKIE_SECRET": "marker-cookie-secret",
    "HPCBINDER_ADMIN_TOKEN": "marker-admin-token",
    "LC_SECRET": "marker-lc",
}


def test_the_sudoers_rule_keeps_exactly_the_server_variables_by_name() -> None:
    """No pattern: ``JUPYTERHUB_*`` kept the service's own token."""
    text = Path(REPO / "configs" / "sudoers.hpcbinder").read_text().replace("\\\n", " ")
    [rule] = [
        line for line in text.splitlines() if line.startswith("Defaults") and "env_keep" in line
    ]
    names = rule.split("=", 1)[1].strip().strip('"').split()
    assert "*" not in rule
    assert set(names) == {apptainer.CONTAINER_ENV_PREFIX + name for name in SERVER_ENV}
    assert "+=" not in rule  # not sudo's default list either


def test_the_hub_submits_with_the_servers_variables_and_nothing_of_its_own(
    devcluster: DevCluster,
) -> None:
    """ServerJobs as the hub runs it (the service account, the site venv),
    with secrets of its own in its environment: the job gets the server's
    variables it was given and none of the service's."""
    out = ALICE_HOME / ".hpcbinder-sudo-env-test.out"
    code = textwrap.dedent(
        f"""
        import asyncio
        from hpcbinder.jobs.servers import ServerJobs
        from hpcbinder.seams.proc import LocalRunner
        from hpcbinder.seams.slurm import SlurmCLI
        script = "#!/bin/sh\\n#SBATCH --output={out}\\nenv\\n"
        env = {{"APPTAINERENV_JUPYTERHUB_API_TOKEN": "tok-123"}}
        print(asyncio.run(ServerJobs("alice", SlurmCLI(LocalRunner())).submit(script, env)))
        """
    )
    submitted = as_service(str(SITE_BIN / "python"), "-c", code, env=SERVICE_SECRETS)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    try:
        info = devcluster.slurm.wait(job_id, timeout=120)
        assert info.state == "COMPLETED"
        env = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    finally:
        out.unlink(missing_ok=True)
    assert env["APPTAINERENV_JUPYTERHUB_API_TOKEN"] == "tok-123"  # noqa: S105 - a test value
    leaked = {name: value for name, value in env.items() if "marker-" in value}
    assert not leaked
    assert "JUPYTERHUB_API_TOKEN" not in env
