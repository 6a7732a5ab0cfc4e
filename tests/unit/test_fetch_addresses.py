"""The build account's git reaches public addresses and the site's
``repos.internal_networks`` only, at the address that was checked: real git
against real servers (git http-backend, git daemon, sshd) on loopback
addresses, which a test site lists or does not.

The attack: a researcher's link, a redirect or a public repository's
submodule names a host inside the cluster (the build node's loopback, an
internal forge that serves anyone inside without a login), and what git
fetched from there became a world-readable checkout and image. Before,
git connected to any address an allowed URL named, and looked the name up
itself after hpcbinder had judged it.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpcbinder.config import RepoPolicy
from hpcbinder.errors import RepoNotAllowed, RepoUnreachable
from hpcbinder.seams import addresses, git
from hpcbinder.sources import providers
from tests.githttp import answer_with_git_http_backend
from tests.loopback import QuietHandler, serving_on_loopback
from tests.repohelpers import git as run_git
from tests.repohelpers import serving_git_daemon as git_daemon
from tests.sshhelpers import running_sshd, sshd_log

#: Where the "internal" host listens, and the one address a site lists.
INTERNAL, LISTED = "127.0.0.1", "127.0.0.2"
REFUSED = r"is at 127\.0\.0\.1, not a public address.*\(repos\.internal_networks\)"


def policy(
    *networks: str, protocols: tuple[str, ...] = ("http", "git", "ssh", "file")
) -> RepoPolicy:
    return RepoPolicy(
        protocols=list(protocols),
        local_roots=[Path("/tmp")],
        internal_networks=[ipaddress.ip_network(n) for n in networks],
    )


def served_repo(root: Path, name: str, content: str) -> Path:
    """A bare repository ``root/name`` whose one commit holds ``which.txt``."""
    work = root / f"{name}-work"
    work.mkdir(parents=True)
    run_git(work, "init", "-q", "-b", "main")
    (work / "which.txt").write_text(content)
    run_git(work, "add", "-A")
    run_git(work, "commit", "-q", "-m", content)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(root / name)], check=True)
    return root / name


@contextmanager
def http_git(root: Path, address: str, port: int = 0) -> Iterator[tuple[str, list[str]]]:
    """git's smart HTTP for the repositories below ``root`` on ``address``;
    yields its base URL and the paths asked for."""
    asked: list[str] = []

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            answer_with_git_http_backend(self, root)

        do_POST = do_GET

    with serving_on_loopback(Handler, address=(address, port)) as url:
        yield url, asked


def port_free_on_both() -> int:
    """A port nothing listens on at 127.0.0.1 nor at 127.0.0.2."""
    for _ in range(50):
        with socket.socket() as first, socket.socket() as second:
            first.bind((INTERNAL, 0))
            port = int(first.getsockname()[1])
            try:
                second.bind((LISTED, port))
            except OSError:
                continue
            return port
    raise AssertionError("no port free on both loopback addresses")


def checkout(spec: str, site: RepoPolicy, cache: Path) -> str:
    provider = providers.parse_spec(spec, site)
    resolved = provider.resolve()
    return (providers.checkout(provider, resolved, cache) / "which.txt").read_text()


def link(url: str) -> str:
    return f"git/{quote(url, safe='')}/main"


def test_a_link_to_an_internal_http_host_is_refused_before_any_request(tmp_path: Path) -> None:
    root = tmp_path / "served"
    served_repo(root, "secret.git", "internal")
    with http_git(root, INTERNAL) as (url, asked):
        with pytest.raises(RepoNotAllowed, match=REFUSED):
            checkout(link(f"{url}/secret.git"), policy(), tmp_path / "cache")
        assert asked == []  # not even the redirect check reached it
        # Listed by the site (its own forge): fetched as any other.
        assert checkout(link(f"{url}/secret.git"), policy(f"{INTERNAL}/32"), tmp_path / "c2") == (
            "internal"
        )


def test_a_public_repositorys_submodule_on_an_internal_host_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "served"
    served_repo(root, "secret.git", "internal")
    with git_daemon(root, INTERNAL, port_free_on_both()) as daemon:
        parent = tmp_path / "parent"
        parent.mkdir()
        run_git(parent, "init", "-q", "-b", "main")
        (parent / "which.txt").write_text("parent")
        subprocess.run(
            ["git", "-c", "protocol.git.allow=always", "submodule", "add", "-q",
             f"{daemon}/secret.git", "lib"],
            cwd=parent, check=True, capture_output=True,
        )  # fmt: skip
        run_git(parent, "add", "-A")
        run_git(parent, "commit", "-q", "-m", "with a submodule")
        spec = link(f"file://{parent}")
        with pytest.raises(RepoNotAllowed, match=REFUSED):
            checkout(spec, policy(), tmp_path / "cache")
        assert not list((tmp_path / "cache").rglob("which.txt"))  # nothing kept
        assert checkout(spec, policy(f"{INTERNAL}/32"), tmp_path / "c2") == "parent"


@contextmanager
def answering(*answers: str) -> Iterator[None]:
    """hpcbinder's one lookup of ``localhost`` gives ``answers``; git's
    own lookup, if it made one, would answer 127.0.0.1 (/etc/hosts): the
    name rebound between the check and the connection."""
    real = addresses.resolve

    def lookup(host: str, port: int, deadline: float) -> list[Any]:
        if host != "localhost":
            return real(host, port, deadline)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (each, port)) for each in answers]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(addresses, "resolve", lookup)
        yield


@pytest.mark.parametrize("scheme", ["http", "git"])
def test_git_connects_to_the_checked_address_not_to_a_second_lookup(
    tmp_path: Path, scheme: str
) -> None:
    """The internal host (127.0.0.1) and the listed one (127.0.0.2) serve
    on the same port; ``localhost`` was checked at 127.0.0.2. Before, git
    looked the name up again and fetched the internal host's repository."""
    port = port_free_on_both()
    internal, listed = tmp_path / "internal", tmp_path / "listed"
    served_repo(internal, "repo.git", "internal")
    served_repo(listed, "repo.git", "listed")
    site = policy(f"{LISTED}/32")
    url = f"{scheme}://localhost:{port}/repo.git"
    serve = http_git if scheme == "http" else git_daemon
    with serve(internal, INTERNAL, port), serve(listed, LISTED, port), answering(LISTED):
        assert checkout(link(url), site, tmp_path / "cache") == "listed"
    with (
        serve(internal, INTERNAL, port),
        answering(INTERNAL),  # the check sees 127.0.0.1
        pytest.raises(RepoNotAllowed, match=r"localhost is at 127\.0\.0\.1"),
    ):
        checkout(link(url), site, tmp_path / "c2")


