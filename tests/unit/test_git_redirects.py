"""git follows no HTTP redirect: a server on an allowed host could
otherwise send the build server's git to any other (this host's loopback,
the cluster's internal hosts), past the site's allow and ban patterns,
which judged only the URL a link named."""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcbinder.seams import git
from tests.githttp import answer_with_git_http_backend
from tests.loopback import QuietHandler, serving_on_loopback

LOOPBACK = [ipaddress.ip_network("127.0.0.1/32")]

LIMITS = git.FetchLimits(10, 30.0, "repos.max_fetch_mb", "repos.fetch_timeout_seconds")


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(a git host serving ``repo.git``, a host redirecting every request to it)."""
    work, project = tmp_path / "work", tmp_path / "served"
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    identity = ["-c", "user.name=t", "-c", "user.email=t@hpcbinder.invalid"]
    subprocess.run(["git", "-C", str(work), *identity, "commit", "-q", "--allow-empty", "-m", "x"])
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(project / "repo.git")])

    class Git(QuietHandler):
        def do_GET(self) -> None:
            answer_with_git_http_backend(self, project)

        do_POST = do_GET

    with serving_on_loopback(Git) as served:

        class Redirect(QuietHandler):
            def do_GET(self) -> None:
                self.send_response(302)
                self.send_header("Location", f"{served}{self.path}")
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_GET

        with serving_on_loopback(Redirect) as redirecting:
            yield served, redirecting


@pytest.mark.parametrize("status", ["control", "redirected"])
def test_git_follows_no_redirect(hosts: tuple[str, str], status: str) -> None:
    served, redirecting = hosts
    if status == "control":  # the repository itself is there to be read
        assert git.ls_remote(
            f"{served}/repo.git", protocols=["http"], limits=LIMITS, networks=LOOPBACK
        )
        return
    # The old code listed the refs of the host the redirect named.
    with pytest.raises(git.GitError, match=r"302 \(a redirect, which git does not follow here"):
        git.ls_remote(
            f"{redirecting}/repo.git", protocols=["http"], limits=LIMITS, networks=LOOPBACK
        )
