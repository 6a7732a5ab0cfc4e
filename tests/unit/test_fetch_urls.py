"""Every URL an archive provider contacts has one spelling, judged by the site.

The site's ban and allow patterns match a URL's text, while servers and
resolvers accept many spellings of one place. Over generated respellings
of a banned URL (host case, an explicit default port, IP notations,
%-escapes of plain characters, dot and empty segments, credentials,
other schemes), each is refused: by its spelling or by the ban.
"""

from __future__ import annotations

import json
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcbinder.config import RepoPolicy
from hpcbinder.errors import RepoNotAllowed
from hpcbinder.sources.archives import Bounds, Budget, RecordError
from hpcbinder.sources.download import Session, check_fetch_url
from tests.loopback import QuietHandler, serving_on_loopback

POLICY = RepoPolicy(
    protocols=["https", "http"],
    ban=[r"https://evil\.org/.*", r"http://127\.0\.0\.1:8080/secret/.*"],
)


def escape_char(char: str) -> str:
    return f"%{ord(char):02X}"


def respellings(draw: st.DrawFn) -> str:
    host = draw(st.sampled_from(["evil.org", "EVIL.org", "evil.org.", "Evil.Org"]))
    port = draw(st.sampled_from(["", ":443", ":0443"]))
    path = list("secret/data")
    tricks = draw(
        st.lists(st.sampled_from(["escape", "dot", "dotdot", "empty", "lower"]), max_size=3)
    )
    text = "".join(path)
    for trick in tricks:
        if trick == "escape":
            index = draw(st.integers(0, len(text) - 1))
            if text[index] != "%":
                text = text[:index] + escape_char(text[index]) + text[index + 1 :]
        elif trick == "dot":
            text = "./" + text
        elif trick == "dotdot":
            text = "x/../" + text
        elif trick == "empty":
            text = text.replace("/", "//", 1)
        elif trick == "lower":
            text = text.lower()
    return f"https://{host}{port}/{text}"


@settings(max_examples=400, deadline=None)
@given(url=st.composite(respellings)())
def test_every_respelling_of_a_banned_url_is_refused(url: str) -> None:
    with pytest.raises(RepoNotAllowed):
        check_fetch_url(url, POLICY)


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433:8080/secret/x",
        "http://0x7f.0.0.1:8080/secret/x",
        "http://127.1:8080/secret/x",
        "http://127.000.000.001:8080/secret/x",
        "http://127.0.0.1:8080/secret%2Fx",
        "http://127.0.0.1:8080/%73ecret/x",
        "http://127.0.0.1:8080/secret/x#frag",
        "http://127.0.0.1:8080/secret\\x",
        "http://user:pw@127.0.0.1:8080/ok",
        "file:///etc/passwd",
        "ftp://127.0.0.1/x",
        "http://127.0.0.1:8080/a b",
        "http://127.0.0.1:8080/a\x00b",
        "http://[::1]:8080/secret/x",
    ],
)
def test_other_notations_are_refused(url: str) -> None:
    with pytest.raises(RepoNotAllowed):
        check_fetch_url(url, POLICY)


@pytest.mark.parametrize(
    "url",
    [
        "https://zenodo.org/api/records/3242074",
        "https://zenodo.org/api/records/3242074/files/repo%20v1.zip/content",
        "https://dataverse.harvard.edu/api/datasets/:persistentId/?persistentId=doi:10.7910/DVN/X",
        "https://www.hydroshare.org/hsapi/resource/8f7c2f0341ef4180b0dbe97f59130756/",
        "http://127.0.0.1:8080/public/x",
    ],
)
def test_plain_urls_pass(url: str) -> None:
    check_fetch_url(url, POLICY)


def test_an_allow_list_admits_only_what_it_lists() -> None:
    policy = RepoPolicy(protocols=["https"], allow=[r"https://zenodo\.org/.*"])
    check_fetch_url("https://zenodo.org/api/records/1", policy)
    with pytest.raises(RepoNotAllowed, match=r"repos\.allow"):
        check_fetch_url("https://s3.amazonaws.com/x", policy)
    with pytest.raises(RepoNotAllowed, match=r"repos\.protocols"):
        check_fetch_url("http://zenodo.org/api/records/1", policy)


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loopback HTTPS server answering JSON, and its self-signed certificate."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    request = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    names = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    files = ["-keyout", str(key), "-out", str(cert)]
    subprocess.run([*request, *names, *files], check=True, capture_output=True)

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            body = json.dumps({"ok": True}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with serving_on_loopback(Handler, tls=context) as url:
        yield url, cert


def test_https_connects_to_the_checked_address_and_verifies_the_host(
    https_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, cert = https_server
    policy = RepoPolicy(protocols=["https"], internal_networks=["127.0.0.1/32"])

    def ask() -> object:
        with Session(policy, Budget(Bounds(1 << 20, 10, 10), "a record"), "the setting") as s:
            return s.json(f"{url}/api", "a record")

    with pytest.raises(RecordError, match="CERTIFICATE_VERIFY_FAILED"):
        ask()
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    assert ask() == {"ok": True}
