"""A researcher's private repository through the Binder service: her own
Slurm job builds it (:mod:`hpcbinder.images.privatejob`); the service
submits it as her, follows its Slurm state and reads its outcome.

The service never fetches, reads her store or her log: it says where her
log is, and relays the job's state as BinderHub's phases, each once and in
the same order whatever Slurm's timing (``waiting`` when submitted,
``building`` once it runs or has ended, then the outcome), so that the
events of a request that fails (not found, no access) are the same
whether the repository exists or not. A job runs with an environment of
exactly the variables named here (none): the service's own never reaches
it (:func:`hpcbinder.seams.proc.account_env`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from hpcbinder.config import Site
from hpcbinder.errors import UserError
from hpcbinder.images import private, privatejob
from hpcbinder.images.privatejob import PrivateJobError, PrivateJobRequest, PrivateOutcome
from hpcbinder.seams import proc
from hpcbinder.seams.cluster import cluster_runner, cluster_slurm
from hpcbinder.seams.slurm import JOB_ID, TERMINAL_STATES, SlurmCLI, SlurmError, SubmitOptions
from hpcbinder.web.events import Event

#: Seconds between the questions about her job's state.
POLL_SECONDS = 0.5
#: Her job's state and comment, asked as her (so also where PrivateData
#: hides others' jobs), in every state Slurm still remembers.
SQUEUE_OWN = ("squeue", "-h", "--states=all", "-o", "%T|%k", "-j")


class PrivateBuildFailed(UserError):
    """Her job did not build (or submit) what was asked; one line for her
    page (the job's own, or why there is none)."""


@dataclass(frozen=True)
class PrivateBuilt:
    """An image in her own store (its key, the commit it was built from,
    whether the repository is read from the image): the spawner's job
    finds it there, as her (:mod:`hpcbinder.jobs.privateserver`)."""

    key: str
    commit: str
    from_image: bool
    private: ClassVar[bool] = True


def _slurm_minutes(seconds: float) -> str:
    minutes = math.ceil(seconds / 60)
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


class PrivateBuilds:
    """Her private builds and batch submissions, as jobs of hers."""

    def __init__(
        self,
        site: Site,
        site_file: Path | None,
        slurm: SlurmCLI | None = None,
        python: str = sys.executable,
        runner: proc.CommandRunner | None = None,
    ) -> None:
        self.site = site
        self.site_file = site_file
        self.slurm = cluster_slurm(site) if slurm is None else slurm
        self.runner = cluster_runner(site) if runner is None else runner
        self.python = python
        #: Her jobs in flight, by researcher: at most build.max_builds_per_user
        #: (as the build server's own), so that no one fills the build
        #: partition with jobs by asking for many repositories they cannot read.
        self._running: Counter[str] = Counter()
        #: Her build jobs in flight, by (researcher, spec): the launch page's cancel.
        self._builds: dict[tuple[str, str], str] = {}
        #: The nonce of each job submitted and not yet read: an outcome counts
        #: only for its job's request, once (privatejob's docstring).
        self._nonces: dict[str, str] = {}

    async def cancel(self, user: str, spec: str) -> bool:
        """Cancel ``user``'s build job of ``spec`` (as her), if one runs."""
        job = self._builds.get((user, spec))
        if job is None:
            return False
        try:
            await asyncio.to_thread(self.slurm.cancel, job, user=user)
        except (SlurmError, proc.CommandError):
            return False  # ended meanwhile: its own outcome stands
        return True

    def _state(self, job: str, user: str) -> tuple[str, str] | None:
        """Her job's state and comment; None once Slurm has forgotten it
        (or never had it); :class:`SlurmError` when Slurm does not answer."""
        if not JOB_ID.fullmatch(job):
            return None
        try:
            result = self.runner.run([*SQUEUE_OWN, job], user=user, timeout=30)
        except proc.CommandError as exc:
            raise SlurmError(str(exc)) from exc
        if "Invalid job id" in result.stderr + result.stdout:
            return None
        if not result.ok:
            raise SlurmError(f"squeue did not answer: {(result.stderr or result.stdout).strip()}")
        state, sep, comment = result.stdout.strip().partition("|")
        return (state.strip(), comment.strip()) if sep else None

    def request(self, kind: str, spec: str, **batch: object) -> PrivateJobRequest:
        return PrivateJobRequest(
            kind=kind,
            spec=spec,
            site_file=str(self.site_file or ""),
            reader=proc.current_user(),
            nonce=secrets.token_hex(16),
            **batch,  # type: ignore[arg-type]
        )

    async def run(
        self,
        request: PrivateJobRequest,
        user: str,
        emit: Callable[[Event], Awaitable[None]],
    ) -> PrivateOutcome:
        """Her job for ``request``, followed to its end; its outcome, or
        :class:`PrivateBuildFailed` with the one line she is told."""
        limit = self.site.build.max_builds_per_user
        if self._running[user] >= limit:
            raise PrivateBuildFailed(
                f"{user} has {limit} builds in progress, this site's limit "
                "(site file: build.max_builds_per_user); try again when one ends"
            )
        self._running[user] += 1
        try:
            return await self._run(request, user, emit)
        finally:
            self._running[user] -= 1

    async def _run(
        self,
        request: PrivateJobRequest,
        user: str,
        emit: Callable[[Event], Awaitable[None]],
    ) -> PrivateOutcome:
        build = self.site.build
        partition = build.private_partition or build.partition
        limit = build.timeout_minutes * 60 + self.site.launch.max_queue_minutes * 60
        options = SubmitOptions(
            partition=partition,
            time=_slurm_minutes(build.timeout_minutes * 60 + 120),
            cpus=build.cpus,
            mem=build.mem,
            job_name="hpcbinder-build",
            output="/dev/null",  # her job logs into her store itself
            chdir="/",
        )
        script = privatejob.render_script(self.python, request)
        try:
            job = await asyncio.to_thread(self.slurm.submit, script, options, user=user)
        except (SlurmError, proc.CommandError) as exc:  # refused, or sbatch timed out
            raise PrivateBuildFailed(f"cannot submit your build job: {exc}") from exc
        if request.kind == "build":
            self._builds[(user, request.spec)] = job
        self._nonces[job] = request.nonce
        try:
            return await self._follow(job, partition, limit, user, emit)
        finally:
            self._nonces.pop(job, None)
            if self._builds.get((user, request.spec)) == job:
                del self._builds[(user, request.spec)]

    async def _follow(
        self,
        job: str,
        partition: str,
        limit: float,
        user: str,
        emit: Callable[[Event], Awaitable[None]],
    ) -> PrivateOutcome:
        log = privatejob.log_path(private.private_root(self.site, user), job)
        await emit(
            Event(
                "waiting",
                f"Fetching with your own access: your Slurm job {job} builds it as {user} "
                f"(partition {partition})\n",
            )
        )
        said_building = False
        submitted = time.monotonic()
        deadline = submitted + limit
        while True:
            try:
                seen = await asyncio.to_thread(self._state, job, user)
            except SlurmError:
                seen = ("", "")  # asked again next round
            if seen is None and not said_building and time.monotonic() < submitted + 10:
                seen = ("", "")  # not listed yet, just after sbatch
            if seen is None:
                raise PrivateBuildFailed(f"your build job {job} vanished from Slurm; log: {log}")
            state, comment = seen
            if not said_building and state and state != "PENDING":
                said_building = True
                await emit(Event("building", f"Building as {user}; your build's log: {log}\n"))
            if state in TERMINAL_STATES:
                break
            if time.monotonic() > deadline:
                with contextlib.suppress(SlurmError, proc.CommandError):  # ended meanwhile
                    await asyncio.to_thread(self.slurm.cancel, job, user=user)
                raise PrivateBuildFailed(f"your build job {job} ran too long and was cancelled")
            await asyncio.sleep(POLL_SECONDS)
        if not comment.startswith("MUNGE:"):  # cancelled, killed, out of time
            raise PrivateBuildFailed(
                f"your build job {job} ended {state} before it said how it went; log: {log}"
            )
        try:
            nonce = self._nonces.pop(job, "")  # each (job, nonce) read once
            outcome = await asyncio.to_thread(privatejob.read_outcome, comment, user, job, nonce)
        except PrivateJobError as exc:
            raise PrivateBuildFailed(
                f"your build job {job} ended {state}: {exc}; log: {log}"
            ) from None
        if outcome.error:
            raise PrivateBuildFailed(outcome.error)
        return outcome
