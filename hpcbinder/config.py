"""The site file: everything a sysadmin configures, in one validated YAML file.

Every field has a default that matches the dev cluster (``slurm/devcluster``),
so hpcbinder runs on one machine with no site file at all. A site writes
only what differs. Validation is strict (unknown keys are errors) and every
error names its place in the file, e.g. ``partitions.gpu.max_time: expected
[D-]HH:MM:SS``.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from hpcbinder import textpatterns
from hpcbinder.errors import UserError
from hpcbinder.patterns import SITE_NAME

#: Where a site's file is looked for when neither --site nor $HPCBINDER_SITE names one.
SYSTEM_SITE_FILE = Path("/etc/hpcbinder/site.yaml")
SITE_ENV = "HPCBINDER_SITE"

_SLURM_TIME = textpatterns.compile(r"(?:(\d+)-)?(\d{1,2}):([0-5]\d):([0-5]\d)")
_ACCOUNT = textpatterns.compile(r"[a-z_][a-z0-9_-]{0,31}")
#: Slurm node features joined by its operators (``intel&ib``,
#: ``[rack1|rack2]``, ``gpu*2``): no spaces, quotes or '#', so the value is
#: one word on an #SBATCH line and one argument on a command line.
_CONSTRAINT = textpatterns.compile(r"[A-Za-z0-9_.\[(][A-Za-z0-9_.:=*&|,()\[\]-]{0,255}")


def _slurm_time(value: str) -> str:
    if not _SLURM_TIME.fullmatch(value):
        raise ValueError("expected [D-]HH:MM:SS")
    if slurm_seconds(value) == 0:
        raise ValueError("must be more than 0 (Slurm reads 0 as no limit)")
    return value


def _name(value: str) -> str:
    if not SITE_NAME.fullmatch(value):
        raise ValueError("expected letters, digits, '_', '.' or '-' (at most 64)")
    return value


def _account(value: str) -> str:
    if not _ACCOUNT.fullmatch(value):
        raise ValueError("expected a Unix account name")
    return value


def _constraint(value: str) -> str:
    if not _CONSTRAINT.fullmatch(value):
        raise ValueError(
            "expected node features joined by &, |, or , (e.g. intel&ib), without spaces"
        )
    return value


def _regex(value: str) -> str:
    try:
        textpatterns.compile(value)
    except textpatterns.PatternError as exc:
        raise ValueError(
            f"not a regular expression RE2 takes ({exc}); site patterns are matched "
            "against requests in linear time, so they have no lookarounds or backreferences"
        ) from exc
    return value


_URL = textpatterns.compile(r"(https?|file)://[A-Za-z0-9._~:/?#\[\]@!$&*+,;=%-]+")


def _url(value: str) -> str:
    if not _URL.fullmatch(value):
        raise ValueError("expected an http(s):// or file:// URL without spaces or quotes")
    return value


_CONDA_CHANNEL_NAME = textpatterns.compile(r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*")


def _conda_channel(value: str) -> str:
    """A channel name (micromamba resolves it under the channel alias) or a
    URL; ``defaults`` is refused: it stands for several channels that the
    pre-flight check could not name one by one."""
    if value == "defaults":
        raise ValueError(
            "'defaults' stands for several Anaconda channels: list their URLs instead "
            "(e.g. https://repo.anaconda.com/pkgs/main)"
        )
    if "://" in value:
        return _url(value)
    if not _CONDA_CHANNEL_NAME.fullmatch(value):
        raise ValueError(
            "expected a channel name (e.g. conda-forge, found under conda_channel_alias) "
            "or an http(s):// or file:// URL"
        )
    return value


#: An archive service's base URL: scheme, lower-case host, port, path prefix.
_SERVICE = textpatterns.compile(r"https?://[a-z0-9.-]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~-]+)*")


def _service(value: str) -> str:
    if not _SERVICE.fullmatch(value):
        raise ValueError(
            "expected http(s)://host[:port][/path], the host in lower case, without a "
            "trailing /, query or fragment"
        )
    return value


def _hostname(value: str) -> str:
    if not textpatterns.compile(r"[A-Za-z0-9.-]+(:\d+)?").fullmatch(value):
        raise ValueError("expected a host name")
    return value


_ORIGIN = textpatterns.compile(r"https?://[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?(?::[1-9][0-9]{0,4})?")


def _origin(value: str) -> str:
    """A web origin exactly as browsers send it in ``Origin``: scheme and
    host in lowercase, a port only where it is not the scheme's default, no
    path, no trailing slash and no wildcard (CORS with credentials is for
    named sites only)."""
    default_port = ":443" if value.startswith("https:") else ":80"
    if not _ORIGIN.fullmatch(value) or value.endswith(default_port):
        raise ValueError(
            "expected an origin as browsers send it: http(s)://host[:port] in lowercase, "
            "without a path, trailing slash, default port or wildcard "
            "(e.g. https://docs.example.org)"
        )
    return value


def _absolute(value: Path) -> Path:
    """A path every process reads alike: a relative one would be read
    from each one's own working folder (the build server's, a job's)."""
    if not value.is_absolute():
        raise ValueError("expected an absolute path (starting with /)")
    return value


