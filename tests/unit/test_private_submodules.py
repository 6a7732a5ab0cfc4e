"""A private build lends the researcher's rights to the repository she
named, not to the submodules its author chose: a public repository whose
submodule is alice's mode-700 repository (or one on another host) is not
fetched again as her when the build server cannot fetch that submodule
(one line, not 'no access'), and fetching as her takes submodules from the
repository's own origin only. A failed fetch leaves no empty folder in the
checkout cache."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcbinder.config import RepoPolicy
from hpcbinder.errors import RepoNotAllowed
from hpcbinder.images import private, server
from hpcbinder.seams import git
from hpcbinder.sources import providers
from tests.githttp import git_http_server
from tests.repohelpers import local_spec

LIMITS = git.FetchLimits(10, 30.0, "repos.max_fetch_mb", "repos.fetch_timeout_seconds")
IDENTITY = ["-c", "user.name=t", "-c", "user.email=t@example.org"]
TOKEN = "tok-alice"  # noqa: S105
SECRET = "alices private data"  # noqa: S105


def run(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *IDENTITY, *args], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def commit_of(repo: Path, files: dict[str, str]) -> str:
    run(repo.parent, "init", "-q", "-b", "main", str(repo))
    for name, text in files.items():
        (repo / name).write_text(text)
    run(repo, "add", "-A")
    run(repo, "commit", "-q", "-m", "one")
    return run(repo, "rev-parse", "HEAD")


def with_submodule(repo: Path, url: str, pinned: str) -> str:
    """``repo`` made, pinning ``pinned`` of ``url`` at ``sub``."""
    commit_of(repo, {"postBuild": "cat sub/data\n"})
    (repo / ".gitmodules").write_text(f'[submodule "sub"]\n\tpath = sub\n\turl = {url}\n')
    run(repo, "update-index", "--add", "--cacheinfo", f"160000,{pinned},sub")
    run(repo, "add", ".gitmodules")
    run(repo, "commit", "-q", "-m", "sub")
    return run(repo, "rev-parse", "HEAD")


@pytest.fixture
def world() -> Iterator[Path]:
    """An open folder (as a shared filesystem's) holding alice's mode-700
    repository ``secret``."""
    base = Path(tempfile.mkdtemp(prefix="hpcbinder-subm-"))
    base.chmod(0o755)
    try:
        secret = base / "home" / "secret"
        secret.parent.mkdir()
        commit_of(secret, {"data": SECRET})
        secret.parent.chmod(0o700)
        yield base
    finally:
        shutil.rmtree(base)


def test_a_public_repository_whose_submodule_the_server_cannot_fetch_is_not_no_access(
    world: Path,
) -> None:
    """Was kind 'no-access' (the submodule's NotOpenToAll), on which her
    CLI fetched bob's repository again as her, her data in his build."""
    secret = world / "home" / "secret"
    bobs = world / "bob" / "public"
    bobs.parent.mkdir()
    with_submodule(bobs, f"file://{secret}", run(secret, "rev-parse", "HEAD"))
    cache = world / "cache"
    cache.mkdir()
    policy = RepoPolicy(protocols=["file"], local_roots=[world], cache_dir=cache)
    spec = local_spec(bobs, "main")
    providers.check_shareable(spec, policy)  # bob's repository is open to all
    provider = providers.parse_spec(spec, policy)
    with pytest.raises(RepoNotAllowed) as caught:
        providers.checkout(provider, provider.resolve(), cache)
    assert not private.no_access(caught.value)
    event = server._failure(spec, policy, caught.value)
    assert event.kind == "user" and "\n" not in event.message
    assert "submodule of" in event.message
    assert list(cache.iterdir()) == []  # no empty URL folder left behind


@pytest.fixture
def served(world: Path) -> Iterator[tuple[str, Path]]:
    project = world / "served"
    project.mkdir()
    with git_http_server(project, "alice", TOKEN) as url:
        yield url, project


def fetch_as_alice(url: str, commit: str, dest: Path, origin: str) -> None:
    with git.own_credentials(git.OwnCredentials(TOKEN, "alice", origin)):
        git.fetch_commit(
            url, commit, dest, protocols=["http", "file"], limits=LIMITS, policy=lambda _u: None
        )


def test_as_her_submodules_come_from_the_repositorys_own_origin_only(
    world: Path, served: tuple[str, Path]
) -> None:
    """A file:// submodule (her files) of a repository on a git host is
    refused, one line; a submodule on the same host is fetched."""
    url, project = served
    secret = world / "home" / "secret"
    work = world / "work"
    head = with_submodule(work, f"file://{secret}", run(secret, "rev-parse", "HEAD"))
    run(world, "clone", "-q", "--bare", str(work), str(project / "hostile.git"))
    dest = world / "out" / "hostile"
    with pytest.raises(git.SubmoduleError, match="own host") as caught:
        fetch_as_alice(f"{url}/hostile.git", head, dest, url)
    assert "\n" not in str(caught.value)
    assert not dest.exists()
    # The same host's submodule (a relative URL) is hers to fetch.
    run(world, "clone", "-q", "--bare", str(secret), str(project / "lib.git"))
    friendly = world / "friendly"
    head = with_submodule(friendly, "../lib.git", run(secret, "rev-parse", "HEAD"))
    run(world, "clone", "-q", "--bare", str(friendly), str(project / "friendly.git"))
    fetch_as_alice(f"{url}/friendly.git", head, dest, url)
    assert (dest / "sub" / "data").read_text() == SECRET


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("HTTPS://Git.Example.org:443/a/b.git", "https://git.example.org"),
        ("https://u@git.example.org:8443/x", "https://git.example.org:8443"),
        ("http://a@b.example@evil.example/x", None),
        ("https://git.example.org:99999/x", None),
        ("git@github.com:org/repo.git", "ssh://github.com"),
        ("ssh://git@github.com:22/org/repo", "ssh://github.com"),
        ("git+ssh://github.com/org/repo", "ssh://github.com"),
        ("file:///home/alice/secret", "file://"),
        ("FILE:/home/alice/secret", "file://"),
        ("/home/alice/secret", "file://"),
        ("a@b@github.com:x", None),
    ],
)
def test_origins(url: str, expected: str | None) -> None:
    assert git.origin(url) == expected
