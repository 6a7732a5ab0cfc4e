"""A record's files on disk, within bounds, unpacked safely.

Archive providers (Zenodo, Figshare, Dataverse, HydroShare, CKAN,
Software Heritage) turn a record into a folder as repo2docker does: the
record's files, a single zip among them unpacked, one top-level folder
stripped. Everything in a record is untrusted: its file names, its
archives' member names, types and sizes.

:func:`extract` is the one place an archive becomes files, for zip and
tar alike, and it is safe by construction: it creates only regular files
(mode 644, or 755 where the archive marks them executable) and folders,
each anew (``O_EXCL | O_NOFOLLOW``) in a folder it made itself, and
refuses, naming the member, any member whose name is absolute, holds a
``..`` part, a backslash or a character that is not printable, repeats
another's name, or is anything but a file or folder (a symlink, a hard
link, a device, a FIFO). Names are checked by :func:`member_path`, which
the record's own file names pass through too. A ``.git`` part is
dropped with what is below it: git would read a ``.git`` folder's config
(``core.fsmonitor`` runs a program) in any git command run there.

Every byte written to disk (downloads, a decompressed tarball, unpacked
files) and every file counts against one :class:`Budget`: the site's
``repos.max_fetch_mb`` and ``repos.max_fetch_files``, and the deadline of
``repos.fetch_timeout_seconds``, as a git fetch is bounded. An archive's
declared sizes are not believed; bytes are counted as they are written.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import shutil
import stat
import struct
import tarfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from hpcbinder import foldertree
from hpcbinder.errors import RepoConfigError, UserError

#: Bytes read or written at a time.
CHUNK = 1 << 16
#: The longest header (a tar long name or pax record) read into memory.
_MAX_HEADER = 1 << 20
#: The longest pax header tarfile may parse: unpatched Pythons parse one in
#: quadratic time (CVE-2024-6232); a path and git's comment need a few kB.
MAX_PAX_HEADER = 16 << 10
#: The most bytes of a zip's central directory per file the bounds allow
#: (its fixed 46 bytes, a name, extra fields, a comment): zipfile reads it whole.
_CENTRAL_BYTES_PER_FILE = 8 << 10
#: The longest name a record's file or an archive's member may have (PATH_MAX).
_MAX_NAME = 4096
#: The most folder levels a name may have: a deep tree costs every walk over
#: the checkout, and no repository needs more.
MAX_DEPTH = 64
#: What repo2docker calls the archive it unpacks.
_ZIP_SUFFIX = ".zip"


class RecordError(UserError):
    """A record that cannot be fetched: not found, its service unreachable or
    answering otherwise than its API, or past the site's bounds. Not a
    :class:`~hpcbinder.errors.RepoUnreachable`: that one means "perhaps
    private, try with the researcher's own credentials"
    (:mod:`hpcbinder.images.private`), and a record is fetched without
    credentials by anyone alike, so its reason is said as it is."""


class FetchBoundExceeded(RecordError):
    """A fetch wrote more, or took longer, than the site allows."""


@dataclass(frozen=True)
class Bounds:
    """The most disk, files and time one record fetch may take."""

    max_bytes: int
    max_files: int
    seconds: float
    bytes_setting: str = "repos.max_fetch_mb"
    files_setting: str = "repos.max_fetch_files"
    seconds_setting: str = "repos.fetch_timeout_seconds"


@dataclass
class Budget:
    """What one fetch has used so far of its :class:`Bounds`."""

    bounds: Bounds
    what: str
    written: int = 0
    files: int = 0
    deadline: float = field(default=0.0)

    def __post_init__(self) -> None:
        if not self.deadline:
            self.deadline = time.monotonic() + self.bounds.seconds

    def remaining_seconds(self) -> float:
        """Seconds left, after :meth:`check_time`."""
        self.check_time()
        return max(self.deadline - time.monotonic(), 0.001)

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise FetchBoundExceeded(
                f"{self.what} took longer than {self.bounds.seconds:g} s and was stopped "
                f"({self.bounds.seconds_setting})"
            )

    def add_bytes(self, count: int) -> None:
        self.written += count
        if self.written > self.bounds.max_bytes:
            raise FetchBoundExceeded(
                f"{self.what} takes more than {self.bounds.max_bytes // (1 << 20)} MB on disk "
                f"(downloads and unpacked files) and was stopped ({self.bounds.bytes_setting})"
            )
        self.check_time()

    def add_file(self) -> None:
        self.files += 1
        self.check_files(self.files)

    def check_files(self, count: int) -> None:
        if count > self.bounds.max_files:
            raise FetchBoundExceeded(
                f"{self.what} has more than {self.bounds.max_files} files and was stopped "
                f"({self.bounds.files_setting})"
            )


def _refused(name: str, problem: str) -> RepoConfigError:
    shown = name if name.isprintable() and len(name) <= 200 else repr(name[:200])
    return RepoConfigError(shown, f"{problem}; the record cannot be unpacked safely")


def member_path(name: str) -> tuple[str, ...] | None:
    """The parts of a relative path ``name`` from a record (a file's name, an
    archive member's), ``.`` and empty parts dropped; None for a name
    under a ``.git`` part (dropped). :class:`RepoConfigError` for an
    absolute name, a ``..`` part, a backslash, a character that is not
    printable, a part longer than 255 bytes, more than :data:`MAX_DEPTH`
    parts, or nothing left."""
    if len(name.encode("utf-8", "surrogateescape")) > _MAX_NAME:
        raise _refused(name, f"a name longer than {_MAX_NAME} bytes")
    if name.startswith("/"):
        raise _refused(name, "an absolute path")
    if "\\" in name:
        raise _refused(name, "a backslash in a name")
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    for part in parts:
        if part == "..":
            raise _refused(name, "a .. part in a name")
        if not part.isprintable():
            raise _refused(name, "a control or unprintable character in a name")
        if len(part.encode("utf-8", "surrogateescape")) > 255:
            raise _refused(name, "a name part longer than 255 bytes")
    if not parts:
        raise _refused(name, "an empty name")
    if len(parts) > MAX_DEPTH:
        raise _refused(name, f"a name more than {MAX_DEPTH} folders deep")
    if any(part.lower() == ".git" for part in parts):
        return None
    return parts


def _is_top(name: str) -> bool:
    """Whether a folder member is the archive's own top (``tar c .`` writes ``./``)."""
    return name in (".", "./")


class Tree:
    """The folder an extraction (or a record's downloads) fills: each name
    once, files only below folders, every file and folder counted."""

    def __init__(self, root: Path, budget: Budget) -> None:
        self.root = root
        self.budget = budget
        self.kinds: dict[tuple[str, ...], bool] = {(): True}  # parts -> is a folder

    def folder(self, name: str, parts: tuple[str, ...]) -> None:
        if self.kinds.get(parts) is True:  # made already (the common case)
            return
        for depth in range(1, len(parts) + 1):
            here = parts[:depth]
            kind = self.kinds.get(here)
            if kind is False:
                raise _refused(name, "a name that appears twice, as a file and a folder")
            if kind is None:
                self.budget.add_file()
                os.mkdir(self.root.joinpath(*here), 0o755)
                self.kinds[here] = True

    def place(self, name: str, parts: tuple[str, ...]) -> Path:
        """Where the new file ``name`` goes: its folders made, the name
        claimed once; the caller creates the file (and counts it)."""
        if parts in self.kinds:
            raise _refused(name, "a name that appears twice")
        self.folder(name, parts[:-1])
        self.kinds[parts] = False
        return self.root.joinpath(*parts)

    def file(self, name: str, parts: tuple[str, ...], source: IO[bytes], executable: bool) -> None:
        path = self.place(name, parts)
        self.budget.add_file()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        handle = os.open(path, flags, 0o755 if executable else 0o644)
        with os.fdopen(handle, "wb") as out:
            copy(source, out, self.budget)


def copy(source: IO[bytes] | io.BufferedIOBase, out: IO[bytes], budget: Budget) -> None:
    """``source`` into ``out``, every chunk counted against ``budget``."""
    while chunk := source.read(CHUNK):
        budget.add_bytes(len(chunk))
        out.write(chunk)


def extract(archive: Path, dest: Path, budget: Budget) -> None:
    """The zip or tar (plain, gzip, bzip2, xz) ``archive`` into the new
    folder ``dest``: see the module's docstring for what is refused."""
    os.mkdir(dest, 0o755)
    tree = Tree(dest, budget)
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, tree)
        else:
            _extract_tar(archive, tree)
    except (
        zipfile.BadZipFile,
        tarfile.TarError,
        EOFError,
        lzma.LZMAError,
        zlib.error,
        struct.error,
        ValueError,
    ) as exc:
        raise RepoConfigError(
            archive.name, f"not an archive that can be unpacked ({exc})"
        ) from None
    except (RuntimeError, NotImplementedError) as exc:  # encrypted, unknown compression
        raise RepoConfigError(archive.name, f"cannot be unpacked ({exc})") from None
    except OSError as exc:
        reason = exc.strerror or "not an archive that can be unpacked"
        raise RepoConfigError(archive.name, f"cannot be unpacked ({reason})") from None


