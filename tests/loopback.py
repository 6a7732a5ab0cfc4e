"""HTTP servers on loopback for tests' stand-ins (a git host, archive
services, a CRAN mirror): each stand-in says only how it answers a request;
starting, serving and stopping the server is here, once."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that does not log: requests are not the test's output."""

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serving_on_loopback(
    handler: Callable[..., BaseHTTPRequestHandler], tls: ssl.SSLContext | None = None
) -> Iterator[str]:
    """``handler`` answering on a free loopback port, each request in its
    own thread (a client may hold one connection while it opens another);
    yields the base URL, ``http://127.0.0.1:PORT`` (``https://`` with
    ``tls``, a server context holding the certificate). The server is
    stopped and its socket closed when the block ends, so that a stand-in
    outlives neither its test nor its port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
