"""R repositories: runtime.txt ``r-[X.Y-]YYYY-MM-DD``, DESCRIPTION, install.R.

R and IRkernel come from the base image's Debian (a mirror the site already
runs); runtime.txt's R version picks among the site's bases by the R each
declares (``bases.NAME.r``, policy ``r_policy``). Packages come from the
site's CRAN mirror pinned to the runtime.txt snapshot date, so a rebuild
installs the same versions, and a package that cannot be installed fails
the build (R itself only warns; see templates/steps/r-build-profile.R).
"""

from __future__ import annotations

import datetime
from typing import Any

from hpcbinder.buildpacks.base import Step, StepKind, in_image
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

    def r_version(self) -> str | None:
        runtime = self.runtime
        if runtime is None or runtime.name != "r" or runtime.version is None:
            return None
        major, minor, *patch = runtime.version.split(".")
        if patch:
            self.warn(
                f"{self.repo.path('runtime.txt')}: bases are chosen by R's minor version; "
                f"R {runtime.version} is treated as {major}.{minor}"
            )
        return f"{major}.{minor}"

    def _cran(self) -> dict[str, Any]:
        """The snapshot the build installs from, and where its date comes
        from (for the message that names the mirror when an install fails)."""
        runtime = self.runtime
        if runtime is not None and runtime.date is not None:
            return {"snapshot": runtime.date, "snapshot_source": "date from runtime.txt"}
        age = DEFAULT_SNAPSHOT_AGE.days
        return {
            "snapshot": (datetime.date.today() - DEFAULT_SNAPSHOT_AGE).isoformat(),
            "snapshot_source": f"no date in runtime.txt: {age} days before the build",
        }

    def env_files(self) -> list[str]:
        files = super().env_files()
        if self.repo.has("install.R"):
            files.append(self.repo.path("install.R"))
        return files

    def env_steps(self) -> list[Step]:
        steps = [*super().env_steps(), Step(StepKind.R_SETUP, self._cran())]
        if self.repo.has("install.R"):
            file = in_image(self.repo.path("install.R"))
            steps.append(
                Step(StepKind.R_INSTALL_SCRIPT, {"file": file, "conda": False, **self._cran()})
            )
        return steps

    def repo_steps(self) -> list[Step]:
        if self.repo.has_top_level("DESCRIPTION"):
            return [Step(StepKind.R_DESCRIPTION, self._cran()), *super().repo_steps()]
        return super().repo_steps()
