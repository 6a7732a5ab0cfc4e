"""A Dockerfile's COPY and ADD sources become ``%files`` lines, which
Apptainer copies from the build host as the build account: only plain paths
inside the repository may get there. Everything else is refused before any
build, in one line naming the Dockerfile line.

Each repository here is a real git repository fetched through
``pipeline.prepare``, as a build would see it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpcbinder.buildpacks.base import RepoFiles
from hpcbinder.buildpacks.dockerfile import DockerfileBuildPack
from hpcbinder.errors import RepoConfigError, UserError
from hpcbinder.render import pipeline
from tests.repohelpers import git, local_spec, site_for_tests
from tests.unit.test_injection import PROPERTY

FROM = "FROM python:3.11-slim\n"  # site_for_tests maps it to a site base


def make_repo(root: Path, files: dict[str, str], links: dict[str, str] | None = None) -> Path:
    """A committed repository under ``root`` with ``files`` and ``links``
    (path in the repository → link target, as git stores it)."""
    repo = root / "repo"
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    for name, target in (links or {}).items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, repo / name)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "fixture")
    return repo


def files_section(definition: str) -> list[tuple[str, str]]:
    """The (source, target) pairs of a definition's %files section."""
    if "\n%files\n" not in definition:
        return []
    section = definition.split("\n%files\n", 1)[1].split("\n%", 1)[0]
    return [(line.split()[0], line.split()[1]) for line in section.splitlines() if line.strip()]


def prepare_error(tmp_path: Path, dockerfile: str) -> str:
    repo = make_repo(tmp_path, {"Dockerfile": dockerfile, "data.txt": "data\n"})
    with pytest.raises(UserError) as caught:
        pipeline.prepare(local_spec(repo), site_for_tests(tmp_path))
    return str(caught.value)


