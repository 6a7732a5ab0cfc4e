"""Regular expressions over text from outside, in an engine that cannot backtrack.

Text from a repository (its files, its build's output), from the network
(a spec, a ref, git's and Slurm's output) or from a request is matched
only through :func:`compile`, which returns an RE2 pattern. RE2 runs in
time linear in the text for every pattern, so no pattern here or written
later can be made to take exponential or quadratic time by its input (a
Pipfile version of 64 ``!`` took days in Python's ``re``, and the build
server, one process, served no one meanwhile). RE2 has no lookarounds or
backreferences; patterns are written without them.

Every module uses this one: ``tests/unit/test_textpatterns.py`` fails if
any module of the package imports ``re``. Linear is still proportional to
the text, so lines are capped before matching (:data:`LINE_CHARS`).

RE2's ``\\s`` is ``[\\t\\n\\f\\r ]``, its ``\\d``, ``\\w`` and ``\\b``
ASCII only, and ``$`` (without ``(?m)``) matches only at the end. A shape
check (``fullmatch``) only gets stricter so; a pattern that looks for
something after space (a section line, a local requirement) uses
:data:`SPACE`, which is Python's.
"""

from __future__ import annotations

from typing import TypeAlias

import re2

#: A compiled pattern; its methods are ``re``'s (fullmatch, match, search,
#: finditer, sub, split), and so are its matches' (group, groups, span).
Pattern: TypeAlias = "re2._Regexp[str]"
#: Python's ``\s``: every character ``str.isspace()`` takes (RE2's ``\s``
#: is five), for checks that must not see less space than Python or
#: Apptainer do (a unit test compares them over all of Unicode).
SPACE = r"[\s\v\x1c-\x1f\x85\p{Z}]"

#: The longest line read from outside before matching: a repository file's
#: longer line is refused, a build's longer output line is cut.
LINE_CHARS = 4096

_OPTIONS = re2.Options()
# A site file's pattern RE2 refuses is reported by the caller, once, not
# also logged to stderr by RE2.
_OPTIONS.log_errors = False


class PatternError(ValueError):
    """A pattern RE2 does not take (a lookaround, a backreference, bad syntax)."""


def compile(pattern: str) -> Pattern:
    """``pattern`` compiled by RE2; flags go inline (``(?i)``, ``(?m)``)."""
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else ""
        text = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
        raise PatternError(text) from None


def escape(text: str) -> str:
    """``text`` as a pattern that matches it literally."""
    return re2.escape(text)


def cap(line: str) -> str:
    """``line`` cut to :data:`LINE_CHARS`, for text that is only read
    (a build's output), never for a value that is checked and then used."""
    return line[:LINE_CHARS]


def long_line(text: str) -> int | None:
    """The number of ``text``'s first line longer than :data:`LINE_CHARS`,
    or None: a repository file with one is refused whole, since a cut value
    checked would not be the value used."""
    for number, line in enumerate(text.splitlines(), start=1):
        if len(line) > LINE_CHARS:
            return number
    return None
