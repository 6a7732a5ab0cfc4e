"""HTTP for archive providers: every URL judged by the site, every byte bounded.

An archive provider reaches several URLs for one record: a DOI resolver,
the service's API, its file downloads, and wherever those redirect. Each
of them, every redirect hop included, passes :func:`check_fetch_url`
before a connection is opened, the same rules a clone URL meets (see
:mod:`hpcbinder.sources.providers`): a scheme among ``repos.protocols``,
no credentials, one spelling only (the site's allow and ban patterns
match a URL's text, so a host in capitals, an explicit default port, an
IP address in another notation, a ``.`` or ``..`` part, or a %-escape a
server would decode to another path is refused, not normalised), not
banned (``repos.ban``), and on ``repos.allow`` where the site keeps one.

The build account's connections go only where
:mod:`hpcbinder.seams.addresses` allows (public addresses, and
``repos.internal_networks``): a service's JSON names its download URLs,
so a hostile (or a site's misconfigured) service could otherwise send the
build server to its own loopback, the cloud's metadata address or the
cluster's internal hosts, and the answer would become a file in a
world-readable checkout. Each host name is resolved once and the
connection made to the address checked (no second lookup to rebind).
Behind a proxy (the host's ``*_proxy`` variables) the proxy connects,
but the target is judged first all the same (defence in depth: an
address refused, a name whose answers here are not all public refused,
though the proxy resolves it again); only the connection to the proxy's
own host and port is unchecked. A connection to a host ``no_proxy``
names is direct, and checked as any other.

Requests carry no credentials and no cookies, and only this module's
handlers run: no ``file:``, ``ftp:`` or ``data:`` opener, no netrc, no
redirect followed that was not judged. Bodies are read a chunk at a time
and counted against the fetch's :class:`~hpcbinder.sources.archives.Budget`;
at its deadline a watchdog shuts the open connection, so a server that
trickles its headers or body cannot hold the build server past it, and a
host name's lookup is given up at the deadline too (a stalling resolver).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from http.client import HTTPException, HTTPResponse
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from hpcbinder import textpatterns
from hpcbinder.config import RepoPolicy
from hpcbinder.errors import RepoNotAllowed, SpecError
from hpcbinder.seams import addresses
from hpcbinder.sources.archives import CHUNK, Budget, RecordError
from hpcbinder.sources.providers import refuse_credentials

#: A URL's characters: RFC 3986's unreserved, sub-delims, ``: / ? @`` and
#: %-escapes; no ``#``, backslash, space, quote or control character.
_URL_TEXT = textpatterns.compile(r"https?://[A-Za-z0-9._~:/?@!$&'()*+,;=%-]+")
_HOST = textpatterns.compile(
    r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*"
)
_PORT = textpatterns.compile(r"[1-9][0-9]{0,4}")
_ESCAPE = textpatterns.compile(r"%[0-9A-F]{2}")
_DEFAULT_PORTS = {"http": "80", "https": "443"}
#: Escapes a server would decode to a character that changes the path or
#: that has a plain spelling (unreserved characters).
_PLAIN = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~/\\%")
#: The largest JSON document read (a service's answer), before the fetch's bound.
MAX_JSON_BYTES = 16 << 20
#: Redirect hops followed (each judged) before giving up.
MAX_REDIRECTS = 10
_REDIRECTS = (301, 302, 303, 307, 308)
_NOT_FOUND = (401, 403, 404, 410)


class NotFound(RecordError):
    """The service answered that the record does not exist (or is not public)."""


def check_fetch_url(url: str, policy: RepoPolicy) -> None:
    """RepoNotAllowed unless the site lets an archive provider contact
    ``url`` (see the module's docstring); the message names the setting."""
    try:
        refuse_credentials(url)
    except SpecError as exc:
        raise RepoNotAllowed(str(exc)) from None
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme not in ("http", "https") or scheme not in policy.protocols:
        shown = scheme if scheme.isalnum() else "that"
        raise RepoNotAllowed(
            f"a record's URL uses protocol {shown!r}, which this site does not allow "
            "(repos.protocols)"
        )
    problem = _spelling_problem(url, parts.hostname or "", parts.netloc, parts.path, parts.query)
    if problem:
        raise RepoNotAllowed(
            f"a record's URL on {_shown_host(url)} {problem}: it has another spelling that "
            "the site's patterns would not match"
        )
    if any(textpatterns.compile(pattern).fullmatch(url) for pattern in policy.ban):
        raise RepoNotAllowed(f"{url} is banned on this site (repos.ban)")
    if policy.allow and not any(
        textpatterns.compile(pattern).fullmatch(url) for pattern in policy.allow
    ):
        raise RepoNotAllowed(f"{url} is not on this site's allow list (repos.allow)")


def spelling_problem(url: str) -> str | None:
    """What gives the HTTP(S) ``url`` another spelling that the site's
    patterns would not match (see the module's docstring), or None."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "is not a URL"
    return _spelling_problem(url, parts.hostname or "", parts.netloc, parts.path, parts.query)


def _spelling_problem(url: str, host: str, netloc: str, path: str, query: str) -> str | None:
    if not _URL_TEXT.fullmatch(url) or "#" in url:
        return "holds a character outside a URL's plain set (a space, #, \\ or quote)"
    name, colon, port = netloc.partition(":")
    if name != host or not _HOST.fullmatch(name) or name.endswith("."):
        return "has a host that is not a lower-case name"
    if colon and (
        not _PORT.fullmatch(port)
        or int(port) > 65535
        or port == _DEFAULT_PORTS.get(urlsplit(url).scheme)
    ):
        return "has a port that is empty, zero-padded, over 65535 or the scheme's default"
    if _ipv4_notation(name) and not _dotted_quad(name):
        return "has an IP address in a form other than a.b.c.d"
    inner = path.split("/")[1:-1] if path.endswith("/") else path.split("/")[1:]
    if (path and not path.startswith("/")) or any(part in ("", ".", "..") for part in inner):
        return "has a . or .. or empty part in its path"
    for text in (path, query):
        for index, char in enumerate(text):
            if char != "%":
                continue
            escape = text[index : index + 3]
            if not _ESCAPE.fullmatch(escape) or int(escape[1:], 16) in _PLAIN:
                return "has a %-escape of a plain character, a lower-case or a broken one"
    return None


def _ipv4_notation(name: str) -> bool:
    """Whether the resolver reads ``name`` as an IPv4 address (inet_aton:
    also ``2130706433``, ``127.1``, ``0x7f.0.0.1``, ``0177.0.0.1``)."""
    try:
        socket.inet_aton(name)
    except OSError:
        return False
    return True


def _dotted_quad(name: str) -> bool:
    parts = name.split(".")
    return len(parts) == 4 and all(
        p.isdigit() and len(p) <= 3 and p == str(int(p)) and int(p) < 256 for p in parts
    )


def _shown_host(url: str) -> str:
    host = urlsplit(url).netloc
    return host if host.isprintable() and len(host) < 100 else "its host"


class _Guard:
    """Where a session's connections may go, and until when."""

    def __init__(
        self, rule: addresses.AddressRule, proxies: dict[str, str], deadline: float
    ) -> None:
        self.rule = rule
        self.deadline = deadline
        self.proxies = {_host_port(url) for scheme, url in proxies.items() if scheme != "no"}
        self.lock = threading.Lock()
        self.current: socket.socket | None = None
        self.expired = False

    def is_proxy(self, host: str, port: int, via_proxy: bool) -> bool:
        """Whether a connection goes to the site's proxy as the proxy: a
        request urllib routes through it, to its own host and port (a
        ``no_proxy`` host is reached directly, and checked)."""
        return via_proxy and (host, port) in self.proxies

    def address(self, host: str, port: int) -> str:
        """The checked address to connect to for ``host``."""
        return str(self.rule.address(host, port, self.deadline))

    def judge_target(self, host: str, port: int) -> None:
        """RepoNotAllowed if a proxied request's target is not public (see
        :meth:`~hpcbinder.seams.addresses.AddressRule.judge_proxied`)."""
        self.rule.judge_proxied(host, port, self.deadline)

    def connected(self, sock: socket.socket) -> socket.socket:
        with self.lock:
            if self.expired:
                sock.close()
                raise TimeoutError("past the fetch's deadline")
            self.current = sock
        return sock

    def expire(self) -> None:
        """At the deadline: shut whatever connection is open."""
        with self.lock:
            self.expired = True
            if self.current is not None:
                with contextlib.suppress(OSError):
                    self.current.shutdown(socket.SHUT_RDWR)


class _HTTPConnection(http.client.HTTPConnection):
    """A connection whose socket the session's guard judged: made directly
    to the checked address of its host (or through the site's proxy, which
    decides), and shut at the fetch's deadline. HTTPS inherits this
    connect and only secures the socket."""

    def __init__(
        self,
        host: str,
        *,
        guard: _Guard,
        via_proxy: bool,
        target: tuple[str, int],
        **kwargs: Any,
    ) -> None:
        super().__init__(host, **kwargs)
        self.guard = guard
        self.via_proxy = via_proxy
        self.target = target

    def connect(self) -> None:
        if self.guard.is_proxy(self.host, self.port, self.via_proxy):
            # The target judged although the proxy connects; the socket
            # watched from the start: CONNECT and the TLS handshake run
            # under the deadline as a direct connection's do.
            self.guard.judge_target(*self.target)
            sock = socket.create_connection((self.host, self.port), self.timeout)
            self.sock = self.guard.connected(sock)
            if self._tunnel_host:  # type: ignore[attr-defined]
                self._tunnel()  # type: ignore[attr-defined]
            self.sock = self.secured(self.sock)
            return
        address = self.guard.address(self.host, self.port)
        sock = socket.create_connection((address, self.port), self.timeout)
        self.sock = self.secured(self.guard.connected(sock))

    def secured(self, sock: socket.socket) -> socket.socket:
        """``sock`` as the request is sent over it: plain for HTTP."""
        return sock


class _HTTPSConnection(_HTTPConnection, http.client.HTTPSConnection):
    def secured(self, sock: socket.socket) -> socket.socket:
        """TLS to the host by its name (the tunnel's, through a proxy), on
        a socket to its checked address."""
        return self._context.wrap_socket(  # type: ignore[attr-defined, no-any-return]
            sock,
            server_hostname=self._tunnel_host or self.host,  # type: ignore[attr-defined]
        )


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, guard: _Guard) -> None:
        super().__init__()
        self.guard = guard

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(
            _HTTPConnection,  # type: ignore[arg-type]
            req,
            guard=self.guard,
            via_proxy=_via_proxy(req),
            target=_target(req),
        )


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, guard: _Guard, ca_bundle: Path | None) -> None:
        # The site's CA bundle (network.ca_bundle), as git's fetches trust it.
        try:
            context = ssl.create_default_context(cafile=ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            raise RecordError(
                f"cannot read the site's CA bundle {ca_bundle} ({_one_line(exc)}): check "
                "network.ca_bundle"
            ) from None
        super().__init__(context=context)
        self.guard = guard

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(
            _HTTPSConnection,  # type: ignore[arg-type]
            req,
            guard=self.guard,
            via_proxy=_via_proxy(req),
            target=_target(req),
            context=self._context,  # type: ignore[attr-defined]
        )


def _via_proxy(req: urllib.request.Request) -> bool:
    """Whether urllib's ProxyHandler routed ``req`` through a proxy: an
    absolute URL sent to it (HTTP) or a CONNECT tunnel (HTTPS)."""
    return req.has_proxy() or bool(getattr(req, "_tunnel_host", None))


def _target(req: urllib.request.Request) -> tuple[str, int]:
    """The host and port ``req``'s URL names (the proxy's, once routed
    through it, are in ``req.host``)."""
    parts = urlsplit(req.full_url)
    return parts.hostname or "", parts.port or int(_DEFAULT_PORTS.get(parts.scheme, "80"))


def _host_port(proxy: str) -> tuple[str, int]:
    """A ``*_proxy`` value's host and port, as urllib connects to it."""
    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    try:
        port = parts.port
    except ValueError:
        port = None
    return parts.hostname or "", port or 80


class Session:
    """Requests for one resolve or fetch of a record: every URL judged by
    ``policy``, every byte and second counted by ``budget``. ``setting``
    names the site setting for the service (for unreachable hosts)."""

    def __init__(
        self,
        policy: RepoPolicy,
        budget: Budget,
        setting: str,
        *,
        judge: Callable[[str], object] | None = None,
        networks: Sequence[addresses.Network] | None = None,
    ) -> None:
        """``judge`` raises unless a request's URL may be sent (by default
        :func:`check_fetch_url`); ``networks``: the non-public addresses
        connections may go to (by default ``repos.internal_networks``)."""
        self.policy = policy
        self.budget = budget
        self.setting = setting
        self._judge = judge or (lambda url: check_fetch_url(url, policy))
        proxies = urllib.request.getproxies()  # the host's, as git keeps them
        if networks is None:
            networks = policy.internal_networks
        self._guard = _Guard(addresses.AddressRule(networks), proxies, budget.deadline)
        handlers: list[urllib.request.BaseHandler] = [
            urllib.request.ProxyHandler(proxies),
            _HTTPHandler(self._guard),
            _HTTPSHandler(self._guard, policy.ca_bundle),
        ]
        self._opener = urllib.request.OpenerDirector()
        for handler in handlers:
            self._opener.add_handler(handler)
        self._watchdog = threading.Timer(
            max(budget.deadline - time.monotonic(), 0), self._guard.expire
        )
        self._watchdog.daemon = True
        self._watchdog.start()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._watchdog.cancel()

    def _open(self, url: str, method: str, accept: str) -> tuple[str, HTTPResponse]:
        """The response at the end of ``url``'s redirects (each hop judged)."""
        for _hop in range(MAX_REDIRECTS + 1):
            response = self._request(url, method, accept)
            if response.status not in _REDIRECTS:
                return url, response
            location = response.getheader("Location") or ""
            response.close()
            url = self._next_hop(url, location)
            method = "GET" if response.status == 303 else method
        raise RecordError(
            f"{self.budget.what}: {_shown_host(url)} redirected more than {MAX_REDIRECTS} "
            f"times ({self.setting})"
        )

    def _next_hop(self, url: str, location: str) -> str:
        if not location or not location.isprintable():
            raise RecordError(
                f"{self.budget.what}: {_shown_host(url)} sent a redirect without a usable "
                f"Location ({self.setting})"
            )
        return urljoin(url, location)

    def _request(self, url: str, method: str, accept: str) -> HTTPResponse:
        self._judge(url)
        request = urllib.request.Request(  # noqa: S310 (judged above; http(s) openers only)
            url, method=method, headers={"User-Agent": "hpcbinder", "Accept": accept}
        )
        try:
            response = self._opener.open(request, timeout=self.budget.remaining_seconds())
        except (urllib.error.URLError, OSError, HTTPException, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            self.budget.check_time()
            raise RecordError(
                f"{self.budget.what}: cannot reach {_shown_host(url)} ({_one_line(reason)}): "
                "check the host in "
                f"{self.setting} and that the build server may reach it"
            ) from None
        if not isinstance(response, HTTPResponse):  # only http(s) handlers are installed
            raise RecordError(
                f"{self.budget.what}: cannot reach {_shown_host(url)} over HTTP ({self.setting})"
            )
        return response

    def location(self, url: str, what: str) -> str:
        """Where ``url`` redirects to (one hop, not followed, but judged as
        the next hop would be): a DOI's landing page."""
        response = self._request(url, "GET", "*/*")
        with response:
            if response.status in _NOT_FOUND:
                raise NotFound(f"{what}: not found at {_shown_host(url)} ({self.setting})")
            location = response.getheader("Location") or ""
            if response.status not in _REDIRECTS:
                raise RecordError(
                    f"{what}: {_shown_host(url)} answered {response.status}, not a redirect "
                    f"({self.setting})"
                )
        landing = self._next_hop(url, location)
        check_fetch_url(landing, self.policy)
        return landing

    def redirect(self, url: str) -> str | None:
        """The Location of ``url``'s answer if it is a redirect (as sent:
        neither followed nor judged here), else None; its body unread."""
        response = self._request(url, "GET", "*/*")
        with response:
            if response.status not in _REDIRECTS:
                return None
            return response.getheader("Location") or ""

    def final_url(self, url: str) -> str:
        """The URL ``url``'s redirects (each judged) end at, its body unread."""
        final, response = self._open(url, "GET", "*/*")
        response.close()
        return final

    def json(self, url: str, what: str, *, method: str = "GET") -> Any:
        """The JSON document at ``url``; :class:`NotFound` for 401, 403, 404, 410."""
        _final, response = self._open(url, method, "application/json")
        with response:
            self._check_status(response, url, what)
            body = bytearray()
            for chunk in self._chunks(response, url):
                self.budget.add_bytes(len(chunk))
                body += chunk
                if len(body) > MAX_JSON_BYTES:
                    raise RecordError(
                        f"{what}: {_shown_host(url)} answered with more than "
                        f"{MAX_JSON_BYTES >> 20} MB of JSON ({self.setting})"
                    )
        try:
            return json.loads(bytes(body))
        except (ValueError, RecursionError):
            raise RecordError(
                f"{what}: {_shown_host(url)} did not answer with JSON ({self.setting})"
            ) from None

    def save(self, url: str, path: Path, what: str) -> None:
        """The body at ``url`` into the new file ``path``, counted."""
        _final, response = self._open(url, "GET", "*/*")
        with response:
            self._check_status(response, url, what)
            length = response.getheader("Content-Length") or ""
            if (
                length.isdigit()
                and self.budget.written + int(length) > self.budget.bounds.max_bytes
            ):
                self.budget.add_bytes(int(length))  # raises, naming the setting
            self.budget.add_file()
            with path.open("xb") as out:
                for chunk in self._chunks(response, url):
                    self.budget.add_bytes(len(chunk))
                    out.write(chunk)

    def _chunks(self, response: HTTPResponse, url: str) -> Iterator[bytes]:
        """The body a chunk at a time; a connection that breaks (or that the
        watchdog shut at the deadline) is an error, never a short body."""
        try:
            while chunk := response.read1(CHUNK):
                yield chunk
        except (OSError, HTTPException) as exc:
            self.budget.check_time()
            raise RecordError(
                f"{self.budget.what}: {_shown_host(url)} broke off its answer "
                f"({_one_line(exc)}) ({self.setting})"
            ) from None
        self.budget.check_time()

    def _check_status(self, response: HTTPResponse, url: str, what: str) -> None:
        if response.status in _NOT_FOUND:
            raise NotFound(f"{what}: not found at {_shown_host(url)} ({self.setting})")
        if response.status != 200:
            raise RecordError(
                f"{what}: {_shown_host(url)} answered {response.status} ({self.setting})"
            )


def _one_line(reason: object) -> str:
    text = " ".join(str(reason).split())
    return text[:200] if text.isprintable() else "an error"
