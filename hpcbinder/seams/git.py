"""The seam around ``git``: list refs, fetch one commit, read tree ids.

Every call runs with prompts disabled (a private or missing repository
fails at once instead of waiting for a password) and with
``GIT_ALLOW_PROTOCOL`` set to the site's allowed protocols, which git
enforces for every transport it opens, including submodules and redirects.
Values from users reach git only as separate argv entries after
``--end-of-options`` or as the value of an option.

A repository on this host (a ``file://`` URL the caller has checked is below
the site's local roots) may belong to another account; git refuses those
("dubious ownership"). Such calls name it as ``local_repo`` and git then
trusts exactly that repository, in the one process that reads it: the
``upload-pack`` serving the fetch gets ``-c safe.directory=PATH`` (and
``PATH/.git``). Neither ``git -c`` nor ``GIT_CONFIG_COUNT`` would do: git
clears both from the environment of a local transport's ``upload-pack``.
The fetcher only reads that repository; everything it writes is its own.

A repository and its server are untrusted: a fetch could be any size (a
pack of gigabytes, a small pack that checks out to far more) or never end
(a server that answers nothing, or slowly). Every call that reaches a
repository therefore runs under :class:`FetchLimits`: git runs in its own
process group, watched while it runs; past the time limit, or once what it
wrote (the folder it fills and its own output) outgrows the size limit, the
whole group is killed, the partial checkout removed, and the error names the
site setting that set the limit.

Submodules are fetched as repo2docker's ``git submodule update --init
--recursive`` would, at the commits the repository pins, but not by ``git
submodule``: each submodule's URL (a relative one resolved against its
parent's) is first judged by the caller's policy (the site's protocols,
allow/ban lists and local roots), then fetched like the repository itself,
within the same limits and deadline. So git's ``protocol.file.allow``
(which ``git submodule`` needs relaxed for ``file://``) stays as it is, and
no submodule URL reaches git unchecked.

Where it connects: the build account's git reaches a remote only at an
address :mod:`hpcbinder.seams.addresses` judged (public, or in the site's
``repos.internal_networks``), pinned for the call (:func:`_route`): a
link, a redirect or a submodule cannot send it to the build node's own
loopback or an internal host, nor can the name be rebound after the check.

Whose credentials: by default none. The build account fetches every
repository anonymously (:func:`_env`). A researcher's own process fetching
a private repository for herself (:mod:`hpcbinder.images.private`) runs
inside :func:`own_credentials`: git then sees her home (her ~/.ssh keys and
config, her git config and credential helper), her SSH agent and her
``GIT_SSH_COMMAND``, and a token she gives reaches git's credential helper
through an environment variable that the helper names, never argv or a URL.
That helper is scoped (``credential.<origin>.helper``) to the one
``scheme://host[:port]`` she names for the token: git asks it for no other
host, whatever a repository, a redirect or a submodule points at. Her own
rights reach a submodule only on the same origin as the repository fetched
(:func:`origin`): a repository's author chooses its submodules, and a
public one must not borrow her access to another host or her files.
It is a context, not an argument, so that the one environment builder
decides it for every git call of a fetch (submodules, short-SHA lookups),
and no provider can pass credentials on by accident.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from hpcbinder import textpatterns
from hpcbinder.patterns import COMMIT, LOCAL_PATH
from hpcbinder.seams import addresses, connect, proc

_LS_REMOTE_LINE = textpatterns.compile(rf"({COMMIT.pattern})\t(\S+)")
#: A line of git's stderr that starts a new message (``fatal: ...``).
_MESSAGE_START = textpatterns.compile(r"(?i)(?:fatal|error|warning|hint|remote):")
_ERROR_START = textpatterns.compile(r"(?i)(?:fatal|error): ?")
#: curl's words for an HTTP redirect that git did not follow.
_REDIRECTED = textpatterns.compile(r"returned error: 30[12378]\b")
#: How long a git error (first line and its continuation) may get before
#: only its first line is kept.
_ERROR_CHARS = 300
#: How often a running git is checked against its limits (at least: a
#: check that takes longer, on a large checkout, waits twice as long).
_WATCH_SECONDS = 0.2
#: Submodules of submodules are fetched down to this depth.
MAX_SUBMODULE_DEPTH = 4
#: A gitlink (submodule) in ``git ls-files --stage`` output.
_GITLINK = textpatterns.compile(rf"160000 ({COMMIT.pattern}) 0\t(.+)")

#: Judges a submodule URL by the site's policy: raises if it is not
#: allowed, else returns its checked path for a repository on this host.
UrlPolicy = Callable[[str], Path | None]
#: Default ports, which an origin leaves out (as git's URL matching does).
_DEFAULT_PORTS = {"http": 80, "https": 443, "ssh": 22, "git": 9418}


class GitError(RuntimeError):
    """git could not reach a repository or find what was asked for."""


class FetchLimitExceeded(GitError):
    """A fetch took more disk or time than the site allows, and was stopped."""


class SubmoduleError(GitError):
    """The repository was fetched, but its submodules could not be (one
    refused by the policy or the origin rule, unreachable, or badly
    declared): says nothing of whether the repository itself is open to
    the reader, so it is never taken for "no access", which would have the
    researcher fetch a public repository again as herself, lending its
    author's submodules her rights."""


