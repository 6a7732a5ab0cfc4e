"""What a notebook declares, read before anything is submitted.

papermill only warns about a parameter the notebook does not declare and
runs on with the default; a batch run with a misspelt parameter would then
look complete and be wrong. So the names a run passes are checked against
the notebook's ``parameters`` cell first.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

from hpcbinder import textpatterns
from hpcbinder.errors import UserError

PARAMETERS_TAG = "parameters"
#: An assignment in an R notebook's parameters cell (``alpha <- 1``, ``n = 3``).
_R_ASSIGNMENT = textpatterns.compile(r"\s*([A-Za-z.][A-Za-z0-9._]*)\s*(?:<-|=(?:[^=]|$))")


class NotebookError(UserError):
    """A notebook that cannot be run as asked."""


def _cell_names(source: str) -> set[str]:
    # IPython magics and shell escapes are not Python; they declare nothing.
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    tree = ast.parse("\n".join(lines))
    names: set[str] = set()
    for node in tree.body:
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        for target in targets:
            elements = target.elts if isinstance(target, ast.Tuple) else [target]
            names.update(e.id for e in elements if isinstance(e, ast.Name))
    return names


def _r_cell_names(source: str) -> set[str]:
    return {m.group(1) for line in source.splitlines() if (m := _R_ASSIGNMENT.match(line))}


def declared_parameters(path: Path, shown: str) -> set[str] | None:
    """The names assigned in the notebook's cell tagged ``parameters``, or
    None when it has no such cell. ``shown`` names the notebook in errors."""
    try:
        document = json.loads(path.read_text())
        cells = document["cells"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NotebookError(f"{shown}: not a notebook this can read ({exc})") from exc
    for cell in cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if cell.get("cell_type") == "code" and PARAMETERS_TAG in tags:
            source = cell.get("source", "")
            text = "".join(source) if isinstance(source, list) else str(source)
            kernel = document.get("metadata", {}).get("kernelspec", {})
            if str(kernel.get("language", "")).lower() == "r":
                return _r_cell_names(text)
            try:
                return _cell_names(text)
            except SyntaxError as exc:
                raise NotebookError(
                    f"{shown}: its parameters cell is not Python (line {exc.lineno})"
                ) from exc
    return None


def check_parameters(path: Path, shown: str, names: set[str]) -> None:
    """Refuse parameters the notebook does not declare, naming them."""
    if not names:
        return
    declared = declared_parameters(path, shown)
    if declared is None:
        raise NotebookError(
            f"{shown} has no cell tagged 'parameters', so it takes no parameters "
            f"(got {', '.join(sorted(names))})"
        )
    unknown = sorted(names - declared)
    if unknown:
        raise NotebookError(
            f"{shown} does not declare parameter {unknown[0]!r} "
            f"(its parameters: {', '.join(sorted(declared)) or 'none'})"
        )
