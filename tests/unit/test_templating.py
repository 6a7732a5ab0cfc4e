"""Values reach emitted shell as single words."""

from __future__ import annotations

import shlex
import subprocess

import jinja2
import pytest

from hpcbinder.buildpacks.base import StepKind
from hpcbinder.render import templating


def test_image_path_with_shell_syntax_stays_one_word(tmp_path) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "pwned"
    image = f"/x/$(touch {marker}); touch {marker} `touch {marker}`.sif"
    script = templating.render_text("slurm", "doctor.sbatch.j2", image=image)
    exec_line = next(line for line in script.splitlines() if line.startswith("apptainer exec"))
    assert shlex.split(exec_line) == ["apptainer", "exec", image, "true"]
    # Run the script with a stand-in apptainer: nothing the value holds may execute.
    (tmp_path / "apptainer").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "apptainer").chmod(0o755)
    subprocess.run(
        ["sh", "-c", script],
        env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
        check=True,
        capture_output=True,
    )
    assert not marker.exists()


def test_undefined_values_are_errors_not_empty_strings() -> None:
    with pytest.raises(jinja2.UndefinedError):
        templating.render_text("slurm", "doctor.sbatch.j2")


def test_resources_are_found_from_a_checkout() -> None:
    assert (templating.resource_dir("slurm") / "devcluster").is_file()
    assert (templating.resource_dir("templates") / "README.md").is_file()


def test_every_step_kind_has_its_template_and_no_template_is_orphaned() -> None:
    steps = templating.resource_dir("templates") / "steps"
    for kind in StepKind:
        assert (steps.parent / kind.template).is_file(), kind
    rendered_by_steps = {path.name.removesuffix(".sh.j2") for path in steps.glob("*.sh.j2")}
    assert rendered_by_steps == {kind.value for kind in StepKind}
