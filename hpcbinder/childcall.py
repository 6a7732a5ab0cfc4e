"""Work whose time a repository chooses, in a child process with a deadline.

Reading a repository's configuration (TOML, YAML and JSON parsers; spython,
whose patterns are Python's ``re``) and rendering its definition take as
long as the files make them. Our own patterns are linear
(:mod:`hpcbinder.textpatterns`) and the files capped, but the build server
is one process serving everyone: there this work runs in a child, so the
server's event loop keeps answering (``/health``, other builds' events)
whatever the work does, and the child is killed at the deadline whatever a
library does.

Children come from a fork server (started once, before any thread of the
caller could hold a lock a forked child would inherit), with the package
already imported, so a call costs a fork, not an interpreter start.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from hpcbinder.errors import UserError

T = TypeVar("T")

_CONTEXT = multiprocessing.get_context("forkserver")
# The caller's main script too: else every child would import it anew.
_CONTEXT.set_forkserver_preload(["__main__", "hpcbinder.render.pipeline"])


class DeadlineError(UserError):
    """The work did not end in time: a repository's, so the requester's error."""


def _run(connection: Connection, function: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        outcome: tuple[Any, ...] = ("returned", function(*args))
    except Exception as exc:
        # An exception is sent as class, args and attributes and rebuilt
        # without calling its __init__ (pickle would, with args that do not
        # fit a custom one such as RepoConfigError's).
        outcome = ("raised", type(exc), exc.args, vars(exc))
    try:
        connection.send(outcome)
    except Exception as exc:  # an unpicklable result or attribute
        connection.send(("raised", RuntimeError, (f"cannot send the result: {exc}",), {}))
    connection.close()


def call(function: Callable[..., T], *args: Any, deadline: float, what: str) -> T:
    """``function(*args)`` (a module-level function; arguments and result
    picklable) in a child process: its result, or what it raised; a
    :class:`DeadlineError` naming ``what`` if it takes over ``deadline``
    seconds (the child is killed)."""
    receive, send = _CONTEXT.Pipe(duplex=False)
    child = _CONTEXT.Process(target=_run, args=(send, function, args), daemon=True)
    child.start()
    send.close()
    try:
        if not receive.poll(deadline):
            raise DeadlineError(f"{what} took longer than {deadline:.0f} s; it was stopped")
        outcome = receive.recv()
        child.join(5)
    except EOFError:
        child.join(5)
        raise RuntimeError(f"{what}: the process doing it ended ({child.exitcode})") from None
    finally:
        receive.close()
        if child.is_alive():
            child.kill()
            child.join()
    if outcome[0] == "returned":
        result: T = outcome[1]
        return result
    _, kind, exc_args, attributes = outcome
    exc = kind.__new__(kind, *exc_args)
    exc.__dict__.update(attributes)
    raise exc
