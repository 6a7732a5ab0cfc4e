"""A record fetch's guards hold for every value a hostile record can name.

Review findings on the archive providers, each closed where its rule is
enforced: the build account's connections (every one checked, a proxy's
own aside), and what a record's JSON can make the build server do.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from hpcbinder.config import RepoPolicy
from hpcbinder.errors import RepoNotAllowed
from hpcbinder.sources.archives import Bounds, Budget
from hpcbinder.sources.download import Session
from tests.loopback import QuietHandler, serving_on_loopback


class _JsonHandler(QuietHandler):
    """Answers every GET with JSON naming the request line's target (a
    proxy sees an absolute URL, an origin server a path)."""

    def do_GET(self) -> None:
        body = json.dumps({"target": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def loopback() -> Iterator[str]:
    with serving_on_loopback(_JsonHandler) as url:
        yield url


def _ask(url: str) -> object:
    policy = RepoPolicy(protocols=["http"])  # no internal_networks
    with Session(policy, Budget(Bounds(1 << 20, 10, 10), "a record"), "the setting") as session:
        return session.json(url, "a record")


def test_a_no_proxy_host_is_checked_as_a_direct_connection(
    loopback: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """urllib reaches a host no_proxy names directly: a record's URL naming
    localhost (or the metadata address, an internal host) must not skip
    the address check because some proxy is set."""
    port = loopback.rpartition(":")[2]
    monkeypatch.setenv("http_proxy", "http://proxy.invalid:3128")
    monkeypatch.setenv("no_proxy", "localhost,127.0.0.1")
    with pytest.raises(RepoNotAllowed, match=r"localhost is at 127\.0\.0\.1.*internal_networks"):
        _ask(f"http://localhost:{port}/secret")


def test_a_request_through_the_proxy_is_the_proxys_to_judge(
    loopback: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The proxy (here on loopback, which the site does not list) is
    connected to unchecked, as the proxy only: it decides where it goes."""
    monkeypatch.setenv("http_proxy", loopback)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert _ask("http://records.example.org/api") == {"target": "http://records.example.org/api"}
    # The proxy's own host and port named as a record's URL, but not
    # routed through it (no_proxy): a direct connection, checked.
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with pytest.raises(RepoNotAllowed, match=r"127\.0\.0\.1 is at 127\.0\.0\.1"):
        _ask(f"{loopback}/api")