def test_an_ssh_fetch_with_a_deploy_key_reaches_listed_addresses_only(tmp_path: Path) -> None:
    """ssh connects through hpcbinder's helper to the checked address (its
    host key still checked against the name in the URL)."""
    root = tmp_path / "served"
    repo = served_repo(root, "repo.git", "over ssh")
    with running_sshd(["root"], address=LISTED) as host:
        key = git.DeployCredential(
            LISTED, ssh_key=Path(host["key_file"]), known_hosts=Path(host["known_hosts"])
        )
        url = f"ssh://root@{LISTED}:{host['port']}{repo}"
        with git.deploy_credentials([key]):
            with pytest.raises(RepoNotAllowed, match=r"127\.0\.0\.2, not a public address"):
                checkout(link(url), policy(), tmp_path / "cache")
            assert "Accepted publickey" not in sshd_log(host)
            assert checkout(link(url), policy(f"{LISTED}/32"), tmp_path / "c2") == "over ssh"
        assert "Accepted publickey for root" in sshd_log(host)


_V4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
_EMBEDDINGS = {
    "mapped": lambda v4: ipaddress.IPv6Address(f"::ffff:{v4}"),
    "nat64": lambda v4: ipaddress.IPv6Address(f"64:ff9b::{v4}"),
    "compatible": lambda v4: ipaddress.IPv6Address(int(v4)),
    "6to4": lambda v4: ipaddress.IPv6Address((0x2002 << 112) | (int(v4) << 80)),
}