SlurmTime = Annotated[str, AfterValidator(_slurm_time)]
AbsolutePath = Annotated[Path, AfterValidator(_absolute)]
Origin = Annotated[str, AfterValidator(_origin)]
Regex = Annotated[str, AfterValidator(_regex)]
Url = Annotated[str, AfterValidator(_url)]
Hostname = Annotated[str, AfterValidator(_hostname)]
ServiceUrl = Annotated[str, AfterValidator(_service)]
CondaChannel = Annotated[str, AfterValidator(_conda_channel)]
Name = Annotated[str, AfterValidator(_name)]
Account = Annotated[str, AfterValidator(_account)]
Constraint = Annotated[str, AfterValidator(_constraint)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_MEMORY = textpatterns.compile(r"(\d+)([KMGT]?)")
_MEMORY_MB = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}
_MEMORY_KB = {"K": 1, "": 1024, "M": 1024, "G": 1024**2, "T": 1024**3}


def _memory(value: str) -> str:
    match = _MEMORY.fullmatch(value)
    if match is None:
        raise ValueError("expected a size such as 512M, 8G or 1T")
    if int(match.group(1)) == 0:
        raise ValueError("must be more than 0 (Slurm reads 0 as all of a node's memory)")
    return value


Memory = Annotated[str, AfterValidator(_memory)]


def memory_mb(value: str) -> int:
    """Megabytes in a Slurm-style size (``8G`` → 8192; no unit means MB)."""
    match = _MEMORY.fullmatch(value)
    if match is None:
        raise ValueError(f"not a size: {value!r}")
    return int(int(match.group(1)) * _MEMORY_MB[match.group(2)])


def _memory_kb(value: str) -> int:
    """Kilobytes in a size: exact, so comparisons do not round a request down."""
    match = _MEMORY.fullmatch(value)
    if match is None:
        raise ValueError(f"not a size: {value!r}")
    return int(match.group(1)) * _MEMORY_KB[match.group(2)]


def slurm_seconds(value: str) -> int:
    """Seconds in a ``[D-]HH:MM:SS`` time."""
    match = _SLURM_TIME.fullmatch(value)
    if match is None:
        raise ValueError(f"not a time: {value!r}")
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


class Partition(_Strict):
    """A Slurm partition hpcbinder may submit to, with the site's limits.

    Empty ``accounts`` / ``qos`` lists allow any (Slurm still checks; an
    account must also be one of the site's ``accounts``).
    ``researchers: false``: hpcbinder never submits researchers' jobs here
    (the build partition). A non-empty ``groups``: only members of these
    Unix groups may use it.
    """

    max_time: SlurmTime = "08:00:00"
    max_cpus: int = Field(default=4, ge=1)
    max_mem: Memory = "8G"
    max_gpus: int = Field(default=0, ge=0)
    max_nodes: int = Field(default=1, ge=1)
    #: GPU types (Slurm's gres types, e.g. a100) a profile may ask for; empty: any.
    gpu_types: list[Name] = []
    accounts: list[Name] = []
    qos: list[Name] = []
    researchers: bool = True
    groups: list[Name] = []


