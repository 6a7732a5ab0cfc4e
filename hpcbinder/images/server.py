"""The build server (``hpcbinder build-server``): the one process that
fetches repositories, builds images and writes the image store, running as
the build account.

Researchers' CLI and the Binder service ask it over HTTP with a MUNGE
credential (see :mod:`hpcbinder.images.client`); neither needs rights to the
store, sudo to the build account, or a site file of its own that the
server would trust: the server applies its own site file's policy.

Each researcher's request is their own: their limits, their disk
quota, their use records and their refusals (one researcher's quota
message reaching another would leak it, and refuse them for nothing); a
researcher asking again for a spec in progress follows their first
request, and a request runs to its end whoever leaves. The image is built
once all the same: a request whose environment another request of this
server builds follows that build's progress without a build slot and then
finds the image, and builds of other processes are shared through the
store's lock. At most ``binder.max_parallel_builds`` build at once (the
rest wait in a queue and hear their position), and one researcher may
have ``build.max_builds_per_user`` builds in progress.

As the store's owner it also records use: of an image at every request
that finds it built (and at every build), of an image a launch reports
(``POST /used``: the spawner starting or restarting a server), and of a
checkout whenever it prepares a repository or starts a build from it;
``images gc`` keeps what was used (see :mod:`hpcbinder.images.gc`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import hmac
import json
import logging
import pwd
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from tornado import web
from tornado.httpserver import HTTPServer
from tornado.iostream import StreamClosedError

from hpcbinder.config import RepoPolicy, Site
from hpcbinder.errors import NoAccess, UserError
from hpcbinder.images import builder, deploy, private, quota
from hpcbinder.images import gc as storegc
from hpcbinder.images.client import BuildRequest, ServerEvent, UseRequest
from hpcbinder.images.store import BuildEvent, image_store
from hpcbinder.images.streams import SharedStream, keep_alive
from hpcbinder.render import pipeline
from hpcbinder.render.pipeline import Fetched
from hpcbinder.seams import git, munge
from hpcbinder.sources import providers

log = logging.getLogger("hpcbinder.images.server")
KEEPALIVE_SECONDS = 10.0
#: The largest request body read (a MUNGE credential around a spec: a few kB).
REQUEST_BYTES = 64 * 1024
#: Phases of :class:`hpcbinder.images.store.BuildEvent` passed on as log lines.
_LOGGED = frozenset({"waiting", "building", "log", "smoke", "publishing"})
#: Phases of another request's build that a request for the same image
#: follows (its build's progress, not its requester's own outcome).
_FOLLOWED = frozenset({"waiting", "building", "log"})

BuildStream = SharedStream[ServerEvent, Fetched]
#: This process's key for the request ids its log shows (:func:`request_id`).
_LOG_KEY = secrets.token_bytes(32)
_Request = TypeVar("_Request")


async def _verified(body: bytes, parse: Callable[[str], _Request]) -> tuple[str, _Request]:
    """The sender and the request a MUNGE credential carries (403 if it
    does not verify, 400 if its request is malformed)."""
    try:
        verified = await asyncio.to_thread(munge.verify, body.decode(errors="replace"))
        return verified.user, parse(verified.payload)
    except munge.MungeError as exc:
        raise web.HTTPError(403, reason=str(exc)[:200]) from exc
    except ValueError as exc:
        raise web.HTTPError(400, reason=f"malformed request: {exc}"[:200]) from exc


def request_id(spec: str) -> str:
    """What this server's log says of ``spec`` until it is known not to be
    a repository the build account may not read: a hash keyed with this
    process's secret, so that a reader of the log (an account the site
    lets read it) can neither read nor confirm a guess of the names of
    others' private repositories that were asked for; the same id for the
    same spec, to follow one request's lines."""
    digest = hmac.new(_LOG_KEY, spec.encode(errors="replace"), hashlib.sha256).hexdigest()
    return f"request-{digest[:16]}"


def _failure(spec: str, policy: RepoPolicy, exc: UserError | OSError) -> ServerEvent:
    """The one-line answer to a request that fails for the requester's
    reasons. A repository the build account cannot fetch (one that wants
    credentials, one on this host not open to all, one that is not there,
    a folder it may not enter) is one answer, :class:`NoAccess`'s text,
    whichever it was: the requester's own process may fetch it as her
    (kind ``no-access``: :mod:`hpcbinder.images.private`), and nobody learns
    whether another's private repository exists, not even from this
    server's log (which names only its :func:`request_id`, not the spec or
    why). Any other failure of the
    file system is this server's, one line naming no path."""
    if private.no_access(exc):
        log.info("no anonymous access to %s", request_id(spec))
        try:
            name = providers.parse_spec(spec, policy).readable_name()
        except UserError:
            name = providers.echo(spec)
        return ServerEvent("failed", str(NoAccess.about(name)), kind="no-access")
    if isinstance(exc, OSError):
        log.warning("preparing %s failed: %s", providers.echo(spec), exc)
        reason = exc.strerror or type(exc).__name__
        return ServerEvent("failed", f"preparing the repository failed: {reason}", kind="internal")
    return ServerEvent("failed", str(exc), kind="user")


