"""Specs and refs, resolved against real git repositories (file:// and a
git daemon on loopback)."""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import ip_network
from pathlib import Path
from urllib.parse import quote

import pytest

from hpcbinder.config import RepoPolicy
from hpcbinder.errors import (
    RepoConfigError,
    RepoNotAllowed,
    RepoUnreachable,
    SpecError,
    UnknownRef,
)
from hpcbinder.sources import providers
from hpcbinder.sources.providers import parse_spec
from tests.repohelpers import git, serving_git_daemon

POLICY = RepoPolicy(protocols=["https", "git", "file"], local_roots=[Path("/tmp")])


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """main with two commits, an annotated tag on the first, a feature/x branch."""
    path = tmp_path / "src"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "a.txt").write_text("one\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "one")
    git(path, "tag", "-a", "v1.0", "-m", "release")
    (path / "a.txt").write_text("two\n")
    git(path, "commit", "-q", "-am", "two")
    git(path, "branch", "feature/x", "HEAD~1")
    return path


def file_spec(repo: Path, ref: str) -> str:
    return f"git/{quote('file://' + str(repo), safe='')}/{quote(ref, safe='')}"


@pytest.mark.parametrize(
    ("spec", "url", "ref"),
    [
        ("gh/jupyterhub/binderhub/HEAD", "https://github.com/jupyterhub/binderhub", "HEAD"),
        ("gh/org/repo.git/feature/x", "https://github.com/org/repo", "feature/x"),
        ("gh/org/repo/feature%2Fx", "https://github.com/org/repo", "feature/x"),
        ("gl/group%2Fsub%2Fproject/v1.0", "https://gitlab.com/group/sub/project.git", "v1.0"),
        ("git/https%3A%2F%2Fexample.org%2Fa%2Fb.git/main", "https://example.org/a/b.git", "main"),
    ],
)
def test_binderhub_specs(spec: str, url: str, ref: str) -> None:
    provider = parse_spec(spec, POLICY)
    assert (provider.url, provider.ref) == (url, ref)


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ("gh/org/repo/feature%2Fx", "org/repo @ feature/x"),
        ("gl/group%2Fsub%2Fproject/v1.0", "group/sub/project @ v1.0"),
        ("git/https%3A%2F%2Fexample.org%2Fa%2Fb.git/main", "example.org/a/b @ main"),
        # Another server's jupyter/notebook is named with its host.
        (
            "git/https%3A%2F%2Fevil.example%2Fjupyter%2Fnotebook/main",
            "evil.example/jupyter/notebook @ main",
        ),
        ("local/%2Ftmp%2Fwork%2Fanalysis/HEAD", "work/analysis @ HEAD"),
    ],
)
def test_a_repository_is_named_for_people_not_by_its_escaped_spec(spec: str, name: str) -> None:
    assert parse_spec(spec, POLICY).readable_name() == name


def test_a_query_cannot_pass_for_a_repository_path() -> None:
    """``x.git?/numpy/numpy`` would read as numpy's name: refused at once."""
    with pytest.raises(SpecError, match=r"no %-escapes, \?"):
        parse_spec("git/https%3A%2F%2Fevil.example%2Fx.git%3F%2Fnumpy%2Fnumpy/main", POLICY)


