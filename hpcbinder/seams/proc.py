"""The one place hpcbinder starts programs.

Every external program (Slurm's commands, apptainer, git, munge) is run from
an argv list through :func:`run`, never through a shell, so no value from a
user, a URL or a repository can become a command. Running as another account
(the build account, a researcher) goes through ``sudo -n -u USER --``: the
same mechanism batchspawner's ``exec_prefix`` uses, and sites already
configure sudoers for it. Such a command never inherits this process's
environment: it gets exactly the variables its caller names
(:func:`account_env`).
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

from hpcbinder.boundedlines import capped_lines

#: How much of a failing program's output an error message carries.
ERROR_TAIL_CHARS = 2000

#: The only PATH a command run as another account starts with (sudo then
#: sets the target's own ``secure_path``): never this host's PATH.
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def passed_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """``env`` as a command run as another account gets it, each name and
    value checked: a name a shell, sudo and sbatch read as one name (never
    PATH, which :func:`account_env` fixes), a value without NUL.

    The one place that decides what crosses to another account (over sudo
    here, over SSH in :mod:`hpcbinder.seams.remote`): a caller passes each
    variable by name, with the value it chose (a server's own hub token),
    so the hub's and the Binder service's own secrets cannot travel, whatever
    their names. sudo keeps only the names the sudoers rule lists
    (configs/sudoers.hpcbinder, exact names), of this environment.
    """
    passed = dict(env or {})
    for name, value in passed.items():
        # One word of ASCII letters, digits and _, as a shell, sudo and
        # sbatch's --export read a name.
        if not (name.isascii() and name.isidentifier()) or name == "PATH":
            raise ValueError(f"{name!r} cannot be passed to another account")
        if "\0" in value or "\n" in value:
            raise ValueError(f"the value of {name!r} holds a NUL byte or a line break")
    return passed


def account_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """The whole environment of a command run as another account:
    :func:`passed_env` on a fixed PATH (to find ``sudo``), nothing of this
    process's own environment."""
    return {"PATH": SAFE_PATH, **passed_env(env)}


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
    non-zero exit means (see :func:`check`). For this account ``env`` adds
    to this process's environment; another account gets exactly ``env``
    (:func:`account_env`), nothing of this process's.
    """
    full, child_env = _command(argv, user, env)
    try:
        done = subprocess.run(
            full,
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            env=child_env,
            check=False,
        )
    except FileNotFoundError as exc:
        raise CommandError(full, "is not installed (not found on PATH)") from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(full, f"did not finish within {timeout:g} s") from exc
    return CommandResult(tuple(full), done.returncode, done.stdout, done.stderr)


def _command(
    argv: Sequence[str], user: str | None, env: Mapping[str, str] | None
) -> tuple[list[str], dict[str, str] | None]:
    """The argv and the whole environment that run ``argv`` as ``user``
    with ``env`` (None: this process's own environment)."""
    if user is not None and user != current_user():
        child_env = account_env(env)
        return sudo_argv(argv, user, sorted(set(child_env) - {"PATH"})), child_env
    return list(argv), None if env is None else {**os.environ, **env}


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
    over after this process dies can end what it started). Another account
    gets no environment of this process (:func:`account_env`).
    """
    full, child_env = _command(argv, user, None)
    try:
        child = subprocess.Popen(
            full,
            env=child_env,
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
        if child.stdout is not None:  # lines capped: a build prints what it likes
            for line in capped_lines(child.stdout.readline):
                on_line(line)
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
