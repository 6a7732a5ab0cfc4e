"""Resource requests are checked against the site's partitions on the
server side, whatever the form or API sent."""

from __future__ import annotations

import pytest

from hpcbinder.config import Site, parse_site
from hpcbinder.jobrequest import ResourceError, request_for

SITE = """
partitions:
  interactive: {max_time: "08:00:00", max_cpus: 4, max_mem: 8G}
  gpu: {max_time: "1-00:00:00", max_cpus: 16, max_mem: 64G, max_gpus: 2, accounts: [physics]}
profiles:
  small: {partition: interactive, cpus: 1, mem: 2G, time: "02:00:00"}
  gpu: {partition: gpu, cpus: 8, mem: 32G, gpus: 1, account: physics, time: "04:00:00"}
default_profile: small
"""


@pytest.fixture
def site() -> Site:
    return parse_site(SITE)


def test_profile_becomes_sbatch_options(site: Site) -> None:
    assert request_for(site, "gpu", {}).sbatch_options() == [
        "--partition=gpu",
        "--time=04:00:00",
        "--cpus-per-task=8",
        "--mem=32G",
        "--gres=gpu:1",
        "--account=physics",
    ]
    assert request_for(site, None, {}).partition == "interactive"


def test_overrides_within_limits(site: Site) -> None:
    request = request_for(site, "small", {"cpus": "4", "mem": "8G", "time": "08:00:00"})
    assert (request.cpus, request.mem, request.time) == (4, "8G", "08:00:00")


@pytest.mark.parametrize(
    ("profile", "overrides", "message"),
    [
        ("small", {"cpus": "5"}, "cpus: 5 is over partition interactive's max_cpus (4)"),
        ("small", {"time": "08:00:01"}, "time: 08:00:01 is over partition interactive's"),
        ("small", {"mem": "9G"}, "mem: 9G is over partition interactive's max_mem (8G)"),
        ("small", {"gpus": "1"}, "gpus: 1 is over partition interactive's max_gpus (0)"),
        ("gpu", {"account": "chemistry"}, "account: 'chemistry' may not use partition gpu"),
        ("small", {"partition": "debug"}, "partition: 'debug' is not a partition"),
        ("small", {"time": "1 day"}, "time: expected [D-]HH:MM:SS"),
        ("small", {"cpus": "two"}, "cpus: Input should be a valid integer"),
        ("small", {"mem": "8G; rm -rf /"}, "mem: expected a size"),
        ("small", {"nodes": "3"}, "nodes: not a resource that can be requested"),
        ("huge", {}, "profile: no profile 'huge' (this site has gpu, small)"),
    ],
)
def test_requests_over_limits_or_malformed_are_refused(
    site: Site, profile: str, overrides: dict[str, str], message: str
) -> None:
    with pytest.raises(ResourceError) as caught:
        request_for(site, profile, overrides)
    assert str(caught.value).startswith(message), str(caught.value)


def test_site_file_profiles_are_checked_against_their_partition() -> None:
    from hpcbinder.config import SiteConfigError

    with pytest.raises(SiteConfigError) as caught:
        parse_site(SITE.replace("cpus: 8, mem: 32G", "cpus: 32, mem: 32G"))
    assert caught.value.problems == ["profiles.gpu.cpus: 32 is over partition gpu's max_cpus (16)"]
