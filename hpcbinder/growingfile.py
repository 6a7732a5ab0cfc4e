"""A file another process appends lines to, read as it grows.

Build logs (a Slurm build job writes them), a build's event file (the
build that holds the key's lock writes it) and batch jobs' logs are all
followed the same way: from where the last read stopped, whole lines only,
so a line caught half-written is read whole on the next call. What another
process writes is bounded here: each call reads at most :data:`READ_BYTES`,
each line is cut at :data:`~hpcbinder.boundedlines.LINE_LIMIT` bytes, and
the file is opened as itself (not through a link, not a FIFO that would
block the reader).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from hpcbinder.boundedlines import CUT, LINE_LIMIT

#: The most one call reads (the rest waits for the next call).
READ_BYTES = 1 << 20
_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _line(data: bytes) -> str:
    if len(data) <= LINE_LIMIT:
        return data.decode(errors="replace")
    return data[:LINE_LIMIT].decode(errors="replace") + CUT


class GrowingFile:
    """One followed file and how far it has been read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self._skipping = False  # in the rest of a line already passed on, cut

    def _read(self) -> bytes:
        try:
            fd = os.open(self.path, _FLAGS)
        except OSError:
            return b""
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return b""
            handle.seek(self.offset)
            return handle.read(READ_BYTES)

    def new_lines(self) -> list[str]:
        """The lines completed since the last call, without their newline;
        none while the file does not exist (yet) or cannot be read. A line
        longer than the limit is passed on cut as soon as it is that long."""
        data = self._read()
        lines = []
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            if not self._skipping:
                lines.append(_line(data[start:end]))
            self._skipping = False
            start = end + 1
        if len(data) - start >= LINE_LIMIT:  # no end in sight: cut it now
            if not self._skipping:
                lines.append(_line(data[start:]))
                self._skipping = True
            start = len(data)
        self.offset += start
        return lines
