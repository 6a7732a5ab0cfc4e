"""Private repositories through the Binder service, the parts that run
without a cluster: what a launch may name, what the service believes of a
private build job's outcome, how requests reach the jobs, and what the
server's job accepts from the researcher's store
(hpcbinder.images.privatejob, hpcbinder.web.privatebuilds,
hpcbinder.jobs.privateserver)."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcbinder.config import Site
from hpcbinder.errors import UserError
from hpcbinder.hub.options import LaunchOptions
from hpcbinder.images import private, privatejob
from hpcbinder.images.privatejob import PrivateJobError, PrivateJobRequest, PrivateOutcome
from hpcbinder.images.store import ImageMeta, ImageRecord, ImageStore
from hpcbinder.jobs import privateserver
from hpcbinder.jobs.request import request_for
from hpcbinder.jobs.serverscript import render_server_script
from hpcbinder.patterns import COMMIT, ENV_KEY
from hpcbinder.seams import munge, proc
from hpcbinder.web import privatebuilds
from hpcbinder.web.events import Event
from hpcbinder.web.privatebuilds import PrivateBuildFailed, PrivateBuilds

KEY = "0123456789abcdef0123456789abcdef"
COMMIT_ID = "0123456789012345678901234567890123456789"
SITE = Site()


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=60), st.sampled_from([KEY, "base:py313", f"/x/{KEY}"])))
def test_a_private_launch_names_an_image_key_and_nothing_else(image: str) -> None:
    """Never a path or a base: the job looks a key up in her own store."""
    try:
        options = LaunchOptions.parse({"image": image, "private": True})
    except UserError:
        assert not ENV_KEY.fullmatch(image)
    else:
        assert options.private and ENV_KEY.fullmatch(options.image or "")


_VALUES = st.one_of(
    st.text(max_size=50),
    st.integers(),
    st.booleans(),
    st.none(),
    st.lists(st.text(max_size=5), max_size=2),
    st.sampled_from([KEY, COMMIT_ID, "12", "a\nb", "\x1b[31m", "1; rm -rf /"]),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(list(PrivateOutcome.__dataclass_fields__)), _VALUES))
def test_an_outcome_is_believed_only_field_by_field(data: dict[str, Any]) -> None:
    """Whatever her job's comment holds (she may write anything there), the
    service takes only ids and keys of their form and one printable line."""
    try:
        outcome = PrivateOutcome.from_json(json.dumps(data))
    except PrivateJobError:
        return
    assert outcome.job.isdigit()
    assert not outcome.env_key or ENV_KEY.fullmatch(outcome.env_key)
    assert not outcome.commit or COMMIT.fullmatch(outcome.commit)
    assert outcome.error.isprintable() and len(outcome.error) <= privatejob.REASON_CHARS
    assert outcome.run_dir.isprintable()
    assert outcome.error or (outcome.env_key and outcome.commit)


def _signed_by(user: str, payload: str) -> Any:
    return lambda _credential: munge.Verified(user, 1000, payload)


def test_an_outcome_counts_only_from_the_jobs_owner_for_that_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    good = PrivateOutcome("42", KEY, COMMIT_ID).to_json()
    monkeypatch.setattr(munge, "verify", _signed_by("alice", good))
    assert privatejob.read_outcome("MUNGE:x", "alice", "42").env_key == KEY
    # Made by someone else (bob setting a comment he could not set is
    # Slurm's to stop; this is the service's own check), or for another job.
    monkeypatch.setattr(munge, "verify", _signed_by("bob", good))
    with pytest.raises(PrivateJobError, match="bob's, not alice's"):
        privatejob.read_outcome("MUNGE:x", "alice", "42")
    monkeypatch.setattr(munge, "verify", _signed_by("alice", good))
    with pytest.raises(PrivateJobError, match="job 41's outcome is that of job 42"):
        privatejob.read_outcome("MUNGE:x", "alice", "41")


def _shell_words(script: str, program: str) -> list[str]:
    """The words of the script's one line that feeds ``program``."""
    lines = [line for line in script.splitlines() if program in line]
    assert len(lines) == 1, script
    return shlex.split(lines[0])


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_a_private_build_jobs_request_is_one_quoted_word_on_stdin(spec: str) -> None:
    """Whatever the spec's text, it reaches the job's program on stdin as
    the request's JSON (never argv: every account on the node lists argv),
    and the script's lines are the template's."""
    request = PrivateJobRequest("build", spec, "/etc/hpcbinder/site.yaml", "hpcbinder")
    script = privatejob.render_script("/opt/hpcbinder/venv/bin/python", request)
    words = _shell_words(script, "hpcbinder.images.privatejob")
    assert words[:3] == ["printf", "%s\\n", request.to_json()]
    assert words[3:] == [
        "|",
        "exec",
        "/opt/hpcbinder/venv/bin/python",
        "-I",
        "-m",
        "hpcbinder.images.privatejob",
    ]
    assert PrivateJobRequest.from_json(words[2]) == request


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=80))
def test_a_private_servers_options_are_one_quoted_word_on_stdin(text: str) -> None:
    options = LaunchOptions.parse({"image": KEY, "private": True, "binder_request": "v2/x"})
    request = request_for(SITE, None, {}, user="root")
    job = privateserver.private_server_job(
        None, "root", Path("/root"), request, options, ["jupyterhub-singleuser", text], "job"
    )
    script = render_server_script(SITE, job)
    words = _shell_words(script, "hpcbinder.jobs.privateserver")
    sent = privateserver.PrivateServerRequest.from_json(words[2])
    assert sent.command == ["jupyterhub-singleuser", text]
    assert LaunchOptions.parse(sent.options) == options
    assert "--comment=hpcbinder\n" in script  # names neither key nor commit
    assert "apptainer" not in script  # the image is found by her job, not here


