"""Builds as Slurm jobs on the site's build partition.

The job runs the build's commands (slurm/build.sbatch.j2) as the build
account and writes its output to a file in the staging folder (no container
sees it), which is followed while the
job runs. Past the time limit the job is cancelled; Slurm's own --time is
set a minute later as a second guard.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from collections.abc import Callable

from hpcbinder.config import Site
from hpcbinder.growingfile import GrowingFile
from hpcbinder.images.backends import STEP_MARKER, BuildCommands, BuildFailed, OnStart
from hpcbinder.images.backends.local import TAIL_LINES
from hpcbinder.render import templating
from hpcbinder.seams import proc
from hpcbinder.seams.slurm import SlurmCLI, SlurmError, SubmitOptions

POLL_SECONDS = 0.5


def _slurm_minutes(seconds: float) -> str:
    minutes = math.ceil(seconds / 60) + 1
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


class SlurmBackend:
    name = "slurm"

    def __init__(self, site: Site, slurm: SlurmCLI | None = None) -> None:
        """``slurm``: by default this host's own commands, not the site's
        cluster client: the build host submits its build jobs itself, as
        the build account, and follows their log on the file system it
        shares with the build partition; ``cluster.login`` is the hub's way
        to Slurm, with the service account's key."""
        self.site = site
        self.slurm = slurm or SlurmCLI(proc.LocalRunner())

    def stop_leftover(self, started: str) -> None:
        """Cancel a dead build's job (``slurm-job ID``) as the build account."""
        kind, _, job_id = started.partition(" ")
        if kind == "slurm-job":
            with contextlib.suppress(SlurmError, ValueError, proc.CommandError):
                self.slurm.cancel(job_id, user=self.site.build.account)

    def run(self, build: BuildCommands, on_line: Callable[[str], None], on_start: OnStart) -> None:
        settings = self.site.build
        script = templating.render_text(
            "slurm", "build.sbatch.j2", steps=build.steps, cwd=str(build.cwd), marker=STEP_MARKER
        )
        options = SubmitOptions(
            partition=settings.partition,
            time=_slurm_minutes(build.timeout),
            cpus=settings.cpus,
            mem=settings.mem,
            job_name="hpcbinder-build",
            output=str(build.output),
            # Slurm shows every job's folder to all; the script enters cwd
            # (a checkout, named by a hash of its URL) where no one sees it.
            chdir=str(build.output.parent),
        )
        try:
            job_id = self.slurm.submit(script, options, user=settings.account)
        except SlurmError as exc:
            raise BuildFailed("submit build job", str(exc), []) from exc
        on_start(f"slurm-job {job_id}")
        on_line(f"build job {job_id} submitted to partition {settings.partition}")
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        step = "build job"
        log = GrowingFile(build.output)
        deadline = time.monotonic() + build.timeout

        def follow() -> None:
            nonlocal step
            for text in log.new_lines():
                if text.startswith(STEP_MARKER):
                    step = text.removeprefix(STEP_MARKER)
                tail.append(text)
                on_line(text)

        while True:
            follow()
            info = self.slurm.job(job_id)
            if info is None or info.finished:
                follow()
                break
            if time.monotonic() > deadline:
                self.slurm.cancel(job_id, user=settings.account)
                raise BuildFailed(
                    step, f"the build ran past its time limit; job {job_id} cancelled", list(tail)
                )
            time.sleep(POLL_SECONDS)
        if info is None:
            raise BuildFailed(step, f"job {job_id} vanished from Slurm", list(tail))
        if info.state != "COMPLETED" or info.exit_code != 0:
            raise BuildFailed(
                step, f"job {job_id} ended {info.state} (exit {info.exit_code})", list(tail)
            )
