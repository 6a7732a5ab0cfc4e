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
from types import SimpleNamespace
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
from hpcbinder.seams.slurm import SlurmError
from hpcbinder.web import privatebuilds
from hpcbinder.web.events import Event
from hpcbinder.web.launcher import server_name
from hpcbinder.web.privatebuilds import PrivateBuildFailed, PrivateBuilds
from tests.unit.fakes import ScriptedSlurm
from tests.unit.test_spawner import USER, spawner_for

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


NONCE = "5" * 32


def _signed_by(user: str, payload: str) -> Any:
    return lambda _credential, **_: munge.Verified(user, 1000, payload)


def test_an_outcome_counts_only_from_the_jobs_owner_for_that_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    good = PrivateOutcome("42", KEY, COMMIT_ID, nonce=NONCE).to_json()
    monkeypatch.setattr(munge, "verify", _signed_by("alice", good))
    assert privatejob.read_outcome("MUNGE:x", "alice", "42", NONCE).env_key == KEY
    # Made by someone else (bob setting a comment he could not set is
    # Slurm's to stop; this is the service's own check), or for another job.
    monkeypatch.setattr(munge, "verify", _signed_by("bob", good))
    with pytest.raises(PrivateJobError, match="bob's, not alice's"):
        privatejob.read_outcome("MUNGE:x", "alice", "42", NONCE)
    monkeypatch.setattr(munge, "verify", _signed_by("alice", good))
    with pytest.raises(PrivateJobError, match="job 41's outcome is that of job 42"):
        privatejob.read_outcome("MUNGE:x", "alice", "41", NONCE)
    # Hers, for this job, but not for this request (an earlier request's
    # outcome, or one made without the service's nonce).
    for expected in ("6" * 32, ""):
        with pytest.raises(PrivateJobError, match="not for this request"):
            privatejob.read_outcome("MUNGE:x", "alice", "42", expected)


def _munge_as(user: str, payload: str) -> str:
    """A real credential of ``user``'s that only this account may decode
    (as her job's munge.sign makes it)."""
    result = proc.run(
        ["munge", f"--restrict-uid={os.geteuid()}"], user=user, input_text=payload, timeout=30
    )
    assert result.ok, result.stderr
    return result.stdout.strip()


def test_her_comment_copied_onto_bobs_job_and_decoded_first_still_counts_for_hers() -> None:
    """bob copies her job's comment (squeue shows it) onto a job of his
    and the service reads his first: refused for his, and her outcome still
    counts for her job (munged's replay mark must not decide). Real munged.
    Fails on the old code: her job's outcome was 'credential does not
    verify' (munged's replay status)."""
    credential = _munge_as("alice", PrivateOutcome("42", KEY, COMMIT_ID, nonce=NONCE).to_json())
    with pytest.raises(PrivateJobError, match="alice's, not bob's"):
        privatejob.read_outcome(credential, "bob", "43", NONCE)
    with pytest.raises(munge.MungeError, match="replayed"):  # what munged says now
        munge.verify(credential)
    assert privatejob.read_outcome(credential, "alice", "42", NONCE).env_key == KEY
    # ... and again still refused for his, even naming her job's nonce.
    with pytest.raises(PrivateJobError, match="alice's, not bob's"):
        privatejob.read_outcome(credential, "bob", "42", NONCE)


def test_an_outcome_that_munged_cannot_check_or_python_cannot_parse_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unmunge that times out, or a payload nested deeper than Python
    recurses (hers to write): her page's one line, never a 500."""

    def timeout(argv: Any, **_: Any) -> proc.CommandResult:
        raise proc.CommandError(argv, "timed out after 30 s")

    monkeypatch.setattr(proc, "run", timeout)
    with pytest.raises(PrivateJobError, match="left no outcome: credential not checked"):
        privatejob.read_outcome("MUNGE:x:", "alice", "42", NONCE)
    monkeypatch.undo()
    monkeypatch.setattr(munge, "verify", _signed_by("alice", "[" * 100_000))
    with pytest.raises(PrivateJobError, match="nested too deep"):
        privatejob.read_outcome("MUNGE:x", "alice", "42", NONCE)