class Profile(_Strict):
    """A named resource request researchers pick from (e.g. small, gpu).

    ``gpu_type`` asks for GPUs of one type (``--gres=gpu:TYPE:N``);
    ``constraint`` for nodes with features, ``reservation`` for a
    reservation's nodes, ``exclusive`` for whole nodes, ``nodes`` for more
    than one (a batch run's MPI program; a server runs on the first).
    """

    description: str = ""
    partition: Name = "interactive"
    time: SlurmTime = "02:00:00"
    cpus: int = Field(default=1, ge=1)
    mem: Memory = "2G"
    gpus: int = Field(default=0, ge=0)
    gpu_type: Name | None = None
    constraint: Constraint | None = None
    reservation: Name | None = None
    exclusive: bool = False
    nodes: int = Field(default=1, ge=1)
    account: Name | None = None
    qos: Name | None = None

    @model_validator(mode="after")
    def _gpu_type_needs_gpus(self) -> Profile:
        if self.gpu_type is not None and self.gpus == 0:
            raise ValueError("gpu_type: needs gpus of 1 or more")
        return self


class BindPath(_Strict):
    """A host path bound into every researcher's container (scratch,
    project space). ``source`` may use ``{user}``."""

    source: Annotated[str, Field(pattern=r"^/[A-Za-z0-9_./{}-]*$")]
    target: Annotated[str, Field(pattern=r"^/[A-Za-z0-9_./-]*$")] | None = None
    read_only: bool = False


class ContainerPolicy(_Strict):
    """What of the host a researcher's container (server or batch run) sees.

    By default only its workspace (its home and working folder), a batch
    run's folder and the site's ``binds``: the image runs a repository's
    code, which should not reach the researcher's keys and data.
    ``bind_home: true`` also binds the researcher's real home as $HOME.
    """

    bind_home: bool = False


class WorkspacePolicy(_Strict):
    """Where a launch's copy of the repository lives. ``root`` may use
    ``{user}`` and ``{home}``; ``persistent`` keeps it across launches of the
    same repository, ``ephemeral`` starts fresh each time."""

    root: Annotated[str, Field(pattern=r"^(/|\{home\}/)[A-Za-z0-9_./{}-]*$")] = "{home}/binder"
    mode: Literal["persistent", "ephemeral"] = "persistent"


class Quotas(_Strict):
    max_servers_per_user: int = Field(default=4, ge=1)


class BinderService(_Strict):
    """Limits of the Binder service (``hpcbinder serve``).

    Builds beyond ``max_parallel_builds`` wait in a queue whose position
    the launch page shows; launches in progress are limited per user and
    per repository (running servers are limited by ``quotas``).
    """

    max_parallel_builds: int = Field(default=2, ge=1)
    max_launches_per_user: int = Field(default=2, ge=1)
    max_launches_per_repo: int = Field(default=20, ge=1)
    launch_timeout_seconds: float = Field(default=300, gt=0)
    #: A link runs its repository's code as the researcher who clicks it:
    #: the first launch of a repository no ``trusted_repos`` regex matches
    #: (its whole clone URL) asks them to confirm on the launch page.
    confirm_untrusted: bool = True
    trusted_repos: list[Regex] = []
    #: A file holding the bearer token Prometheus sends for ``/metrics`` and
    #: ``/versions`` (which otherwise answer the hub's admins only), readable
    #: by the service account and by no other account; never the token here.
    metrics_token_file: AbsolutePath | None = None
    #: Other sites' pages (e.g. the centre's documentation, with Thebe or
    #: launch buttons) whose scripts may use the Binder API with the
    #: researcher's login: CORS with credentials for exactly these origins,
    #: and their servers accept those pages' requests.
    cors_allow_origins: list[Origin] = []
    #: ``/build/...?build_only=true`` builds an image without starting a
    #: server (BinderHub allows it only in its API-only mode).
    allow_build_only: bool = True


class Launch(_Strict):
    """How long a server's launch may take, in two parts: the wait in
    Slurm's queue (a busy cluster's partition may be full for hours), and
    the time a job that has started has to bring its server up. The
    spawner enforces both (and sets JupyterHub's ``start_timeout`` to
    their sum); an expired queue wait cancels the job."""

    max_queue_minutes: float = Field(default=240, gt=0, le=7 * 24 * 60)
    start_seconds: float = Field(default=180, gt=0, le=3600)