def _store_with(tmp_path: Path, image: Path) -> tuple[Site, ImageStore]:
    site = Site.model_validate({"build": {"private_store": f"{tmp_path}/{{user}}"}})
    store = private.open_store(site, "root")
    return site, store


def _resolve_with(
    monkeypatch: pytest.MonkeyPatch, site: Site, store: ImageStore, image: Path
) -> None:
    record = ImageRecord(KEY, image, ImageMeta(key=KEY))
    monkeypatch.setattr(store, "lookup", lambda key: record if key == KEY else None)
    monkeypatch.setattr(private, "open_store", lambda _site, _user: store)
    request = privateserver.PrivateServerRequest(
        "", {"image": KEY, "private": True}, ["jupyterhub-singleuser"], "job"
    )
    privateserver.resolve(site, request)


def test_the_server_job_takes_only_a_regular_file_of_hers_in_her_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site, store = _store_with(tmp_path, tmp_path)
    mine = store.root / "envs" / KEY / "image.sif"
    mine.parent.mkdir(parents=True)
    mine.write_text("sif")
    _resolve_with(monkeypatch, site, store, mine)  # hers: accepted
    others = mine.with_name("others.sif")
    others.write_text("sif")
    os.chown(others, 65534, 65534)
    link = mine.with_name("link.sif")
    link.symlink_to(mine)
    outside = tmp_path / "outside.sif"
    outside.write_text("sif")
    for image, reason in (
        (others, "is not one of yours"),
        (link, "is not one of yours"),
        (mine.parent, "is not one of yours"),
        (outside, "outside your private store"),
    ):
        with pytest.raises(privateserver.PrivateLaunchError, match=reason):
            _resolve_with(monkeypatch, site, store, image)
    # A key her store does not have (another's): one line naming her store.
    monkeypatch.setattr(store, "lookup", lambda key: None)
    request = privateserver.PrivateServerRequest("", {"image": KEY, "private": True}, [], "job")
    with pytest.raises(privateserver.PrivateLaunchError, match="not in your private store"):
        privateserver.resolve(site, request)
    # Not a private launch at all: refused.
    request = privateserver.PrivateServerRequest("", {"image": KEY}, [], "job")
    with pytest.raises(privateserver.PrivateLaunchError, match="not a launch of an image"):
        privateserver.resolve(site, request)