@given(
    v4=_V4,
    form=st.sampled_from(sorted(_EMBEDDINGS)),
    listed=st.lists(
        st.tuples(_V4, st.integers(8, 32)).map(
            lambda net: ipaddress.ip_network(f"{net[0]}/{net[1]}", strict=False)
        ),
        max_size=3,
    ),
)
def test_an_address_is_allowed_exactly_when_what_it_reaches_is_public_or_listed(
    v4: ipaddress.IPv4Address, form: str, listed: list[ipaddress.IPv4Network]
) -> None:
    """Over every IPv4 address and the IPv6 forms that lead to it: allowed
    if and only if it is public or in a listed network, whichever spelling
    a resolver answers with."""
    rule = addresses.AddressRule(listed)
    expected = v4.is_global or any(v4 in net for net in listed)
    assert rule.allows(v4) == expected
    assert rule.allows(_EMBEDDINGS[form](v4)) == expected
    if not expected:
        with pytest.raises(RepoNotAllowed, match=r"\(repos\.internal_networks\)$"):
            rule.checked("h", _EMBEDDINGS[form](v4))


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("host", ["nowhere.invalid", "a..b", f"{'x' * 64}.org"])
def test_a_host_that_does_not_resolve_fails_in_one_line(tmp_path: Path, host: str) -> None:
    """A name that does not resolve (or that the resolver's IDNA codec
    refuses: review finding (LOW), its UnicodeError went unhandled in the
    lookup's thread, a traceback in the build server's log) fails as
    unreachable, in one line."""
    with pytest.raises(RepoUnreachable, match=rf"cannot resolve {re.escape(host)}") as failed:
        checkout(link(f"git://{host}/repo.git"), policy(), tmp_path / "cache")
    assert "\n" not in str(failed.value)


@pytest.mark.parametrize(
    "address",
    [
        "224.0.0.1",
        "ff02::1",
        "fec0::1",
        "::ffff:0:7f00:1",
        "64:ff9b:1::a00:1",
        "192.88.99.1",
        "192.0.0.192",
        "::ffff:192.0.0.192",
    ],
)
def test_addresses_python_calls_global_but_are_not_public_are_refused(address: str) -> None:
    """Review findings (LOW): multicast, site-local, IPv4-translated,
    NAT64's local-use prefix, 6to4's relays and 192.0.0.0/24 (a cloud's
    metadata address, 192.0.0.192) passed ``is_global``."""
    assert not addresses.AddressRule([]).allows(ipaddress.ip_address(address))


def test_a_short_commit_from_a_dumb_http_server_resolves_without_lazy_fetches(
    tmp_path: Path,
) -> None:
    """Review finding: a short commit id was looked up with a partial fetch
    (``--filter=tree:0``), which made the folder a promisor of the URL.
    Against a dumb-HTTP server (static files) each missing object started
    another fetch, which missed objects again: about 1,350 git processes in
    8 s, until the fetch's deadline; and a promisor's fetches outside the
    routed call went to whatever a second lookup gave."""
    root = tmp_path / "static"
    repo = served_repo(root, "repo.git", "static")
    subprocess.run(["git", "-C", str(repo), "update-server-info"], check=True)
    commit = run_git(repo, "rev-parse", "main")

    class Static(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, format: str, *args: object) -> None:
            pass

    site = policy(f"{INTERNAL}/32").model_copy(update={"fetch_timeout_seconds": 20})
    with serving_on_loopback(Static) as url:
        spec = f"git/{quote(f'{url}/repo.git', safe='')}/{commit[:8]}"
        assert providers.parse_spec(spec, site).resolve().commit == commit


