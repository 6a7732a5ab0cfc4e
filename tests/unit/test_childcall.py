"""Repository-dependent work runs in a child with a deadline: the caller's
process keeps running meanwhile (even while the child holds its own
interpreter lock in C, as a backtracking ``re`` did), a child past its
deadline is killed and reported as the requester's error, and what the
work raised arrives as the same error."""

from __future__ import annotations

import re
import threading
import time

import pytest

from hpcbinder import childcall
from hpcbinder.errors import RepoConfigError


def _add(a: int, b: int) -> int:
    return a + b


def _refuse(path: str) -> None:
    raise RepoConfigError(path, "is wrong", line=3)


def _backtrack() -> None:
    """Pipfile's old specifier pattern: days on 64 '!' (holds the lock in C)."""
    re.fullmatch(r"(?:[<>=!~]=?=?\s*[A-Za-z0-9.+!*_-]+\s*,?\s*)+|\*", "!" * 64 + "#")


def test_the_result_comes_back() -> None:
    assert childcall.call(_add, 2, 3, deadline=30, what="adding") == 5


def test_an_error_arrives_as_itself() -> None:
    with pytest.raises(RepoConfigError) as caught:
        childcall.call(_refuse, "Pipfile", deadline=30, what="reading")
    assert (caught.value.path, caught.value.line) == ("Pipfile", 3)
    assert str(caught.value) == "Pipfile:3: is wrong"


def test_work_past_its_deadline_is_stopped_while_the_caller_runs_on() -> None:
    ticks = 0
    stop = threading.Event()

    def tick() -> None:
        nonlocal ticks
        while not stop.wait(0.05):
            ticks += 1

    ticker = threading.Thread(target=tick)
    ticker.start()
    started = time.monotonic()
    try:
        with pytest.raises(childcall.DeadlineError, match=r"^backtracking took longer than 3 s"):
            childcall.call(_backtrack, deadline=3, what="backtracking")
    finally:
        stop.set()
        ticker.join()
    assert time.monotonic() - started < 10
    assert ticks >= 30  # the caller's threads ran all along (a tick every 0.05 s)
