"""The build account never follows a link a container planted.

A full SIF build runs the repository's own image twice after its %post: the
smoke test and the cleanup of its scratch space. A postBuild can replace
that image's ``rm``, ``sh`` (every ``apptainer exec`` goes through
``/bin/sh``) and ``true`` with programs that plant links in every folder
they may write: to a mode-600 file of the build account, where the build
server would read its log (read variant), and to a file of the build
account, where it would write its record and capped log (write variant).
Measured on the old layout (the staging folder bound read-write into the
cleanup): the secret reached the requester's error and the store's
world-readable failure record, and the build account overwrote its own
file with the repository's text.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from hpcbinder.config import Site
from hpcbinder.images.builder import Builder, ImageBuildError
from hpcbinder.images.store import BuildEvent
from hpcbinder.render import buildfiles, pipeline
from hpcbinder.render.pipeline import Prepared
from tests.conftest import DevCluster
from tests.repohelpers import git, local_spec
from tests.storehelpers import DEV_BASE, build_workspace, dev_cluster_base, workspace_site

pytestmark = [pytest.mark.slurm, pytest.mark.apptainer]

BUILD_HOME = Path("/home/hpcbuild")
#: Names the build server reads or writes in a build's folders, old and new.
READ_NAMES = ["build.log", "job-output.log", "failure.json"]
WRITE_NAMES = ["meta.json", ".build.log.capped", "definition.def", "overlay-build.sh"]


def planter(secret: Path, victim: Path) -> str:
    """A program (run as ``rm``, ``sh`` or ``true``) that plants links in
    every folder of every mount it may write, then does the real thing."""
    links = [f'ln -sfn {secret} "$d/{name}"' for name in READ_NAMES]
    links += [f'ln -sfn {victim} "$d/{name}"' for name in WRITE_NAMES]
    return "\n".join(
        [
            "plant() {",
            "  for m in $(cut -d' ' -f5 /proc/self/mountinfo); do",
            '    for d in "$m" "$m"/*; do',
            '      [ -d "$d" ] && [ -w "$d" ] || continue',
            *(f"      {line} 2>/dev/null" for line in links),
            "    done",
            "  done",
            "}",
        ]
    )


def hostile_post(secret: Path, victim: Path, lines: int) -> str:
    """A %post (what a repository's build runs) that prints ``lines`` lines
    (a long log is capped in place by the old code), then replaces the
    image's rm, sh and true."""
    plant = planter(secret, victim)
    wrappers = {
        "rm": '/usr/bin/rm.real "$@"; plant; exit 0',
        "true": "plant; exit 0",
        "sh": 'plant; exec /bin/dash "$@"',
    }
    script = ["set -e", f"seq 1 {lines}"]
    script.append("cp /usr/bin/rm /usr/bin/rm.real")
    for name, body in wrappers.items():
        script += [
            f"cat > /usr/bin/{name}.new <<'HOSTILE'",
            "#!/bin/dash",
            plant,
            body,
            "HOSTILE",
            f"chmod 755 /usr/bin/{name}.new",
        ]
    # Replaced last, all at once: this script's own commands need them.
    script += [f"/usr/bin/mv -f /usr/bin/{name}.new /usr/bin/{name}" for name in wrappers]
    return "\n".join(script) + "\n"


@pytest.fixture
def root(devcluster: DevCluster) -> Iterator[Path]:
    with build_workspace("links", dev_cluster_base()) as folder:
        yield folder


@pytest.fixture
def build_account_files() -> Iterator[tuple[Path, str, Path, str]]:
    """(secret, its text, victim, its text): files of the build account,
    the secret mode 600."""
    tag = uuid.uuid4().hex
    secret, victim = BUILD_HOME / f"link-secret-{tag[:8]}", BUILD_HOME / f"link-victim-{tag[:8]}"
    texts = (f"build-account-secret-{tag}", f"build-account-file-{tag}")
    for path, text, mode in ((secret, texts[0], 0o600), (victim, texts[1], 0o644)):
        path.write_text(text + "\n")
        subprocess.run(["chown", "hpcbuild:hpcbuild", str(path)], check=True)
        path.chmod(mode)
    yield secret, texts[0], victim, texts[1]
    secret.unlink(missing_ok=True)
    victim.unlink(missing_ok=True)


def hostile_build(site: Site, root: Path, post: str) -> Prepared:
    """A full SIF build whose %post is ``post``: what a repository's
    postBuild or Dockerfile RUN does in one (here without the renderer,
    whatever it makes of a repository: this is about the image, not the
    definition)."""
    repo = root / "repos" / "hostile"
    repo.mkdir(parents=True)
    (repo / "README.md").write_text("hostile\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "fixture")
    prepared = pipeline.prepare(local_spec(repo), site)
    # %setup as the renderer writes it: the mount point of its generated files.
    setup = f'%setup\n    mkdir -p "$APPTAINER_ROOTFS{buildfiles.GENERATED_IN_IMAGE}"\n'
    definition = f"Bootstrap: localimage\nFrom: {DEV_BASE.resolve()}\n\n{setup}\n%post\n{post}"
    rendered = replace(
        prepared.rendered, definition=definition, overlay_script=None, env_key=uuid.uuid4().hex
    )
    return replace(prepared, rendered=rendered)


def everything_written(root: Path) -> str:
    """Every regular file the build left in the workspace's store, as text."""
    texts = []
    for path in sorted((root / "store").rglob("*")):
        if path.is_file() and not path.is_symlink() and path.suffix not in (".sif", ".sqfs"):
            texts.append(path.read_text(errors="replace"))
    return "\n".join(texts)


@pytest.mark.parametrize("variant", ["read", "write"])
def test_links_planted_by_the_image_are_never_followed(
    root: Path, build_account_files: tuple[Path, str, Path, str], variant: str
) -> None:
    """read: the build fails after the cleanup (its image is over the
    site's size limit), so its error, failure record and log are written:
    the secret is in none. write: the build publishes (its record and a
    log long enough to be capped): the build account's file is unchanged."""
    secret, secret_text, victim, victim_text = build_account_files
    limits = {"max_image_mb": 1} if variant == "read" else {}
    site = workspace_site(root, cache_dir=str(root / "cache"), **limits)
    lines = 10 if variant == "read" else 4000
    prepared = hostile_build(site, root, hostile_post(secret, victim, lines))
    events: list[BuildEvent] = []
    error = ""
    try:
        record = Builder(site).build_image(prepared, events.append)
    except ImageBuildError as exc:
        error = f"{exc}\n" + "\n".join(exc.tail)
        assert variant == "read", error
        assert exc.step == "check image size", error
    else:
        assert variant == "write"
        assert record.meta.strategy == "sif"
        assert json.loads((record.path.parent / "meta.json").read_text())["key"] == record.key
        log = (record.path.parent / "build.log").read_text()
        assert "lines cut" in log and not (record.path.parent / "build.log").is_symlink()
    seen = "\n".join([error, *(event.message for event in events), everything_written(root)])
    assert secret_text not in seen
    assert victim.read_text() == victim_text + "\n"
    assert secret.read_text() == secret_text + "\n"
    if variant == "read":
        failure = (root / "store" / "failures" / f"{prepared.rendered.env_key}.json").read_text()
        assert secret_text not in failure


def test_links_a_postbuild_plants_in_an_overlay_build_are_never_followed(
    root: Path, build_account_files: tuple[Path, str, Path, str]
) -> None:
    """An overlay build runs the site's base (its own rm, sh and true), but
    the repository's postBuild writes the build's /tmp, home and overlay:
    it plants the same links in every mount it may write, and the build
    publishes without reading or writing through any of them."""
    secret, secret_text, victim, victim_text = build_account_files
    site = workspace_site(root, cache_dir=str(root / "cache"))
    repo = root / "repos" / "planter"
    repo.mkdir(parents=True)
    post_build = f"#!/bin/sh\n{planter(secret, victim)}\nplant\ncd /tmp && plant\nexit 0\n"
    (repo / "postBuild").write_text(post_build)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "fixture")
    events: list[BuildEvent] = []
    record = Builder(site).build_image(pipeline.prepare(local_spec(repo), site), events.append)
    assert record.meta.strategy == "overlay"
    seen = "\n".join([*(event.message for event in events), everything_written(root)])
    assert secret_text not in seen
    assert victim.read_text() == victim_text + "\n"
    assert not any(p.is_symlink() for p in record.path.parent.iterdir())
