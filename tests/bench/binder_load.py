"""binder_load: the Binder service under load from this (second) process on
loopback, and click-to-JupyterLab through it.

The service, its hub and a build server of its own site, as the end-to-end
tests run them (tests/e2e/conftest.py: running_binder).

- 200 event-stream clients on one build (a postBuild that sleeps, so they
  all join while it runs): how many reach `built`, how long the last one
  took, the service's /versions latency meanwhile; the floor is one
  client alone on a build of the same kind.
- wrk, bounded (2 threads, 32 connections, 10 s), on the home page and a
  launch page, next to the floor of the service's static badge.
- Click to JupyterLab in headless Chromium (logged in, on the launch page,
  until the notebook shows): cold (the image builds) and warm (built, the
  server stopped).

The quick mode: 5 clients on a build that sleeps 1 s, wrk for 1 s.

Run: sudo .venv/bin/python -m tests.bench.binder_load [--quick]
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from tests.bench.common import quick, report
from tests.binderhelpers import binder_repo, build_events, user_token
from tests.conftest import REPO
from tests.e2e.conftest import running_binder
from tests.hubhelpers import stop_server

WEB = Path(sys.prefix) / "web" / "node_modules"


async def one_stream(url: str, token: str, events: list[str]) -> float:
    start = time.monotonic()

    def on_chunk(chunk: bytes) -> None:
        events.extend(m.decode() for m in re.findall(rb'"phase": "(\w+)"', chunk))

    await AsyncHTTPClient().fetch(
        HTTPRequest(
            url,
            headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"},
            streaming_callback=on_chunk,
            request_timeout=600,
        )
    )
    return time.monotonic() - start


async def probe_latency(
    url: str, admin_token: str, stop: asyncio.Event, samples: list[float]
) -> None:
    """/versions (the hub's admins only) every 0.1 s until ``stop``."""
    headers = {"Authorization": f"Bearer {admin_token}"}
    while not stop.is_set():
        start = time.monotonic()
        await AsyncHTTPClient().fetch(url, headers=headers, request_timeout=60)
        samples.append(time.monotonic() - start)
        await asyncio.sleep(0.1)


async def many_streams(
    url: str, token: str, versions_url: str, admin_token: str, clients: int
) -> dict[str, float]:
    AsyncHTTPClient.configure(None, max_clients=clients + 10)
    per_client: list[list[str]] = [[] for _ in range(clients)]
    latencies: list[float] = []
    stop = asyncio.Event()
    prober = asyncio.create_task(probe_latency(versions_url, admin_token, stop, latencies))
    seconds = await asyncio.gather(*(one_stream(url, token, ev) for ev in per_client))
    stop.set()
    await prober
    return {
        "clients": clients,
        # build_only ends with BinderHub's ready (the image), not built.
        "reached_built": sum("ready" in events for events in per_client),
        "last_client_seconds": round(max(seconds), 2),
        "versions_p50_ms": round(statistics.median(latencies) * 1000, 1),
        "versions_max_ms": round(max(latencies) * 1000, 1),
    }


def wrk(url: str, token: str) -> dict[str, float]:
    bounds = ["-t1", "-c4", "-d1s"] if quick() else ["-t2", "-c32", "-d10s"]
    done = subprocess.run(
        ["wrk", *bounds, "--latency", "-H", f"Authorization: Bearer {token}", url],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", done)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", done)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", done)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {
        "requests_per_second": float(rate.group(1)) if rate else 0.0,
        "p99_ms": round(float(p99.group(1)) * scale[p99.group(2)], 1) if p99 else -1.0,
        "non_2xx": int(errors.group(1)) if errors else 0,
    }


def click_to_lab(link: str, screenshot: Path) -> tuple[float, dict[str, float]]:
    """Seconds from the launch page's click until JupyterLab shows the
    notebook, and each phase's seconds in it: the phases the launch page
    showed (resolving, fetching, building, launching...), then "server"
    (from leaving for the server, JupyterLab's front end loading) until the
    notebook is shown."""
    script = REPO / "tests" / "web" / "launch_in_browser.mjs"
    args = [link, "alice", "hpcbinder-demo", "index.ipynb", str(screenshot)]
    done = subprocess.run(
        ["node", str(script), str(WEB / "playwright-core"), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:  # its error lines only (the summary it prints holds cookies)
        errors = [line[:300] for line in done.stderr.splitlines() if "Error" in line][:3]
        raise RuntimeError(f"the browser script failed: {' | '.join(errors) or done.returncode}")
    summary = json.loads(done.stdout.splitlines()[-1])
    if "seconds" not in summary:  # the phases and why only: the summary holds cookies too
        shown = {key: summary.get(key) for key in ("phases", "failed", "launchPageTitle")}
        raise RuntimeError(f"the browser did not reach JupyterLab: {json.dumps(shown)}")
    starts = sorted(summary["phaseStarts"].items(), key=lambda item: item[1])
    spans = {
        name: round(end - start, 2)
        for (name, start), (_, end) in zip(starts, [*starts[1:], ("", starts[-1][1])], strict=True)
        if name != "notebook shown"
    }
    return float(summary["seconds"]), {"before_first_phase": round(starts[0][1], 2), **spans}


def main() -> None:
    clients, sleep = (5, 1) if quick() else (200, 8)
    with running_binder() as binder:
        try:
            hub, root, token = binder.hub, binder.root, binder.token
            _, spec = binder_repo(root, f"sleep {sleep}; echo {uuid.uuid4().hex}")
            stream_url = f"{binder.url}/build/{spec}?build_only=true"
            versions = f"{binder.url}/versions"
            admin = user_token(hub, "hubadmin")
            load = asyncio.run(many_streams(stream_url, token, versions, admin, clients))
            _, same_kind = binder_repo(root, f"sleep {sleep}; echo {uuid.uuid4().hex}")
            alone = time_alone(binder.url, same_kind, token)
            pages = {
                "home": wrk(f"{binder.url}/", token),
                "launch_page": wrk(f"{binder.url}/v2/{spec}", token),
                "floor_static_badge": wrk(f"{binder.url}/badge_logo.svg", token),
            }
            _, fresh = binder_repo(root, f"echo {uuid.uuid4().hex}")
            link = f"{binder.url}/v2/{fresh}?labpath=index.ipynb"
            cold, cold_phases = click_to_lab(link, root / "cold.png")
            for name in hub.api("GET", "/users/alice")["servers"]:
                stop_server(hub, "alice", name)
            warm, warm_phases = click_to_lab(link, root / "warm.png")
            report(
                "binder_load",
                event_streams={**load, "floor_one_client_seconds": round(alone, 2)},
                pages=pages,
                click_to_jupyterlab_seconds={"cold": round(cold, 2), "warm": round(warm, 2)},
                click_to_jupyterlab_phases={"cold": cold_phases, "warm": warm_phases},
                target_warm_seconds=4,
            )
        finally:  # the repositories and screenshots
            subprocess.run(["rm", "-rf", str(binder.root)], check=False)


def time_alone(binder_url: str, spec: str, token: str) -> float:
    """One viewer alone on a build like the loaded one: the floor."""
    start = time.monotonic()
    build_events(binder_url, spec, token, "build_only=true")
    return time.monotonic() - start


if __name__ == "__main__":
    main()
