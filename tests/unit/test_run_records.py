"""Run records: what a batch run writes into the researcher's job index and
each task's provenance keeps the keys and values earlier versions wrote,
reads back as the same record, and an index entry or provenance file that
is not one (half-written, hand-edited) is passed over instead of breaking
``hpcbinder jobs``."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from hpcbinder.config import Site
from hpcbinder.jobs.batch import BatchRun, BatchTask, ImageIdentity, render_batch_script
from hpcbinder.jobs.batchjobs import BatchJob, index_entry, read_index
from hpcbinder.jobs.records import RunRecord
from hpcbinder.jobs.request import request_for
from hpcbinder.sources.providers import ResolvedRepo

COMMIT = "0123456789abcdef0123456789abcdef01234567"
KEY = "0123456789abcdef0123456789abcdef"
RUN_DIR = Path("/home/alice/hpcbinder-runs/b-01234567")


def batch_run(tmp_path: Path, image: ImageIdentity, array: str | None = None) -> BatchRun:
    request = request_for(Site.model_validate({}), None, {}, user="alice")
    return BatchRun(
        user="alice",
        home=Path("/home/alice"),
        repo=ResolvedRepo("gh/a/b/HEAD", "https://x/a/b", "HEAD", COMMIT),
        env_key=KEY,
        image=image,
        launch=["apptainer", "exec", str(image.image)],
        checkout=tmp_path / "checkout",
        from_image=False,
        path="analysis.ipynb",
        args=[],
        tasks=[BatchTask(0, {"alpha": "2"})],
        per_task=False,
        array=array,
        request=request,
        run_dir=RUN_DIR,
    )


PLAIN = ImageIdentity(Path("/images/env.sif"), "a" * 64)
OVERLAY = ImageIdentity(Path("/images/env.overlay"), "b" * 64, Path("/images/base.sif"), "c" * 64)


def test_the_record_holds_the_keys_and_values_written_before(tmp_path: Path) -> None:
    run = batch_run(tmp_path, PLAIN, array="0-3")
    expected = {
        "spec": "gh/a/b/HEAD",
        "url": "https://x/a/b",
        "ref": "HEAD",
        "commit": COMMIT,
        "env_key": KEY,
        "image": "/images/env.sif",
        "image_sha256": "a" * 64,
        "run": "analysis.ipynb",
        "args": [],
        "array": "0-3",
        "resources": run.request.sbatch_options(),
        "run_dir": str(RUN_DIR),
    }
    assert run.record().json_text() == json.dumps(expected, sort_keys=True)
    overlay = json.loads(batch_run(tmp_path, OVERLAY).record().json_text())
    assert overlay == {
        **expected,
        "array": None,
        "image": "/images/env.overlay",
        "image_sha256": "b" * 64,
        "base_image": "/images/base.sif",
        "base_image_sha256": "c" * 64,
    }


def test_the_job_script_carries_the_same_record(tmp_path: Path) -> None:
    run = batch_run(tmp_path, OVERLAY)
    script = render_batch_script(run)
    line = next(x for x in script.splitlines() if x.startswith("record="))
    assert shlex.split(line.removeprefix("record=")) == [run.record().json_text()]


@pytest.mark.parametrize("image", [PLAIN, OVERLAY])
def test_records_round_trip_through_the_job_index(tmp_path: Path, image: ImageIdentity) -> None:
    record = batch_run(tmp_path, image, array="0-1").record()
    index = tmp_path / "jobs"
    index.mkdir()
    (index / "12.json").write_text(index_entry("12", record))  # hpcbinder sbatch
    # The job script's own entry (printf in slurm/batch.sbatch.j2).
    (index / "9.json").write_text(f'{{"job_id": "9", "run": {record.json_text()}}}\n')
    jobs = read_index(index)
    assert jobs == [BatchJob("9", record), BatchJob("12", record)]
    assert jobs[0].run_dir == RUN_DIR and jobs[0].task_ids() == ["9_0", "9_1"]
    assert (index / "12.json").read_text() == index_entry("12", jobs[1].record)


def test_malformed_index_entries_are_skipped(tmp_path: Path) -> None:
    record = batch_run(tmp_path, PLAIN).record()
    good = json.loads(index_entry("7", record))
    index = tmp_path / "jobs"
    index.mkdir()
    (index / "7.json").write_text(json.dumps(good))
    incomplete_run = {key: value for key, value in good["run"].items() if key != "commit"}
    bad = {
        "half": '{"job_id": "8", "run": {"spec"',
        "list": "[1, 2]",
        "text": '"job"',
        "no-run": '{"job_id": "8"}',
        "no-commit": json.dumps({"job_id": "8", "run": incomplete_run}),
        "run-not-a-mapping": '{"job_id": "8", "run": [1]}',
        "bad-args": json.dumps({"job_id": "8", "run": {**good["run"], "args": "x"}}),
        "bad-id": json.dumps({**good, "job_id": "8_1"}),
        "no-id": json.dumps({**good, "job_id": "abc"}),
    }
    for name, text in bad.items():
        (index / f"{name}.json").write_text(text)
    assert read_index(index) == [BatchJob("7", record)]
    assert read_index(tmp_path / "none") == []


def provenance_json(record: RunRecord, state: str, code: str, complete: str) -> str:
    """A provenance record as the job script's ``provenance`` function writes it."""
    parameters = json.dumps({"alpha": "2"})
    return (
        f'{{"run": {record.json_text()}, "parameters": {parameters}, "slurm_job_id": "41", '
        '"array_job_id": "40", "array_task_id": "1", "started": "2026-11-23T14:00:00Z", '
        f'"ended": "2026-11-23T14:01:00Z", "state": "{state}", "exit_code": {code}, '
        f'"complete": {complete}}}\n'
    )


def test_task_provenance_is_read_typed(tmp_path: Path) -> None:
    record = batch_run(tmp_path, PLAIN).record().model_copy(update={"run_dir": tmp_path})
    job = BatchJob("40", record)
    tasks = tmp_path / "job-40"
    for index, (text, incomplete) in enumerate(
        [
            (provenance_json(record, "completed", "0", "true"), False),
            (provenance_json(record, "failed", "3", "false"), True),
            (provenance_json(record, "running", "null", "false"), True),
            (provenance_json(record, "completed", "0", "true"), True),  # marker left
            ("[]", True),  # written over by the run: unreadable, never complete
            ('{"complete": true, "state": "completed"}', False),
        ]
    ):
        (tasks / f"task-{index}").mkdir(parents=True)
        (tasks / ".provenance").mkdir(exist_ok=True)
        (tasks / ".provenance" / f"task-{index}.json").write_text(text)
        if incomplete:
            (tasks / f"task-{index}" / "INCOMPLETE").touch()
    (tasks / "task-6").mkdir()
    outputs = job.tasks()
    first = outputs[0].provenance
    assert first is not None and first.run == record and first.parameters == {"alpha": "2"}
    assert (first.slurm_job_id, first.array_task_id, first.exit_code) == ("41", "1", 0)
    assert [task.describe("RUNNING" if i == 2 else None) for i, task in enumerate(outputs)] == [
        "complete",
        "INCOMPLETE: failed (exit 3)",
        "INCOMPLETE: running",
        "INCOMPLETE: completed (exit 0)",
        "INCOMPLETE: not started",
        "INCOMPLETE: not started",
        "INCOMPLETE: not started",
    ]
    assert outputs[2].describe("TIMEOUT") == "INCOMPLETE: ended by Slurm (TIMEOUT)"
