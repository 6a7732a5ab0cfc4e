"""What a batch run records of itself: the run record every job index entry
(``~/.hpcbinder/jobs/JOB.json``) and task provenance
(``job-JOB/.provenance/task-N.json``, copied to the task's ``provenance.json``)
carries, and the provenance a task writes around it.

The job script writes these files with ``printf`` (slurm/batch.sbatch.j2),
so the JSON is the contract: the models read exactly what it writes and
:meth:`RunRecord.json_text` writes exactly what earlier versions wrote
(the same keys, no ``base_image`` keys for a plain image), so indexes and
run folders from before stay readable and comparable.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


def _absent(value: object) -> bool:
    return value is None


class RunRecord(BaseModel):
    """The run: repository at its commit, image by digest, file, arguments,
    array and resources, and the run folder its outputs go to."""

    model_config = ConfigDict(frozen=True)

    spec: str
    url: str
    ref: str
    commit: str
    env_key: str
    image: Path  # the image, or for an overlay image its overlay
    image_sha256: str
    base_image: Path | None = Field(default=None, exclude_if=_absent)
    base_image_sha256: str | None = Field(default=None, exclude_if=_absent)
    run: str  # the file run, relative to the repository
    args: list[str]
    array: str | None
    resources: list[str]  # sbatch options
    run_dir: Path

    def json_text(self) -> str:
        """The record as the index and provenance files hold it (sorted keys)."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)


class TaskProvenance(BaseModel):
    """One task's provenance record, rewritten by its job as the task
    starts (``running``) and ends."""

    model_config = ConfigDict(frozen=True)

    run: RunRecord
    parameters: dict[str, str]
    slurm_job_id: str
    array_job_id: str  # empty outside an array
    array_task_id: str
    started: str  # UTC, ISO 8601
    ended: str
    state: str  # running, completed, failed…, killed by Slurm…
    exit_code: int | None  # None while running
    complete: bool