def _on_behalf(site: Site, sender: str, for_user: str | None) -> str:
    """Whom a request is for: the sender, or the researcher a service
    account of ``build.requesters`` names (403 for anyone else)."""
    if for_user is None or for_user == sender:
        return sender
    if sender not in site.build.requesters:
        raise web.HTTPError(
            403,
            reason=f"{sender} may not ask for builds for others (site file: build.requesters)",
        )
    try:
        uid = pwd.getpwnam(for_user).pw_uid
    except KeyError:
        uid = None
    if uid == 0 or for_user == site.build.account or for_user in site.build.requesters:
        # Their rights (to read repositories on this host) are not lent out.
        raise web.HTTPError(403, reason=f"builds are asked for researchers, not {for_user}")
    if uid is None:
        raise web.HTTPError(400, reason=f"{for_user!r} is not an account on this host")
    return for_user


class BuildQueue:
    """Starts, shares, queues and limits builds.

    Fetches and builds hold a thread for minutes (``repos.fetch_timeout_seconds``,
    ``build.timeout_minutes``): each runs in a pool of its own, as large as
    its site-wide limit, so that asyncio's default executor, which every
    request's MUNGE check and store lookups use, never waits behind them
    (a few hostile record services stalling their answers held all its
    threads, and every request waited)."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self._streams: dict[tuple[str, str], BuildStream] = {}  # by (spec, researcher)
        self._images: dict[str, BuildStream] = {}  # env key -> the request building it
        self._slots = asyncio.Semaphore(site.binder.max_parallel_builds)
        self._builds = concurrent.futures.ThreadPoolExecutor(
            site.binder.max_parallel_builds, thread_name_prefix="build"
        )
        self._fetch_slots = asyncio.Semaphore(site.build.max_parallel_fetches)
        self._fetches = concurrent.futures.ThreadPoolExecutor(
            site.build.max_parallel_fetches, thread_name_prefix="fetch"
        )
        self._queue: list[BuildStream] = []
        self._preparing: Counter[str] = Counter()  # fetch-only requests, by researcher

    def in_progress(self) -> Counter[str]:
        return Counter(user for _, user in self._streams) + self._preparing

    def over_limit(self, user: str) -> ServerEvent | None:
        """The refusal for a new request of ``user``'s, if they are at the
        site's limit (builds and fetch-only requests count alike)."""
        limit = self.site.build.max_builds_per_user
        if self.in_progress()[user] < limit:
            return None
        return ServerEvent(
            "failed",
            f"{user} has {limit} builds in progress, this site's limit "
            "(site file: build.max_builds_per_user); try again when one ends",
            kind="user",
        )

    @contextlib.contextmanager
    def preparing(self, user: str) -> Iterator[None]:
        """Counts a fetch-only request against ``user``'s limit while it runs."""
        self._preparing[user] += 1
        try:
            yield
        finally:
            self._preparing[user] -= 1

    def stream(self, spec: str, user: str) -> BuildStream:
        """``user``'s request for ``spec`` in progress, or a new one."""
        key = (spec, user)
        stream = self._streams.get(key)
        if stream is not None and not stream.done:
            return stream
        stream = BuildStream(spec)
        refusal = self.over_limit(user)
        if refusal is not None:
            stream.events.append(refusal)
            stream.done = True
            return stream
        self._streams[key] = stream
        task = asyncio.get_running_loop().create_task(self._run(stream, user))
        task.add_done_callback(lambda _: self._forget(key, stream))
        return stream

    def _forget(self, key: tuple[str, str], stream: BuildStream) -> None:
        if self._streams.get(key) is stream:
            del self._streams[key]

    def _readable_name(self, spec: str) -> str:
        # Parsing a local spec reads the file system: off the event loop.
        return providers.parse_spec(spec, self.site.repos).readable_name()

    def prepare(self, spec: str, user: str) -> pipeline.Prepared:
        """Fetch and render ``spec`` for ``user`` (in a thread): refused
        while ``user``'s kept images and checkouts are at the site's disk
        limit; the checkout counted for them and its use recorded."""
        ledger = quota.DiskLedger(self.site, image_store(self.site))
        ledger.check(user)
        with git.deploy_credentials(deploy.load(self.site)):  # the hosts the site vouches for
            prepared = pipeline.prepare(spec, self.site)
        storegc.record_checkout_use(prepared.checkout)
        size = quota.tree_bytes(prepared.checkout)
        ledger.add(user, f"checkout:{prepared.checkout}", size)
        return prepared

    async def fetch(
        self, spec: str, user: str, notify: Callable[[ServerEvent], Awaitable[None]]
    ) -> pipeline.Prepared:
        """:meth:`prepare` in the fetch pool, at most ``build.max_parallel_fetches``
        at once; a request over the limit is told (``notify``) that it waits."""
        limit = self.site.build.max_parallel_fetches
        if self._fetch_slots.locked():
            await notify(
                ServerEvent(
                    "waiting",
                    f"Waiting to fetch: {limit} fetches in progress, this site's limit "
                    "(site file: build.max_parallel_fetches)",
                )
            )
        async with self._fetch_slots:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._fetches, self.prepare, spec, user)

    def _count_image(self, key: str, user: str) -> None:
        store = image_store(self.site)
        record = store.lookup(key)
        if record is not None:
            quota.DiskLedger(self.site, store).add(user, f"image:{key}", record.meta.size_bytes)

    async def _run(self, stream: BuildStream, user: str) -> None:
        started = time.monotonic()
        try:
            name = await asyncio.to_thread(self._readable_name, stream.key)
            await stream.publish(ServerEvent("fetching", f"Fetching {name}…"))
            prepared = await self.fetch(stream.key, user, stream.publish)
            for warning in prepared.rendered.warnings:
                await stream.publish(ServerEvent("fetching", f"warning: {warning}"))
            store = image_store(self.site)
            found = await asyncio.to_thread(store.find, prepared.rendered.env_key, user)
            if found is None and await self._build_once(stream, prepared, user):
                await asyncio.to_thread(self._count_image, prepared.rendered.env_key, user)
            await stream.finish(ServerEvent("built"), prepared.fetched())
            log.info(
                "%s: image %s in %.1f s",
                stream.key,
                prepared.rendered.env_key,
                time.monotonic() - started,
            )
        except (UserError, OSError) as exc:
            await stream.finish(_failure(stream.key, self.site.repos, exc))
        except builder.ImageBuildError as exc:
            await stream.finish(
                ServerEvent(
                    "failed",
                    exc.message,
                    kind="build",
                    key=exc.key,
                    step=exc.step,
                    tail=exc.tail[-30:],
                    reason=exc.reason,
                )
            )
        except Exception:  # a failed event beats a stream that just stops
            log.exception("build of %s failed", stream.key)
            await stream.finish(
                ServerEvent(
                    "failed", f"internal error while building {stream.key}", kind="internal"
                )
            )

    async def _build_once(
        self, stream: BuildStream, prepared: pipeline.Prepared, user: str
    ) -> bool:
        """Build ``prepared``'s image for ``user`` (True), unless another
        request of this server builds it: then follow that build's progress,
        holding no build slot, and find the image, its use recorded for
        ``user`` (False); after a failure there, build it here."""
        key = prepared.rendered.env_key
        store = image_store(self.site)
        while (other := self._images.get(key)) is not None:
            async for event in other.follow():
                if event.phase in _FOLLOWED:  # its progress as this request's log
                    await stream.publish(ServerEvent("log", event.message))
            if await asyncio.to_thread(store.find, key, user) is not None:
                return False
        self._images[key] = stream
        try:
            await self._build(stream, prepared, user)
        finally:
            del self._images[key]
        return True

    async def _build(self, stream: BuildStream, prepared: pipeline.Prepared, user: str) -> None:
        self._queue.append(stream)
        await self._announce_queue()
        try:
            async with self._slots:
                self._queue.remove(stream)
                await self._announce_queue()
                await self._build_now(stream, prepared, user)
        finally:
            if stream in self._queue:  # cancelled while queued
                self._queue.remove(stream)

    async def _announce_queue(self) -> None:
        for position, waiting in enumerate(self._queue, 1):
            await waiting.publish(
                ServerEvent(
                    "waiting",
                    f"Waiting for a build slot: number {position} in the queue",
                    queue_position=position,
                )
            )

    async def _build_now(self, stream: BuildStream, prepared: pipeline.Prepared, user: str) -> None:
        loop = asyncio.get_running_loop()
        await stream.publish(ServerEvent("building", f"Building image {prepared.rendered.env_key}"))
        # gc keeps a checkout for a build's time limit after its last use.
        await asyncio.to_thread(storegc.record_checkout_use, prepared.checkout)

        def emit(event: BuildEvent) -> None:
            if event.phase in _LOGGED:
                line = ServerEvent("log", event.message.rstrip("\n"))
                asyncio.run_coroutine_threadsafe(stream.publish(line), loop)

        build_image = builder.Builder(self.site).build_image
        await loop.run_in_executor(self._builds, build_image, prepared, emit, user)


