"""What a checkout may contain before anything builds from it.

A repository is untrusted, and so are its symlinks: git stores a link's
target as text, so a repository can hold ``data/key ->
/home/hpcbuild/.ssh/id_ed25519``. Every way a build reads the checkout
(Apptainer's ``%files`` copying the whole repository, an overlay build's
copy, a Dockerfile's COPY, detection reading a configuration file) would
follow such a link and put the build account's file into a world-readable
image. So a checkout whose links lead outside it is refused, naming the
link, before detection and before any build; links that stay inside the
repository are ordinary repository content and stay allowed.

The check runs before a fetched checkout is renamed into the cache
(:func:`hpcbinder.sources.providers.checkout`), so a refused tree is never
kept, and again on every prepare, also for a cached checkout (a cache
filled by an older hpcbinder was never checked); it costs one ``lstat``
per file.
"""

from __future__ import annotations

import os
from pathlib import Path

from hpcbinder import foldertree
from hpcbinder.errors import RepoConfigError
from hpcbinder.seams import git
from hpcbinder.sources.archives import folder_digest


def leads_outside(root: Path, relative: str) -> bool:
    """Whether ``relative`` (a path in the checkout ``root``) resolves, every
    link on the way followed, to a place outside ``root``. A dangling link
    counts by where it points: the file may exist where the build runs."""
    real_root = os.path.realpath(root)
    return not Path(os.path.realpath(os.path.join(real_root, relative))).is_relative_to(real_root)


def check_links(root: Path) -> None:
    """RepoConfigError naming the first symlink in the checkout ``root``
    (git's own ``.git`` folder aside) that points outside it."""
    real_root = Path(os.path.realpath(root))
    try:
        for folder, dirs, others in foldertree.walk(real_root):
            if Path(folder) == real_root and ".git" in dirs:
                dirs.remove(".git")  # written by git, not by the repository
            for name in others:
                path = Path(folder, name)
                if not path.is_symlink():
                    continue
                relative = str(path.relative_to(real_root))
                if leads_outside(real_root, relative):
                    raise RepoConfigError(
                        _shown(relative),
                        f"links to {_shown(os.readlink(path))}, outside the repository; "
                        "make it a link inside the repository or a copy of the file",
                    )
    except OSError as exc:  # unchecked is refused: a path too long to read, say
        where = exc.filename if isinstance(exc.filename, str) else str(real_root)
        raise RepoConfigError(
            _shown(os.path.relpath(where, real_root)[:200]),
            f"cannot be read to check its links ({exc.strerror or 'unreadable'})",
        ) from None


def _shown(text: str) -> str:
    """``text`` for a one-line message: quoted if it holds a newline or the like."""
    return text if text.isprintable() else repr(text)


def tree_id(root: Path) -> str:
    """What the env key hashes where a build reads the whole checkout
    ``root``: git's tree id for a git checkout, a digest of every file for
    a record's (which has no ``.git``: :mod:`hpcbinder.sources.archives`
    drops any)."""
    return git.tree_id(root) if (root / ".git").is_dir() else folder_digest(root)