@contextmanager
def recording_proxy() -> Iterator[tuple[str, list[str]]]:
    """An HTTP proxy on 127.0.0.3 that records the URLs it is asked for
    and answers 502 (it reaches nothing)."""
    asked: list[str] = []

    class Proxy(QuietHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(502)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_GET

    with serving_on_loopback(Proxy, address=("127.0.0.3", 0)) as url:
        yield url, asked


LIMITS = git.FetchLimits(10, 20.0, "repos.max_fetch_mb", "repos.fetch_timeout_seconds")


def test_behind_a_proxy_every_answer_of_the_name_is_judged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review finding (MEDIUM): through a proxy curl sends the name, and the
    proxy looks it up again, so the pin does not hold; git's own calls
    (a submodule's fetch has no redirect check before it) judged the first
    answer only. Every answer is judged now, before the proxy is asked;
    a name that does not resolve here is left to the proxy (before, git's
    call failed here without asking it)."""
    for name in ("no_proxy", "NO_PROXY", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    listed = [ipaddress.ip_network(f"{LISTED}/32")]

    def ls_remote(url: str) -> object:
        return git.ls_remote(url, protocols=["http"], limits=LIMITS, networks=listed)

    with recording_proxy() as (proxy, asked):
        monkeypatch.setenv("http_proxy", proxy)
        with answering(LISTED, INTERNAL), pytest.raises(RepoNotAllowed, match=REFUSED):
            ls_remote("http://localhost:8080/repo.git")
        assert asked == []
        with pytest.raises(git.GitError, match="502"):  # only the proxy's DNS knows it
            ls_remote("http://only-the-proxy-knows.invalid/r.git")
        assert asked == [
            "http://only-the-proxy-knows.invalid/r.git/info/refs?service=git-upload-pack"
        ]


@contextmanager
def proxy_environment(monkeypatch: pytest.MonkeyPatch, **variables: str) -> Iterator[None]:
    """Only ``variables`` of the proxy ones set, as the build node's environment."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY", "no_proxy", "NO_PROXY", "REQUEST_METHOD"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    yield


@pytest.mark.parametrize(
    ("variables", "proxied"),
    [
        ({"HTTP_PROXY": "{proxy}"}, True),  # curl reads http_proxy in lower case only
        ({"http_proxy": "{proxy}", "no_proxy": "localhost."}, True),  # curl drops the dot
        ({"http_proxy": "{proxy}", "no_proxy": "example.org localhost"}, True),  # blanks
        ({"http_proxy": "{proxy}", "no_proxy": "example.org,*"}, False),
        ({"http_proxy": "{proxy}", "no_proxy": "example.org,localhost"}, False),
        ({"ALL_PROXY": "{proxy}"}, True),
    ],
)
def test_git_goes_through_the_proxy_hpcbinder_chose_and_judged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], proxied: bool
) -> None:
    """Review finding (HIGH): where curl's reading of the proxy variables
    differed from the check's, git went directly to a name it looked up
    itself (unpinned), or through a proxy after only the first answer was
    judged. Now the check's choice is the one git is given, and git sees
    no proxy variable: the request reaches the proxy exactly when the
    check judged every answer, and otherwise the pinned address only."""
    port = port_free_on_both()
    internal, listed = tmp_path / "internal", tmp_path / "listed"
    served_repo(internal, "repo.git", "internal")
    served_repo(listed, "repo.git", "listed")
    networks = [ipaddress.ip_network(f"{LISTED}/32")]
    url = f"http://localhost:{port}/repo.git"
    with (
        recording_proxy() as (proxy, asked),
        http_git(internal, INTERNAL, port) as (_url, internal_asked),
        http_git(listed, LISTED, port) as (_url2, listed_asked),
    ):
        values = {name: value.format(proxy=proxy) for name, value in variables.items()}
        with proxy_environment(monkeypatch, **values), answering(LISTED):
            if proxied:
                with pytest.raises(git.GitError, match="502"):
                    git.ls_remote(url, protocols=["http"], limits=LIMITS, networks=networks)
                assert asked and not listed_asked
            else:
                assert git.ls_remote(url, protocols=["http"], limits=LIMITS, networks=networks)
                assert listed_asked and not asked
            assert internal_asked == []


def test_a_socks_proxy_that_looks_names_up_here_gets_the_pinned_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review finding: curl resolves the name itself for ``socks4://`` and
    ``socks5://``; such a proxy gets the checked address pinned, as a
    direct connection does, and a name that does not resolve here is
    refused, not left to the proxy."""
    networks = [ipaddress.ip_network(f"{LISTED}/32")]
    deadline = time.monotonic() + 10
    with proxy_environment(monkeypatch, http_proxy="socks5://127.0.0.3:1080"), answering(LISTED):
        route = git._route("http://localhost:8080/r.git", networks, "x", deadline)
        assert route.options == ("-c", f"http.curloptResolve=localhost:8080:{LISTED}")
        assert ("http.proxy", "socks5://127.0.0.3:1080") in route.config
        with pytest.raises(git.GitError, match="cannot resolve"):
            git._route("http://only-the-proxy-knows.invalid/r.git", networks, "x", deadline)
