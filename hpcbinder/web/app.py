"""The Binder service's Tornado application and how it starts
(``hpcbinder serve``, normally run by JupyterHub as a service)."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jupyterhub.services.auth import HubOAuth
from tornado import web
from tornado.log import access_log

from hpcbinder.config import Site
from hpcbinder.sources.providers import may_hold_credentials
from hpcbinder.web import handlers
from hpcbinder.web.launcher import HubAPI
from hpcbinder.web.metrics import scrape_token
from hpcbinder.web.service import Service, tool_versions

STATIC = Path(__file__).parent / "static"
#: Query arguments whose values are secrets: any whose name holds one of
#: these (the hub's own list: tokens, XSRF, OAuth's code and state).
SECRET_ARGUMENTS = ("token", "auth", "key", "code", "state", "xsrf")


def loggable_uri(path: str, query: str) -> str:
    """A request's URI as the access log shows it: the values of secret
    arguments hidden, and a path that :func:`may_hold_credentials` (a link
    whose spec has a URL with credentials, refused but still requested)
    replaced by its first part."""
    if may_hold_credentials(path):
        path = "/".join(path.split("/")[:2]) + "/[not logged: may hold credentials]"
    arguments = []
    for argument in filter(None, query.split("&")):
        name, sep, value = argument.partition("=")
        secret = any(word in name.lower() for word in SECRET_ARGUMENTS)
        if secret or may_hold_credentials(value):
            value = "[secret]"
        arguments.append(f"{name}{sep}{value}")
    return path + ("?" + "&".join(arguments) if arguments else "")


def log_request(handler: web.RequestHandler) -> None:
    """Tornado's access log line, with :func:`loggable_uri` for the URI."""
    request, status = handler.request, handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    uri = loggable_uri(request.path, request.query)
    milliseconds = 1000.0 * request.request_time()
    access_log.log(
        level, "%d %s %s (%s) %.2fms", status, request.method, uri, request.remote_ip, milliseconds
    )


class Badge(web.StaticFileHandler):
    """The launch badge, at each of BinderHub's addresses for it (and
    mybinder.org's older ones): one image, served to anyone."""

    async def get(self, path: str, include_body: bool = True) -> None:
        await super().get("badge_logo.svg", include_body)


def make_app(service: Service) -> web.Application:
    base = service.base_url
    routes: list[Any] = [
        (base, handlers.HomeHandler),
        (rf"{base}v2/([^/]+)/(.+)", handlers.LaunchPageHandler),
        (rf"{base}confirm/([^/]+)/(.+)", handlers.ConfirmHandler),
        (rf"{base}cancel/([^/]+)/(.+)", handlers.CancelHandler),
        (rf"{base}build/([^/]+)/(.+)", handlers.BuildHandler),
        (rf"{base}batch/([^/]+)/(.+)", handlers.BatchHandler),
        (f"{base}health", handlers.HealthHandler),
        (f"{base}versions", handlers.VersionsHandler),
        (f"{base}metrics", handlers.MetricsHandler),
        (f"{base}oauth_callback", handlers.OAuthCallbackHandler),
        (f"{base}api/repoproviders", handlers.RepoProvidersHandler),
        (f"{base}api/repoproviders/([^/]+)/config", handlers.RepoProvidersHandler),
        (f"{base}_config", handlers.LegacyConfigHandler),
        (rf"{base}repo/([^/]+)/([^/]+)(/.*)?", handlers.LegacyRedirectHandler),
        # Badges at BinderHub's addresses (mybinder.org's older ones too).
        (
            f"{base}(badge_logo\\.svg|badge\\.svg|assets/images/badge\\.svg)",
            Badge,
            {"path": str(STATIC)},
        ),
    ]
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "")
    if prefix and prefix != base:
        # The hub also routes /services/binder/ here (its menu, its checks).
        routes.append((f"{prefix}.*", web.RedirectHandler, {"url": service.public_url}))
    return web.Application(
        routes,
        service=service,
        static_path=str(STATIC),
        static_url_prefix=f"{base}static/",
        cookie_secret=secrets.token_bytes(32),
        # No Tornado check: the hub's login (HubOAuthenticated) checks the
        # XSRF token of every cookie-authenticated request that needs one
        # (the form posts /confirm, /batch and /cancel), and /build's own
        # check adds its GETs (BuildHandler._check_xsrf_header).
        xsrf_cookies=False,
        xsrf_cookie_kwargs=cookie_options(service.public_url),
        log_function=log_request,
        login_url=f"{base}oauth_callback",  # replaced by the hub's through HubOAuthenticated
    )


def cookie_options(public_url: str) -> dict[str, Any]:
    """What every cookie of the service carries: ``SameSite=Lax`` (no
    other site's form post or frame sends it), and ``Secure`` over HTTPS."""
    options: dict[str, Any] = {"samesite": "Lax"}
    if public_url.startswith("https://"):
        options["secure"] = True
    return options


def hub_oauth(public_url: str, hub_public_url: str) -> HubOAuth:
    """OAuth with the hub, from the environment the hub gives its services;
    browsers log in at the hub's public address, not this service's. Over
    HTTPS the login cookie is a ``__Host-`` cookie, which no subdomain (a
    researcher's server, where a repository's JavaScript runs) can set or
    replace: HubOAuth would read that setting from
    ``$JUPYTERHUB_COOKIE_HOST_PREFIX_ENABLED``, which the hub gives the
    servers it spawns but not its services."""
    hub = urlsplit(hub_public_url)
    return HubOAuth(
        cookie_host_prefix_enabled=public_url.startswith("https://"),
        cookie_options=cookie_options(public_url),
        api_token=os.environ["JUPYTERHUB_API_TOKEN"],
        oauth_redirect_uri=public_url.rstrip("/") + "/oauth_callback",
        hub_host=f"{hub.scheme}://{hub.netloc}",
        base_url="/",  # cookies (the OAuth state among them) for this whole origin
        cache_max_age=60,
        allow_token_in_url=False,  # tokens in headers only: URLs end up in logs
    )


async def serve(
    site: Site,
    ip: str,
    port: int,
    public_url: str,
    hub_public_url: str,
    state_dir: Path,
    site_file: Path | None = None,
) -> None:
    """Run until cancelled."""
    logging.basicConfig(
        level=logging.INFO, format="[%(levelname)1.1s %(asctime)s %(name)s] %(message)s"
    )
    token_file = site.binder.metrics_token_file
    metrics_token = scrape_token(token_file) if token_file else None  # a bad file: no start
    service = Service(
        site=site,
        hub=HubAPI(os.environ["JUPYTERHUB_API_URL"], os.environ["JUPYTERHUB_API_TOKEN"]),
        hub_auth=hub_oauth(public_url, hub_public_url),
        hub_public_url=hub_public_url.rstrip("/") + "/",
        public_url=public_url.rstrip("/") + "/",
        state_dir=state_dir,
        versions=await tool_versions(site),
        metrics_token=metrics_token,
        site_file=site_file,
    )
    make_app(service).listen(port, ip)
    logging.getLogger("hpcbinder.web").info("Binder service at %s", service.public_url)
    await asyncio.Event().wait()
