"""env_build: a requirements.txt repository (numpy, pandas, matplotlib)
built on a warm base with a warm download cache, by a researcher through a
build server of the benchmark's site, per phase (``phases``, from the
build's progress lines; see common.build_phases), next to the floor (uv,
the installer builds use and the fastest known, installing the same file
into a fresh venv on the host from a copy of the same warm cache) and the
naive peer (a full `apptainer build` from `Bootstrap: localimage`
of the same base with the same install, contained the same way).

Download caches are per env key (a build cannot change what another
environment's build installs): ``other_repo_seconds`` is the same packages
built for another repository (another env key), whose cache is cold.
The quick mode installs one small package instead.

Run: sudo .venv/bin/python -m tests.bench.env_build [--quick]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from hpcbinder.images.builder import SCRATCH, cache_dir
from hpcbinder.images.store import image_store
from hpcbinder.render import definition, pipeline
from hpcbinder.seams import apptainer
from tests.bench.common import (
    build_servers,
    make_repo,
    quick,
    report,
    run_build,
    timed,
    workspace,
)
from tests.storehelpers import workspace_site

REQUIREMENTS = "numpy==2.1.3\npandas==2.2.3\nmatplotlib==3.9.2\n"
#: The quick mode's: one small package, every step the same.
QUICK_REQUIREMENTS = "six==1.16.0\n"


def main() -> None:
    requirements_txt = QUICK_REQUIREMENTS if quick() else REQUIREMENTS
    with workspace("env-build") as root, build_servers(root) as (site_file,):
        site = workspace_site(root, cache_dir=str(root / "cache"))
        repo = root / "repos" / "analysis"
        spec = make_repo(repo, {"requirements.txt": requirements_txt, "index.ipynb": "{}\n"})
        other_spec = make_repo(
            root / "repos" / "other",
            {
                "requirements.txt": f"# another repository\n{requirements_txt}",
                "index.ipynb": "{}\n",
            },
        )

        # Warm the base (page cache) and the key's download cache with a
        # first build, then remove its image: a store's base path is part of
        # the env key, so only a build in this same store warms its cache.
        first = run_build(site_file, spec)
        assert image_store(site).remove(first.key)

        warm = run_build(site_file, spec)
        other = run_build(site_file, other_spec)
        prepared = pipeline.prepare(spec, site)
        cache = cache_dir(site, prepared.rendered.env_key)
        assert cache is not None

        with tempfile.TemporaryDirectory() as tmp:
            cache_copy = Path(tmp) / "cache"
            shutil.copytree(cache / "uv", cache_copy, symlinks=True)
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
            seconds=round(warm.seconds, 2),
            phases=warm.phases,
            other_repo_seconds=round(other.seconds, 2),
            floor_seconds=round(floor, 2),
            naive_seconds=round(naive, 2),
            vs_floor=round(warm.seconds / floor, 2),
            vs_naive=round(warm.seconds / naive, 3),
            target_vs_floor=1.5,
            target_vs_naive=0.25,
            packages=requirements_txt.split(),
        )


if __name__ == "__main__":
    main()
