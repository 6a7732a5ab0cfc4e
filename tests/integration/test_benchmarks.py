"""Every benchmark runs to its end: each module of tests/bench in its quick
mode, as `make bench` runs it (a process of its own), prints its JSON line
with its figure and its floor. Nothing is timed against a target here;
nothing else runs the benchmarks in CI, and unrun they broke unnoticed when
the trust model changed (issue 25)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import REPO

#: Each benchmark's figure and floor, as key paths into its JSON line, and
#: what must hold of its other figures whatever the machine's speed.
BENCHMARKS: dict[str, tuple[tuple[str, ...], tuple[str, ...], dict[str, Any]]] = {
    "rebuild_code_only": (("seconds",), ("floor_seconds",), {"builds_run": 0, "same_image": True}),
    "dedup": (
        ("seconds",),
        ("floor_seconds",),
        {"builds_run": 1, "distinct_images": 1, "failed": 0},
    ),
    "env_build": (("seconds",), ("floor_seconds",), {}),
    "launch": (("across_hosts", "p50_seconds"), ("across_hosts", "floor_seconds"), {}),
    "binder_load": (
        ("click_to_jupyterlab_seconds", "warm"),
        ("event_streams", "floor_one_client_seconds"),
        {},
    ),
    "scale": (
        ("across_hosts", "all_ready_seconds"),
        ("floor_one_server_seconds",),
        {"lost": 0},
    ),
}
BROWSER = {"launch", "binder_load", "scale"}

pytestmark = [pytest.mark.slurm, pytest.mark.apptainer]


def figure(line: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = line
    for key in path:
        assert isinstance(value, dict) and key in value, f"no {'.'.join(path)} in {line}"
        value = value[key]
    return value


@pytest.mark.parametrize(
    "name",
    [pytest.param(name, marks=[pytest.mark.e2e] if name in BROWSER else []) for name in BENCHMARKS],
)
def test_benchmark_runs_in_quick_mode(name: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", f"tests.bench.{name}", "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, done.stdout[-2000:]
    line = json.loads(lines[-1])
    assert (line["benchmark"], line["quick"]) == (name, True), line
    measured, floor, holds = BENCHMARKS[name]
    assert figure(line, measured) > 0, line
    assert figure(line, floor) > 0, line
    assert {key: line.get(key) for key in holds} == holds, line
