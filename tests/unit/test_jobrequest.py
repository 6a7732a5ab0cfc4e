"""Resource requests are checked against the site's partitions and accounts
on the server side, whatever the form or API sent."""

from __future__ import annotations

import grp
import os
import pwd

import pytest

from hpcbinder.config import Site, parse_site
from hpcbinder.jobs import request as jobrequest
from hpcbinder.jobs.request import ResourceError, request_for, user_groups

SITE = """
partitions:
  interactive: {max_time: "08:00:00", max_cpus: 4, max_mem: 8G}
  gpu:
    {max_time: "1-00:00:00", max_cpus: 16, max_mem: 64G, max_gpus: 2, accounts: [physics],
     groups: [gpu-users]}
  build: {max_time: "04:00:00", researchers: false}
accounts:
  physics: [physics]
  chemistry: []
profiles:
  small: {partition: interactive, cpus: 1, mem: 2G, time: "02:00:00"}
  gpu: {partition: gpu, cpus: 8, mem: 32G, gpus: 1, account: physics, time: "04:00:00"}
default_profile: small
"""

#: Who is in which Unix group, instead of the system's accounts.
GROUPS = {
    "alice": {"alice", "physics", "gpu-users"},
    "bob": {"bob"},
    "carol": {"carol", "gpu-users"},
}


@pytest.fixture(autouse=True)
def fake_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobrequest, "user_groups", lambda user: GROUPS.get(user, set()))


@pytest.fixture
def site() -> Site:
    return parse_site(SITE)


def test_profile_becomes_sbatch_options(site: Site) -> None:
    assert request_for(site, "gpu", {}, user="alice").sbatch_options() == [
        "--partition=gpu",
        "--time=04:00:00",
        "--cpus-per-task=8",
        "--mem=32G",
        "--gres=gpu:1",
        "--account=physics",
    ]
    assert request_for(site, None, {}, user="bob").partition == "interactive"


def test_overrides_within_limits(site: Site) -> None:
    request = request_for(
        site, "small", {"cpus": "4", "mem": "8G", "time": "08:00:00"}, user="alice"
    )
    assert (request.cpus, request.mem, request.time) == (4, "8G", "08:00:00")


@pytest.mark.parametrize(
    ("profile", "overrides", "message"),
    [
        ("small", {"cpus": "5"}, "cpus: 5 is over partition interactive's max_cpus (4)"),
        ("small", {"time": "08:00:01"}, "time: 08:00:01 is over partition interactive's"),
        ("small", {"mem": "9G"}, "mem: 9G is over partition interactive's max_mem (8G)"),
        ("small", {"mem": "8388609K"}, "mem: 8388609K is over partition interactive's max_mem"),
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
        request_for(site, profile, overrides, user="alice")
    assert str(caught.value).startswith(message), str(caught.value)


MEM_ZERO = "mem: must be more than 0 (Slurm reads 0 as all of a node's memory)"
TIME_ZERO = "time: must be more than 0 (Slurm reads 0 as no limit)"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mem": "0"}, MEM_ZERO),
        ({"mem": "0G"}, MEM_ZERO),
        ({"mem": "000M"}, MEM_ZERO),
        ({"time": "00:00:00"}, TIME_ZERO),
        ({"time": "0-00:00:00"}, TIME_ZERO),
    ],
)
def test_zero_would_lift_the_limit_and_is_refused(
    site: Site, overrides: dict[str, str], message: str
) -> None:
    with pytest.raises(ResourceError) as caught:
        request_for(site, "small", overrides, user="alice")
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("profile", "overrides", "user", "message"),
    [
        (
            "small",
            {"partition": "build"},
            "alice",
            "partition: build is not for researchers' jobs "
            "(site file: partitions.build.researchers)",
        ),
        (
            "gpu",
            {},
            "bob",
            "partition: gpu is only for members of gpu-users; bob is not one "
            "(site file: partitions.gpu.groups)",
        ),
        (
            "small",
            {"partition": "gpu", "account": "physics"},
            "nobody-known",
            "partition: gpu is only for members of gpu-users; nobody-known is not one "
            "(site file: partitions.gpu.groups)",
        ),
        (
            "small",
            {"account": "finance"},
            "alice",
            "account: finance is not an account researchers may charge (site file: accounts)",
        ),
        (
            "small",
            {"account": "physics"},
            "bob",
            "account: physics is only for members of physics; bob is not one "
            "(site file: accounts.physics)",
        ),
        (
            "gpu",
            {},
            "carol",
            "account: physics is only for members of physics; carol is not one "
            "(site file: accounts.physics)",
        ),
    ],
)
def test_partitions_and_accounts_the_user_may_not_use_are_refused(
    site: Site, profile: str, overrides: dict[str, str], user: str, message: str
) -> None:
    with pytest.raises(ResourceError) as caught:
        request_for(site, profile, overrides, user=user)
    assert str(caught.value) == message


def test_members_may_use_their_partition_and_account(site: Site) -> None:
    request = request_for(site, "small", {"partition": "gpu", "account": "physics"}, user="alice")
    assert (request.partition, request.account) == ("gpu", "physics")
    assert request_for(site, "small", {"account": "physics"}, user="alice").account == "physics"
    # An account listed without groups is every researcher's.
    assert request_for(site, "small", {"account": "chemistry"}, user="bob").account == "chemistry"


def test_without_accounts_no_account_may_be_named() -> None:
    site = Site()
    assert request_for(site, None, {}, user="alice").account is None
    with pytest.raises(ResourceError) as caught:
        request_for(site, None, {"account": "physics"}, user="alice")
    assert str(caught.value) == (
        "account: physics may not be named; this site charges Slurm's default account "
        "(site file: accounts)"
    )


def test_default_build_partition_is_not_for_researchers() -> None:
    with pytest.raises(ResourceError) as caught:
        request_for(Site(), None, {"partition": "build"}, user="alice")
    assert "(site file: partitions.build.researchers)" in str(caught.value)


def test_site_file_profiles_are_checked_against_their_partition() -> None:
    from hpcbinder.config import SiteConfigError

    with pytest.raises(SiteConfigError) as caught:
        parse_site(SITE.replace("cpus: 8, mem: 32G", "cpus: 32, mem: 32G"))
    assert caught.value.problems == ["profiles.gpu.cpus: 32 is over partition gpu's max_cpus (16)"]


def test_user_groups_reads_the_system() -> None:
    # user_groups as imported above: the real lookup, not the fake one.
    me = pwd.getpwuid(os.getuid())
    assert grp.getgrgid(me.pw_gid).gr_name in user_groups(me.pw_name)
    assert user_groups("no-such-user-hpcbinder") == set()
