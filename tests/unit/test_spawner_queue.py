"""A server job's way through Slurm's queue, as the researcher is told it:
pending (partition, reason in words, place, expected start) → running on a
node → gone; transient squeue failures are retried, and a wait past the
site's queue limit cancels the job. Slurm is a scripted command runner."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest

from hpcbinder.jobs.servers import (
    JobDied,
    LaunchProgress,
    QueueTimeout,
    QueueWatch,
    ServerJobs,
    ServerJobState,
    pending_reason,
)
from hpcbinder.seams.slurm import SlurmCLI
from tests.unit.fakes import DOWN, GONE, JOB, RUNNING, ScriptedSlurm, pending

TODAY = datetime(2026, 11, 23, 8, 0)


def watched(slurm: ScriptedSlurm) -> tuple[ServerJobs, LaunchProgress, QueueWatch]:
    jobs = ServerJobs("alice", SlurmCLI(slurm), retries=2, backoff=0.0)
    progress = LaunchProgress()
    watch = QueueWatch(jobs, JOB, progress, detail_every=0.0, now=lambda: TODAY)
    return jobs, progress, watch


def test_pending_then_running_is_reported_step_by_step() -> None:
    slurm = ScriptedSlurm(
        [pending("None"), pending("Resources"), DOWN, pending("Priority"), RUNNING],
        start="2026-11-23T09:12:00",
    )
    jobs, progress, watch = watched(slurm)
    ready = iter([False, True])
    host = asyncio.run(
        jobs.wait_started(JOB, 0.0, lambda: next(ready), on_status=watch, max_queue_minutes=60)
    )
    assert host == "vm"
    assert [event.message for event in progress.events] == [
        "Waiting in partition interactive: waiting for the scheduler to consider it; "
        "position 2 of 3 pending jobs there; expected to start at 09:12",
        "Waiting in partition interactive: waiting for free nodes; "
        "position 2 of 3 pending jobs there; expected to start at 09:12",
        # The failed squeue was retried: no step, and the job goes on.
        "Waiting in partition interactive: other jobs are ahead; "
        "position 2 of 3 pending jobs there; expected to start at 09:12",
        f"Job {JOB} started on node vm",
    ]
    # The partition's queue is asked for its pending jobs, next to start first.
    assert ("squeue", "-h", "-t", "PENDING", "--sort=-p,i", "-o", "%i", "-p", "interactive") in (
        slurm.calls
    )
    assert not any(call[0] == "scancel" for call in slurm.calls)


def test_what_slurm_cannot_tell_is_left_out() -> None:
    # PrivateData=jobs hides the others' jobs: a place among one's own jobs
    # would mislead. No estimate yet: none shown. An unknown reason as is.
    slurm = ScriptedSlurm([pending("SomeNewReason", "gpu")], private_data="jobs,usage")
    jobs, progress, watch = watched(slurm)
    asyncio.run(watch(asyncio.run(jobs.status(JOB))))
    assert [event.message for event in progress.events] == [
        "Waiting in partition gpu: SomeNewReason"
    ]
    assert not any("PENDING" in call for call in slurm.calls)


def test_a_job_that_ends_while_starting_fails_at_once_with_its_output() -> None:
    slurm = ScriptedSlurm([pending("Resources"), RUNNING, GONE])
    jobs, _, watch = watched(slurm)
    with pytest.raises(JobDied) as caught:
        asyncio.run(jobs.wait_started(JOB, 0.0, lambda: False, on_status=watch))
    assert caught.value.tail == ["FATAL: out of memory"]


def test_slurm_down_for_a_while_is_unknown_not_gone() -> None:
    jobs, _, _ = watched(ScriptedSlurm([DOWN]))
    assert asyncio.run(jobs.status(JOB)).state is ServerJobState.UNKNOWN


def test_a_wait_past_the_queue_limit_cancels_the_job() -> None:
    slurm = ScriptedSlurm([pending("Resources")])
    jobs, _, watch = watched(slurm)
    with pytest.raises(QueueTimeout) as caught:
        asyncio.run(
            jobs.wait_started(
                JOB, 0.01, lambda: False, on_status=watch, max_queue_minutes=0.05 / 60
            )
        )
    assert str(caught.value) == (
        "no node became free within 0.000833333 minutes "
        "(site file: launch.max_queue_minutes); the job was cancelled"
    )
    assert ("scancel", JOB) in slurm.calls


def test_expected_start_on_another_day_names_the_day() -> None:
    slurm = ScriptedSlurm([pending("Priority")], start="2026-11-24T03:05:00")
    jobs, progress, watch = watched(slurm)
    asyncio.run(watch(asyncio.run(jobs.status(JOB))))
    assert progress.events[-1].message.endswith("expected to start at 03:05 on 2026-11-24")


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        ("Resources", "waiting for free nodes"),
        ("Priority", "other jobs are ahead"),
        ("QOSMaxJobsPerUserLimit", "you have the most jobs this QOS allows"),
        ("ReqNodeNotAvail,_UnavailableNodes:vm", "the nodes it needs are not available"),
        ("Reservation", "waiting for its reservation to start"),
        ("PartitionDown", "the partition is down"),
        ("Frobnicated", "Frobnicated"),
    ],
)
def test_reasons_in_words(reason: str, words: str) -> None:
    assert pending_reason(reason).startswith(words)


def test_every_viewer_gets_every_step_from_the_first() -> None:
    async def scenario() -> tuple[list[str], list[str]]:
        progress = LaunchProgress()
        progress.add(10, "submitted")
        early: list[str] = []

        async def follow(into: list[str]) -> None:
            async for event in progress.follow():
                into.append(event.message)

        first = asyncio.create_task(follow(early))
        await asyncio.sleep(0)
        progress.add(20, "waiting")
        progress.add(20, "waiting")  # the same words again: no new step
        await asyncio.sleep(0)
        progress.add(50, "running")
        progress.finish()
        late: list[str] = []
        await follow(late)
        await first
        return early, late

    early, late = asyncio.run(scenario())
    assert early == late == ["submitted", "waiting", "running"]
