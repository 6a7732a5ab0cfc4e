"""A failed build's message starts with the log line that says why: the
picker reads real outputs of the tools builds run (captured here with the
dev cluster's base image and host), and the reason survives the trip from
the build server to the CLI and the web service."""

from __future__ import annotations

import pytest

from hpcbinder.images.builder import ImageBuildError
from hpcbinder.images.buildlog import REASON_CHARS, FailureReason
from hpcbinder.images.client import ServerEvent, _raise_failure

# Apptainer and the overlay script around a tool's output, as a build log has them.
_BEFORE = [
    "INFO:    Converting SIF file to temporary sandbox...",
    "+ /opt/hpcbinder/python/bin/python -m venv /opt/hpcbinder/kernel",
    "Using Python 3.11.2 environment at: /opt/hpcbinder/kernel",
]
_AFTER = ["FATAL:   While performing build: while running engine: exit status 1"]

OUTPUTS = {
    # uv pip install of a name the index does not have (not a terminal).
    "uv-missing": (
        [
            "error: No solution found when resolving dependencies",
            "  cause: Because hpcbinder-no-such-package was not found in the package registry "
            "and you require hpcbinder-no-such-package==0.0.1, we can conclude that your "
            "requirements are unsatisfiable.",
        ],
        "error: No solution found when resolving dependencies cause: Because "
        "hpcbinder-no-such-package was not found in the package registry",
    ),
    "pip-missing": (
        [
            "ERROR: Could not find a version that satisfies the requirement "
            "hpcbinder-no-such-package==0.0.1 (from versions: none)",
            "ERROR: No matching distribution found for hpcbinder-no-such-package==0.0.1",
        ],
        "ERROR: Could not find a version that satisfies the requirement "
        "hpcbinder-no-such-package==0.0.1 (from versions: none)",
    ),
    "apt-missing": (
        [
            "Reading package lists...",
            "Building dependency tree...",
            "Reading state information...",
            "E: Unable to locate package hpcbinder-no-such-debian-package",
        ],
        "E: Unable to locate package hpcbinder-no-such-debian-package",
    ),
    # R's install.packages() of a package the mirror lacks (R only warns).
    "rscript-not-available": (
        [
            "Installing package into '/usr/local/lib/R/site-library'",
            "(as 'lib' is unspecified)",
            "Warning message:",
            "package 'hpcbindernosuch' is not available for this version of R",
            "",
            "A version of this package for your version of R might be available elsewhere,",
        ],
        "package 'hpcbindernosuch' is not available for this version of R",
    ),
    "rscript-library": (
        [
            "Error in library(hpcbindernosuch) : ",
            "  there is no package called 'hpcbindernosuch'",
            "Execution halted",
        ],
        "Error in library(hpcbindernosuch) : there is no package called 'hpcbindernosuch'",
    ),
    "python-traceback": (
        [
            "Traceback (most recent call last):",
            '  File "/srv/repo/postBuild", line 2, in <module>',
            "ModuleNotFoundError: No module named 'hpcbindernosuch'",
        ],
        "ModuleNotFoundError: No module named 'hpcbindernosuch'",
    ),
    "curl": (
        ["curl: (6) Could not resolve host: micro.mamba.invalid", "tar: Error is not recoverable"],
        "curl: (6) Could not resolve host: micro.mamba.invalid",
    ),
}


def picked(lines: list[str]) -> str | None:
    reason = FailureReason()
    for line in lines:
        reason.line(line)
    return reason.reason


@pytest.mark.parametrize("case", sorted(OUTPUTS))
def test_the_first_line_that_says_why_is_picked(case: str) -> None:
    lines, expected = OUTPUTS[case]
    reason = picked([*_BEFORE, *lines, *_AFTER])
    assert reason is not None and reason.startswith(expected), reason


def test_a_log_that_says_no_reason_gives_none() -> None:
    assert picked([*_BEFORE, "postbuild-broke", *_AFTER]) is None


def test_a_long_reason_is_cut() -> None:
    reason = picked(["ERROR: " + "x" * 5000, "  " + "y" * 5000])
    assert reason is not None and len(reason) <= REASON_CHARS + 10


def test_the_error_starts_with_the_reason_also_after_the_build_server() -> None:
    """The build server sends the parts; the client's error reads as the builder's."""
    built = ImageBuildError("k" * 32, "install environment", "exited with status 1", ["t"], "E: x")
    assert str(built).startswith("E: x (build of ")
    event = ServerEvent(
        "failed",
        built.message,
        kind="build",
        key=built.key,
        step=built.step,
        tail=built.tail,
        reason=built.reason,
    )
    with pytest.raises(ImageBuildError) as caught:
        _raise_failure(ServerEvent.from_line(event.to_line()))
    assert str(caught.value) == str(built)
