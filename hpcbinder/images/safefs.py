"""The one way the build account opens files in its staging folders and
its store: relative to a folder it holds open, never through a link, and
only regular files of its own.

The store's layout keeps every folder a container may write (a build's
scratch space, its overlay, its download cache) apart from the folders the
build server reads, writes and publishes from (see
:func:`hpcbinder.images.store.work_dir`). This module is the second wall:
should anything ever plant a link, a FIFO, a device or another account's
file where the build server expects its own, opening it fails instead of
reading the build account's secrets into an error message or overwriting
its own files.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Collection, Iterator
from pathlib import Path

#: Flags of every open here: never through a link, never a controlling
#: terminal, never blocking on a FIFO, never inherited by a child.
_ALWAYS = os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC


class UnsafeFile(OSError):
    """A path the build account refuses to open: a link, not a regular
    file, or a file that is not its own."""


@contextlib.contextmanager
def _folder(folder: Path) -> Iterator[int]:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def _owners(owners: Collection[int]) -> set[int]:
    return {os.geteuid(), *owners}


def _checked(fd: int, path: Path, owners: Collection[int]) -> int:
    """``fd`` if it is a regular file of one of ``owners`` (or of this
    process) with no other name; closed and UnsafeFile otherwise."""
    info = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = "is not a regular file"
    elif info.st_uid not in _owners(owners):
        problem = f"belongs to uid {info.st_uid}, not to the build account"
    elif info.st_nlink != 1:
        problem = "has another name (a hard link)"
    if problem is not None:
        os.close(fd)
        raise UnsafeFile(f"{path} {problem}; not opened")
    return fd


def _open(folder: Path, name: str, flags: int, owners: Collection[int], mode: int = 0o644) -> int:
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"not a file name: {name!r}")
    with _folder(folder) as dir_fd:
        try:
            fd = os.open(name, flags | _ALWAYS, mode, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == 40:  # ELOOP: the name is a link
                raise UnsafeFile(f"{folder / name} is a link; not opened") from exc
            raise
    return _checked(fd, folder / name, owners)


def read_bytes(folder: Path, name: str, limit: int, owners: Collection[int] = ()) -> bytes:
    """At most ``limit`` bytes of the build account's file ``folder/name``."""
    fd = _open(folder, name, os.O_RDONLY, owners)
    with os.fdopen(fd, "rb") as handle:
        return handle.read(limit)


def read_text(folder: Path, name: str, limit: int, owners: Collection[int] = ()) -> str:
    return read_bytes(folder, name, limit, owners).decode(errors="replace")


def create(folder: Path, name: str, text: str, owners: Collection[int] = ()) -> Path:
    """Write a new file ``folder/name`` (FileExistsError if the name is taken
    by anything, a link included): nothing there is ever replaced in place."""
    fd = _open(folder, name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, owners)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    return folder / name


def append(folder: Path, name: str, owners: Collection[int] = ()) -> int:
    """A descriptor to append to ``folder/name``, created if missing, the
    build account's own regular file."""
    return _open(folder, name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, owners)


def replace(folder: Path, name: str, text: str, owners: Collection[int] = ()) -> Path:
    """Write ``folder/name`` atomically: a fresh file, renamed over the
    name (a link there is replaced, never followed)."""
    partial = f".{name}.{os.urandom(8).hex()}"
    create(folder, partial, text, owners)
    with _folder(folder) as dir_fd:
        os.rename(partial, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    return folder / name