class SSHHost(_Strict):
    """A host reached over SSH (key authentication, known host keys only)."""

    host: Hostname
    port: int = Field(default=22, ge=1, le=65535)
    user: Account = "hpcbuild"
    key_file: AbsolutePath
    known_hosts: AbsolutePath


LOGIN_AS_USER = "{user}"


def _login_account(value: str) -> str:
    return value if value == LOGIN_AS_USER else _account(value)


class LoginNode(SSHHost):
    """A Slurm submit host reached over SSH, for a hub that is not one.

    ``user: "{user}"`` logs in as each researcher (the site lets the hub's
    key in for them, e.g. with an AuthorizedKeysCommand); any other account
    is a service account that runs Slurm commands through ``sudo -n -u
    USER`` and needs a sudoers rule letting it run ``/bin/sh`` as users.
    """

    user: Annotated[str, AfterValidator(_login_account)] = LOGIN_AS_USER


class Cluster(_Strict):
    """How the hub reaches Slurm and the notebook servers.

    Without ``login`` this host submits jobs itself. ``tunnel``: compute
    nodes are not routable from the hub, which then reaches each server
    through an SSH tunnel via the login node.
    """

    login: LoginNode | None = None
    tunnel: bool = False

    @model_validator(mode="after")
    def _tunnel_needs_login(self) -> Cluster:
        if self.tunnel and self.login is None:
            raise ValueError("tunnel: needs cluster.login (the tunnel goes through it)")
        return self


def _bind_address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError("expected an IP address to listen on (0.0.0.0: every address)") from None
    return value


BindAddress = Annotated[str, AfterValidator(_bind_address)]
HubOrigin = Annotated[str, Field(pattern=r"^https?://[A-Za-z0-9.-]+(:\d{1,5})?/?$")]


class HubSettings(_Strict):
    """The hub host: where JupyterHub, its proxy and the Binder service
    listen, how browsers and compute nodes reach them, and who may log in
    (``configs/jupyterhub_config.py`` reads this section).

    ``public_url``: the hub in browsers (each researcher's servers are on a
    subdomain of it). ``ip``: the proxy's public address; ``hub_ip``: the
    hub's own API, which every server job calls from its compute node, so at
    a site an address the compute nodes reach (``hub_connect_ip`` names it
    where ``hub_ip`` is 0.0.0.0). ``authenticator``: JupyterHub's name or
    class (PAM by default; LDAP or OAuth as the site chooses, configured in
    the site's own JupyterHub config); ``dummy`` lets anyone in with one
    shared password, so only a site file saying ``dev_cluster: true`` may
    choose it. Defaults are loopback: one host, as in the dev cluster.
    """

    #: An origin (researchers' servers are on its subdomains); default http://localhost:PORT.
    public_url: HubOrigin | None = None
    ip: BindAddress = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65532)  # the hub, its proxy's API, Binder: +1..+3
    hub_ip: BindAddress = "127.0.0.1"
    hub_connect_ip: Annotated[str, Field(pattern=r"^[A-Za-z0-9.-]+$")] | None = None
    binder_ip: BindAddress = "127.0.0.1"
    #: Default http://BINDER_IP:PORT+3.
    binder_public_url: (
        Annotated[str, Field(pattern=r"^https?://[A-Za-z0-9.-]+(:\d{1,5})?(/[A-Za-z0-9._~-]+)*/?$")]
        | None
    ) = None
    authenticator: Name = "pam"
    dev_cluster: bool = False
    allowed_groups: list[Name] = ["hpcusers"]
    allowed_users: list[Account] = []
    admin_users: list[Account] = []


