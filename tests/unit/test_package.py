"""The wheel: what a site installs carries its templates and Slurm scripts,
and the command it names."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import hpcbinder
from tests.conftest import REPO


def test_wheel_ships_templates_slurm_scripts_and_the_command(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("hpcbinder-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "hpcbinder/slurm/devcluster" in names
    assert "hpcbinder/slurm/doctor.sbatch.j2" in names
    assert "hpcbinder/templates/README.md" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "hpcbinder = hpcbinder.cli.main:main" in text
    assert wheel.name.startswith(f"hpcbinder-{hpcbinder.__version__}-")
