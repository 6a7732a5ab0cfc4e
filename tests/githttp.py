"""Git servers on loopback for tests: ``git http-backend`` (smart HTTP, as
a CGI program) behind a small HTTP server that asks for basic
authentication and lets one user in with one password (a token), or
anonymously over HTTPS (the site's own git hosts, such as its GitHub or
GitLab stand-in, trusted through ``network.ca_bundle``).

Basic authentication over plain HTTP, not HTTPS: git's credential handling (the helper, the 401
exchange, basic authentication) is the same over both, and a certificate
the test would have to make and every account's git to trust adds nothing
hpcbinder does."""

from __future__ import annotations

import base64
import hmac
import json
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import urlsplit

from tests.loopback import QuietHandler, serving_on_loopback


def answer_with_git_http_backend(
    request: BaseHTTPRequestHandler, project_root: Path, remote_user: str | None = None
) -> None:
    """Answers ``request`` with ``git http-backend`` (git's smart HTTP as a
    CGI program) serving every repository below ``project_root``, as
    ``remote_user`` if given, anonymously otherwise: the one translation
    between an HTTP request and the CGI's environment, input and output
    that every test git host uses."""
    parts = urlsplit(request.path)
    length = int(request.headers.get("Content-Length") or 0)
    body = request.rfile.read(length) if length else b""
    env = {
        "PATH": "/usr/bin:/bin",
        "GIT_PROJECT_ROOT": str(project_root),
        "GIT_HTTP_EXPORT_ALL": "1",
        "REQUEST_METHOD": request.command,
        "PATH_INFO": parts.path,
        "QUERY_STRING": parts.query,
        "CONTENT_TYPE": request.headers.get("Content-Type", ""),
        "CONTENT_LENGTH": str(len(body)),
        **({"REMOTE_USER": remote_user} if remote_user is not None else {}),
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_GIT_PROTOCOL": request.headers.get("Git-Protocol", ""),
    }
    done = subprocess.run(
        ["git", "http-backend"], input=body, env=env, capture_output=True, timeout=60
    )
    head, _, payload = done.stdout.partition(b"\r\n\r\n")
    status, headers = 200, []
    for line in head.decode(errors="replace").split("\r\n"):
        name, _, value = line.partition(":")
        if name.lower() == "status":
            status = int(value.split()[0])
        elif name:
            headers.append((name, value.strip()))
    request.send_response(status)
    for name, value in headers:
        request.send_header(name, value)
    request.send_header("Content-Length", str(len(payload)))
    request.end_headers()
    request.wfile.write(payload)


@contextmanager
def git_http_server(project_root: Path, user: str, token: str) -> Iterator[str]:
    """Serves the repositories below ``project_root`` to ``user`` with
    password ``token``; yields the server's base URL (``http://127.0.0.1:PORT``).
    """
    expected = "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()

    class Handler(QuietHandler):
        def _serve(self) -> None:
            given = self.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), expected.encode()):
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            answer_with_git_http_backend(self, project_root, user)

        do_GET = _serve
        do_POST = _serve

    with serving_on_loopback(Handler) as url:
        yield url


@contextmanager
def git_https_server(
    project_root: Path, keys: Path, documents: dict[str, object] | None = None
) -> Iterator[tuple[str, Path]]:
    """Serves the repositories below ``project_root`` anonymously over
    HTTPS, and each of ``documents`` as JSON at its path, with a
    certificate made in ``keys`` that only its own file vouches for (a
    site's own CA, for ``network.ca_bundle``); yields the base URL
    (``https://127.0.0.1:PORT``) and that certificate's file."""
    cert, key = keys / "git-https-cert.pem", keys / "git-https-key.pem"
    request = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    names = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run([*request, *names, "-keyout", str(key), "-out", str(cert)], check=True,
                   capture_output=True)  # fmt: skip

    class Handler(QuietHandler):
        def _serve(self) -> None:
            if self.path not in (documents or {}):
                answer_with_git_http_backend(self, project_root)
                return
            body = json.dumps((documents or {})[self.path]).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = _serve
        do_POST = _serve

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with serving_on_loopback(Handler, tls=context) as url:
        yield url, cert
