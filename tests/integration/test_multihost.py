"""The dev cluster as several hosts (``slurm/devcluster up``): each host a
network, UTS and mount namespace with its own address on a bridge, its own
hostname and its own munged; each compute host runs a slurmd. Jobs in the
hosts' partitions run there as the researcher, under the host's name and
address, reach slurmctld across the bridge and run Apptainer, while node
``vm`` keeps its own partitions."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest

from hpcbinder.seams.slurm import SubmitOptions
from tests.conftest import DEVCLUSTER, DevCluster

COMPUTE = {"hpcb-c1": "10.79.13.21", "hpcb-c2": "10.79.13.22"}
HOSTS = {"hpcb-hub": "10.79.13.10", "hpcb-login": "10.79.13.11", "hpcb-build": "10.79.13.12"}
PARTITION = "interactive-multi"

# What a job sees of the host it runs on, and of it from inside a container.
REPORT = """#!/bin/sh
echo "user=$(id -un)"
echo "hostname=$(hostname)"
echo "addr=$(ip -4 -o addr show dev eth0 | awk '{print $4}')"
echo "munge=$(munge -n | unmunge | awk '/^ENCODE_HOST/ {print $2, $3}')"
echo "container=$(apptainer -s exec {image} /bin/busybox hostname)"
# Hold the host until the other job has started too (at most 60 s): a job
# that ended at once let the second take the same host, one after the other.
touch "started-$SLURM_JOB_ID"
for _ in $(seq 120); do
  [ "$(ls started-* | wc -l)" -ge 2 ] && exit 0
  sleep 0.5
