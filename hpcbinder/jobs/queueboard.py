"""One ``squeue`` for all of a hub's server jobs.

Every spawner asks its job's state while the server starts (every
``startup_poll_interval``) and then every ``poll_interval``; one squeue
each made 80 squeue calls a second for 40 starting servers, on a
controller and a hub host with other work. A :class:`QueueBoard` answers
them all from one ``squeue --jobs=ID,ID,...`` at most every ``interval``
seconds: a question finds the last answer if it is fresh enough and names
its job, else joins the squeue under way or starts the next.

Whose squeue: where the account the hub runs commands as sees every job
(:meth:`~hpcbinder.seams.slurm.SlurmCLI.sees_every_job`: no
``PrivateData=jobs``, or an operator), one squeue as that account, with
no sudo; where Slurm hides other users' jobs from it, one squeue per
researcher with jobs, through the sudo rule the service already has
(``squeue`` as ``%hpcusers``): never a wider right than today's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from hpcbinder.seams import proc
from hpcbinder.seams.slurm import QueueEntry, QueueState, SlurmCLI, SlurmError

#: A job nobody asked about for this long is left out of the next squeue.
FORGET_SECONDS = 120.0


@dataclass
class _Answer:
    """One squeue round: when it started, the jobs it asked about, their entries."""

    taken: float
    entries: dict[str, QueueEntry] = field(default_factory=dict)
    #: Jobs whose account's squeue gave no definite answer, and why: one
    #: researcher's failing squeue (a locked account, a rate limit) leaves
    #: the others' answers definite.
    failures: dict[str, Exception] = field(default_factory=dict)


class QueueBoard:
    """The state of every job asked about, from one squeue a round, for
    the spawners of one process that share a Slurm client."""

    def __init__(
        self,
        slurm: SlurmCLI,
        interval: float,
        *,
        account: str | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """``interval``: the oldest answer given, in seconds (the hub's
        ``startup_poll_interval``); ``account``: the one commands run as
        without a user (default: this process's)."""
        self.slurm = slurm
        self.account = account or proc.current_user()
        self.interval = interval
        self._clock = clock
        self._asked: dict[str, tuple[str, float]] = {}  # job id -> (user, last asked)
        self._answer: _Answer | None = None
        self._round: asyncio.Future[_Answer] | None = None
        self._sees_all: bool | None = None
        #: squeue calls made, for tests and the benchmark's log line.
        self.rounds = 0

    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    async def entry(self, job_id: str, user: str) -> QueueEntry:
        """``user``'s job ``job_id`` as squeue lists it, no older than
        ``interval`` seconds; :class:`~hpcbinder.seams.slurm.SlurmError`
        (or a :class:`~hpcbinder.seams.proc.CommandError`) when this round's
        squeue gave no definite answer."""
        asked = self._now()
        while True:
            # Asked again each pass: a round too old for this question may
            # have found the job gone and left it out of the next rounds.
            self._asked[job_id] = (user, asked)
            answer = self._answer  # a failure is never reused: asking again asks Slurm
            if (
                answer is not None
                and job_id in answer.entries
                and answer.taken >= asked - self.interval
            ):
                return answer.entries[job_id]
            if self._round is None:
                self._round = asyncio.ensure_future(self._query())
            current = self._round
            # shield: one caller cancelled (its spawn timed out) ends no one else's round.
            result = await asyncio.shield(current)
            if result.taken >= asked - self.interval:
                if job_id in result.failures:
                    raise result.failures[job_id]
                if job_id in result.entries:
                    return result.entries[job_id]
            # The round had started before this job was asked about: the next covers it.

    async def _query(self) -> _Answer:
        taken = self._now()
        try:
            for job_id, (_, last) in list(self._asked.items()):
                if taken - last > FORGET_SECONDS:
                    del self._asked[job_id]
            by_account: dict[str | None, list[str]] = {}
            sees_all = await self._sees_every_job()
            for job_id, (user, _) in self._asked.items():
                by_account.setdefault(None if sees_all else user, []).append(job_id)
            answer = _Answer(taken)
            for account, job_ids in by_account.items():
                self.rounds += 1
                try:
                    answer.entries.update(
                        await asyncio.to_thread(self.slurm.queue_entries, job_ids, user=account)
                    )
                except (SlurmError, proc.CommandError) as exc:
                    answer.failures.update(dict.fromkeys(job_ids, exc))
            for job_id, entry in answer.entries.items():
                if entry.state is QueueState.GONE:  # never back: left out of the next rounds
                    self._asked.pop(job_id, None)
            self._answer = answer
            return answer
        finally:
            self._round = None

    async def _sees_every_job(self) -> bool:
        """Whether one squeue as this process's account answers for every
        researcher: asked once. Only for commands run here: on a login node
        (``cluster.login``) the account is the site's, so each researcher's own."""
        if self._sees_all is None:
            if isinstance(self.slurm.runner, proc.LocalRunner):
                try:
                    self._sees_all = await asyncio.to_thread(
                        self.slurm.sees_every_job, self.account
                    )
                except proc.CommandError:
                    return False  # asked again next round
            else:
                self._sees_all = False
        return self._sees_all


_BOARDS: dict[object, QueueBoard] = {}


def board_for(key: object, slurm: SlurmCLI, interval: float) -> QueueBoard:
    """The process's board for the Slurm client ``key`` names (the site's
    cluster settings, or a client a test gave), made on first use."""
    board = _BOARDS.get(key)
    if board is None:
        board = _BOARDS[key] = QueueBoard(slurm, interval)
    return board
