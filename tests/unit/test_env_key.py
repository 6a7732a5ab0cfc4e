"""The env key changes exactly when what the build reads changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcbinder.config import Site
from hpcbinder.render import pipeline
from tests.repohelpers import git, local_spec, make_repo, site_for_tests


def key_at(repo: Path, site: Site) -> str:
    return pipeline.prepare(local_spec(repo, git(repo, "rev-parse", "HEAD")), site).rendered.env_key


def commit(repo: Path, name: str, text: str) -> None:
    (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"change {name}")


def test_notebook_only_commit_keeps_the_key(tmp_path: Path) -> None:
    repo = make_repo("python/requirements", tmp_path / "repo")
    site = site_for_tests(tmp_path)
    before = key_at(repo, site)
    commit(repo, "index.ipynb", '{"cells": ["new analysis"]}\n')
    commit(repo, "notes.md", "# more\n")
    assert key_at(repo, site) == before


def test_requirements_change_changes_the_key(tmp_path: Path) -> None:
    repo = make_repo("python/requirements", tmp_path / "repo")
    site = site_for_tests(tmp_path)
    before = key_at(repo, site)
    commit(repo, "requirements.txt", "six==1.17.0\n")
    assert key_at(repo, site) != before


def test_any_byte_of_an_environment_file_changes_the_key(tmp_path: Path) -> None:
    repo = make_repo("python/requirements", tmp_path / "repo")
    site = site_for_tests(tmp_path)
    keys = {key_at(repo, site)}
    for text in ("six==1.16.0   \n", "six==1.16.0\r\n", "six==1.16.0\n\n"):
        commit(repo, "requirements.txt", text)
        keys.add(key_at(repo, site))
    assert len(keys) == 4


def test_a_crlf_start_cannot_claim_another_repositorys_key(tmp_path: Path) -> None:
    """The image copies ``start`` byte for byte: a repository whose start
    differs only in line endings builds another image, so it must not get
    (and publish under, or reuse) the key of the one with LF endings."""
    site = site_for_tests(tmp_path)
    plain = make_repo("base/start", tmp_path / "plain")
    crlf = make_repo("base/start", tmp_path / "crlf")
    start = (crlf / "start").read_bytes()
    commit(crlf, "start", start.replace(b"\n", b"\r\n").decode())
    assert (crlf / "start").read_bytes() != (plain / "start").read_bytes()
    assert key_at(plain, site) != key_at(crlf, site)


def test_whole_repo_builds_key_on_every_file(tmp_path: Path) -> None:
    repo = make_repo("base/postbuild", tmp_path / "repo")
    site = site_for_tests(tmp_path)
    before = key_at(repo, site)
    commit(repo, "data.csv", "x\n1\n")  # postBuild may read it
    assert key_at(repo, site) != before


def test_same_environment_in_two_repositories_shares_the_key(tmp_path: Path) -> None:
    site = site_for_tests(tmp_path)
    one = make_repo("python/requirements", tmp_path / "one")
    two = make_repo("python/requirements", tmp_path / "two")
    commit(two, "other.ipynb", "{}\n")
    assert key_at(one, site) == key_at(two, site)


def test_site_settings_that_reach_the_build_change_the_key(tmp_path: Path) -> None:
    repo = make_repo("python/requirements", tmp_path / "repo")
    plain = key_at(repo, site_for_tests(tmp_path))
    mirrored = site_for_tests(
        tmp_path, network={"mirrors": {"pypi_index": "https://pypi.example.edu/simple"}}
    )
    other_base = site_for_tests(tmp_path, bases={"default": {"python": "3.12"}})
    assert len({plain, key_at(repo, mirrored), key_at(repo, other_base)}) == 3


def _publish_base(store: Path, name: str, content: bytes, digest: str, stamp: str) -> None:
    """A site base as the build account publishes it: the image under its
    own name, its record (with the digest) beside it, ``NAME.sif`` linking
    to it."""
    bases = store / "bases"
    bases.mkdir(parents=True, exist_ok=True)
    kept = bases / f"{name}-{stamp}.sif"
    kept.write_bytes(content)
    kept.with_suffix(".json").write_text(json.dumps({"name": name, "sha256": digest}))
    link = bases / f"{name}.sif"
    link.unlink(missing_ok=True)
    link.symlink_to(kept.name)


@pytest.mark.parametrize("fixture", ["python/requirements", "dockerfile/mapped"])
def test_moving_the_image_store_keeps_every_key(tmp_path: Path, fixture: str) -> None:
    """The same base (by its recorded digest) at another store path is the
    same environment: a site that moves ``image_store`` keeps its images and
    warm download caches; a rebuilt base (another digest) changes the key."""
    repo = make_repo(fixture, tmp_path / "repo")
    digest = "sha256:" + "ab" * 32
    old, new = tmp_path / "old-store", tmp_path / "moved" / "store"
    for store in (old, new):
        for name in ("default", "py310", "py312"):
            _publish_base(store, name, b"SIF", digest, "20261203T100000")
    before = key_at(repo, site_for_tests(tmp_path, image_store=str(old)))
    assert key_at(repo, site_for_tests(tmp_path, image_store=str(new))) == before
    _publish_base(new, "default", b"SIF2", "sha256:" + "cd" * 32, "20261203T110000")
    assert key_at(repo, site_for_tests(tmp_path, image_store=str(new))) != before
