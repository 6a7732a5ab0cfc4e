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

Repositories on this host's filesystem, whichever provider names them
(``local/``, or ``git/`` with a ``file://`` URL), are allowed only below the
site's ``repos.local_roots``, judged on real paths: :func:`local_repo_path`
is that one check. Such a repository may belong to any account; git reads
it whoever owns it (``safe.directory`` for exactly that path, see
:mod:`hpcbinder.seams.git`), but builds it only when every account may read it
(:func:`check_open_to_all`): the build account's rights are not lent.

Every clone URL passes :func:`check_clone_url`, the one check, for every
provider's URL when its spec is parsed (before anything stores, logs,
shows, trusts or judges it) and for every URL git is given (submodules,
a :class:`ResolvedRepo` from elsewhere). Repositories are fetched
anonymously, so a URL never carries credentials (:func:`refuse_credentials`;
no message repeats a URL that failed it). And a URL has one spelling only:
the site's trust, allow and ban patterns match its text, while git, curl
and servers normalise ``..``, ``.``, ``//`` and %-escapes away, so a URL
holding any of those (or ``?``, ``#``, a backslash, a part starting with
``-`` that ssh or git could read as an option) is refused, not normalised.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar
from urllib.parse import unquote, urlsplit

from hpcbinder import textpatterns
from hpcbinder.config import RepoPolicy
from hpcbinder.errors import RepoNotAllowed, RepoUnreachable, SpecError, UnknownRef
from hpcbinder.patterns import COMMIT, LOCAL_PATH
from hpcbinder.seams import git
from hpcbinder.sources.checkout import check_links

