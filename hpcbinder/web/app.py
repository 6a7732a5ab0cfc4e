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

from hpcbinder.config import Site
from hpcbinder.web import handlers
from hpcbinder.web.launcher import HubAPI
from hpcbinder.web.service import Service, tool_versions

STATIC = Path(__file__).parent / "static"


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
        (f"{base}(badge_logo\\.svg)", web.StaticFileHandler, {"path": str(STATIC)}),
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
        xsrf_cookies=False,  # the service takes no form posts; streams are GETs
        login_url=f"{base}oauth_callback",  # replaced by the hub's through HubOAuthenticated
    )


def hub_oauth(public_url: str, hub_public_url: str) -> HubOAuth:
    """OAuth with the hub, from the environment the hub gives its services;
    browsers log in at the hub's public address, not this service's."""
    hub = urlsplit(hub_public_url)
    return HubOAuth(
        api_token=os.environ["JUPYTERHUB_API_TOKEN"],
        oauth_redirect_uri=public_url.rstrip("/") + "/oauth_callback",
        hub_host=f"{hub.scheme}://{hub.netloc}",
        base_url="/",  # cookies (the OAuth state among them) for this whole origin
        cache_max_age=60,
    )


async def serve(
    site: Site, ip: str, port: int, public_url: str, hub_public_url: str, state_dir: Path
) -> None:
    """Run until cancelled."""
    logging.basicConfig(
        level=logging.INFO, format="[%(levelname)1.1s %(asctime)s %(name)s] %(message)s"
    )
    service = Service(
        site=site,
        hub=HubAPI(os.environ["JUPYTERHUB_API_URL"], os.environ["JUPYTERHUB_API_TOKEN"]),
        hub_auth=hub_oauth(public_url, hub_public_url),
        hub_public_url=hub_public_url.rstrip("/") + "/",
        public_url=public_url.rstrip("/") + "/",
        state_dir=state_dir,
        versions=await tool_versions(site),
    )
    make_app(service).listen(port, ip)
    logging.getLogger("hpcbinder.web").info("Binder service at %s", service.public_url)
    await asyncio.Event().wait()
