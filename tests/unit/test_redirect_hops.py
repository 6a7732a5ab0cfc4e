"""An HTTP(S) repository's redirects are followed hop by hop, each hop
judged by the site's repository policy before anything is sent to it (a
renamed GitHub repository's link works); git itself still follows none
(tests/unit/test_git_redirects.py). Real git over HTTP on loopback."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hpcbinder.config import RepoPolicy
from hpcbinder.errors import RepoNotAllowed
from hpcbinder.seams import git
from hpcbinder.sources import redirects
from hpcbinder.sources.providers import GitRepoProvider, parse_spec
from tests.githttp import answer_with_git_http_backend
from tests.loopback import LOOPBACK_NETWORKS, QuietHandler, serving_on_loopback

PROTOCOLS: list[Literal["https", "http", "git", "ssh", "file"]] = [
    "http",
    "https",
    "git",
    "ssh",
    "file",
]


@dataclass
class Host:
    """A loopback git host: ``/new/repo.git`` served by git http-backend,
    ``/old/repo.git`` (the name before a rename) answering 301 to it,
    ``/hop/N/repo.git`` redirecting to ``hop/N-1`` down to ``new``,
    ``/private/repo.git`` answering 401, ``/start/repo.git`` the
    property test's ``location``; every request recorded."""

    url: str = ""
    location: str = ""
    seen: list[tuple[str, str | None]] = field(default_factory=list)  # host/path, Authorization
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Host, Host, str]]:
    """(the git host, another host serving the same repository, its commit)."""
    tmp = tmp_path_factory.mktemp("redirect-hops")
    work, project = tmp / "work", tmp / "served"
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    identity = ["-c", "user.name=t", "-c", "user.email=t@hpcbinder.invalid"]
    subprocess.run(["git", "-C", str(work), *identity, "commit", "-q", "--allow-empty", "-m", "x"])
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(project / "new/repo.git")])
    commit = subprocess.run(
        ["git", "-C", str(work), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    main, other = Host(), Host()

    def handler(host: Host) -> type[QuietHandler]:
        class Handler(QuietHandler):
            def do_GET(self) -> None:
                with host.lock:
                    asked = f"{str(self.headers.get('Host')).lower()}{self.path}"  # as DNS reads it
                    host.seen.append((asked, self.headers.get("Authorization")))
                top, _, rest = self.path.lstrip("/").partition("/")
                if top == "new":
                    answer_with_git_http_backend(self, project)
                    return
                if top == "private":
                    self.answer(401, ("WWW-Authenticate", 'Basic realm="git"'))
                elif top == "old":
                    self.answer(301, ("Location", f"/new/{rest}"))  # relative, as GitHub's
                elif top == "hop":
                    count, _, tail = rest.partition("/")
                    after = f"/hop/{int(count) - 1}/{tail}" if int(count) > 1 else f"/new/{tail}"
                    self.answer(302, ("Location", f"{host.url}{after}"))
                elif top == "start":
                    self.answer(301, ("Location", host.location))
                else:
                    self.answer(404)

            do_POST = do_GET

            def answer(self, status: int, *headers: tuple[str, str]) -> None:
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)  # as given: CRLF and all
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler

    with (
        serving_on_loopback(handler(main)) as main.url,
        serving_on_loopback(handler(other)) as other.url,
    ):
        yield main, other, commit


def provider(url: str, allow: tuple[str, ...] = (), ban: tuple[str, ...] = ()) -> GitRepoProvider:
    policy = RepoPolicy(
        protocols=PROTOCOLS,
        allow=list(allow),
        ban=list(ban),
        internal_networks=LOOPBACK_NETWORKS,
    )
    found = parse_spec(f"git/{quote(url, safe='')}/main", policy)
    assert isinstance(found, GitRepoProvider)
    return found


def test_a_renamed_repositorys_old_link_resolves_and_fetches(
    served: tuple[Host, Host, str], tmp_path: Path
) -> None:
    main, _other, commit = served
    repo = provider(f"{main.url}/old/repo.git")
    resolved = repo.resolve()  # the old code: "returned error: 301 (a redirect, ...)"
    assert (resolved.commit, resolved.url) == (commit, f"{main.url}/old/repo.git")
    repo.fetch(resolved, tmp_path / "checkout")
    assert git.tree_id(tmp_path / "checkout")


def test_a_redirect_to_a_banned_host_is_refused_naming_it(served: tuple[Host, Host, str]) -> None:
    main, other, _commit = served
    main.location = f"{other.url}/new/repo.git/info/refs?service=git-upload-pack"
    banned = other.url.replace(".", r"\.") + "/.*"
    repo = provider(f"{main.url}/start/repo.git", ban=(banned,))
    other.seen.clear()
    with pytest.raises(RepoNotAllowed) as refused:
        repo.resolve()
    message = str(refused.value)
    assert f"redirects to {other.url}/new/repo.git" in message and "repos.ban" in message
    assert "\n" not in message
    assert other.seen == []  # nothing was sent to the banned host


@pytest.mark.parametrize("hops", [redirects.MAX_HOPS, redirects.MAX_HOPS + 1])
def test_at_most_five_redirects_are_followed(served: tuple[Host, Host, str], hops: int) -> None:
    main, _other, commit = served
    repo = provider(f"{main.url}/hop/{hops}/repo.git")
    if hops <= redirects.MAX_HOPS:
        assert repo.resolve().commit == commit
        return
    with pytest.raises(RepoNotAllowed, match=f"redirects more than {redirects.MAX_HOPS} times"):
        repo.resolve()


def test_a_401_ends_resolution_and_the_resolver_sends_no_credentials(
    served: tuple[Host, Host, str],
) -> None:
    main, _other, _commit = served
    url = f"{main.url}/private/repo.git"
    repo = provider(url)
    main.seen.clear()
    mine = git.OwnCredentials(token="s3cret-token", user="alice", token_origin=main.url)  # noqa: S106
    with git.own_credentials(mine):
        assert repo.git_url(url) == url  # git then asks with her credentials, as before
    asked = f"{main.url.removeprefix('http://')}/private/repo.git{redirects.INFO_REFS}"
    assert main.seen == [(asked, None)]


def test_a_fetch_with_her_own_credentials_follows_no_redirect_to_another_host(
    served: tuple[Host, Host, str],
) -> None:
    """Review finding (MEDIUM): a redirect chose where her rights reach. A
    hostile link's host redirected her private retry to another forge's
    bait repository, whose relative submodules then counted as her own
    origin's and were fetched with her token. With her credentials only
    hops within the link's host are followed; anonymously, as before,
    any hop the site allows."""
    main, other, commit = served
    main.location = f"{other.url}/new/repo.git/info/refs?service=git-upload-pack"
    url = f"{main.url}/start/repo.git"
    mine = git.OwnCredentials(token="s3cret-token", user="alice", token_origin=main.url)  # noqa: S106
    other.seen.clear()
    with git.own_credentials(mine), pytest.raises(RepoNotAllowed) as refused:
        provider(url).resolve()
    assert "for another host" in str(refused.value) and other.seen == []
    with git.own_credentials(mine):  # within her link's host: followed
        assert provider(f"{main.url}/old/repo.git").resolve().commit == commit
    assert provider(url).resolve().commit == commit  # anonymously: the site's policy rules


_LOCATIONS = st.sampled_from(
    [
        "/new/repo.git",
        "/allowed/x.git",
        "../../allowed/x.git",
        "/allowed/../new/repo.git",
        "//127.0.0.1:{port}/allowed/x.git",
        "http://127.0.0.1:{port}/allowed/x.git",
        "https://127.0.0.1:{port}/allowed/x.git",
        "http://localhost:{port}/allowed/x.git",
        "http://LOCALHOST:{port}/allowed/x.git",
        "http://127.0.0.1:{other}/allowed/x.git",
        "http://user:pw@127.0.0.1:{port}/allowed/x.git",
        "http://127.0.0.1:{port}@127.0.0.1:{other}/allowed/x.git",
        "http://127.0.0.1:0{port}/allowed/x.git",
        "http://127.0.0.1:99999/allowed/x.git",
        "http://127.0.0.1:{port}:{other}/allowed/x.git",
        "file:///srv/allowed/x.git",
        "ssh://127.0.0.1:{port}/allowed/x.git",
        "git://127.0.0.1:{port}/allowed/x.git",
        "http://127.0.0.1:{port}/allowed/x.git\r\nLocation: http://127.0.0.1:{other}/allowed",
        "http://127.0.0.1:{port}/allowed/%2e%2e/x.git",
        "http://[::1]:{port}/allowed/x.git",
        "http://[::1/allowed/x.git",
        "HTTP://127.0.0.1:{port}/allowed/x.git",
        "http://127.0.0.1:{port}/Allowed/x.git",
        "http://0x7f.0.0.1:{port}/allowed/x.git",
        "",
    ]
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(location=_LOCATIONS, suffix=st.sampled_from([redirects.INFO_REFS, "", "/info/refs"]),
       junk=st.sampled_from(["", "x", "#", " ", "?a=b"]), allow_list=st.booleans())  # fmt: skip
@example(
    location="http://LOCALHOST:{port}/allowed/x.git",
    suffix=redirects.INFO_REFS,
    junk="",
    allow_list=False,
)
@example(
    location="HTTP://127.0.0.1:{port}/allowed/x.git",
    suffix=redirects.INFO_REFS,
    junk="",
    allow_list=False,
)
@example(
    location="http://u:pw@127.0.0.1:{port}/allowed/x.git",
    suffix=redirects.INFO_REFS,
    junk="",
    allow_list=True,
)
def test_no_redirect_reaches_anything_outside_the_sites_policy(
    served: tuple[Host, Host, str], location: str, suffix: str, junk: str, allow_list: bool
) -> None:
    main, other, _commit = served
    port, other_port = main.url.rsplit(":", 1)[1], other.url.rsplit(":", 1)[1]
    main.location = location.format(port=port, other=other_port) + suffix + junk
    escaped = main.url.replace(".", r"\.")
    if allow_list:
        repo = provider(f"{main.url}/start/repo.git", allow=(f"{escaped}/(start|allowed)/.*",))
    else:  # bans alone: what a spelling in capitals or another notation would slip past
        bans = (other.url.replace(".", r"\.") + "/.*", f"{escaped}/new/.*", "http://localhost.*")
        repo = provider(f"{main.url}/start/repo.git", ban=bans)
    main.seen.clear()
    other.seen.clear()
    try:
        final = repo.git_url(repo.url)
    except RepoNotAllowed as exc:
        assert "\n" not in str(exc) and "pw@" not in str(exc)
    else:
        repo.check_allowed(final)  # what git is given is within the policy
    assert other.seen == []
    for asked, auth in main.seen:  # every request sent was to a URL the site allows
        assert asked.endswith(redirects.INFO_REFS) and auth is None
        repo.check_allowed(f"http://{asked.removesuffix(redirects.INFO_REFS)}")