class BuildSettings(_Strict):
    """Where, as whom and within which limits images are built.

    ``backend``: ``local`` runs builds on this host as ``account``;
    ``slurm`` submits them as jobs to ``partition``; ``ssh`` runs them on
    ``ssh.host``. The image store and the checkouts must be visible at the
    same paths wherever builds run (a shared filesystem at a site).
    """

    account: Account = "hpcbuild"
    backend: Literal["local", "slurm", "ssh"] = "local"
    partition: Name = "build"
    cpus: int = Field(default=2, ge=1, le=256)
    mem: Annotated[str, Field(pattern=r"^\d+[KMGT]?$")] = "4G"
    timeout_minutes: float = Field(default=60, gt=0, le=24 * 60)
    max_repo_mb: int = Field(default=1024, ge=1)
    max_image_mb: int = Field(default=20480, ge=1)
    ssh: SSHHost | None = None
    #: Download caches on the build node, one per env key (and one for the
    #: site's bases), so that no build can change what a build of another
    #: key installs (None: no cache).
    cache_dir: AbsolutePath | None = Path("/var/cache/hpcbinder/build")
    #: The build server (``hpcbinder build-server``, run as ``account``) that
    #: every image request goes to; requests are authenticated with MUNGE.
    server_url: Annotated[str, Field(pattern=r"^http://[A-Za-z0-9.-]+:\d{1,5}/?$")] = (
        "http://127.0.0.1:8590"
    )
    #: Service accounts that may ask for builds on behalf of researchers.
    requesters: list[Account] = ["hpcbinder"]
    #: Builds one researcher may have in progress at once.
    max_builds_per_user: int = Field(default=2, ge=1)
    #: Repositories the build server fetches at once, site-wide: each holds
    #: a thread of its fetch pool for up to ``repos.fetch_timeout_seconds``;
    #: more wait (and hear so), never the server's other requests.
    max_parallel_fetches: int = Field(default=4, ge=1)
    #: Disk one researcher's builds and checkouts may take (the images built
    #: and the repositories fetched at their request, while kept): a new
    #: request over it is refused.
    max_user_disk_mb: int = Field(default=51200, ge=1)
    #: Each researcher's own image store, for repositories the build account
    #: cannot fetch (private ones): built as her, in a Slurm job on
    #: ``partition``, readable by her alone (mode 700). ``{home}`` and
    #: ``{user}`` are hers; it must be on a filesystem her jobs see.
    private_store: Annotated[str, Field(pattern=r"^(/|\{home\}/)[A-Za-z0-9_./{}-]*$")] = (
        "{home}/.cache/hpcbinder"
    )
    #: The Slurm partition of researchers' private builds (None: ``partition``,
    #: which must then accept their jobs).
    private_partition: Name | None = None
    #: Read-only credentials per host for repositories the site vouches
    #: for: a file that only root writes and only the build account (its
    #: group) reads; the build server fetches with them, into the shared
    #: store (see hpcbinder.images.deploy). None: none.
    deploy_credentials: AbsolutePath | None = None


class BaseImage(_Strict):
    """A site base image: OS + Python + Jupyter, shared by every repo image.

    ``source`` is what the bootstrap starts from: a Debian release for
    ``debootstrap`` (with ``mirror``), an image reference for ``docker`` and
    ``oras``, a SIF path for ``localimage``. The image must provide
    ``python{python}`` with its venv module; hpcbinder installs Jupyter and
    batchspawner into /opt/hpcbinder/python.

    ``r`` declares the R version (major.minor) that the base's Debian
    release installs (``r-base-core``), e.g. ``"4.2"`` for bookworm: R
    repositories whose runtime.txt names a version pick a base by it (see
    ``r_policy``), and their builds check it. Without it a base is not
    chosen for an R version.
    """

    python: Annotated[str, Field(pattern=r"^3\.\d{1,2}$")] = "3.11"
    r: Annotated[str, Field(pattern=r"^\d\.\d{1,2}$")] | None = None
    bootstrap: Literal["debootstrap", "docker", "oras", "localimage"] = "debootstrap"
    source: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$")] = "bookworm"
    mirror: Url | None = None
    apt_packages: list[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.+-]*$")]] = []


class RecordServices(_Strict):
    """Where archive providers find their services: each defaults to the
    public one, and a site points it at its own installation (a
    university's Dataverse, an InvenioRDM instance for Zenodo-like
    records, a CKAN portal). A URL is ``scheme://host[:port][/prefix]``;
    a DOI dispatches to the provider whose service its landing page is on.
    """

    #: Resolves DOIs (``GET RESOLVER/DOI`` answers with a redirect).
    doi_resolver: ServiceUrl = "https://doi.org"
    #: Where ``gist/USER/ID`` is cloned from (git over https).
    gist: ServiceUrl = "https://gist.github.com"
    #: Zenodo and InvenioRDM instances (their ``/api/records/ID``).
    zenodo: list[ServiceUrl] = ["https://zenodo.org"]
    #: Figshare's landing sites (figshare.com and institutions' portals) and its API.
    figshare: list[ServiceUrl] = ["https://figshare.com"]
    figshare_api: ServiceUrl = "https://api.figshare.com/v2"
    #: Dataverse installations (their ``/api/datasets``).
    dataverse: list[ServiceUrl] = ["https://dataverse.harvard.edu"]
    hydroshare: ServiceUrl = "https://www.hydroshare.org"
    #: CKAN portals a ``ckan/`` link may name; empty: any the allow list admits.
    ckan: list[ServiceUrl] = []
    software_heritage: ServiceUrl = "https://archive.softwareheritage.org"


