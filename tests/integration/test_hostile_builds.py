"""Real builds of repositories whose values try to open an Apptainer
section (issue 21): a Pipfile marker and a Pipfile.lock marker with escaped
newlines (packaging turns them into real ones), a Dockerfile exec-form
ENTRYPOINT with newlines. Each is refused in one line or built, and in both
cases no ``%setup`` ran: the file its payload would create, in a folder the
build account may write, does not exist. Every repository has an apt.txt
or is a Dockerfile, so it would be a full SIF build: Apptainer parses the
definition (overlay builds run a script instead).

Values with ``%`` that stay on their line build, and reach the image as
data: the image's runscript prints them back unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcbinder.errors import UserError
from hpcbinder.images.builder import Builder, ImageBuildError
from hpcbinder.images.launch import launch_argv
from hpcbinder.images.store import BuildEvent, ImageRecord
from hpcbinder.render import pipeline
from hpcbinder.render.definition import RUNSCRIPT_IN_IMAGE
from tests.conftest import DevCluster
from tests.repohelpers import REPOS, git, local_spec
from tests.storehelpers import build_workspace, dev_cluster_base, workspace_site
from tests.unit.test_injection import TEMPLATE_SECTIONS, apptainer_sections

#: A lock with real hashes (six 1.16.0), whose markers the tests change.
LOCK = json.loads((REPOS / "pipfile" / "locked" / "Pipfile.lock").read_text())

pytestmark = [pytest.mark.slurm, pytest.mark.apptainer]


@pytest.fixture
def workspace(devcluster: DevCluster) -> Iterator[Path]:
    with build_workspace("hostile", dev_cluster_base()) as root:
        yield root


def pwned(workspace: Path) -> Path:
    """Where a payload would write: the store, which the build account owns."""
    return workspace / "store" / "pwned"


def payload(workspace: Path) -> str:
    """A %setup section as escaped newlines, as the issue's attack wrote it."""
    return f"\\n%%setup\\ntouch {pwned(workspace)}\\n#"


def repo_with(workspace: Path, files: dict[str, str]) -> Path:
    repo = workspace / "repos" / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "hostile")
    repo.chmod(0o755)
    return repo


def build(workspace: Path, repo: Path) -> tuple[ImageRecord, list[BuildEvent]]:
    site = workspace_site(workspace)
    events: list[BuildEvent] = []
    prepared = pipeline.prepare(local_spec(repo), site)
    return Builder(site).build_image(prepared, events.append), events


def refused(workspace: Path, repo: Path) -> str:
    with pytest.raises(UserError) as caught:
        build(workspace, repo)
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    assert not pwned(workspace).exists()
    assert list((workspace / "store").glob("envs/*")) == []
    return message


def test_a_pipfile_marker_with_newlines_is_refused(workspace: Path) -> None:
    marker = f'python_version >= "3{payload(workspace)}"'
    pipfile = f"[packages]\nsix = {{version = \"*\", markers = '{marker}'}}\n"
    repo = repo_with(workspace, {"Pipfile": pipfile, "apt.txt": "figlet\n"})
    assert refused(workspace, repo).startswith("Pipfile: ")


def test_a_pipfile_lock_marker_with_newlines_is_refused(workspace: Path) -> None:
    six = {**LOCK["default"]["six"], "markers": f'python_version >= "3{payload(workspace)}"'}
    lock = {**LOCK, "default": {"six": six}}
    repo = repo_with(workspace, {"Pipfile.lock": json.dumps(lock), "apt.txt": "figlet\n"})
    assert refused(workspace, repo).startswith("Pipfile.lock: ")


def test_a_dockerfile_exec_form_entrypoint_with_newlines_is_refused(workspace: Path) -> None:
    entry = json.dumps(["/bin/sh", "-c", f"true\n%%setup\ntouch {pwned(workspace)}\n#"])
    dockerfile = f"FROM python:3.11-slim\nRUN true\nENTRYPOINT {entry}\n"
    repo = repo_with(workspace, {"Dockerfile": dockerfile})
    assert refused(workspace, repo).startswith("Dockerfile: ")


