"""A researcher's batch jobs: submitting a checked run, and what ``hpcbinder
jobs`` shows of them afterwards.

Runs are found through the user's job index (``~/.hpcbinder/jobs/JOB.json``,
written at submission and again by the job itself, so a script submitted by
hand is listed too). Their state comes from Slurm while it remembers the
job, then from the provenance records the tasks wrote: a task without a
``completed`` record is never shown as complete.
"""

from __future__ import annotations

import json
import os
import pwd
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcbinder.errors import UserError
from hpcbinder.jobs.batch import JOB_INDEX, BatchRun, expand_array
from hpcbinder.seams import proc
from hpcbinder.seams.slurm import JOB_ID, JobInfo, SlurmCLI, SubmitOptions

#: Exit status of ``hpcbinder sbatch --wait`` for jobs Slurm ended.
EXIT_FOR_STATE = {"TIMEOUT": 124, "CANCELLED": 130, "OUT_OF_MEMORY": 137}
INCOMPLETE = "INCOMPLETE"


class UnknownJob(UserError):
    """A job id that is not one of the user's hpcbinder runs."""


def _home(user: str) -> Path:
    return Path(pwd.getpwnam(user).pw_dir)


def _slurm_user(user: str) -> str | None:
    return None if user == proc.current_user() else user


def submit_run(run: BatchRun, script: str, slurm: SlurmCLI) -> str:
    """Submit ``script`` as the run's user; the job id. The job makes its run
    folder, keeps its script there and records itself in the user's job
    index: nothing but the user's own job writes into their home."""
    return slurm.submit(script, SubmitOptions(), user=_slurm_user(run.user))


def exit_status(info: JobInfo) -> int:
    """The exit status a finished job stands for."""
    if info.state == "COMPLETED":
        return 0
    if info.state == "FAILED":
        return info.exit_code or 1
    return EXIT_FOR_STATE.get(info.state, 1)


@dataclass(frozen=True)
class TaskOutput:
    """One task's folder and what its provenance record says."""

    folder: Path
    provenance: dict[str, Any] | None

    @property
    def complete(self) -> bool:
        return (
            bool(self.provenance and self.provenance.get("complete"))
            and not (self.folder / INCOMPLETE).exists()
        )

    def describe(self, slurm_state: str | None) -> str:
        if self.complete:
            return "complete"
        state = (self.provenance or {}).get("state", "not started")
        if state == "running" and slurm_state and slurm_state != "RUNNING":
            state = f"ended by Slurm ({slurm_state})"
        code = (self.provenance or {}).get("exit_code")
        return f"INCOMPLETE: {state}" + (f" (exit {code})" if code is not None else "")


@dataclass(frozen=True)
class BatchJob:
    """One of the user's runs, from the job index."""

    job_id: str
    record: dict[str, Any]

    @property
    def run_dir(self) -> Path:
        return Path(self.record["run_dir"])

    def tasks(self) -> list[TaskOutput]:
        folder = self.run_dir / f"job-{self.job_id}"
        outputs = []
        for task in sorted(folder.glob("task-*"), key=lambda p: int(p.name.split("-")[1])):
            try:
                provenance = json.loads((task / "provenance.json").read_text())
            except (OSError, ValueError):
                provenance = None
            outputs.append(TaskOutput(task, provenance))
        return outputs

    def task_ids(self) -> list[str]:
        """The Slurm ids to wait for: each array task, or the job."""
        array = self.record.get("array")
        return [f"{self.job_id}_{i}" for i in expand_array(array)] if array else [self.job_id]

    def logs(self) -> list[Path]:
        single = self.run_dir / f"slurm-{self.job_id}.out"
        tasks = self.run_dir.glob(f"slurm-{self.job_id}_*.out")
        return [single] if single.exists() else sorted(tasks, key=lambda p: p.stat().st_mtime)


class BatchJobs:
    """The hpcbinder batch jobs of one user."""

    def __init__(self, user: str, slurm: SlurmCLI) -> None:
        """``slurm``: the site's cluster client (:func:`hpcbinder.seams.cluster.cluster_slurm`)."""
        self.user = user
        self.slurm = slurm
        self.index = _home(user) / JOB_INDEX

    def all(self) -> list[BatchJob]:
        jobs = []
        for path in self.index.glob("*.json"):
            try:
                data = json.loads(path.read_text())
                jobs.append(BatchJob(str(data["job_id"]), dict(data["run"])))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return sorted(jobs, key=lambda job: int(job.job_id))

    def remember(self, job_id: str, run: BatchRun) -> None:
        """Record a job this process (the user) just submitted, before the
        job starts and records itself."""
        if self.user != proc.current_user():
            raise UserError(f"only {self.user} may write {self.user}'s job index")
        self.index.mkdir(parents=True, exist_ok=True, mode=0o700)
        entry = self.index / f"{job_id}.json"
        partial = entry.with_name(f".{job_id}.json.{os.getpid()}")
        partial.write_text(json.dumps({"job_id": job_id, "run": run.record()}, sort_keys=True))
        partial.replace(entry)

    def get(self, job_id: str) -> BatchJob:
        if JOB_ID.fullmatch(job_id):
            for job in self.all():
                if job.job_id == job_id:
                    return job
        raise UnknownJob(f"{job_id} is not one of {self.user}'s hpcbinder jobs (see: jobs ls)")

    def slurm_state(self, job: BatchJob) -> str | None:
        """Slurm's state of the job (of its first task for an array), while it remembers."""
        info = self.slurm.job(job.job_id)
        return info.state if info else None

    def state(self, job: BatchJob) -> str:
        live = self.slurm_state(job)
        if live is not None:
            return live
        tasks = job.tasks()
        if not tasks:
            return "UNKNOWN"
        if all(task.complete for task in tasks):
            return "COMPLETED"
        return INCOMPLETE

    def cancel(self, job: BatchJob) -> None:
        self.slurm.cancel(job.job_id, user=_slurm_user(self.user))

    def follow(
        self,
        job: BatchJob,
        write: Callable[[str], None],
        poll: float = 0.5,
        timeout: float = 7 * 24 * 3600,
    ) -> list[JobInfo]:
        """Stream the job's logs through ``write`` until every task ended;
        the tasks' final records."""
        offsets: dict[Path, int] = {}
        deadline = time.monotonic() + timeout
        waiting = job.task_ids()
        finished: dict[str, JobInfo] = {}
        while True:
            for line in _new_lines(job.logs(), offsets):
                write(line)
            for task_id in waiting:
                if task_id not in finished:
                    info = self.slurm.job(task_id)
                    if info is None:
                        raise UserError(f"Slurm no longer knows job {task_id}")
                    if info.finished:
                        finished[task_id] = info
            if len(finished) == len(waiting):
                for line in _new_lines(job.logs(), offsets):
                    write(line)
                return [finished[task_id] for task_id in waiting]
            if time.monotonic() > deadline:
                raise UserError(f"job {job.job_id} still running after {timeout:g} s")
            time.sleep(poll)


def _new_lines(paths: list[Path], offsets: dict[Path, int]) -> Iterator[str]:
    for path in paths:
        try:
            with path.open("rb") as handle:
                handle.seek(offsets.get(path, 0))
                data = handle.read()
        except OSError:
            continue
        complete = data.rsplit(b"\n", 1)[0] + b"\n" if b"\n" in data else b""
        offsets[path] = offsets.get(path, 0) + len(complete)
        prefix = f"[{path.stem.split('_', 1)[1]}] " if "_" in path.stem else ""
        for line in complete.decode(errors="replace").splitlines():
            yield prefix + line
