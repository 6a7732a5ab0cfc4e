"""Definitions carry no repository text: every buildpack, fed hostile values
by hypothesis, renders a definition and an overlay script whose sections
are exactly the template's (by Apptainer's rule), holding none of the
repository's text; or it fails with a one-line UserError.

Hostile values hold what opens a section or a line anywhere: newline, CR,
'%', '%%setup', NUL, quotes, vertical tab, form feed, \\x1c-\\x1e, NEL
(\\x85) and the Unicode line and paragraph separators. Each carries
:data:`MARKER`, which may appear in a generated file the build reads, never
in the definition or the overlay script.

The two attacks of issue 21 (a Pipfile marker and a Dockerfile exec-form
ENTRYPOINT that opened a ``%setup`` section) are tests of their own here;
both rendered a ``%setup`` before.
"""

from __future__ import annotations

import json
import tempfile
import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpcbinder import buildpacks
from hpcbinder.errors import UserError
from hpcbinder.render import definition as render
from hpcbinder.render import pipeline, templating
from tests.repohelpers import git, local_spec, site_for_tests
from tests.unit.test_injection import PROPERTY, TEMPLATE_SECTIONS, apptainer_sections

MARKER = "PWNED"
BREAKS = ["\n", "\r", "\x00", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85"]
BREAKS += ["\u2028", "\u2029"]
TOKENS = [
    *BREAKS,
    "\r\n",
    "%",
    "%%setup",
    "%setup",
    "\n%%setup\n",
    f"touch /tmp/{MARKER}",
    MARKER,
    "'",
    '"',
    "\\",
    " ",
    "#",
    "$(id)",
    "==1.0",
    ">=",
    ";",
    "six",
    # Escapes: packaging reads marker strings as Python literals ("\\n" is a newline).
    "\\n",
    "\\r",
    "\\x00",
    "\\x0b",
    "\\x85",
    "\\u2028",
]
HOSTILE = st.lists(st.sampled_from(TOKENS), min_size=1, max_size=10).map(
    lambda parts: MARKER + "".join(parts)
)

Files = dict[str, str]


def render_files(files: Files) -> render.Rendered | None:
    """Detect and render a checkout holding ``files``; None if refused,
    which must be one UserError of one line."""
    with tempfile.TemporaryDirectory() as tmp:
        checkout = Path(tmp) / "repo"
        for name, text in files.items():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            (checkout / name).write_bytes(text.encode("utf-8", "surrogatepass"))
        try:
            plan = buildpacks.detect(checkout)
            return render.render_definition(plan, site_for_tests(Path(tmp)), checkout, "0" * 40)
        except UserError as exc:
            message = str(exc)
            assert len(message.splitlines()) == 1 and "\n" not in message, message
            return None


def assert_only_template_text(rendered: render.Rendered | None) -> None:
    if rendered is None:
        return
    assert apptainer_sections(rendered.definition) in TEMPLATE_SECTIONS, rendered.definition
    assert MARKER not in rendered.definition
    if rendered.overlay_script is not None:
        assert apptainer_sections(rendered.overlay_script) == []
        assert MARKER not in rendered.overlay_script
    # Line-based files the build reads hold one value a line, whole.
    for name, text in rendered.build_files.items():
        if name.endswith(".txt"):
            assert not any(c in text for c in BREAKS if c != "\n"), (name, text)


def toml(value: str) -> str:
    """``value`` as a TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(value)


def pipfile(name: str, version: str, markers: str, extra: str) -> Files:
    entry = f"{{version = {toml(version)}, markers = {toml(markers)}, extras = [{toml(extra)}]}}"
    return {"Pipfile": f"[packages]\n{toml(name)} = {entry}\nsix = {toml(version)}\n"}


def pipfile_lock(name: str, version: str, markers: str, digest: str) -> Files:
    entry = {"version": version, "markers": markers, "hashes": [f"sha256:{'a' * 64}", digest]}
    lock = {"_meta": {}, "default": {name: entry, "six": {**entry, "version": "==1.16.0"}}}
    return {"Pipfile.lock": json.dumps(lock)}


def dockerfile(run: str, env: str, entry: str, workdir: str) -> Files:
    text = (
        "FROM python:3.11-slim\n"
        f"RUN {run}\n"
        f"ENV X={env}\n"
        f"WORKDIR /srv/{workdir}\n"
        f"LABEL note={env}\n"
        f"ENTRYPOINT {json.dumps(['/bin/sh', '-c', entry])}\n"
        f"CMD {json.dumps([entry])}\n"
    )
    return {"Dockerfile": text, "data.txt": "x\n"}


#: Every configuration a repository may carry, each with hostile values
#: where its values go (four each; not every one uses all four).
BUILDPACKS: dict[str, Callable[[str, str, str, str], Files]] = {
    "requirements": lambda a, b, c, d: {"requirements.txt": f"{a}\n{b}\n-e {c}\n"},
    "pipfile": pipfile,
    "pipfile-attack-shape": lambda a, b, c, d: pipfile(
        "six", "*", f'python_version >= "3{a.replace(chr(34), "")}"', "socks"
    ),
    "pipfile.lock": pipfile_lock,
    "pipfile.lock-attack-shape": lambda a, b, c, d: pipfile_lock(
        "six", "==1.16.0", f'python_version >= "{b.replace(chr(34), "")}"', f"sha256:{'b' * 64}"
    ),
    "conda": lambda a, b, c, d: {
        "environment.yml": json.dumps({"dependencies": [f"python={a}", b, "r-base", {"pip": [c]}]}),
        "install.R": d,
    },
    "r": lambda a, b, c, d: {
        "runtime.txt": "r-2024-01-01\n",
        "install.R": a,
        "DESCRIPTION": f"Package: {b}\nImports: {c}\n",
    },
    "julia": lambda a, b, c, d: {
        "Project.toml": f"[compat]\njulia = {toml(a)}\n",
        "Manifest.toml": b,
    },
    "nix": lambda a, b, c, d: {"default.nix": a, "start": b},
    "dockerfile": dockerfile,
    "apt.txt": lambda a, b, c, d: {"apt.txt": f"{a}\n{b}\n", "postBuild": c, "start": d},
    "runtime.txt": lambda a, b, c, d: {"runtime.txt": a, "requirements.txt": "six\n"},
}


@pytest.mark.parametrize("buildpack", sorted(BUILDPACKS))
@given(values=st.tuples(HOSTILE, HOSTILE, HOSTILE, HOSTILE))
@PROPERTY
def test_every_buildpack_renders_only_template_text(
    buildpack: str, values: tuple[str, str, str, str]
) -> None:
    assert_only_template_text(render_files(BUILDPACKS[buildpack](*values)))


def test_every_buildpack_is_rendered_by_the_property() -> None:
    """The property's repositories reach every buildpack (benign values)."""
    detected = set()
    for make in BUILDPACKS.values():
        rendered = render_files(make("six", "==1.16.0", "six", "echo"))
        if rendered is not None:
            detected.add(rendered.definition.split("org.hpcbinder.buildpack ", 1)[1].split()[0])
    assert detected == {"python", "pipfile", "conda", "r", "julia", "nix", "dockerfile"}


@given(
    value=st.one_of(
        st.text(max_size=12), st.text(st.sampled_from([*BREAKS, "a", "%", " "]), max_size=12)
    )
)
@PROPERTY
def test_no_template_value_adds_a_line(value: str) -> None:
    """The renderer's rule, for every {{ }} of every template environment:
    a value with a control character or a line separator is refused, in
    one line; any other stays on its line."""
    refused = any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in value)
    for name in ("templates", "slurm"):
        template = templating.environment(name).from_string("a {{ v }} b\n")
        try:
            text = template.render(v=value)
        except templating.LineBreakError as exc:
            assert len(str(exc).splitlines()) == 1
            assert refused, value
            continue
        assert not refused, value
        assert text.splitlines() == [f"a {value} b"]