class RepoPolicy(_Strict):
    """Which repositories may be launched, and how they are fetched.

    ``allow`` and ``ban`` are regular expressions matched (in full) against
    the clone URL, e.g. ``https://github\\.com/our-org/.*``. An empty
    ``allow`` allows everything not banned. ``local/`` specs are allowed
    only below ``local_roots``.
    """

    protocols: list[Literal["https", "http", "git", "ssh", "file"]] = ["https", "git"]
    allow: list[Regex] = []
    ban: list[Regex] = []
    local_roots: list[AbsolutePath] = []
    cache_dir: AbsolutePath | None = None
    github_host: Hostname = "github.com"
    gitlab_host: Hostname = "gitlab.com"
    #: The most disk (git objects and checked-out files) and time one fetch
    #: may take; a fetch past either is stopped while it runs and removed.
    max_fetch_mb: int = Field(default=4096, ge=1)
    fetch_timeout_seconds: float = Field(default=600, gt=0)
    #: The most files (downloaded and unpacked) one record fetch may make.
    max_fetch_files: int = Field(default=100_000, ge=1)
    #: Networks that are not public (the centre's own forge or Dataverse at
    #: 10.1.2.0/24) that the build server may fetch repositories and records
    #: from; loopback, private and link-local addresses are refused
    #: otherwise, wherever a link, redirect or submodule points
    #: (:mod:`hpcbinder.seams.addresses`).
    internal_networks: list[IPvAnyNetwork] = []
    records: RecordServices = RecordServices()
    _ca_bundle: Path | None = PrivateAttr(default=None)

    @property
    def ca_bundle(self) -> Path | None:
        """The CA certificates every HTTPS fetch trusts (git's and records'
        alike): the site's ``network.ca_bundle``, which :class:`Site` gives
        its ``repos``; None, the system's."""
        return self._ca_bundle


class Mirrors(_Strict):
    """Package sources the builds use; sites point them at local mirrors."""

    pypi_index: Url | None = None
    conda_channels: list[CondaChannel] = ["conda-forge"]
    #: Where channel names (``conda-forge``) are found, as micromamba's
    #: ``channel_alias``: a site's conda mirror serves them all.
    conda_channel_alias: Url = "https://conda.anaconda.org"
    micromamba_url: Url = "https://micro.mamba.pm/api/micromamba/linux-64/latest"
    cran: Url = "https://packagemanager.posit.co/cran"
    julia_downloads: Url = "https://julialang-s3.julialang.org/bin/linux/x64"
    julia_pkg_server: Url = "https://pkg.julialang.org"
    nix_installer: Url = "https://nixos.org/nix/install"

    @property
    def conda_channel_urls(self) -> list[str]:
        """The site's channels as micromamba reaches them: a URL as it is,
        a name under the channel alias."""
        alias = self.conda_channel_alias.rstrip("/")
        return [
            channel.rstrip("/") if "://" in channel else f"{alias}/{channel}"
            for channel in self.conda_channels
        ]


class Network(_Strict):
    """What every build needs to reach the outside through the site's network."""

    ca_bundle: AbsolutePath | None = None
    http_proxy: Url | None = None
    https_proxy: Url | None = None
    no_proxy: Annotated[str, Field(pattern=r"^[A-Za-z0-9.,*:/-]*$")] | None = None
    mirrors: Mirrors = Mirrors()


class Dockerfiles(_Strict):
    """How a repository's Dockerfile FROM line becomes an Apptainer bootstrap.

    ``from_map`` maps a FROM image (as written) to a site base name
    (``base:NAME``), a local SIF path, or another ``docker://`` reference.
    Unmapped images are pulled from their registry only when
    ``allow_unmapped`` is true.
    """

    from_map: dict[str, str] = {}
    allow_unmapped: bool = False


