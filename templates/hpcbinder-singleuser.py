#!/opt/hpcbinder/python/bin/python3
"""hpcbinder-singleuser: tell the hub which port the server will use, then
become the server (``hpcbinder-singleuser jupyterhub-singleuser ARGS``).

batchspawner-singleuser does the same but imports JupyterHub first, which
takes seconds on a compute node before the server itself even starts; this
uses the standard library only. The hub accepts the port and nothing else.

It marks in the job's log when it starts and when it hands over: with the
job script's own marks and the server's log, a launch's time splits into
its phases (tests/bench/launch.py reads them).
"""

import json
import os
import socket
import sys
import time
import urllib.request
from urllib.parse import urlparse, urlunparse


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def mark(what: str) -> None:
    print(f"hpcbinder: {what} at {time.time():.6f}", file=sys.stderr, flush=True)


def main() -> None:
    mark("server script started")
    port = free_port()
    request = urllib.request.Request(
        os.environ["JUPYTERHUB_API_URL"].rstrip("/") + "/batchspawner",
        data=json.dumps({"port": port}).encode(),
        headers={"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"],
                 "Content-Type": "application/json"},
        method="POST",
    )
    # The hub is reached directly, never through a site's HTTP proxy.
    urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=60).close()
    service = urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
    os.environ["JUPYTERHUB_SERVICE_URL"] = urlunparse(
        service._replace(netloc=f"{service.hostname}:{port}"))
    mark("server starting")
    os.execvp(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    main()
