"""ApptainerSlurmSpawner: JupyterHub servers in Slurm jobs, inside a
repository's Apptainer image, as the researcher.

It keeps batchspawner's SlurmSpawner interface (so hub configs and the
``batchspawner-singleuser`` port callback work as before) and replaces
what batchspawner does unsafely: shell strings (argv lists here, via
:mod:`hpcbinder.jobs.servers`), a hand-written script format (the Jinja2
template slurm/server.sbatch.j2), a callback that sets any attribute (only
``port`` is accepted here), a transient squeue failure ending the server,
and a dead job going unnoticed until the start timeout.

``user_options`` (the Binder service sets them; the options form sets
``profile``): ``image`` (an env key of the store, or ``base:NAME``),
``profile`` and the overrides of :data:`hpcbinder.jobs.request.OVERRIDABLE`,
and ``workspace`` = {``slug``, ``commit``, ``from_image``}: no path; the
workspace's files come from the build server's checkout of ``commit``.

While the job waits in Slurm's queue, the spawner's progress events say
where and why (partition, Slurm's reason in words, place in the queue,
expected start), then the node it starts on, then that JupyterLab starts;
the wait is bounded by the site's ``launch.max_queue_minutes`` (the job is
cancelled), separately from ``launch.start_seconds`` for a started job to
bring its server up: JupyterHub's ``start_timeout`` defaults to their sum.

Every start or restart from an image of the store asks the build server
first (``POST /used``, within a few seconds), before any job: it applies
the store's one rule (:meth:`~hpcbinder.images.store.ImageStore.may_launch`:
an image of a repository anyone can fetch, or one the researcher built or
used) and records the use, so that ``images gc`` keeps images whose
servers are restarted from the hub without a new build request. A refusal
is the launch's 403; a build server that cannot answer is a 503 saying
so (the rule cannot be checked, so nothing starts). The job's comment
names its image and commit (:mod:`hpcbinder.images.jobrefs`) for as long
as it waits or runs.
"""

from __future__ import annotations

import asyncio
import html
import math
import pwd
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from batchspawner import JobStatus, SlurmSpawner
from jupyterhub.apihandlers import APIHandler, default_handlers
from jupyterhub.spawner import SpawnException
from tornado import web
from traitlets import Float, Integer, Unicode, default

from hpcbinder import textpatterns
from hpcbinder.config import Site, load_site, site_file_in_force
from hpcbinder.errors import UserError
from hpcbinder.hub.options import LaunchOptions, LaunchOptionsError
from hpcbinder.images.client import (
    BuildServerClient,
    BuildServerError,
    BuildServerUnreachable,
    LaunchRefused,
)
from hpcbinder.images.launch import launch_image
from hpcbinder.images.store import image_store
from hpcbinder.jobs.privateserver import private_server_job
from hpcbinder.jobs.queueboard import board_for
from hpcbinder.jobs.request import request_for
from hpcbinder.jobs.servers import (
    BINDER_ENV,
    SERVER_ENV,
    JobDied,
    LaunchProgress,
    QueueTimeout,
    QueueWatch,
    ServerJobs,
    ServerJobState,
    ServerJobStatus,
    accepts_connections,
)
from hpcbinder.jobs.serverscript import Seed, ServerJob, render_server_script, workspace_for
from hpcbinder.seams import apptainer
from hpcbinder.seams.cluster import cluster_runner, cluster_slurm
from hpcbinder.seams.remote import LoginNodeCommands, Tunnel
from hpcbinder.seams.slurm import SlurmCLI
from hpcbinder.sources.providers import served_checkout

