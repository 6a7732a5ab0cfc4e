"""Deploy credentials: read-only credentials per host that a site gives the
build server for repositories it vouches for (``build.deploy_credentials``).

A repository fetched with them is built into the shared store and shared
by every researcher who asks for it, as a public one is: the site vouches
that what the credentials can read may be read by all. They are used for
their host only (git's URL-scoped credential helpers, ssh ``Host`` blocks:
:func:`hpcbinder.seams.git.deploy_credentials`), reach git through its
environment, never argv, a URL, a log or a checkout, and only the build
server reads them: the file must be root's, closed to others (mode 0640
root:BUILD-GROUP, or 0600). Format (YAML), by host as URLs name it::

    gitlab.example.org:            # HTTPS: a token, as username
      username: deploy-bot
      token: glpat-...
    github.com:                    # ssh: a key, the host's key
      ssh_key: /etc/hpcbinder/deploy/github
      known_hosts: /etc/hpcbinder/deploy/github.known_hosts
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from hpcbinder import textpatterns
from hpcbinder.config import Site
from hpcbinder.patterns import LOCAL_PATH
from hpcbinder.seams import git

#: A host as URLs name it: a DNS name or address, with a port for HTTPS.
_HOST = textpatterns.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})(?::[0-9]{1,5})?")
_USERNAME = textpatterns.compile(r"[A-Za-z0-9._@+-]{1,128}")
#: A token: printable, no space (it reaches git's helper as one line; the file is capped).
_TOKEN = textpatterns.compile(r"[!-~]+")
_FIELDS = frozenset({"username", "token", "ssh_key", "known_hosts"})
#: The most of the file read.
_FILE_BYTES = 1 << 20


class DeployCredentialsError(RuntimeError):
    """The site's deploy credentials file cannot be used: one line naming
    the file, the entry and the problem, never a value."""


def load(site: Site) -> tuple[git.DeployCredential, ...]:
    """The site's deploy credentials (none without ``build.deploy_credentials``)."""
    path = site.build.deploy_credentials
    if path is None:
        return ()
    where = f"{path} (site file: build.deploy_credentials)"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise DeployCredentialsError(f"cannot read {where}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o027:
            raise DeployCredentialsError(
                f"{where} must be a file of root's that only root writes and others "
                f"cannot read (it is mode {stat.S_IMODE(info.st_mode):o}, "
                f"uid {info.st_uid}): chown root:GROUP, chmod 640"
            )
        text = handle.read(_FILE_BYTES).decode("utf-8", errors="replace")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        raise DeployCredentialsError(f"{where}: not YAML") from None
    if not isinstance(data, dict):
        raise DeployCredentialsError(f"{where}: expected a mapping of hosts")
    return tuple(_entry(where, host, entry) for host, entry in data.items())


def _entry(where: str, host: Any, entry: Any) -> git.DeployCredential:
    """One host's credentials, each value checked (messages name no value)."""
    if not isinstance(host, str) or not _HOST.fullmatch(host):
        raise DeployCredentialsError(f"{where}: an entry's host is not a host name")
    if not isinstance(entry, dict) or not entry or set(entry) - _FIELDS:
        raise DeployCredentialsError(
            f"{where}: {host}: expected some of {', '.join(sorted(_FIELDS))}"
        )

    def text(name: str, pattern: textpatterns.Pattern) -> str | None:
        value = entry.get(name)
        if value is not None and (not isinstance(value, str) or not pattern.fullmatch(value)):
            raise DeployCredentialsError(f"{where}: {host}: {name} is not valid")
        return value

    def path(name: str) -> Path | None:
        value = text(name, LOCAL_PATH)
        return Path(value) if value is not None else None

    return git.DeployCredential(
        host,
        text("username", _USERNAME) or "x-access-token",
        text("token", _TOKEN),
        path("ssh_key"),
        path("known_hosts"),
    )
