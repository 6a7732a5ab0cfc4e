"""A token alice gives (HPCBINDER_GIT_TOKEN) reaches the one origin she
names for it (HPCBINDER_GIT_TOKEN_HOST) and no other host that answers
401: not another host, port or scheme, not where a redirect leads, not a
submodule's host. Real git against loopback HTTP servers that record every
Authorization header they are sent (the review's attack: bob's server had
logged ``alice:alice-gitlab-SECRET-123``, for git's unscoped helper)."""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcbinder.seams import git
from tests.githttp import git_http_server
from tests.loopback import QuietHandler

TOKEN = "alice-gitlab-SECRET-123"  # noqa: S105
LIMITS = git.FetchLimits(10, 20.0, "repos.max_fetch_mb", "repos.fetch_timeout_seconds")
IDENTITY = ["-c", "user.name=t", "-c", "user.email=t@example.org"]


class Recorder:
    """A loopback HTTP server on every loopback address (127.0.0.0/8 is one
    host to the kernel, many to git): 401 for every request, but
    ``/to/HOST:PORT/...`` redirects there; remembers (Host, Authorization)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        recorder = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                recorder.seen.append(
                    (self.headers.get("Host", ""), self.headers.get("Authorization", ""))
                )
                if self.path.startswith("/to/"):
                    target = self.path.removeprefix("/to/")
                    self.send_response(302)
                    self.send_header("Location", f"http://{target}")
                else:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_GET

        self.server = ThreadingHTTPServer(("0.0.0.0", 0), Handler)  # noqa: S104 (loopback netns)
        self.port = self.server.server_address[1]

    def leaked(self, allowed_host: str) -> list[str]:
        """Hosts other than ``allowed_host`` that were sent the token (a user
        name with an empty password, from a URL's ``user@``, is not it)."""
        return [
            host for host, auth in self.seen if TOKEN in _decoded(auth) and host != allowed_host
        ]


def _decoded(authorization: str) -> str:
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "basic":
        return authorization
    return base64.b64decode(value + "==").decode(errors="replace")


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Recorder, Recorder]]:
    pair = (Recorder(), Recorder())
    threads = [threading.Thread(target=r.server.serve_forever, daemon=True) for r in pair]
    for thread in threads:
        thread.start()
    try:
        yield pair
    finally:
        for recorder in pair:
            recorder.server.shutdown()
            recorder.server.server_close()


@contextlib.contextmanager
def as_alice(home: Path) -> Iterator[None]:
    """Her environment: a home without config of its own (root's here)."""
    with mock.patch.dict(os.environ, {"HOME": str(home), "XDG_CONFIG_HOME": str(home)}):
        yield


def ls_remote(url: str, origin: str) -> None:
    with (
        git.own_credentials(git.OwnCredentials(TOKEN, "alice", origin)),
        contextlib.suppress(git.GitError),
    ):
        git.ls_remote(url, protocols=["http", "https"], limits=LIMITS)


HOSTS = st.sampled_from(["127.0.0.1", "127.0.0.2", "127.1.2.3", "localhost"])
USERS = st.sampled_from(["", "alice@", "127.0.0.1@", "x@127.0.0.1@"])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    scheme=st.sampled_from(["http", "https"]),
    host=HOSTS,
    which=st.sampled_from([0, 1]),
    user=USERS,
    redirect_to=st.none() | st.tuples(HOSTS, st.sampled_from([0, 1])),
)
def test_no_other_origin_is_sent_her_token(
    servers: tuple[Recorder, Recorder],
    scheme: str,
    host: str,
    which: int,
    user: str,
    redirect_to: tuple[str, int] | None,
) -> None:
    named = f"127.0.0.1:{servers[0].port}"
    origin = f"http://{named}"
    port = servers[which].port
    path = "/repo.git"
    if redirect_to is not None:
        path = f"/to/{redirect_to[0]}:{servers[redirect_to[1]].port}/repo.git"
    elif (scheme, host, which, user) == ("http", "127.0.0.1", 0, ""):
        host = "127.0.0.2"  # her own origin (checked below), not another's
    for recorder in servers:
        recorder.seen.clear()
    with tempfile.TemporaryDirectory() as home, as_alice(Path(home)):
        ls_remote(f"{scheme}://{user}{host}:{port}{path}", origin)
    for recorder in servers:
        assert recorder.leaked(named) == []


def test_her_own_origin_is_sent_it(servers: tuple[Recorder, Recorder], tmp_path: Path) -> None:
    """The control: the test above would pass if no token went anywhere."""
    named = f"127.0.0.1:{servers[0].port}"
    with as_alice(tmp_path):
        ls_remote(f"http://{named}/repo.git", f"http://{named}")
    expected = "Basic " + base64.b64encode(f"alice:{TOKEN}".encode()).decode()
    assert (named, expected) in servers[0].seen


def test_a_submodule_on_another_host_is_not_sent_it(
    servers: tuple[Recorder, Recorder], tmp_path: Path
) -> None:
    """Her repository on her origin (which takes her token) pins a
    submodule on bob's host: fetched as her, bob's server sees no token."""
    project = tmp_path / "served"
    work = tmp_path / "work"
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    (work / "a").write_text("a\n")
    bobs = f"http://127.0.0.2:{servers[1].port}/sub.git"
    (work / ".gitmodules").write_text(f'[submodule "s"]\n\tpath = s\n\turl = {bobs}\n')
    commit = "1" * 40
    subprocess.run(
        ["git", "-C", str(work), "update-index", "--add", "--cacheinfo", f"160000,{commit},s"],
        check=True,
    )
    subprocess.run(["git", "-C", str(work), "add", "a", ".gitmodules"], check=True)
    subprocess.run(["git", "-C", str(work), *IDENTITY, "commit", "-q", "-m", "x"], check=True)
    head = subprocess.run(
        ["git", "-C", str(work), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    project.mkdir()
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(project / "r.git")], check=True)
    (tmp_path / "home").mkdir()
    with (
        git_http_server(project, "alice", TOKEN) as url,
        as_alice(tmp_path / "home"),
        git.own_credentials(git.OwnCredentials(TOKEN, "alice", url)),
        pytest.raises(git.GitError),
    ):
        git.fetch_commit(
            f"{url}/r.git",
            head,
            tmp_path / "dest",
            protocols=["http"],
            limits=LIMITS,
            policy=lambda _url: None,
        )
    assert servers[1].leaked("") == []
