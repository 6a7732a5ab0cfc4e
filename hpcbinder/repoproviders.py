"""Binder specs to commits and checkouts.

A spec is what follows ``/v2/`` in a Binder link: ``gh/<org>/<repo>/<ref>``,
``gl/<url-escaped path>/<ref>``, ``git/<url-escaped clone url>/<ref>`` and,
for sites and tests, ``local/<url-escaped path>/<ref>``; refs are
url-escaped too. Parsing is BinderHub's, so a mybinder.org link works by
swapping the host.

A provider turns its spec into a :class:`ResolvedRepo` (where to fetch, and
the exact version) and fetches that version into a directory. Git hosts
share :class:`GitRepoProvider`; an archive provider (Zenodo, Figshare,
Dataverse) fits the same two methods with a record version for ``commit``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar
from urllib.parse import unquote, urlsplit

from hpcbinder import git
from hpcbinder.config import RepoPolicy
from hpcbinder.errors import RepoNotAllowed, RepoUnreachable, SpecError, UnknownRef

_REF = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/+@-]{0,254}")
_GH_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")
_GL_PATH = re.compile(r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*")
_PATH_SAFE = re.compile(r"[A-Za-z0-9._~/+=@%-]+")
_CLONE_URL = re.compile(
    r"(?:https?|git|ssh|file)://[A-Za-z0-9._~:/?#@+=%-]+"  # scheme://...
    r"|[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[A-Za-z0-9._~/+=%-]+"  # scp-like user@host:path
)
_SHORT_SHA = re.compile(r"[0-9a-f]{7,39}")


@dataclass(frozen=True)
class ResolvedRepo:
    """A repository at an exact version: what the rest of the pipeline uses."""

    spec: str
    url: str
    ref: str
    commit: str


def check_ref(ref: str) -> str:
    """``ref`` if it can name a branch, tag or commit; SpecError otherwise."""
    bad = (
        not _REF.fullmatch(ref)
        or ".." in ref
        or "//" in ref
        or "@{" in ref
        or ref.endswith((".", "/", ".lock"))
    )
    if bad:
        raise SpecError(f"invalid ref {ref!r}: expected a branch, tag or commit name")
    return ref


class RepoProvider(ABC):
    """One kind of spec."""

    prefix: ClassVar[str]

    def __init__(self, body: str, policy: RepoPolicy) -> None:
        self.policy = policy
        self.spec = f"{self.prefix}/{body}"
        self.url, quoted_ref = self.parse(body)
        self.ref = check_ref(unquote(quoted_ref))

    @abstractmethod
    def parse(self, body: str) -> tuple[str, str]:
        """(clone url, url-escaped ref) from the spec after the prefix."""

    @abstractmethod
    def resolve(self) -> ResolvedRepo:
        """The exact version ``ref`` names now."""

    @abstractmethod
    def fetch(self, resolved: ResolvedRepo, dest: Path) -> None:
        """That version's files into the new directory ``dest``."""

    @staticmethod
    def _split_last(body: str, what: str) -> tuple[str, str]:
        head, sep, ref = body.partition("/")
        if not sep or not head or not ref:
            raise SpecError(f"malformed spec: expected {what}/<ref>")
        return head, ref


class GitRepoProvider(RepoProvider):
    """Any provider whose repositories git clones."""

    def protocols(self) -> list[str]:
        return list(self.policy.protocols)

    def check_allowed(self) -> None:
        scheme = urlsplit(self.url).scheme or "ssh"
        if scheme not in self.protocols():
            raise RepoNotAllowed(f"{self.url}: protocol {scheme!r} is not allowed on this site")
        if any(re.fullmatch(pattern, self.url) for pattern in self.policy.ban):
            raise RepoNotAllowed(f"{self.url} is banned on this site")
        if self.policy.allow and not any(
            re.fullmatch(pattern, self.url) for pattern in self.policy.allow
        ):
            raise RepoNotAllowed(f"{self.url} is not on this site's allow list")

    def resolve(self) -> ResolvedRepo:
        self.check_allowed()
        if git.SHA.fullmatch(self.ref):
            return ResolvedRepo(self.spec, self.url, self.ref, self.ref)
        try:
            refs = git.ls_remote(self.url, protocols=self.protocols())
        except git.GitError as exc:
            raise RepoUnreachable(str(exc)) from exc
        for name in (
            self.ref if self.ref == "HEAD" or self.ref.startswith("refs/") else None,
            f"refs/heads/{self.ref}",
            f"refs/tags/{self.ref}^{{}}",
            f"refs/tags/{self.ref}",
        ):
            if name is not None and name in refs:
                return ResolvedRepo(self.spec, self.url, self.ref, refs[name])
        if _SHORT_SHA.fullmatch(self.ref):
            try:
                commit = git.expand_short_sha(self.url, self.ref, protocols=self.protocols())
            except git.GitError as exc:
                raise RepoUnreachable(str(exc)) from exc
            if commit:
                return ResolvedRepo(self.spec, self.url, self.ref, commit)
        raise UnknownRef(f"{self.url} has no branch, tag or commit {self.ref!r}")

    def fetch(self, resolved: ResolvedRepo, dest: Path) -> None:
        try:
            git.fetch_commit(resolved.url, resolved.commit, dest, protocols=self.protocols())
        except git.GitError as exc:
            raise RepoUnreachable(str(exc)) from exc


