"""What batch mode checks before it submits: array specs, parameter grids,
a notebook's declared parameters, and the exit status a finished job
stands for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcbinder.jobs.batch import BatchError, expand_array, read_grid
from hpcbinder.jobs.batchjobs import exit_status
from hpcbinder.jobs.notebooks import NotebookError, check_parameters, declared_parameters
from hpcbinder.seams.slurm import JobInfo


@pytest.mark.parametrize(
    ("spec", "indices"),
    [("0-3", [0, 1, 2, 3]), ("1,5,9", [1, 5, 9]), ("0-9:4%2", [0, 4, 8]), ("7", [7])],
)
def test_array_specs_expand_to_their_indices(spec: str, indices: list[int]) -> None:
    assert expand_array(spec) == indices


@pytest.mark.parametrize("spec", ["", "1-", "a", "3-1", "0-4:0", "1;rm -rf /", "0-3%"])
def test_bad_array_specs_are_refused(spec: str) -> None:
    with pytest.raises(BatchError, match="--array"):
        expand_array(spec)


def test_grids_read_from_csv_json_and_yaml(tmp_path: Path) -> None:
    (tmp_path / "g.csv").write_text("a,b\n1,x\n2,y\n")
    (tmp_path / "g.json").write_text('[{"a": 1, "b": "x"}, {"a": 2.5, "b": true}]')
    (tmp_path / "g.yaml").write_text("- {a: 1}\n- {a: 2}\n")
    assert read_grid(tmp_path / "g.csv") == [{"a": "1", "b": "x"}, {"a": "2", "b": "y"}]
    assert read_grid(tmp_path / "g.json") == [{"a": "1", "b": "x"}, {"a": "2.5", "b": "True"}]
    assert read_grid(tmp_path / "g.yaml") == [{"a": "1"}, {"a": "2"}]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("g.json", "{", "is not valid json"),
        ("g.json", "[]", "non-empty list"),
        ("g.yaml", "- {a: [1, 2]}", "row 1: a needs a single value"),
        ("g.csv", "bad name,b\n1,2\n", "row 1: 'bad name' is not a parameter name"),
        ("missing.csv", None, "cannot read"),
    ],
)
def test_bad_grids_are_refused(tmp_path: Path, name: str, text: str | None, message: str) -> None:
    if text is not None:
        (tmp_path / name).write_text(text)
    with pytest.raises(BatchError, match=message):
        read_grid(tmp_path / name)


def notebook(tmp_path: Path, source: str, tags: list[str]) -> Path:
    path = tmp_path / "n.ipynb"
    cell = {"cell_type": "code", "metadata": {"tags": tags}, "source": source, "outputs": []}
    path.write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4}))
    return path


def test_parameters_are_the_names_the_tagged_cell_assigns(tmp_path: Path) -> None:
    source = "%matplotlib inline\nalpha = 1\nn: int = 3\nx, y = 1, 2\nprint(alpha)\n"
    path = notebook(tmp_path, source, ["parameters"])
    assert declared_parameters(path, "n.ipynb") == {"alpha", "n", "x", "y"}
    check_parameters(path, "n.ipynb", {"alpha", "y"})
    with pytest.raises(NotebookError, match="does not declare parameter 'beta'"):
        check_parameters(path, "n.ipynb", {"alpha", "beta"})


def test_a_notebook_without_a_parameters_cell_takes_none(tmp_path: Path) -> None:
    path = notebook(tmp_path, "alpha = 1", [])
    assert declared_parameters(path, "n.ipynb") is None
    check_parameters(path, "n.ipynb", set())
    with pytest.raises(NotebookError, match="no cell tagged 'parameters'"):
        check_parameters(path, "n.ipynb", {"alpha"})


def test_a_broken_notebook_is_named(tmp_path: Path) -> None:
    (tmp_path / "n.ipynb").write_text("not json")
    with pytest.raises(NotebookError, match=r"n\.ipynb: not a notebook"):
        declared_parameters(tmp_path / "n.ipynb", "n.ipynb")
    path = notebook(tmp_path, "alpha = (", ["parameters"])
    with pytest.raises(NotebookError, match="parameters cell is not Python"):
        declared_parameters(path, "n.ipynb")


def info(state: str, code: int | None) -> JobInfo:
    return JobInfo("1", state, code, 0, "vm", "None", "batch", "/dev/null")


@pytest.mark.parametrize(
    ("state", "code", "status"),
    [
        ("COMPLETED", 0, 0),
        ("FAILED", 3, 3),
        ("FAILED", None, 1),
        ("TIMEOUT", 0, 124),
        ("CANCELLED", 0, 130),
        # Not reproducible on the dev cluster, which does not enforce memory.
        ("OUT_OF_MEMORY", 0, 137),
        ("NODE_FAIL", 0, 1),
    ],
)
def test_exit_status_of_finished_jobs(state: str, code: int | None, status: int) -> None:
    assert exit_status(info(state, code)) == status