done
"""


def _lines(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _cpus(node: str) -> int:
    out = subprocess.run(
        ["sinfo", "-h", "-N", "-n", node, "-o", "%c"], capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[0])


@pytest.mark.slurm
@pytest.mark.apptainer
def test_jobs_run_on_each_compute_host_under_its_name_and_address(
    devcluster: DevCluster, busybox_image: Path, shared_dir: Path
) -> None:
    # Each job asks for a whole host, so the two run at once on two hosts.
    whole_host = min(_cpus(host) for host in COMPUTE)
    jobs = []
    for index in range(2):
        out = shared_dir / f"job{index}.out"
        options = SubmitOptions(
            partition=PARTITION,
            cpus=whole_host,
            time="00:02:00",
            output=str(out),
            chdir=str(shared_dir),
            mem="100M",
        )
        script = REPORT.replace("{image}", str(busybox_image))
        jobs.append((devcluster.slurm.submit(script, options, user="alice"), out))

    seen = {}
    for job_id, out in jobs:
        info = devcluster.slurm.wait(job_id, timeout=120)
        assert (info.state, info.exit_code) == ("COMPLETED", 0), out.read_text()
        report = _lines(out.read_text())
        host = info.node_list
        assert host in COMPUTE, f"job {job_id} ran on {host}, not a compute host"
        assert report["user"] == "alice"
        assert report["hostname"] == host
        assert report["addr"] == f"{COMPUTE[host]}/24"
        # The host's own munged (not this machine's) signed its credential.
        assert report["munge"] == f"{host} ({COMPUTE[host]})"
        assert report["container"] == host
        seen[job_id] = host
    assert sorted(seen.values()) == sorted(COMPUTE), "the two jobs did not land on two hosts"


@pytest.mark.slurm
def test_status_shows_every_host_and_vm_keeps_its_partitions(devcluster: DevCluster) -> None:
    status = subprocess.run([str(DEVCLUSTER), "status"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    lines = status.stdout.splitlines()
    rows = {line.split()[0]: line for line in lines if line.startswith("hpcb-")}
    for host, address in {**HOSTS, **COMPUTE}.items():
        row = rows[host].split()
        assert row[1:3] == [address, host], rows[host]  # address, the hostname it answers to
        assert re.search(r"munged\(\d+\)", rows[host])
        if host in COMPUTE:
            assert re.search(r"slurmd\(\d+\)", rows[host])
            assert row[-1] in {"idle", "mixed", "allocated"}
        found = subprocess.run(["getent", "hosts", host], capture_output=True, text=True)
        assert found.stdout.split()[0] == address
    # The login node's sshd answers on its address with the site's host key.
    assert re.search(r"sshd\(\d+\)", rows["hpcb-login"])
    scan = subprocess.run(
        ["ssh-keyscan", "-T", "10", "-t", "ed25519", HOSTS["hpcb-login"]],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    host_key = Path("/etc/ssh/ssh_host_ed25519_key.pub").read_text().split()[1]
    assert host_key in scan.stdout, scan.stderr
    # Nothing aimed at node vm can land on the hosts: its partitions are its own.
    nodes = subprocess.run(
        ["sinfo", "-h", "-o", "%R %N"], capture_output=True, text=True, check=True
    ).stdout
    partitions = dict(line.split() for line in nodes.splitlines())
    this_machine = subprocess.check_output(["hostname", "-s"], text=True).strip()
    for partition in ("interactive", "batch", "build"):
        assert partitions[partition] == this_machine
    assert partitions[PARTITION] == "hpcb-c[1-2]"


BUILD_NODE = "http://10.79.13.12:8590"
HOSTS_SITE = Path("/etc/hpcbinder/site-hosts.yaml")
BUILD_LOG = Path("/var/log/hpcbinder-devcluster/hpcb-build.build-server.log")


@pytest.mark.slurm
@pytest.mark.apptainer
def test_sbatch_on_the_login_node_builds_on_the_build_node_and_spans_the_hosts(
    devcluster: DevCluster, shared_dir: Path
) -> None:
    health = subprocess.run(["curl", "-sf", f"{BUILD_NODE}/health"], capture_output=True)
    assert health.returncode == 0, "no build server on hpcb-build (make site starts it)"
    repo = shared_dir / "hello"
    repo.mkdir()
    (repo / "hello.py").write_text('import socket\nprint("ran on", socket.gethostname())\n')
    for argv in (["init", "-q"], ["add", "."], ["commit", "-qm", "hello"]):
        subprocess.run(
            ["git", "-c", "user.email=t@example.org", "-c", "user.name=t", *argv],
            cwd=repo, check=True,
        )  # fmt: skip
    subprocess.run(["chmod", "-R", "a+rX", str(shared_dir)], check=True)
    spec = f"local/{quote(str(repo), safe='')}/HEAD"
    alice = ["setpriv", "--reuid=alice", "--regid=alice", "--init-groups", "env", "-i"]
    env = [
        "HOME=/home/alice", "USER=alice", "LOGNAME=alice", "LANG=C.UTF-8",
        "PATH=/opt/hpcbinder/venv/bin:/usr/bin:/bin", f"HPCBINDER_SITE={HOSTS_SITE}",
    ]  # fmt: skip
    # An array of two tasks, each a whole host: one on each compute host.
    whole_host = str(min(_cpus(host) for host in COMPUTE))
    sbatch = ["hpcbinder", "sbatch", spec, "--run", "hello.py", "--array=0-1"]
    sbatch += [f"--cpus={whole_host}", "--wait"]
    run = subprocess.run(
        [str(DEVCLUSTER), "host", "hpcb-login", *alice, *env, *sbatch],
        cwd=shared_dir, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    # Built (here: found) by the build node's server, asked from the login node...
    assert f"POST /build ({HOSTS['hpcb-login']})" in BUILD_LOG.read_text()
    # ...and its tasks ran on both compute hosts.
    ran_on = sorted(line.split()[-1] for line in run.stdout.splitlines() if " ran on " in line)
    assert ran_on == sorted(COMPUTE), run.stdout
    outputs = re.search(r"outputs in (/home/alice/hpcbinder-runs/[^/\s]+)/", run.stdout)
    if outputs:
        shutil.rmtree(outputs.group(1), ignore_errors=True)
