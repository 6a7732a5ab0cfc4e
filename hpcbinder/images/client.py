"""Asking the build server for an image: the one way researchers' CLI and
the Binder service get images built, without rights to the image store.

The request is a MUNGE credential whose payload is the :class:`BuildRequest`
(JSON), made by the requester's own account and decodable only by the build
account: the build server learns who asks from munged, on whatever host the
request came from, and a captured request cannot be replayed. The answer is
a stream of JSON lines (:class:`ServerEvent`); a successful one ends with the
:class:`~hpcbinder.render.pipeline.Fetched` result in a credential made by the build
account for the requester, so a client trusts only what the build account
said, and reads the image itself from the store (which only the build
account writes).

Launches that do not go through a build request (the spawner starting or
restarting a server from an image key) report the use of their image with
a :class:`UseRequest` (``POST /used``), so that the store's owner records
it and ``images gc`` keeps the image; its refusal (:class:`LaunchRefused`)
is the store's rule that the researcher may not launch that image.

Why MUNGE: at a site the hub, the login nodes and the build node are
different hosts, so peer credentials on a Unix socket cannot tell who asks,
and every Slurm host already runs munged with the cluster's key: no new
secret, certificate or sudo rule is needed.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from hpcbinder.config import Site
from hpcbinder.errors import UserError
from hpcbinder.images import private
from hpcbinder.images.builder import ImageBuildError
from hpcbinder.images.store import ImageRecord, image_store
from hpcbinder.patterns import ENV_KEY
from hpcbinder.render.pipeline import Fetched
from hpcbinder.seams import munge, proc

#: Seconds without a line from the server (it sends keepalives) before giving up.
READ_TIMEOUT = 120
#: Seconds a use report may take: it must never hold up a launch for long.
USE_TIMEOUT = 5
#: Seconds to connect: a build node that is down (no answer at all) is said
#: so in this time, not after the kernel's SYN retries (about two minutes).
CONNECT_TIMEOUT = 5


class BuildServerError(RuntimeError):
    """The build server could not be reached, refused the request, or failed."""


class BuildServerUnreachable(BuildServerError):
    """The build server could not be asked at all (down, no route, no
    answer in time): unlike its refusals and failures, which are its word."""


class LaunchRefused(UserError):
    """The build server answered that the researcher may not launch the
    image (:meth:`~hpcbinder.images.store.ImageStore.may_launch`), or that
    the store has no such image."""


class BuildRefused(UserError):
    """The build server refused what was asked (spec, site policy, repository
    configuration, quota): the message says why."""


class NoAnonymousAccess(BuildRefused):
    """The build server cannot fetch the repository (it needs credentials,
    is not open to all accounts, or is not there): the researcher's own
    process may (:mod:`hpcbinder.images.private`). Its message is
    :class:`~hpcbinder.errors.NoAccess`'s, the same for all three."""


@dataclass(frozen=True)
class BuildRequest:
    """What a client asks for. ``for_user``: a service account asking on
    behalf of a researcher (only accounts in ``build.requesters``)."""

    spec: str
    prepare_only: bool = False  # fetch and render, report, build nothing
    for_user: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BuildRequest:
        data, for_user = _request_payload(text, "spec", "a build request needs a spec")
        return cls(data["spec"], bool(data.get("prepare_only", False)), for_user)


def _request_payload(text: str, field: str, missing: str) -> tuple[dict[str, Any], str | None]:
    """A signed request's JSON object, checked to have the string ``field``
    (else ValueError ``missing``), and the account it is for, if named."""
    data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get(field), str):
        raise ValueError(missing)
    for_user = data.get("for_user")
    if for_user is not None and not isinstance(for_user, str):
        raise ValueError("for_user must be an account name")
    return data, for_user


@dataclass(frozen=True)
class UseRequest:
    """A launch of the store's image ``key`` (``for_user``: the researcher
    a service account launches it for; only recorded, never trusted)."""

    key: str
    for_user: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> UseRequest:
        data, for_user = _request_payload(text, "key", "a use report needs an image key")
        if not ENV_KEY.fullmatch(data["key"]):
            raise ValueError("not an image key")
        return cls(data["key"], for_user)


@dataclass(frozen=True)
class ServerEvent:
    """One line of the build server's answer.

    Phases: ``fetching``, ``waiting`` (with ``queue_position`` when queued),
    ``building`` (once, when a build starts), ``log`` (a line of its log),
    ``keepalive``; and last either ``done`` (``credential`` holds the
    result) or ``failed`` (``kind`` ``user``, ``no-access`` (a repository
    the build account cannot fetch), ``build`` or ``internal``;
    builds add ``key``, ``step``, ``tail`` and the log line that says why,
    ``reason``).
    """

    phase: str
    message: str = ""
    queue_position: int | None = None
    credential: str | None = None
    kind: str | None = None
    key: str | None = None
    step: str | None = None
    tail: list[str] = field(default_factory=list)
    reason: str | None = None

    def to_line(self) -> bytes:
        data = {k: v for k, v in asdict(self).items() if v not in (None, [])}
        return (json.dumps(data) + "\n").encode()

    @classmethod
    def from_line(cls, line: bytes) -> ServerEvent:
        data: dict[str, Any] = json.loads(line)
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)


