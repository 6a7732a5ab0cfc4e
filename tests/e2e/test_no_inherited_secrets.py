"""The hub's and the Binder service's own secrets reach no process of a
researcher: a notebook server and a batch run started for alice through the
Binder service, and the build they needed, read from ``/proc``.

Measured before: a batch run submitted through the service had the
service's own hub token in its processes (sudo's ``env_keep JUPYTERHUB_*``
kept it, sbatch exported it, the container kept it), and a notebook server
had the hub's admin token (``HPCBINDER_*``)."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.binderhelpers import Binder, binder_repo, build_events, phases
from tests.conftest import DevCluster
from tests.repohelpers import git

pytestmark = [pytest.mark.e2e, pytest.mark.slurm, pytest.mark.apptainer]

#: Variables whose values are secrets in the hub's and the service's processes.
SECRET_NAME = re.compile(r".*(?:TOKEN|SECRET|KEY).*")


def _processes() -> dict[int, tuple[int, int, bytes, bytes]]:
    """Every process: pid → (uid, parent pid, cmdline, environ)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            found[int(entry.name)] = (
                entry.stat().st_uid,
                parent,
                (entry / "cmdline").read_bytes(),
                (entry / "environ").read_bytes(),
            )
        except (OSError, ValueError, IndexError):
            continue  # ended meanwhile
    return found


def _descendants(root: int, processes: dict[int, tuple[int, int, bytes, bytes]]) -> set[int]:
    tree = {root}
    grew = True
    while grew:
        more = {pid for pid, (_, parent, _, _) in processes.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return tree


def hub_secrets(binder: Binder) -> dict[str, str]:
    """The secrets in the environments of the hub and what it started (the
    proxy, the Binder service), by where they were found."""
    assert binder.hub.process is not None
    processes = _processes()
    secrets = {}
    for pid in _descendants(binder.hub.process.pid, processes):
        for item in processes[pid][3].split(b"\0"):
            name, _, value = item.decode(errors="replace").partition("=")
            if SECRET_NAME.fullmatch(name) and len(value) >= 8:
                secrets[f"{name} of process {pid}"] = value
    cookie = (binder.hub.state / "jupyterhub_cookie_secret").read_text().strip()
    secrets["the hub's cookie secret"] = cookie
    return secrets


def researchers_processes(users: tuple[str, ...]) -> dict[int, tuple[bytes, bytes]]:
    """pid → (cmdline, environ) of every process of ``users``."""
    uids = {
        int(subprocess.run(["id", "-u", u], capture_output=True, text=True).stdout) for u in users
    }
    return {
        pid: (cmdline, environ)
        for pid, (uid, _, cmdline, environ) in _processes().items()
        if uid in uids
    }


def test_no_secret_of_the_hub_or_the_service_reaches_a_researchers_process(
    binder: Binder, devcluster: DevCluster
) -> None:
    secrets = hub_secrets(binder)
    assert any(value == binder.hub.token for value in secrets.values())  # the admin token
    assert any(name.startswith("JUPYTERHUB_API_TOKEN") for name in secrets)  # the service's

    repo, spec = binder_repo(binder.root)
    (repo / "slow.py").write_text("import time\ntime.sleep(30)\nprint('slow done')\n")
    git(repo, "add", "slow.py")
    git(repo, "commit", "-q", "-m", "a run that waits")
    subprocess.run(["chmod", "-R", "a+rX", str(repo)], check=True)

    seen: dict[int, tuple[bytes, bytes]] = {}
    events = build_events(binder.url, spec, binder.token)
    assert phases(events)[-1] == "ready", events[-1]
    status, page, _ = binder.get(f"/batch/{spec}", binder.token, {"path": "slow.py"})
    assert status == 200, page
    job = re.search(r'id="job-id">(\d+)<', page)
    assert job, page
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        seen.update(researchers_processes(("alice", "bob", devcluster.build_user)))
        if any(b"slow.py" in cmdline for cmdline, _ in seen.values()) and any(
            b"jupyterhub-singleuser" in cmdline for cmdline, _ in seen.values()
        ):
            break
        time.sleep(0.5)
    # A few rounds while the run sleeps: its container's processes too.
    for _ in range(6):
        seen.update(researchers_processes(("alice", "bob", devcluster.build_user)))
        time.sleep(0.5)
    batch_seen = any(b"slow.py" in cmdline for cmdline, _ in seen.values())
    assert batch_seen, f"batch run never seen: {devcluster.slurm.job(job.group(1))}"
    server = [env for cmdline, env in seen.values() if b"jupyterhub-singleuser" in cmdline]
    assert server, "notebook server never seen"
    assert any(b"JUPYTERHUB_API_TOKEN=" in env for env in server)  # its own token

    leaks = [
        f"{what} in process {pid} ({cmdline[:80]!r})"
        for pid, (cmdline, environ) in seen.items()
        for what, value in secrets.items()
        if value.encode() in environ
    ]
    assert not leaks, leaks
    assert devcluster.slurm.wait(job.group(1), timeout=120).state == "COMPLETED"
