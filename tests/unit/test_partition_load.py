"""What the launch forms show of the cluster: each partition's free CPUs,
GPUs and queue from sinfo and squeue (a fake runner answers), and only the
partitions and accounts the researcher may use."""

from __future__ import annotations

from pathlib import Path

from hpcbinder.jobs.request import accounts_for, partitions_for
from hpcbinder.seams.slurm import PartitionLoad, SlurmCLI
from tests.repohelpers import site_for_tests
from tests.unit.fakes import ByProgram


def test_loads_add_up_node_groups_gpus_and_pending_jobs() -> None:
    sinfo = (
        "interactive*|4/12/0/16|(null)\n"
        "gpu|8/0/0/8|gpu:a100:4\n"
        "gpu|2/6/0/8|gpu:a100:2(S:0),gpu:v100:2\n"
        "broken|n/a|(null)\n"
    )
    squeue = "interactive\ngpu\ngpu\ninteractive,gpu\n"
    answers = ByProgram({"sinfo": (0, sinfo, ""), "squeue": (0, squeue, "")})
    loads = SlurmCLI(answers).partition_load()
    assert loads["interactive"] == PartitionLoad("interactive", 12, 16, 0, 2)
    assert loads["gpu"] == PartitionLoad("gpu", 6, 16, 8, 3)
    assert "broken" not in loads


def test_a_researcher_sees_only_what_they_may_use(tmp_path: Path) -> None:
    site = site_for_tests(
        tmp_path,
        partitions={
            "interactive": {"max_time": "08:00:00"},
            "build": {"max_time": "04:00:00", "researchers": False},
            "physics": {"max_time": "08:00:00", "groups": ["no-such-group-here"]},
        },
        accounts={"open": [], "physics": ["no-such-group-here"]},
        default_partition="interactive",
    )
    assert partitions_for(site, "root") == ["interactive"]
    assert accounts_for(site, "root") == ["open"]
