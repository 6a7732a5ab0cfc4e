"""env_build: a requirements.txt repository (numpy, pandas, matplotlib)
built on a warm base with a warm download cache, next to the floor (uv,
the installer builds use and the fastest known, installing the same file
into a fresh venv on the host from a copy of the same warm cache) and the
naive peer (a full `apptainer build` from `Bootstrap: localimage`
of the same base with the same install, contained the same way).

Download caches are per env key (a build cannot change what another
environment's build installs): ``other_repo_seconds`` is the same packages
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
from hpcbinder.images.store import BuildEvent, image_store
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

        # Warm the base (page cache) and the key's download cache with a
        # first build, then remove its image: a store's base path is part of
        # the env key, so only a build in this same store warms its cache.
        first = Builder(site).build_image(pipeline.prepare(spec, site), ignore)
        assert image_store(site).remove(first.key)

        seconds = timed(lambda: Builder(site).build_image(pipeline.prepare(spec, site), ignore))
        other_seconds = timed(
            lambda: Builder(site).build_image(pipeline.prepare(other_spec, site), ignore)
        )
        prepared = pipeline.prepare(spec, site)
        cache = cache_dir(site, prepared.rendered.env_key)
        assert cache is not None

        with tempfile.TemporaryDirectory() as tmp:
            cache_copy = Path(tmp) / "cache"
            copy_tree(cache / "uv", cache_copy)
            venv = Path(tmp) / "venv"
            uv = str(Path(sys.executable).parent / "uv")
            env = {
                **os.environ,
                "UV_CACHE_DIR": str(cache_copy),
                "UV_NO_CONFIG": "1",
                "UV_LINK_MODE": "copy",  # as builds do
                "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt",
            }
            python = str(venv / "bin" / "python")
            requirements = str(repo / "requirements.txt")
            floor = timed(
                lambda: (
                    subprocess.run(
                        [uv, "venv", "-q", "--python", sys.executable, str(venv)],
                        check=True,
                        env=env,
                    ),
                    subprocess.run(
                        [uv, "pip", "install", "-q", "--python", python, "-r", requirements],
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