#: JupyterHub templates of hpcbinder's (c.JupyterHub.template_paths).
TEMPLATES = Path(__file__).parent / "templates"
#: Seconds of start_timeout beyond the queue wait and the server's start:
#: submitting, and the hub's own steps around start().
_START_MARGIN = 30
#: Open tunnels, shared by this hub's spawners.
_TUNNELS: dict[tuple[str, str], Tunnel] = {}
_STATES = {
    ServerJobState.PENDING: JobStatus.PENDING,
    ServerJobState.RUNNING: JobStatus.RUNNING,
    ServerJobState.UNKNOWN: JobStatus.UNKNOWN,
    ServerJobState.GONE: JobStatus.NOTFOUND,
}


class UseReports(Protocol):
    """What the spawner asks of the build server
    (:meth:`BuildServerClient.record_use`): the seam tests fake."""

    def record_use(self, key: str, for_user: str | None = None) -> None: ...


class ApptainerSlurmSpawner(SlurmSpawner):  # type: ignore[misc]
    site_file = Unicode(
        "", help="The hpcbinder site file (default: $HPCBINDER_SITE or /etc/hpcbinder/site.yaml)."
    ).tag(config=True)
    query_retries = Integer(
        4, help="Times a failing squeue is retried (with backoff) before the state is UNKNOWN."
    ).tag(config=True)
    query_backoff = Float(0.5, help="First retry delay in seconds; doubles each retry.").tag(
        config=True
    )
    queue_detail_interval = Float(
        10.0,
        help="Seconds between the questions about a pending job's place in its "
        "queue and expected start (its state is asked every startup_poll_interval).",
    ).tag(config=True)

    @default("start_timeout")
    def _start_timeout_default(self) -> int:
        return self._needed_start_timeout()

    def _needed_start_timeout(self) -> int:
        """The time a launch may take: the site's queue wait, plus the time
        a started job has to bring its server up, plus a margin."""
        launch = self.site.launch
        return math.ceil(launch.max_queue_minutes * 60 + launch.start_seconds) + _START_MARGIN

    @default("startup_poll_interval")
    def _poll_default(self) -> float:
        # One squeue as the user costs ~20 ms; batchspawner's 0.5 s is most of a launch.
        return 0.2

    @default("poll_interval")
    def _poll_interval_default(self) -> float:
        # JupyterHub's 30 s: a lost node's server would look alive for up to
        # that long after Slurm ended its job. One squeue answers every
        # server's poll (the board), so polling often costs little.
        return 10.0

    @default("batchspawner_singleuser_cmd")
    def _singleuser_default(self) -> str:
        # In every site base: reports the port without importing JupyterHub first.
        return "hpcbinder-singleuser"

    @property
    def site(self) -> Site:
        cached: Site | None = getattr(self, "_hpcbinder_site", None)
        if cached is None:
            cached = load_site(Path(self.site_file) if self.site_file else None)
            self._hpcbinder_site = cached
        return cached

    # --- the options form -------------------------------------------------

    @default("options_form")
    def _profiles_form(self) -> str:
        choices = "\n".join(
            f'<option value="{html.escape(name)}"'
            f"{' selected' if name == self.site.default_profile else ''}>"
            f"{html.escape(name)}{' — ' + html.escape(p.description) if p.description else ''}"
            "</option>"
            for name, p in self.site.profiles.items()
        )
        return f'<label for="profile">Resources</label>\n<select name="profile">{choices}</select>'

    def options_from_form(self, formdata: dict[str, list[str]]) -> dict[str, Any]:
        return {"profile": formdata.get("profile", [""])[0]}

    # --- what the job is made of --------------------------------------------

    #: The Slurm client the jobs go through; None: the site's
    #: (:func:`~hpcbinder.seams.cluster.cluster_slurm`). The spawner's one
    #: way to Slurm, so tests can give it a scripted command runner.
    slurm: SlurmCLI | None = None

    def _jobs(self) -> ServerJobs:
        """The user's jobs, their states from the one board of this
        process's spawners that share a Slurm client (one squeue a round
        for all of the hub's jobs: :mod:`hpcbinder.jobs.queueboard`)."""
        slurm = cluster_slurm(self.site) if self.slurm is None else self.slurm
        key: object = self.site.cluster.model_dump_json() if self.slurm is None else self.slurm
        return ServerJobs(
            self.user.name,
            slurm=slurm,
            retries=self.query_retries,
            backoff=self.query_backoff,
            board=board_for(key, slurm, self.startup_poll_interval),
        )

    #: The build server that rules on launches of the store's images; None:
    #: the site's (:class:`BuildServerClient`). Tests give it a fake.
    build_server: UseReports | None = None

    async def _admit_image(self, key: str) -> None:
        """Launch image ``key`` only if the build server, the store's owner,
        says this researcher may (and so records the use): a 403 with its
        reason if not; never a job then.

        A build node that is down stops builds, not launches of images
        built: where the build server cannot be asked, the same rule
        (:meth:`~hpcbinder.images.store.ImageStore.may_launch`) is read from
        the store's records, which the hub reads anyway to launch; the use
        goes unrecorded (the job's comment keeps the image from gc while it
        runs). A 503 only if the store cannot be read either."""
        client = BuildServerClient(self.site) if self.build_server is None else self.build_server
        user = self.user.name
        try:
            await asyncio.to_thread(client.record_use, key, user)
            return
        except LaunchRefused as exc:
            self.log.warning("Refused image %s to %s: %s", key, user, exc)
            raise web.HTTPError(403, str(exc)) from exc
        except BuildServerUnreachable as exc:
            unreachable = exc
        except BuildServerError as exc:  # its own refusal or failure stands
            self.log.error("Cannot check image %s for %s: %s", key, user, exc)
            raise web.HTTPError(
                503, f"cannot check that {user} may launch image {key}, so it is not started: {exc}"
            ) from exc
        try:
            allowed = await asyncio.to_thread(image_store(self.site).may_launch, key, user)
        except (OSError, ValueError) as exc:
            self.log.error("Cannot check image %s for %s: %s; %s", key, user, unreachable, exc)
            raise web.HTTPError(
                503,
                f"cannot check that {user} may launch image {key}, so it is not started: "
                f"{unreachable}",
            ) from exc
        if not allowed:
            self.log.warning("Refused image %s to %s (store records): %s", key, user, unreachable)
            raise web.HTTPError(403, f"image: no image {key} that {user} may launch")
        self.log.warning(
            "Image %s admitted for %s by the store's records, its use not recorded: %s",
            key, user, unreachable,
        )  # fmt: skip

    def server_job(self) -> ServerJob:
        """The job for the current user_options, every value checked (a
        :class:`~hpcbinder.errors.UserError` names the first bad one)."""
        options = LaunchOptions.parse(self.user_options)
        request = request_for(
            self.site, options.profile, options.resource_overrides(), user=self.user.name
        )
        home = Path(pwd.getpwnam(self.user.name).pw_dir)
        command = [self.batchspawner_singleuser_cmd, *self.cmd, *self.get_args()]
        job_name = f"hpcbinder-{self.user.name}-{self.name or 'default'}"
        if options.private:  # her store's image: her job finds it there, or refuses
            site_file = site_file_in_force(Path(self.site_file) if self.site_file else None)
            return private_server_job(site_file, self.user.name, home, request, options, command)
        workspace = seed = None
        if options.workspace is not None:
            spec = options.workspace
            workspace = workspace_for(self.site, self.user.name, home, spec.slug)
            checkout = served_checkout(self.site.repos, spec.commit)
            if checkout is None:
                raise LaunchOptionsError(
                    f"workspace.commit: no checkout of {spec.commit} in this site's checkout "
                    "cache (launch the repository through the Binder service, which fetches it)"
                )
            seed = Seed(checkout, spec.commit, spec.from_image)
        image = launch_image(self.site, options.image or f"base:{self.site.default_base}")
        return ServerJob(
            self.user.name,
            home,
            request,
            image.argv,
            command,
            workspace=workspace,
            seed=seed,
            job_name=job_name,
            image_key=image.key,
            entrypoint=tuple(image.entrypoint),
        )

    def get_args(self) -> list[str]:
        """JupyterHub's arguments for the server, and the site's listed
        origins (``binder.cors_allow_origins``, each matched exactly), whose
        pages (Thebe on the centre's documentation) talk to the server with
        the token their launch gave them (never with the researcher's
        cookies: credentials stay off)."""
        args: list[str] = list(super().get_args())
        origins = self.site.binder.cors_allow_origins
        if origins:
            pattern = "|".join(textpatterns.escape(origin) for origin in origins)
            args.append(f"--ServerApp.allow_origin_pat=^(?:{pattern})$")
        return args

    def server_env(self) -> dict[str, str]:
        """The server job's whole environment, for its container: JupyterHub's
        variables of :data:`SERVER_ENV` from ``get_env()``, BinderHub's
        ``BINDER_*`` from the launch's options alone (the hub's own
        environment or ``Spawner.environment`` never sets those). Never
        ``JUPYTERHUB_ALLOW_TOKEN_IN_URL``: kernel websockets take their
        token from the URL without it (the bases' hpcbinder_websocket_tokens
        extension), and a page never does."""
        env = self.get_env()
        chosen = {name: env[name] for name in SERVER_ENV if name in env and name not in BINDER_ENV}
        chosen.update(LaunchOptions.parse(self.user_options).binder_env())
        return apptainer.container_env(chosen)

    # --- batchspawner's hooks, without shell strings ------------------------------

    async def submit_batch_script(self) -> str:
        try:
            job = self.server_job()
        except UserError as exc:
            # The hub's API answers the request that started this spawn with it.
            raise web.HTTPError(400, str(exc)) from exc
        if job.image_key is not None:
            await self._admit_image(job.image_key)
        script = render_server_script(self.site, job)
        self.job_id = await self._jobs().submit(script, self.server_env())
        self.log.info("Submitted server job %s for %s", self.job_id, self.user.name)
        return str(self.job_id)

    async def query_job_status(self) -> JobStatus:
        if not self.job_id:
            self.job_status = ""
            return JobStatus.NOTFOUND
        status = self._status = await self._jobs().status(self.job_id)
        self._set_job_status(status)
        if status.state is ServerJobState.UNKNOWN:
            self.log.warning("Slurm did not answer about job %s; keeping it", self.job_id)
        return _STATES[status.state]

    #: The job's last answer (its node and final state once gone).
    _status: ServerJobStatus | None = None
    #: Why the server's job ended under it, in words for the researcher: the
    #: hub's page for a server that is not running shows it
    #: (hpcbinder/hub/templates/not_running.html); "" after a start or a stop.
    stop_reason: str = ""

    def _stopped_because(self, status: ServerJobStatus, host: str) -> None:
        node = status.node or host
        lost = status.ended == "NODE_FAIL"
        # Slurm may have forgotten the job (no final state), or never said its node.
        ended = f"ended {status.ended}" if status.ended else "ended"
        self.stop_reason = (
            f"Your server's Slurm job {self.job_id} {ended}{f' on node {node}' if node else ''}"
            f"{' (the node was lost)' if lost else ''}. "
            f"Your files are kept in {self._workspace_path()}; start the server again"
            f"{' to run it on another node' if lost else ''}."
        )
        self.log.warning("Server of %s stopped: %s", self.user.name, self.stop_reason)

    def _workspace_path(self) -> str:
        """The launch's workspace folder (as :meth:`server_job` places it)."""
        try:
            options = LaunchOptions.parse(self.user_options)
            home = Path(pwd.getpwnam(self.user.name).pw_dir)
            slug = options.workspace.slug if options.workspace is not None else "default"
            return str(workspace_for(self.site, self.user.name, home, slug))
        except (UserError, KeyError):
            return "your workspace"

    def _set_job_status(self, status: ServerJobStatus) -> None:
        """Keep batchspawner's ``job_status`` (read by ``state_is*``) current."""
        self.job_status = f"{status.state.value} {status.node}".strip()

    def state_ispending(self) -> bool:
        return str(self.job_status).startswith(ServerJobState.PENDING.value)

    def state_isrunning(self) -> bool:
        return str(self.job_status).startswith(ServerJobState.RUNNING.value)

    def state_isunknown(self) -> bool:
        return str(self.job_status).startswith(ServerJobState.UNKNOWN.value)

    def state_gethost(self) -> str:
        parts = str(self.job_status).split()
        return parts[1] if len(parts) > 1 else ""

    async def cancel_batch_job(self) -> None:
        self.log.info("Cancelling server job %s", self.job_id)
        await self._jobs().cancel(self.job_id)

    def _check_quota(self) -> None:
        limit = self.site.quotas.max_servers_per_user
        others = [s for s in self.user.spawners.values() if s is not self and s.active]
        if len(others) >= limit:
            raise web.HTTPError(
                403, f"{self.user.name} already runs {len(others)} servers, this site's limit"
            )

    _launch: LaunchProgress | None = None

    async def start(self) -> tuple[str, int]:
        self.stop_reason = ""
        self._launch = LaunchProgress()
        try:
            return await self._start(self._launch)
        except JobDied as exc:
            raise LaunchEnded(str(exc), reason="job_died", status_code=500) from exc
        finally:
            self._launch.finish()

    async def _start(self, launch: LaunchProgress) -> tuple[str, int]:
        self._check_quota()
        if self.start_timeout < self._needed_start_timeout():
            self.log.warning(
                "start_timeout (%s s) is shorter than the site's launch limits need (%s s): "
                "queued launches will time out early",
                self.start_timeout,
                self._needed_start_timeout(),
            )
        self.ip = self.traits()["ip"].default_value
        self.port = 0
        await self.submit_batch_script()
        launch.add(10, f"Submitted Slurm job {self.job_id}")
        jobs = self._jobs()
        watch = QueueWatch(jobs, self.job_id, launch, self.queue_detail_interval)

        async def on_status(status: ServerJobStatus) -> None:
            self._set_job_status(status)
            await watch(status)

        try:
            host = await jobs.wait_started(
                self.job_id,
                self.startup_poll_interval,
                lambda: self.port != 0,
                on_status=on_status,
                max_queue_minutes=self.site.launch.max_queue_minutes,
            )
        except QueueTimeout as exc:
            raise LaunchEnded(str(exc), reason="queue_timeout", status_code=503) from exc
        self.log.info("Server job %s of %s runs on %s", self.job_id, self.user.name, host)
        launch.add(80, f"Starting JupyterLab on {host}")
        if self.site.cluster.tunnel:
            tunnel = self._open_tunnel(host, self.port)
            self.ip, self.port = "127.0.0.1", tunnel.local_port
            listening = partial(asyncio.to_thread, tunnel.reaches_target)
        else:
            self.ip = host
            listening = partial(accepts_connections, host, self.port)
        await jobs.wait_listening(self.job_id, self.startup_poll_interval, listening)
        self.db.commit()
        self.log.info("Server of %s is up at %s:%s", self.user.name, self.ip, self.port)
        return self.ip, self.port

    async def progress(self) -> AsyncIterator[dict[str, Any]]:
        """JupyterHub's progress events: this launch's steps, from the first."""
        if self._launch is None:
            return
        async for event in self._launch.follow():
            yield {"progress": event.percent, "message": event.message}

    async def stop(self, now: bool = False) -> None:
        self._close_tunnel()
        await self.cancel_batch_job()
        if now:
            return
        for _ in range(50):
            if await self.query_job_status() not in (JobStatus.RUNNING, JobStatus.UNKNOWN):
                return
            await asyncio.sleep(0.2)
        self.log.warning("Server job %s still runs after scancel", self.job_id)

    async def poll(self) -> int | None:
        """batchspawner's poll, and a server whose job ended under it (its
        node lost, its time up) says why (:attr:`stop_reason`)."""
        host = self.state_gethost() if self.state_isrunning() else ""
        if await self.query_job_status() not in (
            JobStatus.PENDING, JobStatus.RUNNING, JobStatus.UNKNOWN,
        ):  # fmt: skip
            if host and self._status is not None:
                self._stopped_because(self._status, host)
            self.clear_state()
            return 1
        if self._tunnel_state and self._tunnel_key() not in _TUNNELS:
            # A restarted hub: the proxy still routes to the tunnel's old port.
            tunnel_host, port, local_port = self._tunnel_state
            self._open_tunnel(str(tunnel_host), int(port), int(local_port))
        return None

    # --- the SSH tunnel to a compute node (cluster.tunnel) ------------------

    _tunnel_state: list[Any] | None = None

    def _tunnel_key(self) -> tuple[str, str]:
        return self.user.name, self.name

    def _open_tunnel(self, host: str, port: int, local_port: int = 0) -> Tunnel:
        self._close_tunnel()
        runner = cluster_runner(self.site)
        if not isinstance(runner, LoginNodeCommands):
            raise ValueError("cluster.tunnel needs cluster.login")
        tunnel = Tunnel(partial(runner.transport, self.user.name), (host, port), local_port)
        _TUNNELS[self._tunnel_key()] = tunnel
        self._tunnel_state = [host, port, tunnel.local_port]
        self.log.info(
            "Tunnel 127.0.0.1:%s -> %s:%s for %s", tunnel.local_port, host, port, self.user.name
        )
        return tunnel

    def _close_tunnel(self) -> None:
        tunnel = _TUNNELS.pop(self._tunnel_key(), None)
        if tunnel is not None:
            tunnel.close()

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self._tunnel_state = state.get("tunnel")
        self.stop_reason = str(state.get("stop_reason", ""))

    def get_state(self) -> dict[str, Any]:
        # The stop reason outlives the stop: JupyterHub then drops this
        # object and makes the page's spawner anew from the stored state.
        state: dict[str, Any] = super().get_state()
        if self._tunnel_state:
            state["tunnel"] = self._tunnel_state
        if self.stop_reason:
            state["stop_reason"] = self.stop_reason
        return state

    def clear_state(self) -> None:
        super().clear_state()
        self._close_tunnel()
        self._tunnel_state = None


