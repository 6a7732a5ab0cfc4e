"""launch: warm launches (image present) through JupyterHub, from the start
request to the server ready, p50/p90 over 10 launches, next to the floor
measured in the same run, each part alone: sbatch until the job runs,
`apptainer exec IMAGE true`, and a Jupyter server's start inside the image
until it listens.

The quick mode: one launch (no warm-up) and each floor once.

Run: sudo .venv/bin/python -m tests.bench.launch [--quick]
"""

from __future__ import annotations

import shlex
import socket
import statistics
import subprocess
import time
from pathlib import Path

from hpcbinder.config import load_site
from hpcbinder.seams.proc import LocalRunner
from hpcbinder.seams.slurm import SlurmCLI, SubmitOptions
from tests.bench.common import quick, report, timed
from tests.conftest import free_port
from tests.hubhelpers import close_hub, new_hub, stop_server, wait_ready

USER = "alice"


def launch_seconds(launches: int, warm_ups: int) -> list[float]:
    hub = new_hub()
    try:
        options = {"image": "base:default", "profile": "small"}
        seconds = []
        for attempt in range(warm_ups + launches):  # warm-ups warm caches, not counted
            start = time.monotonic()
            hub.api("POST", f"/users/{USER}/servers/bench", options)
            wait_ready(hub, USER, "bench", poll=0.05)
            if attempt >= warm_ups:
                seconds.append(time.monotonic() - start)
            stop_server(hub, USER, "bench")
        return seconds
    finally:
        close_hub(hub)


def sbatch_to_running(slurm: SlurmCLI) -> float:
    start = time.monotonic()
    job_id = slurm.submit(
        "#!/bin/sh\nsleep 60\n", SubmitOptions(output="/dev/null", chdir="/tmp"), user=USER
    )
    while (info := slurm.job(job_id)) is not None and info.state == "PENDING":
        time.sleep(0.02)
    seconds = time.monotonic() - start
    slurm.cancel(job_id, user=USER)
    return seconds


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
    launches, warm_ups, repeats = (1, 0, 1) if quick() else (10, 1, 3)
    site = load_site()
    image = site.base_image_path(site.default_base).resolve(strict=True)
    slurm = SlurmCLI(LocalRunner())
    floors = {
        "sbatch_to_running": min(sbatch_to_running(slurm) for _ in range(repeats)),
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
    seconds = sorted(launch_seconds(launches, warm_ups))
    floor = sum(floors.values())
    p50 = statistics.median(seconds)
    p90 = seconds[max(0, round(0.9 * len(seconds)) - 1)]
    report(
        "launch",
        p50_seconds=round(p50, 2),
        p90_seconds=round(p90, 2),
        floor_seconds=round(floor, 2),
        over_floor_p50=round(p50 - floor, 2),
        floors={name: round(value, 2) for name, value in floors.items()},
        launches=[round(s, 2) for s in seconds],
        target_p50=4,
        target_p90=6,
        target_over_floor=1,
    )


if __name__ == "__main__":
    main()