@dataclass(frozen=True)
class FetchLimits:
    """The most disk (what git writes, its output included) and wall time
    one call that reaches a repository may take, and the names of the site
    settings that say so, for the error that tells which was reached."""

    max_mb: int
    seconds: float
    max_mb_setting: str
    seconds_setting: str


#: What git keeps of this process's environment: where programs are and
#: the locale. Nothing that names credentials: git runs as the build
#: account for every researcher, so its own keys, agent, ~/.netrc,
#: credential helpers and config must never serve a repository. No proxy
#: variable either: :func:`_route` chooses the proxy and gives it to git.
_KEPT_ENV = ("PATH", "LANG")


#: ssh's options for the build account: no prompt, agent or key of its own
#: (ssh reads ~ from passwd, not $HOME: without an IdentityFile it would offer
#: the account's ~/.ssh/id_* keys).
_SSH_OPTIONS = "-o BatchMode=yes -o IdentityAgent=none -o IdentitiesOnly=yes"
#: ssh for git: no config, agent or key of the build account's own.
_SSH = f"ssh -F /dev/null {_SSH_OPTIONS} -o IdentityFile=none"
#: Options of every git call: no HTTP redirect is followed. By default git
#: follows a server's redirects on its first request (``initial``), to any
#: host: past the site's allow and ban patterns, which judged only the URL
#: asked for, and to this host's loopback or the cluster's internal hosts.
#: repo2docker and BinderHub run git with that default. Here a caller
#: follows an HTTP(S) repository's redirects before git runs, judging each
#: hop by the site's policy (:mod:`hpcbinder.sources.redirects`), and gives
#: git the URL they end at; one git still meets fails, naming the redirect.
#: ``-c`` outranks every config file, a researcher's own included.
_OPTIONS = ("-c", "http.followRedirects=false")


#: The variable through which a token reaches git's credential helper
#: (see :class:`OwnCredentials`): named by the helper, set only in git's
#: own environment.
TOKEN_VARIABLE = "HPCBINDER_GIT_TOKEN"  # noqa: S105 (a name, not a value)
#: The user name git offers with that token (HTTPS basic authentication).
TOKEN_USER_VARIABLE = "HPCBINDER_GIT_USERNAME"  # noqa: S105 (a name)
#: The variable that names the one origin (``https://host[:port]``) that
#: token is for: a token given without it is refused.
TOKEN_ORIGIN_VARIABLE = "HPCBINDER_GIT_TOKEN_HOST"  # noqa: S105 (a name)
#: git's credential helper for a given token: shell text that names the
#: variables, holds no value (git runs ``!`` helpers through the shell).
_TOKEN_HELPER = (
    '!f() { test "$1" = get || exit 0; '
    "printf 'username=%s\\npassword=%s\\n' "
    f'"${TOKEN_USER_VARIABLE}" "${TOKEN_VARIABLE}"; }}; f'
)
#: What git keeps of a researcher's own environment when it fetches for her:
#: where her keys, agent, config and ssh command are.
_OWN_ENV = ("HOME", "USER", "LOGNAME", "XDG_CONFIG_HOME", "SSH_AUTH_SOCK", "GIT_SSH_COMMAND")


#: An origin a token is given for: ``http(s)://host[:port]``, lower case,
#: no user, path or wildcard (git's URL matching takes ``*`` in a host).
TOKEN_ORIGIN = textpatterns.compile(
    r"https?://(?:[a-z0-9](?:[a-z0-9-]{0,62}\.)*[a-z0-9-]{1,63}|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?"
)


@dataclass(frozen=True)
class OwnCredentials:
    """This process's account's own credentials, lent to git for one fetch:
    her ssh keys, agent and config, her git credential helper, and
    ``token`` (with ``user``) if she gave one, for HTTPS to ``token_origin``
    only (a :data:`TOKEN_ORIGIN`, checked here: it scopes a config key)."""

    token: str | None = None
    user: str = ""
    token_origin: str = ""

    def __post_init__(self) -> None:
        if self.token is not None and not TOKEN_ORIGIN.fullmatch(self.token_origin):
            raise ValueError(f"not an origin (scheme://host[:port]): {self.token_origin!r}")


