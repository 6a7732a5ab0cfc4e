"""One walk over a folder tree that a repository's author shaped.

A checkout's depth is the author's to choose (git stores ``a/a/a/...`` as
deep as a path may be long), and Python 3.11's :func:`os.walk` recurses
once per level, so a deep enough tree raised RecursionError in whatever
walked it (the symlink check, the tree's digest, the quota's count), and
it skips a folder it cannot read without a word, so a check could pass
over what it was meant to see. :func:`walk` keeps its own stack, and a
folder it cannot read is an error, never a silent gap.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path


def walk(root: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    """``(folder, folders, others)`` for ``root`` and every folder below
    it, top-down in sorted order (as ``os.walk`` with sorted names yields
    them): ``folders`` are real folders (not links to one), ``others``
    everything else (files, links, the rest). Links are never followed.
    The caller may prune ``folders`` in place, as with ``os.walk``.
    OSError for a folder that cannot be read."""
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        folders: list[str] = []
        others: list[str] = []
        with os.scandir(folder) as entries:
            for entry in entries:
                is_folder = entry.is_dir(follow_symlinks=False)
                (folders if is_folder else others).append(entry.name)
        folders.sort()
        others.sort()
        yield folder, folders, others
        stack.extend(os.path.join(folder, name) for name in reversed(folders))
