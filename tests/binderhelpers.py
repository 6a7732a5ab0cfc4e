"""Driving the Binder service the way BinderHub clients do: its /build
event stream read over HTTP, with a user's hub token."""

from __future__ import annotations

import http.client
import json
import subprocess
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.parse import urlencode, urlsplit

from tests.hubhelpers import Hub
from tests.repohelpers import git, local_spec

FINAL = {"ready", "failed"}


def user_token(hub: Hub, user: str) -> str:
    """A hub token of ``user`` good for the Binder service only."""
    body = {"note": "binder tests", "scopes": ["access:services!service=binder"]}
    return str(hub.api("POST", f"/users/{user}/tokens", body)["token"])


def open_stream(
    binder_url: str, path: str, token: str | None, timeout: float = 300
) -> http.client.HTTPResponse:
    address = urlsplit(binder_url)
    connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=timeout)
    headers = {"Accept": "text/event-stream"}  # as EventSource and BinderHub's clients ask
    if token:
        headers["Authorization"] = f"Bearer {token}"
    connection.request("GET", path, headers=headers)
    return connection.getresponse()


def read_events(
    response: http.client.HTTPResponse, stop_after: int | None = None
) -> list[dict[str, Any]]:
    """Events until a final one, the end of the stream, or ``stop_after``
    events; keepalive comments are skipped."""
    events: list[dict[str, Any]] = []
    while True:
        line = response.readline()
        if not line:
            return events
        if line.startswith(b"data:"):
            events.append(json.loads(line[5:]))
            if events[-1]["phase"] in FINAL or len(events) == stop_after:
                return events


def build_events(
    binder_url: str, spec: str, token: str, query: str = "", timeout: float = 300
) -> list[dict[str, Any]]:
    response = open_stream(
        binder_url, f"/build/{spec}{'?' + query if query else ''}", token, timeout
    )
    assert response.status == 200, response.read()
    try:
        return read_events(response)
    finally:
        response.close()


def phases(events: list[dict[str, Any]]) -> list[str]:
    """Phases in order, each once (building repeats per log line)."""
    seen: list[str] = []
    for event in events:
        if not seen or seen[-1] != event["phase"]:
            seen.append(event["phase"])
    return seen


def binder_repo(root: Path, post_build: str = "") -> tuple[Path, str]:
    """A repository with a notebook and, when given, a postBuild (which makes
    its image its own: the build reads the whole repository)."""
    repo = root / f"repo-{uuid.uuid4().hex[:8]}"
    repo.mkdir(parents=True)
    notebook = {
        "cells": [
            {
                "cell_type": "code",
                "id": "c1",
                "metadata": {},
                "outputs": [],
                "execution_count": None,
                "source": "print('hello from binder')",
            }
        ],
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    (repo / "index.ipynb").write_text(json.dumps(notebook))
    if post_build:
        (repo / "postBuild").write_text(f"#!/bin/bash\nset -e\n{post_build}\n")
        (repo / "postBuild").chmod(0o755)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "binder fixture")
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    return repo, local_spec(repo)


@dataclass(frozen=True)
class Binder:
    hub: Hub
    url: str
    token: str  # alice's, for the Binder service
    root: Path  # local repositories live here

    def get(
        self, path: str, token: str | None = None, form: dict[str, str] | None = None
    ) -> tuple[int, str, dict[str, str]]:
        """GET ``path``, or POST ``form`` to it."""
        data = urlencode(form).encode() if form is not None else None
        request = urllib.request.Request(self.url + path, data=data)  # noqa: S310 - loopback
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        opener = urllib.request.build_opener(NoRedirect)
        try:
            with opener.open(request, timeout=60) as response:
                return response.status, response.read().decode(), dict(response.headers)
        except HTTPError as error:
            return error.code, error.read().decode(), dict(error.headers)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None
