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

Whose job: a question is a job id *and* the researcher the hub knows it
for, and squeue says each job's owner (uid): a job is hers only if Slurm
lists it as hers (:func:`~hpcbinder.seams.slurm.owned_entry`), and one
the shared squeue does not list is asked for as her before it is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from hpcbinder.seams import proc
from hpcbinder.seams.slurm import (
    QueueEntry,
    QueueListing,
    QueueState,
    SlurmCLI,
    SlurmError,
    owned_entry,
)

#: A job nobody asked about for this long is left out of the next squeue.
FORGET_SECONDS = 120.0
#: How long the answer to "does this account see every job" stands: a
#: site may set ``PrivateData=jobs`` while the hub runs.
SEES_ALL_SECONDS = 60.0

#: A question: a job id and the researcher whose job the hub knows it as
#: (the same id may be asked about for two researchers, one of them with a
#: stale record, as after Slurm's state was reset).
Question = tuple[str, str]


@dataclass
class _Answer:
    """One squeue round: when it started, the questions it answers, what
    squeue listed of their jobs (whoever's they are)."""

    taken: float
    asked: set[Question] = field(default_factory=set)
    listings: dict[str, QueueListing] = field(default_factory=dict)
    #: Questions whose account's squeue gave no definite answer, and why:
    #: one researcher's failing squeue (a locked account, a rate limit)
    #: leaves the others' answers definite.
    failures: dict[Question, Exception] = field(default_factory=dict)

    def answers(self, question: Question) -> bool:
        return question in self.asked and question not in self.failures

    def entry(self, question: Question) -> QueueEntry:
        """The job as the researcher's: :func:`~hpcbinder.seams.slurm.owned_entry`."""
        if question in self.failures:
            raise self.failures[question]
        job_id, user = question
        return owned_entry(self.listings.get(job_id), user)


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
        self._asked: dict[Question, float] = {}  # -> when last asked
        self._answer: _Answer | None = None
        self._round: asyncio.Future[_Answer] | None = None
        self._sees_all: tuple[bool, float] | None = None  # the answer, when found
        #: squeue calls made, for tests and the benchmark's log line.
        self.rounds = 0

    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    async def entry(self, job_id: str, user: str) -> QueueEntry:
        """``user``'s job ``job_id`` as squeue lists it, no older than
        ``interval`` seconds; :class:`~hpcbinder.seams.slurm.SlurmError`
        (or a :class:`~hpcbinder.seams.proc.CommandError`) when this round's
        squeue gave no definite answer."""
        question = (job_id, user)
        asked = self._now()
        while True:
            # Asked again each pass: a round too old for this question may
            # have found the job gone and left it out of the next rounds.
            self._asked[question] = asked
            answer = self._answer  # a failure is never reused: asking again asks Slurm
            fresh = answer is not None and answer.taken >= asked - self.interval
            if answer is not None and fresh and answer.answers(question):
                return answer.entry(question)
            if self._round is None:
                self._round = asyncio.ensure_future(self._query())
            current = self._round
            # shield: one caller cancelled (its spawn timed out) ends no one else's round.
            result = await asyncio.shield(current)
            if result.taken >= asked - self.interval and question in result.asked:
                return result.entry(question)
            # The round had started before this job was asked about: the next covers it.

    async def _query(self) -> _Answer:
        taken = self._now()
        try:
            for question, last in list(self._asked.items()):
                if taken - last > FORGET_SECONDS:
                    del self._asked[question]
            answer = _Answer(taken, set(self._asked))
            if await self._sees_every_job(taken):
                await self._ask(answer, answer.asked, None)
                # A job the shared squeue did not list is gone only if its
                # owner's own squeue agrees: Slurm may hide it from this
                # account now. Rare (Slurm forgot it), so cheap.
                await self._ask_each_owner(
                    answer,
                    {
                        question
                        for question in answer.asked
                        if question[0] not in answer.listings and question not in answer.failures
                    },
                )
            else:
                await self._ask_each_owner(answer, answer.asked)
            for question in answer.asked:
                if answer.answers(question):
                    with contextlib.suppress(SlurmError):
                        if answer.entry(question).state is QueueState.GONE:
                            self._asked.pop(question, None)  # never back: not asked again
            self._answer = answer
            return answer
        finally:
            self._round = None

    async def _ask_each_owner(self, answer: _Answer, questions: set[Question]) -> None:
        """One squeue per researcher, as her, for her questions."""
        for user in sorted({user for _, user in questions}):
            await self._ask(answer, {q for q in questions if q[1] == user}, user)

    async def _ask(self, answer: _Answer, questions: set[Question], account: str | None) -> None:
        """One squeue as ``account`` (None: this process's) for ``questions``' jobs."""
        self.rounds += 1
        job_ids = sorted({job_id for job_id, _ in questions})
        try:
            answer.listings.update(
                await asyncio.to_thread(self.slurm.queue_listings, job_ids, user=account)
            )
        except (SlurmError, proc.CommandError) as exc:
            answer.failures.update(dict.fromkeys(questions, exc))

    async def _sees_every_job(self, now: float) -> bool:
        """Whether one squeue as this process's account answers for every
        researcher: asked again every ``SEES_ALL_SECONDS``. Only for commands
        run here: on a login node (``cluster.login``) the account is the
        site's, so each researcher's own."""
        if not isinstance(self.slurm.runner, proc.LocalRunner):
            return False
        if self._sees_all is None or now - self._sees_all[1] > SEES_ALL_SECONDS:
            try:
                sees = await asyncio.to_thread(self.slurm.sees_every_job, self.account)
            except proc.CommandError:
                return False  # asked again next round
            self._sees_all = (sees, now)
        return self._sees_all[0]


_BOARDS: dict[object, QueueBoard] = {}


def board_for(key: object, slurm: SlurmCLI, interval: float) -> QueueBoard:
    """The process's board for the Slurm client ``key`` names (the site's
    cluster settings, or a client a test gave), made on first use."""
    board = _BOARDS.get(key)
    if board is None:
        board = _BOARDS[key] = QueueBoard(slurm, interval)
    return board
