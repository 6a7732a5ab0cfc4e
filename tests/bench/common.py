"""Shared set-up for the benchmarks: a store and repos folder the build
account can use, on the dev cluster's base, and a JSON line printer."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hpcbinder.config import Site, load_site

SCRATCH = Path("/var/tmp/hpcbinder-bench")
GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@hpcbinder.invalid"]


@contextmanager
def workspace() -> Iterator[Path]:
    """A scratch folder for repos, checkouts and stores, removed afterwards."""
    root = SCRATCH / uuid.uuid4().hex[:10]
    (root / "repos").mkdir(parents=True)
    root.chmod(0o755)
    try:
        yield root
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)


def site_in(root: Path, store: str = "store") -> Site:
    """The dev cluster's site with a new, empty store ``root/store`` (on the
    dev cluster's base image) and the checkout cache in ``root``."""
    dev_site = load_site()
    base = dev_site.base_image_path(dev_site.default_base).resolve(strict=True)
    bases = root / store / "bases"
    if not bases.is_dir():
        bases.mkdir(parents=True)
        (bases / "default.sif").symlink_to(base)
        subprocess.run(["chown", "-R", "hpcbuild:hpcbuild", str(root / store)], check=True)
    settings = dev_site.model_dump(mode="json")
    settings["image_store"] = str(root / store)
    settings["repos"].update(local_roots=[str(root / "repos")], cache_dir=str(root / "checkouts"))
    return Site.model_validate(settings)


def make_repo(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    subprocess.run([*GIT, "init", "-q", "-b", "main"], cwd=path, check=True)
    commit(path, "initial")
    return path


def commit(repo: Path, message: str) -> None:
    subprocess.run([*GIT, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-q", "-m", message], cwd=repo, check=True)


def timed(action: Callable[[], Any]) -> float:
    start = time.monotonic()
    action()
    return time.monotonic() - start


def report(name: str, **figures: Any) -> None:
    print(json.dumps({"benchmark": name, **figures}), flush=True)


def copy_tree(source: Path, target: Path) -> None:
    if source.exists():
        shutil.copytree(source, target, symlinks=True)
    else:
        target.mkdir(parents=True)
