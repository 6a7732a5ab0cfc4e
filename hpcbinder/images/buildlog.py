"""A build's log, capped: its first and last lines, and how many were cut.

A repository's build prints what it likes; a log kept whole could fill the
build server's memory (every viewer's event stream keeps the events) and
the image store's disk. Head and tail are what a reader needs: what the
build did first, and where it ended or failed.

The tail of a failed build rarely says why: package managers print their
reason, then cleanup, tracebacks and Apptainer's own "exit status" lines
follow. :class:`FailureReason` keeps the first line that does say why, for
the failure's message to start with.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from hpcbinder import textpatterns

HEAD_LINES = 2000
TAIL_LINES = 1000
#: A longer line (progress bars redrawn without newlines) is cut to this:
#: the one cap of every line read from outside.
LINE_CHARS = textpatterns.LINE_CHARS
#: Control characters (C0 but tab, DEL, C1) as visible escapes: a build's
#: output reaches researchers' terminals (``hpcbinder build``), where an
#: escape sequence could set the clipboard or redraw lines the CLI printed.
_VISIBLE = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0)) if code != 0x09}


def visible(line: str) -> str:
    """``line`` cut to :data:`LINE_CHARS`, its control characters escaped."""
    return line[:LINE_CHARS].translate(_VISIBLE)


#: The longest reason kept (a line and the indented lines continuing it).
REASON_CHARS = 400
#: What the lines the build's own checks print start with ("hpcbinder: R
#: package 'x' could not be installed from URL ..."): they know why, so such a
#: line is the reason even where a tool's line matched before it (R CMD
#: INSTALL's "ERROR: ...").
_OWN_PREFIX = textpatterns.escape("hpcbinder: ")
#: A line that says why a build failed, as the tools builds run print it.
_REASON = textpatterns.compile(
    r"\s*(?:"
    r"ERROR\b"  # pip ("ERROR: No matching distribution found for x"), R CMD INSTALL
    r"|error(?:\[\w+\])?:"  # uv ("error: No solution found ..."), git, cargo
    r"|E: "  # apt-get, dpkg ("E: Unable to locate package x")
    r"|Error(?: in |: )"  # R ("Error in library(x) : there is no package called 'x'")
    r"|(?:critical|error)\s+libmamba\b"  # micromamba
    r"|curl: \(\d+\)"  # a download that failed ("curl: (6) Could not resolve host")
    rf"|{_OWN_PREFIX}"  # the build's own checks ("hpcbinder: cannot reach the conda channel ...")
    r"|\[?[A-Za-z_][\w.]*(?:Error|Exception)\]?: "  # Python, pipenv
    r"|.*(?:No matching distribution|not available)"  # pip; R ("package 'x' is not available")
    r")"
)
_OWN = textpatterns.compile(rf"\s*{_OWN_PREFIX}")
#: A line that continues the one before it ("  cause: Because ...").
_CONTINUED = textpatterns.compile(r"\s+\S")


def cut_marker(lines: int) -> str:
    return f"[... {lines} lines cut ...]"


def _short(text: str) -> str:
    if len(text) <= LINE_CHARS:
        return text
    return textpatterns.cap(text) + " [... line cut ...]"


class LogCap:
    """Passes the first ``head`` lines on as they come and keeps only the
    last ``tail`` of the rest, for :meth:`finish` to pass on after saying
    how many were cut."""

    def __init__(
        self, write: Callable[[str], None], head: int = HEAD_LINES, tail: int = TAIL_LINES
    ) -> None:
        self._write = write
        self._head = head
        self._tail: deque[str] = deque(maxlen=tail)
        self._seen = 0
        self._finished = False

    def line(self, text: str) -> None:
        self._seen += 1
        if self._seen <= self._head:
            self._write(_short(text))
            return
        if self._seen == self._head + 1:
            self._write(
                f"[... more than {self._head} lines: the last {self._tail.maxlen} "
                "follow when the build ends ...]"
            )
        self._tail.append(_short(text))

    def finish(self) -> None:
        """Pass on the kept tail (once)."""
        if self._finished:
            return
        self._finished = True
        cut = self._seen - self._head - len(self._tail)
        if cut > 0:
            self._write(cut_marker(cut))
        for text in self._tail:
            self._write(text)


class FailureReason:
    """The first line of a build's output that says why it failed, with
    the indented lines that continue it (uv prints its cause below); the
    first line of the build's own checks wins over a tool's."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._complete = False
        self._own = False

    def line(self, text: str) -> None:
        if self._own:
            return
        text = textpatterns.cap(text)
        if _OWN.match(text):
            self._lines, self._own = [text.strip()], True
            return
        if self._complete:
            return
        if not self._lines:
            if _REASON.match(text):
                self._lines.append(text.strip())
            return
        if _CONTINUED.match(text) and len(self._lines) < 3:
            self._lines.append(text.strip())
        else:
            self._complete = True

    @property
    def reason(self) -> str | None:
        """The reason on one line, or None if no line said why."""
        if not self._lines:
            return None
        joined = " ".join(self._lines)
        return joined if len(joined) <= REASON_CHARS else joined[:REASON_CHARS] + " [...]"
