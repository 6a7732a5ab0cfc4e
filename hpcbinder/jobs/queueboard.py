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
            owners = {job_id: user for job_id, (user, _) in self._asked.items()}
            answer = _Answer(taken)
            if await self._sees_every_job():
                await self._ask(answer, owners, None)
                await self._confirm_unlisted(answer, owners)
            else:
                for user in dict.fromkeys(owners.values()):
                    await self._ask(answer, _of(owners, user), user)
            for job_id, entry in answer.entries.items():
                if entry.state is QueueState.GONE:  # never back: left out of the next rounds
                    self._asked.pop(job_id, None)
            self._answer = answer
            return answer
        finally:
            self._round = None

    async def _ask(self, answer: _Answer, owners: dict[str, str], account: str | None) -> None:
        """One squeue as ``account`` (None: this process's) for ``owners``' jobs."""
        self.rounds += 1
        try:
            answer.entries.update(
                await asyncio.to_thread(self.slurm.queue_entries, owners, user=account)
            )
        except (SlurmError, proc.CommandError) as exc:
            for job_id in owners:
                answer.entries.pop(job_id, None)  # not even an earlier squeue's "gone"
                answer.failures[job_id] = exc

    async def _confirm_unlisted(self, answer: _Answer, owners: dict[str, str]) -> None:
        """A job the shared squeue did not list is gone only if its owner's
        own squeue agrees: a site that sets ``PrivateData=jobs`` while the
        hub runs hides every job from the service account at once, and
        the hub would stop every server. Rare (a job is unlisted once Slurm
        forgot it), so one squeue per owner with such a job."""
        unlisted = {
            job_id: owners[job_id]
            for job_id, entry in answer.entries.items()
            if entry.state is QueueState.GONE and not entry.ended
        }
        for user in dict.fromkeys(unlisted.values()):
            await self._ask(answer, _of(unlisted, user), user)
        if any(
            job_id in answer.entries and answer.entries[job_id].state is not QueueState.GONE
            for job_id in unlisted
        ):
            self._sees_all = None  # Slurm hides jobs from this account now: asked again

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


def _of(owners: dict[str, str], user: str) -> dict[str, str]:
    """The jobs of ``owners`` that are ``user``'s."""
    return {job_id: owner for job_id, owner in owners.items() if owner == user}


_BOARDS: dict[object, QueueBoard] = {}


def board_for(key: object, slurm: SlurmCLI, interval: float) -> QueueBoard:
    """The process's board for the Slurm client ``key`` names (the site's
    cluster settings, or a client a test gave), made on first use."""
    board = _BOARDS.get(key)
    if board is None:
        board = _BOARDS[key] = QueueBoard(slurm, interval)
    return board