def test_apptainer_rule_finds_what_the_old_check_missed() -> None:
    """``%%setup`` is a %setup section to Apptainer (the old check read it
    as a section named ''); indented ``%`` lines and upper case count too."""
    text = "%post\n    %%setup\n\t%POST x\n  echo %x\n"
    assert render.sections(text) == ["post", "setup", "post"]
    assert apptainer_sections(text) == ["post", "setup", "post"]


# --- the attacks of issue 21 -------------------------------------------------

#: As the issue wrote it: escaped newlines, which packaging's marker parser
#: turns into real ones (it reads quoted marker values as Python literals).
ESCAPED_PAYLOAD = "\\n%%setup\\ntouch /tmp/hpcbinder-pwned\\n#"
PAYLOAD = "\n%%setup\ntouch /tmp/hpcbinder-pwned\n#"


def prepare(tmp_path: Path, files: Files) -> pipeline.Prepared:
    repo = tmp_path / "repo"
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "attack")
    return pipeline.prepare(local_spec(repo), site_for_tests(tmp_path))


def test_a_pipfile_marker_cannot_open_a_setup_section(tmp_path: Path) -> None:
    # A TOML literal string: the backslashes reach packaging as written.
    marker = f"'python_version >= \"3{ESCAPED_PAYLOAD}\"'"
    text = f'[packages]\nsix = {{version = "*", markers = {marker}}}\n'
    with pytest.raises(UserError) as caught:
        prepare(tmp_path, {"Pipfile": text, "apt.txt": "figlet\n"})
    message = str(caught.value)
    assert message.startswith("Pipfile: ") and "line break" in message, message
    assert len(message.splitlines()) == 1


def test_a_pipfile_lock_marker_cannot_open_a_setup_section(tmp_path: Path) -> None:
    entry = {"version": "==1.16.0", "hashes": [f"sha256:{'a' * 64}"]}
    entry["markers"] = f'python_version >= "3{ESCAPED_PAYLOAD}"'  # type: ignore[assignment]
    with pytest.raises(UserError) as caught:
        prepare(tmp_path, {"Pipfile.lock": json.dumps({"default": {"six": entry}})})
    assert str(caught.value).startswith("Pipfile.lock: ")
    assert len(str(caught.value).splitlines()) == 1


def test_a_dockerfile_exec_form_entrypoint_cannot_open_a_setup_section(tmp_path: Path) -> None:
    entry = json.dumps(["/bin/sh", "-c", f"true{PAYLOAD}"])
    dockerfile = f"FROM python:3.11-slim\nRUN true\nENTRYPOINT {entry}\n"
    try:
        prepared = prepare(tmp_path, {"Dockerfile": dockerfile})
    except UserError as exc:
        assert str(exc).startswith("Dockerfile: ") and len(str(exc).splitlines()) == 1
        return
    definition = prepared.rendered.definition
    assert apptainer_sections(definition) in TEMPLATE_SECTIONS, definition
    assert "hpcbinder-pwned" not in definition