class GitHubRepoProvider(GitRepoProvider):
    prefix = "gh"

    def parse(self, body: str) -> tuple[str, str]:
        parts = body.split("/", 2)
        if len(parts) != 3 or not all(parts):
            raise SpecError("malformed spec: expected gh/<org>/<repo>/<ref>")
        org, repo, ref = parts
        repo = repo.removesuffix(".git")
        if not (_GH_NAME.fullmatch(org) and _GH_NAME.fullmatch(repo)):
            raise SpecError(f"invalid GitHub repository {org}/{repo}")
        return f"https://{self.policy.github_host}/{org}/{repo}", ref


class GitLabRepoProvider(GitRepoProvider):
    prefix = "gl"

    def parse(self, body: str) -> tuple[str, str]:
        quoted_path, ref = self._split_last(body, "gl/<url-escaped namespace/project>")
        path = unquote(quoted_path).removesuffix(".git")
        if not _GL_PATH.fullmatch(path) or ".." in path.split("/"):
            raise SpecError(f"invalid GitLab project path {path!r}")
        return f"https://{self.policy.gitlab_host}/{path}", ref


class GitUrlRepoProvider(GitRepoProvider):
    prefix = "git"

    def parse(self, body: str) -> tuple[str, str]:
        quoted_url, ref = self._split_last(body, "git/<url-escaped clone url>")
        url = unquote(quoted_url)
        if not _CLONE_URL.fullmatch(url):
            raise SpecError(f"invalid repository URL {url!r}")
        return url, ref


class LocalRepoProvider(GitRepoProvider):
    """A git repository on the site's filesystem, below one of its local_roots."""

    prefix = "local"

    def parse(self, body: str) -> tuple[str, str]:
        quoted_path, ref = self._split_last(body, "local/<url-escaped path>")
        path = Path(os.path.realpath(unquote(quoted_path)))
        if not path.is_absolute() or not _PATH_SAFE.fullmatch(str(path)):
            raise SpecError(f"invalid local repository path {unquote(quoted_path)!r}")
        roots = [Path(os.path.realpath(root)) for root in self.policy.local_roots]
        if not any(path.is_relative_to(root) for root in roots):
            raise RepoNotAllowed(f"{path} is not below this site's local repository roots")
        return f"file://{path}", ref

    def protocols(self) -> list[str]:
        return ["file"]


PROVIDERS: dict[str, type[RepoProvider]] = {
    cls.prefix: cls
    for cls in (GitHubRepoProvider, GitLabRepoProvider, GitUrlRepoProvider, LocalRepoProvider)
}


def parse_spec(spec: str, policy: RepoPolicy) -> RepoProvider:
    """The provider for ``spec`` (``<provider>/<rest>``), its values checked."""
    prefix, sep, body = spec.partition("/")
    if not sep:
        raise SpecError(f"malformed spec {spec!r}: expected <provider>/<repository>/<ref>")
    cls = PROVIDERS.get(prefix)
    if cls is None:
        known = ", ".join(sorted(PROVIDERS))
        raise SpecError(f"unknown provider {prefix!r} (this site knows: {known})")
    return cls(body, policy)


#: The shared checkout cache builds read from. Only trusted accounts may write
#: it (a planted checkout would poison others' builds); others use their own.
SHARED_CACHE = Path("/var/cache/hpcbinder/repos")


def cache_root(policy: RepoPolicy) -> Path:
    """Where checkouts are kept: the site's cache_dir, else the shared cache
    if this account may write it, else the user's own cache."""
    if policy.cache_dir is not None:
        return policy.cache_dir
    if os.access(SHARED_CACHE, os.W_OK):
        return SHARED_CACHE
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hpcbinder" / "repos"


def checkout(provider: RepoProvider, resolved: ResolvedRepo, root: Path) -> Path:
    """A directory holding ``resolved``, fetched once per (url, commit).

    The fetch goes to a temporary sibling that is renamed into place, so a
    checkout that exists is complete, and concurrent fetches of the same
    version end with one of them kept.
    """
    url_hash = hashlib.sha256(resolved.url.encode()).hexdigest()[:16]
    final = root / url_hash / resolved.commit
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{resolved.commit}-", dir=final.parent))
    try:
        provider.fetch(resolved, staging / "repo")
        try:
            (staging / "repo").rename(final)
        except OSError:
            if not final.is_dir():  # not a concurrent fetch that won: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final
