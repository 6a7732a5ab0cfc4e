"""A file another process appends lines to, read as it grows.

Build logs (a Slurm build job writes them), a build's event file (the
build that holds the key's lock writes it) and batch jobs' logs are all
followed the same way: from where the last read stopped, whole lines only,
so a line caught half-written is read whole on the next call.
"""

from __future__ import annotations

from pathlib import Path


class GrowingFile:
    """One followed file and how far it has been read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def new_lines(self) -> list[str]:
        """The lines completed since the last call, without their newline;
        none while the file does not exist (yet) or cannot be read."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except OSError:
            return []
        complete = data.rfind(b"\n") + 1
        self.offset += complete
        return data[:complete].decode(errors="replace").split("\n")[:-1]
