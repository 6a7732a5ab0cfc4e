"""Credentials never ride in a clone URL: a spec whose URL carries them, in
any spelling (user:password@, a token as the user, %-escaped, IPv6 hosts,
extra slashes, escaped twice), is refused when it is parsed, before
anything stores, logs or shows it, and the refusal does not repeat the
secret. Submodule URLs meet the same rule before git sees them. An ssh URL
may name its user (a key authenticates it), never a password."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcbinder.config import RepoPolicy
from hpcbinder.errors import RepoNotAllowed, SpecError, UserError
from hpcbinder.sources import providers
from hpcbinder.sources.providers import parse_spec
from tests.repohelpers import git

POLICY = RepoPolicy(protocols=["https", "http", "git", "ssh", "file"], local_roots=[Path("/tmp")])

#: What a secret is made of: letters and digits, and the characters a
#: password may hold that a URL must escape.
_SECRET = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.~:@/%?#!$&'()*+,;= ",
    min_size=6,
    max_size=24,
).map(lambda tail: f"S3CR{tail}")
_USER = st.sampled_from(["alice", "x-access-token", "oauth2", "alice%40example.org", "a.b"])
_HOST = st.sampled_from(
    ["github.com", "git.example.org", "127.0.0.1", "[::1]", "[fe80::1%25eth0]", "xn--bcher-kva.ch"]
)
_PORT = st.sampled_from(["", ":443", ":8080"])
_SCHEME = st.sampled_from(["https", "http", "git", "ssh", "file", "HTTPS", "Ssh"])
_SLASHES = st.sampled_from(["//", "///", "////"])


def _escaped(secret: str, times: int) -> str:
    for _ in range(times):
        secret = quote(secret, safe="")
    return secret


def _spellings(secret: str) -> list[str]:
    """The secret as it may appear in a message: raw, escaped once or twice."""
    return [secret, _escaped(secret, 1), _escaped(secret, 2), "S3CR"]


@st.composite
def _urls_with_a_password(draw: st.DrawFn) -> tuple[str, str]:
    """(URL, secret): a password in the userinfo, spelled as a URL may be."""
    secret = draw(_SECRET)
    user = draw(_USER)
    scheme, slashes = draw(_SCHEME), draw(_SLASHES)
    if scheme == "file":
        slashes = "//"  # file:/// starts a path: what follows is no userinfo
    host, port = draw(_HOST), draw(_PORT)
    userinfo = draw(
        st.sampled_from(
            [
                f"{user}:{_escaped(secret, 1)}@",  # the usual form
                f"{user}%3A{_escaped(secret, 1)}@",  # the colon escaped too
                f"{user}:{_escaped(secret, 1)}%40",  # the @ escaped: no literal @ left
                f"{user}:{_escaped(secret, 1)}@{user}@",  # two @
            ]
        )
    )
    path = draw(st.sampled_from(["/org/repo", "/org/repo.git", "/", "/a@b/c", "?x=1"]))
    return f"{scheme}:{slashes}{userinfo}{host}{port}{path}", secret


@st.composite
def _specs(draw: st.DrawFn, url: str) -> str:
    """A spec carrying ``url`` as a researcher or a script may write one."""
    ref = draw(st.sampled_from(["main", "HEAD", "v1.0"]))
    return draw(
        st.sampled_from(
            [
                f"git/{quote(url, safe='')}/{ref}",  # BinderHub's form: escaped once
                f"git/{_escaped(url, 2)}/{ref}",  # escaped twice
                f"git/{url}/{ref}",  # not escaped
                url,  # the URL alone
                f"gl/{quote(url, safe='')}/{ref}",
                f"local/{quote(url, safe='')}/{ref}",
            ]
        )
    )


def _refused_without_the_secret(spec: str, secret: str) -> None:
    try:
        provider = parse_spec(spec, POLICY)
    except UserError as exc:
        message = str(exc)
        assert not any(s in message for s in _spellings(secret)), message
        assert "\n" not in message
        return
    pytest.fail(f"accepted {spec!r} as {provider.url!r}")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), case=_urls_with_a_password())
def test_a_spec_with_a_password_is_refused_without_repeating_it(
    data: st.DataObject, case: tuple[str, str]
) -> None:
    url, secret = case
    _refused_without_the_secret(data.draw(_specs(url)), secret)


@settings(max_examples=200, deadline=None)
@given(
    secret=_SECRET,
    scheme=st.sampled_from(["https", "http", "git", "file", "HTTP"]),
    host=_HOST,
    port=_PORT,
)
def test_a_token_as_the_user_is_refused_but_for_ssh(
    secret: str, scheme: str, host: str, port: str
) -> None:
    """GitHub, GitLab and others take a token as the user name of an https
    URL: any user is refused where a password could be sent."""
    url = f"{scheme}://{_escaped(secret, 1)}@{host}{port}/org/repo"
    _refused_without_the_secret(f"git/{quote(url, safe='')}/main", secret)


def test_the_credentials_refusal_says_what_to_do() -> None:
    spec = f"git/{quote('https://alice:ghp_S3CRETtoken@github.com/org/repo', safe='')}/main"
    with pytest.raises(SpecError) as caught:
        parse_spec(spec, POLICY)
    message = str(caught.value)
    assert message.startswith("a repository URL may not carry credentials")
    assert "remove them from the link" in message and "ghp_" not in message


@pytest.mark.parametrize(
    "url",
    [
        "ssh://git@github.com/org/repo.git",
        "ssh://git@github.com:2222/org/repo.git",
        "git@github.com:org/repo.git",
        "https://github.com/org/repo",
        "https://github.com/org/a@b",  # an @ in the path is no userinfo
        "file:///tmp/some@folder/repo",
    ],
)
def test_urls_without_a_secret_still_parse(url: str) -> None:
    assert parse_spec(f"git/{quote(url, safe='')}/main", POLICY).url == url


@pytest.mark.parametrize(
    "url",
    [
        "ssh://git:S3CRET@github.com/org/repo.git",
        "ssh://git@S3CRET@github.com/org/repo.git",
        "git:S3CRET@github.com:org/repo.git",
        "HTTPS://S3CRET@github.com/org/repo",
        "https:S3CRET@github.com/org/repo",
    ],
)
def test_ssh_urls_name_a_user_but_no_password(url: str) -> None:
    _refused_without_the_secret(f"git/{quote(url, safe='')}/main", "S3CRET")


def _pin_submodule(parent: Path, url: str, commit: str) -> None:
    git(parent, "config", "-f", ".gitmodules", "submodule.sub.path", "sub")
    git(parent, "config", "-f", ".gitmodules", "submodule.sub.url", url)
    git(parent, "update-index", "--add", "--cacheinfo", f"160000,{commit},sub")
    git(parent, "add", ".gitmodules")
    git(parent, "commit", "-q", "-m", "pin sub")


@pytest.mark.parametrize(
    "url",
    [
        "https://alice:S3CRET@127.0.0.1:9/data.git",
        "https://S3CRET@127.0.0.1:9/data.git",
        "git://x:S3CRET@127.0.0.1:9/data.git",
    ],
)
def test_a_submodule_url_with_credentials_is_refused_before_git_sees_it(
    tmp_path: Path, url: str
) -> None:
    repo = tmp_path / "analysis"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "notebook.py").write_text("print(1)\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "one")
    _pin_submodule(repo, url, git(repo, "rev-parse", "HEAD"))
    provider = parse_spec(f"git/{quote(f'file://{repo}', safe='')}/main", POLICY)
    with pytest.raises(SpecError) as caught:
        providers.checkout(provider, provider.resolve(), tmp_path / "cache")
    assert "S3CRET" not in str(caught.value)
    assert "may not carry credentials" in str(caught.value)
    assert list((tmp_path / "cache").glob("*/" + "?" * 40)) == []  # nothing kept


class _RedirectToCredentials(http.server.BaseHTTPRequestHandler):
    """Sends every request to a URL with credentials in it, then asks for a login."""

    def do_GET(self) -> None:
        if self.path.startswith("/moved/"):
            port = self.server.server_port  # type: ignore[attr-defined]
            self.send_response(302)
            rest = self.path.removeprefix("/moved")
            self.send_header("Location", f"http://u:S3CRET@127.0.0.1:{port}/here{rest}")
        else:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="x"')
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def redirecting_server() -> Iterator[int]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _RedirectToCredentials)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


def test_a_redirect_to_a_url_with_credentials_shows_none(redirecting_server: int) -> None:
    """A server's redirect may name credentials: git's message, which the
    researcher sees and the store may keep, does not carry them (the
    redirect is refused before git runs: sources/redirects.py)."""
    url = f"http://127.0.0.1:{redirecting_server}/moved/data.git"
    provider = parse_spec(f"git/{quote(url, safe='')}/main", POLICY)
    with pytest.raises(RepoNotAllowed) as caught:
        provider.resolve()
    assert "S3CRET" not in str(caught.value), str(caught.value)