_CREDENTIALS: contextvars.ContextVar[OwnCredentials | None] = contextvars.ContextVar(
    "hpcbinder_git_credentials", default=None
)


@contextlib.contextmanager
def own_credentials(credentials: OwnCredentials) -> Iterator[None]:
    """git calls in this context fetch with ``credentials`` (this process's
    account's own); outside it, anonymously."""
    reset = _CREDENTIALS.set(credentials)
    try:
        yield
    finally:
        _CREDENTIALS.reset(reset)


@dataclass(frozen=True)
class DeployCredential:
    """Read-only credentials a site gives the build account for one host
    (``host`` as in URLs: a name, or name:port for HTTPS), for the
    repositories there that it vouches for: a token (HTTPS basic
    authentication as ``username``) and/or an SSH key (with the host's
    key in ``known_hosts``). Values are checked by their loader
    (:mod:`hpcbinder.images.deploy`): a host name, absolute plain paths."""

    host: str
    username: str = "x-access-token"
    token: str | None = None
    ssh_key: Path | None = None
    known_hosts: Path | None = None


_DEPLOY: contextvars.ContextVar[tuple[DeployCredential, ...]] = contextvars.ContextVar(
    "hpcbinder_git_deploy", default=()
)


@contextlib.contextmanager
def deploy_credentials(credentials: Sequence[DeployCredential]) -> Iterator[None]:
    """Anonymous git calls in this context may use ``credentials``, each
    for its own host only (git's URL-scoped credential helpers, ssh's
    ``Host`` blocks): a redirect or a submodule on another host gets none."""
    reset = _DEPLOY.set(tuple(credentials))
    try:
        yield
    finally:
        _DEPLOY.reset(reset)


def _deploy_env(credentials: Sequence[DeployCredential], home: Path) -> dict[str, str]:
    """git's configuration (by environment) and ssh's config file (in git's
    own empty ``home``) for the site's deploy credentials: tokens only in
    variables that constant helpers name, one helper per host and scheme."""
    env: dict[str, str] = {}
    config: list[tuple[str, str]] = []
    ssh_blocks: list[str] = []
    for index, credential in enumerate(credentials):
        if credential.token is not None:
            token, user = f"HPCBINDER_DEPLOY_TOKEN_{index}", f"HPCBINDER_DEPLOY_USER_{index}"
            env[token], env[user] = credential.token, credential.username
            helper = (
                '!f() { test "$1" = get || exit 0; '
                f'echo "username=${{{user}}}"; echo "password=${{{token}}}"; }}; f'
            )
            config += [
                (f"credential.{scheme}://{credential.host}.helper", helper)
                for scheme in ("https", "http")
            ]
        if credential.ssh_key is not None:
            block = [
                f"Host {credential.host.partition(':')[0]}",
                f"  IdentityFile {credential.ssh_key}",
            ]
            if credential.known_hosts is not None:
                block.append(f"  UserKnownHostsFile {credential.known_hosts}")
            ssh_blocks.append("\n".join(block))
    if config:
        env["GIT_CONFIG_COUNT"] = str(len(config))
        for index, (key, value) in enumerate(config):
            env[f"GIT_CONFIG_KEY_{index}"], env[f"GIT_CONFIG_VALUE_{index}"] = key, value
    if ssh_blocks:
        # Last, for every host: no key but a deploy key its block names (a
        # value ssh takes for an option is the first it reads; keys add up).
        ssh_blocks.append("Host *\n  IdentityFile none")
        ssh_config = home / "ssh_config"
        ssh_config.write_text("\n".join(ssh_blocks) + "\n")
        env["GIT_SSH_COMMAND"] = f"ssh -F {ssh_config} {_SSH_OPTIONS}"
    return env


def fetching_as_self() -> bool:
    """Whether git calls now fetch with this account's own credentials and
    rights (for itself), not anonymously for anyone."""
    return _CREDENTIALS.get() is not None


def _own_env(credentials: OwnCredentials) -> dict[str, str]:
    """What git gets of the researcher's own for a fetch of hers: her
    home, agent and ssh command; the token only through the helper's
    variable, that helper asked for her token's origin only (a redirect, a
    submodule or a repository elsewhere never gets it), her own helpers
    tried after it."""
    env = {name: os.environ[name] for name in _OWN_ENV if name in os.environ}
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
    if credentials.token is not None:
        env.update(
            {
                TOKEN_VARIABLE: credentials.token,
                TOKEN_USER_VARIABLE: credentials.user,
                "GIT_CONFIG_COUNT": "1",
                "GIT_CONFIG_KEY_0": f"credential.{credentials.token_origin}.helper",
                "GIT_CONFIG_VALUE_0": _TOKEN_HELPER,
            }
        )
    return env


