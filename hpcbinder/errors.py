"""Errors a user can fix, as opposed to bugs.

Each is one line that names the problem (and the file and line where there
is one). The CLI prints it without a traceback and exits 2; the web service
sends it as a ``failed`` event.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: a spec, a ref, a repository's configuration, a site file."""


class SpecError(UserError):
    """A Binder spec that cannot be parsed (unknown provider, malformed)."""


class RepoNotAllowed(UserError):
    """The site's allow/ban lists or protocols exclude this repository."""


class RepoUnreachable(UserError):
    """The repository cannot be listed or fetched."""


class NoAccess(UserError):
    """A repository that cannot be read with the rights at hand: not there,
    or not open to whoever asks. One text for both (:meth:`about`), so that
    nobody learns from it whether someone else's private repository exists."""

    @classmethod
    def about(cls, name: str) -> NoAccess:
        return cls(
            f"{name}: repository not found, or you have no access to it (a private "
            "repository is fetched as you, with your own SSH key and ssh config, git "
            "credential helper, or for hpcbinder build and sbatch your agent or "
            "HPCBINDER_GIT_TOKEN)"
        )


class UnknownRef(UserError):
    """The ref names no branch, tag or commit of the repository."""


class RepoConfigError(UserError):
    """A repository's Binder configuration cannot be built."""

    def __init__(self, path: str, message: str, line: int | None = None) -> None:
        self.path = path
        self.line = line
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}")
