"""The site's way to Slurm, for every component: commands on this host
(a submit host) or on the login node of ``cluster.login`` over SSH.

One SSH connection per login account is shared by everything in a process
(the hub's spawners, the Binder service's batch submits and health check).
"""

from __future__ import annotations

import threading

from hpcbinder.config import Site
from hpcbinder.seams.proc import CommandRunner, LocalRunner
from hpcbinder.seams.remote import LoginNodeCommands
from hpcbinder.seams.slurm import SlurmCLI

_LOGIN_NODES: dict[str, LoginNodeCommands] = {}
_LOCK = threading.Lock()


def cluster_runner(site: Site) -> CommandRunner:
    """Where this site's Slurm commands run."""
    login = site.cluster.login
    if login is None:
        return LocalRunner()
    key = login.model_dump_json()
    with _LOCK:
        if key not in _LOGIN_NODES:
            _LOGIN_NODES[key] = LoginNodeCommands(login)
        return _LOGIN_NODES[key]


def cluster_slurm(site: Site, timeout: float = 30.0) -> SlurmCLI:
    """The Slurm client every component uses for this site."""
    return SlurmCLI(cluster_runner(site), timeout=timeout)