def _env(protocols: Iterable[str], home: Path) -> dict[str, str]:
    """git's whole environment: ``home`` an empty folder (no ~/.gitconfig,
    ~/.netrc or ~/.ssh), no system config (a credential helper there), no
    SSH agent, no ssh config or identity but what ssh finds in ``home``;
    within :func:`own_credentials`, this account's own instead."""
    kept = {name: os.environ[name] for name in _KEPT_ENV if name in os.environ}
    credentials = _CREDENTIALS.get()
    if credentials is not None:
        return {
            **kept,
            **_own_env(credentials),
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "true",
            "SSH_ASKPASS": "true",
            "GIT_ALLOW_PROTOCOL": ":".join(protocols),
        }
    return {
        **kept,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "true",
        "SSH_ASKPASS": "true",
        # No object fetched from a promisor that a local repository's config
        # names (git 2.39.4 and later set it for upload-pack themselves).
        "GIT_NO_LAZY_FETCH": "1",
        "GIT_SSH_COMMAND": _SSH,
        "GIT_ALLOW_PROTOCOL": ":".join(protocols),
        **_deploy_env(_DEPLOY.get(), home),
    }


@dataclass(frozen=True)
class _Route:
    """How one git call reaches its remote: its ``-c`` options, the
    configuration it gets by environment (a proxy's URL may hold a
    password: never argv), the variables it adds, and whether ssh
    connects through the helper."""

    options: tuple[str, ...] = ()
    config: tuple[tuple[str, str], ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    ssh_proxy: bool = False


#: Proxy schemes whose client resolves the target's name itself (curl's
#: ``socks4://`` and ``socks5://``): its lookup is pinned as a direct one.
_LOCAL_LOOKUP_PROXIES = ("socks4://", "socks5://")


def _route(
    remote: str, networks: Sequence[addresses.Network], what: str, deadline: float
) -> _Route:
    """Where git connects for ``remote``. The proxy for HTTP(S) is chosen
    here (:func:`_proxy_for`) and given to git, which sees no proxy
    variable of its own: curl's rules for them differ from any other's,
    and the judgement below must hold for the connection curl makes.

    The build account's git connects only to the address
    :class:`~hpcbinder.seams.addresses.AddressRule` checked (public, or in
    ``networks``), pinned so that git and ssh cannot look the name up
    again: curl's resolve list for HTTP(S), :mod:`hpcbinder.seams.connect`
    as the proxy command of ``git://`` and ``ssh://``. Through a proxy that
    looks the name up itself, every answer the name has here is judged. A
    repository on this host has no connection to judge; a researcher
    fetching as herself connects where her own account may
    (:func:`fetching_as_self`)."""
    where = origin(remote)
    if where == "file://":
        return _Route()
    if where is None:
        raise GitError(f"{what}: cannot tell which host the URL names")
    parts = urlsplit(where)  # origin() checked its port and lower-cased its host
    scheme, host = parts.scheme, parts.hostname or ""
    port = _DEFAULT_PORTS[scheme] if parts.port is None else parts.port
    web = scheme in ("http", "https")
    proxy = _proxy_for(scheme, host) if web else None
    config = (("http.proxy", proxy or ""),) if web else ()
    if fetching_as_self():  # her own git config may name a proxy of hers
        return _Route(config=config if proxy else ())
    rule = addresses.AddressRule(networks)
    try:
        if proxy is not None and not proxy.lower().startswith(_LOCAL_LOOKUP_PROXIES):
            rule.judge_proxied(host, port, deadline)  # the proxy looks the name up
            return _Route(config=config)
        address = rule.address(host, port, deadline)
    except OSError as exc:  # TimeoutError too: a resolver that stalls
        raise GitError(f"{what}: {exc}") from None
    if web:
        if host == str(address):  # an address literal: curl connects to it as judged
            return _Route(config=config)
        shown = str(address) if address.version == 4 else f"[{address}]"
        pin = ("-c", f"http.curloptResolve={host}:{port}:{shown}")
        return _Route(options=pin, config=config)
    env = {connect.ADDRESS: str(address), connect.PORT: str(port)}
    if scheme == "git":  # the variable outranks core.gitProxy in any config
        return _Route(env={**env, "GIT_PROXY_COMMAND": _connect_helper()})
    return _Route(env=env, ssh_proxy=True)


def _proxy_for(scheme: str, host: str) -> str | None:
    """The proxy of this process's environment through which ``host`` is
    reached over ``scheme`` (``SCHEME_proxy``, else ``all_proxy``; either
    spelling, as Python reads them), unless ``no_proxy`` exempts the host
    (a name, a domain below it, or ``*``); None: directly."""
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(scheme) or proxies.get("all")
    if not proxy:
        return None
    exempt = [name.strip().lstrip(".").lower() for name in proxies.get("no", "").split(",")]
    if any(name == "*" or host == name or host.endswith(f".{name}") for name in exempt if name):
        return None
    return proxy


def _with_config(env: dict[str, str], config: Sequence[tuple[str, str]]) -> dict[str, str]:
    """``env`` with ``config`` added to the git configuration it gives by
    environment (``GIT_CONFIG_COUNT``: after what it holds already)."""
    count = int(env.get("GIT_CONFIG_COUNT", "0"))
    added = dict(env)
    for index, (key, value) in enumerate(config, start=count):
        added[f"GIT_CONFIG_KEY_{index}"], added[f"GIT_CONFIG_VALUE_{index}"] = key, value
    if config:
        added["GIT_CONFIG_COUNT"] = str(count + len(config))
    return added


def _connect_helper() -> str:
    """The path of ``hpcbinder-git-connect``, installed beside this Python
    (a console script of hpcbinder's own, never one found on ``PATH``)."""
    helper = Path(sys.executable).parent / "hpcbinder-git-connect"
    if not LOCAL_PATH.fullmatch(str(helper)) or not os.access(helper, os.X_OK):
        raise GitError(f"hpcbinder is not installed whole: {helper} is missing")
    return str(helper)


def _git(
    args: list[str],
    what: str,
    *,
    protocols: Iterable[str],
    limits: FetchLimits,
    deadline: float,
    cwd: Path | None = None,
    watch: Sequence[Path] = (),
    ca_bundle: Path | None = None,
    remote: str | None = None,
    networks: Sequence[addresses.Network] = (),
) -> proc.CommandResult:
    """git ``args`` in ``cwd``, in its own process group, stopped (the whole
    group) by :class:`FetchLimitExceeded` (``what`` failed: why) once
    ``deadline`` (``time.monotonic``) passes or once its output and the
    folders in ``watch`` hold more than ``limits.max_mb``. ``ca_bundle``:
    the CA certificates HTTPS trusts (the site's ``network.ca_bundle``),
    instead of the system's. ``remote``: the URL the call contacts, whose
    connection goes only to an address :func:`_route` checked against
    ``networks`` (the site's ``repos.internal_networks``)."""
    trust = ["-c", f"http.sslCAInfo={ca_bundle}"] if ca_bundle is not None else []
    route = _route(remote, networks, what, deadline) if remote is not None else _Route()
    argv = ["git", *_OPTIONS, *trust, *route.options, *args]
    with tempfile.TemporaryDirectory(prefix="hpcbinder-git-") as tmp:
        output = Path(tmp)
        env = _with_config({**_env(protocols, output), **route.env}, route.config)
        if cwd is None:  # no repository around git's working folder: its config is nobody's
            cwd = output
            env["GIT_CEILING_DIRECTORIES"] = str(output.parent)
        if route.ssh_proxy:
            env["GIT_SSH_COMMAND"] += f" -o ProxyCommand={_connect_helper()}"
        with (output / "out").open("w+b") as out, (output / "err").open("w+b") as err:
            try:
                child = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    cwd=cwd,
                    env=env,
                    start_new_session=True,
                )
            except FileNotFoundError as exc:
                raise proc.CommandError(argv, "is not installed (not found on PATH)") from exc
            problem = _watch(child, limits, deadline, [output, *watch])
            out.seek(0)
            err.seek(0)
            result = proc.CommandResult(
                tuple(argv),
                child.returncode,
                out.read().decode(errors="replace"),
                err.read().decode(errors="replace"),
            )
    if problem is not None:
        raise FetchLimitExceeded(f"{what}: {problem}")
    return result