def _default_partitions() -> dict[str, Partition]:
    return {
        "interactive": Partition(max_time="08:00:00"),
        "batch": Partition(max_time="2-00:00:00", max_cpus=8, max_mem="16G"),
        "build": Partition(max_time="04:00:00", researchers=False),
    }


def _default_profiles() -> dict[str, Profile]:
    return {
        "small": Profile(description="1 CPU, 2 GB, 2 hours"),
        "medium": Profile(description="4 CPUs, 8 GB, 8 hours", time="08:00:00", cpus=4, mem="8G"),
    }


def over_limits(where: str, profile: Profile, partition: Partition, name: str) -> list[str]:
    """Each way ``profile`` asks for more than ``partition`` allows."""
    problems = []
    if slurm_seconds(profile.time) > slurm_seconds(partition.max_time):
        problems.append(
            f"{where}.time: {profile.time} is over partition {name}'s max_time "
            f"({partition.max_time})"
        )
    if profile.cpus > partition.max_cpus:
        problems.append(
            f"{where}.cpus: {profile.cpus} is over partition {name}'s max_cpus "
            f"({partition.max_cpus})"
        )
    if _memory_kb(profile.mem) > _memory_kb(partition.max_mem):
        problems.append(
            f"{where}.mem: {profile.mem} is over partition {name}'s max_mem ({partition.max_mem})"
        )
    if profile.gpus > partition.max_gpus:
        problems.append(
            f"{where}.gpus: {profile.gpus} is over partition {name}'s max_gpus "
            f"({partition.max_gpus})"
        )
    if profile.gpu_type and partition.gpu_types and profile.gpu_type not in partition.gpu_types:
        problems.append(
            f"{where}.gpu_type: {profile.gpu_type} is not one of partition {name}'s gpu_types "
            f"({', '.join(partition.gpu_types)})"
        )
    if profile.nodes > partition.max_nodes:
        problems.append(
            f"{where}.nodes: {profile.nodes} is over partition {name}'s max_nodes "
            f"({partition.max_nodes})"
        )
    if profile.account and partition.accounts and profile.account not in partition.accounts:
        problems.append(f"{where}.account: {profile.account!r} may not use partition {name}")
    if profile.qos and partition.qos and profile.qos not in partition.qos:
        problems.append(f"{where}.qos: {profile.qos!r} may not be used on partition {name}")
    return problems


def not_for_researchers(where: str, name: str) -> str:
    """The problem of a researcher's job on partition ``name``, which has
    ``researchers: false``."""
    return (
        f"{where}partition: {name} is not for researchers' jobs "
        f"(site file: partitions.{name}.researchers)"
    )


