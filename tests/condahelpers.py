"""A conda channel built in the test and served on loopback.

conda-forge cannot be reached from the dev machine, so the tests make
their own channel: small ``noarch: generic`` packages written as conda
``.tar.bz2`` archives (``info/index.json``, ``info/paths.json``, the
files), indexed with py-rattler (the ``repodata.json`` every conda client
reads) and served by ``http.server`` on 127.0.0.1, recording the paths
asked for so a test can tell which checks reached it.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.conftest import free_port


@dataclass(frozen=True)
class Package:
    """A noarch package: its name, version, dependencies and one file."""

    name: str
    version: str
    depends: tuple[str, ...] = ()

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}-0.tar.bz2"

    @property
    def payload(self) -> str:
        """The package's one file, relative to the environment's prefix."""
        return f"share/{self.name}/VERSION"


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    archive.addfile(info, io.BytesIO(data))


def write_package(subdir: Path, package: Package) -> Path:
    """``package`` as a conda ``.tar.bz2`` archive in the channel's ``subdir``."""
    content = f"{package.version}\n".encode()
    index = {
        "name": package.name,
        "version": package.version,
        "build": "0",
        "build_number": 0,
        "depends": list(package.depends),
        "noarch": "generic",
        "subdir": "noarch",
        "license": "MIT",
        "timestamp": 1_700_000_000_000,
    }
    paths = {
        "paths": [
            {
                "_path": package.payload,
                "path_type": "hardlink",
                "sha256": hashlib.sha256(content).hexdigest(),
                "size_in_bytes": len(content),
            }
        ],
        "paths_version": 1,
    }
    subdir.mkdir(parents=True, exist_ok=True)
    target = subdir / package.filename
    with tarfile.open(target, "w:bz2") as archive:
        _add(archive, "info/index.json", json.dumps(index).encode())
        _add(archive, "info/paths.json", json.dumps(paths).encode())
        _add(archive, "info/files", f"{package.payload}\n".encode())
        _add(archive, package.payload, content)
    return target


def make_channel(root: Path, packages: list[Package]) -> Path:
    """A channel folder at ``root``: the packages in ``noarch/``, an empty
    ``linux-64/`` (clients ask for both) and every subdir's repodata.json."""
    from rattler.index import index_fs

    for package in packages:
        write_package(root / "noarch", package)
    (root / "linux-64").mkdir(parents=True, exist_ok=True)
    asyncio.run(index_fs(root, write_zst=False, write_shards=False))
    return root


@dataclass
class Served:
    """A folder served on loopback and the paths asked for, in order."""

    url: str
    requested: list[str] = field(default_factory=list)


@contextmanager
def serve(folder: Path) -> Iterator[Served]:
    """``folder`` over HTTP on 127.0.0.1 (a free port) while in the block."""
    served = Served(url="")

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            served.requested.append(self.path)

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), partial(Handler, directory=folder))
    served.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
