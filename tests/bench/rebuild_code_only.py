"""rebuild_code_only: a second commit that changes only a notebook, from
the request (`hpcbinder build`, a researcher's, through a build server of
the benchmark's site) to the image path; no build may run. The floor is what
any launcher must do for a new commit anyway: list the refs and fetch the
commit.

Run: sudo .venv/bin/python -m tests.bench.rebuild_code_only [--quick]
"""

from __future__ import annotations

import subprocess

from tests.bench.common import build_servers, commit, make_repo, report, run_build, timed, workspace


def main() -> None:
    with workspace("rebuild") as root, build_servers(root) as (site,):
        repo = root / "repos" / "analysis"
        spec = make_repo(repo, {"requirements.txt": "six==1.16.0\n"})
        first = run_build(site, spec)
        (repo / "index.ipynb").write_text('{"cells": ["a new analysis"]}\n')
        commit(repo, "notebook only")
        second = run_build(site, spec)

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
            seconds=round(second.seconds, 3),
            phases=second.phases,
            floor_seconds=round(floor, 3),
            builds_run=int("lock_and_stage" in second.phases),
            same_image=first.key == second.key,
            target_builds=0,
        )


if __name__ == "__main__":
    main()