class LaunchEnded(SpawnException):  # type: ignore[misc]
    """A launch that ended for a reason a researcher can read: the queue
    wait outlasted the site's limit (503: the cluster is busy, not
    broken), or the job ended while starting (its output's last lines).
    The hub shows the message as it is, without a traceback."""

    def __init__(self, message: str, *, reason: str, status_code: int) -> None:
        super().__init__(message, reason=reason, status_code=status_code)
        self.jupyterhub_message = message


class PortOnlyAPIHandler(APIHandler):  # type: ignore[misc]
    """The job's callback (batchspawner-singleuser): it may set its port, nothing else."""

    @web.authenticated
    def post(self) -> None:
        user = self.current_user
        token = self.get_auth_token()
        spawner = next((s for s in user.spawners.values() if s.api_token == token), None)
        if spawner is None:
            raise web.HTTPError(403, "not a server's token")
        data = self.get_json_body() or {}
        extra = sorted(set(data) - {"port"})
        if extra:
            self.log.warning("Rejected %s from the server job of %s", extra, user.name)
            raise web.HTTPError(400, f"only 'port' may be set, not {', '.join(extra)}")
        port = data.get("port")
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise web.HTTPError(400, "port must be an integer from 1 to 65535")
        spawner.port = port
        self.set_status(201)
        self.finish({"message": "port set"})


# Take batchspawner's route: its handler sets any attribute the job posts.
default_handlers[:] = [h for h in default_handlers if h[0] != r"/api/batchspawner"]
default_handlers.append((r"/api/batchspawner", PortOnlyAPIHandler))
