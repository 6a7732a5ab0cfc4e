"""Every parser of repository files, and the build-output reader, ends
quickly on adversarial 100k-character input.

These are correctness checks, not benchmarks: each input is one that made a
backtracking pattern (or a quadratic loop) take exponential or quadratic
time, and the bound (a few seconds, for work that takes milliseconds) only
tells "linear" from "not". Each parse runs in a child process that is killed
at the bound, so the old code fails here instead of hanging the suite: a
Pipfile version of 64 '!' took days in pipfile's specifier pattern; a line of
spaces was quadratic in buildlog's reason pattern; conda's python pattern
was cubic; an ARG name was a pattern in spython. Input may be refused, but
only as the repository's one-line error, never as a crash.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from hpcbinder import buildpacks, textpatterns
from hpcbinder.buildpacks.base import FILE_BYTES
from hpcbinder.errors import UserError
from hpcbinder.images.buildlog import FailureReason, LogCap

#: Far above what any of these takes when linear (milliseconds to ~0.5 s on
#: a loaded two-core machine), far below what quadratic 100k input takes.
BOUND_SECONDS = 5.0
N = 100_000
#: Runs that each made some pattern or loop here backtrack or repeat.
RUNS = {
    "bangs": "!" * N,
    "spaces": " " * N,
    "equals": "=" * N,
    "dots": "." * N,
    "stars": "*" * N,
    "brackets": "[" * (N // 2) + "]" * (N // 2),
    "braces": "{" * (N // 2) + "}" * (N // 2),
    "quotes": '"' * N,
    "long line": "a" * N,
    "many lines": "a\n" * N,
    "many blank lines": "\n" * N,
}
#: The same, short enough for one line (the longest a file's line may be).
SHORT = {name: text[: textpatterns.LINE_CHARS - 100] for name, text in RUNS.items()}


def _run_quiet(work: Callable[[], object]) -> None:
    """The child: exit 0 if ``work`` ends or refuses as a user error."""
    try:
        work()
    except UserError:
        pass
    except BaseException:
        traceback.print_exc()
        os._exit(3)
    os._exit(0)


def finishes_quickly(work: Callable[[], object]) -> None:
    """``work`` ends (or refuses the input as a user error) within the bound."""
    child = multiprocessing.get_context("fork").Process(target=_run_quiet, args=(work,))
    started = time.monotonic()
    child.start()
    child.join(BOUND_SECONDS)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail(f"still running after {BOUND_SECONDS} s: not linear in its input")
    assert child.exitcode == 0, "crashed instead of a one-line error (traceback above)"
    assert time.monotonic() - started < BOUND_SECONDS


def _repo(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def _contents(template: str) -> list[str]:
    """Each run as the whole file, and (one line long) in ``template``'s slot."""
    return [*RUNS.values(), *(template.replace("SLOT", run) for run in SHORT.values())]


#: Each file the buildpacks parse, with a place in it where a value is matched.
FILES: dict[str, tuple[dict[str, str], str]] = {
    "Pipfile": ({}, '[packages]\nsix = "SLOT"\n[requires]\npython_version = "SLOT"\n'),
    "Pipfile-markers": ({}, '[packages]\nsix = {version = "*", markers = "SLOT"}\n'),
    "Pipfile.lock": (
        {},
        '{"_meta": {"sources": [{"url": "SLOT"}]}, '
        '"default": {"six": {"version": "SLOT", "hashes": ["SLOT"], "markers": "SLOT"}}}',
    ),
    "requirements.txt": ({}, "SLOT\n-e SLOT\n"),
    "environment.yml": ({}, "dependencies:\n  - pythonSLOT\n  - python=3.1SLOT\n  - r-baseSLOT\n"),
    "runtime.txt": ({"requirements.txt": ""}, "python-SLOT"),
    "DESCRIPTION": ({}, "Package: SLOT\n"),
    "install.R": ({"runtime.txt": "r-2024-01-01"}, "install.packages('SLOT')\n"),
    "Dockerfile": ({}, "ARG SLOT=1\nFROM SLOT\nCOPY --link SLOT .\nRUN SLOT\nENV a=SLOT\n"),
    "apt.txt": ({}, "SLOT\n"),
    "pyproject.toml": ({}, '[project]\nrequires-python = "SLOT"\n[build-system]\n'),
}


