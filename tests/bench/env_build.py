"""env_build: a requirements.txt repository (numpy, pandas, matplotlib)
built on a warm base with a warm download cache, next to the floor (pip
install of the same file into a fresh venv on the host, same warm cache)
and the naive peer (a full `apptainer build` from `Bootstrap: localimage`
of the same base with the same install, contained the same way).

Download caches are per repository (a build cannot change what another
repository's build installs): ``other_repo_seconds`` is the same packages
built for another repository (another env key), whose cache is cold.

Run: sudo .venv/bin/python -m tests.bench.env_build
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

from hpcbinder.images.builder import SCRATCH, Builder, cache_dir
from hpcbinder.images.store import BuildEvent
from hpcbinder.render import definition, pipeline
from hpcbinder.seams import apptainer
from tests.bench.common import copy_tree, make_repo, report, site_in, timed, workspace

REQUIREMENTS = "numpy==2.1.3\npandas==2.2.3\nmatplotlib==3.9.2\n"


def main() -> None:
    with workspace() as root:
        repo = make_repo(
            root / "repos" / "analysis", {"requirements.txt": REQUIREMENTS, "index.ipynb": "{}\n"}
        )
        spec = f"local/{quote(str(repo), safe='')}/main"
        site = site_in(root)
        other = make_repo(
            root / "repos" / "other",
            {"requirements.txt": f"# another repository\n{REQUIREMENTS}", "index.ipynb": "{}\n"},
        )
        other_spec = f"local/{quote(str(other), safe='')}/main"

        # Warm the base (page cache) and the download cache with a first build.
        warm = site_in(root, "warmup-store")
        Builder(warm).build_image(pipeline.prepare(spec, warm), ignore)

        seconds = timed(lambda: Builder(site).build_image(pipeline.prepare(spec, site), ignore))
        other_seconds = timed(
            lambda: Builder(site).build_image(pipeline.prepare(other_spec, site), ignore)
        )
        prepared = pipeline.prepare(spec, site)
        cache = cache_dir(site, prepared.rendered.env_key)
        assert cache is not None

        with tempfile.TemporaryDirectory() as tmp:
            cache_copy = Path(tmp) / "cache"
            copy_tree(cache / "pip", cache_copy)
            venv = Path(tmp) / "venv"
            env = {
                **os.environ,
                "PIP_CACHE_DIR": str(cache_copy),
                "PIP_CONFIG_FILE": os.devnull,
                "PIP_CERT": "/etc/ssl/certs/ca-certificates.crt",
                "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            }
            floor = timed(
                lambda: (
                    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True),
                    subprocess.run(
                        [
                            str(venv / "bin" / "python"),
                            "-m",
                            "pip",
                            "install",
                            "-q",
                            "-r",
                            str(repo / "requirements.txt"),
                        ],
                        check=True,
                        env=env,
                    ),
                )
            )

        naive_dir = root / "naive"
        (naive_dir / SCRATCH).mkdir(parents=True)
        (naive_dir / "naive.def").write_text(prepared.rendered.definition)
        subprocess.run(["chown", "-R", "hpcbuild:hpcbuild", str(naive_dir)], check=True)
        naive = timed(
            lambda: subprocess.run(
                [
                    "sudo",
                    "-n",
                    "-u",
                    "hpcbuild",
                    "--",
                    *apptainer.contained_build(
                        naive_dir / "naive.sif",
                        naive_dir / "naive.def",
                        binds=[apptainer.Bind(str(cache), definition.BUILD_CACHE_IN_IMAGE)],
                        workdir=naive_dir / SCRATCH,
                    ),
                ],
                cwd=prepared.checkout,
                check=True,
                stdout=subprocess.DEVNULL,
            )
        )

        report(
            "env_build",
            seconds=round(seconds, 2),
            other_repo_seconds=round(other_seconds, 2),
            floor_seconds=round(floor, 2),
            naive_seconds=round(naive, 2),
            vs_floor=round(seconds / floor, 2),
            vs_naive=round(seconds / naive, 3),
            target_vs_floor=1.5,
            target_vs_naive=0.25,
            packages=REQUIREMENTS.split(),
        )


def ignore(event: BuildEvent) -> None:
    del event


if __name__ == "__main__":
    main()
