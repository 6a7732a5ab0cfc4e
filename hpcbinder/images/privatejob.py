"""A private build asked for through the Binder service: the researcher's
own Slurm job runs the same private pipeline as her CLI
(:mod:`hpcbinder.images.private`), and tells the service its outcome.

The service (its own account) cannot fetch with her credentials, read her
store or build as her; it may submit, watch and cancel Slurm jobs as her
(configs/sudoers.hpcbinder). So it submits one job as her, on the build
partition, whose script (slurm/private-build.sbatch.j2) feeds this module
the request on stdin (never argv, which every account on the node could
read) and runs it: fetch with her SSH key, ssh config, git credential
helper and file permissions; build with unprivileged Apptainer into her
store (already on the build partition, the build's commands run in this
job: :func:`~hpcbinder.images.private.private_site`'s "local" backend); for
a batch run, submit it as her (:mod:`hpcbinder.jobs.batch`). Its progress
goes to a log in her store, which only she reads; the service follows the
job's Slurm state only.

The outcome goes back as a MUNGE credential of hers that only the
service's account can decode, set as her job's comment (which the job's
owner may update; scontrol reads the update on stdin, so no argv shows
it): :class:`PrivateOutcome` (the image key, the commit and whether the
repository is read from the image; or a batch run's job and folder; or
one line saying why not). MUNGE's encryption keeps it from everyone else
who lists the queue, and its signature tells the service that her account
said it. Others can still copy her comment onto a job of their own: so
validity never rests on munged decoding a credential only once (whoever
decodes a copy first would spend it, and her build would fail). The
service accepts a replayed credential, and believes an outcome only for
the job it was read from, from that job's owner, carrying the random
``nonce`` the service put in that job's request (on its stdin, which
only she and Slurm read), each (job, nonce) once: a copy is of use to no
one but the service, for that one job.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import os
import sys
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from hpcbinder import textpatterns
from hpcbinder.config import Site, load_site
from hpcbinder.errors import UserError
from hpcbinder.images import private
from hpcbinder.images.builder import ImageBuildError
from hpcbinder.images.launch import launch_argv
from hpcbinder.images.store import BuildEvent
from hpcbinder.patterns import COMMIT, ENV_KEY
from hpcbinder.render import templating
from hpcbinder.seams import munge, proc
from hpcbinder.seams.slurm import JOB_ID

#: Her store's folder of the logs of these jobs (``binder-JOB.log``).
LOGS = "logs"
#: Longest line of an outcome's reason: one line, for a page.
REASON_CHARS = 500
#: A credential as munge prints it (base64 between "MUNGE:" and ":").
_CREDENTIAL = textpatterns.compile(r"MUNGE:[A-Za-z0-9+/=]+:")


class PrivateJobError(UserError):
    """A private job's outcome that cannot be used (not hers, not this
    job's, malformed): the job is treated as having ended without one."""


@dataclass(frozen=True)
class PrivateJobRequest:
    """What the service asks of her job: build ``spec`` (``kind`` "build"),
    or build it and submit a batch run of ``path`` (``kind`` "batch", with
    the launch page's parameters, profile and resource overrides, checked
    again as her against the same site file). ``reader``: the service's
    account, the one that may decode the outcome; ``nonce``: the service's
    secret for this one request, which the outcome must carry back."""

    kind: str
    spec: str
    site_file: str
    reader: str
    nonce: str = ""
    path: str = ""
    parameters: dict[str, str] = field(default_factory=dict)
    profile: str = ""
    overrides: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PrivateJobRequest:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("kind") not in ("build", "batch"):
            raise ValueError("not a private job request")
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


@dataclass(frozen=True)
class PrivateOutcome:
    """What her job tells the service (see the module's docstring)."""

    job: str
    env_key: str = ""
    commit: str = ""
    from_image: bool = False
    run_job: str = ""
    run_dir: str = ""
    error: str = ""
    nonce: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PrivateOutcome:
        """Each field checked: ids and keys by their patterns, text one
        printable line (it reaches her page)."""
        try:
            data: Any = json.loads(text)
            outcome = cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})
        except (ValueError, TypeError) as exc:
            raise PrivateJobError(f"not a private build's outcome: {exc}") from None
        except RecursionError:  # JSON nested deeper than Python recurses
            raise PrivateJobError("not a private build's outcome: nested too deep") from None
        texts = (
            outcome.job,
            outcome.env_key,
            outcome.commit,
            outcome.run_job,
            outcome.run_dir,
            outcome.nonce,
        )
        if not all(isinstance(text, str) for text in (*texts, outcome.error)):
            raise PrivateJobError("a private build's outcome has a field that is not text")
        checks = [
            JOB_ID.fullmatch(outcome.job),
            not outcome.env_key or ENV_KEY.fullmatch(outcome.env_key),
            not outcome.commit or COMMIT.fullmatch(outcome.commit),
            isinstance(outcome.from_image, bool),
            not outcome.run_job or JOB_ID.fullmatch(outcome.run_job),
            outcome.run_dir.isprintable(),
            outcome.error.isprintable(),
            outcome.error or (outcome.env_key and outcome.commit),
        ]
        if not all(checks):
            raise PrivateJobError("a private build's outcome has a malformed field")
        return cls(**{**asdict(outcome), "error": outcome.error[:REASON_CHARS]})


