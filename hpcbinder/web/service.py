"""What the Binder service's handlers share: the site, the hub, the builds,
the launches, the pages, and the health checks."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from jupyterhub.services.auth import HubOAuth
from markupsafe import Markup
from tornado.httpclient import AsyncHTTPClient

from hpcbinder.config import Site
from hpcbinder.images.store import image_store
from hpcbinder.render import templating
from hpcbinder.seams import apptainer, proc
from hpcbinder.seams.cluster import cluster_slurm
from hpcbinder.seams.slurm import PartitionLoad, SlurmError
from hpcbinder.web.binderapi import origin_of
from hpcbinder.web.builds import BuildCoordinator
from hpcbinder.web.launcher import HubAPI, Launcher
from hpcbinder.web.metrics import Metrics
from hpcbinder.web.policy import LaunchLimits
from hpcbinder.web.privatebuilds import PrivateBuilds
from hpcbinder.web.trust import Confirmations

#: How long a health report is reused.
HEALTH_SECONDS = 30.0
#: How long a partition load read from Slurm is shown before it is asked again.
LOAD_SECONDS = 10.0


def json_for_script(value: Any) -> Markup:
    """JSON that is safe inside a <script> element, where HTML escapes are
    not decoded: ``<``, ``>`` and ``&`` become JSON escapes instead."""
    text = json.dumps(value)
    safe = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(safe)  # noqa: S704 - no <, > or & is left to escape


def page_environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templating.resource_dir("templates") / "web"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    environment.filters["script_json"] = json_for_script
    return environment


@dataclass
class Service:
    site: Site
    hub: HubAPI
    hub_auth: HubOAuth
    hub_public_url: str  # e.g. https://hub.example.org/ (where users' servers are)
    public_url: str  # this service's own, e.g. https://binder.example.org/
    state_dir: Path  # the service account's own folder (researchers' confirmations)
    base_url: str = "/"
    metrics: Metrics = field(default_factory=Metrics)
    versions: dict[str, str] = field(default_factory=dict)
    pages: jinja2.Environment = field(default_factory=page_environment)
    #: Prometheus' bearer token for /metrics and /versions (from the site's
    #: binder.metrics_token_file); None: the hub's admins only.
    metrics_token: str | None = None
    #: The site file the service read: researchers' private build jobs read it too.
    site_file: Path | None = None

    def __post_init__(self) -> None:
        binder = self.site.binder
        self.private_builds = PrivateBuilds(self.site, self.site_file)
        self.builds = BuildCoordinator(self.site, self.metrics, private=self.private_builds)
        # A launch waits in Slurm's queue for as long as the site lets it.
        queue = self.site.launch.max_queue_minutes * 60
        self.launcher = Launcher(self.hub, queue + binder.launch_timeout_seconds)
        self.limits = LaunchLimits(binder.max_launches_per_user, binder.max_launches_per_repo)
        self.confirmations = Confirmations(binder, self.state_dir)

    @property
    def origin(self) -> str:
        """This service's own origin (``scheme://host[:port]``)."""
        return origin_of(self.public_url)

    async def is_admin(self, user: str) -> bool:
        """Whether the hub says ``user`` is one of its admins."""
        model = await self.hub.call("GET", f"/users/{quote(user)}")
        return bool(model and model.get("admin"))

    _health_cache: tuple[float, list[dict[str, Any]]] | None = None
    _load_cache: tuple[float, dict[str, PartitionLoad]] | None = None

    async def partition_load(self) -> dict[str, PartitionLoad]:
        """Each partition's free CPUs, GPUs and queue, asked of Slurm at
        most every :data:`LOAD_SECONDS` (every page view would otherwise
        run sinfo and squeue); empty while Slurm does not answer."""
        now = time.monotonic()
        if self._load_cache is None or now - self._load_cache[0] > LOAD_SECONDS:
            slurm = cluster_slurm(self.site, timeout=10)
            try:
                loads = await asyncio.to_thread(slurm.partition_load)
            except (SlurmError, proc.CommandError):
                loads = {}
            self._load_cache = (now, loads)
        return self._load_cache[1]

    async def cached_health(self) -> list[dict[str, Any]]:
        """:meth:`health`, checked at most every :data:`HEALTH_SECONDS`: an
        anonymous caller cannot make the service run Slurm commands at will."""
        now = time.monotonic()
        if self._health_cache is None or now - self._health_cache[0] > HEALTH_SECONDS:
            self._health_cache = (now, await self.health())
        return self._health_cache[1]

    async def health(self) -> list[dict[str, Any]]:
        """Slurm, the hub's API, the image store and the build server, each checked."""
        names = ("slurm", "hub", "image store", "build server")
        checks = (self._slurm(), self._hub(), self._store(), self._build_server())
        results = await asyncio.gather(*checks, return_exceptions=True)
        report = []
        for name, result in zip(names, results, strict=True):
            ok = not isinstance(result, BaseException)
            message = str(result) if result is not None else "ok"
            report.append({"service": name, "ok": ok, "message": message})
        return report

    async def _slurm(self) -> str:
        host = await asyncio.to_thread(cluster_slurm(self.site, timeout=10).ping)
        return f"slurmctld on {host}"

    async def _hub(self) -> str:
        info = await self.hub.call("GET", "/")
        return f"JupyterHub {info.get('version', '?')}"

    async def _store(self) -> str:
        store = image_store(self.site)
        base = self.site.base_image_path(self.site.default_base)
        if not base.is_file():
            raise RuntimeError(f"the default base image {base} is missing")
        records = await asyncio.to_thread(store.records)
        return f"{len(records)} images in {store.root}"

    async def _build_server(self) -> str:
        url = self.site.build.server_url.rstrip("/")
        await AsyncHTTPClient().fetch(f"{url}/health", request_timeout=10)
        return f"build server at {url}"


async def tool_versions(site: Site) -> dict[str, str]:
    """Versions the service reports (``/versions``): Slurm's as the site's
    cluster client sees it (the login node's where there is one)."""
    import jupyterhub

    builder, slurm = await asyncio.gather(
        asyncio.to_thread(apptainer.version_line),
        asyncio.to_thread(cluster_slurm(site, timeout=20).version),
    )
    return {
        "jupyterhub": jupyterhub.__version__,
        "builder": builder or "apptainer (not found)",
        "slurm": slurm or "slurm (not found)",
    }
