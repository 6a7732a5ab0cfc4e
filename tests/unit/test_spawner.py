"""The spawner's state machine through its real methods (start, poll,
stop, progress, query_job_status), with Slurm a scripted command runner
and no hub: submitted → pending → running → listening; a transient squeue
failure keeps the server; a job that dies while pending ends the launch
with its reason; bad options are a 400 before anything is submitted."""

from __future__ import annotations

import asyncio
import getpass
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from batchspawner import JobStatus
from jupyterhub.objects import Hub
from tornado import web

from hpcbinder.hub.spawner import ApptainerSlurmSpawner, LaunchEnded
from hpcbinder.seams.slurm import SlurmCLI
from tests.unit.fakes import DOWN, GONE, JOB, ScriptedSlurm, pending

#: pwd.getpwnam must know the researcher (their home): this process's account.
USER = getpass.getuser()
TOKEN = "hub-token-of-this-server"  # noqa: S105 - a test value


#: squeue's answer for a job running on this host (so the spawner's check
#: that the server listens reaches the test's socket).
ON_THIS_HOST = (0, "RUNNING 127.0.0.1 interactive None\n", "")


def spawner_for(
    tmp_path: Path,
    slurm: ScriptedSlurm,
    user_options: dict[str, Any] | None = None,
    **site: Any,
) -> ApptainerSlurmSpawner:
    """A spawner as the hub makes one, with a minimal user and hub, on a
    site file with ``site``'s settings."""
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump({"image_store": str(tmp_path / "images"), **site}))
    user = SimpleNamespace(name=USER, spawners={}, url=f"/user/{USER}/")
    spawner = ApptainerSlurmSpawner(
        user=user,
        hub=Hub(),
        db=SimpleNamespace(commit=lambda: None),
        api_token=TOKEN,
        oauth_client_id=f"jupyterhub-user-{USER}",
        site_file=str(site_file),
        user_options=user_options or {"image": "base:default"},
        startup_poll_interval=0.01,
        query_retries=1,
        query_backoff=0.0,
        queue_detail_interval=0.0,
    )
    spawner.slurm = SlurmCLI(slurm)
    return spawner


