"""What the build tests share: a folder in shared scratch with an image
store on the dev cluster's base, a checkout cache, a download cache and a
repositories folder, owned where builds need it by the build account; and
the site that points at them."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from hpcbinder.config import Site
from tests.conftest import SHARED_SCRATCH
from tests.repohelpers import site_for_tests

#: The dev cluster's default base (bookworm, Python 3.11).
DEV_BASE = Path("/var/lib/hpcbinder/images/bases/default.sif")


def dev_cluster_base(path: Path = DEV_BASE) -> Path:
    """The dev cluster's base image at ``path``, resolved. Missing, it fails
    the test in CI (``make base`` builds it) and skips it elsewhere."""
    if not path.is_file():
        message = f"no base image at {path} (make base builds it)"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path.resolve()


@contextmanager
def build_workspace(prefix: str, base: Path) -> Iterator[Path]:
    """A fresh folder ``prefix-RANDOM`` with ``store/`` (whose default base
    is ``base``), ``checkouts/`` and ``cache/`` owned by the build account,
    and ``repos/`` for the test's repositories; removed afterwards."""
    root = SHARED_SCRATCH / f"{prefix}-{uuid.uuid4().hex[:10]}"
    for name in ("store/bases", "checkouts", "cache", "repos"):
        (root / name).mkdir(parents=True)
    (root / "store" / "bases" / "default.sif").symlink_to(base)
    owned = [str(root / name) for name in ("store", "checkouts", "cache")]
    subprocess.run(["chown", "-R", "hpcbuild:hpcbuild", *owned], check=True)
    root.chmod(0o755)
    try:
        yield root
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)


def workspace_site(root: Path, **build: Any) -> Site:
    """The site of a :func:`build_workspace`: local repositories below
    ``repos/``, its store with the one default base, its checkout cache, the
    system's CA bundle, and ``build`` settings changed as given."""
    settings = site_for_tests(
        root / "repos", network={"ca_bundle": "/etc/ssl/certs/ca-certificates.crt"}
    ).model_dump()
    settings["image_store"] = str(root / "store")
    settings["bases"] = {"default": {"python": "3.11"}}
    settings["repos"]["cache_dir"] = str(root / "checkouts")
    settings["build"].update(build)
    return Site.model_validate(settings)