def _watch(
    child: subprocess.Popen[bytes], limits: FetchLimits, deadline: float, folders: list[Path]
) -> str | None:
    """Wait for ``child`` to end; if it goes past ``limits`` first, kill its
    process group and say which limit it reached. A limit is also reached if
    the size is over when git ends between two checks."""
    interval = _WATCH_SECONDS
    while True:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=max(0.0, min(interval, deadline - time.monotonic())))
        measured = time.monotonic()
        size = _disk_use(folders)
        interval = max(_WATCH_SECONDS, 2 * (time.monotonic() - measured))
        problem = None
        if size > limits.max_mb * 1024 * 1024:
            problem = (
                f"stopped after taking more than {limits.max_mb} MB "
                f"(this site's limit, {limits.max_mb_setting})"
            )
        elif child.returncode is None and time.monotonic() >= deadline:
            problem = (
                f"stopped after {limits.seconds:g} s "
                f"(this site's time limit, {limits.seconds_setting})"
            )
        if child.returncode is None and problem is not None:
            proc.kill_session(child.pid)  # git's helpers (upload-pack, remote-https) too
            child.wait()
        if child.returncode is not None:
            return problem


def _disk_use(folders: Iterable[Path]) -> int:
    """Bytes in the files below ``folders`` (files that vanish while counted,
    as git renames its temporary packs, are skipped)."""
    total = 0
    for folder in folders:
        for root, _dirs, files in os.walk(folder):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(root, name)).st_size
    return total


