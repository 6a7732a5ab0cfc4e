"""A CRAN-like repository made in the test: small pure-R packages built with
``R CMD build``, indexed with ``tools::write_PACKAGES`` under a snapshot
date (``<root>/<YYYY-MM-DD>/src/contrib/PACKAGES``, the layout of Posit's
snapshots that ``network.mirrors.cran`` points at), served on loopback.

Builds share the host's network, so a build's R reaches it at 127.0.0.1.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

from tests.loopback import QuietHandler, serving_on_loopback


@dataclass(frozen=True)
class RPackage:
    """A source package: ``hello()`` returns ``greeting``; ``broken`` makes
    its R code fail to parse, so installing it fails."""

    name: str
    imports: tuple[str, ...] = ()
    greeting: str = "hello"
    broken: bool = False

    def write(self, folder: Path) -> Path:
        source = folder / self.name
        (source / "R").mkdir(parents=True)
        lines = [
            f"Package: {self.name}",
            "Version: 1.0",
            f"Title: Test Package {self.name}",
            "Description: A package made by hpcbinder's tests.",
            "License: MIT",
            'Authors@R: person("Test", "Author", email = "test@example.org", '
            'role = c("aut", "cre"))',
        ]
        if self.imports:
            lines.append(f"Imports: {', '.join(self.imports)}")
        (source / "DESCRIPTION").write_text("\n".join(lines) + "\n")
        (source / "NAMESPACE").write_text("export(hello)\n")
        code = f'hello <- function() "{self.greeting}"\n'
        (source / "R" / "hello.R").write_text(
            code + ("hello <- function( {\n" if self.broken else "")
        )
        return source


def build_snapshot(root: Path, date: str, packages: list[RPackage]) -> Path:
    """``root/date/src/contrib`` with ``packages`` built and indexed."""
    contrib = root / date / "src" / "contrib"
    contrib.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        for package in packages:
            source = package.write(Path(scratch))
            subprocess.run(
                ["R", "CMD", "build", "--no-build-vignettes", "--no-manual", str(source)],
                cwd=contrib,
                check=True,
                capture_output=True,
                timeout=120,
            )
    subprocess.run(
        ["Rscript", "-e", 'tools::write_PACKAGES(commandArgs(TRUE)[1], type = "source")', contrib],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return contrib


class _QuietFiles(QuietHandler, SimpleHTTPRequestHandler):
    """Serves a folder's files, without logging each request."""


@contextmanager
def serving(root: Path) -> Iterator[str]:
    """``root`` served over HTTP on loopback; yields its base URL."""
    with serving_on_loopback(functools.partial(_QuietFiles, directory=str(root))) as url:
        yield url


def r_available() -> bool:
    return shutil.which("R") is not None and shutil.which("Rscript") is not None
