"""Which repositories a researcher has agreed to run.

A Binder link starts its repository's code as the researcher who clicks
it, with their Slurm account. A site vouches for some repositories
(``binder.trusted_repos``); the first launch of any other asks the
researcher to confirm on the launch page, and the answer is remembered
per researcher, clone URL and ref. The site's word covers a repository's
branches and tags only: a commit or another ref (``refs/pull/N/head``)
may come from anyone who can open a pull request or fork (GitHub serves a
fork's commits through the parent's URL), so those are always asked.
The records live in the service's own state folder (the service
account's, mode 700): nobody else can confirm for a researcher, and a
link cannot skip the question (the ``/build`` stream a
browser opens with the hub's cookie is refused until confirmed; clients
that present the researcher's own token ask explicitly and are not).

The page also names the host her own credentials would answer
(:func:`credential_host`): a repository the site cannot fetch is fetched
as her (:mod:`hpcbinder.web.privatebuilds`), and a git credential helper
that is not limited to certain hosts gives its password or token to
whichever host the link names.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

from hpcbinder import textpatterns
from hpcbinder.config import BinderService
from hpcbinder.errors import SpecError
from hpcbinder.seams.git import origin
from hpcbinder.sources.providers import check_clone_url

#: A branch or tag, by name or full ref; not another ref namespace.
#: (Anything else under ``refs/`` is not: see :func:`_named_ref`.)
_NAMED_REF = textpatterns.compile(r"[^/].*")
_FULL_NAMED_REF = textpatterns.compile(r"refs/(?:heads|tags)/.+")
#: What git may read as a commit id (a full or abbreviated SHA).
_COMMIT_LIKE = textpatterns.compile(r"[0-9a-fA-F]{7,64}")


def credential_host(clone_url: str) -> str:
    """``scheme://host[:port]`` that her SSH key, ssh config or git
    credential helper would answer if ``clone_url`` is fetched as her; ""
    for a repository on this cluster's filesystem (her file permissions
    only, lent to no host)."""
    host = origin(clone_url)
    if host == "file://":
        return ""
    return host or clone_url


def _named_ref(ref: str) -> bool:
    pattern = _FULL_NAMED_REF if ref.startswith("refs/") else _NAMED_REF
    return pattern.fullmatch(ref) is not None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Confirmations:
    """Per-researcher records of the repositories they agreed to run."""

    def __init__(self, policy: BinderService, state_dir: Path) -> None:
        self.policy = policy
        self.folder = state_dir / "confirmed"
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)

    def trusted(self, clone_url: str, ref: str) -> bool:
        """Whether the site vouches for ``clone_url`` at ``ref`` (or asks nobody).
        The site's patterns match the URL's text, so only a URL in its one
        spelling (:func:`check_clone_url`: no ``..``, ``//`` or %-escapes,
        which git would resolve to another repository) can match."""
        if not self.policy.confirm_untrusted:
            return True
        if not _named_ref(ref) or _COMMIT_LIKE.fullmatch(ref):
            return False
        try:
            check_clone_url(clone_url)
        except SpecError:
            return False
        return any(
            textpatterns.compile(pattern).fullmatch(clone_url)
            for pattern in self.policy.trusted_repos
        )

    def _path(self, user: str) -> Path:
        return self.folder / f"{_digest(user)}.json"

    def _confirmed(self, user: str) -> set[str]:
        try:
            data = json.loads(self._path(user).read_text())
        except (OSError, ValueError):
            return set()
        return {str(item) for item in data} if isinstance(data, list) else set()

    def needs_confirmation(self, user: str, clone_url: str, ref: str) -> bool:
        if self.trusted(clone_url, ref):
            return False
        return _digest(f"{clone_url}\n{ref}") not in self._confirmed(user)

    def confirm(self, user: str, clone_url: str, ref: str) -> None:
        """Remember that ``user`` agreed to run ``clone_url`` at ``ref`` (atomically)."""
        records = sorted(self._confirmed(user) | {_digest(f"{clone_url}\n{ref}")})
        handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=".confirm-")
        try:
            with os.fdopen(handle, "w") as out:
                json.dump(records, out)
            os.replace(temporary, self._path(user))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