def _upload_pack(local_repo: Path | None) -> list[str]:
    """The ``--upload-pack`` option that makes git trust ``local_repo``
    (whoever owns it) for this one call; nothing for other URLs."""
    if local_repo is None:
        return []
    path = str(local_repo)
    if not LOCAL_PATH.fullmatch(path) or "/../" in f"{path}/" or "/./" in f"{path}/":
        raise ValueError(f"not a plain absolute repository path: {path!r}")
    trusted = (path, f"{path.rstrip('/')}/.git")  # a bare repository, a work tree's
    command = ["git", *(f"-c safe.directory={shlex.quote(p)}" for p in trusted), "upload-pack"]
    return [f"--upload-pack={' '.join(command)}"]


def _failed(what: str, result: proc.CommandResult) -> GitError:
    message = error_message(result)
    if _REDIRECTED.search(message):  # see _OPTIONS
        message += " (a redirect, which git does not follow here: link the URL it leads to)"
    return GitError(f"{what}: {message}")


def error_message(result: proc.CommandResult) -> str:
    """What went wrong, in one line, from a failed git's output: the first
    ``fatal:``/``error:`` message, with the lines continuing it if that stays
    short; else git's last line; else its exit status."""
    lines = [line.strip() for line in result.stderr.splitlines()]
    start = next((i for i, line in enumerate(lines) if _ERROR_START.match(line)), None)
    if start is None:
        last = [line for line in lines if line]
        return last[-1] if last else f"git exit status {result.returncode}"
    message = [_ERROR_START.sub("", lines[start], count=1)]
    for line in lines[start + 1 :]:
        if not line or _MESSAGE_START.match(line):
            break
        message.append(line)
    while len(message) > 1 and message[-1].endswith(":"):
        message.pop()  # introduces advice (a command to run) that was cut off
    joined = " ".join(message)
    return joined if len(joined) <= _ERROR_CHARS else message[0]


def ls_remote(
    url: str,
    *,
    protocols: Iterable[str],
    limits: FetchLimits,
    local_repo: Path | None = None,
    ca_bundle: Path | None = None,
    networks: Sequence[addresses.Network] = (),
) -> dict[str, str]:
    """Every ref the remote advertises, name → commit (peeled tags as ``name^{}``).

    ``local_repo``: ``url`` is ``file://`` + this path, checked to be a
    repository git may read whoever owns it. ``ca_bundle``, ``networks``:
    as for :func:`_git` (no network: public addresses only)."""
    what = f"cannot list refs of {url}"
    result = _git(
        ["ls-remote", *_upload_pack(local_repo), "--end-of-options", url],
        what,
        protocols=protocols,
        limits=limits,
        deadline=time.monotonic() + limits.seconds,
        ca_bundle=ca_bundle,
        remote=url,
        networks=networks,
    )
    if not result.ok:
        raise _failed(what, result)
    refs = {}
    for line in result.stdout.splitlines():
        match = _LS_REMOTE_LINE.fullmatch(line.strip())
        if match:
            refs[match.group(2)] = match.group(1)
    return refs