class _Jobs:
    """Slurm as her jobs look to the service: sbatch as her, then squeue's
    answers (state|comment) in turn."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = answers
        self.submitted: list[tuple[str, str | None, Any]] = []

    def submit(self, script: str, options: Any, *, user: str | None = None, env: Any = None) -> str:
        self.submitted.append((script, user, env))
        return "42"

    def run(self, argv: Any, *, user: str | None = None, **_: Any) -> proc.CommandResult:
        assert user == "alice" and list(argv)[-1] == "42"
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return proc.CommandResult(tuple(argv), 0, answer + "\n", "")


def _follow(jobs: _Jobs, builds: PrivateBuilds | None = None) -> tuple[list[Event], Any]:
    builds = builds or PrivateBuilds(SITE, None, slurm=jobs, runner=jobs)  # type: ignore[arg-type]
    events: list[Event] = []

    async def emit(event: Event) -> None:
        events.append(event)

    async def run() -> Any:
        try:
            return await builds.run(builds.request("build", "gh/a/b/HEAD"), "alice", emit)
        except PrivateBuildFailed as exc:
            return exc

    return events, asyncio.run(run())


def test_her_jobs_phases_are_said_once_each_whatever_slurms_timing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """waiting, building, then the outcome: the same sequence whether Slurm
    was seen pending, running or neither (so a refusal's events do not
    depend on how fast a repository was found missing)."""
    monkeypatch.setattr(privatebuilds, "POLL_SECONDS", 0)
    monkeypatch.setattr(
        munge, "verify", _signed_by("alice", PrivateOutcome("42", error="no").to_json())
    )
    seen = []
    for answers in (["PENDING|", "RUNNING|", "COMPLETED|MUNGE:x"], ["COMPLETED|MUNGE:x"]):
        jobs = _Jobs(answers)
        events, outcome = _follow(jobs)
        assert isinstance(outcome, PrivateBuildFailed) and str(outcome) == "no"
        seen.append([(event.phase, event.message) for event in events])
        # Submitted as her, with no environment of the service's.
        assert [(user, env) for _, user, env in jobs.submitted] == [("alice", None)]
    assert seen[0] == seen[1] and [phase for phase, _ in seen[0]] == ["waiting", "building"]


def test_a_job_that_ends_without_her_outcome_says_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(privatebuilds, "POLL_SECONDS", 0)
    _, outcome = _follow(_Jobs(["FAILED|(null)"]))
    assert isinstance(outcome, PrivateBuildFailed)
    assert str(outcome).startswith("your build job 42 ended FAILED before it said how it went")
    assert "\n" not in str(outcome)


def test_her_private_jobs_in_flight_are_limited_as_her_builds_are(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    jobs = _Jobs(["RUNNING|"])
    builds = PrivateBuilds(SITE, None, slurm=jobs, runner=jobs)  # type: ignore[arg-type]
    builds._running["alice"] = SITE.build.max_builds_per_user
    events, outcome = _follow(jobs, builds)
    assert isinstance(outcome, PrivateBuildFailed) and "build.max_builds_per_user" in str(outcome)
    assert jobs.submitted == [] and events == []


def test_the_launch_pages_cancel_ends_her_build_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(privatebuilds, "POLL_SECONDS", 0.01)
    jobs = _Jobs(["RUNNING|"])
    cancelled: list[tuple[str, str | None]] = []

    def cancel(job: str, *, user: str | None = None) -> None:
        cancelled.append((job, user))
        jobs.answers[:] = ["CANCELLED|(null)"]

    jobs.cancel = cancel  # type: ignore[attr-defined]
    builds = PrivateBuilds(SITE, None, slurm=jobs, runner=jobs)  # type: ignore[arg-type]

    async def run() -> tuple[bool, bool, Any]:
        async def emit(_: Event) -> None:
            return None

        follow = asyncio.ensure_future(
            builds.run(builds.request("build", "gh/a/b/HEAD"), "alice", emit)
        )
        await asyncio.sleep(0.1)
        others = await builds.cancel("bob", "gh/a/b/HEAD")  # hers only
        mine = await builds.cancel("alice", "gh/a/b/HEAD")
        try:
            await follow
        except PrivateBuildFailed as exc:
            return others, mine, exc
        return others, mine, None

    others, mine, failure = asyncio.run(run())
    assert (others, mine) == (False, True) and cancelled == [("42", "alice")]
    assert "ended CANCELLED" in str(failure)
    assert asyncio.run(builds.cancel("alice", "gh/a/b/HEAD")) is False  # none left