class Site(_Strict):
    """A whole site file.

    ``accounts``: the Slurm accounts researchers may charge, each with the
    Unix groups whose members may use it (an empty list: every researcher).
    Without any, no job may name an account (Slurm's default is used).
    """

    image_store: AbsolutePath = Path("/var/lib/hpcbinder/images")
    build: BuildSettings = BuildSettings()
    partitions: dict[Name, Partition] = Field(default_factory=_default_partitions)
    default_partition: Name = "interactive"
    bases: dict[Name, BaseImage] = Field(default_factory=lambda: {"default": BaseImage()})
    default_base: Name = "default"
    python_policy: Literal["exact", "nearest"] = "nearest"
    #: How runtime.txt's ``r-X.Y-DATE`` picks among the bases that declare
    #: ``r``: only that version (``exact``), or the nearest one with a warning.
    r_policy: Literal["exact", "nearest"] = "nearest"
    repos: RepoPolicy = RepoPolicy()
    network: Network = Network()
    dockerfiles: Dockerfiles = Dockerfiles()
    profiles: dict[Name, Profile] = Field(default_factory=_default_profiles)
    default_profile: Name = "small"
    binds: list[BindPath] = []
    container: ContainerPolicy = ContainerPolicy()
    workspace: WorkspacePolicy = WorkspacePolicy()
    quotas: Quotas = Quotas()
    cluster: Cluster = Cluster()
    hub: HubSettings = HubSettings()
    binder: BinderService = BinderService()
    launch: Launch = Launch()
    accounts: dict[Name, list[Name]] = {}

    def base_image_path(self, name: str) -> Path:
        """Where the store keeps the built base image ``name``."""
        return self.image_store / "bases" / f"{name}.sif"

    @model_validator(mode="after")
    def _fetches_trust_the_sites_ca(self) -> Site:
        """Fetches on the build host trust the CA bundle its builds do:
        behind a site's TLS proxy or for its own services' certificates."""
        self.repos._ca_bundle = self.network.ca_bundle
        return self

    @model_validator(mode="after")
    def _defaults_exist(self) -> Site:
        # Messages carry their own path: a model-level check has no location.
        if self.default_partition not in self.partitions:
            raise ValueError(
                f"default_partition: {self.default_partition!r} is not one of partitions"
            )
        if not self.partitions[self.default_partition].researchers:
            raise ValueError(not_for_researchers("default_", self.default_partition))
        if self.default_base not in self.bases:
            raise ValueError(f"default_base: {self.default_base!r} is not one of bases")
        if self.build.backend == "ssh" and self.build.ssh is None:
            raise ValueError("build.ssh: required when build.backend is ssh")
        if self.default_profile not in self.profiles:
            raise ValueError(f"default_profile: {self.default_profile!r} is not one of profiles")
        problems = self._workspace_outside_binds()
        for name, profile in self.profiles.items():
            partition = self.partitions.get(profile.partition)
            if partition is None:
                problems.append(
                    f"profiles.{name}.partition: {profile.partition!r} is not one of partitions"
                )
            elif not partition.researchers:
                problems.append(not_for_researchers(f"profiles.{name}.", profile.partition))
            else:
                problems += over_limits(f"profiles.{name}", profile, partition, profile.partition)
            if profile.account is not None and profile.account not in self.accounts:
                problems.append(
                    f"profiles.{name}.account: {profile.account} is not one of accounts "
                    "(the accounts researchers may charge)"
                )
        if problems:
            raise ValueError("\n".join(problems))  # one problem a line: see _problems
        return self

    def _workspace_outside_binds(self) -> list[str]:
        """workspace.root below a writable bind: a container could swap a
        workspace there for a link (to the home) that the next launch binds.
        Compared as written (``{user}`` alike in both); a root under
        ``{home}`` is compared with each user's real paths at launch
        (jobs.serverscript.workspace_for)."""
        root = PurePosixPath(os.path.normpath(self.workspace.root))
        return [
            f"workspace.root: {self.workspace.root} lies in binds[{index}].source "
            f"{bind.source}, which containers may write; choose a root outside every writable bind"
            for index, bind in enumerate(self.binds)
            if not bind.read_only and root.is_relative_to(os.path.normpath(bind.source))
        ]


class SiteConfigError(UserError):
    """The site file cannot be used; ``problems`` lists each as 'path: message'."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


def _problems(error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown setting"
        location = ".".join(str(part) for part in item["loc"])
        for line in message.splitlines():
            problems.append(f"{location}: {line}" if location else line)
    return problems


def parse_site(text: str, source: str = "<site>") -> Site:
    """Validate the YAML ``text`` of a site file."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SiteConfigError(source, [f"{where}not valid YAML ({problem})"]) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SiteConfigError(source, ["(top level): expected a mapping of settings"])
    try:
        return Site.model_validate(data)
    except ValidationError as exc:
        raise SiteConfigError(source, _problems(exc)) from exc


def site_file_in_force(path: Path | None = None) -> Path | None:
    """The file :func:`load_site` reads (None: the defaults), so that a job
    started for a researcher reads the same one."""
    if path is None and os.environ.get(SITE_ENV):
        path = Path(os.environ[SITE_ENV])
    if path is None and SYSTEM_SITE_FILE.exists():
        path = SYSTEM_SITE_FILE
    return path


def load_site(path: Path | None = None) -> Site:
    """The site in force: ``path``, else $HPCBINDER_SITE, else
    /etc/hpcbinder/site.yaml if it exists, else the dev cluster's defaults."""
    path = site_file_in_force(path)
    if path is None:
        return Site()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SiteConfigError(str(path), [f"cannot read: {exc.strerror}"]) from exc
    return parse_site(text, str(path))
