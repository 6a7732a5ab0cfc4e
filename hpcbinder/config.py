"""The site file: everything a sysadmin configures, in one validated YAML file.

Every field has a default that matches the dev cluster (``slurm/devcluster``),
so hpcbinder runs on one machine with no site file at all. A site writes
only what differs. Validation is strict (unknown keys are errors) and every
error names its place in the file, e.g. ``partitions.gpu.max_time: expected
[D-]HH:MM:SS``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

#: Where a site's file is looked for when neither --site nor $HPCBINDER_SITE names one.
SYSTEM_SITE_FILE = Path("/etc/hpcbinder/site.yaml")
SITE_ENV = "HPCBINDER_SITE"

_SLURM_TIME = re.compile(r"(?:(\d+)-)?(\d{1,2}):([0-5]\d):([0-5]\d)")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ACCOUNT = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def _slurm_time(value: str) -> str:
    if not _SLURM_TIME.fullmatch(value):
        raise ValueError("expected [D-]HH:MM:SS")
    return value


def _name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError("expected letters, digits, '_', '.' or '-' (at most 64)")
    return value


def _account(value: str) -> str:
    if not _ACCOUNT.fullmatch(value):
        raise ValueError("expected a Unix account name")
    return value


SlurmTime = Annotated[str, AfterValidator(_slurm_time)]
Name = Annotated[str, AfterValidator(_name)]
Account = Annotated[str, AfterValidator(_account)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Partition(_Strict):
    """A Slurm partition hpcbinder may submit to, with the site's limits."""

    max_time: SlurmTime = "08:00:00"


class BuildSettings(_Strict):
    """Where and as whom images are built."""

    account: Account = "hpcbuild"
    partition: Name = "build"


class BaseImage(_Strict):
    """A site base image: OS + Python + Jupyter, shared by every repo image."""

    python: Annotated[str, Field(pattern=r"^3\.\d{1,2}$")] = "3.11"


def _default_partitions() -> dict[str, Partition]:
    return {
        "interactive": Partition(max_time="08:00:00"),
        "batch": Partition(max_time="2-00:00:00"),
        "build": Partition(max_time="04:00:00"),
    }


class Site(_Strict):
    """A whole site file."""

    image_store: Path = Path("/var/lib/hpcbinder/images")
    build: BuildSettings = BuildSettings()
    partitions: dict[Name, Partition] = Field(default_factory=_default_partitions)
    default_partition: Name = "interactive"
    bases: dict[Name, BaseImage] = Field(default_factory=lambda: {"default": BaseImage()})
    default_base: Name = "default"

    def base_image_path(self, name: str) -> Path:
        """Where the store keeps the built base image ``name``."""
        return self.image_store / "bases" / f"{name}.sif"

    @model_validator(mode="after")
    def _defaults_exist(self) -> Site:
        # Messages carry their own path: a model-level check has no location.
        if self.default_partition not in self.partitions:
            raise ValueError(
                f"default_partition: {self.default_partition!r} is not one of partitions"
            )
        if self.default_base not in self.bases:
            raise ValueError(f"default_base: {self.default_base!r} is not one of bases")
        return self


class SiteConfigError(ValueError):
    """The site file cannot be used; ``problems`` lists each as 'path: message'."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


def _problems(error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown setting"
        location = ".".join(str(part) for part in item["loc"])
        problems.append(f"{location}: {message}" if location else message)
    return problems


def parse_site(text: str, source: str = "<site>") -> Site:
    """Validate the YAML ``text`` of a site file."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SiteConfigError(source, [f"{where}not valid YAML ({problem})"]) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SiteConfigError(source, ["(top level): expected a mapping of settings"])
    try:
        return Site.model_validate(data)
    except ValidationError as exc:
        raise SiteConfigError(source, _problems(exc)) from exc


def load_site(path: Path | None = None) -> Site:
    """The site in force: ``path``, else $HPCBINDER_SITE, else
    /etc/hpcbinder/site.yaml if it exists, else the dev cluster's defaults."""
    if path is None and os.environ.get(SITE_ENV):
        path = Path(os.environ[SITE_ENV])
    if path is None and SYSTEM_SITE_FILE.exists():
        path = SYSTEM_SITE_FILE
    if path is None:
        return Site()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SiteConfigError(str(path), [f"cannot read: {exc.strerror}"]) from exc
    return parse_site(text, str(path))