OUTSIDE = "is outside the repository; use a path inside it"
HOSTILE = {
    "absolute": ("COPY /home/hpcbuild/.ssh/id_ed25519 /x", OUTSIDE),
    "absolute-glob": ("COPY /home/*/.ssh/* /keys/", OUTSIDE),
    "parent": ("COPY ../secret /y", OUTSIDE),
    "parent-inside-path": ("COPY data/../../secret /y", OUTSIDE),
    "json-absolute": ('COPY ["/etc/shadow", "/s"]', OUTSIDE),
    "json-with-flag": ('COPY --chown=1000 ["data.txt", "../x", "/dir/"]', OUTSIDE),
    "second-source": ("COPY data.txt /etc/passwd /dir/", OUTSIDE),
    "add-url": ("ADD http://example.org/key /k", "is a URL; download it in a RUN step"),
    "add-https-url": ("ADD https://example.org/key /k", "is a URL"),
    "add-git": ("ADD git@github.com:org/repo.git /r", "is a URL"),
    "other-stage": ("COPY --from=builder /etc/passwd /p", "multi-stage COPY --from"),
    "other-image": ("COPY --from=debian:12 /etc/passwd /p", "multi-stage COPY --from"),
    "unknown-flag": ("COPY --parents data.txt /p/", "--parents is not supported"),
    "variable": ("COPY $HOME/.ssh/id_rsa /x", "has characters this site does not accept"),
    "wildcard": ("COPY *.txt /app/", "wildcards in sources are not supported"),
    "missing": ("COPY nothing.txt /x", "source nothing.txt does not exist in the repository"),
    "no-target": ("COPY data.txt", "needs a source and a destination"),
    "bad-json": ('COPY ["data.txt", 5]', "cannot read the JSON list"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_sources_are_refused_naming_the_line(tmp_path: Path, case: str) -> None:
    instruction, expected = HOSTILE[case]
    keyword = instruction.split()[0]
    message = prepare_error(tmp_path, f"{FROM}RUN true\n\n{instruction}\nRUN true\n")
    assert message.startswith(f"Dockerfile:4: {keyword}: "), message
    assert expected in message
    assert "\n" not in message


def test_the_line_is_where_a_continued_instruction_starts(tmp_path: Path) -> None:
    message = prepare_error(tmp_path, f"{FROM}COPY data.txt \\\n  /home/hpcbuild/x \\\n  /dir/\n")
    assert message == (f"Dockerfile:2: COPY: source /home/hpcbuild/x {OUTSIDE}"), message


def test_plain_sources_become_exactly_their_repository_paths(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path,
        {
            "Dockerfile": FROM
            + "\n".join(
                [
                    "COPY data.txt /opt/",
                    'COPY ["data.txt", "/opt/json/"]',
                    "COPY --chown=1000:1000 --link ./sub/../data.txt /opt/n.txt",
                    "ADD sub/ /opt/sub/",
                    "COPY alias.txt /opt/alias.txt",
                    "COPY . /app",
                    "RUN true",
                ]
            ),
            "data.txt": "data\n",
            "sub/more.txt": "more\n",
        },
        {"alias.txt": "sub/more.txt"},
    )
    prepared = pipeline.prepare(local_spec(repo), site_for_tests(tmp_path))
    assert files_section(prepared.rendered.definition) == [
        ("data.txt", "/opt/"),
        ("data.txt", "/opt/json/"),
        ("data.txt", "/opt/n.txt"),
        ("sub", "/opt/sub/"),
        ("alias.txt", "/opt/alias.txt"),
        (".", "/app"),
    ]
    warnings = prepared.rendered.warnings
    assert any("COPY --chown is ignored" in w for w in warnings), warnings
    assert any("COPY --link is ignored" in w for w in warnings), warnings


def test_a_source_that_links_out_of_the_repository_is_refused(tmp_path: Path) -> None:
    """The checkout check (pipeline) refuses such links before detection;
    the Dockerfile reader refuses them on its own too."""
    repo = tmp_path / "repo"
    (repo / "inner").mkdir(parents=True)
    (repo / "Dockerfile").write_text(f"{FROM}COPY inner/key /k\n")
    (repo / "inner" / "key").symlink_to("../../outside")
    buildpack = DockerfileBuildPack(RepoFiles(repo))
    with pytest.raises(RepoConfigError) as caught:
        buildpack.dockerfile()
    assert str(caught.value) == (
        "Dockerfile:2: COPY: source inner/key links outside the repository; use a path inside it"
    )


PATH_PARTS = ["data.txt", "sub", "alias", "..", ".", "/", "/etc/passwd", "*", "$X", "http://h/"]
SOURCE = st.lists(st.sampled_from(PATH_PARTS), min_size=1, max_size=5).map("/".join)


@given(sources=st.lists(SOURCE, min_size=1, max_size=3), json_form=st.booleans())
@PROPERTY
def test_every_accepted_source_is_a_path_inside_the_repository(
    sources: list[str], json_form: bool
) -> None:
    arguments = (
        "[" + ", ".join(f'"{p}"' for p in [*sources, "/dest/"]) + "]"
        if json_form
        else " ".join([*sources, "/dest/"])
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        repo = make_repo(
            root,
            {"Dockerfile": f"{FROM}COPY {arguments}\n", "data.txt": "x\n", "sub/data.txt": "y\n"},
            {"alias": "sub"},
        )
        try:
            prepared = pipeline.prepare(local_spec(repo), site_for_tests(root))
        except UserError as exc:
            assert str(exc).startswith("Dockerfile:2: COPY: "), exc
            assert "\n" not in str(exc)
            return
        real_repo = Path(os.path.realpath(prepared.checkout))
        for source, _target in files_section(prepared.rendered.definition):
            assert not source.startswith("/") and ".." not in source.split("/"), source
            real = Path(os.path.realpath(real_repo / source))
            assert real.is_relative_to(real_repo) and real.exists(), source
