"""Starting a researcher's server for a Binder launch, through the hub's
REST API with the service's own token (never the researcher's).

Each repository gets its own named server per researcher, so one person
can run several Binders; launching a repository whose server already runs
the same image reuses it, and one running an older image is replaced.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from hpcbinder import textpatterns
from hpcbinder.errors import UserError
from hpcbinder.hub.options import LaunchOptions

_UNSAFE = textpatterns.compile(r"[^a-z0-9]+")


class LaunchFailed(UserError):
    """The hub could not start the server; the reason is the hub's."""


class HubAPI:
    """The hub's REST API as this service."""

    def __init__(self, api_url: str, token: str) -> None:
        self.api_url = api_url.rstrip("/")
        self._token = token

    def _request(self, method: str, path: str, body: Any = None, **extra: Any) -> HTTPRequest:
        return HTTPRequest(
            f"{self.api_url}{path}",
            method=method,
            headers={"Authorization": f"token {self._token}"},
            body=None if body is None else json.dumps(body),
            allow_nonstandard_methods=True,
            **extra,
        )

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        response = await AsyncHTTPClient().fetch(
            self._request(method, path, body, request_timeout=60)
        )
        return json.loads(response.body) if response.body else None

    async def progress(
        self, user: str, server: str, timeout: float, on_message: Callable[[str], None]
    ) -> dict[str, Any]:
        """Follow the spawn's progress stream to its last event, handing each
        event's message (the job's place in Slurm's queue, its node, ...) to
        ``on_message`` as it comes."""
        last: dict[str, Any] = {}
        buffer = b""

        def on_chunk(chunk: bytes) -> None:
            nonlocal buffer, last
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.startswith(b"data:"):
                    last = json.loads(line[5:])
                    if last.get("message") and not last.get("ready"):
                        on_message(str(last["message"]))

        path = f"/users/{quote(user)}/servers/{quote(server)}/progress"
        await AsyncHTTPClient().fetch(
            self._request("GET", path, streaming_callback=on_chunk, request_timeout=timeout)
        )
        return last


def _readable(clone_url: str) -> str:
    """The clone URL's last two parts in lowercase letters, digits and
    single hyphens, starting with a letter: for people, never for telling
    repositories apart."""
    tail = "-".join(clone_url.rstrip("/").removesuffix(".git").split("/")[-2:])
    return _UNSAFE.sub("-", tail.lower()).strip("-0123456789")


def _digest(clone_url: str) -> str:
    """128 bits of the clone URL's SHA-256 in base32 (26 of ``a-z2-7``).
    Names are what ties a launch to a running server and a workspace: with
    a short digest, enough tries find another URL with the victim
    repository's name (2^32 did for the old 8 hex digits), and launching it
    replaced her server with the attacker's image on her workspace."""
    raw = hashlib.sha256(clone_url.encode()).digest()[:16]
    return base64.b32encode(raw).decode().rstrip("=").lower()


def server_name(clone_url: str) -> str:
    """The named server of a repository, whatever the ref: a hint of its
    name and :func:`_digest`. JupyterHub 6 takes only "safe slugs" as server
    names (at most 30 lowercase letters, digits and single hyphens,
    starting with a letter), so the hint gets at most 3 characters."""
    hint = _readable(clone_url)[:3].strip("-")
    return f"{hint or 'r'}-{_digest(clone_url)}"


def workspace_slug(clone_url: str) -> str:
    """The researcher's workspace folder of a repository, whatever the ref:
    readable (up to 40 characters of its name) and :func:`_digest`, within
    the spawner's slug pattern (at most 100 of ``A-Za-z0-9_.-``)."""
    readable = _readable(clone_url)[:40].strip("-")
    return f"{readable or 'r'}-{_digest(clone_url)}"


