"""Lines read from anything another account or a repository controls are
capped in length before anything else sees them.

A build prints what its repository likes, a Slurm job's log file grows as
its job writes it, a client sends what it likes: one line without a newline
could fill the build server's memory, and every pattern applied to a line
costs time in its length. Every reader of such lines takes them through here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

#: The longest line passed on, in characters.
LINE_LIMIT = 16384
CUT = " [... line cut ...]"


def capped_lines(readline: Callable[[int], str]) -> Iterator[str]:
    """Lines of a stream read with ``readline(limit)``, without their line
    end, each at most :data:`LINE_LIMIT` long; the rest of a longer line is
    read and dropped (its first part is passed on marked as cut)."""
    while True:
        line = readline(LINE_LIMIT)
        if not line:
            return
        newline = line.endswith("\n")
        if newline or len(line) < LINE_LIMIT:
            yield line[:-1] if newline else line
            continue
        yield line + CUT
        while True:  # skip the rest of the line
            rest = readline(LINE_LIMIT)
            if not rest or rest.endswith("\n"):
                break
