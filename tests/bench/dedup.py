"""dedup: 10 concurrent `hpcbinder build` of one new repository. Figures:
how many builds ran (target 1), how many distinct images the 10 got
(target 1), and the wall time next to the floor, one build alone.

Run: sudo .venv/bin/python -m tests.bench.dedup
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

from tests.bench.common import make_repo, report, site_in, timed, workspace

CONCURRENT = 10


def main() -> None:
    with workspace() as root:
        repo = make_repo(root / "repos" / "analysis", {"requirements.txt": "six==1.16.0\n"})
        spec = f"local/{quote(str(repo), safe='')}/main"
        hpcbinder = str(Path(sys.executable).parent / "hpcbinder")

        alone_site = root / "alone.yaml"
        alone_site.write_text(site_in(root, "alone-store").model_dump_json())
        floor = timed(
            lambda: subprocess.run(
                [hpcbinder, "--site", str(alone_site), "build", spec],
                capture_output=True,
                check=True,
            )
        )

        site_file = root / "site.yaml"
        site_file.write_text(site_in(root).model_dump_json())
        start = time.monotonic()
        runs = [
            subprocess.Popen(
                [hpcbinder, "--site", str(site_file), "build", spec],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(CONCURRENT)
        ]
        outputs = [run.communicate(timeout=900) for run in runs]
        seconds = time.monotonic() - start
        first_phases = [
            err.split("] ", 1)[1].split(":", 1)[0] if "] " in err else "?" for _, err in outputs
        ]
        report(
            "dedup",
            requests=CONCURRENT,
            builds_run=first_phases.count("building"),
            distinct_images=len({out for out, _ in outputs}),
            failed=sum(run.returncode != 0 for run in runs),
            seconds=round(seconds, 2),
            floor_seconds=round(floor, 2),
            target_builds=1,
        )


if __name__ == "__main__":
    main()
