"""R repositories: runtime.txt ``r-[X.Y-]YYYY-MM-DD``, DESCRIPTION, install.R.

R and IRkernel come from the base image's Debian (a mirror the site already
runs); packages come from the site's CRAN mirror pinned to the runtime.txt
snapshot date, so a rebuild installs the same versions.
"""

from __future__ import annotations

import datetime

from hpcbinder.buildpacks.base import Step, in_image
from hpcbinder.buildpacks.python import PythonBuildPack

#: How old the CRAN snapshot is when only a DESCRIPTION file asks for R.
DEFAULT_SNAPSHOT_AGE = datetime.timedelta(days=2)


class RBuildPack(PythonBuildPack):
    name = "r"

    def detect(self) -> bool:
        runtime = self.runtime
        if runtime is not None and runtime.name == "r":
            return True
        return self.repo.has_top_level("DESCRIPTION")

    def snapshot_date(self) -> str:
        runtime = self.runtime
        if runtime is not None and runtime.date is not None:
            return runtime.date
        return (datetime.date.today() - DEFAULT_SNAPSHOT_AGE).isoformat()

    def env_files(self) -> list[str]:
        files = super().env_files()
        if self.repo.has("install.R"):
            files.append(self.repo.path("install.R"))
        return files

    def env_steps(self) -> list[Step]:
        runtime = self.runtime
        version = runtime.version if runtime is not None else None
        if version is not None:
            self.warn(
                f"runtime.txt asks for R {version}; this site installs the R of its base "
                "image's Debian release (the build log shows which)"
            )
        steps = [*super().env_steps(), Step("r-setup", {"snapshot": self.snapshot_date()})]
        if self.repo.has("install.R"):
            steps.append(
                Step(
                    "r-install-script",
                    {"file": in_image(self.repo.path("install.R")), "conda": False},
                )
            )
        return steps

    def repo_steps(self) -> list[Step]:
        if self.repo.has_top_level("DESCRIPTION"):
            return [Step("r-description"), *super().repo_steps()]
        return super().repo_steps()
