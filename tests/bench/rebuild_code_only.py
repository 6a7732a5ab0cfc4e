"""rebuild_code_only: a second commit that changes only a notebook, from
the request (`hpcbinder build`) to the image path; no build may run. The
floor is what any launcher must do for a new commit anyway: list the refs
and fetch the commit.

Run: sudo .venv/bin/python -m tests.bench.rebuild_code_only
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

from tests.bench.common import commit, make_repo, report, site_in, timed, workspace


def main() -> None:
    with workspace() as root:
        repo = make_repo(
            root / "repos" / "analysis",
            {"requirements.txt": "six==1.16.0\n", "index.ipynb": "{}\n"},
        )
        site_file = root / "site.yaml"
        site_file.write_text(site_in(root).model_dump_json())
        spec = f"local/{quote(str(repo), safe='')}/main"
        cli = [
            str(Path(sys.executable).parent / "hpcbinder"),
            "--site",
            str(site_file),
            "build",
            spec,
        ]
        first = subprocess.run(cli, capture_output=True, text=True, check=True)
        (repo / "index.ipynb").write_text('{"cells": ["a new analysis"]}\n')
        commit(repo, "notebook only")
        second: list[subprocess.CompletedProcess[str]] = []
        seconds = timed(
            lambda: second.append(subprocess.run(cli, capture_output=True, text=True, check=True))
        )
        builds = second[0].stderr.count(" building: ")

        scratch = root / "floor"
        floor = timed(
            lambda: (
                subprocess.run(
                    ["git", "ls-remote", f"file://{repo}"], capture_output=True, check=True
                ),
                subprocess.run(["git", "init", "-q", str(scratch)], check=True),
                subprocess.run(
                    [
                        "git",
                        "-C",
                        str(scratch),
                        "fetch",
                        "-q",
                        "--depth=1",
                        f"file://{repo}",
                        "main",
                    ],
                    check=True,
                ),
            )
        )
        report(
            "rebuild_code_only",
            seconds=round(seconds, 3),
            floor_seconds=round(floor, 3),
            builds_run=builds,
            same_image=first.stdout == second[0].stdout,
            target_builds=0,
        )


if __name__ == "__main__":
    main()
