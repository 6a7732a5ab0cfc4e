"""``hpcbinder images gc``: what the image store and the checkout cache may
lose, decided by the build account that owns both.

Kept, whatever their age:

- every image and checkout a job that has not finished names in its
  comment (:mod:`hpcbinder.images.jobrefs`; every user's jobs, through the site's
  Slurm client): a queued batch run or a server waiting for a node starts
  from them later; an image only if the job's owner may launch it;
- every image used within the limit: the build server records a use at
  each build, each launch that asks it for the image (the Binder service,
  ``hpcbinder build`` and ``sbatch``) and each server start or restart
  the spawner reports (``POST /used``);
- every checkout used within the limit, and every checkout used within a
  build's time limit of now (a build reads its checkout until it ends; the
  build server records a use when it prepares a repository and when a
  build starts).

Removed as well: staging folders of builds and removals that crashed,
fetches into the checkout cache that never finished, and the download
cache of every env key whose image is gone (written by repository code,
so bounded by what the store keeps), once no build could still use it.

If Slurm cannot list every job, nothing is removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from hpcbinder.config import Site
from hpcbinder.images import builder, jobrefs
from hpcbinder.images.store import image_store
from hpcbinder.seams import proc
from hpcbinder.seams.slurm import SlurmCLI
from hpcbinder.sources import providers

#: Added to the build time limit before a checkout is no longer a build's.
BUILD_SLACK_SECONDS = 600.0


@dataclass(frozen=True)
class GcReport:
    """What one gc removed."""

    images: list[str]
    checkouts: list[Path]
    staging: list[str]
    caches: list[Path]


def record_checkout_use(checkout: Path) -> None:
    """Note that ``checkout`` is used now, as its folder's modification
    time: nothing writes into a checkout after its fetch (builds bind it
    read-only, jobs copy from it), so that time is its last use."""
    with contextlib.suppress(OSError):
        os.utime(checkout)


def collect(site: Site, older_than_days: float, keep: int, slurm: SlurmCLI) -> GcReport:
    """Remove what nothing needs any more (see the module's docstring)."""
    in_use = jobrefs.references(slurm.unfinished_job_comments(proc.current_user()))
    store = image_store(site)
    pinned = frozenset(key for user, key in in_use.images if store.may_launch(key, user))
    images = store.gc(older_than_days, keep, pinned)
    staging = store.clean_staging()
    now = time.time()
    build_window = site.build.timeout_minutes * 60 + BUILD_SLACK_SECONDS
    checkouts = clean_checkouts(
        providers.cache_root(site.repos),
        unused_since=now - max(older_than_days * 86400, build_window),
        unfinished_since=now - build_window,
        in_use=in_use.commits,
    )
    kept = {record.key for record in store.records()}
    caches = clean_build_caches(site, kept, unused_since=now - build_window)
    return GcReport(images, checkouts, staging, caches)


def clean_build_caches(site: Site, keys: set[str], *, unused_since: float) -> list[Path]:
    """Remove the download caches of env keys other than ``keys`` (the
    store's images) last changed before ``unused_since`` (no build of
    theirs runs); the removed caches."""
    if site.build.cache_dir is None or not (site.build.cache_dir / builder.ENV_CACHES).is_dir():
        return []
    kept = {builder.cache_dir(site, key) for key in keys}
    return [
        cache
        for cache in sorted((site.build.cache_dir / builder.ENV_CACHES).iterdir())
        if cache not in kept and not cache.is_symlink() and _remove(cache, unused_since)
    ]


def clean_checkouts(
    root: Path, *, unused_since: float, unfinished_since: float, in_use: frozenset[str]
) -> list[Path]:
    """Remove checkouts (``root/URL_HASH/COMMIT``) last used before
    ``unused_since`` whose commit no job names, and unfinished fetches
    (``root/URL_HASH/.COMMIT-*``) older than ``unfinished_since``; the
    removed checkouts. A checkout's use is read again right before it goes."""
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for repo in sorted(root.iterdir()):
        if repo.name.startswith(".") or not repo.is_dir() or repo.is_symlink():
            continue
        for entry in sorted(repo.iterdir()):
            unfinished = entry.name.startswith(".")
            limit = unfinished_since if unfinished else unused_since
            if not unfinished and entry.name in in_use:
                continue
            if _remove(entry, limit) and not unfinished:
                removed.append(entry)
        with contextlib.suppress(OSError):
            repo.rmdir()  # only if that was its last checkout
    return removed


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except FileNotFoundError:
        return float("inf")


def _remove(path: Path, limit: float) -> bool:
    """If ``path`` was last changed before ``limit``: move it out of the way
    (a fetch of its commit then starts afresh), then delete it."""
    if _mtime(path) >= limit:
        return False
    doomed = path.with_name(f".gc-{uuid.uuid4().hex}")
    try:
        path.rename(doomed)
    except OSError:
        return False
    shutil.rmtree(doomed, ignore_errors=True)
    return True