def _raise_failure(event: ServerEvent) -> None:
    if event.kind == "no-access":
        raise NoAnonymousAccess(event.message)
    if event.kind == "user":
        raise BuildRefused(event.message)
    if event.kind == "build":
        raise ImageBuildError(
            event.key or "?", event.step or "build", event.message, event.tail, event.reason
        )
    raise BuildServerError(f"the build server failed: {event.message}")


class BuildServerClient:
    """The site's build server (``build.server_url``), as this account."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.url = urlsplit(site.build.server_url)

    def request(
        self,
        spec: str,
        on_event: Callable[[ServerEvent], None],
        *,
        prepare_only: bool = False,
        for_user: str | None = None,
    ) -> Fetched:
        """Fetch, render and (unless ``prepare_only``) build ``spec``;
        progress goes to ``on_event``. Raises :class:`BuildRefused`,
        :class:`~hpcbinder.images.builder.ImageBuildError` or :class:`BuildServerError`."""
        payload = BuildRequest(spec, prepare_only, for_user).to_json()
        connection, response = self._post("/build", payload, "build request", READ_TIMEOUT)
        try:
            if response.status != 200:
                reason = response.read().decode(errors="replace").strip()[:300]
                raise BuildServerError(f"the build server refused the request: {reason}")
            while line := response.readline():
                event = ServerEvent.from_line(line)
                if event.phase == "done":
                    return self._trusted_result(event.credential or "")
                if event.phase == "failed":
                    _raise_failure(event)
                if event.phase != "keepalive":
                    on_event(event)
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from exc
        finally:
            connection.close()
        raise BuildServerError("the build server's answer ended without a result")

    def record_use(self, key: str, for_user: str | None = None) -> None:
        """Tell the build server that image ``key`` is being launched (for
        ``for_user``): :class:`LaunchRefused` if they may not launch it,
        :class:`BuildServerError` if the server cannot be told within
        :data:`USE_TIMEOUT` seconds or fails."""
        payload = UseRequest(key, for_user).to_json()
        connection, response = self._post("/used", payload, "use report", USE_TIMEOUT)
        try:
            answer = response.read().decode(errors="replace").strip()[:300]
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from exc
        finally:
            connection.close()
        if response.status == 404:  # the build server's own words: one line, no markup
            raise LaunchRefused(f"image: {response.reason[:300]}")
        if response.status != 204:
            raise BuildServerError(f"the build server did not record the use of {key}: {answer}")

    def _post(
        self, path: str, payload: str, what: str, timeout: float
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """``payload`` signed with MUNGE for the build account, posted to
        ``path``; the open connection (the caller closes it) and its response."""
        try:
            credential = munge.sign(payload, self.site.build.account)
        except (munge.MungeError, KeyError, proc.CommandError) as exc:
            raise BuildServerError(f"cannot sign the {what} with MUNGE: {exc}") from exc
        connection = http.client.HTTPConnection(
            self.url.hostname or "127.0.0.1",
            self.url.port or 80,
            timeout=min(timeout, CONNECT_TIMEOUT),
        )
        try:
            connection.connect()
            if connection.sock is not None:
                connection.sock.settimeout(timeout)
            connection.request(
                "POST", path, body=credential, headers={"Content-Type": "text/plain"}
            )
            return connection, connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc: Exception) -> BuildServerUnreachable:
        return BuildServerUnreachable(
            f"cannot reach the build server at {self.site.build.server_url} "
            f"(site file: build.server_url): {exc}"
        )

    def _trusted_result(self, credential: str) -> Fetched:
        try:
            verified = munge.verify(credential)
        except munge.MungeError as exc:
            raise BuildServerError(f"the build server's answer does not verify: {exc}") from exc
        if verified.user != self.site.build.account:
            raise BuildServerError(
                f"the answer was signed by {verified.user}, not the build account "
                f"{self.site.build.account} (site file: build.account)"
            )
        return Fetched.from_json(json.loads(verified.payload))


def published_image(site: Site, fetched: Fetched) -> ImageRecord:
    """The image the build server reported, read from the store itself (a
    private build's: from this account's own store)."""
    if fetched.private:
        record = private.published(site, fetched.env_key)
    else:
        record = image_store(site).lookup(fetched.env_key)
    if record is None:
        raise BuildServerError(
            f"the build server reported image {fetched.env_key}, not in the store"
        )
    return record