_REF = textpatterns.compile(r"[A-Za-z0-9_][A-Za-z0-9._/+@-]{0,254}")
_GH_NAME = textpatterns.compile(r"[A-Za-z0-9_.-]{1,100}")
_GL_PATH = textpatterns.compile(r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*")
_FILE_URL = "file://"
#: A git/ link's URL: its shape. Which characters it may hold is
#: :func:`check_clone_url`'s to say, for every provider's URL.
_CLONE_URL = textpatterns.compile(
    r"(?:https?|git|ssh|file)://[A-Za-z0-9._~:/?#@+=%-]+"  # scheme://...
    r"|[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[A-Za-z0-9._~/+=%-]+"  # scp-like user@host:path
)
#: What any URL git is given may hold (:func:`check_clone_url`): no
#: %-escapes, ``?``, ``#``, backslashes, spaces or control characters.
_URL_TEXT = textpatterns.compile(r"[A-Za-z0-9._~:/@+=-]+")
_SHORT_SHA = textpatterns.compile(r"[0-9a-f]{7,39}")
#: What a spec (a link's path) may hold: a URL's printable characters
#: (RFC 3986), anything else %-escaped. A spec is stored, logged and shown
#: (an image's record, ``images ls``), so no control character reaches them.
_SPEC_TEXT = textpatterns.compile(r"[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=%-]+")
_GIST_ID = textpatterns.compile(r"[0-9a-f]{1,64}")


@dataclass(frozen=True)
class ResolvedRepo:
    """A repository at an exact version: what the rest of the pipeline uses."""

    spec: str
    url: str
    ref: str
    commit: str


#: A user name an ssh URL may carry (ssh://git@host/..., git@host:...): a
#: key, never a password, authenticates it.
_SSH_USER = textpatterns.compile(r"[A-Za-z0-9._-]{1,64}")


def refuse_credentials(url: str) -> None:
    """SpecError if ``url`` carries credentials: anything before an ``@``
    in its host part (``user:password@``, a token as the user), but for a
    plain user name in an ssh URL (``ssh://git@host/...``, scp-like
    ``git@host:...``). The host part is read as widely as any parser would
    (up to the first ``/``, extra slashes skipped, none for ``file:``); a
    ``scheme://`` host part may hold no %-escapes either (an escaped ``@``
    or ``:``). The message does not repeat the URL."""
    scheme, sep, rest = url.partition("://")
    if sep:
        scheme = scheme.lower()
        part = (rest if scheme == "file" else rest.lstrip("/")).split("/", 1)[0]
        escaped, ssh = "%" in part, scheme == "ssh"
    else:  # scp-like user@host:path, or a path
        part, escaped, ssh = url.split("/", 1)[0], False, True
    user, at, _host = part.rpartition("@")
    if escaped or (at and not (ssh and _SSH_USER.fullmatch(user))):
        raise SpecError(
            "a repository URL may not carry credentials (user:password@ or a token "
            "before the host): remove them from the link; repositories are fetched "
            "without credentials, so they must be public (an ssh URL may name its "
            "user: ssh://git@host/org/repo)"
        )


def check_clone_url(url: str) -> None:
    """SpecError unless ``url`` may be given to git and judged by its text:
    no credentials (:func:`refuse_credentials`), and one spelling only.
    Its characters are plain (no %-escape, ``?``, ``#``, backslash, space or
    control character); no part of it (between ``/``, ``:`` and ``@``) starts
    with ``-``, which ssh or git could read as an option; and its path has no
    ``.``, ``..`` or empty part (``//``, a trailing ``/``), which git, curl
    or the server would resolve to another repository than the one the
    site's trust, allow and ban patterns matched. The message names the
    problem, not the URL."""
    refuse_credentials(url)
    problem = None
    if not _URL_TEXT.fullmatch(url):
        problem = "may only hold letters, digits and . _ ~ : / @ + = - (no %-escapes, ?, #, \\)"
    elif any(part.startswith("-") for part in url.replace(":", "/").replace("@", "/").split("/")):
        problem = "may have no part that starts with - (git or ssh could read it as an option)"
    elif any(part in ("", ".", "..") for part in _path_parts(url)):
        problem = "may have no . or .. part and no empty one (// or a trailing /) in its path"
    if problem is not None:
        raise SpecError(
            f"a repository URL {problem}: write the repository's own URL, as its host shows it"
        )


def _path_parts(url: str) -> list[str]:
    """The parts of ``url``'s path: after ``scheme://host/``, after an
    scp-like ``host:`` or a whole plain path; a leading ``/`` of the last
    two starts an absolute path, not an empty part."""
    _scheme, sep, rest = url.partition("://")
    if sep:
        path = rest.partition("/")[2]
    else:
        path = url if reaches_local_files(url) else url.partition(":")[2]
        path = path.removeprefix("/")
    return path.split("/") if path else []


def may_hold_credentials(text: str) -> bool:
    """Whether ``text`` (a spec, a URL, a request's path) has an ``@``,
    %-escaped up to thrice: where a mangled URL may have put a secret."""
    for _ in range(4):
        if "@" in text:
            return True
        text = unquote(text)
    return False


def echo(value: str) -> str:
    """``value`` quoted for a message or log line about input that may be
    refused, unless it :func:`may_hold_credentials`: then a placeholder.
    Every refusal here quotes input through this, so none repeats a secret
    that a mangled URL put somewhere else."""
    return "(not repeated: it may hold credentials)" if may_hold_credentials(value) else repr(value)


def reaches_local_files(url: str) -> bool:
    """Whether git would read ``url`` from this host's filesystem: ``file:``
    in any spelling (a host part, one slash, upper case) and plain paths;
    not ``scheme://`` URLs of other schemes or scp-like ``host:path``."""
    if url.lower().startswith("file:"):
        return True
    if "://" in url:
        return False
    colon, slash = url.find(":"), url.find("/")
    return colon < 0 or 0 <= slash < colon  # git's rule: a colon first is scp-like ssh


def local_repo_path(url: str, roots: Iterable[Path]) -> Path | None:
    """The real path of the repository on this host that ``url`` names,
    checked to be below one of ``roots``; None for a URL git does not read
    from this host's filesystem.

    :class:`RepoNotAllowed` for every other URL that reaches the filesystem:
    anything but ``file:///<absolute plain path>``, and paths whose real
    location (symlinks and ``..`` resolved) or whose git directory (a
    ``.git`` symlink or file, or the ``PATH.git`` git falls back to) is
    outside the roots.
    """
    if not reaches_local_files(url):
        return None
    setting = "repos.local_roots"
    path = url[len(_FILE_URL) :] if url.startswith(_FILE_URL) else ""
    if not LOCAL_PATH.fullmatch(path):
        raise RepoNotAllowed(
            f"{url}: a repository on this host must be named file:///<absolute path>, "
            f"without host, %-escapes, ? or #, below the site's {setting}"
        )
    real_roots = [Path(os.path.realpath(root)) for root in roots]
    if not real_roots:
        setting += " is empty"

    def outside(candidate: str) -> bool:
        return not any(Path(candidate).is_relative_to(root) for root in real_roots)

    real = os.path.realpath(path)
    shown = path if real == path else f"{path} (really {real})"
    if outside(real) or not LOCAL_PATH.fullmatch(real):
        raise RepoNotAllowed(f"{shown} is not below this site's local repository roots ({setting})")
    # Where git's upload-pack may look for the repository (setup.c enter_repo).
    for candidate in (f"{real}/.git", real, f"{real}.git/.git", f"{real}.git"):
        gitdir = _gitfile_target(candidate) if os.path.isfile(candidate) else candidate
        if gitdir is None or (os.path.lexists(gitdir) and outside(os.path.realpath(gitdir))):
            raise RepoNotAllowed(
                f"{shown}: its git directory {candidate} is not below this site's local "
                f"repository roots ({setting})"
            )
        if os.path.lexists(os.path.join(gitdir, "objects", "info", "alternates")):
            # git would read objects from the folders it names, wherever they are.
            raise RepoNotAllowed(
                f"{shown}: its git directory {gitdir} borrows objects from other "
                "repositories (objects/info/alternates); make a standalone copy "
                "(git repack -a -d, then remove that file)"
            )
    return Path(real)


class NotOpenToAll(RepoNotAllowed):
    """A repository on this host that not every account may read (or that
    is not there): the build account does not build it for anyone; its
    owner builds it as herself (:mod:`hpcbinder.images.private`)."""


def check_open_to_all(path: Path) -> None:
    """:class:`NotOpenToAll` unless every account may read the repository
    at the real ``path`` (mode bits: every folder above it searchable by
    others, the repository, its git directory and objects readable). Its
    checkout and image are readable by all, so a repository only some may
    read is not built: the build account's rights are never lent."""
    # os.path.isdir: a folder this account may not enter is not one (Path.is_dir raises).
    gitdir = path / ".git" if os.path.isdir(path / ".git") else path
    checks = [(parent, stat.S_IXOTH) for parent in reversed(path.parents)]
    both = stat.S_IROTH | stat.S_IXOTH
    checks += [(path, both), (gitdir, both), (gitdir / "objects", both)]
    for folder, bits in checks:
        try:
            info = folder.stat()
        except OSError:
            raise NotOpenToAll(f"{path} is not a git repository on this host") from None
        if not stat.S_ISDIR(info.st_mode) or info.st_mode & bits != bits:
            raise NotOpenToAll(
                f"{path} is not readable by every account ({folder} is mode "
                f"{stat.S_IMODE(info.st_mode):o}): a repository on this host is built only "
                "when all can read it, as all can read its checkout and image"
            )


def check_shareable(spec: str, policy: RepoPolicy) -> None:
    """For a spec naming a repository on this host: :func:`check_open_to_all`."""
    provider = parse_spec(spec, policy)
    local = provider.check_allowed() if isinstance(provider, GitRepoProvider) else None
    if local is not None:
        check_open_to_all(local)


def _gitfile_target(gitfile: str) -> str | None:
    """The folder a ``.git`` file (``gitdir: PATH``) points to, None if unreadable."""
    try:
        with open(gitfile, encoding="utf-8", errors="replace") as handle:
            first = handle.readline(4096).strip()
    except OSError:
        return None
    if not first.startswith("gitdir:"):
        return None
    return os.path.join(os.path.dirname(gitfile), first.removeprefix("gitdir:").strip())


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
        raise SpecError(f"invalid ref {echo(ref)}: expected a branch, tag or commit name")
    return ref


class RepoProvider(ABC):
    """One kind of spec."""

    prefix: ClassVar[str]
    #: Whether a repository's name shows its host (not for the site's forges).
    shows_host: ClassVar[bool] = True
    #: What a link generator shows (BinderHub's ``display_config``): the
    #: provider's name, its repository field's label and an example of it,
    #: whether that field is URL-escaped in a link, and the ref field's
    #: label (None: the provider takes no ref, the record's version is
    #: resolved).
    display_name: ClassVar[str]
    label_repo: ClassVar[str]
    spec_example: ClassVar[str]
    url_encode: ClassVar[bool] = False
    label_ref: ClassVar[str | None] = "Git ref (branch, tag, or commit)"

    def __init__(self, body: str, policy: RepoPolicy) -> None:
        self.policy = policy
        self.spec = f"{self.prefix}/{body}"
        if not (self.spec.isascii() and _SPEC_TEXT.fullmatch(self.spec)):
            raise SpecError(
                "malformed spec: a link may hold only a URL's characters (letters, digits "
                "and -._~:/?#[]@!$&'()*+,;=%); %-escape any other"
            )
        self.url, quoted_ref = self.parse(body)
        check_clone_url(self.url)
        self.ref = check_ref(unquote(quoted_ref))

    @abstractmethod
    def parse(self, body: str) -> tuple[str, str]:
        """(clone url, url-escaped ref) from the spec after the prefix."""

    def readable_name(self) -> str:
        """``host/org/repo @ ref`` for a researcher, not the url-escaped
        spec: the host too, so that another server's ``jupyter/notebook``
        does not pass for the one researchers know."""
        parts = urlsplit(self.url)
        where = (parts.netloc if self.shows_host else "") + parts.path
        return f"{where.strip('/').removesuffix('.git')} @ {self.ref}"

    @abstractmethod
    def resolve(self) -> ResolvedRepo:
        """The exact version ``ref`` names now."""

    @abstractmethod
    def fetch(self, resolved: ResolvedRepo, dest: Path) -> None:
        """That version's files into the new directory ``dest``, within the
        site's fetch limits (nothing at ``dest`` if it fails)."""

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

    def limits(self) -> git.FetchLimits:
        policy = self.policy
        return git.FetchLimits(
            policy.max_fetch_mb,
            policy.fetch_timeout_seconds,
            "repos.max_fetch_mb",
            "repos.fetch_timeout_seconds",
        )

    def check_allowed(self, url: str | None = None) -> Path | None:
        """RepoNotAllowed unless this site allows ``url`` (this spec's by
        default); for a repository on this host, its checked real path."""
        url = self.url if url is None else url
        refuse_credentials(url)  # before a message repeats it
        local = reaches_local_files(url)
        scheme = "file" if local else (urlsplit(url).scheme or "ssh")
        if scheme not in self.protocols():
            raise RepoNotAllowed(f"{url}: protocol {scheme!r} is not allowed on this site")
        check_clone_url(url)  # a submodule's, a ResolvedRepo from elsewhere
        path = local_repo_path(url, self.policy.local_roots)
        # A local repository is judged by its real path too: a symlink
        # neither escapes a ban nor borrows an allowed name.
        seen = [url] if path is None else list(dict.fromkeys([url, f"{_FILE_URL}{path}"]))
        judged = seen[-1]
        if any(
            textpatterns.compile(pattern).fullmatch(each)
            for pattern in self.policy.ban
            for each in seen
        ):
            raise RepoNotAllowed(f"{url} is banned on this site")
        if self.policy.allow and not any(
            textpatterns.compile(pattern).fullmatch(judged) for pattern in self.policy.allow
        ):
            raise RepoNotAllowed(f"{url} is not on this site's allow list")
        return path

    def git_url(self, url: str) -> str:
        """What git is given for ``url`` (judged already): for HTTP(S),
        where its redirects lead, each hop judged by :meth:`check_allowed`
        (:mod:`hpcbinder.sources.redirects`). A :class:`ResolvedRepo` and
        the checkout cache keep ``url`` as the link named it: a commit id
        names its tree wherever it is fetched from, and a pinned commit's
        cached checkout is then found without asking the server anything."""
        from hpcbinder.sources import redirects  # it imports this module

        if not git.fetching_as_self():
            return redirects.final_url(url, self.policy, self.check_allowed)
        # With the researcher's own credentials a redirect stays on the link's
        # host: another would choose where her token, helpers and ssh config
        # are offered, and which host her submodules count as her own.
        own = git.origin(url)

        def same_host(new: str) -> object:
            if git.origin(new) != own:
                raise RepoNotAllowed(
                    f"it leaves {own} for another host, which a fetch with your own "
                    "credentials does not follow: link the repository's own URL"
                )
            return self.check_allowed(new)

        return redirects.final_url(url, self.policy, same_host)

    def resolve(self) -> ResolvedRepo:
        local = self.check_allowed()
        url = self.url if local is None else f"{_FILE_URL}{local}"
        if COMMIT.fullmatch(self.ref):
            return ResolvedRepo(self.spec, url, self.ref, self.ref)
        protocols = self.protocols()
        fetched = self.git_url(url)
        try:
            refs = git.ls_remote(
                fetched,
                protocols=protocols,
                limits=self.limits(),
                local_repo=local,
                ca_bundle=self.policy.ca_bundle,
                networks=self.policy.internal_networks,
            )
        except git.GitError as exc:
            raise RepoUnreachable(str(exc)) from exc
        for name in (
            self.ref if self.ref == "HEAD" or self.ref.startswith("refs/") else None,
            f"refs/heads/{self.ref}",
            f"refs/tags/{self.ref}^{{}}",
            f"refs/tags/{self.ref}",
        ):
            if name is not None and name in refs:
                return ResolvedRepo(self.spec, url, self.ref, refs[name])
        if _SHORT_SHA.fullmatch(self.ref):
            try:
                commit = git.expand_short_sha(
                    fetched,
                    self.ref,
                    protocols=protocols,
                    limits=self.limits(),
                    local_repo=local,
                    ca_bundle=self.policy.ca_bundle,
                    networks=self.policy.internal_networks,
                )
            except git.GitError as exc:
                raise RepoUnreachable(str(exc)) from exc
            if commit:
                return ResolvedRepo(self.spec, url, self.ref, commit)
        raise UnknownRef(f"{url} has no branch, tag or commit {self.ref!r}")

    def check_submodule(self, url: str) -> Path | None:
        """A submodule's URL judged as this repository's (protocols, allow,
        ban, local roots). One on this host only if every account may read
        it: who asked for the build is not known here, and the build
        account's rights are not lent."""
        local = self.check_allowed(url)
        if local is not None:
            check_open_to_all(local)
        return local

    def fetch(self, resolved: ResolvedRepo, dest: Path) -> None:
        local = self.check_allowed(resolved.url)  # a ResolvedRepo may come from elsewhere
        try:
            git.fetch_commit(
                self.git_url(resolved.url),
                resolved.commit,
                dest,
                protocols=self.protocols(),
                limits=self.limits(),
                policy=self.check_submodule,
                local_repo=local,
                ca_bundle=self.policy.ca_bundle,
                networks=self.policy.internal_networks,
            )
        except NotOpenToAll as exc:
            # A submodule's: this repository was read, so this is a refusal,
            # not "no access" (on which the researcher's own process would
            # fetch it again as her, lending its author's submodules her rights).
            raise RepoNotAllowed(f"submodule of {resolved.url}: {exc}") from None
        except git.GitError as exc:
            raise RepoUnreachable(str(exc)) from exc


class GitHubRepoProvider(GitRepoProvider):
    prefix = "gh"
    shows_host = False
    display_name = "GitHub"
    label_repo = "GitHub repository name or URL"
    spec_example = "jupyterhub/binderhub"

    def parse(self, body: str) -> tuple[str, str]:
        parts = body.split("/", 2)
        if len(parts) != 3 or not all(parts):
            raise SpecError("malformed spec: expected gh/<org>/<repo>/<ref>")
        org, repo, ref = parts
        repo = repo.removesuffix(".git")
        if not (_GH_NAME.fullmatch(org) and _GH_NAME.fullmatch(repo)):
            raise SpecError(f"invalid GitHub repository {echo(f'{org}/{repo}')}")
        return f"https://{self.policy.github_host}/{org}/{repo}", ref


class GitLabRepoProvider(GitRepoProvider):
    prefix = "gl"
    shows_host = False
    display_name = "GitLab.com"
    label_repo = "GitLab.com repository or URL"
    spec_example = "gitlab-org/gitlab-foss"
    url_encode = True

    def parse(self, body: str) -> tuple[str, str]:
        quoted_path, ref = self._split_last(body, "gl/<url-escaped namespace/project>")
        path = unquote(quoted_path).removesuffix(".git")
        # A . part too: with .git appended it would pass for a name (..git).
        if not _GL_PATH.fullmatch(path) or {".", ".."} & set(path.split("/")):
            raise SpecError(f"invalid GitLab project path {echo(path)}")
        # With .git, as BinderHub clones it: GitLab redirects a path
        # without it there, and git follows no redirect (seams/git._OPTIONS).
        return f"https://{self.policy.gitlab_host}/{path}.git", ref


class GistRepoProvider(GitRepoProvider):
    """``gist/<user>/<gist id>[/<ref>]``, as BinderHub reads it: no ref,
    ``HEAD``, ``master`` or ``main`` is the gist's latest revision; any other
    ref is a revision (commit) of it. Cloned from ``repos.records.gist``."""

    prefix = "gist"
    shows_host = False
    display_name = "GitHub Gist"
    label_repo = "Gist ID (username/gistId) or URL"
    label_ref = "Git commit SHA"
    spec_example = "jupyterhub/4a0dfa7b8a7c3e4a1b9d6f2e3c5a7b9d"

    def parse(self, body: str) -> tuple[str, str]:
        parts = body.removesuffix("/").split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise SpecError("malformed spec: expected gist/<user>/<gist id>[/<ref>]")
        user, gist_id = parts[0], parts[1].removesuffix(".git")
        if not (_GH_NAME.fullmatch(user) and _GIST_ID.fullmatch(gist_id)):
            raise SpecError(f"invalid gist {echo(f'{user}/{gist_id}')}")
        ref = parts[2] if len(parts) == 3 else "HEAD"
        ref = "HEAD" if ref in ("master", "main") else ref
        return f"{self.policy.records.gist}/{user}/{gist_id}.git", ref


class GitUrlRepoProvider(GitRepoProvider):
    prefix = "git"
    display_name = "Git repository"
    label_repo = "Arbitrary git repository URL (http://git.example.com/repo)"
    spec_example = "https://github.com/jupyterhub/binderhub"
    url_encode = True

    def parse(self, body: str) -> tuple[str, str]:
        quoted_url, ref = self._split_last(body, "git/<url-escaped clone url>")
        url = unquote(quoted_url)
        if not _CLONE_URL.fullmatch(url):
            raise SpecError(f"invalid repository URL {echo(url)}")
        return url, ref


class LocalRepoProvider(GitRepoProvider):
    """A git repository on the site's filesystem, below one of its local_roots."""

    prefix = "local"
    display_name = "Repository on this site"
    label_repo = "Path below the site's local repository roots"
    spec_example = "/srv/repos/example"
    url_encode = True

    def readable_name(self) -> str:
        """The repository's folder and the one above it: the site's own roots."""
        tail = self.url.rstrip("/").split("/")[-2:]
        return f"{'/'.join(tail)} @ {self.ref}"

    def parse(self, body: str) -> tuple[str, str]:
        quoted_path, ref = self._split_last(body, "local/<url-escaped path>")
        given = unquote(quoted_path)
        if not os.path.isabs(given):
            raise SpecError(f"invalid local repository path {echo(given)}")
        check_clone_url(f"{_FILE_URL}{given}")  # as given: no .. to resolve
        path = os.path.realpath(given)
        if not LOCAL_PATH.fullmatch(path):
            raise SpecError(f"invalid local repository path {echo(given)}")
        local_repo_path(f"{_FILE_URL}{path}", self.policy.local_roots)
        return f"{_FILE_URL}{path}", ref

    def protocols(self) -> list[str]:
        return ["file"]


PROVIDERS: dict[str, type[RepoProvider]] = {
    cls.prefix: cls
    for cls in (
        GitHubRepoProvider,
        GitLabRepoProvider,
        GistRepoProvider,
        GitUrlRepoProvider,
        LocalRepoProvider,
    )
}  # and the archive providers, which hpcbinder.sources.records adds


def parse_spec(spec: str, policy: RepoPolicy) -> RepoProvider:
    """The provider for ``spec`` (``<provider>/<rest>``), its values checked."""
    prefix, sep, body = spec.partition("/")
    if not sep:
        raise SpecError(f"malformed spec {echo(spec)}: expected <provider>/<repository>/<ref>")
    cls = PROVIDERS.get(prefix)
    if cls is None:
        known = ", ".join(sorted(PROVIDERS))
        raise SpecError(f"unknown provider {echo(prefix)} (this site knows: {known})")
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


def served_checkout(policy: RepoPolicy, commit: str) -> Path | None:
    """The checkout of ``commit`` that the build server keeps for jobs to
    copy (``cache_dir``, else the shared cache: ``ROOT/URL_HASH/COMMIT``,
    as :func:`checkout` lays it out), if there is one. A commit id names
    its tree, so any repository's checkout of it is that tree. Only the
    build account writes there; a name that is a link is not a checkout."""
    if not COMMIT.fullmatch(commit):
        return None
    root = policy.cache_dir or SHARED_CACHE
    try:
        repos = sorted(root.iterdir())
    except OSError:
        return None
    for repo in repos:
        found = repo / commit
        if not repo.is_symlink() and not found.is_symlink() and found.is_dir():
            return found
    return None


def checkout(provider: RepoProvider, resolved: ResolvedRepo, root: Path) -> Path:
    """A directory holding ``resolved``, fetched once per (url, commit).

    The fetch goes to a temporary sibling that is renamed into place, so a
    checkout that exists is complete, and concurrent fetches of the same
    version end with one of them kept. Its links are checked
    (:func:`~hpcbinder.sources.checkout.check_links`) before it is renamed
    into the cache: a refused tree is never published, so it is neither
    served again from the cache nor left for anything else to read.
    """
    url_hash = hashlib.sha256(resolved.url.encode()).hexdigest()[:16]
    final = root / url_hash / resolved.commit
    if final.is_dir():
        return final
    made = not final.parent.exists()
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{resolved.commit}-", dir=final.parent))
    try:
        provider.fetch(resolved, staging / "repo")
        check_links(staging / "repo")
        try:
            (staging / "repo").rename(final)
        except OSError:
            if not final.is_dir():  # not a concurrent fetch that won: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if made and not final.is_dir():  # a failed first fetch of this URL leaves no folder
            with contextlib.suppress(OSError):  # not empty: another fetch of it is under way
                final.parent.rmdir()
    return final
