"""A record fetch's guards hold for every value a hostile record can name.

Review findings on the archive providers, each closed where its rule is
enforced: the build account's connections (every one checked, a proxy's
own aside), and what a record's JSON can make the build server do.
"""

from __future__ import annotations

import errno
import io
import json
import os
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcbinder.cli import doctor
from hpcbinder.config import RepoPolicy
from hpcbinder.errors import RepoConfigError, RepoNotAllowed, SpecError
from hpcbinder.images import quota
from hpcbinder.sources.archives import (
    MAX_DEPTH,
    MAX_PAX_HEADER,
    Bounds,
    Budget,
    FetchBoundExceeded,
    extract,
    folder_digest,
    member_path,
)
from hpcbinder.sources.checkout import check_links
from hpcbinder.sources.download import Session
from hpcbinder.sources.providers import PROVIDERS, RepoProvider, parse_spec
from hpcbinder.sources.records import RECORD_PROVIDERS
from tests.loopback import QuietHandler, serving_on_loopback


class _JsonHandler(QuietHandler):
    """Answers every GET with JSON naming the request line's target (a
    proxy sees an absolute URL, an origin server a path)."""

    def do_GET(self) -> None:
        body = json.dumps({"target": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def loopback() -> Iterator[str]:
    with serving_on_loopback(_JsonHandler) as url:
        yield url


def _ask(url: str) -> object:
    policy = RepoPolicy(protocols=["http"])  # no internal_networks
    with Session(policy, Budget(Bounds(1 << 20, 10, 10), "a record"), "the setting") as session:
        return session.json(url, "a record")


def test_a_no_proxy_host_is_checked_as_a_direct_connection(
    loopback: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """urllib reaches a host no_proxy names directly: a record's URL naming
    localhost (or the metadata address, an internal host) must not skip
    the address check because some proxy is set."""
    port = loopback.rpartition(":")[2]
    monkeypatch.setenv("http_proxy", "http://proxy.invalid:3128")
    monkeypatch.setenv("no_proxy", "localhost,127.0.0.1")
    with pytest.raises(RepoNotAllowed, match=r"localhost is at 127\.0\.0\.1.*internal_networks"):
        _ask(f"http://localhost:{port}/secret")


def test_a_request_through_the_proxy_is_the_proxys_to_judge(
    loopback: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The proxy (here on loopback, which the site does not list) is
    connected to unchecked, as the proxy only: it decides where it goes."""
    monkeypatch.setenv("http_proxy", loopback)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert _ask("http://records.example.org/api") == {"target": "http://records.example.org/api"}
    # The proxy's own host and port named as a record's URL, but not
    # routed through it (no_proxy): a direct connection, checked.
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with pytest.raises(RepoNotAllowed, match=r"127\.0\.0\.1 is at 127\.0\.0\.1"):
        _ask(f"{loopback}/api")


def test_a_name_deeper_than_the_cap_is_refused_naming_it() -> None:
    member_path("/".join(["d"] * MAX_DEPTH))
    with pytest.raises(RepoConfigError, match=r"d/d/.*more than 64 folders deep"):
        member_path("/".join(["d"] * (MAX_DEPTH + 1)))


def test_every_walk_over_a_checkout_survives_a_deep_tree(tmp_path: Path) -> None:
    """A git checkout may be as deep as a path may be long: the symlink
    check, the tree's digest and the quota's count walk it all (Python
    3.11's os.walk raised RecursionError), and still see the link at the
    bottom."""
    root = tmp_path / "repo"
    folders = [root]
    try:
        for _ in range(1050):  # each made alone: pathlib's mkdir(parents=True) recurses too
            folders[-1].mkdir()
            folders.append(folders[-1] / "d")
        deep = folders[-2]
        (deep / "f").write_text("12345")
        assert quota.tree_bytes(root) == 5
        assert len(folder_digest(root)) == 64
        check_links(root)
        (deep / "key").symlink_to("/etc/shadow")
        with pytest.raises(RepoConfigError, match=r"d/d/.*key.*outside the repository"):
            check_links(root)
    finally:  # shutil.rmtree (pytest's cleanup of old temporary folders) recurses as well
        for folder in reversed(folders):
            for name in ("f", "key"):
                (folder / name).unlink(missing_ok=True)
            if folder.is_dir():
                folder.rmdir()


def test_a_folder_that_cannot_be_read_is_refused_not_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """os.walk skipped a folder it could not list, so a link in it went
    unchecked: every walk now fails on it instead."""
    root = tmp_path / "repo"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "key").symlink_to("/etc/shadow")
    real_scandir = os.scandir

    def failing(path: str) -> object:
        if path.endswith("sub"):
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", failing)
    with pytest.raises(RepoConfigError, match=r"sub.*cannot be read to check its links"):
        check_links(root)


def _budget(max_files: int = 12) -> Budget:
    return Budget(Bounds(64 << 20, max_files, 60.0), "fetching a record")


def test_a_zips_members_are_counted_before_zipfile_reads_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ZipFile parses the whole central directory into memory: a zip of
    more entries than the bounds allow is refused before it is opened."""
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w") as writing:
        for index in range(200):
            writing.writestr(f"f{index}", b"")

    def never(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("zipfile.ZipFile parsed a directory past the bounds")

    monkeypatch.setattr(zipfile, "ZipFile", never)
    with pytest.raises(FetchBoundExceeded, match=r"more than 12 files.*repos\.max_fetch_files"):
        extract(archive, tmp_path / "out", _budget())


@pytest.mark.parametrize("names", [["a/"] * 100, [f".git/o{index}" for index in range(100)]])
def test_every_tar_header_counts_skipped_and_repeated_alike(
    tmp_path: Path, names: list[str]
) -> None:
    """A tar of one folder repeated, or of files under .git (dropped),
    created almost nothing but held every header in TarFile.members."""
    archive = tmp_path / "many.tar"
    with tarfile.open(archive, "w") as writing:
        for name in names:
            info = tarfile.TarInfo(name.rstrip("/"))
            info.type = tarfile.DIRTYPE if name.endswith("/") else tarfile.REGTYPE
            writing.addfile(info, io.BytesIO(b""))
    with pytest.raises(FetchBoundExceeded, match=r"repos\.max_fetch_files"):
        extract(archive, tmp_path / "out", _budget())


def test_a_large_pax_header_is_refused_before_tarfile_parses_it(tmp_path: Path) -> None:
    """Unpatched Pythons parse a pax header in quadratic time (CVE-2024-6232)."""
    archive = tmp_path / "pax.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as writing:
        info = tarfile.TarInfo("a")
        info.pax_headers = {"comment": "x" * (MAX_PAX_HEADER + 1)}
        writing.addfile(info, io.BytesIO(b""))
    with pytest.raises(RepoConfigError, match=r"pax header larger than 16 kB"):
        extract(archive, tmp_path / "out", _budget())
    small = tmp_path / "small.tar"
    with tarfile.open(small, "w", format=tarfile.PAX_FORMAT) as writing:
        info = tarfile.TarInfo("a")
        info.pax_headers = {"comment": "x" * 4096}
        writing.addfile(info, io.BytesIO(b""))
    extract(small, tmp_path / "small", _budget())
    assert (tmp_path / "small" / "a").is_file()


assert set(PROVIDERS) >= {cls.prefix for cls in RECORD_PROVIDERS}


def _example_body(cls: type[RepoProvider]) -> str:
    body = quote(cls.spec_example, safe="") if cls.url_encode else cls.spec_example
    return body if cls.label_ref is None else f"{body}/HEAD"


UNPRINTABLE = st.characters(
    blacklist_categories=("Lu", "Ll", "Nd"), blacklist_characters="._~:/?#[]@!$&'()*+,;=%-"
)


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.sampled_from(sorted(PROVIDERS)),
    hostile=st.text(UNPRINTABLE, min_size=1, max_size=3),
    where=st.floats(0, 1),
)
def test_no_provider_takes_a_spec_that_is_not_url_text(
    prefix: str, hostile: str, where: float
) -> None:
    """A spec is stored in the shared store's record and printed by
    ``images ls``: a terminal's escape codes, a newline or a space in it
    is refused by every provider, wherever it stands."""
    body = _example_body(PROVIDERS[prefix])
    index = int(where * len(body))
    with pytest.raises(SpecError, match="only a URL's characters"):
        parse_spec(f"{prefix}/{body[:index]}{hostile}{body[index:]}", RepoPolicy())


def test_a_hydroshare_link_is_its_id_or_its_resource_url_only() -> None:
    resource = "8f7c2f0341ef4180b0dbe97f59130756"
    assert parse_spec(f"hydroshare/{resource}", RepoPolicy()).url.endswith(resource)
    for body in (
        f"\x1b]0;pwned\x07\n#{resource}",
        quote(f"\x1b]0;pwned\x07\n#{resource}", safe=""),
        f"x{resource}",
        f"{resource}{resource}",
    ):
        with pytest.raises(SpecError):
            parse_spec(f"hydroshare/{body}", RepoPolicy())


def test_doctor_names_a_python_with_the_quadratic_pax_parser(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The .venv's pyenv 3.11.7 has it; the site's Debian Python is patched."""
    monkeypatch.setattr(tarfile, "_header_length_prefix_re", object(), raising=False)
    assert doctor.check_python().status is doctor.Status.OK
    monkeypatch.delattr(tarfile, "_header_length_prefix_re")
    line = doctor.check_python().line()
    assert line.startswith("✱ python:") and "CVE-2024-6232" in line and "fix:" in line
