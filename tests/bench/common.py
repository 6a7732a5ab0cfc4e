"""What the benchmarks share, built on what the build tests use
(tests/storehelpers.py, tests/conftest.py): a build workspace on the dev
cluster's base, its site, build servers of that site (a benchmark never asks
the dev cluster's own build server, whose site would refuse its
repositories), repositories in it; the quick mode; a JSON line printer."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcbinder.images.backends import STEP_MARKER
from tests.conftest import SITE_BIN, running_build_server
from tests.repohelpers import git, local_spec
from tests.storehelpers import build_workspace, dev_cluster_base, workspace_site

QUICK_ENV = "HPCBINDER_BENCH_QUICK"


def quick() -> bool:
    """Quick mode (``--quick`` or ``HPCBINDER_BENCH_QUICK=1``): every code
    path of the benchmark once, with the fewest repetitions and the smallest
    inputs, so that CI runs each benchmark cheaply and none can rot; its
    figures are measured but compared with nothing."""
    return "--quick" in sys.argv[1:] or os.environ.get(QUICK_ENV) == "1"


@contextmanager
def workspace(name: str) -> Iterator[Path]:
    """The build tests' workspace (store on the dev cluster's base,
    checkouts, download cache, ``repos/``), removed afterwards."""
    with build_workspace(f"bench-{name}", dev_cluster_base()) as root:
        yield root


def site_of(root: Path, name: str = "site") -> Path:
    """The workspace's site written to ``root/NAME.yaml``: repositories below
    ``repos/``, its store, and its own download cache (removed with it)."""
    path = root / f"{name}.yaml"
    path.write_text(workspace_site(root, cache_dir=str(root / "cache")).model_dump_json())
    return path


@contextmanager
def build_servers(root: Path, count: int = 1) -> Iterator[list[Path]]:
    """``count`` build servers of the workspace's site sharing its store (as
    build hosts would), each as the build account; their site files, whose
    build.server_url points at them."""
    with ExitStack() as servers:
        sites = [site_of(root, f"site-{index}") for index in range(count)]
        for site in sites:
            servers.enter_context(running_build_server(site))
        yield sites


def build_argv(site: Path, spec: str, user: str = "alice") -> list[str]:
    """``hpcbinder build -v SPEC`` of the site-wide install, as ``user``
    through ``site``'s build server."""
    hpcbinder = str(SITE_BIN / "hpcbinder")
    return ["sudo", "-n", "-u", user, "--", hpcbinder, "--site", str(site), "build", spec, "-v"]


@dataclass(frozen=True)
class TimedBuild:
    """One ``hpcbinder build``: the image's key, the wall time the researcher
    waited, and its phases (:func:`build_phases`)."""

    key: str
    seconds: float
    phases: dict[str, float]


#: A line of ``hpcbinder build -v``: the command's clock, then a phase line
#: ("fetching: ...") or, indented, a log line of the build server's builder.
_PROGRESS = re.compile(r"^\[\s*[\d.]+s\] (.*)$")
#: The first line of each phase after the command's own start (sudo, Python,
#: its credential and request), as the build server and its builder send
#: them; then each step of the build (overlay, install, squash, cleanup,
#: smoke test), from the marker its backend writes before it.
_PHASE_STARTS = (
    ("fetch", re.compile(r"fetching: ")),
    ("queue", re.compile(r"waiting: Waiting for a build slot")),
    ("lock_and_stage", re.compile(r"building: Building image ")),
    ("render_and_start", re.compile(r"\s+building [0-9a-f]{32} \(")),
    ("publish_and_exit", re.compile(r"\s+publishing$")),
)
_STEP = re.compile(r"\s+" + re.escape(STEP_MARKER) + r"(.+)$")


def build_phases(lines: list[tuple[float, str]], seconds: float) -> dict[str, float]:
    """Seconds per phase of a build from the lines of its ``hpcbinder build
    -v`` output, each with when it arrived (seconds since the command
    started), the command taking ``seconds`` in all; phases that did not
    happen are left out."""
    starts = {"command_start": 0.0}
    for arrived, line in lines:
        progress = _PROGRESS.match(line)
        if progress is None:
            continue
        if step := _STEP.match(progress.group(1)):
            starts.setdefault("step:" + step.group(1).replace(" ", "_"), arrived)
        for name, pattern in _PHASE_STARTS:
            if name not in starts and pattern.match(progress.group(1)):
                starts[name] = arrived
    ordered = sorted(starts.items(), key=lambda item: item[1])
    ends = [start for _, start in ordered[1:]] + [seconds]
    return {name: round(end - start, 2) for (name, start), end in zip(ordered, ends, strict=True)}


def run_build(site: Path, spec: str) -> TimedBuild:
    """``hpcbinder build -v SPEC`` as a researcher through ``site``'s build
    server, timed per phase by when each line of its progress arrives."""
    start = time.monotonic()
    build = subprocess.Popen(
        build_argv(site, spec), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert build.stdout is not None and build.stderr is not None
    lines = [(time.monotonic() - start, line.rstrip("\n")) for line in build.stderr]
    path = build.stdout.read().strip()
    status = build.wait(timeout=1800)
    seconds = time.monotonic() - start
    if status != 0:
        output = "\n".join(line for _, line in lines[-40:])
        raise RuntimeError(f"build of {spec} failed ({status}):\n{output}")
    return TimedBuild(Path(path).parent.name, seconds, build_phases(lines, seconds))


def make_repo(path: Path, files: dict[str, str]) -> str:
    """A git repository at ``path`` with ``files`` in one commit; its spec."""
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    git(path, "init", "-q", "-b", "main")
    commit(path, "initial")
    return local_spec(path, "main")


def commit(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


def timed(action: Callable[[], Any]) -> float:
    start = time.monotonic()
    action()
    return time.monotonic() - start


def report(name: str, **figures: Any) -> None:
    """The benchmark's one JSON line on stdout (``quick`` says whether its
    figures came from the quick mode)."""
    print(json.dumps({"benchmark": name, "quick": quick(), **figures}), flush=True)
