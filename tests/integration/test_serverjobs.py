"""Server jobs on the real dev cluster: transient Slurm failures do not end a
server, and a job that dies while starting is reported at once with its
output. Each runs three ways: on this host (a submit host), and through a
login node over SSH (a real sshd on loopback), logging in as the user or
as a service account that sudoes to the user."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcbinder.config import LoginNode
from hpcbinder.jobs.servers import JobDied, ServerJobs, ServerJobState
from hpcbinder.seams.proc import CommandRunner, LocalRunner
from hpcbinder.seams.remote import LoginNodeCommands
from hpcbinder.seams.slurm import SlurmCLI, SlurmDialect
from tests.conftest import DevCluster
from tests.sshhelpers import running_sshd

pytestmark = pytest.mark.slurm


@pytest.fixture(params=["local", "ssh-as-user", "ssh-sudo"])
def runner(request: pytest.FixtureRequest) -> Iterator[CommandRunner]:
    if request.param == "local":
        yield LocalRunner()
        return
    with running_sshd(["alice", "root"]) as host:
        # root stands in for a service account with a sudoers rule.
        user = "{user}" if request.param == "ssh-as-user" else "root"
        yield LoginNodeCommands(LoginNode.model_validate({**host, "user": user}))


def flaky_squeue(folder: Path, failures: int) -> Path:
    """A squeue that fails like an unreachable controller ``failures`` times,
    then answers for real (the count lives in a file, so it is per test)."""
    counter = folder / "squeue-calls"
    counter.write_text("0")
    counter.chmod(0o666)
    script = folder / "squeue"
    script.write_text(
        "#!/bin/sh\n"
        f"n=$(cat {counter}); echo $((n + 1)) > {counter}\n"
        f'if [ "$n" -lt {failures} ]; then\n'
        '  echo "squeue: error: Unable to contact slurm controller (connect failure)" >&2\n'
        "  exit 1\nfi\n"
        'exec squeue "$@"\n'
    )
    script.chmod(0o755)
    return script


#: The shipped squeue's arguments, for the flaky squeue in front of it.
_SQUEUE_ARGS = SlurmDialect().squeue[1:]


def job_script(body: str) -> str:
    return f"#!/bin/sh\n{body}\n"


def test_transient_query_failures_are_retried(
    devcluster: DevCluster, shared_dir: Path, runner: CommandRunner
) -> None:
    jobs = ServerJobs("alice", SlurmCLI(runner), backoff=0.1)
    script = job_script(
        f"#SBATCH --output={shared_dir}/sleep.out\n#SBATCH --chdir={shared_dir}\nsleep 60"
    )
    job_id = asyncio.run(jobs.submit(script, {}))
    try:
        asyncio.run(jobs.wait_started(job_id, 0.2, lambda: True))
        flaky = ServerJobs(
            "alice",
            SlurmCLI(
                runner,
                SlurmDialect(squeue=(str(flaky_squeue(shared_dir, failures=2)), *_SQUEUE_ARGS)),
            ),
            backoff=0.1,
            retries=3,
        )
        state, host = asyncio.run(flaky.state(job_id))
        assert state is ServerJobState.RUNNING and host
        down = ServerJobs(
            "alice",
            SlurmCLI(
                runner,
                SlurmDialect(squeue=(str(flaky_squeue(shared_dir, failures=99)), *_SQUEUE_ARGS)),
            ),
            backoff=0.05,
            retries=2,
        )
        assert asyncio.run(down.state(job_id)) == (ServerJobState.UNKNOWN, "")
    finally:
        asyncio.run(jobs.cancel(job_id))
    for _ in range(100):
        if asyncio.run(jobs.state(job_id))[0] is ServerJobState.GONE:
            break
        asyncio.run(asyncio.sleep(0.2))
    assert asyncio.run(jobs.state(job_id))[0] is ServerJobState.GONE


def test_job_dying_while_starting_fails_with_its_output(
    devcluster: DevCluster, runner: CommandRunner
) -> None:
    # Where serverscript sends a server's output, read back through the
    # shipped server-log reader as the user.
    script = job_script(
        "#SBATCH --output=/home/alice/.hpcbinder-server-%j.log\n"
        "echo 'FATAL: image not found' >&2\nexit 1"
    )
    jobs = ServerJobs("alice", SlurmCLI(runner), backoff=0.1)
    job_id = asyncio.run(jobs.submit(script, {}))
    try:
        with pytest.raises(JobDied) as caught:
            asyncio.run(jobs.wait_started(job_id, 0.2, lambda: False))
    finally:
        Path(f"/home/alice/.hpcbinder-server-{job_id}.log").unlink(missing_ok=True)
    assert caught.value.job_id == job_id
    assert "FATAL: image not found" in caught.value.tail


def test_secrets_travel_in_the_environment_not_argv(
    devcluster: DevCluster, shared_dir: Path, runner: CommandRunner
) -> None:
    output = shared_dir / "env.out"
    script = job_script(f'#SBATCH --output={output}\necho "token=$JUPYTERHUB_API_TOKEN"')
    jobs = ServerJobs("alice", SlurmCLI(runner))
    job_id = asyncio.run(jobs.submit(script, {"JUPYTERHUB_API_TOKEN": "s3cret-token"}))
    info = devcluster.slurm.wait(job_id, timeout=120)
    assert info.state == "COMPLETED"
    assert output.read_text().strip() == "token=s3cret-token"
    record = subprocess.run(
        ["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, check=True
    ).stdout
    assert job_id in record and "s3cret-token" not in record
