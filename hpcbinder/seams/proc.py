"""The one place hpcbinder starts programs.

Every external program (Slurm's commands, apptainer, git, munge) is run from
an argv list through :func:`run`, never through a shell, so no value from a
user, a URL or a repository can become a command. Running as another account
(the build account, a researcher) goes through ``sudo -n -u USER --``: the
same mechanism batchspawner's ``exec_prefix`` uses, and sites already
configure sudoers for it.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from hpcbinder import textpatterns

#: How much of a failing program's output an error message carries.
ERROR_TAIL_CHARS = 2000

#: What may travel to a command run as another account, or on another host:
#: the hub's own variables (its token, the server's settings), never this
#: host's PATH or library paths. The site's sudoers rule keeps exactly
#: these (``env_keep``, configs/sudoers.hpcbinder), without ``SETENV``.
FORWARDED_ENV = textpatterns.compile(r"(?:JUPYTERHUB_|JPY_|HPCBINDER_)\w*|LANG|LC_\w+")


def forwarded_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """The part of ``env`` that :data:`FORWARDED_ENV` lets travel."""
    return {name: value for name, value in (env or {}).items() if FORWARDED_ENV.fullmatch(name)}


@dataclass(frozen=True)
class CommandResult:
    """What a finished program left: its exit code and both output streams."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class CommandError(RuntimeError):
    """A program could not be started, timed out, or exited non-zero."""

    def __init__(self, argv: Sequence[str], reason: str, output: str = "") -> None:
        self.argv = tuple(argv)
        self.reason = reason
        self.output = output[-ERROR_TAIL_CHARS:]
        detail = f": {self.output.strip()}" if self.output.strip() else ""
        super().__init__(f"{self.argv[0]} {reason}{detail}")


class CommandTimeout(CommandError):
    """A program ran past its time limit and was killed."""


def current_user() -> str:
    """The account this process runs as."""
    return getpass.getuser()


def as_user(argv: Sequence[str], user: str | None, keep_env: Sequence[str] = ()) -> list[str]:
    """argv prefixed so that it runs as ``user`` (unchanged for ourselves).

    ``keep_env`` names the variables sudo passes on (their values stay in
    the environment, never in argv): names :data:`FORWARDED_ENV` allows,
    which the site's sudoers rule keeps.
    """
    if user is None or user == current_user():
        return list(argv)
    return sudo_argv(argv, user, keep_env)


def sudo_argv(argv: Sequence[str], user: str, keep_env: Sequence[str] = ()) -> list[str]:
    """argv through ``sudo -n`` as ``user``: never a password prompt, only
    what the site's sudoers rules allow (here or on a login node)."""
    keep = [f"--preserve-env={','.join(keep_env)}"] if keep_env else []
    return ["sudo", "-n", *keep, "-u", user, "--", *argv]


def run(
    argv: Sequence[str],
    *,
    user: str | None = None,
    input_text: str | None = None,
    timeout: float = 60.0,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> CommandResult:
    """Run ``argv`` (as ``user``) and return its result, whatever its exit code.

    Raises :class:`CommandError` only when the program cannot be started or
    does not finish within ``timeout`` seconds; callers decide what a
    non-zero exit means (see :func:`check`). ``env`` adds to (never
    replaces) this process's environment; to another account, only its
    :func:`forwarded_env` part travels.
    """
    if user is not None and user != current_user():
        env = forwarded_env(env)
    full = as_user(argv, user, sorted(env or {}))
    try:
        done = subprocess.run(
            full,
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            env=None if env is None else {**os.environ, **env},
            check=False,
        )
    except FileNotFoundError as exc:
        raise CommandError(full, "is not installed (not found on PATH)") from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(full, f"did not finish within {timeout:g} s") from exc
    return CommandResult(tuple(full), done.returncode, done.stdout, done.stderr)


def check(result: CommandResult) -> CommandResult:
    """``result`` itself if it succeeded, else a :class:`CommandError`."""
    if not result.ok:
        raise CommandError(
            result.argv, f"exited with status {result.returncode}", result.stderr or result.stdout
        )
    return result


class CommandRunner(Protocol):
    """Where a command runs: this host (:class:`LocalRunner`) or a Slurm
    login node over SSH (:class:`hpcbinder.seams.remote.LoginNodeCommands`).

    ``user`` None means this process's own account. ``env`` values reach
    the command's environment, never its argv.
    """

    def run(
        self,
        argv: Sequence[str],
        *,
        user: str | None = None,
        input_text: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> CommandResult: ...


class LocalRunner:
    """Commands on this host, as another account through ``sudo -n -u``."""

    def run(
        self,
        argv: Sequence[str],
        *,
        user: str | None = None,
        input_text: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> CommandResult:
        return run(argv, user=user, input_text=input_text, env=env, timeout=timeout)


def stream(
    argv: Sequence[str],
    *,
    on_line: Callable[[str], None],
    user: str | None = None,
    timeout: float,
    cwd: str | os.PathLike[str] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> int:
    """Run ``argv`` (as ``user``), passing each output line (stdout and
    stderr merged) to ``on_line`` as it comes; return the exit status.

    The program runs in its own session; past ``timeout`` seconds the whole
    session is killed and :class:`CommandError` raised, so no build outlives
    its limit. ``on_start`` learns the session id (so that whoever takes
    over after this process dies can end what it started).
    """
    full = as_user(argv, user)
    try:
        child = subprocess.Popen(
            full,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            cwd=cwd,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise CommandError(full, "is not installed (not found on PATH)") from exc
    if on_start is not None:
        on_start(child.pid)
    timed_out = threading.Event()

    def expire() -> None:
        timed_out.set()
        _kill_session(child)

    timer = threading.Timer(timeout, expire)
    timer.start()
    try:
        for line in child.stdout or ():
            on_line(line.rstrip("\n"))
        status = child.wait()
    finally:
        timer.cancel()
        if child.poll() is None:
            _kill_session(child)
            child.wait()
    if timed_out.is_set():
        raise CommandTimeout(full, f"did not finish within {timeout:g} s")
    return status


def _kill_session(child: subprocess.Popen[str]) -> None:
    kill_session(child.pid)


def kill_session(session: int) -> None:
    """SIGKILL every process of ``session`` (a process group id), if any remain."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(session, signal.SIGKILL)