def run_image(record: ImageRecord, *args: str) -> subprocess.CompletedProcess[str]:
    """The image's runscript, as a researcher."""
    return subprocess.run(
        ["sudo", "-n", "-u", "alice", "--", *launch_argv(record), RUNSCRIPT_IN_IMAGE, *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_percent_values_in_a_pipfile_lock_build_as_data(workspace: Path) -> None:
    """Markers, and a SIF build (apt.txt): the lock's line reaches uv as a file."""
    markers = 'python_version >= "3" or platform_release == "%%setup"'
    lock = {**LOCK, "default": {"six": {**LOCK["default"]["six"], "markers": markers}}}
    repo = repo_with(workspace, {"Pipfile.lock": json.dumps(lock), "apt.txt": "figlet\n"})
    record, events = build(workspace, repo)
    assert events[-1].phase == "ready" and record.meta.strategy == "sif"
    assert apptainer_sections(record.meta.definition) in TEMPLATE_SECTIONS
    assert "%%setup" not in record.meta.definition
    assert not pwned(workspace).exists()
    ran = subprocess.run(
        ["sudo", "-n", "-u", "alice", "--", *launch_argv(record), "python3", "-c", "import six"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr


def test_percent_values_in_a_dockerfile_build_as_data(workspace: Path) -> None:
    """ENV, WORKDIR, LABEL, RUN, ENTRYPOINT and CMD holding '%setup' build,
    run nothing on the host, and reach the image unchanged."""
    entry = json.dumps(["/bin/sh", "-c", 'printf "%s|" "$X" "$PWD" "$0" "$@"', "%%setup"])
    dockerfile = (
        "FROM python:3.11-slim\n"
        "ENV X=\"%setup '%%setup'\"\n"
        "WORKDIR /srv/%setup\n"
        'LABEL note="%%setup"\n'
        "RUN echo %setup > /marker\n"
        f"ENTRYPOINT {entry}\n"
        'CMD ["%%setup", "a b"]\n'
    )
    repo = repo_with(workspace, {"Dockerfile": dockerfile})
    record, events = build(workspace, repo)
    assert events[-1].phase == "ready"
    assert apptainer_sections(record.meta.definition) in TEMPLATE_SECTIONS
    assert "%%setup" not in record.meta.definition and "/srv/" not in record.meta.definition
    assert not pwned(workspace).exists()
    ran = run_image(record)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "%setup '%%setup'|/srv/%setup|%%setup|%%setup|a b|"


#: What a build step plants where Apptainer writes the image's metadata on
#: the host after %post (measured on the old code: the build account's file
#: behind the runscript link was overwritten, a mode-600 one behind
#: labels.json reached the image's labels), once at once and once from a
#: process left running that plants again after the step ended.
def metadata_links(victim: Path, secret: Path) -> str:
    return (
        "rm -f /.singularity.d/runscript /.singularity.d/labels.json; "
        f"ln -s {victim} /.singularity.d/runscript; "
        f"(sleep 3; ln -sf {secret} /.singularity.d/labels.json) >/dev/null 2>&1 &"
    )


@pytest.fixture
def build_account_files(workspace: Path) -> tuple[Path, Path]:
    """(victim, secret): files of the build account in its store, the secret mode 600."""
    victim, secret = workspace / "store" / "victim", workspace / "store" / "secret"
    for path, mode in ((victim, 0o644), (secret, 0o600)):
        path.write_text(f"{path.name} of the build account\n")
        subprocess.run(["chown", "hpcbuild:hpcbuild", str(path)], check=True)
        path.chmod(mode)
    return victim, secret


def assert_metadata_attack_refused(workspace: Path, repo: Path, files: tuple[Path, Path]) -> None:
    victim, secret = files
    with pytest.raises(ImageBuildError) as caught:
        build(workspace, repo)
    assert "/.singularity.d" in str(caught.value), caught.value
    assert victim.read_text() == "victim of the build account\n"
    assert secret.read_text() == "secret of the build account\n"
    assert "secret of the build account" not in str(caught.value)
    assert list((workspace / "store").glob("envs/*/*.sif")) == []


def test_a_dockerfile_run_cannot_plant_links_where_apptainer_writes_metadata(
    workspace: Path, build_account_files: tuple[Path, Path]
) -> None:
    plant = metadata_links(*build_account_files)
    dockerfile = f"FROM python:3.11-slim\nRUN {plant}\nRUN exit 0\n"
    repo = repo_with(workspace, {"Dockerfile": dockerfile})
    assert_metadata_attack_refused(workspace, repo, build_account_files)


def test_a_postbuild_cannot_plant_links_where_apptainer_writes_metadata(
    workspace: Path, build_account_files: tuple[Path, Path]
) -> None:
    postbuild = f"#!/bin/sh\n{metadata_links(*build_account_files)}\n"
    repo = repo_with(workspace, {"postBuild": postbuild, "apt.txt": "figlet\n"})
    (repo / "postBuild").chmod(0o755)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "executable postBuild")
    assert_metadata_attack_refused(workspace, repo, build_account_files)


def wheel(files: dict[str, str]) -> bytes:
    """A pure-Python wheel of ``files`` (package ``uncovered``, version 1)."""
    info = "uncovered-1.dist-info"
    files = {
        **files,
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: uncovered\nVersion: 1\n",
        f"{info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = ""
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record += f"{name},sha256={digest.decode()},{len(text.encode())}\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in {**files, f"{info}/RECORD": record + f"{info}/RECORD,,\n"}.items():
            archive.writestr(name, text)
    return buffer.getvalue()


def test_an_overlay_build_sees_only_the_files_its_key_covers(workspace: Path) -> None:
    """A requirement naming the checkout's mount point would install code
    the env key does not cover (the key hashes requirements.txt only): a
    later commit, or another repository with the same requirements.txt,
    would get an image of other code. The overlay build sees a copy of the
    environment files, so there is nothing there to install."""
    name = "uncovered-1-py3-none-any.whl"
    repo = repo_with(
        workspace, {"requirements.txt": f"uncovered @ file:///mnt/hpcbinder-context/{name}\n"}
    )
    (repo / name).write_bytes(wheel({"uncovered.py": "CODE = 'not in the env key'\n"}))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "a wheel the key does not cover")
    with pytest.raises(ImageBuildError) as caught:
        build(workspace, repo)
    assert name in str(caught.value), caught.value
    assert list((workspace / "store").glob("envs/*/*.sif")) == []
