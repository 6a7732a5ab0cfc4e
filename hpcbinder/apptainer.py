"""The seam around the ``apptainer`` program.

Root cannot run Apptainer on every host (it needs capabilities a container
host may withhold), and builds must never run as root anyway: every call
here names the account it runs as.
"""

from __future__ import annotations

import re
from pathlib import Path

from hpcbinder import proc

APPTAINER = "apptainer"
_VERSION = re.compile(r"apptainer version (\d+)\.(\d+)\.(\d+)\S*")


def version(user: str | None = None) -> tuple[int, int, int]:
    """Apptainer's (major, minor, patch) as ``user`` runs it."""
    result = proc.check(proc.run([APPTAINER, "--version"], user=user, timeout=30))
    match = _VERSION.search(result.stdout)
    if not match:
        raise proc.CommandError(result.argv, "printed no version", result.stdout)
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def build(definition: Path, image: Path, *, user: str, timeout: float) -> proc.CommandResult:
    """``apptainer build --fakeroot IMAGE DEFINITION`` as ``user``.

    Refuses to replace an existing image: images are immutable once built,
    and apptainer would otherwise stop at an interactive overwrite prompt.
    """
    if image.exists():
        raise FileExistsError(f"{image} exists already")
    argv = [APPTAINER, "build", "--fakeroot", str(image), str(definition)]
    return proc.check(proc.run(argv, user=user, timeout=timeout))