def expand_short_sha(
    url: str,
    short: str,
    *,
    protocols: Iterable[str],
    limits: FetchLimits,
    local_repo: Path | None = None,
    ca_bundle: Path | None = None,
    networks: Sequence[addresses.Network] = (),
) -> str | None:
    """The full commit id that ``short`` abbreviates among the remote's
    branches and tags, or None, from a fetch of all of them (within
    ``limits``). Not a partial fetch (``--filter``): git would make the
    folder a promisor of ``url`` and fetch any object it then misses, in
    calls that have no route (:func:`_route`) to pin, and a dumb-HTTP
    server's answer starts such fetches without end. ``local_repo``,
    ``ca_bundle``, ``networks``: as for :func:`ls_remote`."""
    what = f"cannot fetch {url}"
    deadline = time.monotonic() + limits.seconds
    with tempfile.TemporaryDirectory(prefix="hpcbinder-sha-") as tmp:
        work = Path(tmp)

        def in_work(*args: str, remote: str | None = None) -> proc.CommandResult:
            return _git(
                list(args),
                what,
                protocols=protocols,
                limits=limits,
                deadline=deadline,
                cwd=work,
                watch=[work],
                ca_bundle=ca_bundle,
                remote=remote,
                networks=networks,
            )

        proc.check(in_work("init", "-q", "--bare"))
        fetched = in_work(
            "fetch",
            "-q",
            *_upload_pack(local_repo),
            "--end-of-options",
            url,
            "+refs/heads/*:refs/heads/*",
            "+refs/tags/*:refs/tags/*",
            remote=url,
        )
        if not fetched.ok:
            raise _failed(what, fetched)
        found = in_work(
            "rev-parse", "--verify", "--quiet", "--end-of-options", f"{short}^{{commit}}"
        )
        commit = found.stdout.strip()
        return commit if found.ok and COMMIT.fullmatch(commit) else None


@dataclass(frozen=True)
class _Fetch:
    """What every fetch of one checkout (the repository and its submodules) shares."""

    protocols: list[str]
    limits: FetchLimits
    deadline: float
    root: Path  # the whole checkout, measured against the size limit
    policy: UrlPolicy
    origin: str | None  # the repository's (see origin), its submodules' with her rights
    ca_bundle: Path | None  # see _git
    networks: Sequence[addresses.Network]  # see _git

    def git(
        self, args: list[str], what: str, cwd: Path, remote: str | None = None
    ) -> proc.CommandResult:
        return _git(
            args,
            what,
            protocols=self.protocols,
            limits=self.limits,
            deadline=self.deadline,
            cwd=cwd,
            watch=[self.root],
            ca_bundle=self.ca_bundle,
            remote=remote,
            networks=self.networks,
        )


def fetch_commit(
    url: str,
    commit: str,
    dest: Path,
    *,
    protocols: Iterable[str],
    limits: FetchLimits,
    policy: UrlPolicy,
    local_repo: Path | None = None,
    ca_bundle: Path | None = None,
    networks: Sequence[addresses.Network] = (),
) -> None:
    """A checkout of exactly ``commit`` in the new directory ``dest``, with
    history depth 1 and its submodules at their pinned commits (each URL
    judged by ``policy`` first); nothing at ``dest`` if it fails. ``limits``
    bound the whole fetch: its time, and what ``dest`` (git objects and
    checked-out files, submodules' too) holds. ``local_repo``, ``ca_bundle``,
    ``networks``: as for :func:`ls_remote`, for every submodule too."""
    if not COMMIT.fullmatch(commit):
        raise ValueError(f"not a full commit id: {commit!r}")
    deadline = time.monotonic() + limits.seconds
    fetch = _Fetch(
        list(protocols), limits, deadline, dest, policy, origin(url), ca_bundle, networks
    )
    dest.mkdir(parents=True)
    try:
        _fetch_into(fetch, url, commit, dest, local_repo, depth=0)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _fetch_into(
    fetch: _Fetch, url: str, commit: str, folder: Path, local_repo: Path | None, depth: int
) -> None:
    """``commit`` of ``url`` checked out in the existing empty ``folder``,
    then its submodules."""
    what = f"cannot fetch commit {commit} of {url}"
    steps = [
        (["init", "-q"], None),
        (
            [
                "fetch",
                "-q",
                "--depth=1",
                *_upload_pack(local_repo),
                "--end-of-options",
                url,
                commit,
            ],
            url,
        ),
        # not checkout: git 2.39's takes --end-of-options for a path
        (["switch", "-q", "--detach", "--end-of-options", commit], None),
    ]
    for args, remote in steps:
        result = fetch.git(args, what, folder, remote)
        if not result.ok:
            raise _failed(what, result)
    for path, pinned, sub_url in _submodules(fetch, folder, url, what):
        if depth >= MAX_SUBMODULE_DEPTH:
            raise SubmoduleError(
                f"{what}: submodules nest deeper than {MAX_SUBMODULE_DEPTH} levels"
            )
        target = folder / path
        inside = f"{os.path.realpath(fetch.root)}/"
        if target.is_symlink() or not os.path.realpath(target).startswith(inside):
            raise SubmoduleError(f"{what}: submodule path {path!r} leads outside the repository")
        target.mkdir(parents=True, exist_ok=True)
        local = _judge_submodule(fetch, f"{what}: submodule {path!r}", sub_url)
        try:
            _fetch_into(fetch, sub_url, pinned, target, local, depth + 1)
        except (SubmoduleError, FetchLimitExceeded):
            raise
        except GitError as exc:
            raise SubmoduleError(str(exc)) from exc