class Launcher:
    def __init__(self, hub: HubAPI, timeout: float) -> None:
        self.hub = hub
        self.timeout = timeout
        self._cancelled: set[tuple[str, str]] = set()  # (user, server) cancelled from a page

    async def _server(self, user: str, name: str) -> dict[str, Any] | None:
        model = await self.hub.call("GET", f"/users/{quote(user)}")
        server: dict[str, Any] | None = model.get("servers", {}).get(name)
        return server

    async def _stop(self, user: str, name: str) -> None:
        await self.hub.call("DELETE", f"/users/{quote(user)}/servers/{quote(name)}")
        for _ in range(int(self.timeout / 0.5)):
            if await self._server(user, name) is None:
                return
            await asyncio.sleep(0.5)
        raise LaunchFailed(f"the old server {name} did not stop")

    async def cancel(self, user: str, name: str) -> bool:
        """Stop ``user``'s server ``name`` (a pending one's Slurm job is
        cancelled by the spawner's stop); whether there was one."""
        if await self._server(user, name) is None:
            return False
        self._cancelled.add((user, name))
        try:
            await self.hub.call("DELETE", f"/users/{quote(user)}/servers/{quote(name)}")
        except HTTPClientError as exc:
            raise LaunchFailed(_hub_reason(exc)) from exc
        return True

    async def server_token(self, user: str, name: str) -> str:
        """A new hub token of ``user``'s that reaches their running server
        ``name`` and nothing else, for an hour: what BinderHub's clients on
        another origin send to the server. Minted in the hub by
        :mod:`hpcbinder.hub.servertokens`, which fixes its scope and expiry
        (this service never holds the hub's ``tokens`` scope)."""
        path = f"/hpcbinder/servers/{quote(user, safe='')}/{quote(name, safe='')}/token"
        try:
            model = await self.hub.call("POST", path)
        except HTTPClientError as exc:
            raise LaunchFailed(f"no token for the server: {_hub_reason(exc)}") from exc
        return str(model["token"])

    async def _request_spawn(self, user: str, name: str, options: LaunchOptions) -> None:
        try:
            path = f"/users/{quote(user)}/servers/{quote(name)}"
            await self.hub.call("POST", path, options.user_options())
        except HTTPClientError as exc:
            raise LaunchFailed(_hub_reason(exc)) from exc

    async def _until_pending(self, user: str, name: str, request: asyncio.Future[None]) -> None:
        """Until the hub has the spawn under way, or answered ``request``
        (its refusal raised). The hub answers a spawn request only when the
        server is up or after its ``slow_spawn_timeout`` (10 s): the
        progress (the job's place in the queue) is followed from the start."""
        while not request.done():
            server = await self._server(user, name)
            if server is not None and server.get("pending") == "spawn":
                return
            await asyncio.wait({request}, timeout=0.25)
        request.result()

    async def launch(
        self,
        user: str,
        name: str,
        options: LaunchOptions,
        on_message: Callable[[str], None] = lambda _: None,
    ) -> str:
        """Start (or reuse) ``user``'s server ``name``; its URL as the hub
        gives it (absolute, on the researcher's own origin, with
        ``subdomain_host``). The hub's progress messages go to
        ``on_message`` as they come."""
        server = await self._server(user, name)
        if server is not None:
            running = server.get("user_options", {})
            same_image = (running.get("image"), bool(running.get("private"))) == (
                options.image,
                options.private,
            )
            if server.get("ready") and same_image:
                return str(server["url"])
            if server.get("pending") != "spawn" or not same_image:
                await self._stop(user, name)
                server = None
        request: asyncio.Future[None] | None = None
        if server is None:
            self._cancelled.discard((user, name))
            request = asyncio.ensure_future(self._request_spawn(user, name, options))
            await self._until_pending(user, name, request)
        final = await self.hub.progress(user, name, self.timeout, on_message)
        if request is not None:
            with contextlib.suppress(LaunchFailed):  # the progress says why
                await request
        if (user, name) in self._cancelled:
            # The hub says "ready" for a spawn it interrupted, too.
            self._cancelled.discard((user, name))
            raise LaunchFailed("cancelled: the server and its queued job are gone")
        if final.get("ready"):
            return str(final.get("url") or (await self._server(user, name) or {})["url"])
        reason = str(final.get("message") or "the server stopped while starting")
        raise LaunchFailed(reason)


def _hub_reason(exc: HTTPClientError) -> str:
    try:
        body = json.loads(exc.response.body) if exc.response and exc.response.body else {}
    except ValueError:
        body = {}
    return str(body.get("message") or exc)