@pytest.mark.parametrize("name", FILES)
def test_every_repository_file_parses_in_linear_time(tmp_path: Path, name: str) -> None:
    others, template = FILES[name]
    file = name.removesuffix("-markers")
    for number, text in enumerate(_contents(template)):
        checkout = _repo(tmp_path / str(number), {**others, file: text})
        finishes_quickly(lambda checkout=checkout: buildpacks.detect(checkout))


def test_the_pipfile_version_that_took_days(tmp_path: Path) -> None:
    for version in ["!" * 64, "!" * 64 + "#"]:
        checkout = _repo(tmp_path / version, {"Pipfile": f'[packages]\nsix = "{version}"\n'})
        finishes_quickly(lambda checkout=checkout: buildpacks.detect(checkout))


def test_values_longer_than_a_line_are_matched_in_linear_time(tmp_path: Path) -> None:
    """YAML's and TOML's quoted strings continue over lines: 100k spaces in
    a conda dependency (quadratic and worse in conda's old python pattern)
    and 100k '!' in a Pipfile version, from lines shorter than the cap."""
    spaces = ("\\x20" * 1000 + "\\\n") * 100
    bangs = ("!" * 1000 + "\\\n") * 100
    for files in [
        {"environment.yml": f'dependencies:\n  - "python{spaces}x"\n'},
        {"Pipfile": f'[packages]\nsix = """{bangs}#"""\n'},
    ]:
        checkout = _repo(tmp_path / next(iter(files)), files)
        finishes_quickly(lambda checkout=checkout: buildpacks.detect(checkout))


def test_a_dockerfile_arg_name_is_no_pattern(tmp_path: Path) -> None:
    """spython pastes ARG names into its own regular expressions."""
    text = "ARG x|(a+)+c=1\nFROM " + "a" * 40 + "\n"
    checkout = _repo(tmp_path, {"Dockerfile": text})
    finishes_quickly(lambda: buildpacks.detect(checkout))
    with pytest.raises(UserError, match="not a variable name"):
        buildpacks.detect(checkout)


def test_continued_dockerfile_flags_are_read_once(tmp_path: Path) -> None:
    """COPY's flags, one per continued line, up to the size cap."""
    text = "FROM x\nCOPY " + "--link \\\n" * (FILE_BYTES // 10) + "a b\n"
    checkout = _repo(tmp_path, {"Dockerfile": text, "a": ""})
    finishes_quickly(lambda: buildpacks.detect(checkout))


def test_a_file_over_the_cap_is_refused_naming_it(tmp_path: Path) -> None:
    checkout = _repo(tmp_path, {"requirements.txt": "six\n" * (FILE_BYTES // 4 + 1)})
    with pytest.raises(UserError, match=r"^requirements.txt: is larger than"):
        buildpacks.detect(checkout)


def test_a_line_over_the_cap_is_refused_naming_it(tmp_path: Path) -> None:
    checkout = _repo(tmp_path, {"apt.txt": "curl\n" + "a" * N + "\n"})
    with pytest.raises(UserError, match=r"^apt.txt:2: line longer than"):
        buildpacks.detect(checkout)


@pytest.mark.parametrize("name", ["environment.yml", "Pipfile", "Pipfile.lock"])
def test_deep_nesting_is_the_repositorys_error(tmp_path: Path, name: str) -> None:
    nested = "[" * 50_000 + "]" * 50_000
    text = f"a = {nested}\n" if name == "Pipfile" else nested
    checkout = _repo(tmp_path, {name: text})
    with pytest.raises(UserError, match=rf"^{name}"):
        buildpacks.detect(checkout)


@pytest.mark.parametrize("run", RUNS, ids=list(RUNS))
def test_build_output_is_read_in_linear_time(run: str) -> None:
    """The failure reason and the log cap read every output line; a build
    prints what it likes (the spaces line was quadratic in the old reason
    pattern)."""

    def read() -> None:
        reason, cap = FailureReason(), LogCap(lambda _: None)
        for text in [RUNS[run], "x" + RUNS[run], *RUNS[run].split("\n")[:1000]]:
            reason.line(text)
            cap.line(text)
        cap.finish()

    finishes_quickly(read)


def test_a_reason_from_a_long_line_is_cut() -> None:
    reason = FailureReason()
    reason.line("ERROR: " + "x" * N)
    assert reason.reason is not None and len(reason.reason) < 500
