"""Every value in a batch job script stays the value it is: a file name,
URL or parameter from a repository or a researcher adds no line, no
``#SBATCH`` directive and no shell word (``{{ path }}`` was unquoted on the
script's header line)."""

from __future__ import annotations

import dataclasses
import shlex
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcbinder.errors import UserError
from hpcbinder.jobs.batch import BatchError, BatchTask, render_batch_script
from hpcbinder.sources.providers import ResolvedRepo
from tests.unit.test_run_records import COMMIT, PLAIN, batch_run

#: One line of anything a shell reads specially.
HOSTILE = st.text(
    st.sampled_from(list("ab/._- '\"$`;&|<>(){}[]*?!#~\\%=,")) | st.characters(codec="utf-8"),
    min_size=1,
    max_size=40,
).filter(lambda text: text.isprintable())


def _structure(script: str) -> list[str]:
    """The script's structure: its #SBATCH options (the job name's value
    follows the file's name), and how many lines it has."""
    options = [
        "#SBATCH --job-name" if line.startswith("#SBATCH --job-name=") else line
        for line in script.splitlines()
        if line.startswith("#SBATCH")
    ]
    return [*options, str(len(script.splitlines()))]


BENIGN = render_batch_script(dataclasses.replace(batch_run(Path("/tmp/x"), PLAIN), path="a.py"))


@settings(max_examples=60, deadline=None)
@given(path=HOSTILE, url=HOSTILE, value=HOSTILE)
def test_single_line_values_stay_single_words(path: str, url: str, value: str) -> None:
    run = dataclasses.replace(
        batch_run(Path("/tmp/x"), PLAIN),
        path=f"{path}.py",
        repo=ResolvedRepo("gh/a/b/HEAD", url, "HEAD", COMMIT),
        tasks=[BatchTask(0, {"alpha": value})],
    )
    script = render_batch_script(run)
    assert _structure(script) == _structure(BENIGN)
    name = next(line for line in script.splitlines() if line.startswith("#SBATCH --job-name="))
    assert all(c.isascii() and (c.isalnum() or c in "_.-") for c in name.split("=", 1)[1])
    header = script.splitlines()[1]
    assert shlex.split(header.removeprefix("# hpcbinder batch run of "))[0] == f"{path}.py"
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


@pytest.mark.parametrize("breaker", ["\n", "\r", "\u2028", "\x00"])
def test_a_value_with_a_line_break_is_refused(breaker: str) -> None:
    run = dataclasses.replace(
        batch_run(Path("/tmp/x"), PLAIN), path=f"x{breaker}#SBATCH --partition=build{breaker}.py"
    )
    with pytest.raises(UserError):
        render_batch_script(run)


def test_an_array_spec_that_is_not_one_is_refused() -> None:
    run = dataclasses.replace(batch_run(Path("/tmp/x"), PLAIN), array="0-3 --partition=build")
    with pytest.raises(BatchError, match="--array"):
        render_batch_script(run)
