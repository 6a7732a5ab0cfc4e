"""What reaches Slurm's commands (one argument per option, job ids
checked) and how their answers are read (sbatch --parsable, scontrol, squeue,
sinfo, scontrol ping, scancel), with a runner that answers from text."""

from __future__ import annotations

from datetime import datetime

import pytest

from hpcbinder.seams.proc import CommandError
from hpcbinder.seams.slurm import (
    PartitionState,
    QueueEntry,
    QueueState,
    SlurmCLI,
    SlurmError,
    SubmitOptions,
    owned_entry,
)
from tests.unit.fakes import Replies, squeue_line


def test_each_option_is_one_argument_whatever_its_value() -> None:
    argv = SubmitOptions(partition="x --wrap=id", job_name="a b;c", cpus=2).argv()
    assert argv == ["--partition=x --wrap=id", "--cpus-per-task=2", "--job-name=a b;c"]


@pytest.mark.parametrize("job_id", ["1;rm", "-1", "--all", "12 13", ""])
def test_malformed_job_ids_never_reach_scontrol(job_id: str) -> None:
    with pytest.raises(ValueError, match="not a Slurm job id"):
        SlurmCLI(Replies()).job(job_id)
    with pytest.raises(ValueError, match="not a Slurm job id"):
        SlurmCLI(Replies()).cancel(job_id)


def ok(stdout: str) -> tuple[int, str, str]:
    return 0, stdout, ""


GONE = (1, "", "slurm_load_jobs error: Invalid job id specified\n")
JOB_RECORD = (
    "JobId=4242 JobName=hpcbinder-alice-default UserId=alice(1001) GroupId=hpcusers(1001) "
    "Priority=1 JobState={state} Reason={reason} Dependency=(null) ExitCode={exit} "
    "RunTime=00:00:03 Partition=interactive NodeList={nodes} BatchHost=vm "
    "StdOut=/home/alice/.hpcbinder-server-4242.log\n"
)


@pytest.mark.parametrize("answer", ["4242\n", "4242;cluster2\n"])
def test_sbatch_parsable_answers_give_the_job_id(answer: str) -> None:
    slurm = Replies(ok(answer))
    job = SlurmCLI(slurm).submit("#!/bin/sh\n", SubmitOptions(cpus=2), user="alice")
    assert job == "4242"
    [(argv, user, script)] = slurm.calls
    assert argv == ("sbatch", "--parsable", "--export=ALL", "--cpus-per-task=2")
    assert (user, script) == ("alice", "#!/bin/sh\n")


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        ((1, "", "sbatch: error: invalid partition specified: gpu\n"), "invalid partition"),
        ((0, "Submitted batch job 4242\n", ""), "Submitted batch job"),  # not --parsable
        ((0, "", ""), "refused"),
    ],
)
def test_sbatch_refusals_are_slurm_errors_with_its_words(
    answer: tuple[int, str, str], says: str
) -> None:
    with pytest.raises(SlurmError, match="sbatch refused the job") as refused:
        SlurmCLI(Replies(answer)).submit("#!/bin/sh\n", SubmitOptions())
    assert says in str(refused.value)


@pytest.mark.parametrize(
    ("state", "reason", "exit", "expected"),
    [
        ("COMPLETED", "None", "0:0", (0, 0, True)),
        ("FAILED", "NonZeroExitCode", "3:0", (3, 0, True)),
        ("CANCELLED", "None", "0:9", (0, 9, True)),  # killed by a signal
        ("RUNNING", "None", "0:0", (0, 0, False)),
        ("PENDING", "Resources", "", (None, None, False)),
    ],
)
def test_scontrol_job_records_are_read_field_by_field(
    state: str, reason: str, exit: str, expected: tuple[int | None, int | None, bool]
) -> None:
    record = JOB_RECORD.format(state=state, reason=reason, exit=exit, nodes="vm")
    slurm = Replies(ok(record))
    info = SlurmCLI(slurm).job("4242")
    assert slurm.calls[0][0] == ("scontrol", "-o", "show", "job", "4242")
    assert info is not None
    assert (info.job_id, info.state, info.reason, info.partition, info.node_list) == (
        "4242",
        state,
        reason,
        "interactive",
        "vm",
    )
    assert info.stdout_path == "/home/alice/.hpcbinder-server-4242.log"
    assert (info.exit_code, info.signal, info.finished) == expected


