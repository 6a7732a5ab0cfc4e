"""Private repositories: fetched and built as the researcher, into a store
of her own.

The build account fetches anonymously and builds into the shared store,
which every researcher may read and launch from: it can only serve
repositories anyone may read. A repository it cannot fetch (a remote that
wants credentials, one on this host not open to all accounts, or one that
does not exist) gets one answer from the build server, "not found or no
access" (:class:`~hpcbinder.errors.NoAccess`, event kind ``no-access``);
the researcher's own process then does the whole pipeline as her:

- **fetch** with her own credentials (:func:`hpcbinder.seams.git.own_credentials`):
  her SSH key, agent and ssh config for ``git@host:`` and ``ssh://`` URLs,
  her git credential helper, or a token she gives in ``HPCBINDER_GIT_TOKEN``
  (reaching git's credential helper through its environment, never argv,
  a URL or a log), and her file permissions for a repository on this host.
  Whatever fails is the same :class:`NoAccess` text, so that nobody learns
  whether someone else's repository exists;
- **build** with the site's builder, its commands in a Slurm job as her on
  the build partition (unprivileged Apptainer ``--fakeroot`` with her
  subordinate ids), into her store (``build.private_store``, mode 700:
  checkouts, download caches, images, logs, records). The site's base
  images are read from the shared store; nothing is written there.

Why as her, not as the build account with her credentials lent to it:
credentials then never leave her processes (no service holds her keys or
tokens), the file system itself keeps her checkout, image and logs hers
(no access rule to get right in the service), and another researcher
asking for the same URL gets nothing of hers: his own request fails to
fetch, or fetches and builds his own. Public repositories still share one
image across researchers through the build server.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import stat
from pathlib import Path

from hpcbinder.config import Site
from hpcbinder.errors import NoAccess, RepoUnreachable, UserError
from hpcbinder.images.builder import Builder, Emit
from hpcbinder.images.store import ImageRecord, ImageStore
from hpcbinder.render import pipeline
from hpcbinder.render.pipeline import Fetched
from hpcbinder.seams import git, proc
from hpcbinder.sources import providers

#: Her store's folder of checkouts (the build server's are in repos.cache_dir).
CHECKOUTS = "repos"
#: Her store's download caches, one per env key (see builder.cache_dir).
CACHES = "cache"


class PrivateStoreError(UserError):
    """Her private store cannot be used as it is (a link, another's folder)."""


def private_root(site: Site, user: str) -> Path:
    """Where ``user``'s own store is (``build.private_store``)."""
    home = pwd.getpwnam(user).pw_dir
    path = site.build.private_store.replace("{home}", home).replace("{user}", user)
    if ".." in Path(path).parts:
        raise PrivateStoreError(f"{path}: no .. in build.private_store (site file)")
    return Path(path)


def _check_ancestors(root: Path, user: str) -> None:
    """PrivateStoreError unless no one but ``user`` and root can replace
    any folder on the way to ``root`` (each, as given and resolved, owned
    by one of them, and writable by others only if sticky): another's
    folder there (a /scratch/alice that bob made first) could swap her
    store for his after every check."""
    uid = os.geteuid()
    given = [*reversed(root.parents)]
    resolved = [
        *reversed(Path(os.path.realpath(root.parent)).parents),
        Path(os.path.realpath(root.parent)),
    ]
    for folder in dict.fromkeys([*given, *resolved]):
        try:
            info = folder.lstat()
        except FileNotFoundError:
            continue  # made below, by this account
        open_to_others = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        sticky = stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_ISVTX
        if info.st_uid not in (0, uid) or (
            stat.S_ISDIR(info.st_mode) and open_to_others and not sticky
        ):
            raise PrivateStoreError(
                f"{root}: {folder} could be replaced by another account than {user} or root "
                "(its owner, or a folder others may write that is not sticky); "
                "its images would not stay hers (site file: build.private_store)"
            )


def open_store(site: Site, user: str) -> ImageStore:
    """This account's own store, made mode 700 if missing; refused, one
    line, if it is a link or not this account's folder, or if another
    account could replace a folder above it (either would show them her
    images)."""
    root = private_root(site, user)
    try:
        _check_ancestors(root, user)
        root.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Again, now that each exists: one another account made between the
        # check and mkdir (which accepts an existing folder) is refused too.
        _check_ancestors(root, user)
        with contextlib.suppress(FileExistsError):
            root.mkdir(mode=0o700)
        info = root.lstat()
    except OSError as exc:
        raise PrivateStoreError(
            f"cannot make {user}'s private store {root}: {exc.strerror} "
            "(site file: build.private_store)"
        ) from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise PrivateStoreError(
            f"{root} is not a folder of {user}'s: it holds private images "
            "(site file: build.private_store)"
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        root.chmod(0o700)
    return ImageStore(root, owner=user)


def private_site(site: Site, store: ImageStore, user: str, backend: str = "slurm") -> Site:
    """``site`` as her private builds see it: checkouts and download caches
    in her store, builds as her in Slurm jobs on the build partition (or,
    ``backend`` "local", in the job of hers that runs this on the build
    partition already: :mod:`hpcbinder.images.privatejob`). The image store
    stays the site's (it names the base images she reads)."""
    build = site.build.model_copy(
        update={
            "account": user,
            "backend": backend,
            "cache_dir": store.root / CACHES,
            "partition": site.build.private_partition or site.build.partition,
        }
    )
    repos = site.repos.model_copy(update={"cache_dir": store.root / CHECKOUTS})
    return site.model_copy(update={"build": build, "repos": repos})


@functools.cache
def _given_token() -> str | None:
    """The token she gave this process (``HPCBINDER_GIT_TOKEN``), taken out
    of its environment at first use: only git's credential helper gets it,
    never a program this process starts later (sbatch, a build step)."""
    return os.environ.pop(git.TOKEN_VARIABLE, None) or None


def credentials(user: str) -> git.OwnCredentials:
    """Her credentials for git: a token if she gave one (by variable), for
    the one origin she names with it (``HPCBINDER_GIT_TOKEN_HOST``). Not the
    origin of whatever repository she asks for: a link someone else gives
    her names their host, and a token would go to whoever answers 401."""
    token = _given_token()
    origin = os.environ.get(git.TOKEN_ORIGIN_VARIABLE, "").strip().lower().rstrip("/")
    if token is not None and not git.TOKEN_ORIGIN.fullmatch(origin):
        raise UserError(
            f"{git.TOKEN_VARIABLE} is set: set {git.TOKEN_ORIGIN_VARIABLE} to the one "
            "https://host[:port] it is for (it is given to no other host)"
        )
    return git.OwnCredentials(
        token, os.environ.get(git.TOKEN_USER_VARIABLE) or user, origin if token else ""
    )


def no_access(exc: BaseException) -> bool:
    """Whether ``exc`` says a repository cannot be read with the rights at
    hand (not there, or not open to the reader), as opposed to a fetch
    that went far enough to reach a site limit (which says nothing of
    whether a repository exists: its data was flowing) or to its
    submodules (the repository was read: fetching it again as the
    researcher would lend its author's submodules her rights)."""
    if isinstance(exc, RepoUnreachable):
        return not isinstance(exc.__cause__, (git.FetchLimitExceeded, git.SubmoduleError))
    return isinstance(exc, (providers.NotOpenToAll, PermissionError))


def readable_name(site: Site, spec: str) -> str:
    """The repository's name for messages, from the spec alone (the same
    whether it exists or not)."""
    return providers.parse_spec(spec, site.repos).readable_name()


def prepare(site: Site, spec: str, user: str | None = None) -> pipeline.Prepared:
    """Fetch (as this account, with its credentials) and render ``spec``
    into this account's store; :class:`NoAccess` if it cannot be fetched."""
    user = user or proc.current_user()
    store = open_store(site, user)
    mine = private_site(site, store, user)
    name = readable_name(site, spec)
    with git.own_credentials(credentials(user)):
        try:
            return pipeline.prepare(spec, mine)
        except (RepoUnreachable, PermissionError) as exc:
            if not no_access(exc):
                raise
            raise NoAccess.about(name) from None


def request(
    site: Site, spec: str, emit: Emit, *, prepare_only: bool = False, backend: str = "slurm"
) -> Fetched:
    """Prepare and (unless ``prepare_only``) build ``spec`` as this account,
    into its own store (its commands through ``backend``: see
    :func:`private_site`); the result is marked private (its image is in
    her store: :func:`published`)."""
    user = proc.current_user()
    prepared = prepare(site, spec, user)
    if not prepare_only:
        store = open_store(site, user)
        mine = private_site(site, store, user, backend)
        Builder(mine, store=store).build_image(prepared, emit, user)
    fetched = prepared.fetched()
    return Fetched(
        fetched.repo,
        fetched.checkout,
        fetched.env_key,
        fetched.reads_whole_repo,
        fetched.warnings,
        private=True,
    )


def published(site: Site, key: str) -> ImageRecord | None:
    """Image ``key`` in this account's own store, if it is there."""
    return open_store(site, proc.current_user()).lookup(key)
