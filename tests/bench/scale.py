"""scale: 40 servers started at once through JupyterHub on the dev cluster's
hub host (slurm/devcluster's hosts), landing on its two compute hosts; then
the same on one compute host (the other drained in Slurm for the run). Each
reports the time until all are ready, p50/p90 per server and how many were
lost (never ready), where they ran, and the RPCs slurmctld served the
hub's accounts meanwhile (``sdiag``; the hub asks Slurm once a round for
all its servers). The floor is one server started alone through the same hub.

Servers are split between alice and bob (each may run all of theirs: the
benchmark's own site file, the hosts' site with ``quotas`` raised and each
server's memory that of an idle JupyterLab).

The quick mode: 4 servers.

Run: sudo .venv/bin/python -m tests.bench.scale [--quick]
"""

from __future__ import annotations

import statistics
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from tests.bench.common import quick, report
from tests.conftest import SHARED_SCRATCH
from tests.hubhelpers import HOSTS_SITE, Hub, new_hub

USERS = ("alice", "bob")
COMPUTE = ("hpcb-c1", "hpcb-c2")
READY_SECONDS = 900


#: Each server's memory: what an idle JupyterLab uses, so that 40 fit on one
#: host (2 GB each, the small profile's, let 8 of a host's 18 GB run and the
#: rest wait in the queue).
SERVER_MEM = "400M"


def bench_site(servers: int) -> Path:
    """The hosts' site file with each researcher allowed ``servers`` servers,
    each of :data:`SERVER_MEM`."""
    site = yaml.safe_load(HOSTS_SITE.read_text())
    site.setdefault("quotas", {})["max_servers_per_user"] = servers
    site["profiles"]["small"]["mem"] = SERVER_MEM
    path = SHARED_SCRATCH / f"bench-scale-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(yaml.safe_dump(site))
    path.chmod(0o644)
    return path


def start_at_once(hub: Hub, count: int) -> dict[str, Any]:
    """``count`` servers requested together (one thread each), then watched
    until each is ready or the spawn failed; their figures."""
    names = [(USERS[index % len(USERS)], f"scale{index}") for index in range(count)]
    start = time.monotonic()
    threads = [
        threading.Thread(
            target=hub.api,
            args=("POST", f"/users/{user}/servers/{name}", {"profile": "small"}),
        )
        for user, name in names
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ready: dict[tuple[str, str], float] = {}
    nodes: dict[str, int] = {}
    deadline = start + READY_SECONDS
    while len(ready) < count and time.monotonic() < deadline:
        pending = False
        for user in USERS:
            servers = hub.api("GET", f"/users/{user}")["servers"]
            for name, server in servers.items():
                if (user, name) in ready or not name.startswith("scale"):
                    continue
                if server["ready"]:
                    ready[(user, name)] = time.monotonic() - start
                    node = str(server["state"].get("job_status", "")).split()[-1:]
                    nodes[node[0] if node else "?"] = nodes.get(node[0] if node else "?", 0) + 1
                else:
                    pending = True
        if not pending and len(ready) < count:
            break  # the rest failed and the hub dropped them
        time.sleep(0.25)
    seconds = sorted(ready.values())
    for user, name in names:
        hub.api("DELETE", f"/users/{user}/servers/{name}")
    return {
        "all_ready_seconds": round(seconds[-1], 2) if len(seconds) == count else None,
        "p50_seconds": round(statistics.median(seconds), 2) if seconds else None,
        "p90_seconds": round(seconds[max(0, round(0.9 * len(seconds)) - 1)], 2)
        if seconds
        else None,
        "lost": count - len(seconds),
        "nodes": nodes,
    }


def slurm_rpcs() -> dict[str, int]:
    """slurmctld's RPC count per account since it started (``sdiag``)."""
    out = subprocess.run(["sdiag"], capture_output=True, text=True, check=False).stdout
    counts = {}
    for line in out.split("statistics by user", 1)[-1].splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[-3].startswith("count:"):
            counts[fields[0]] = int(fields[-3].removeprefix("count:"))
    return counts


def measured(hub: Hub, count: int) -> dict[str, Any]:
    """:func:`start_at_once` with the RPCs slurmctld served the hub's
    accounts meanwhile: the service account's (its one squeue a round) and
    the researchers' (sbatch, scancel; squeue where Slurm hides jobs)."""
    before = slurm_rpcs()
    figures = start_at_once(hub, count)
    after = slurm_rpcs()
    figures["slurm_rpcs"] = {
        name: after.get(name, 0) - before.get(name, 0) for name in ("hpcbinder", *USERS)
    }
    return figures


def drained(node: str, drain: bool) -> None:
    state = ["State=DRAIN", "Reason=bench-scale"] if drain else ["State=RESUME"]
    subprocess.run(["scontrol", "update", f"NodeName={node}", *state], check=True)


def main() -> None:
    count = 4 if quick() else 40
    site = bench_site(count)
    hub = new_hub(site, on_hub_host=True)
    try:
        one = start_at_once(hub, 1)
        across = measured(hub, count)
        drained(COMPUTE[1], True)
        try:
            one_node = measured(hub, count)
        finally:
            drained(COMPUTE[1], False)
    finally:
        hub.stop()  # the hub stops its proxy and services
        # Any job left, by its name (other tests' jobs of alice and bob stay).
        names = ",".join(f"hpcbinder-{user}-scale{n}" for user in USERS for n in range(count))
        subprocess.run(["scancel", f"--name={names}"], check=False)
        site.unlink(missing_ok=True)
    report(
        "scale",
        servers=count,
        across_hosts=across,
        one_node=one_node,
        floor_one_server_seconds=one["p50_seconds"],
        lost=across["lost"] + one_node["lost"],
    )


if __name__ == "__main__":
    main()
