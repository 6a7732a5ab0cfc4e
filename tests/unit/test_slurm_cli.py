"""What reaches Slurm's commands: one argument per option, job ids checked."""

from __future__ import annotations

import pytest

from hpcbinder.seams.slurm import SlurmCLI, SubmitOptions


def test_each_option_is_one_argument_whatever_its_value() -> None:
    argv = SubmitOptions(partition="x --wrap=id", job_name="a b;c", cpus=2).argv()
    assert argv == ["--partition=x --wrap=id", "--cpus-per-task=2", "--job-name=a b;c"]


@pytest.mark.parametrize("job_id", ["1;rm", "-1", "--all", "12 13", ""])
def test_malformed_job_ids_never_reach_scontrol(job_id: str) -> None:
    with pytest.raises(ValueError, match="not a Slurm job id"):
        SlurmCLI().job(job_id)
    with pytest.raises(ValueError, match="not a Slurm job id"):
        SlurmCLI().cancel(job_id)
