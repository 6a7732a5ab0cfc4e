"""Jinja2 environments for the text hpcbinder emits (sbatch scripts,
Apptainer definitions).

The templates live at the top of the repository (``slurm/``,
``templates/``) and ship inside the wheel as ``hpcbinder/slurm`` and
``hpcbinder/templates``; :func:`resource_dir` finds either. Every value a
template puts into shell goes through the ``shquote`` filter or was
validated with a full-match pattern before it got there; an undefined
variable is an error, never an empty string.

No value can add a line: every ``{{ }}`` expression passes
:func:`single_line` (the environments' ``finalize``), which refuses line
breaks and control characters, whatever the value and wherever it came
from. Apptainer opens a section at a line whose first word starts with
``%`` and sbatch reads ``#SBATCH`` lines, so a line is structure; only the
templates' own text (including what they ``include``) has more than one.
"""

from __future__ import annotations

import shlex
from functools import cache
from pathlib import Path
from typing import Literal

import jinja2

from hpcbinder import textpatterns
from hpcbinder.errors import UserError

ResourceName = Literal["slurm", "templates"]
#: The installed package (templates and slurm ship inside it) or the checkout's.
_PACKAGE = Path(__file__).resolve().parents[1]


def resource_dir(name: ResourceName) -> Path:
    """The directory of shipped ``name`` files, installed or in a checkout."""
    installed = _PACKAGE / name
    if installed.is_dir():
        return installed
    return _PACKAGE.parent / name


#: Control characters (C0, DEL, C1: NUL, \n, \r, \v, \f, \x1c-\x1e, \x85, ...) and
#: the Unicode line and paragraph separators: everything str.splitlines(),
#: Apptainer (\n) or a shell splits lines on, and everything else invisible.
_NOT_ONE_LINE = textpatterns.compile(r"[\x00-\x1f\x7f-\x9f\x{2028}\x{2029}]")


class LineBreakError(UserError):
    """A value would have added a line (or a control character) to
    generated text: a definition, a build script, a job script."""

    def __init__(self, where: str, value: str) -> None:
        super().__init__(
            f"{where}: {value[:60]!r} holds a line break or control character, "
            "which no value may carry into a definition or script"
        )


def single_line(value: object, where: str) -> str:
    """``value`` as text, if it is one line without control characters;
    else a :class:`LineBreakError` naming ``where`` it was going."""
    text = value if isinstance(value, str) else str(value)
    if _NOT_ONE_LINE.search(text):
        raise LineBreakError(where, text)
    return text


@jinja2.pass_context
def _finalize(context: jinja2.runtime.Context, value: object) -> str:
    """Every ``{{ }}`` value, checked (includes are the template's own text).
    A template of repository data names its file as ``value_source``."""
    return single_line(value, str(context.get("value_source") or context.name))


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
        finalize=_finalize,
    )
    env.filters["shquote"] = shell_quote
    return env


def render_text(name: ResourceName, template: str, **values: object) -> str:
    """Render ``template`` from the ``name`` resources with ``values``."""
    return environment(name).get_template(template).render(**values)
