"""Secrets stay out of the Binder service's access log: it hides the
values of token-like query arguments and any path where a URL's
credentials may hide (a link with credentials is refused, but was
requested)."""

from __future__ import annotations

import logging
from urllib.parse import quote

from hypothesis import given, settings
from hypothesis import strategies as st
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

from hpcbinder.web.app import log_request, loggable_uri

_SECRET = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=8, max_size=20).map(
    lambda tail: f"S3CR{tail}"
)


class _Handler:
    """What Tornado's log function reads of a handler."""

    def __init__(self, uri: str, status: int) -> None:
        start = RequestStartLine("GET", uri, "HTTP/1.1")
        self.request = HTTPServerRequest(start_line=start, headers=HTTPHeaders(Host="binder"))
        self.status = status

    def get_status(self) -> int:
        return self.status


def _logged(handler: _Handler) -> list[str]:
    """The access log's lines for ``handler``'s request."""
    lines: list[str] = []
    catcher = logging.Handler()
    catcher.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    access = logging.getLogger("tornado.access")
    access.addHandler(catcher)
    level, access.level = access.level, logging.INFO
    try:
        log_request(handler)  # type: ignore[arg-type]
    finally:
        access.removeHandler(catcher)
        access.setLevel(level)
    return lines


@settings(max_examples=200, deadline=None)
@given(
    secret=_SECRET,
    escapes=st.integers(min_value=1, max_value=3),
    name=st.sampled_from(["_xsrf", "token", "access_token", "code", "state", "api_key"]),
    route=st.sampled_from(["v2", "build", "confirm", "batch"]),
    status=st.sampled_from([200, 302, 400, 403, 500]),
)
def test_the_access_log_shows_no_secret(
    secret: str, escapes: int, name: str, route: str, status: int
) -> None:
    url = f"https://alice:{secret}@github.com/org/repo"
    for _ in range(escapes):
        url = quote(url, safe="")
    uri = f"/{route}/git/{url}/main?labpath=index.ipynb&{name}={secret}x"
    (line,) = _logged(_Handler(uri, status))
    assert "S3CR" not in line, line
    assert f"/{route}/" in line and f"{name}=[secret]" in line and "labpath=index.ipynb" in line


def test_plain_requests_are_logged_as_they_came() -> None:
    uri = "/v2/gh/org/repo/main?labpath=index.ipynb"
    assert loggable_uri(*uri.split("?")) == uri
    assert loggable_uri("/build/gh/org/repo/HEAD", "") == "/build/gh/org/repo/HEAD"
