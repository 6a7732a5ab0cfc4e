"""Archives from records are unpacked safely by construction.

:func:`hpcbinder.sources.archives.extract` is the one place a zip or tar
becomes files. Over generated hostile archives (absolute names, ``..``,
backslashes, control characters, ``.git``, links, hard links, devices,
FIFOs, duplicate names, a file and a folder of one name, bombs past the
size and file bounds, oversized headers), nothing is written outside the
destination, everything inside is a plain file or folder, the bounds hold
on what is written, and every failure is one user-facing error.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcbinder.errors import RepoConfigError, UserError
from hpcbinder.sources.archives import (
    Bounds,
    Budget,
    FetchBoundExceeded,
    extract,
    member_path,
    unpack_archive,
    unpack_record,
)

MAX_BYTES = 64 * 1024
MAX_FILES = 12
KINDS = ["file", "dir", "symlink", "hardlink", "chardev", "fifo"]
SAFE_PART = st.sampled_from(["a", "b", "data", "x.py", "notebook.ipynb", "ü"])
HOSTILE_PART = st.sampled_from(
    ["..", ".", "", ".git", ".GIT", "a\\..\\b", "a\nb", "\x1b[31m", "\u202e", "c:"]
)
NAME = st.lists(st.one_of(SAFE_PART, HOSTILE_PART), min_size=1, max_size=4).map("/".join)
ABSOLUTE = st.builds(lambda name: "/" + name, NAME)
MEMBER = st.tuples(
    st.one_of(NAME, ABSOLUTE, SAFE_PART),
    st.sampled_from(KINDS),
    st.integers(min_value=0, max_value=MAX_BYTES // 2),
)


def bounds() -> Bounds:
    return Bounds(MAX_BYTES, MAX_FILES, 60.0)


def make_zip(path: Path, members: list[tuple[str, str, int]]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, kind, size in members:
            info = zipfile.ZipInfo(name + ("/" if kind == "dir" else ""))
            modes = {
                "file": stat.S_IFREG | 0o644,
                "dir": stat.S_IFDIR | 0o755,
                "symlink": stat.S_IFLNK | 0o777,
                "hardlink": stat.S_IFREG | 0o755,
                "chardev": stat.S_IFCHR | 0o666,
                "fifo": stat.S_IFIFO | 0o644,
            }
            info.external_attr = modes[kind] << 16
            data = b"" if kind == "dir" else (b"/etc/passwd" if kind == "symlink" else b"0" * size)
            archive.writestr(info, data)


def make_tar(path: Path, members: list[tuple[str, str, int]], mode: str = "w:gz") -> None:
    with tarfile.open(path, mode) as archive:  # type: ignore[call-overload]
        for name, kind, size in members:
            info = tarfile.TarInfo(name)
            info.type = {
                "file": tarfile.REGTYPE,
                "dir": tarfile.DIRTYPE,
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
                "chardev": tarfile.CHRTYPE,
                "fifo": tarfile.FIFOTYPE,
            }[kind]
            info.linkname = "/etc/passwd" if kind in ("symlink", "hardlink") else ""
            info.mode = 0o4755 if kind == "file" else 0o755
            data = b"0" * size if kind == "file" else b""
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def check_result(dest: Path) -> None:
    """Only files and folders, modest modes, no .git, within the bounds."""
    total, count = 0, 0
    for path in dest.rglob("*"):
        info = path.lstat()
        assert stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode), path
        assert stat.S_IMODE(info.st_mode) & ~0o755 == 0, path
        assert ".git" not in {part.lower() for part in path.relative_to(dest).parts}
        count += 1
        total += info.st_size if stat.S_ISREG(info.st_mode) else 0
    assert total <= MAX_BYTES
    assert count <= MAX_FILES


@pytest.mark.parametrize("fmt", ["zip", "tar.gz", "tar", "tar.xz"])
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(members=st.lists(MEMBER, max_size=8))
def test_hostile_archives_write_nothing_outside_and_only_plain_files(
    tmp_path_factory: pytest.TempPathFactory, fmt: str, members: list[tuple[str, str, int]]
) -> None:
    root = tmp_path_factory.mktemp("extract")
    work = root / "work"
    work.mkdir()
    bait = root / "bait"
    bait.write_text("untouched")
    archive = work / f"record.{fmt}"
    if fmt == "zip":
        make_zip(archive, members)
    else:
        make_tar(archive, members, {"tar.gz": "w:gz", "tar": "w", "tar.xz": "w:xz"}[fmt])
    before = snapshot(root)
    dest = work / "dest"
    try:
        extract(archive, dest, Budget(bounds(), "the record"))
    except UserError as exc:
        assert "\n" not in str(exc)
    check_result(dest)
    after = snapshot(root)
    assert {p for p in after - before if not p.startswith("work/dest")} == set()
    assert bait.read_text() == "untouched"
    assert not any(p.is_symlink() for p in root.rglob("*"))


@pytest.mark.parametrize("fmt", ["zip", "tar.gz"])
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    names=st.lists(
        st.lists(SAFE_PART, min_size=1, max_size=3).map("/".join), max_size=6, unique=True
    )
)
def test_clean_archives_unpack_exactly(
    tmp_path_factory: pytest.TempPathFactory, fmt: str, names: list[str]
) -> None:
    """The oracle: an archive of plain, distinct names (no file where
    another has a folder) unpacks to exactly its files."""
    names = [n for n in names if not any(o != n and o.startswith(n + "/") for o in names)]
    root = tmp_path_factory.mktemp("clean")
    archive = root / f"record.{fmt}"
    members = [(name, "file", 10 + index) for index, name in enumerate(names)]
    (make_zip if fmt == "zip" else make_tar)(archive, members)
    extract(archive, root / "dest", Budget(Bounds(MAX_BYTES, 100, 60), "the record"))
    for name, _, size in members:
        assert (root / "dest" / name).read_bytes() == b"0" * size


@pytest.mark.parametrize(
    ("members", "problem"),
    [
        ([("../evil", "file", 1)], "a .. part"),
        ([("/etc/evil", "file", 1)], "an absolute path"),
        ([("a\\..\\..\\evil", "file", 1)], "a backslash"),
        ([("link", "symlink", 0)], "not a file or folder"),
        ([("a", "file", 1), ("a", "file", 2)], "appears twice"),
        ([("a", "file", 1), ("a/b", "file", 2)], "appears twice, as a file and a folder"),
        ([("evil\x1b]52;c;aGk=\x07", "file", 1)], "control or unprintable"),
    ],
)
def test_each_hostile_member_is_refused_by_name(
    tmp_path: Path, members: list[tuple[str, str, int]], problem: str
) -> None:
    archive = tmp_path / "record.zip"
    make_zip(archive, members)
    with pytest.raises(RepoConfigError, match=problem):
        extract(archive, tmp_path / "dest", Budget(bounds(), "the record"))


def test_tar_links_devices_and_hard_links_are_refused(tmp_path: Path) -> None:
    for kind in ("symlink", "hardlink", "chardev", "fifo"):
        archive = tmp_path / f"{kind}.tar"
        make_tar(archive, [("x", kind, 0)], "w")
        with pytest.raises(RepoConfigError, match="not a file or folder"):
            extract(archive, tmp_path / kind, Budget(bounds(), "the record"))


def test_a_zip_bomb_stops_at_the_size_bound(tmp_path: Path) -> None:
    """10 MB of zeros compress to a few KB; writing stops at the bound."""
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        out.writestr("zeros", b"\0" * (10 << 20))
    assert archive.stat().st_size < 100_000
    with pytest.raises(FetchBoundExceeded, match=r"repos\.max_fetch_mb"):
        extract(archive, tmp_path / "dest", Budget(bounds(), "the record"))
    assert sum(p.stat().st_size for p in (tmp_path / "dest").rglob("*")) <= MAX_BYTES


def test_a_gzip_bomb_stops_while_decompressing(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.tar.gz"
    make_tar(archive, [("zeros", "file", 10 << 20)])
    with pytest.raises(FetchBoundExceeded, match=r"repos\.max_fetch_mb"):
        extract(archive, tmp_path / "dest", Budget(Bounds(1 << 20, 10, 60), "the record"))
    assert not (tmp_path / ".unpacked.tar").exists()


def test_too_many_files_stop_at_the_file_bound(tmp_path: Path) -> None:
    archive = tmp_path / "many.zip"
    make_zip(archive, [(f"f{i}", "file", 1) for i in range(MAX_FILES + 1)])
    with pytest.raises(FetchBoundExceeded, match=r"repos\.max_fetch_files"):
        extract(archive, tmp_path / "dest", Budget(bounds(), "the record"))


def test_an_oversized_tar_header_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """A GNU long name of 2 MB: tarfile would read it whole into memory."""
    archive = tmp_path / "longname.tar"
    make_tar(archive, [("a" * (2 << 20), "file", 1)], "w")
    with pytest.raises(RepoConfigError, match="not an archive that can be unpacked"):
        extract(archive, tmp_path / "dest", Budget(Bounds(8 << 20, 10, 60), "the record"))


def test_time_bound(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    make_zip(archive, [("a", "file", 1)])
    budget = Budget(Bounds(MAX_BYTES, MAX_FILES, 1), "the record", deadline=1.0)
    with pytest.raises(FetchBoundExceeded, match=r"repos\.fetch_timeout_seconds"):
        extract(archive, tmp_path / "dest", budget)


def test_git_folders_are_dropped() -> None:
    assert member_path("repo/.git/config") is None
    assert member_path("./repo//a.py") == ("repo", "a.py")


def test_a_single_zip_is_unpacked_and_its_top_folder_stripped(tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    make_zip(files / "repo.zip", [("repo-1.0/a.py", "file", 3), ("repo-1.0/d/b", "file", 2)])
    unpack_record(files, tmp_path / "repo", Budget(bounds(), "the record"))
    assert snapshot(tmp_path / "repo") == {"a.py", "d", "d/b"}


def test_several_files_are_kept_as_they_are(tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    make_zip(files / "repo.zip", [("a.py", "file", 3)])
    (files / "README").write_text("x")
    unpack_record(files, tmp_path / "repo", Budget(bounds(), "the record"))
    assert snapshot(tmp_path / "repo") == {"README", "repo.zip"}


def test_an_inner_folder_is_taken(tmp_path: Path) -> None:
    archive = tmp_path / "bag.zip"
    make_zip(archive, [("id/bagit.txt", "file", 1), ("id/data/contents/a.py", "file", 3)])
    unpack_archive(
        archive, tmp_path / "repo", Budget(bounds(), "bag"), inner=("id", "data", "contents")
    )
    assert snapshot(tmp_path / "repo") == {"a.py"}
    assert not archive.exists()
    assert os.listdir(tmp_path) == ["repo"]


def test_corrupt_and_deep_archives_are_one_line(tmp_path: Path) -> None:
    """Corrupt compressed data (zlib's own error), a name past PATH_MAX and
    a deep name: one line each, never a traceback or quadratic work."""
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w", zipfile.ZIP_DEFLATED) as out:
        out.writestr("a", b"0" * 5000)
    data = bytearray(good.read_bytes())
    data[31] = 0xFF  # the deflated member's first byte (after its 30+1-byte header)
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(bytes(data))
    deep = tmp_path / "deep.zip"
    make_zip(deep, [("a/" * 2000 + "f", "file", 1)])
    long = tmp_path / "long.zip"
    make_zip(long, [("a" * 5000, "file", 1)])
    for archive in (corrupt, deep, long):
        with pytest.raises(UserError) as caught:
            extract(archive, tmp_path / f"{archive.stem}-dest", Budget(bounds(), "the record"))
        assert "\n" not in str(caught.value)


def test_a_single_file_named_zip_that_is_not_one_is_kept(tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    (files / "data.zip").write_text("not a zip")
    unpack_record(files, tmp_path / "repo", Budget(bounds(), "the record"))
    assert (tmp_path / "repo" / "data.zip").read_text() == "not a zip"


def test_a_tarball_of_dot_keeps_its_files(tmp_path: Path) -> None:
    """``tar czf record.tgz .`` starts with a ./ folder member."""
    archive = tmp_path / "dot.tar.gz"
    make_tar(archive, [(".", "dir", 0), ("./a.py", "file", 3), ("./d", "dir", 0)])
    extract(archive, tmp_path / "dest", Budget(bounds(), "the record"))
    assert snapshot(tmp_path / "dest") == {"a.py", "d"}