class BuildRequestHandler(web.RequestHandler):
    """``POST /build``: a MUNGE credential in, a stream of JSON lines out."""

    _last_write = 0.0

    @property
    def site(self) -> Site:
        site: Site = self.settings["site"]
        return site

    #: Whether this request was answered "no access" (its spec is then not logged).
    _no_access = False

    async def _send(self, event: ServerEvent) -> None:
        self._no_access = self._no_access or event.kind == "no-access"
        self.write(event.to_line())
        await self.flush()
        self._last_write = time.monotonic()

    async def _keepalive(self) -> None:
        await keep_alive(
            lambda: self._last_write,
            lambda: self._send(ServerEvent("keepalive")),
            KEEPALIVE_SECONDS,
        )

    async def post(self) -> None:
        sender, request = await _verified(self.request.body, BuildRequest.from_json)
        user = _on_behalf(self.site, sender, request.for_user)
        spec = providers.echo(request.spec)  # not parsed yet: it may hold credentials
        rid = request_id(request.spec)
        log.info("%s asks for %s%s", sender, rid, f" for {user}" if user != sender else "")
        self.set_header("Content-Type", "application/x-ndjson")
        self.set_header("Cache-Control", "no-cache")
        keepalive = asyncio.get_running_loop().create_task(self._keepalive())
        try:
            result = await self._answer(request, user)
            if result is not None:
                signed = await asyncio.to_thread(munge.sign, json.dumps(result.to_json()), sender)
                await self._send(ServerEvent("done", credential=signed))
        except StreamClosedError:
            pass  # the client left; a build goes on for the others
        finally:
            keepalive.cancel()
            if not self._no_access:  # a repository the build account may read (or not one)
                log.info("%s was %s", rid, spec)

    async def _answer(self, request: BuildRequest, user: str) -> Fetched | None:
        try:  # the build account's rights are never lent to read a repository
            await asyncio.to_thread(providers.check_shareable, request.spec, self.site.repos)
        except (UserError, OSError) as exc:
            await self._send(_failure(request.spec, self.site.repos, exc))
            return None
        queue: BuildQueue = self.settings["queue"]
        if request.prepare_only:
            refusal = queue.over_limit(user)
            if refusal is not None:
                await self._send(refusal)
                return None
            try:
                with queue.preparing(user):
                    prepared = await queue.fetch(request.spec, user, self._send)
            except (UserError, OSError) as exc:
                await self._send(_failure(request.spec, self.site.repos, exc))
                return None
            return prepared.fetched()
        stream = queue.stream(request.spec, user)
        async for event in stream.follow():
            if event.phase != "built":
                await self._send(event)
        result: Fetched | None = stream.result
        return result