def _judge_submodule(fetch: _Fetch, what: str, url: str) -> Path | None:
    """The site's policy's judgement of submodule ``url`` (its checked
    local path; the policy raises its refusal); fetching with her own
    rights, also refused unless on the repository's own origin: the repository's
    author chose it, and her rights are lent to the repository she named,
    not to another host or to her files (git refuses ``file://``
    submodules by default too, since CVE-2022-39253)."""
    if fetching_as_self() and (origin(url) is None or origin(url) != fetch.origin):
        raise SubmoduleError(
            f"{what}: {url} is not on the repository's own host ({fetch.origin}); "
            "a build with your own credentials fetches submodules from there only"
        )
    return fetch.policy(url)


def origin(url: str) -> str | None:
    """``scheme://host[:port]`` of a clone URL (lower case, no user, default
    port left out; scp-like ``host:path`` is ``ssh://host``), ``file://``
    for any repository on this host; None where a reader could take
    another host from it (two ``@``, a bad port, no host)."""
    if url.lower().startswith("file:") or url.startswith("/"):
        return "file://"
    if "://" not in url:
        authority, colon, _ = url.partition(":")
        user, _, host = authority.rpartition("@")
        if not colon or "@" in user or "/" in authority or not host:
            return None
        return f"ssh://{host.lower()}"
    parts = urlsplit(url)
    scheme = {"git+ssh": "ssh", "ssh+git": "ssh"}.get(parts.scheme.lower(), parts.scheme.lower())
    try:
        port = parts.port
    except ValueError:
        return None
    if parts.netloc.count("@") > 1 or not parts.hostname:
        return None
    shown = "" if port is None or port == _DEFAULT_PORTS.get(scheme) else f":{port}"
    return f"{scheme}://{parts.hostname}{shown}"


def _submodules(fetch: _Fetch, folder: Path, url: str, what: str) -> list[tuple[str, str, str]]:
    """(path, pinned commit, URL) of each submodule the checkout in
    ``folder`` pins: gitlinks of its tree, with their URL in ``.gitmodules``
    (relative ones resolved against ``url``). A gitlink without one fails."""
    listed = fetch.git(["ls-files", "--stage", "-z"], what, folder)
    gitlinks = [m.groups() for e in listed.stdout.split("\0") if (m := _GITLINK.fullmatch(e))]
    if not gitlinks:
        return []
    if (folder / ".gitmodules").is_symlink():  # git refuses these too; never read one
        raise SubmoduleError(f"{what}: .gitmodules is a symbolic link")
    config = fetch.git(
        ["config", "-z", "--file", ".gitmodules", "--get-regexp", r"^submodule\..*\.(path|url)$"],
        what,
        folder,
    )
    names: dict[str, str] = {}  # submodule name → path
    urls: dict[str, str] = {}  # submodule name → url
    for entry in filter(None, config.stdout.split("\0")):
        key, _, value = entry.partition("\n")
        name, _, field = key.removeprefix("submodule.").rpartition(".")
        (names if field == "path" else urls)[name] = value
    url_of_path = {path: urls[name] for name, path in names.items() if name in urls}
    found = []
    for commit, path in gitlinks:
        if path not in url_of_path:
            raise SubmoduleError(f"{what}: submodule {path!r} has no URL in .gitmodules")
        found.append((path, commit, submodule_url(url, url_of_path[path])))
    return found


def submodule_url(parent: str, url: str) -> str:
    """A submodule's ``url`` as git resolves it: ``./x`` and ``../x`` are
    relative to the parent repository's URL (each ``../`` drops one part)."""
    if not url.startswith(("./", "../")):
        return url
    base, rest = parent.rstrip("/"), url
    while rest.startswith(("./", "../")):
        if rest.startswith("../"):
            cut = max(base.rfind("/"), base.rfind(":"))
            base = base[:cut] if cut > 0 else base
        rest = rest.split("/", 1)[1]
    separator = "" if base.endswith(":") else "/"
    return f"{base}{separator}{rest}"


def tree_id(checkout: Path) -> str:
    """The git tree id of the checked-out commit: a hash of every file in it."""
    result = proc.check(proc.run(["git", "rev-parse", "HEAD^{tree}"], cwd=checkout, timeout=30))
    return result.stdout.strip()