def log_path(root: Path, job_id: str) -> Path:
    """Where her job ``job_id`` logs, in her store at ``root`` (the service
    says so to her; it never opens it)."""
    return root / LOGS / f"binder-{job_id}.log"


def render_script(python: str, request: PrivateJobRequest) -> str:
    """The job's script: the request on this module's stdin."""
    return templating.render_text(
        "slurm", "private-build.sbatch.j2", python=python, request=request.to_json()
    )


def read_outcome(comment: str, user: str, job_id: str, nonce: str) -> PrivateOutcome:
    """The outcome in job ``job_id``'s comment, if ``user`` (its owner)
    made it for this account, for this job and for the request that
    carried ``nonce``; :class:`PrivateJobError` otherwise. A credential
    decoded before (a copy on another's job, decoded first) still counts:
    see the module's docstring."""
    try:
        verified = munge.verify(comment.strip(), replayed_ok=True)
    except munge.MungeError as exc:
        raise PrivateJobError(f"job {job_id} left no outcome: {exc}") from None
    if verified.user != user:
        raise PrivateJobError(f"job {job_id}'s outcome is {verified.user}'s, not {user}'s")
    outcome = PrivateOutcome.from_json(verified.payload)
    if outcome.job != job_id:
        raise PrivateJobError(f"job {job_id}'s outcome is that of job {outcome.job}")
    if not nonce or not hmac.compare_digest(outcome.nonce.encode(), nonce.encode()):
        raise PrivateJobError(f"job {job_id}'s outcome is not for this request")
    return outcome


# --- in her job ------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(text.split())[:REASON_CHARS]


def _run(site: Site, request: PrivateJobRequest, job_id: str, log: TextIO) -> PrivateOutcome:
    def emit(event: BuildEvent) -> None:
        log.write(f"[{event.elapsed:6.1f}s] {event.phase}: {event.message}\n")
        log.flush()

    try:
        fetched = private.request(site, request.spec, emit, backend="local")
        if request.kind == "batch":
            from hpcbinder.jobs.batchjobs import submit_checked
            from hpcbinder.jobs.request import request_for

            record = private.published(site, fetched.env_key)
            if record is None:
                raise UserError(f"image {fetched.env_key} is not in your private store")
            resources = request_for(
                site, request.profile, dict(request.overrides), user=proc.current_user()
            )
            run_job, run_dir = submit_checked(
                site,
                fetched,
                record,
                launch_argv(record),
                proc.current_user(),
                resources,
                request.path,
                dict(request.parameters),
            )
            log.write(f"batch run submitted: job {run_job}, folder {run_dir}\n")
            return PrivateOutcome(
                job_id,
                fetched.env_key,
                fetched.repo.commit,
                fetched.reads_whole_repo,
                run_job,
                str(run_dir),
            )
        return PrivateOutcome(
            job_id, fetched.env_key, fetched.repo.commit, fetched.reads_whole_repo
        )
    except ImageBuildError as exc:
        log.write(f"error: {exc}\n" + "".join(f"  | {line}\n" for line in exc.tail))
        return PrivateOutcome(job_id, error=_one_line(f"the build failed at step {exc.step}"))
    except UserError as exc:
        log.write(f"error: {exc}\n")
        return PrivateOutcome(job_id, error=_one_line(str(exc)))


def main(stdin: TextIO = sys.stdin) -> int:
    """Her job's body: the request from stdin, the outcome to the job's
    comment; its progress and any error's detail in her store's log."""
    job_id = os.environ.get("SLURM_JOB_ID", "")
    if not JOB_ID.fullmatch(job_id):
        print("hpcbinder: not in a Slurm job", file=sys.stderr)
        return 2
    request = PrivateJobRequest.from_json(stdin.read())
    site = load_site(Path(request.site_file) if request.site_file else None)
    user = proc.current_user()
    try:
        store = private.open_store(site, user)
        logs = store.root / LOGS
        logs.mkdir(mode=0o700, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        with os.fdopen(os.open(log_path(store.root, job_id), flags, 0o600), "w") as log:
            try:
                outcome = _run(site, request, job_id, log)
            except Exception:  # her log has the detail, her page one line
                traceback.print_exc(file=log)
                outcome = PrivateOutcome(job_id, error="internal error: see the build's log")
    except UserError as exc:
        outcome = PrivateOutcome(job_id, error=_one_line(str(exc)))
    except OSError as exc:
        outcome = PrivateOutcome(job_id, error=_one_line(f"cannot write the build's log: {exc}"))
    outcome = dataclasses.replace(outcome, nonce=request.nonce)
    set_comment(job_id, munge.sign(outcome.to_json(), request.reader))
    return 0 if not outcome.error else 1


def set_comment(job_id: str, credential: str) -> None:
    """Her job's comment set to ``credential``, by scontrol reading the
    update on stdin (its argv, which other jobs on the node may list,
    names neither)."""
    if not _CREDENTIAL.fullmatch(credential):  # one word for scontrol's parser
        raise munge.MungeError("munge gave a credential of an unexpected form")
    result = proc.run(
        ["scontrol"], input_text=f"update JobId={job_id} Comment={credential}\n", timeout=60
    )
    if not result.ok:  # scontrol echoes its input: only its error is said
        raise proc.CommandError(["scontrol"], "could not set the job's comment", result.stderr)


if __name__ == "__main__":
    sys.exit(main())
