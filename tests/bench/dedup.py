"""dedup: 10 concurrent `hpcbinder build` of one new repository by
researchers, half through each of two build servers sharing one store (two
build hosts). Figures: how many builds ran (target 1), how many distinct
images the 10 got (target 1), and the wall time next to the floor, one
build alone through one server in a store of its own.

Run: sudo .venv/bin/python -m tests.bench.dedup [--quick]
"""

from __future__ import annotations

import re
import subprocess
import time

from tests.bench.common import (
    build_argv,
    build_servers,
    make_repo,
    quick,
    report,
    run_build,
    workspace,
)

#: The builder's own first line of a build it runs (a build server that
#: follows another's build relays that line after "following it").
_BUILDS = re.compile(r"\]\s+building [0-9a-f]{32} \(")
FILES = {"requirements.txt": "six==1.16.0\n"}


def main() -> None:
    concurrent = 4 if quick() else 10
    with workspace("dedup-alone") as root, build_servers(root) as (site,):
        spec = make_repo(root / "repos" / "analysis", FILES)
        floor = run_build(site, spec)
    with workspace("dedup") as root, build_servers(root, 2) as sites:
        spec = make_repo(root / "repos" / "analysis", FILES)
        start = time.monotonic()
        runs = [
            subprocess.Popen(
                build_argv(sites[index % 2], spec, ("alice", "bob")[index // 2 % 2]),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for index in range(concurrent)
        ]
        outputs = [run.communicate(timeout=900) for run in runs]
        seconds = time.monotonic() - start
    built_on = {
        index % 2
        for index, (_, err) in enumerate(outputs)
        if _BUILDS.search(err) and "following it" not in err
    }
    report(
        "dedup",
        requests=concurrent,
        builds_run=len(built_on),
        distinct_images=len({out for out, _ in outputs}),
        failed=sum(run.returncode != 0 for run in runs),
        seconds=round(seconds, 2),
        floor_seconds=round(floor.seconds, 2),
        floor_phases=floor.phases,
        target_builds=1,
    )


if __name__ == "__main__":
    main()
