"""Every pattern of the package runs in RE2, so none can backtrack on the
text it is given: the class is closed where patterns are made, and these
tests keep it closed (a new ``import re`` fails here) and show that the
patterns rewritten without lookarounds mean what they meant."""

from __future__ import annotations

import ast
import re
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpcbinder import textpatterns
from hpcbinder.buildpacks.base import _REPO_PATH, RepoFiles
from hpcbinder.buildpacks.python import PythonBuildPack
from hpcbinder.config import RepoPolicy
from hpcbinder.jobs.notebooks import _R_ASSIGNMENT
from hpcbinder.web.trust import _named_ref

PACKAGE = Path(__file__).resolve().parents[2] / "hpcbinder"
#: Backtracking engines (re, and what is built on it) and RE2 outside its one module.
FORBIDDEN = {"re", "regex", "fnmatch", "re2"}


def _imports(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_module_matches_with_a_backtracking_engine() -> None:
    """A pattern written later cannot bypass RE2: the only way to a regular
    expression in the package is hpcbinder.textpatterns."""
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "textpatterns.py" and path.parent == PACKAGE:
            continue
        used = _imports(ast.parse(path.read_text(), str(path))) & FORBIDDEN
        if used:
            offenders[str(path.relative_to(PACKAGE))] = sorted(used)
    assert offenders == {}, f"use hpcbinder.textpatterns.compile instead: {offenders}"


def test_the_pattern_that_took_days_in_re_is_linear_in_re2() -> None:
    """Pipfile's old specifier pattern on 64 '!' (1.6x longer per '!' in
    re) ends at once, and 100k characters of it take no more than a blink."""
    old = r"(?:[<>=!~]=?=?\s*[A-Za-z0-9.+!*_-]+\s*,?\s*)+|\*"
    started = time.monotonic()
    for length in (64, 100_000):
        assert textpatterns.compile(old).fullmatch("!" * length + "#") is None
    assert time.monotonic() - started < 1


def test_space_is_pythons_space_over_all_of_unicode() -> None:
    space = textpatterns.compile(textpatterns.SPACE)
    differ = [
        hex(code)
        for code in range(0x110000)
        if not 0xD800 <= code < 0xE000
        and (re.fullmatch(r"\s", chr(code)) is None) != (space.fullmatch(chr(code)) is None)
    ]
    assert differ == []


_OLD_REPO_PATH = re.compile(
    r"(?!.*(?:^|/)\.\.(?:/|$))[A-Za-z0-9_.][A-Za-z0-9_.+-]*(?:/[A-Za-z0-9_.][A-Za-z0-9_.+-]*)*"
)


@given(st.text(alphabet="./a+-_\n ", max_size=12))
def test_repository_paths_are_what_the_lookahead_accepted(path: str) -> None:
    assert (_REPO_PATH.fullmatch(path) is None) == (_OLD_REPO_PATH.fullmatch(path) is None)


_OLD_NAMED_REF = re.compile(r"(?!refs/)[^/].*|refs/(?:heads|tags)/.+|HEAD")


@given(
    st.one_of(
        st.text(alphabet="refs/headtag\nH", max_size=14),
        st.sampled_from(["refs/heads/", "refs/tags/", "refs/notes/"]).flatmap(
            lambda prefix: st.text(alphabet="ab/\n", max_size=4).map(lambda rest: prefix + rest)
        ),
    )
)
def test_named_refs_are_what_the_lookahead_accepted(ref: str) -> None:
    assert _named_ref(ref) == (_OLD_NAMED_REF.fullmatch(ref) is not None)


_OLD_R_ASSIGNMENT = re.compile(r"\s*([A-Za-z.][A-Za-z0-9._]*)\s*(?:<-|=(?!=))")


@given(st.text(alphabet="ab. =<-\t1", max_size=10))
def test_r_assignments_are_what_the_lookahead_accepted(line: str) -> None:
    old, new = _OLD_R_ASSIGNMENT.match(line), _R_ASSIGNMENT.match(line)
    assert (old and old.group(1)) == (new and new.group(1))


def test_a_site_pattern_re2_cannot_run_is_refused_naming_why() -> None:
    with pytest.raises(ValueError, match="RE2") as caught:
        RepoPolicy(ban=[r"https://(?!ok)"])
    assert "\n" not in str(caught.value).split("\n", 1)[0]


def test_long_line_names_the_first_over_the_cap() -> None:
    long = "x" * (textpatterns.LINE_CHARS + 1)
    assert textpatterns.long_line("a\nb\n") is None
    assert textpatterns.long_line(f"a\n{long}\n{long}") == 2


@pytest.mark.parametrize("space", ["\v", "\x1c", "\u00a0", "\u2003"])
def test_a_local_requirement_after_any_space_pip_strips_is_local(
    tmp_path: Path, space: str
) -> None:
    """RE2's \\s lacks these; pip strips them and reads the file the line names."""
    (tmp_path / "requirements.txt").write_text(f"numpy\n{space}-r other.txt\n")
    assert PythonBuildPack(RepoFiles(tmp_path)).requirements_are_local
