"""Launches in progress, limited per researcher and per repository."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from hpcbinder.errors import UserError


class LaunchRefused(UserError):
    """Over a launch quota of the site file."""


class LaunchLimits:
    def __init__(self, per_user: int, per_repo: int) -> None:
        self.per_user = per_user
        self.per_repo = per_repo
        self._users: Counter[str] = Counter()
        self._repos: Counter[str] = Counter()

    @contextmanager
    def hold(self, user: str, repo: str) -> Iterator[None]:
        """A launch slot for ``user`` and ``repo`` while the block runs."""
        if self._users[user] >= self.per_user:
            raise LaunchRefused(
                f"You already have {self._users[user]} launches in progress; "
                f"this site allows {self.per_user} at once."
            )
        if self._repos[repo] >= self.per_repo:
            raise LaunchRefused(
                f"{repo} is being launched {self._repos[repo]} times right now, "
                f"this site's limit; try again in a minute."
            )
        self._users[user] += 1
        self._repos[repo] += 1
        try:
            yield
        finally:
            self._users[user] -= 1
            self._repos[repo] -= 1
