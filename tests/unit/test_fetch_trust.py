"""Fetches on the build host trust the site's CA bundle (network.ca_bundle),
as its builds do: git's and records' HTTPS alike, behind a site's TLS proxy
or for its own services' certificates. The old code used the system's CA
store for both, so a site whose services' certificates only its own CA
signs could fetch nothing over HTTPS."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from hpcbinder.config import Site
from hpcbinder.errors import RepoUnreachable
from hpcbinder.sources.archives import Bounds, Budget, RecordError
from hpcbinder.sources.download import Session
from hpcbinder.sources.providers import parse_spec
from tests.githttp import git_https_server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """An HTTPS server on loopback whose certificate only its own CA file
    vouches for: JSON at ``/api``, git repositories at ``/repo.git`` and
    where ``gh/org/repo`` and ``gl/group/project`` links clone them."""
    root = tmp_path_factory.mktemp("trust")
    work, project = root / "work", root / "served"
    identity = ["-c", "user.name=t", "-c", "user.email=t@hpcbinder.invalid"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    subprocess.run(["git", "-C", str(work), *identity, "commit", "-q", "--allow-empty", "-m", "x"],
                   check=True)  # fmt: skip
    for name in ("repo.git", "org/repo", "group/project.git"):
        subprocess.run(["git", "clone", "-q", "--bare", str(work), str(project / name)],
                       check=True)  # fmt: skip
    with git_https_server(project, root, {"/api": {"ok": True}}) as served:
        yield served


def site(ca_bundle: Path | None, **repos: str) -> Site:
    settings: dict[str, Any] = {
        "repos": {"protocols": ["https"], "internal_networks": ["127.0.0.1/32"], **repos},
        "network": {"ca_bundle": str(ca_bundle) if ca_bundle else None},
    }
    return Site.model_validate(settings)


@pytest.mark.parametrize("trusted", [True, False], ids=["site CA", "system store"])
def test_record_downloads_trust_the_sites_ca_bundle(
    served: tuple[str, Path], trusted: bool
) -> None:
    url, cert = served
    policy = site(cert if trusted else None).repos
    with Session(policy, Budget(Bounds(1 << 20, 10, 10), "a record"), "the setting") as session:
        if trusted:
            assert session.json(f"{url}/api", "a record") == {"ok": True}
        else:
            with pytest.raises(RecordError, match="CERTIFICATE_VERIFY_FAILED"):
                session.json(f"{url}/api", "a record")


@pytest.mark.parametrize("trusted", [True, False], ids=["site CA", "system store"])
def test_git_fetches_trust_the_sites_ca_bundle(
    served: tuple[str, Path], trusted: bool, tmp_path: Path
) -> None:
    url, cert = served
    provider = parse_spec(
        f"git/{quote(f'{url}/repo.git', safe='')}/main", site(cert if trusted else None).repos
    )
    if not trusted:
        with pytest.raises(RepoUnreachable, match="certificate"):
            provider.resolve()
        return
    resolved = provider.resolve()
    provider.fetch(resolved, tmp_path / "checkout")
    assert (tmp_path / "checkout" / ".git").is_dir()


def test_a_ca_bundle_that_cannot_be_read_is_one_line(tmp_path: Path) -> None:
    policy = site(tmp_path / "missing.pem").repos
    with pytest.raises(RecordError, match=r"cannot read the site's CA bundle .*network\.ca_bundle"):
        Session(policy, Budget(Bounds(1 << 20, 10, 10), "a record"), "the setting")


@pytest.mark.parametrize("spec", ["gh/org/repo/main", "gl/group%2Fproject/main"])
def test_gh_and_gl_links_clone_from_the_sites_git_hosts(
    served: tuple[str, Path], spec: str, tmp_path: Path
) -> None:
    """gh/ and gl/ links against a loopback HTTPS git host (the site's
    github_host and gitlab_host), the stand-in the e2e test lacks."""
    url, cert = served
    host = url.removeprefix("https://")
    provider = parse_spec(spec, site(cert, github_host=host, gitlab_host=host).repos)
    resolved = provider.resolve()
    provider.fetch(resolved, tmp_path / "checkout")
    assert (tmp_path / "checkout" / ".git").is_dir()
