"""The service's routes: pages, the ``/build`` event stream, health,
versions, metrics. Every page and stream needs a hub login; versions and
metrics an admin's or Prometheus' token; a spec, ref or log line reaches a
page only as escaped text."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote, unquote, urljoin

from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated
from tornado import web
from tornado.iostream import StreamClosedError

from hpcbinder import __version__
from hpcbinder.config import Site
from hpcbinder.errors import UserError
from hpcbinder.hub.options import LaunchOptions, WorkspaceOptions
from hpcbinder.images.launch import launch_argv
from hpcbinder.images.streams import keep_alive
from hpcbinder.jobs.batchjobs import submit_checked
from hpcbinder.jobs.request import (
    JobRequest,
    accounts_for,
    link_overrides,
    partitions_for,
    request_for,
    request_for_link,
)
from hpcbinder.seams.slurm import PartitionLoad, SlurmError
from hpcbinder.sources import providers
from hpcbinder.web import binderapi
from hpcbinder.web.builds import Built
from hpcbinder.web.events import KEEPALIVE, Event, failed
from hpcbinder.web.launcher import LaunchFailed, server_name, workspace_slug
from hpcbinder.web.metrics import is_scrape_token
from hpcbinder.web.privatebuilds import PrivateBuildFailed, PrivateBuilt
from hpcbinder.web.service import Service
from hpcbinder.web.trust import credential_host

#: Seconds of silence after which the stream sends a keepalive comment.
KEEPALIVE_SECONDS = 10.0


class BaseHandler(HubOAuthenticated, web.RequestHandler):  # type: ignore[misc]
    #: Whether the site's listed origins (``binder.cors_allow_origins``) may
    #: read this route's answers with the researcher's login: the API
    #: (the stream, the provider list), never a page (pages hold the XSRF
    #: token that guards the service's forms).
    cors: ClassVar[bool] = False

    def set_default_headers(self) -> None:
        """No other site may frame the service's pages: under a page of
        theirs, a click meant for it would land on "Run it", "Launch" or
        "Run as batch job" (clickjacking). ``frame-ancestors`` for current
        browsers, ``X-Frame-Options`` for old ones. CORS headers on the
        API's routes, for a listed origin only."""
        self.set_header("Content-Security-Policy", "frame-ancestors 'none'")
        self.set_header("X-Frame-Options", "DENY")
        # An answer is what its Content-Type says: the JSON API's (which
        # echoes a provider's name) is never sniffed into a page.
        self.set_header("X-Content-Type-Options", "nosniff")
        if self.cors:
            self.set_header("Vary", "Origin")
            origin = self.request.headers.get("Origin", "")
            if self.listed_origin(origin):
                self.set_header("Access-Control-Allow-Origin", origin)
                self.set_header("Access-Control-Allow-Credentials", "true")

    def listed_origin(self, origin: str) -> bool:
        """Whether ``origin`` (an ``Origin`` header, exactly as sent) is this
        service's own or one the site lists; ``null`` and anything else is not."""
        service: Service = self.settings["service"]
        allowed = {*service.site.binder.cors_allow_origins, service.origin}
        return origin in allowed

    def options(self, *args: str) -> None:
        """CORS preflight: what a listed origin's script may send (GET with
        the stream's and the hub's headers); 403 for any other origin."""
        if not self.cors or not self.listed_origin(self.request.headers.get("Origin", "")):
            raise web.HTTPError(403, "this origin may not use the Binder API with a login")
        self.set_header("Access-Control-Allow-Methods", "GET")
        self.set_header(
            "Access-Control-Allow-Headers",
            "Accept, Authorization, Cache-Control, Last-Event-ID, X-XSRFToken",
        )
        self.set_header("Access-Control-Max-Age", "600")
        self.set_status(204)
        self.finish()

    @property
    def service(self) -> Service:
        service: Service = self.settings["service"]
        return service

    @property
    def hub_auth(self) -> Any:
        return self.service.hub_auth

    @property
    def user_name(self) -> str:
        return str(self.current_user["name"])

    def raw_spec(self, route: str) -> str:
        """``<provider>/<spec>`` exactly as in the URL: Tornado's decoded path
        arguments would turn an escaped ``%2F`` inside the spec into ``/``."""
        prefix = f"{self.service.base_url}{route}/"
        return self.request.path[len(prefix) :]

    def page(self, name: str, code: int = 200, **context: Any) -> None:
        self.set_status(code)
        self.finish(self.service.pages.get_template(name).render(service=self.service, **context))

    def unconfirmed(self, repo: providers.RepoProvider) -> bool:
        """Whether a browser (the hub's cookie) asks to run ``repo`` before
        the researcher agreed to (:mod:`hpcbinder.web.trust`). A client that
        authenticated with the researcher's own valid token asks explicitly;
        a token that failed (the hub then falls back to the cookie) or a
        websocket upgrade (exempt from the hub's XSRF check) does not."""
        explicit = getattr(self, "_token_authenticated", False)
        if explicit and "Upgrade" not in self.request.headers:
            return False
        return self.service.confirmations.needs_confirmation(self.user_name, repo.url, repo.ref)

    async def cluster_view(self) -> dict[str, Any]:
        """What the forms show a researcher choosing resources: the
        partitions they may use with their free CPUs, GPUs and queue, and
        the Slurm accounts they may charge."""
        loads = await self.service.partition_load()
        site, user = self.service.site, self.user_name
        return {
            "partitions": [
                loads.get(name) or PartitionLoad(name, 0, 0, 0, 0)
                for name in partitions_for(site, user)
            ],
            "load_known": bool(loads),
            "accounts": accounts_for(site, user),
        }

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        reason = self._reason
        exc = kwargs.get("exc_info", (None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message:
            reason = exc.log_message % exc.args if exc.args else exc.log_message
        self.page("error.html", status_code, status=status_code, reason=reason)


#: Percent-decoding rounds :func:`_inside_server` looks through; a value
#: still escaped after them is refused.
_DECODE_ROUNDS = 4


def _inside_server(name: str, value: str) -> str:
    """``value`` of the link's ``name`` (labpath, filepath, urlpath) without
    its leading slashes (as BinderHub's client strips them), if it stays
    below the server's URL: no ``.`` or ``..`` segment, backslash (a ``/``
    to browsers), control character or leading ``/``, as given or after
    any round of percent-decoding (browsers read ``%2e`` as a dot in
    paths, servers decode again). Otherwise the ready redirect could leave
    the server's prefix for another server of the researcher's or the hub."""
    path = value.lstrip("/")
    layer = path
    for _ in range(_DECODE_ROUNDS):
        segments = layer.replace("?", "/").replace("#", "/").split("/")
        if (
            layer.startswith("/")
            or "\\" in layer
            or any(ord(char) < 0x20 or ord(char) == 0x7F for char in layer)
            or any(segment in (".", "..") for segment in segments)
        ):
            break
        decoded = unquote(layer)
        if decoded == layer:
            return path
        layer = decoded
    shown = value if len(value) <= 80 else value[:80] + "…"
    raise UserError(
        f"{name}={shown!r} leaves the server: give a path inside it without '.' or '..' "
        f"segments, backslashes or escaped slashes at the start (e.g. {name}=index.ipynb)"
    )


def launch_path(query: dict[str, str]) -> str:
    """Where to open the server: labpath, else filepath, else urlpath;
    always below the server's URL (:func:`_inside_server`)."""
    if query.get("labpath"):
        return "lab/tree/" + quote(_inside_server("labpath", query["labpath"]))
    if query.get("filepath"):
        return "tree/" + quote(_inside_server("filepath", query["filepath"]))
    return quote(_inside_server("urlpath", query.get("urlpath", "")), safe="/?=&#%")


def server_link(hub_public_url: str, server_url: str, query: dict[str, str]) -> str:
    """Where the launch page sends the browser: the server's URL as the hub
    gives it, with the file to open. With ``subdomain_host`` (each
    researcher's servers on their own origin) the hub's URL is absolute;
    without, it is a path on the hub's origin."""
    return urljoin(hub_public_url, server_url) + launch_path(query)


class OAuthCallbackHandler(HubOAuthCallbackHandler):  # type: ignore[misc]
    """The hub's OAuth callback, with the service's HubOAuth: the login
    state it keeps between the redirect and the callback lives there."""

    @property
    def hub_auth(self) -> Any:
        return self.settings["service"].hub_auth


class HomeHandler(BaseHandler):
    @web.authenticated
    async def get(self) -> None:
        self.page(
            "home.html",
            user=self.user_name,
            providers=binderapi.repo_providers(),
            **await self.cluster_view(),
        )


class LaunchPageHandler(BaseHandler):
    """``/v2/<provider>/<spec>``: the launch page follows ``/build`` and
    then opens the server."""

    @web.authenticated
    async def get(self, provider: str, spec: str) -> None:
        full = self.raw_spec("v2")
        link = {key: self.get_argument(key) for key in self.request.arguments}
        try:
            repo = providers.parse_spec(full, self.service.site.repos)
            request_for_link(self.service.site, link, user=self.user_name)
            launch_path(link)
        except UserError as exc:
            self.page("error.html", 400, status=400, reason=str(exc))
            return
        if self.unconfirmed(repo):
            query = f"?{self.request.query}" if self.request.query else ""
            self.page(
                "confirm.html",
                spec=full,
                repo_name=repo.readable_name(),
                clone_url=repo.url,
                credential_host=credential_host(repo.url),
                confirm_url=f"{self.service.base_url}confirm/{full}{query}",
                xsrf=self.xsrf_token.decode(),
                user=self.user_name,
            )
            return
        # The page reads the stream with fetch and sends the XSRF token the
        # hub's cookie login wants in a header: no token in a URL.
        query = f"?{self.request.query}" if self.request.query else ""
        self.page(
            "launch.html",
            spec=full,
            repo_name=repo.readable_name(),
            build_url=f"{self.service.base_url}build/{full}{query}",
            batch_url=f"{self.service.base_url}batch/{full}",
            cancel_url=f"{self.service.base_url}cancel/{full}",
            xsrf=self.xsrf_token.decode(),
            file=self.get_argument("labpath", "") or self.get_argument("filepath", ""),
            user=self.user_name,
            **await self.cluster_view(),
        )


class ConfirmHandler(BaseHandler):
    """``POST /confirm/<provider>/<spec>``: the researcher agrees to run a
    repository the site does not vouch for; back to its launch page. The
    hub's XSRF check on a cookie's form post keeps other sites from
    confirming for them."""

    @web.authenticated
    def post(self, provider: str, spec: str) -> None:
        full = self.raw_spec("confirm")
        try:
            repo = providers.parse_spec(full, self.service.site.repos)
        except UserError as exc:
            self.page("error.html", 400, status=400, reason=str(exc))
            return
        self.service.confirmations.confirm(self.user_name, repo.url, repo.ref)
        query = f"?{self.request.query}" if self.request.query else ""
        self.redirect(f"{self.service.base_url}v2/{full}{query}")


class CancelHandler(BaseHandler):
    """``POST /cancel/<provider>/<spec>``: the launch page's "cancel": the
    researcher's server of that repository goes, its queued job with it,
    and her own build job of a private repository."""

    @web.authenticated
    async def post(self, provider: str, spec: str) -> None:
        full = self.raw_spec("cancel")
        try:
            repo = providers.parse_spec(full, self.service.site.repos)
            stopped = await self.service.launcher.cancel(self.user_name, server_name(repo.url))
        except UserError as exc:
            raise web.HTTPError(400, str(exc)) from exc
        built = await self.service.private_builds.cancel(self.user_name, full)
        self.finish({"cancelled": stopped or built})


class BuildHandler(BaseHandler):
    """``/build/<provider>/<spec>``: BinderHub's event stream."""

    cors = True
    _last_write = 0.0
    #: How the request showed it is no other site's: "token" (the
    #: researcher's own), "page" (the launch page's XSRF header), "origin"
    #: (a listed origin's script, with the login cookie).
    _client = ""

    async def emit(self, event: Event) -> None:
        self.write(event.sse())
        await self.flush()
        self._last_write = time.monotonic()

    async def _ping(self) -> None:
        self.write(KEEPALIVE)
        await self.flush()
        self._last_write = time.monotonic()

    async def _keepalive(self) -> None:
        await keep_alive(lambda: self._last_write, self._ping, KEEPALIVE_SECONDS)

    def _check_xsrf_header(self) -> None:
        """A stream opened with the hub's login cookie must show that no
        other site asked for it: it builds and starts, maybe replaces, a
        server, and the hub's own check exempts GETs that navigate, so any
        site could otherwise link or redirect a researcher here. Shown by
        the launch page's XSRF token in ``X-XSRFToken`` (its fetch), or by
        an ``Origin`` the site lists (``binder.cors_allow_origins``: a
        documentation page's EventSource, which cannot send headers;
        browsers set ``Origin`` on every cross-origin request and scripts
        cannot forge it; navigations, images and frames send none). A
        client with the researcher's own token (``Authorization``) needs
        neither; the token never goes in the URL."""
        if getattr(self, "_token_authenticated", False):
            self._client = "token"
            return
        given = self.request.headers.get("X-XSRFToken", "").encode()
        if given and hmac.compare_digest(given, self.xsrf_token):
            self._client = "page"
            return
        if self.listed_origin(self.request.headers.get("Origin", "")):
            self._client = "origin"
            return
        raise web.HTTPError(
            403,
            "/build with the hub's login needs the launch page's X-XSRFToken header "
            "or a page of an origin the site lists (binder.cors_allow_origins): "
            "open the link's /v2/ page instead",
        )

    def check_xsrf_cookie(self) -> None:
        """The hub's own XSRF check of a cookie login (HubOAuth applies it
        to every request that is not a navigation, e.g. an EventSource's):
        passed by the page's header as before, or by a listed ``Origin``,
        which a documentation page's EventSource has instead of a header.
        Without it the hub ignores the cookie (no login) and
        :meth:`_check_xsrf_header` never runs."""
        if self.listed_origin(self.request.headers.get("Origin", "")):
            return
        super().check_xsrf_cookie()

    def _check_accept(self) -> None:
        """BinderHub's check that this is an event-stream client (EventSource
        and its clients send ``Accept: text/event-stream``; a navigation
        asks for HTML)."""
        accept = self.request.headers.get("Accept", "")
        types = {part.split(";")[0].strip().lower() for part in accept.split(",")}
        if "text/event-stream" not in types:
            raise web.HTTPError(400, "Missing Accept header: text/event-stream")

    def _build_only(self) -> bool:
        """``build_only=true``: build, say ``ready`` with the image, start
        nothing; refused (400) where the site does not allow it."""
        if self.get_query_argument("build_only", "").lower() != "true":
            return False
        if not self.service.site.binder.allow_build_only:
            raise web.HTTPError(
                400,
                "Building but not launching is not permitted on this site "
                "(binder.allow_build_only is false)",
            )
        return True

    async def get(self, provider: str, spec: str) -> None:
        if self.current_user is None:
            raise web.HTTPError(403, "log in to the hub first")
        self._check_xsrf_header()
        self._check_accept()
        build_only = self._build_only()
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        keepalive = asyncio.get_running_loop().create_task(self._keepalive())
        try:
            await self._stream(self.raw_spec("build"), build_only)
        except StreamClosedError:
            pass  # the viewer left; the build goes on for the others
        finally:
            keepalive.cancel()

    async def _stream(self, spec: str, build_only: bool) -> None:
        service = self.service
        query = {key: self.get_argument(key) for key in self.request.arguments}
        query.pop("build_only", None)
        try:
            repo = providers.parse_spec(spec, service.site.repos)
            request_for_link(service.site, query, user=self.user_name)
            launch_path(query)
        except UserError as exc:
            await self.emit(failed(str(exc)))
            return
        if self.unconfirmed(repo):
            await self.emit(
                failed(f"confirm that you want to run {repo.url} on its launch page first")
            )
            return
        session = service.builds.session(spec, self.user_name)
        built_here = False
        async for event in session.follow():
            built_here = built_here or event.phase == "building"
            if build_only and event.phase == "built":
                # BinderHub's build_only: the image is the end, as ready.
                done = "Done! Image built\n" if built_here else "Done! Found built image\n"
                event = Event("ready", done, event.extra)
            await self.emit(event)
        built = session.result
        if built is None or build_only:
            return
        fields = binderapi.launch_fields(spec, repo, built.commit, service.public_url)
        started = time.monotonic()
        name = server_name(repo.url)
        try:
            with service.limits.hold(self.user_name, repo.url):
                await self.emit(Event("launching", "Launching server…\n"))
                url = await self._launch_relaying(
                    name, self._options(built, repo, query, fields), started
                )
                token = "" if self._client == "page" else await self._server_token(name)
        except (LaunchFailed, UserError) as exc:
            service.metrics.launch_finished("failure", time.monotonic() - started)
            await self.emit(failed(f"Launch failed: {exc}"))
            return
        service.metrics.launch_finished("success", time.monotonic() - started)
        await self.emit(
            Event(
                "ready",
                f"Server ready at {url}\n",
                {
                    "url": server_link(service.hub_public_url, url, query),
                    "token": token,
                    "image": built.key,
                    **fields,
                },
            )
        )

    async def _server_token(self, name: str) -> str:
        """BinderHub's ``token`` of the ready event, for clients that reach
        the server from another origin (Thebe, an API client): a hub token
        of the researcher's good for this one server only, for an hour.
        The launch page needs none (the researcher's browser logs in)."""
        return await self.service.launcher.server_token(self.user_name, name)

    async def _launch_relaying(self, name: str, options: LaunchOptions, started: float) -> str:
        """The launch, with the hub's progress (Slurm's queue: partition,
        reason, place, expected start; then the node) relayed as
        ``launching`` events with the time waited so far, as BinderHub
        relays its spawner's."""
        messages: asyncio.Queue[str] = asyncio.Queue()
        launch = asyncio.ensure_future(
            self.service.launcher.launch(self.user_name, name, options, messages.put_nowait)
        )
        try:
            while not launch.done() or not messages.empty():
                message = asyncio.ensure_future(messages.get())
                await asyncio.wait({launch, message}, return_when=asyncio.FIRST_COMPLETED)
                if not message.done():
                    message.cancel()
                    continue
                waited = time.monotonic() - started
                await self.emit(Event("launching", f"{message.result()} ({waited:.0f} s)\n"))
        finally:
            launch.cancel()  # the viewer left: the hub's spawn goes on, unwatched
        return launch.result()

    def _options(
        self,
        built: Built | PrivateBuilt,
        repo: providers.RepoProvider,
        query: dict[str, str],
        fields: dict[str, str],
    ) -> LaunchOptions:
        """The server's options: the image just built, a workspace seeded
        from the checkout, the link's profile and resources (checked
        against the site's limits before the build), and BinderHub's
        launch fields (its ``BINDER_*`` variables). A private image is
        marked so: the server's job finds it in her own store."""
        workspace = WorkspaceOptions(
            slug=workspace_slug(repo.url), commit=built.commit, from_image=built.from_image
        )
        return LaunchOptions.parse(
            {
                "image": built.key,
                **({"private": True} if built.private else {}),
                "workspace": workspace,
                "profile": query.get("profile") or None,
                **link_overrides(query),
                **fields,
            }
        )


class BatchHandler(BaseHandler):
    """``POST /batch/<provider>/<spec>``: the launch page's "run as batch
    job": the same checks as ``hpcbinder sbatch``, then a job as the user."""

    @web.authenticated
    async def post(self, provider: str, spec: str) -> None:
        full = self.raw_spec("batch")
        service = self.service
        try:
            repo = providers.parse_spec(full, service.site.repos)
        except UserError as exc:
            self.page("error.html", 400, status=400, reason=str(exc), user=self.user_name)
            return
        if self.unconfirmed(repo):
            reason = f"confirm that you want to run {repo.url} on its launch page first"
            self.page("error.html", 400, status=400, reason=reason, user=self.user_name)
            return
        overrides = {key: self.get_body_argument(key, "") for key in ("time", "cpus", "mem")}
        try:
            parameters = parse_parameters(self.get_body_argument("parameters", ""))
            request = request_for(
                service.site, self.get_body_argument("profile", ""), overrides, user=self.user_name
            )
        except UserError as exc:
            self.page("error.html", 400, status=400, reason=str(exc), user=self.user_name)
            return
        session = service.builds.session(full, self.user_name)
        last = None
        async for event in session.follow():
            last = event
        if session.result is None:
            reason = last.message if last else "the build failed"
            self.page("error.html", 400, status=400, reason=reason, user=self.user_name)
            return
        built = session.result
        if isinstance(built, PrivateBuilt):
            await self._private_run(full, overrides, parameters)
            return
        try:
            job_id, run_dir = await asyncio.to_thread(
                submit_batch,
                service.site,
                built,
                self.user_name,
                request,
                self.get_body_argument("path", ""),
                parameters,
            )
        except (UserError, SlurmError) as exc:
            self.page("error.html", 400, status=400, reason=str(exc), user=self.user_name)
            return
        self.page("batch.html", job_id=job_id, run_dir=str(run_dir), spec=full, user=self.user_name)

    async def _private_run(
        self,
        spec: str,
        overrides: dict[str, str],
        parameters: dict[str, str],
    ) -> None:
        """A private repository's run: her own job checks and submits it
        from her store, as ``hpcbinder sbatch`` would (the service cannot
        read her checkout or image); the same resources, checked there
        again against the same site file (checked here first: a bad one
        never reaches her job)."""
        builds = self.service.private_builds
        job = builds.request(
            "batch",
            spec,
            path=self.get_body_argument("path", ""),
            parameters=parameters,
            profile=self.get_body_argument("profile", ""),
            overrides={name: value for name, value in overrides.items() if value},
        )

        async def ignore(_: Event) -> None:
            return None

        try:
            outcome = await builds.run(job, self.user_name, ignore)
        except PrivateBuildFailed as exc:
            self.page("error.html", 400, status=400, reason=str(exc), user=self.user_name)
            return
        self.page(
            "batch.html",
            job_id=outcome.run_job,
            run_dir=outcome.run_dir,
            spec=spec,
            user=self.user_name,
        )


def parse_parameters(text: str) -> dict[str, str]:
    """``name=value`` lines (blank lines skipped)."""
    parameters = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, sep, value = line.partition("=")
        if not sep:
            raise UserError(f"parameters, line {number}: expected name=value")
        parameters[name.strip()] = value.strip()
    return parameters


def submit_batch(
    site: Site,
    built: Built,
    user: str,
    request: JobRequest,
    path: str,
    parameters: dict[str, str],
) -> tuple[str, Path]:
    """Check and submit one run of ``path`` as ``user``; (job id, run folder)."""
    launch = launch_argv(built.record)
    return submit_checked(
        site, built.fetched, built.record, launch, user, request, path, parameters
    )


class HealthHandler(BaseHandler):
    """``{"ok": …}`` for anyone (load balancers, monitoring), from a cached
    check; which checks failed, and why, only for the hub's admins."""

    async def get(self) -> None:
        checks = await self.service.cached_health()
        ok = all(check["ok"] for check in checks)
        self.set_status(200 if ok else 503)
        user = self.current_user
        if user and await self.service.is_admin(str(user["name"])):
            self.finish({"ok": ok, "checks": checks})
        else:
            self.finish({"ok": ok})


class MonitoringHandler(BaseHandler):
    """What only operators see: the hub's admins (logged in through the
    hub, or with an admin's hub token) and Prometheus with the site's
    bearer token (``binder.metrics_token_file``). Everyone else gets 401
    (403 when logged in) and no data. The site's token is checked first and
    never sent on to the hub; any other token is the hub's to judge."""

    async def allowed(self) -> bool:
        scheme, _, given = self.request.headers.get("Authorization", "").partition(" ")
        bearer = given.strip() if scheme.lower() == "bearer" else ""
        if is_scrape_token(bearer, self.service.metrics_token):
            return True
        user = self.current_user
        if user is not None and await self.service.is_admin(str(user["name"])):
            return True
        if user is None:
            self.set_status(401)
            self.set_header("WWW-Authenticate", 'Bearer realm="hpcbinder"')
            self.finish({"error": "log in to the hub as an admin, or send the metrics token"})
        else:
            self.set_status(403)
            self.finish({"error": "for the hub's admins only"})
        return False


class VersionsHandler(MonitoringHandler):
    """``/versions``: this service's and the tools' versions (Slurm,
    Apptainer, JupyterHub), which tell an attacker what to try. BinderHub
    answers anyone, for mybinder.org's federation redirector; its
    JavaScript client does not read it, and a site whose every launch needs
    a hub login is no member of that federation."""

    async def get(self) -> None:
        if await self.allowed():
            self.finish({"binderhub": f"hpcbinder {__version__}", **self.service.versions})


class MetricsHandler(MonitoringHandler):
    """``/metrics``: Prometheus' exposition of builds and launches."""

    async def get(self) -> None:
        if await self.allowed():
            self.set_header("Content-Type", "text/plain; version=0.0.4")
            self.finish(self.service.metrics.exposition())


class RepoProvidersHandler(BaseHandler):
    """``/api/repoproviders``: BinderHub's list of the providers this site
    takes (their names, the spec's form, labels for a link generator), for
    anyone, as BinderHub answers it; ``/api/repoproviders/<id>/config``: one
    of them (404 for a prefix the site does not parse)."""

    cors = True

    def get(self, provider: str | None = None) -> None:
        configs = binderapi.repo_providers()
        self.set_header("Content-Type", "application/json")
        if provider is None:
            self.finish(json.dumps(configs))
            return
        for config in configs:
            if config["id"] == provider:
                self.finish(json.dumps(config))
                return
        self.set_status(404)
        self.finish(json.dumps({"message": f"No provider found for prefix {provider}"}))


class LegacyConfigHandler(BaseHandler):
    """``/_config``: the providers' labels by prefix (BinderHub's older
    endpoint, still read by older clients)."""

    cors = True

    def get(self) -> None:
        self.finish(binderapi.legacy_config())


class LegacyRedirectHandler(BaseHandler):
    """``/repo/<user>/<repo>[/<path>]``: mybinder.org's first links, to
    their ``/v2/gh/`` link (:func:`binderapi.legacy_redirect`)."""

    def get(self, user: str, repo: str, urlpath: str | None = None) -> None:
        try:
            target = binderapi.legacy_redirect(self.service.base_url, user, repo, urlpath)
        except UserError as exc:
            self.page("error.html", 400, status=400, reason=str(exc))
            return
        self.redirect(target)
