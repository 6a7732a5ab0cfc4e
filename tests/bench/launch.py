"""launch: warm launches (image present) through JupyterHub, from the start
request to the server ready, p50/p90 over 10 launches, next to the floor
measured in the same run, each part alone: sbatch until the job's script runs,
`apptainer exec IMAGE true`, and a Jupyter server's start inside the image
until it listens.

Each launch is split into its phases (median over the launches) by the
marks the hub, the job script, hpcbinder-singleuser and the Jupyter server
write with their times: the spawn request until sbatch returned, Slurm's
start, the job script until the container starts, the container's start
until Python runs, the port sent to the hub, Python's imports until the
server's first log line, the server until it listens, and the hub's
seeing it ready.

The same again across the dev cluster's hosts: the shipped hub on the hub
host, servers on the compute hosts (``across_hosts``), against a floor whose
Slurm part is a job on the compute hosts' partition (Apptainer and Jupyter
run from the same shared filesystem on the same cores either way).

The quick mode: one launch of each kind (no warm-up) and each floor once.

Run: sudo .venv/bin/python -m tests.bench.launch [--quick]
"""

from __future__ import annotations

import datetime
import re
import shlex
import socket
import statistics
import subprocess
import time
import uuid
from pathlib import Path

from hpcbinder.config import load_site
from hpcbinder.seams.proc import LocalRunner
from hpcbinder.seams.slurm import SlurmCLI, SubmitOptions
from tests.bench.common import quick, report, timed
from tests.conftest import free_port
from tests.hubhelpers import HOSTS_SITE, close_hub, new_hub, stop_server, wait_ready

USER = "alice"


#: The phases of a launch, each ending at a mark (:func:`marks`).
PHASES = [
    ("spawn_request", "submitted"),
    ("slurm_start", "job started"),
    ("job_script", "container starting"),
    ("container_start", "server script started"),
    ("port_to_hub", "server starting"),
    ("python_imports", "first server log line"),
    ("server_listening", "listening"),
    ("hub_sees_ready", "ready"),
]
_MARK = re.compile(r"hpcbinder: (.+?)(?: on \S+)? at (\d+\.\d+)$")
_LOGGED = re.compile(r"^\[[IWDE] (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) (\w+)")
_SUBMITTED = re.compile(r"Submitted server job (\d+) for " + USER)


def _logged_at(line: str) -> float | None:
    """The time of a Jupyter/JupyterHub log line (local time, ms)."""
    found = _LOGGED.match(line)
    if not found:
        return None
    return datetime.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()


def marks(hub_log: str, start: float, ready: float) -> dict[str, float]:
    """Each mark's time in one launch: the hub's log line for the job it
    submitted (the last one), the job's own marks in its log, the server's
    first log line and its "is running at" line."""
    submitted = [line for line in hub_log.splitlines() if _SUBMITTED.search(line)][-1]
    found = {"start": start, "submitted": _logged_at(submitted) or start, "ready": ready}
    job_id = _SUBMITTED.search(submitted).group(1)  # type: ignore[union-attr]
    job_log = Path(f"/home/{USER}/.hpcbinder-server-{job_id}.log").read_text()
    for line in job_log.splitlines():
        if mark := _MARK.search(line):
            found.setdefault(mark.group(1), float(mark.group(2)))
        elif (at := _logged_at(line)) is not None and "server starting" in found:
            found.setdefault("first server log line", at)
            if "is running at" in line:
                found.setdefault("listening", at)
    return found


def phases(found: dict[str, float]) -> dict[str, float]:
    """Each phase's seconds: from the previous mark to its own."""
    spans, previous = {}, found["start"]
    for phase, mark in PHASES:
        spans[phase] = found[mark] - previous
        previous = found[mark]
    return spans


def launches(count: int, warm_ups: int, *, on_hub_host: bool) -> list[dict[str, float]]:
    """``count`` warm launches, each as its phases' seconds; ``on_hub_host``:
    through the hub on the hub host, onto the compute hosts."""
    hub = new_hub(on_hub_host=on_hub_host)
    try:
        options = {"image": "base:default", "profile": "small"}
        measured = []
        for attempt in range(warm_ups + count):  # warm-ups warm caches, not counted
            start = time.time()
            hub.api("POST", f"/users/{USER}/servers/bench", options)
            wait_ready(hub, USER, "bench", poll=0.05)
            ready = time.time()
            if attempt >= warm_ups:
                measured.append(phases(marks(hub.log.read_text(), start, ready)))
            stop_server(hub, USER, "bench")
        return measured
    finally:
        close_hub(hub)