def test_a_forgotten_job_is_none_and_other_failures_raise() -> None:
    assert SlurmCLI(Replies(GONE)).job("4242") is None
    with pytest.raises(CommandError, match="exited with status 1"):
        SlurmCLI(Replies((1, "", "slurm_load_jobs error: Unable to contact\n"))).job("4242")


def test_wait_returns_the_finished_record_and_gives_up_on_a_forgotten_job() -> None:
    running = ok(JOB_RECORD.format(state="RUNNING", reason="None", exit="0:0", nodes="vm"))
    done = ok(JOB_RECORD.format(state="TIMEOUT", reason="TimeLimit", exit="0:15", nodes="vm"))
    info = SlurmCLI(Replies(running, done)).wait("4242", timeout=5, poll=0)
    assert (info.state, info.signal) == ("TIMEOUT", 15)
    with pytest.raises(SlurmError, match="no longer known"):
        SlurmCLI(Replies(running, GONE)).wait("4242", timeout=5, poll=0)
    ticks = iter(range(100))
    with pytest.raises(SlurmError, match="still RUNNING after 1 s"):
        SlurmCLI(Replies(running, running, running)).wait(
            "4242", timeout=1, poll=0, clock=lambda: next(ticks)
        )


@pytest.mark.parametrize(
    ("line", "entry"),
    [
        ("RUNNING vm interactive None", QueueEntry(QueueState.RUNNING, "vm", "interactive")),
        ("COMPLETING vm interactive None", QueueEntry(QueueState.RUNNING, "vm", "interactive")),
        ("RUNNING (null) interactive None", QueueEntry(QueueState.RUNNING, "", "interactive")),
        ("RUNNING n/a interactive None", QueueEntry(QueueState.RUNNING, "", "interactive")),
        (
            "PENDING n/a gpu ReqNodeNotAvail,_UnavailableNodes:vm",
            QueueEntry(QueueState.PENDING, "", "gpu", "ReqNodeNotAvail,_UnavailableNodes:vm"),
        ),
        ("CONFIGURING vm gpu None", QueueEntry(QueueState.PENDING, "", "gpu", "None")),
        # Not over: an admin's suspend, preemption by suspension, a held requeue.
        ("SUSPENDED hpcb-c1 p None", QueueEntry(QueueState.RUNNING, "hpcb-c1", "p")),
        ("STOPPED hpcb-c1 p None", QueueEntry(QueueState.RUNNING, "hpcb-c1", "p")),
        (
            "REQUEUE_HOLD n/a p JobHeldAdmin",
            QueueEntry(QueueState.PENDING, "", "p", "JobHeldAdmin"),
        ),
        (
            "COMPLETED vm interactive None",
            QueueEntry(QueueState.GONE, "vm", "interactive", ended="COMPLETED"),
        ),
        (
            "NODE_FAIL hpcb-c1 interactive-multi NodeDown",
            QueueEntry(QueueState.GONE, "hpcb-c1", "interactive-multi", ended="NODE_FAIL"),
        ),
        ("", QueueEntry(QueueState.GONE)),  # squeue no longer lists it
    ],
)
def test_squeue_lines_are_read_as_states(line: str, entry: QueueEntry) -> None:
    slurm = Replies(ok(squeue_line("4242", "alice", line) if line else ""))
    assert SlurmCLI(slurm).queue_entry("4242", user="alice") == entry
    argv = ("squeue", "-h", "-a", "--states=all", "-o", "%i|%U|%T|%B|%P|%r", "--jobs", "4242")
    assert slurm.calls[0][:2] == (argv, "alice")