class UseHandler(web.RequestHandler):
    """``POST /used``: a MUNGE credential carrying a :class:`UseRequest`;
    204 once the use is recorded, 404 for an image the store does not have
    or the user may not launch (:meth:`ImageStore.may_launch`)."""

    async def post(self) -> None:
        site: Site = self.settings["site"]
        sender, request = await _verified(self.request.body, UseRequest.from_json)
        user = _on_behalf(site, sender, request.for_user)
        store = image_store(site)
        # Only an image the user may launch: anyone could pin every image otherwise.
        if not await asyncio.to_thread(store.may_launch, request.key, user):
            raise web.HTTPError(404, reason=f"no image {request.key} that {user} may launch")
        if await asyncio.to_thread(store.find, request.key, user) is None:
            raise web.HTTPError(404, reason=f"no image {request.key} in the store")
        log.info("%s uses image %s%s", user, request.key, f" ({sender})" if user != sender else "")
        self.set_status(204)
        self.finish()


class BuildServerHealthHandler(web.RequestHandler):
    def get(self) -> None:
        self.finish({"ok": True})


def build_server_app(site: Site) -> web.Application:
    return web.Application(
        [
            (r"/build", BuildRequestHandler),
            (r"/used", UseHandler),
            (r"/health", BuildServerHealthHandler),
        ],
        site=site,
        queue=BuildQueue(site),
    )


def listen(site: Site, ip: str, port: int) -> HTTPServer:
    """The build server on ``ip:port``, reading no request body over
    :data:`REQUEST_BYTES` (tornado's default is 100 MB)."""
    return build_server_app(site).listen(port, ip, max_body_size=REQUEST_BYTES)


async def run_build_server(site: Site, ip: str, port: int) -> None:
    """Run until cancelled."""
    logging.basicConfig(
        level=logging.INFO, format="[%(levelname)1.1s %(asctime)s %(name)s] %(message)s"
    )
    listen(site, ip, port)
    log.info("build server on %s:%s, image store %s", ip, port, site.image_store)
    await asyncio.Event().wait()


def options(site: Site) -> dict[str, Any]:
    """Where the site's build server listens (``build.server_url``)."""
    url = site.build.server_url.rstrip("/").removeprefix("http://")
    host, _, port = url.rpartition(":")
    return {"ip": host, "port": int(port)}
