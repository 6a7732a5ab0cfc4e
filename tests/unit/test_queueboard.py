"""One squeue for all of a hub's server jobs (hpcbinder.jobs.queueboard):
many spawners asking at once are answered by one squeue a round, as the
service account where Slurm shows it every job and per researcher (through
the sudo rule) where it does not; a job asked about while a round runs is
never answered "gone" by that round, nor left unasked after it; one
account's failing squeue reaches its own askers only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcbinder.jobs.queueboard import QueueBoard
from hpcbinder.jobs.servers import ServerJobs, ServerJobState
from hpcbinder.seams.proc import CommandResult, LocalRunner
from hpcbinder.seams.slurm import QueueEntry, QueueState, SlurmCLI, SlurmError
from tests.unit.fakes import squeue_line


class Queue(LocalRunner):
    """Slurm's answers on this host: each job's squeue line by id (a job
    not in ``lines`` is not listed) and owner (alice unless ``owners``
    says), PrivateData (with ``jobs``, squeue as a researcher lists only
    her jobs, and as the service account none), and a pause in squeue."""

    def __init__(
        self,
        lines: dict[str, str],
        *,
        owners: dict[str, str] | None = None,
        private_data: str = "none",
    ) -> None:
        self.lines = lines
        self.owners = owners or {}
        self.private_data = private_data
        self.squeues: list[tuple[list[str], str | None]] = []
        self.pause = 0.0
        self.fail = False
        self.refused: set[str] = set()  # accounts whose squeue sudo refuses

    def run(
        self,
        argv: Sequence[str],
        *,
        user: str | None = None,
        input_text: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> CommandResult:
        if argv[0] == "scontrol":
            return CommandResult(argv, 0, f"PrivateData = {self.private_data}\n", "")
        if argv[0] == "sacctmgr":
            return CommandResult(argv, 0, "None\n", "")
        assert argv[0] == "squeue" and "--states=all" in argv and "-a" in argv
        if self.pause:
            time.sleep(self.pause)
        ids = argv[-1].split(",")
        self.squeues.append((ids, user))
        if self.fail:
            return CommandResult(argv, 1, "", "squeue: error: Unable to contact slurm controller\n")
        if user in self.refused:
            return CommandResult(argv, 1, "", "sudo: unable to change to runas uid\n")
        listed = [i for i in ids if i in self.lines]
        if "jobs" in self.private_data:
            listed = [i for i in listed if self.owner(i) == user]
        out = "".join(squeue_line(i, self.owner(i), self.lines[i]) for i in listed)
        return CommandResult(argv, 0, out, "")

    def owner(self, job_id: str) -> str:
        return self.owners.get(job_id, "alice")


def alternating(lines: dict[str, str]) -> dict[str, str]:
    """alice's, bob's, alice's... job, in ``lines``' order."""
    return {job: ["alice", "bob"][n % 2] for n, job in enumerate(lines)}


def jobs_of(count: int) -> dict[str, str]:
    return {
        str(1000 + n): f"RUNNING hpcb-c{1 + n % 2} interactive-multi None" for n in range(count)
    }


def test_forty_spawners_asking_at_once_make_one_squeue_as_the_service_account() -> None:
    queue = Queue(jobs_of(40), owners=alternating(jobs_of(40)))
    board = QueueBoard(SlurmCLI(queue), interval=0.5)

    async def everyone() -> list[QueueEntry]:
        users = ["alice", "bob"]
        return await asyncio.gather(
            *(board.entry(job, users[n % 2]) for n, job in enumerate(queue.lines))
        )

    entries = asyncio.run(everyone())
    assert [e.node for e in entries] == [f"hpcb-c{1 + n % 2}" for n in range(40)]
    assert all(e.state is QueueState.RUNNING for e in entries)
    [(ids, user)] = queue.squeues
    assert sorted(ids) == sorted(queue.lines) and user is None  # no sudo


def test_where_slurm_hides_jobs_each_researcher_is_asked_for_as_themself() -> None:
    queue = Queue(jobs_of(6), owners=alternating(jobs_of(6)), private_data="jobs,usage")
    board = QueueBoard(SlurmCLI(queue), interval=0.5, account="hpcbinder")

    async def everyone() -> list[QueueEntry]:
        return await asyncio.gather(
            *(board.entry(job, ["alice", "bob"][n % 2]) for n, job in enumerate(queue.lines))
        )

    asyncio.run(everyone())
    asked = {user: sorted(ids) for ids, user in queue.squeues}
    assert asked == {"alice": ["1000", "1002", "1004"], "bob": ["1001", "1003", "1005"]}


def test_an_answer_is_reused_within_the_interval_and_asked_again_after() -> None:
    queue = Queue(jobs_of(2))
    ticks = [0.0]
    board = QueueBoard(SlurmCLI(queue), interval=0.5, clock=lambda: ticks[0])

    async def ask(job: str) -> QueueEntry:
        return await board.entry(job, "alice")

    asyncio.run(ask("1000"))
    ticks[0] = 0.4
    queue.lines["1001"] = "NODE_FAIL hpcb-c2 interactive-multi NodeDown"
    assert asyncio.run(ask("1001")).ended == "NODE_FAIL"  # a job not asked about yet: asked now
    calls = len(queue.squeues)
    assert asyncio.run(ask("1000")).state is QueueState.RUNNING  # 0.4 s old: reused
    assert len(queue.squeues) == calls
    ticks[0] = 1.0
    queue.lines["1000"] = "NODE_FAIL hpcb-c1 interactive-multi NodeDown"
    gone = asyncio.run(ask("1000"))
    assert gone == QueueEntry(QueueState.GONE, "hpcb-c1", "interactive-multi", ended="NODE_FAIL")
    assert len(queue.squeues) == calls + 1


def test_a_job_asked_about_during_a_round_is_answered_by_the_next_not_called_gone() -> None:
    queue = Queue(jobs_of(1), owners={"2000": "bob"})
    queue.pause = 0.2
    board = QueueBoard(SlurmCLI(queue), interval=10)

    async def scenario() -> QueueEntry:
        first = asyncio.create_task(board.entry("1000", "alice"))
        await asyncio.sleep(0.05)  # the round for 1000 is under way
        queue.lines["2000"] = "PENDING n/a interactive-multi Priority"
        late = await board.entry("2000", "bob")
        await first
        return late

    assert asyncio.run(scenario()).state is QueueState.PENDING
    assert [ids for ids, _ in queue.squeues] == [["1000"], ["1000", "2000"]]


def test_a_failed_squeue_reaches_every_asker_and_the_next_question_asks_again() -> None:
    queue = Queue(jobs_of(2))
    queue.fail = True
    board = QueueBoard(SlurmCLI(queue), interval=10)

    async def everyone() -> list[object]:
        return await asyncio.gather(
            *(board.entry(job, "alice") for job in queue.lines), return_exceptions=True
        )

    assert all(isinstance(r, SlurmError) for r in asyncio.run(everyone()))
    assert len(queue.squeues) == 1
    queue.fail = False
    assert asyncio.run(board.entry("1000", "alice")).state is QueueState.RUNNING
    # ServerJobs retries through the board and reports a lasting failure as UNKNOWN.
    queue.fail = True
    jobs = ServerJobs(
        "alice",
        SlurmCLI(queue),
        retries=1,
        backoff=0,
        board=QueueBoard(SlurmCLI(queue), interval=0),
    )
    assert asyncio.run(jobs.status("1000")).state is ServerJobState.UNKNOWN


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["alice", "bob", "hpcbuild"]), st.integers(1, 60), st.booleans()),
        min_size=1,
        max_size=30,
    ),
    st.booleans(),
)
def test_every_asker_gets_its_own_jobs_answer_whoever_asks_with_it(
    asks: list[tuple[str, int, bool]], hidden: bool
) -> None:
    """Property: whatever mix of researchers, jobs and listed or forgotten
    jobs ask at once, each gets its own job's line, and where Slurm hides
    jobs no squeue runs as anyone but the job's owner."""
    lines = {str(job): f"RUNNING n{job} p None" for _, job, listed in asks if listed}
    owner = {str(job): user for user, job, _ in asks}
    queue = Queue(lines, owners=owner, private_data="jobs" if hidden else "none")
    board = QueueBoard(SlurmCLI(queue), interval=1, account="hpcbinder")

    async def everyone() -> list[QueueEntry]:
        return await asyncio.gather(*(board.entry(str(job), owner[str(job)]) for _, job, _ in asks))

    for (_, job, _), entry in zip(asks, asyncio.run(everyone()), strict=True):
        if str(job) in lines:
            assert (entry.state, entry.node) == (QueueState.RUNNING, f"n{job}")
        else:
            assert entry == QueueEntry(QueueState.GONE)
    unlisted_owners = {owner[job] for job in owner if job not in lines}
    for ids, user in queue.squeues:
        if hidden or user is not None:  # a shared squeue's unlisted jobs, asked as their owner
            assert {owner[i] for i in ids} == {user}
        if not hidden and user is not None:
            assert not set(ids) & set(lines)
    bound = len(set(owner.values())) if hidden else 1 + len(unlisted_owners)
    assert len(queue.squeues) <= bound