def sbatch_to_script(slurm: SlurmCLI, partition: str | None = None) -> float:
    """sbatch (as the launches submit, for the researcher) until the job's
    script runs: what a launch's Slurm phase covers (Slurm says RUNNING
    earlier, before the node has started the script)."""
    marker = Path("/tmp") / f"hpcbinder-bench-{uuid.uuid4().hex}"
    script = f'#!/bin/bash\necho "$EPOCHREALTIME" > {marker}\nsleep 60\n'
    start = time.time()
    options = SubmitOptions(partition=partition, output="/dev/null", chdir="/tmp")
    job_id = slurm.submit(script, options, user=USER)
    try:
        for _ in range(3000):  # at most 60 s
            if marker.is_file() and (text := marker.read_text().strip()):
                return float(text) - start
            time.sleep(0.02)
        raise RuntimeError(f"job {job_id}'s script did not run within 60 s")
    finally:
        slurm.cancel(job_id, user=USER)
        marker.unlink(missing_ok=True)


def jupyter_start(image: Path) -> float:
    """jupyter-lab in the image, from exec until its port accepts connections."""
    port = free_port()
    command = [
        "sudo",
        "-n",
        "-u",
        USER,
        "--",
        "apptainer",
        "exec",
        str(image),
        "jupyter-lab",
        "--no-browser",
        f"--port={port}",
        "--ip=127.0.0.1",
        "--ServerApp.token=",
        "--ServerApp.root_dir=/tmp",
    ]
    start = time.monotonic()
    server = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        for _ in range(3000):  # at most 60 s
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return time.monotonic() - start
            time.sleep(0.02)
        raise RuntimeError(f"jupyter-lab did not listen: {shlex.join(command)}")
    finally:
        subprocess.run(["pkill", "-s", str(server.pid)], check=False)
        server.wait(timeout=30)


def main() -> None:
    count, warm_ups, repeats = (1, 0, 1) if quick() else (10, 1, 3)
    site = load_site()
    image = site.base_image_path(site.default_base).resolve(strict=True)
    slurm = SlurmCLI(LocalRunner())
    floors = {
        "sbatch_to_script": min(sbatch_to_script(slurm) for _ in range(repeats)),
        "apptainer_exec_true": min(
            timed(
                lambda: subprocess.run(
                    ["sudo", "-n", "-u", USER, "--", "apptainer", "-s", "exec", str(image), "true"],
                    check=True,
                )
            )
            for _ in range(repeats)
        ),
        "jupyter_start": min(jupyter_start(image) for _ in range(repeats)),
    }
    hosts_site = load_site(HOSTS_SITE)
    hosts_floors = {
        **floors,
        "sbatch_to_script": min(
            sbatch_to_script(slurm, hosts_site.default_partition) for _ in range(repeats)
        ),
    }
    figures = summary(launches(count, warm_ups, on_hub_host=False), floors)
    across_hosts = summary(launches(count, warm_ups, on_hub_host=True), hosts_floors)
    report("launch", **figures, across_hosts=across_hosts, target_p50_over_floor=1.3)


def summary(measured: list[dict[str, float]], floors: dict[str, float]) -> dict[str, object]:
    """p50/p90 of the launches next to the sum of the floors, and each
    phase's median."""
    seconds = sorted(sum(launch.values()) for launch in measured)
    floor = sum(floors.values())
    p50 = statistics.median(seconds)
    return {
        "p50_seconds": round(p50, 2),
        "p90_seconds": round(seconds[max(0, round(0.9 * len(seconds)) - 1)], 2),
        "floor_seconds": round(floor, 2),
        "p50_over_floor": round(p50 / floor, 2),
        "floors": {name: round(value, 2) for name, value in floors.items()},
        "phases_p50": {
            phase: round(statistics.median(launch[phase] for launch in measured), 3)
            for phase, _ in PHASES
        },
        "launches": [round(s, 2) for s in seconds],
    }


if __name__ == "__main__":
    main()
