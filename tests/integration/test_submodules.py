"""Git submodules are fetched at the commits the repository pins, each URL
(relative ones resolved against the parent's) judged by the site's policy
first; the env key covers them where the build reads them."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcbinder.config import Site
from hpcbinder.errors import RepoNotAllowed
from hpcbinder.render import pipeline
from tests.conftest import SHARED_SCRATCH
from tests.repohelpers import git, local_spec, site_for_tests


@pytest.fixture
def root() -> Iterator[Path]:
    """A local root below the dev site's test folder, open to every account."""
    folder = SHARED_SCRATCH / f"submodules-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True, mode=0o755)
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def new_repo(path: Path, files: dict[str, str]) -> list[str]:
    """A repository at ``path`` with one commit per files mapping; the commits."""
    git(path.parent, "init", "-q", "-b", "main", path.name)
    commits = []
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
        git(path, "add", "-A")
        git(path, "commit", "-q", "-m", f"{name}: {text.strip()}")
        commits.append(git(path, "rev-parse", "HEAD"))
    return commits


def pin(parent: Path, path: str, url: str, commit: str) -> None:
    """Record submodule ``path`` (``url`` in .gitmodules) at ``commit`` and commit."""
    git(parent, "config", "-f", ".gitmodules", f"submodule.{path}.path", path)
    git(parent, "config", "-f", ".gitmodules", f"submodule.{path}.url", url)
    git(parent, "update-index", "--add", "--cacheinfo", f"160000,{commit},{path}")
    git(parent, "add", ".gitmodules")
    git(parent, "commit", "-q", "-m", f"pin {path} at {commit[:8]}")


def prepared(site: Site, repo: Path) -> pipeline.Prepared:
    return pipeline.prepare(local_spec(repo), site)


def test_submodules_are_fetched_at_their_pinned_commits(root: Path) -> None:
    data = root / "data"
    first, _ = new_repo(data, {"values.txt": "one\n", "more.txt": "two\n"})
    nested = root / "nested"
    (inner,) = new_repo(nested, {"inner.txt": "inner\n"})
    pin(data, "deps/nested", "../nested", inner)  # a submodule of the submodule
    pinned_data = git(data, "rev-parse", "HEAD")
    repo = root / "analysis"
    new_repo(repo, {"requirements.txt": "six\n"})
    pin(repo, "data", "../data", first)  # relative: resolved against the parent's URL
    pin(repo, "latest", f"file://{data}", pinned_data)
    checkout = prepared(site_for_tests(root), repo).checkout
    assert (checkout / "data" / "values.txt").read_text() == "one\n"
    assert not (checkout / "data" / "more.txt").exists()  # the pinned commit, not HEAD
    assert (checkout / "latest" / "more.txt").read_text() == "two\n"
    assert (checkout / "latest" / "deps" / "nested" / "inner.txt").read_text() == "inner\n"


def test_a_binder_folder_in_a_submodule_is_read_and_keyed(root: Path) -> None:
    env = root / "env"
    (old,) = new_repo(env, {"requirements.txt": "six==1.15.0\n"})
    (env / "requirements.txt").write_text("six==1.16.0\n")
    git(env, "commit", "-q", "-am", "newer six")
    new = git(env, "rev-parse", "HEAD")
    repo = root / "analysis"
    new_repo(repo, {"notebook.py": "print(1)\n"})
    pin(repo, "binder", "../env", old)
    site = site_for_tests(root)
    before = prepared(site, repo)
    assert before.plan.buildpack == "python"
    assert "binder/requirements.txt" in before.plan.env_files
    git(repo, "update-index", "--cacheinfo", f"160000,{new},binder")
    git(repo, "commit", "-q", "-m", "newer environment")
    assert prepared(site, repo).rendered.env_key != before.rendered.env_key


def test_a_submodule_pin_changes_the_key_where_the_build_reads_the_repo(root: Path) -> None:
    data = root / "data"
    first, second = new_repo(data, {"a.txt": "a\n", "b.txt": "b\n"})
    for name, files in (
        ("reads", {"postBuild": "#!/bin/sh\ncat data/a.txt\n"}),
        ("ignores", {"requirements.txt": "six\n"}),
    ):
        repo = root / name
        new_repo(repo, files)
        pin(repo, "data", "../data", first)
        site = site_for_tests(root)
        before = prepared(site, repo).rendered.env_key
        git(repo, "update-index", "--cacheinfo", f"160000,{second},data")
        git(repo, "commit", "-q", "-m", "move the pin")
        after = prepared(site, repo).rendered.env_key
        assert (after != before) is (name == "reads"), name


@pytest.mark.parametrize("where", ["outside-roots", "banned", "protocol"])
def test_a_submodule_the_site_does_not_allow_is_refused(root: Path, where: str) -> None:
    outside = Path(f"/tmp/hpcbinder-submodule-{uuid.uuid4().hex[:8]}")
    outside.mkdir()
    try:
        (secret,) = new_repo(outside / "secret", {"key.txt": "the build account's\n"})
        inside = root / "data"
        (data,) = new_repo(inside, {"a.txt": "a\n"})
        url, commit, settings, named = {
            "outside-roots": (f"file://{outside}/secret", secret, {}, f"{outside}/secret"),
            "banned": ("../data", data, {"repos": {"ban": [".*/data"]}}, f"file://{inside}"),
            "protocol": ("ext::sh -c touch% /tmp/pwned", data, {}, "protocol 'ext'"),
        }[where]
        repo = root / "analysis"
        new_repo(repo, {"notebook.py": "print(1)\n"})
        pin(repo, "sub", url, commit)
        with pytest.raises(RepoNotAllowed) as caught:
            prepared(site_for_tests(root, **settings), repo)
        assert named in str(caught.value), str(caught.value)
        assert "\n" not in str(caught.value)
        assert list((root / "cache").glob("*/" + "?" * 40)) == []  # nothing left
    finally:
        shutil.rmtree(outside, ignore_errors=True)
    assert not Path("/tmp/pwned").exists()


def test_a_submodule_on_this_host_that_not_everyone_may_read_is_refused(root: Path) -> None:
    """The requester is not known while fetching: a private repository of
    the build account's reach is never lent through a submodule."""
    private = root / "private"
    (commit,) = new_repo(private, {"key.txt": "private\n"})
    private.chmod(0o700)
    repo = root / "analysis"
    new_repo(repo, {"notebook.py": "print(1)\n"})
    pin(repo, "sub", "../private", commit)
    with pytest.raises(RepoNotAllowed, match="is not readable by every account"):
        prepared(site_for_tests(root), repo)
    subprocess.run(["chmod", "755", str(private)], check=True)