@pytest.mark.parametrize("count", [1, 40])
def test_one_round_for_any_number_of_jobs(count: int) -> None:
    queue = Queue(jobs_of(count))
    board = QueueBoard(SlurmCLI(queue), interval=0.5)

    async def everyone() -> None:
        await asyncio.gather(*(board.entry(job, "alice") for job in queue.lines))

    asyncio.run(everyone())
    assert board.rounds == 1


@pytest.mark.parametrize("others", [True, False], ids=["with another job", "alone"])
def test_a_job_found_gone_by_a_round_too_old_for_its_question_is_asked_again(
    others: bool,
) -> None:
    """Review finding (HIGH): a round that began more than ``interval``
    before alice's poll found her job gone and dropped it from the next
    rounds; her poll then waited forever (squeue after squeue, or a busy
    loop with none), so a lost node's server was never marked stopped."""
    queue = Queue(jobs_of(2), owners={"1001": "bob"})
    board = QueueBoard(SlurmCLI(queue), interval=0.2)
    hers, others_job = sorted(queue.lines)

    async def scenario() -> QueueEntry:
        await board.entry(hers, "alice")
        if others:
            await board.entry(others_job, "bob")
        del queue.lines[hers]  # her node is lost: squeue no longer lists her job
        await asyncio.sleep(0.3)  # the last answer is too old now
        queue.pause = 0.5  # a slow squeue
        first = asyncio.ensure_future(board.entry(others_job if others else hers, "bob"))
        await asyncio.sleep(0.3)  # her poll comes 0.3 s into that round
        answer = await asyncio.wait_for(board.entry(hers, "alice"), 10)
        await first
        return answer

    assert asyncio.run(scenario()).state is QueueState.GONE
    assert len(queue.squeues) <= 7  # 5 rounds, 2 of which confirm her unlisted job as her


