"""Builds on a build host reached over SSH (paramiko).

SSH runs a command string through the remote user's shell, so this is the
one place a build's argv lists become shell text: every word goes through
``shlex.quote``. Each step runs under ``timeout`` on the remote side too, so
a dropped connection cannot leave a build running past its limit.
"""

from __future__ import annotations

import math
import shlex
import time
from collections import deque
from collections.abc import Callable

import paramiko

from hpcbinder.boundedlines import capped_lines
from hpcbinder.config import Site
from hpcbinder.images.backends import STEP_MARKER, BuildCommands, BuildFailed, OnStart
from hpcbinder.images.backends.local import TAIL_LINES
from hpcbinder.seams.remote import ssh_client


class SSHBackend:
    name = "ssh"

    def __init__(self, site: Site) -> None:
        if site.build.ssh is None:
            raise ValueError("build.ssh is not configured")
        self.host = site.build.ssh

    def stop_leftover(self, started: str) -> None:
        """Nothing to stop: A build's remote commands end with its SSH connection."""

    def run(self, build: BuildCommands, on_line: Callable[[str], None], on_start: OnStart) -> None:
        # Remote steps end by themselves (timeout on the build host): nothing to record.
        del on_start
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        deadline = time.monotonic() + build.timeout
        try:
            client = ssh_client(self.host, self.host.user)
        except (OSError, paramiko.SSHException) as exc:
            raise BuildFailed(
                "connect to build host", f"{self.host.user}@{self.host.host}: {exc}", []
            ) from exc
        with client:
            for step in build.steps:
                remaining = math.floor(deadline - time.monotonic())
                if remaining <= 0:
                    raise BuildFailed(step.name, "the build ran past its time limit", list(tail))
                tail.append(f"{STEP_MARKER}{step.name}")
                on_line(tail[-1])
                command = (
                    shlex.join(["cd", str(build.cwd)])
                    + " && "
                    + shlex.join(["timeout", "--signal=KILL", str(remaining), *step.argv])
                    + " 2>&1"
                )
                _, stdout, _ = client.exec_command(command, timeout=remaining + 30)
                for text in capped_lines(stdout.readline):
                    tail.append(text)
                    on_line(text)
                status = stdout.channel.recv_exit_status()
                if status in (124, 137) and time.monotonic() >= deadline - 2:
                    raise BuildFailed(step.name, "the build ran past its time limit", list(tail))
                if status != 0:
                    raise BuildFailed(step.name, f"exited with status {status}", list(tail))
