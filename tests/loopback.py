"""HTTP servers on loopback for tests' stand-ins (a git host, archive
services, a CRAN mirror): each stand-in says only how it answers a request;
starting, serving and stopping the server is here, once."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: ``repos.internal_networks`` of a test site whose git hosts and record
#: services are stand-ins on loopback: the build account may fetch only
#: public addresses and those the site lists.
LOOPBACK_NETWORKS = ["127.0.0.1/32"]


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that does not log: requests are not the test's output."""

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serving_on_loopback(
    handler: Callable[..., BaseHTTPRequestHandler],
    tls: ssl.SSLContext | None = None,
    address: tuple[str, int] = ("127.0.0.1", 0),
) -> Iterator[str]:
    """``handler`` answering on ``address`` (by default a free port of
    127.0.0.1), each request in its own thread (a client may hold one
    connection while it opens another); yields the base URL,
    ``http://ADDRESS:PORT`` (``https://`` with ``tls``, a server context
    holding the certificate). The server is stopped and its socket closed
    when the block ends, so that a stand-in outlives neither its test nor
    its port."""
    server = ThreadingHTTPServer(address, handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"{'https' if tls else 'http'}://{host!s}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