async def started(spawner: ApptainerSlurmSpawner) -> tuple[str, int]:
    """``spawner.start()`` (as the hub bounds it, by a timeout), while a
    server listens on this host and, once the job runs, reports its port
    as the job's batchspawner-singleuser does."""
    server = await asyncio.start_server(lambda _, writer: writer.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def report_port_when_running() -> None:
        while not spawner.state_isrunning():
            await asyncio.sleep(0.001)
        spawner.port = port

    async with server:
        callback = asyncio.create_task(report_port_when_running())
        address: tuple[str, int] = await asyncio.wait_for(spawner.start(), 5)
        await callback
    assert address[1] == port
    return address


async def progress_of(spawner: ApptainerSlurmSpawner) -> list[str]:
    """The launch's progress messages; a stream that does not end fails."""

    async def messages(events: AsyncIterator[dict[str, Any]]) -> list[str]:
        return [event["message"] async for event in events]

    return await asyncio.wait_for(messages(spawner.progress()), 1)


def test_pending_then_running_then_listening_returns_the_server(tmp_path: Path) -> None:
    slurm = ScriptedSlurm([pending("Resources"), pending("Priority"), ON_THIS_HOST])
    spawner = spawner_for(tmp_path, slurm)

    async def scenario() -> tuple[tuple[str, int], list[str]]:
        return await started(spawner), await progress_of(spawner)

    (ip, port), progress = asyncio.run(scenario())
    assert (ip, port) == (spawner.ip, spawner.port) == ("127.0.0.1", port)
    assert progress == [
        f"Submitted Slurm job {JOB}",
        "Waiting in partition interactive: waiting for free nodes; "
        "position 2 of 3 pending jobs there",
        "Waiting in partition interactive: other jobs are ahead; "
        "position 2 of 3 pending jobs there",
        f"Job {JOB} started on node 127.0.0.1",
        "Starting JupyterLab on 127.0.0.1",
    ]
    # One job, submitted as the researcher; the hub token in its
    # environment, never in the script or an argument.
    [submission] = slurm.submissions
    assert submission.user == USER
    assert submission.env["APPTAINERENV_JUPYTERHUB_API_TOKEN"] == TOKEN
    assert TOKEN not in submission.script
    assert not any(TOKEN in arg for call in slurm.calls for arg in call)
    assert not slurm.cancelled


def test_a_transient_squeue_failure_keeps_the_server_and_is_retried(tmp_path: Path) -> None:
    slurm = ScriptedSlurm([DOWN, DOWN, ON_THIS_HOST])
    spawner = spawner_for(tmp_path, slurm)
    spawner.job_id = JOB
    assert asyncio.run(spawner.query_job_status()) is JobStatus.UNKNOWN
    assert slurm.squeue_queries() == 2  # asked again (query_retries=1) before UNKNOWN
    assert spawner.state_isunknown()
    assert asyncio.run(spawner.poll()) is None  # still running, as far as anyone knows
    assert spawner.job_id == JOB
    assert spawner.state_isrunning() and spawner.state_gethost() == "127.0.0.1"
    assert not slurm.cancelled


def test_a_failed_query_while_pending_does_not_end_the_launch(tmp_path: Path) -> None:
    slurm = ScriptedSlurm([pending("Resources"), DOWN, DOWN, ON_THIS_HOST])
    spawner = spawner_for(tmp_path, slurm)

    assert asyncio.run(started(spawner))[0] == "127.0.0.1"
    assert len(slurm.submissions) == 1 and not slurm.cancelled


def test_a_job_that_dies_while_pending_ends_the_launch_with_its_reason(tmp_path: Path) -> None:
    slurm = ScriptedSlurm([pending("Resources"), GONE])
    spawner = spawner_for(tmp_path, slurm)

    async def scenario() -> list[str]:
        with pytest.raises(LaunchEnded) as ended:
            await spawner.start()
        assert ended.value.reason == "job_died"
        assert ended.value.jupyterhub_message == (
            f"the server's Slurm job {JOB} ended while starting:\nFATAL: out of memory"
        )
        return await progress_of(spawner)

    progress = asyncio.run(scenario())
    assert progress[0] == f"Submitted Slurm job {JOB}"
    assert not any("started on node" in message for message in progress)
    assert len(slurm.submissions) == 1  # not submitted again
    assert spawner.job_status.startswith("gone")


def test_a_wait_past_the_queue_limit_cancels_the_job_and_says_the_cluster_is_busy(
    tmp_path: Path,
) -> None:
    slurm = ScriptedSlurm([pending("Resources")])
    spawner = spawner_for(tmp_path, slurm, launch={"max_queue_minutes": 0.05 / 60})
    with pytest.raises(LaunchEnded) as ended:
        asyncio.run(asyncio.wait_for(spawner.start(), 5))
    assert (ended.value.reason, ended.value.status_code) == ("queue_timeout", 503)
    assert "launch.max_queue_minutes" in ended.value.jupyterhub_message
    assert ("scancel", JOB) in slurm.calls


def test_poll_on_a_gone_job_returns_an_exit_status_and_forgets_it(tmp_path: Path) -> None:
    spawner = spawner_for(tmp_path, ScriptedSlurm([GONE]))
    spawner.job_id = JOB
    assert asyncio.run(spawner.poll()) == 1
    assert spawner.job_id == ""
    assert asyncio.run(spawner.poll()) == 1  # and without a job at all


def test_a_server_whose_node_is_lost_stops_saying_which_node_and_where_its_files_are(
    tmp_path: Path,
) -> None:
    lost = (0, "NODE_FAIL hpcb-c1 interactive-multi NodeDown\n", "")
    spawner = spawner_for(tmp_path, ScriptedSlurm([(0, "RUNNING hpcb-c1 p None\n", ""), lost]))
    spawner.job_id = JOB
    assert asyncio.run(spawner.poll()) is None
    time.sleep(0.02)  # past startup_poll_interval: the hub's answer is asked anew
    assert asyncio.run(spawner.poll()) == 1
    assert spawner.job_id == ""
    assert spawner.stop_reason.startswith(
        f"Your server's Slurm job {JOB} ended NODE_FAIL on node hpcb-c1 (the node was lost). "
        "Your files are kept in "
    )
    assert spawner.stop_reason.endswith(
        "/default; start the server again to run it on another node."
    )
    # It outlives this object (the hub makes the page's spawner from the stored state)...
    again = spawner_for(tmp_path, ScriptedSlurm([ON_THIS_HOST]))
    again.load_state(spawner.get_state())
    assert again.stop_reason == spawner.stop_reason
    # ...until the next start.
    asyncio.run(started(again))
    assert again.stop_reason == "" and "stop_reason" not in again.get_state()
    # A server the researcher stops says nothing of the kind.
    stopped = spawner_for(tmp_path, ScriptedSlurm([ON_THIS_HOST]))
    stopped.job_id = JOB
    asyncio.run(asyncio.wait_for(stopped.stop(), 2))
    assert asyncio.run(stopped.poll()) == 1 and stopped.stop_reason == ""
    # A job Slurm has forgotten (the hub was down past MinJobAge): no final state.
    forgotten = spawner_for(
        tmp_path, ScriptedSlurm([(0, "RUNNING hpcb-c2 p None\n", ""), (0, "", "")])
    )
    forgotten.job_id = JOB
    assert asyncio.run(forgotten.poll()) is None
    time.sleep(0.02)
    assert asyncio.run(forgotten.poll()) == 1
    assert forgotten.stop_reason.startswith(f"Your server's Slurm job {JOB} ended on node hpcb-c2.")


def test_stop_cancels_the_job_as_the_researcher(tmp_path: Path) -> None:
    slurm = ScriptedSlurm([ON_THIS_HOST])
    spawner = spawner_for(tmp_path, slurm)
    spawner.job_id = JOB
    assert asyncio.run(spawner.poll()) is None
    asyncio.run(asyncio.wait_for(spawner.stop(), 2))
    assert ("scancel", JOB) in slurm.calls
    # stop() waited until Slurm no longer lists the job.
    assert asyncio.run(spawner.query_job_status()) is JobStatus.NOTFOUND


@pytest.mark.parametrize(
    ("user_options", "named"),
    [
        ({"image": "base:default", "command": "id"}, "command"),
        ({"image": "../../etc/shadow"}, "image"),
        ({"image": "base:default", "cpus": "1; rm -rf ~"}, "cpus"),
        ({"image": "base:default", "cpus": "100000"}, "cpus"),  # past the site's limit
        ({"image": "base:no-such-base"}, "base:no-such-base"),
    ],
)
def test_bad_options_are_a_400_before_anything_is_submitted(
    tmp_path: Path, user_options: dict[str, Any], named: str
) -> None:
    slurm = ScriptedSlurm([ON_THIS_HOST])
    spawner = spawner_for(tmp_path, slurm, user_options)
    with pytest.raises(web.HTTPError) as refused:
        asyncio.run(spawner.start())
    assert refused.value.status_code == 400
    assert named in str(refused.value.log_message)
    assert slurm.calls == []