def test_site_hosts_replace_public_ones() -> None:
    policy = RepoPolicy(github_host="github.example.edu")
    assert parse_spec("gh/o/r/main", policy).url == "https://github.example.edu/o/r"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "zz/org/repo/main",
            "unknown provider 'zz' (this site knows: ckan, dataverse, doi, figshare, gh, "
            "gist, git, gl, hydroshare, local, swhid, zenodo)",
        ),
        ("gh/org/repo", "malformed spec: expected gh/<org>/<repo>/<ref>"),
        ("gh", "malformed spec 'gh'"),
        ("gh/org/re po/main", "only a URL's characters"),
        ("gh/org/repo/main;reboot", "invalid ref 'main;reboot'"),
        ("gh/org/repo/a..b", "invalid ref 'a..b'"),
        ("gh/org/repo/-upload-pack=x", "invalid ref '-upload-pack=x'"),
        ("gh/org/repo/x%0Ay", "invalid ref 'x\\ny'"),
        ("git/--upload-pack%3Dtouch%20x/main", "invalid repository URL"),
        ("gl/..%2Fsecret/main", "invalid GitLab project path"),
    ],
)
def test_malformed_specs(spec: str, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(spec, POLICY)
    assert message in str(caught.value)


def test_refs_resolve_like_binderhub(repo: Path) -> None:
    head = git(repo, "rev-parse", "HEAD")
    first = git(repo, "rev-parse", "HEAD~1")

    def resolve(ref: str) -> str:
        return parse_spec(file_spec(repo, ref), POLICY).resolve().commit

    assert resolve("HEAD") == head
    assert resolve("main") == head
    assert resolve("v1.0") == first  # the annotated tag, peeled to its commit
    assert resolve("feature/x") == first
    assert resolve(first) == first  # a full SHA passes through
    assert resolve(first[:8]) == first  # a short SHA is looked up
    with pytest.raises(UnknownRef, match="has no branch, tag or commit 'nope'"):
        resolve("nope")
    with pytest.raises(UnknownRef):
        resolve("abcdef12")


def test_unreachable_repository(tmp_path: Path) -> None:
    with pytest.raises(RepoUnreachable, match="cannot list refs"):
        parse_spec(file_spec(tmp_path / "missing", "main"), POLICY).resolve()


def test_site_allow_ban_and_protocols(repo: Path) -> None:
    url = f"file://{repo}"
    banned = RepoPolicy(
        protocols=["file"], local_roots=[Path("/tmp")], ban=[f"file://{repo.parent}/.*"]
    )
    with pytest.raises(RepoNotAllowed, match="is banned"):
        parse_spec(file_spec(repo, "main"), banned).resolve()
    allow_other = RepoPolicy(
        protocols=["file"], local_roots=[Path("/tmp")], allow=[r"https://github\.com/ours/.*"]
    )
    with pytest.raises(RepoNotAllowed, match="not on this site's allow list"):
        parse_spec(file_spec(repo, "main"), allow_other).resolve()
    no_file = RepoPolicy(protocols=["https"])
    with pytest.raises(RepoNotAllowed, match="protocol 'file' is not allowed"):
        parse_spec(file_spec(repo, "main"), no_file).resolve()
    allowed = RepoPolicy(protocols=["file"], local_roots=[Path("/tmp")], allow=[f"{url}"])
    assert parse_spec(file_spec(repo, "main"), allowed).resolve().url == url


def test_local_specs_only_below_site_roots(repo: Path, tmp_path: Path) -> None:
    spec = f"local/{quote(str(repo), safe='')}/main"
    with pytest.raises(RepoNotAllowed, match="not below this site's local repository roots"):
        parse_spec(spec, RepoPolicy())
    escape = f"local/{quote(str(tmp_path / 'root' / '..' / 'src'), safe='')}/main"
    with pytest.raises(SpecError, match=r"no \. or \.\. part"):
        parse_spec(escape, RepoPolicy(local_roots=[tmp_path / "root"]))
    provider = parse_spec(spec, RepoPolicy(local_roots=[tmp_path]))
    assert provider.resolve().commit == git(repo, "rev-parse", "main")


def test_checkout_is_exactly_the_commit_and_cached(repo: Path, tmp_path: Path) -> None:
    provider = parse_spec(file_spec(repo, "v1.0"), POLICY)
    resolved = provider.resolve()
    first = providers.checkout(provider, resolved, tmp_path / "cache")
    assert (first / "a.txt").read_text() == "one\n"
    assert git(first, "rev-parse", "HEAD") == resolved.commit
    (first / "marker").write_text("kept")
    again = providers.checkout(provider, resolved, tmp_path / "cache")
    assert again == first and (again / "marker").exists()  # no second fetch
    leftovers = [p.name for p in first.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


@pytest.fixture
def git_daemon(repo: Path) -> Iterator[str]:
    """``git daemon`` serving ``repo``'s folder on loopback; yields the git:// URL."""
    with serving_git_daemon(repo.parent) as base:
        yield f"{base}/{repo.name}"


def test_git_protocol_over_loopback(git_daemon: str, repo: Path, tmp_path: Path) -> None:
    spec = f"git/{quote(git_daemon, safe='')}/feature%2Fx"
    with pytest.raises(RepoNotAllowed, match=r"not a public address.*repos\.internal_networks"):
        parse_spec(spec, POLICY).resolve()  # loopback, which this site does not list
    listed = POLICY.model_copy(update={"internal_networks": [ip_network("127.0.0.1/32")]})
    provider = parse_spec(spec, listed)
    resolved = provider.resolve()
    assert resolved.commit == git(repo, "rev-parse", "feature/x")
    checkout = providers.checkout(provider, resolved, tmp_path / "cache")
    assert (checkout / "a.txt").read_text() == "one\n"
    with pytest.raises(RepoNotAllowed, match="protocol 'git' is not allowed"):
        parse_spec(spec, RepoPolicy(protocols=["https"])).resolve()


def test_a_checkout_with_a_link_outside_is_refused_before_it_is_cached(
    repo: Path, tmp_path: Path
) -> None:
    """The refused tree is never published into the cache: the old code
    renamed it into place first, so it stayed there for every later read."""
    (repo / "key").symlink_to("/etc/passwd")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "a link out")
    provider = parse_spec(file_spec(repo, "main"), POLICY)
    resolved = provider.resolve()
    cache = tmp_path / "cache"
    for _attempt in range(2):  # refused each time, never served from the cache
        with pytest.raises(RepoConfigError, match="links to /etc/passwd, outside the repository"):
            providers.checkout(provider, resolved, cache)
    assert not list(cache.rglob(resolved.commit)), list(cache.rglob("*"))
