"""Fixture repositories: folders under tests/repos/ become real git repositories.

Each case folder holds the repository's files, an optional ``verify``
script (run inside the built image by the builder's tests, as in
repo2docker) and ``expected.yaml``, which is not part of the repository:
what detection and rendering must produce (``buildpack``, ``base``,
``reads_whole_repo``, definition ``fragments`` and ``absent`` strings,
``warnings``) or the ``error`` they must raise, and optional ``site``
settings for the case.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from hpcbinder.config import Site
from tests.conftest import free_port, wait_for_port

REPOS = Path(__file__).resolve().parent / "repos"
EXPECTED = "expected.yaml"
GIT_IDENTITY = ["-c", "user.name=hpcbinder tests", "-c", "user.email=tests@hpcbinder.invalid"]


def cases() -> list[str]:
    return sorted(str(p.parent.relative_to(REPOS)) for p in REPOS.glob(f"*/*/{EXPECTED}"))


def expected(case: str) -> dict[str, Any]:
    data = yaml.safe_load((REPOS / case / EXPECTED).read_text())
    assert isinstance(data, dict)
    return data


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *GIT_IDENTITY, *args], cwd=repo, check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


def make_repo(case: str, dest: Path) -> Path:
    """A git repository at ``dest`` with the case's files in one commit."""
    shutil.copytree(REPOS / case, dest, ignore=shutil.ignore_patterns(EXPECTED))
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", f"fixture {case}")
    return dest


def local_spec(repo: Path, ref: str = "HEAD") -> str:
    return f"local/{quote(str(repo), safe='')}/{quote(ref, safe='')}"


def site_for_tests(root: Path, **overrides: Any) -> Site:
    """A site with three Python bases, local repos below ``root`` and a
    Dockerfile FROM table, as tests need."""
    settings: dict[str, Any] = {
        "image_store": "/images",
        "bases": {
            "default": {"python": "3.11"},
            "py310": {"python": "3.10"},
            "py312": {"python": "3.12"},
        },
        "repos": {
            "local_roots": [str(root)],
            "cache_dir": str(root / "cache"),
            "protocols": ["https", "git", "file"],
        },
        "dockerfiles": {"from_map": {"python:3.11-slim": "base:default"}},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(settings.get(key), dict):
            settings[key] = {**settings[key], **value}
        else:
            settings[key] = value
    return Site.model_validate(settings)


@contextmanager
def serving_git_daemon(
    root: Path, address: str = "127.0.0.1", port: int | None = None
) -> Iterator[str]:
    """``git daemon`` serving every repository below ``root`` on ``address``
    (a free port unless given); yields its ``git://ADDRESS:PORT`` base URL."""
    port = free_port() if port is None else port
    daemon = subprocess.Popen(
        ["git", "daemon", "--export-all", "--reuseaddr", f"--listen={address}",
         f"--port={port}", f"--base-path={root}", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, "git daemon", host=address)
        yield f"git://{address}:{port}"
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)
