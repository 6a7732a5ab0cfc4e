"""Property tests: no value from a spec, a ref or a repository file can add a
command or a section to a definition.

Hypothesis writes hostile refs, specs, apt.txt lines, Dockerfile lines and
file names (shell metacharacters, newlines, '%' section markers). Each
either fails with a one-line UserError, or renders a definition whose
sections are exactly the template's (by Apptainer's own rule, see
:func:`apptainer_sections`), whose %post parses under ``bash -n``, and
whose apt step installs exactly the accepted package names.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcbinder.config import RepoPolicy
from hpcbinder.errors import UserError
from hpcbinder.render import pipeline
from hpcbinder.sources.providers import parse_spec
from tests.repohelpers import git, local_spec, site_for_tests

TOKENS = [*"ab-._/%:;|&$`'\"\\()<>{}*?!#~= \n\t\r", "%post", "%runscript", "\n%files\n", "$(id)"]
HOSTILE = st.lists(st.sampled_from(TOKENS), max_size=16).map("".join)
PACKAGE_LIKE = st.from_regex(r"[a-z0-9][a-z0-9.+-]{0,12}", fullmatch=True)
#: Apptainer's rule (pkg/build/types/parser/deffile.go): a line (lines end at
#: \n only) whose first word starts with '%' opens a section, named by the
#: word without all its leading '%', in lower case: '%%SETUP' is 'setup'.
#: Python's \s holds every space Go's unicode.IsSpace does (and \x1c-\x1f),
#: so this finds every section Apptainer would, and maybe more.
SECTION_LINE = re.compile(r"\s*%+(\S*)")
PROPERTY = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def apptainer_sections(text: str) -> list[str]:
    """The sections Apptainer would read in ``text``, in order."""
    return [m.group(1).lower() for line in text.split("\n") if (m := SECTION_LINE.match(line))]


def post_section(definition: str) -> str:
    return definition.split("\n%post\n", 1)[1].split("\n%runscript\n", 1)[0]


TEMPLATE_SECTIONS = (
    ["labels", "setup", "environment", "post", "runscript"],
    ["labels", "files", "setup", "environment", "post", "runscript"],
)


def assert_parses(script: str) -> None:
    checked = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert checked.returncode == 0, (checked.stderr, script)


def assert_well_formed(definition: str) -> None:
    sections = apptainer_sections(definition)
    assert sections in TEMPLATE_SECTIONS, sections
    for line in definition.split("\n"):
        assert not line.lstrip().startswith("%") or line.startswith("%"), line
    for part in (post_section(definition), definition.split("\n%runscript\n", 1)[1]):
        assert_parses(part)


@given(ref=HOSTILE)
@PROPERTY
def test_refs_are_refused_or_plain(ref: str) -> None:
    try:
        provider = parse_spec(f"gh/org/repo/{ref}", RepoPolicy())
    except UserError as exc:
        assert "\n" not in str(exc).replace(repr(ref), "")
        return
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._/+@-]*", provider.ref)
    assert provider.url == "https://github.com/org/repo"


@given(body=HOSTILE)
@PROPERTY
def test_git_urls_are_refused_or_plain(body: str) -> None:
    for provider_name in ("git", "gl", "local"):
        try:
            provider = parse_spec(
                f"{provider_name}/{body}/main", RepoPolicy(local_roots=[Path("/")])
            )
        except UserError:
            continue
        assert not re.search(r"[\s;|&`$()'\"<>\\]", provider.url), provider.url
        assert not provider.url.startswith("-")


def _repo_with(files: dict[str, str]) -> tuple[Path, tempfile.TemporaryDirectory[str]]:
    tmp = tempfile.TemporaryDirectory()
    repo = Path(tmp.name) / "repo"
    repo.mkdir()
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "hostile")
    return repo, tmp


@given(lines=st.lists(st.one_of(HOSTILE, PACKAGE_LIKE), max_size=6))
@PROPERTY
def test_apt_lines_become_exactly_their_packages(lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    repo, tmp = _repo_with({"apt.txt": text, "postBuild": "#!/bin/sh\ntrue\n"})
    with tmp:
        try:
            prepared = pipeline.prepare(local_spec(repo), site_for_tests(Path(tmp.name)))
        except UserError as exc:
            assert re.match(r"apt\.txt:\d+: .* is not a package name$", str(exc))
            return
        definition = prepared.rendered.definition
        assert_well_formed(definition)
        assert_parses(prepared.rendered.overlay_script or "")
        accepted = sorted({line.partition("#")[0].strip() for line in text.splitlines()} - {""})
        install = [ln for ln in definition.splitlines() if "apt-get install" in ln]
        if accepted:
            # The names reach the build as a file apt reads, one a line.
            (line,) = install
            assert shlex.split(line) == [
                "xargs",
                "-a",
                "/mnt/hpcbinder-generated/apt-packages.txt",
                *["apt-get", "install", "-y", "-q", "--no-install-recommends"],
            ]
            assert prepared.rendered.build_files["apt-packages.txt"].split("\n") == [
                *accepted,
                "",
            ]
        else:
            assert install == []


@given(run=HOSTILE, env=HOSTILE)
@PROPERTY
def test_dockerfile_lines_cannot_open_sections(run: str, env: str) -> None:
    dockerfile = f"FROM python:3.11-slim\nRUN {run}\nENV X={env}\nRUN echo ok\n"
    repo, tmp = _repo_with({"Dockerfile": dockerfile})
    with tmp:
        try:
            prepared = pipeline.prepare(local_spec(repo), site_for_tests(Path(tmp.name)))
        except UserError:
            return
        sections = apptainer_sections(prepared.rendered.definition)
        assert sections in TEMPLATE_SECTIONS, sections


@given(name=HOSTILE)
@PROPERTY
def test_odd_file_names_never_reach_the_definition(name: str) -> None:
    safe = name.replace("/", "_").replace("\x00", "")
    if safe.strip() in ("", ".", "..") or safe.startswith(".git"):
        return
    repo, tmp = _repo_with(
        {
            f"binder/{safe}": "x\n",
            "binder/requirements.txt": "six\n",
            "binder/postBuild": "#!/bin/sh\ntrue\n",
        }
    )
    with tmp:
        prepared = pipeline.prepare(local_spec(repo), site_for_tests(Path(tmp.name)))
        definition = prepared.rendered.definition
        assert_well_formed(definition)
        files = definition.split("\n%files\n", 1)[1].split("\n\n", 1)[0].splitlines()
        assert [line.strip() for line in files] == [
            "binder/requirements.txt /opt/hpcbinder/env/binder/requirements.txt",
            ". /srv/repo",
        ]


def test_binder_dir_linking_outside_the_repository_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "requirements.txt").write_text("secret\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "binder").symlink_to(outside)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "link")
    try:
        pipeline.prepare(local_spec(repo), site_for_tests(tmp_path))
    except UserError as exc:
        assert "outside the repository" in str(exc)
    else:
        raise AssertionError("a binder/ link outside the repository was followed")
