"""Fakes of the outside systems for fast unit tests: command runners
(:class:`hpcbinder.seams.proc.CommandRunner`) that answer as Slurm would,
from a script of job states, a sequence of replies or a table by program;
a stand-in image published in a real store; and the build server's
ruling on launches of the store's images."""

from __future__ import annotations

import getpass
import pwd
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hpcbinder.images.client import BuildServerError, BuildServerUnreachable, LaunchRefused
from hpcbinder.images.store import IMAGE, ImageMeta, ImageStore
from hpcbinder.seams.proc import CommandResult

JOB = "4242"
Answer = tuple[int, str, str]  # exit status, stdout, stderr


def pending(reason: str, partition: str = "interactive") -> Answer:
    return 0, f"PENDING n/a {partition} {reason}\n", ""


RUNNING = (0, "RUNNING vm interactive None\n", "")
GONE = (1, "", "slurm_load_jobs error: Invalid job id specified\n")
DOWN = (1, "", "squeue: error: Unable to contact slurm controller (connect failure)\n")


@dataclass(frozen=True)
class Submission:
    """One sbatch as the fake saw it: as whom, the script, its environment."""

    user: str | None
    script: str
    env: dict[str, str]


def squeue_line(job_id: str, owner: str, spaced: str) -> str:
    """The line hpcbinder's squeue prints for ``owner``'s job ``job_id``
    in ``spaced``: "STATE NODE PARTITION REASON" (a reason may have spaces)."""
    state, node, partition, reason = [*spaced.split(" ", 3), "", "", ""][:4]
    return f"{job_id}|{pwd.getpwnam(owner).pw_uid}|{state}|{node}|{partition}|{reason}\n"


class ScriptedSlurm:
    """A :class:`hpcbinder.seams.proc.CommandRunner`: each ``squeue --jobs``
    answers for job :data:`JOB` (the submitter's) with the next of ``states`` (the last
    repeats) until ``scancel``, then the job is gone; sbatch submits job
    :data:`JOB`; other commands have fixed answers. Every argv is recorded, and every submission."""

    def __init__(
        self,
        states: list[Answer],
        *,
        start: str = "N/A",
        pending: str = "4240\n4242\n4243\n",
        private_data: str = "none",
    ) -> None:
        self.states = states
        self.owner: str | None = None  # the submitter; else whoever asks
        self.start = start
        self.pending = pending
        self.private_data = private_data
        self.calls: list[tuple[str, ...]] = []
        self.submissions: list[Submission] = []
        self.cancelled = False

    def run(
        self,
        argv: Sequence[str],
        *,
        user: str | None = None,
        input_text: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> CommandResult:
        argv = tuple(argv)
        self.calls.append(argv)
        if argv[0] == "sbatch":
            self.submissions.append(Submission(user, input_text or "", dict(env or {})))
            self.owner = user or getpass.getuser()
            return CommandResult(argv, 0, f"{JOB}\n", "")
        if argv[0] == "scontrol":
            return CommandResult(argv, 0, f"PrivateData             = {self.private_data}\n", "")
        if argv[0] == "scancel":
            self.cancelled = True
            return CommandResult(argv, 0, "", "")
        if argv[0].endswith("hpcbinder-server-log"):
            return CommandResult(argv, 0, "FATAL: out of memory\n", "")
        if "--start" in argv:
            return CommandResult(argv, 0, self.start + "\n", "")
        if "PENDING" in argv:
            return CommandResult(argv, 0, self.pending, "")
        if self.cancelled:
            return CommandResult(argv, *GONE)
        code, out, err = self.states[0] if len(self.states) == 1 else self.states.pop(0)
        owner = self.owner or user or getpass.getuser()
        return CommandResult(
            argv, code, "".join(squeue_line(JOB, owner, line) for line in out.splitlines()), err
        )

    def squeue_queries(self) -> int:
        """How many times the job's state was asked."""
        return sum(1 for call in self.calls if call[:2] == ("squeue", "-h") and "--jobs" in call)


class Replies:
    """Answers each command with the next of ``replies``, recording each
    call as (argv, user, input)."""

    def __init__(self, *replies: Answer) -> None:
        self.replies = list(replies)
        self.calls: list[tuple[tuple[str, ...], str | None, str | None]] = []

    def run(
        self,
        argv: Sequence[str],
        *,
        user: str | None = None,
        input_text: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> CommandResult:
        self.calls.append((tuple(argv), user, input_text))
        return CommandResult(tuple(argv), *self.replies.pop(0))


class ByProgram:
    """Answers each command from a table keyed by its program (``argv[0]``),
    the same answer every time, recording each argv."""

    def __init__(self, answers: Mapping[str, Answer]) -> None:
        self.answers = dict(answers)
        self.calls: list[list[str]] = []

    def run(
        self,
        argv: Sequence[str],
        *,
        user: str | None = None,
        input_text: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> CommandResult:
        self.calls.append(list(argv))
        return CommandResult(tuple(argv), *self.answers[argv[0]])


def publish_fake_image(store: ImageStore, key: str) -> None:
    """Publish a few bytes as ``key``'s image, the way a build would."""
    lock = store.try_lock(key)
    assert lock is not None
    with lock:
        staging = store.new_staging(key)
        (staging / IMAGE).write_bytes(b"sif")
        store.publish(lock, staging, ImageMeta(key=key))


class BuildServerUses:
    """The build server's ``POST /used`` (:class:`hpcbinder.hub.spawner.UseReports`)
    over a real store: the store's rule (``may_launch``), then the use
    recorded; every report kept as (key, for_user). ``reachable=False``: a
    build server that is down."""

    def __init__(
        self, store: ImageStore, *, reachable: bool = True, failure: str | None = None
    ) -> None:
        self.store = store
        self.reachable = reachable
        self.failure = failure  # the build server's own error answer
        self.reports: list[tuple[str, str | None]] = []

    def record_use(self, key: str, for_user: str | None = None) -> None:
        self.reports.append((key, for_user))
        if self.failure is not None:
            raise BuildServerError(self.failure)
        if not self.reachable:
            raise BuildServerUnreachable(
                "cannot reach the build server at http://127.0.0.1:9 "
                "(site file: build.server_url): [Errno 111] Connection refused"
            )
        user = for_user or ""
        if not self.store.may_launch(key, user):
            raise LaunchRefused(f"image: no image {key} that {user} may launch")
        self.store.record_use(key, user)
