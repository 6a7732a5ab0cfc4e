"""Resource requests like an HPC portal's: a profile's GPU type,
constraint, reservation, exclusive nodes and node count reach the job
scripts' #SBATCH lines exactly and safely; a launch link's overrides are
checked as the spawn form's are, and refused with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcbinder.config import Site, SiteConfigError, parse_site
from hpcbinder.jobs import request as jobrequest
from hpcbinder.jobs.request import ResourceError, link_overrides, request_for, request_for_link
from hpcbinder.jobs.serverscript import ServerJob, render_server_script

SITE = """
partitions:
  interactive: {max_time: "08:00:00", max_cpus: 4, max_mem: 8G}
  gpu: {max_time: "1-00:00:00", max_cpus: 16, max_mem: 64G, max_gpus: 4, max_nodes: 2,
        gpu_types: [a100, v100]}
profiles:
  small: {partition: interactive}
  gpu:
    partition: gpu
    cpus: 8
    mem: 32G
    gpus: 2
    gpu_type: a100
    constraint: "intel&[ib1|ib2]"
    reservation: course-2026
    exclusive: true
    nodes: 2
default_profile: small
"""


@pytest.fixture(autouse=True)
def any_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobrequest, "user_groups", lambda user: {user})


@pytest.fixture
def site() -> Site:
    return parse_site(SITE)


def test_a_gpu_type_profile_renders_its_sbatch_lines(site: Site) -> None:
    request = request_for(site, "gpu", {}, user="alice")
    script = render_server_script(
        site,
        ServerJob(
            "alice",
            Path("/home/alice"),
            request,
            ["apptainer", "--quiet", "exec", "/images/x.sif"],
            ["jupyterhub-singleuser"],
        ),
    )
    lines = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    for expected in (
        "#SBATCH --partition=gpu",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --nodes=2",
        "#SBATCH --gres=gpu:a100:2",
        "#SBATCH --constraint=intel&[ib1|ib2]",
        "#SBATCH --reservation=course-2026",
        "#SBATCH --exclusive",
    ):
        assert expected in lines, lines
    assert "--nv" in script  # GPUs reach the container


def test_a_plain_profile_adds_none_of_them(site: Site) -> None:
    options = request_for(site, "small", {}, user="alice").sbatch_options()
    assert options == [
        "--partition=interactive",
        "--time=02:00:00",
        "--cpus-per-task=1",
        "--mem=2G",
    ]
    gpus = request_for(site, "gpu", {"gpus": "4"}, user="alice").sbatch_options()
    assert "--gres=gpu:a100:4" in gpus


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ("{partition: gpu, gpus: 1, gpu_type: h100}", "gpu_type: h100 is not one of partition"),
        ("{partition: gpu, gpu_type: a100}", "gpu_type: needs gpus of 1 or more"),
        ("{partition: gpu, nodes: 3}", "nodes: 3 is over partition gpu's max_nodes (2)"),
        ('{partition: gpu, constraint: "intel ib"}', "constraint: expected node features"),
        ('{partition: gpu, constraint: "x\\"\\n#SBATCH --uid=0"}', "constraint: expected"),
        ("{partition: gpu, constraint: --uid=0}", "constraint: expected node features"),
        ('{partition: gpu, reservation: "r --uid=0"}', "reservation: expected letters"),
        ("{partition: gpu, gpus: 1, gpu_type: 'a100:8'}", "gpu_type: expected letters"),
    ],
)
def test_site_files_with_unsafe_or_impossible_profiles_are_refused(
    profile: str, message: str
) -> None:
    with pytest.raises(SiteConfigError) as caught:
        parse_site(SITE + f"\nprofiles:\n  bad: {profile}\ndefault_profile: bad\n")
    assert any(message in problem for problem in caught.value.problems), caught.value.problems


def test_link_overrides_are_the_sizes_only() -> None:
    query = {
        "profile": "gpu",
        "time": "02:00:00",
        "cpus": "8",
        "mem": "",
        "partition": "interactive",
        "account": "x",
        "labpath": "a.ipynb",
    }
    assert link_overrides(query) == {"time": "02:00:00", "cpus": "8"}


def test_link_requests_are_checked_like_the_form(site: Site) -> None:
    request = request_for_link(site, {"profile": "gpu", "time": "02:00:00"}, user="alice")
    assert (request.partition, request.time, request.gpu_type) == ("gpu", "02:00:00", "a100")
    for query, message in (
        ({"cpus": "8"}, "cpus: 8 is over partition interactive's max_cpus (4)"),
        ({"profile": "gpu", "gpus": "5"}, "gpus: 5 is over partition gpu's max_gpus (4)"),
        ({"profile": "gpu", "gpus": "0"}, "gpu_type: needs gpus of 1 or more"),
        ({"time": "99:00:00"}, "time: 99:00:00 is over partition interactive's max_time"),
        ({"mem": "1T"}, "mem: 1T is over partition interactive's max_mem (8G)"),
        ({"profile": "nope"}, "profile: no profile 'nope'"),
    ):
        with pytest.raises(ResourceError) as caught:
            request_for_link(site, query, user="alice")
        assert str(caught.value).startswith(message), str(caught.value)