def test_one_researchers_failing_squeue_leaves_the_others_answers_definite() -> None:
    """Review finding: with one squeue per researcher (PrivateData=jobs),
    bob's failing squeue (a locked account, a rate limit) made every
    researcher's state unknown, so alice's lost node went unnoticed."""

    queue = Queue(
        {"100": "NODE_FAIL hpcb-c1 interactive None", "200": "RUNNING hpcb-c2 interactive None"},
        owners={"200": "bob"},
        private_data="jobs",
    )
    queue.refused = {"bob"}  # sudo cannot run his squeue
    board = QueueBoard(SlurmCLI(queue), interval=0.2, account="hpcbinder")

    async def both() -> list[object]:
        return await asyncio.gather(
            board.entry("100", "alice"), board.entry("200", "bob"), return_exceptions=True
        )

    hers, his = asyncio.run(both())
    assert isinstance(hers, QueueEntry) and hers.state is QueueState.GONE, hers
    assert isinstance(his, SlurmError), his


def test_a_job_listed_as_another_accounts_is_gone_for_the_asker() -> None:
    """Review finding (MEDIUM): the shared squeue never said whose job it
    listed, so an id of hers that Slurm gave again to bob's job (its state
    reset) read as her server running on bob's node."""
    queue = Queue({"1000": "RUNNING hpcb-c2 interactive None"}, owners={"1000": "bob"})
    board = QueueBoard(SlurmCLI(queue), interval=0.5)
    assert asyncio.run(board.entry("1000", "alice")) == QueueEntry(QueueState.GONE)