def test_one_squeue_answers_for_many_jobs_and_one_it_omits_is_gone() -> None:
    lines = squeue_line("4243", "bob", "PENDING n/a batch Priority") + squeue_line(
        "4242", "alice", "RUNNING hpcb-c2 interactive None"
    )
    # A line for a job not asked about, and lines squeue could not print whole: ignored.
    others = squeue_line("99", "alice", "RUNNING vm interactive None") + "4244|1002|RUNNING\n"
    slurm = Replies(ok(lines + others))
    listings = SlurmCLI(slurm).queue_listings(["4242", "4243", "4244", "1;id"])
    assert {job: owned_entry(listings.get(job), "alice") for job in ["4242", "4244"]} == {
        "4242": QueueEntry(QueueState.RUNNING, "hpcb-c2", "interactive"),
        "4244": QueueEntry(QueueState.GONE),
    }
    assert owned_entry(listings["4243"], "bob") == QueueEntry(
        QueueState.PENDING, "", "batch", "Priority"
    )
    assert slurm.calls[0][0][-1] == "4242,4243,4244"  # never "1;id"


@pytest.mark.parametrize("state", ["RUNNING vm interactive None", "PENDING n/a batch Priority"])
def test_a_job_squeue_lists_as_another_accounts_is_not_hers(state: str) -> None:
    """Her recorded job id now names bob's job (Slurm forgot hers and gave
    the id again, as after its state was reset): hers is gone, and bob's
    node and state are never taken for her server's."""
    slurm = Replies(ok(squeue_line("4242", "bob", state)))
    assert SlurmCLI(slurm).queue_entry("4242", user="alice") == QueueEntry(QueueState.GONE)


def test_version_is_sinfos_line_or_empty() -> None:
    slurm = Replies(ok("slurm-wlm 22.05.8\n"), (127, "", "sinfo: not found\n"))
    assert SlurmCLI(slurm).version() == "slurm-wlm 22.05.8"
    assert SlurmCLI(slurm).version() == ""
    assert slurm.calls[0][0] == ("sinfo", "--version")


def test_squeue_without_an_answer_is_an_error_not_a_gone_job() -> None:
    failing = Replies((1, "", "squeue: error: Unable to contact slurm controller\n"))
    with pytest.raises(SlurmError, match="Unable to contact"):
        SlurmCLI(failing).queue_entry("4242", user="alice")
    assert SlurmCLI(Replies(GONE)).queue_entry("4242", user="alice") == QueueEntry(QueueState.GONE)
    never_asked = Replies()
    assert SlurmCLI(never_asked).queue_entry("1;id", user="alice") == QueueEntry(QueueState.GONE)
    assert never_asked.calls == []


def test_expected_start_is_none_until_the_scheduler_has_one() -> None:
    assert SlurmCLI(Replies(ok("N/A\n"))).expected_start("4242") is None
    assert SlurmCLI(Replies((1, "", "error\n"))).expected_start("4242") is None
    start = SlurmCLI(Replies(ok("2026-11-23T09:12:00\n"))).expected_start("4242")
    assert start == datetime(2026, 11, 23, 9, 12)


def test_sinfo_partitions_with_default_and_node_state_flags() -> None:
    sinfo = "interactive*|up|idle\ninteractive*|up|drained*\ngpu|down|mixed~\nbroken line\n"
    parts = SlurmCLI(Replies(ok(sinfo))).partitions()
    assert parts["interactive"] == PartitionState(
        "interactive", True, frozenset({"idle", "drained"}), is_default=True
    )
    assert parts["interactive"].usable
    assert parts["gpu"] == PartitionState("gpu", False, frozenset({"mixed"}), is_default=False)
    assert not parts["gpu"].usable  # down, whatever its nodes


def test_ping_names_the_controller_or_says_why_not() -> None:
    up = ok("Slurmctld(primary) at vm is UP\n")
    assert SlurmCLI(Replies(up)).ping() == "vm"
    down = (1, "Slurmctld(primary) at vm is DOWN\n", "")
    with pytest.raises(SlurmError, match="not reachable: Slurmctld\\(primary\\) at vm is DOWN"):
        SlurmCLI(Replies(down)).ping()


def test_a_failed_scancel_is_an_error() -> None:
    slurm = Replies((1, "", "scancel: error: Kill job error on job id 4242: Access denied\n"))
    with pytest.raises(CommandError, match="Access denied"):
        SlurmCLI(slurm).cancel("4242", user="bob")
    assert slurm.calls[0][:2] == (("scancel", "4242"), "bob")
