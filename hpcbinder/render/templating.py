"""Jinja2 environments for the text hpcbinder emits (sbatch scripts,
Apptainer definitions).

The templates live at the top of the repository (``slurm/``,
``templates/``) and ship inside the wheel as ``hpcbinder/slurm`` and
``hpcbinder/templates``; :func:`resource_dir` finds either. Every value a
template puts into shell goes through the ``shquote`` filter or was
validated with a full-match pattern before it got there; an undefined
variable is an error, never an empty string.
"""

from __future__ import annotations

import shlex
from functools import cache
from pathlib import Path
from typing import Literal

import jinja2

ResourceName = Literal["slurm", "templates"]
#: The installed package (templates and slurm ship inside it) or the checkout's.
_PACKAGE = Path(__file__).resolve().parents[1]


def resource_dir(name: ResourceName) -> Path:
    """The directory of shipped ``name`` files, installed or in a checkout."""
    installed = _PACKAGE / name
    if installed.is_dir():
        return installed
    return _PACKAGE.parent / name


def shell_quote(value: object) -> str:
    """``value`` as one shell word."""
    return shlex.quote(str(value))


@cache
def environment(name: ResourceName) -> jinja2.Environment:
    """The environment loading ``name`` templates (shell and definition text)."""
    # Shell and definition text, not HTML: escaping is shquote's job.
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(resource_dir(name)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # noqa: S701
    )
    env.filters["shquote"] = shell_quote
    return env


def render_text(name: ResourceName, template: str, **values: object) -> str:
    """Render ``template`` from the ``name`` resources with ``values``."""
    return environment(name).get_template(template).render(**values)