def test_her_job_sets_its_comment_with_no_credential_in_argv(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """scontrol reads the update on stdin: the processes other jobs on the
    node can list show no credential."""
    calls: list[tuple[list[str], str | None]] = []

    def run(argv: Any, *, input_text: str | None = None, **_: Any) -> proc.CommandResult:
        calls.append((list(argv), input_text))
        return proc.CommandResult(tuple(argv), 0, "", "")

    monkeypatch.setattr(proc, "run", run)
    credential = "MUNGE:AwQFAAAsVk/zuT+6aU=:"
    privatejob.set_comment("42", credential)
    assert calls == [(["scontrol"], f"update JobId=42 Comment={credential}\n")]
    for odd in ("MUNGE:a b:", "MUNGE:a:\nupdate JobId=7 Comment=x", "x"):
        with pytest.raises(munge.MungeError):
            privatejob.set_comment("42", odd)
    assert len(calls) == 1


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
    request = PrivateJobRequest("build", spec, "/etc/hpcbinder/site.yaml", "hpcbinder", NONCE)
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
        None, "root", Path("/root"), request, options, ["jupyterhub-singleuser", text]
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
        self.options = options
        return "42"

    def outcome(self, **fields: Any) -> Any:
        """munge.verify as it reads her job's comment: an outcome of hers for
        job 42 carrying the nonce of the request submitted."""

        def verify(_credential: str, **_: Any) -> munge.Verified:
            script = self.submitted[-1][0]
            words = _shell_words(script, "hpcbinder.images.privatejob")
            nonce = PrivateJobRequest.from_json(words[2]).nonce
            return munge.Verified(
                "alice", 1000, PrivateOutcome("42", nonce=nonce, **fields).to_json()
            )

        return verify

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
    seen = []
    for answers in (["PENDING|", "RUNNING|", "COMPLETED|MUNGE:x"], ["COMPLETED|MUNGE:x"]):
        jobs = _Jobs(answers)
        monkeypatch.setattr(munge, "verify", jobs.outcome(error="no"))
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


def test_each_build_job_is_asked_with_a_nonce_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """The service's nonce reaches her job's stdin (its script, which only
    she and Slurm read), differs for each request, and her outcome counts
    once it carries it."""
    monkeypatch.setattr(privatebuilds, "POLL_SECONDS", 0)
    nonces = set()
    for _ in range(2):
        jobs = _Jobs(["COMPLETED|MUNGE:x"])
        monkeypatch.setattr(munge, "verify", jobs.outcome(env_key=KEY, commit=COMMIT_ID))
        _, outcome = _follow(jobs)
        assert isinstance(outcome, PrivateOutcome) and outcome.env_key == KEY
        nonces.add(outcome.nonce)
    assert len(nonces) == 2 and all(len(nonce) == 32 for nonce in nonces)


def test_a_job_past_its_deadline_that_cannot_be_cancelled_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At the deadline her job has just ended (scancel fails): the page says
    it ran too long, not 'Internal error'."""
    monkeypatch.setattr(privatebuilds, "POLL_SECONDS", 0.01)
    quick = {"build": {"timeout_minutes": 1e-4}, "launch": {"max_queue_minutes": 1e-4}}
    jobs = _Jobs(["RUNNING|"])

    def cancel(job: str, *, user: str | None = None) -> None:
        raise SlurmError("scancel: Job/step already completing or completed")

    jobs.cancel = cancel  # type: ignore[attr-defined]
    builds = PrivateBuilds(Site.model_validate(quick), None, slurm=jobs, runner=jobs)  # type: ignore[arg-type]
    _, outcome = _follow(jobs, builds)
    assert isinstance(outcome, PrivateBuildFailed) and "ran too long" in str(outcome)


def _sbatch_lines(script: str) -> list[str]:
    """The #SBATCH lines sbatch reads: those before the first command."""
    lines = []
    for line in script.splitlines()[1:]:
        if line.strip() and not line.startswith("#"):
            break
        if line.startswith("#SBATCH"):
            lines.append(line)
    return lines


def _private_server_script(tmp_path: Path, server_name: str) -> str:
    spawner = spawner_for(tmp_path, ScriptedSlurm([]), {"image": KEY, "private": True})
    spawner.orm_spawner = SimpleNamespace(name=server_name, server=None)  # the hub's record
    return render_server_script(SITE, spawner.server_job())


def test_squeue_shows_nothing_of_her_private_repositorys_url(tmp_path: Path) -> None:
    """Every account lists every job's name and comment: her private
    server's and build's say nothing derived from the URL (the server's
    name is an unsalted digest of it: bob would confirm a guessed URL).
    Fails on the old code: the job was named hpcbinder-USER-SERVERNAME."""
    url = "https://git.example.org/alice/secret-project.git"
    name = server_name(url)
    script = _private_server_script(tmp_path, name)
    header = _sbatch_lines(script)
    assert f"#SBATCH --job-name=hpcbinder-{USER}-private" in header
    assert "#SBATCH --comment=hpcbinder" in header
    for part in (name, *name.split("-")):
        assert not any(part in line for line in header), (part, header)
    # Her build job: a fixed name and no comment until its encrypted outcome.
    jobs = _Jobs(["FAILED|(null)"])
    _follow(jobs)
    assert jobs.options.job_name == "hpcbinder-build"
    assert not any(
        "--comment" in line or "--job-name" in line for line in _sbatch_lines(jobs.submitted[0][0])
    )


def test_her_private_jobs_are_never_requeued(tmp_path: Path) -> None:
    """A lost node's job ends NODE_FAIL (Slurm's default would requeue it,
    behind the hub's and the service's backs): the option is on a line
    sbatch reads, in both private jobs' scripts. Fails on the old code."""
    request = PrivateJobRequest("build", "gh/a/b/HEAD", "", "hpcbinder", NONCE)
    build = privatejob.render_script("/opt/hpcbinder/venv/bin/python", request)
    server = _private_server_script(tmp_path, "default")
    for script in (build, server):
        assert "#SBATCH --no-requeue" in _sbatch_lines(script), script


def test_concurrent_private_launches_keep_each_others_scripts(tmp_path: Path) -> None:
    """Three launches at once: each job's script stays until its bash has
    surely opened it (removing it ended that launch: 'No such file or
    directory'); a stale one goes. Fails on the old code."""
    site = Site.model_validate({"build": {"private_store": f"{tmp_path}/{{user}}"}})
    first = privateserver._script_file(site, "echo 1\n", "41")
    stale = first.with_name("server-7.sh")
    stale.write_text("echo 7\n")
    os.utime(stale, (0, 0))
    second = privateserver._script_file(site, "echo 2\n", "42")
    assert first.read_text() == "echo 1\n" and second.read_text() == "echo 2\n"
    assert not stale.exists()


def test_an_sbatch_that_times_out_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """sudo sbatch as her that does not answer in time: her page's one
    line, not a 500. Fails on the old code."""
    jobs = _Jobs(["RUNNING|"])

    def submit(*_: Any, **__: Any) -> str:
        raise proc.CommandError(["sbatch"], "timed out after 30 s")

    jobs.submit = submit  # type: ignore[method-assign]
    _, outcome = _follow(jobs)
    assert isinstance(outcome, PrivateBuildFailed)
    assert str(outcome) == "cannot submit your build job: sbatch timed out after 30 s"