def test_slurm_hiding_jobs_mid_run_stops_no_server() -> None:
    """Review finding (MEDIUM): once the board had found that the service
    account sees every job, a site setting ``PrivateData=jobs`` while the
    hub ran made the shared squeue list none, and every server read as
    gone (the hub would stop them all). A job it does not list is asked
    for as its owner before it is called gone, and whether the board sees
    every job is asked again every minute."""
    lines = jobs_of(4)
    owners = alternating(lines)
    queue = Queue(lines, owners=owners)
    ticks = [0.0]
    board = QueueBoard(SlurmCLI(queue), interval=0, account="hpcbinder", clock=lambda: ticks[0])

    def everyone() -> list[QueueEntry]:
        async def ask() -> list[QueueEntry]:
            return await asyncio.gather(*(board.entry(job, owners[job]) for job in lines))

        ticks[0] += 1
        queue.squeues.clear()
        return asyncio.run(ask())

    assert all(e.state is QueueState.RUNNING for e in everyone())
    assert [user for _, user in queue.squeues] == [None]
    queue.private_data = "jobs"  # slurm.conf changed and reconfigured
    assert all(e.state is QueueState.RUNNING for e in everyone())
    assert [user for _, user in queue.squeues] == [None, "alice", "bob"]
    ticks[0] += 60
    assert all(e.state is QueueState.RUNNING for e in everyone())
    assert [user for _, user in queue.squeues] == ["alice", "bob"]  # as each owner now
    del lines["1000"]  # her job ends and Slurm forgets it: gone, as before
    ticks[0] += 1
    assert asyncio.run(board.entry("1000", "alice")) == QueueEntry(QueueState.GONE)


@pytest.mark.parametrize("stale_first", [True, False], ids=["her record first", "his first"])
def test_one_id_asked_for_two_researchers_is_only_its_owners(stale_first: bool) -> None:
    """Review finding (MEDIUM): Slurm's state reset, her record's id 1000
    is bob's new server now. Whoever asked last decided whose job the
    round checked, and the answer went to both: she read his server as
    hers, or his read as gone (and the hub dropped it, running on)."""
    queue = Queue({"1000": "RUNNING hpcb-c2 interactive None"}, owners={"1000": "bob"})
    board = QueueBoard(SlurmCLI(queue), interval=10)
    order = [("1000", "alice"), ("1000", "bob")]

    async def both() -> dict[str, QueueEntry]:
        asks = order if stale_first else order[::-1]
        entries = await asyncio.gather(*(board.entry(job, user) for job, user in asks))
        return {user: entry for (_, user), entry in zip(asks, entries, strict=True)}

    entries = asyncio.run(both())
    assert entries["alice"] == QueueEntry(QueueState.GONE)
    assert entries["bob"] == QueueEntry(QueueState.RUNNING, "hpcb-c2", "interactive")
    # Asked again within the interval: the same, from the same round.
    assert asyncio.run(board.entry("1000", "bob")).state is QueueState.RUNNING
    assert len(queue.squeues) == 1


def test_an_owner_this_host_cannot_look_up_is_no_answer_not_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review finding (MEDIUM): with names compared, a directory service
    down read every server as another account's, so gone: the hub would
    stop them all. squeue prints the uid; the hub's own failing lookup
    leaves the state unknown, and the server is kept."""
    queue = Queue(jobs_of(1))
    board = QueueBoard(SlurmCLI(queue), interval=0)
    assert asyncio.run(board.entry("1000", "alice")).state is QueueState.RUNNING

    def no_directory(name: str) -> object:
        raise KeyError(name)

    monkeypatch.setattr("hpcbinder.seams.slurm.pwd", SimpleNamespace(getpwnam=no_directory))
    with pytest.raises(SlurmError, match="no account alice here"):
        asyncio.run(board.entry("1000", "alice"))
    jobs = ServerJobs("alice", SlurmCLI(queue), retries=0, backoff=0, board=board)
    assert asyncio.run(jobs.status("1000")).state is ServerJobState.UNKNOWN
