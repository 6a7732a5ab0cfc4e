"""A record fetch reaches no internal host, through the site's proxy or
by an IPv6 address that embeds an internal IPv4 one (review of issue 23).

The proxy connects for the build server, but the target is judged first
all the same; and the proxy's socket is the watchdog's from the start, so
a proxy that trickles its CONNECT answer cannot hold a fetch past its
deadline.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcbinder.config import RepoPolicy
from hpcbinder.errors import RepoNotAllowed
from hpcbinder.seams.addresses import AddressRule
from hpcbinder.sources.archives import Bounds, Budget, RecordError
from hpcbinder.sources.download import Session, _Guard
from tests.loopback import QuietHandler, serving_on_loopback


class _Secret(QuietHandler):
    """An internal host's answer (the cloud's metadata, say)."""

    def do_GET(self) -> None:
        body = b"INTERNAL-SECRET\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _ForwardingProxy(QuietHandler):
    """A plain HTTP proxy: fetches the absolute URL it is sent, directly."""

    def do_GET(self) -> None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(self.path, timeout=5) as answer:
            body = answer.read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The host's http_proxy, a forwarding proxy on loopback."""
    with serving_on_loopback(_ForwardingProxy) as url:
        monkeypatch.setenv("http_proxy", url)
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        yield url


def _session(seconds: float = 10) -> Session:
    policy = RepoPolicy(protocols=["http", "https"])  # no internal_networks
    return Session(policy, Budget(Bounds(1 << 20, 10, seconds), "a record"), "repos.records.ckan")


def test_an_internal_address_is_refused_through_the_proxy(proxy: str, tmp_path: Path) -> None:
    """A record's file URL at an internal address (loopback, which the
    site does not list) was fetched through the proxy into the checkout;
    now it is refused before the proxy is asked, as a direct one is."""
    with serving_on_loopback(_Secret) as secret:
        port = secret.rpartition(":")[2]
        for host in ("127.0.0.1", "localhost"):
            out = tmp_path / f"{host}.bin"
            with _session() as session, pytest.raises(RepoNotAllowed, match=r"internal_networks"):
                session.save(f"http://{host}:{port}/latest/meta-data", out, "a file")
            assert not out.exists()


def test_a_proxy_that_trickles_its_connect_answer_is_cut_at_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CONNECT and the TLS handshake ran before the socket was the
    watchdog's: a proxy sending its answer a byte at a time (each within the
    socket's timeout) held the fetch as long as it liked."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle() -> None:
        conn, _addr = listener.accept()
        with conn:
            conn.recv(4096)
            for byte in b"HTTP/1.1 200 Connection established\r\n" + b"X" * 100000:
                if stop.wait(0.05):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    server = threading.Thread(target=trickle, daemon=True)
    server.start()
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{listener.getsockname()[1]}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    failed: list[BaseException] = []

    def fetch() -> None:
        try:
            with _session(seconds=1) as session:
                session.json("https://records.invalid/api/3/action/package_show", "a record")
        except BaseException as exc:
            failed.append(exc)

    started = time.monotonic()
    client = threading.Thread(target=fetch, daemon=True)
    client.start()
    client.join(15)
    stop.set()
    listener.close()
    assert not client.is_alive(), "the fetch outlived its 1 s deadline by 15 s"
    assert time.monotonic() - started < 10
    assert failed and isinstance(failed[0], RecordError), failed


_INTERNAL = [
    ipaddress.IPv4Network(net)
    for net in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
    )
]


@st.composite
def _internal_ipv4(draw: st.DrawFn) -> ipaddress.IPv4Address:
    net = draw(st.sampled_from(_INTERNAL))
    return net[draw(st.integers(0, net.num_addresses - 1))]


def _embedded(form: str, v4: ipaddress.IPv4Address) -> str:
    n = int(v4)
    public = int(ipaddress.IPv4Address("8.8.8.8"))
    return {
        "mapped": f"::ffff:{v4}",
        "compatible": f"::{v4}",
        "nat64": f"64:ff9b::{v4}",
        "6to4": str(ipaddress.IPv6Address((0x2002 << 112) | (n << 80) | 1)),
        "teredo client": str(
            ipaddress.IPv6Address((0x20010000 << 96) | (public << 64) | (~n & 0xFFFFFFFF))
        ),
        "teredo server": str(
            ipaddress.IPv6Address((0x20010000 << 96) | (n << 64) | (~public & 0xFFFFFFFF))
        ),
    }[form]


@settings(max_examples=150, deadline=None)
@given(
    v4=_internal_ipv4(),
    form=st.sampled_from(
        ["mapped", "compatible", "nat64", "6to4", "teredo client", "teredo server"]
    ),
)
def test_an_ipv6_address_embedding_an_internal_ipv4_one_is_refused(
    v4: ipaddress.IPv4Address, form: str
) -> None:
    """``is_global`` called ``64:ff9b::7f00:1`` and ``::127.0.0.1`` public:
    a name whose AAAA answer embeds an internal IPv4 address (the resolver
    answers such a literal as a name's record would) is refused."""
    guard = _Guard(AddressRule([]), {}, time.monotonic() + 30)
    with pytest.raises(RepoNotAllowed, match=r"not a public address"):
        guard.address(_embedded(form, v4), 80)


def test_an_embedded_address_the_site_lists_is_allowed() -> None:
    guard = _Guard(AddressRule([ipaddress.ip_network("10.0.0.0/8")]), {}, time.monotonic() + 30)
    assert guard.address("64:ff9b::10.1.2.3", 80) == "64:ff9b::a01:203"
    assert guard.address("::ffff:8.8.8.8", 80) == "::ffff:808:808"