def _check_zip_members(archive: Path, budget: Budget) -> None:
    """The member-count gate ahead of :class:`zipfile.ZipFile`, which parses
    its whole central directory into memory first: the directory ZipFile
    would read, walked header by header, holds no more entries than the
    bounds' files and no more bytes than they need."""
    with archive.open("rb") as raw:
        end = zipfile._EndRecData(raw)  # type: ignore[attr-defined]  # what ZipFile reads
        if not end:
            raise zipfile.BadZipFile("no end of central directory")
        size, offset = end[zipfile._ECD_SIZE], end[zipfile._ECD_OFFSET]  # type: ignore[attr-defined]
        concat = end[zipfile._ECD_LOCATION] - size - offset  # type: ignore[attr-defined]
        if end[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:  # type: ignore[attr-defined]
            concat -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator  # type: ignore[attr-defined]
        if size > budget.bounds.max_files * _CENTRAL_BYTES_PER_FILE:
            budget.check_files(size // _CENTRAL_BYTES_PER_FILE)  # raises, naming the setting
        raw.seek(concat + offset)
        walked = count = 0
        while walked < size:
            header = raw.read(46)
            if len(header) < 46 or header[:4] != b"PK\x01\x02":
                raise zipfile.BadZipFile("a broken central directory")
            name, extra, comment = struct.unpack("<HHH", header[28:34])
            walked += 46 + name + extra + comment
            raw.seek(name + extra + comment, os.SEEK_CUR)
            count += 1
            budget.check_files(count)


def _extract_zip(archive: Path, tree: Tree) -> None:
    _check_zip_members(archive, tree.budget)
    with zipfile.ZipFile(archive) as opened:
        for info in opened.infolist():
            tree.budget.check_time()
            mode = info.external_attr >> 16
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise _refused(info.filename, "a member that is not a file or folder")
            is_dir = info.filename.endswith("/") or stat.S_ISDIR(mode)
            if is_dir and _is_top(info.filename):
                continue
            parts = member_path(info.filename)
            if parts is None:
                continue
            if is_dir:
                tree.folder(info.filename, parts)
            else:
                with opened.open(info) as source:
                    tree.file(info.filename, parts, source, bool(mode & 0o111))


class _HeaderBound:
    """A file tarfile reads through: no single read past :data:`_MAX_HEADER`
    (a hostile long name or pax header), member data is read in chunks."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > _MAX_HEADER:
            raise tarfile.TarError("a header larger than 1 MB")
        return self.raw.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()


def _decompressed(archive: Path, folder: Path, budget: Budget) -> Path:
    """``archive`` as a plain tar in ``folder`` (decompressed, counted)."""
    with archive.open("rb") as raw:
        magic = raw.read(6)
    openers: dict[bytes, Callable[[Path], io.BufferedIOBase]] = {
        b"\x1f\x8b": gzip.GzipFile,
        b"BZh": bz2.BZ2File,
        b"\xfd7zXZ": lzma.LZMAFile,
    }
    for prefix, opener in openers.items():
        if magic.startswith(prefix):
            plain = folder / ".unpacked.tar"
            try:
                with opener(archive) as source, plain.open("xb") as out:
                    copy(source, out, budget)
            except BaseException:
                plain.unlink(missing_ok=True)
                raise
            return plain
    return archive


def _extract_tar(archive: Path, tree: Tree) -> None:
    plain = _decompressed(archive, archive.parent, tree.budget)
    try:
        with plain.open("rb") as raw:
            bounded = _HeaderBound(raw)
            with tarfile.open(  # type: ignore[call-overload]
                fileobj=bounded, mode="r:", tarinfo=_PaxBoundInfo
            ) as opened:
                for member in _members(opened, tree.budget):
                    if member.isdir() and _is_top(member.name):
                        continue
                    parts = member_path(member.name)
                    if not (member.isreg() or member.isdir()):
                        raise _refused(member.name, "a member that is not a file or folder")
                    if parts is None:
                        continue
                    if member.isdir():
                        tree.folder(member.name, parts)
                        continue
                    source = opened.extractfile(member)
                    if source is None:  # not a regular member after all
                        raise _refused(member.name, "a member that is not a file or folder")
                    with source:
                        tree.file(member.name, parts, source, bool(member.mode & 0o111))
    finally:
        if plain != archive:
            plain.unlink()


def _members(opened: tarfile.TarFile, budget: Budget) -> Iterator[tarfile.TarInfo]:
    """Each member as tarfile reads it (one at a time, not all first):
    every header counts against the bounds' files, also those skipped
    (``.git``) or repeated (a folder), and tarfile keeps none of them."""
    count = 0
    while (member := opened.next()) is not None:
        opened.members.clear()  # type: ignore[attr-defined]  # tarfile keeps all, unused here
        count += 1
        budget.check_files(count)
        budget.check_time()
        yield member


class _PaxBoundInfo(tarfile.TarInfo):
    """A tar header whose pax extended header is refused past
    :data:`MAX_PAX_HEADER` before tarfile parses it."""

    def _proc_pax(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.size > MAX_PAX_HEADER:
            raise tarfile.TarError(f"a pax header larger than {MAX_PAX_HEADER >> 10} kB")
        return super()._proc_pax(tarfile_)  # type: ignore[misc, no-any-return]


def unpack_record(files: Path, dest: Path, budget: Budget, *, inner: tuple[str, ...] = ()) -> None:
    """The record's downloaded ``files`` (a folder) as a repository at the
    new ``dest``, as repo2docker lays it out: a record of a single zip (by
    name and content) is that zip unpacked, its one top-level folder stripped (or, ``inner``
    given, the folder at that path inside it: a HydroShare bag's
    ``ID/data/contents``); any other record is its files as they are."""
    entries = sorted(files.iterdir())
    single = entries[0] if len(entries) == 1 and entries[0].is_file() else None
    if (
        single is not None
        and single.name.lower().endswith(_ZIP_SUFFIX)
        and zipfile.is_zipfile(single)
    ):
        unpack_archive(entries[0], dest, budget, inner=inner)
        return
    if inner:
        raise RepoConfigError(str(files.name), "expected one archive in the record")
    files.rename(dest)


def unpack_archive(
    archive: Path, dest: Path, budget: Budget, *, inner: tuple[str, ...] = ()
) -> None:
    """``archive`` unpacked at the new ``dest``: its one top-level folder
    stripped, or the folder at ``inner``; the archive itself removed."""
    unpacked = archive.parent / ".unpacked"
    extract(archive, unpacked, budget)
    archive.unlink()
    top = unpacked.joinpath(*inner)
    if inner and not (top.is_dir() and not top.is_symlink()):
        raise RepoConfigError(archive.name, f"has no folder {'/'.join(inner)}")
    if not inner:
        entries = list(unpacked.iterdir())
        if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
            top = entries[0]
    top.rename(dest)
    shutil.rmtree(unpacked, ignore_errors=True)


def folder_digest(root: Path) -> str:
    """A hash of every name, kind, executable bit and byte below ``root``:
    a record checkout's tree id (it has no git history), for the env key
    where the build reads the whole repository. Links are hashed as their
    target text, never followed."""
    digest = hashlib.sha256(b"hpcbinder-folder-digest-1\0")
    for folder, dirs, names in foldertree.walk(root):
        relative = os.path.relpath(folder, root).encode("utf-8", "surrogateescape")
        for name in sorted([*dirs, *names]):
            path = os.path.join(folder, name)
            info = os.lstat(path)
            key = relative + b"/" + name.encode("utf-8", "surrogateescape")
            if stat.S_ISLNK(info.st_mode):
                digest.update(b"L\0" + key + b"\0" + os.fsencode(os.readlink(path)) + b"\0")
            elif stat.S_ISDIR(info.st_mode):
                digest.update(b"D\0" + key + b"\0")
            else:
                content = hashlib.sha256()
                with open(path, "rb") as handle:
                    while chunk := handle.read(CHUNK):
                        content.update(chunk)
                executable = b"x" if info.st_mode & 0o111 else b"-"
                digest.update(b"F\0" + key + b"\0" + executable + content.digest())
    return digest.hexdigest()
