"""A researcher's resource request, checked against the site's limits.

The spawner (interactive servers) and batch mode both start from a profile
and the options a researcher sent, and both must refuse, on the server side,
anything over the partition's limits, and any partition or account the
researcher may not use, before a job is submitted. The result holds only
validated values, ready for a template's #SBATCH lines.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import ValidationError

from hpcbinder.config import Partition, Profile, Site, not_for_researchers, over_limits
from hpcbinder.errors import UserError

#: What a researcher may override in a profile.
OVERRIDABLE = ("partition", "time", "cpus", "mem", "gpus", "account", "qos")
#: What a launch link may set besides ``profile`` (``?profile=gpu&cpus=8``):
#: the sizes of a request, never where it runs or who pays for it.
LINK_OVERRIDES = ("time", "cpus", "mem", "gpus")


class ResourceError(UserError):
    """A request the site's limits or syntax refuse."""


@dataclass(frozen=True)
class JobRequest:
    """Validated Slurm resources for one job."""

    partition: str
    time: str
    cpus: int
    mem: str
    gpus: int
    account: str | None
    qos: str | None
    gpu_type: str | None = None
    constraint: str | None = None
    reservation: str | None = None
    exclusive: bool = False
    nodes: int = 1

    def sbatch_options(self) -> list[str]:
        """``--name=value`` options (each one argument, or one #SBATCH line)."""
        options = [
            f"--partition={self.partition}",
            f"--time={self.time}",
            f"--cpus-per-task={self.cpus}",
            f"--mem={self.mem}",
        ]
        if self.nodes > 1:
            options.append(f"--nodes={self.nodes}")
        if self.gpus:
            gres = f"gpu:{self.gpu_type}:{self.gpus}" if self.gpu_type else f"gpu:{self.gpus}"
            options.append(f"--gres={gres}")
        if self.constraint:
            options.append(f"--constraint={self.constraint}")
        if self.reservation:
            options.append(f"--reservation={self.reservation}")
        if self.exclusive:
            options.append("--exclusive")
        if self.account:
            options.append(f"--account={self.account}")
        if self.qos:
            options.append(f"--qos={self.qos}")
        return options


def user_groups(user: str) -> set[str]:
    """The Unix groups ``user`` is in: primary and supplementary (none for
    an unknown user)."""
    try:
        primary = pwd.getpwnam(user).pw_gid
    except KeyError:
        return set()
    names = set()
    for gid in os.getgrouplist(user, primary):
        try:
            names.add(grp.getgrgid(gid).gr_name)
        except KeyError:
            continue  # a gid without a name cannot be listed in the site file
    return names


def _partition_refusal(name: str, partition: Partition, user: str) -> str | None:
    if not partition.researchers:
        return not_for_researchers("", name)
    if partition.groups and not user_groups(user) & set(partition.groups):
        return (
            f"partition: {name} is only for members of {', '.join(partition.groups)}; "
            f"{user} is not one (site file: partitions.{name}.groups)"
        )
    return None


def _account_refusal(site: Site, account: str, user: str) -> str | None:
    if account not in site.accounts:
        if not site.accounts:
            return (
                f"account: {account} may not be named; this site charges Slurm's default "
                "account (site file: accounts)"
            )
        return f"account: {account} is not an account researchers may charge (site file: accounts)"
    groups = site.accounts[account]
    if groups and not user_groups(user) & set(groups):
        return (
            f"account: {account} is only for members of {', '.join(groups)}; "
            f"{user} is not one (site file: accounts.{account})"
        )
    return None


def partitions_for(site: Site, user: str) -> list[str]:
    """The site's partitions ``user`` may ask for, as the launch form lists them."""
    return [
        name
        for name, partition in site.partitions.items()
        if _partition_refusal(name, partition, user) is None
    ]


def accounts_for(site: Site, user: str) -> list[str]:
    """The Slurm accounts ``user`` may charge, as the site lists them."""
    return [account for account in site.accounts if _account_refusal(site, account, user) is None]


def request_for(
    site: Site,
    profile_name: str | None,
    overrides: Mapping[str, str | int | None],
    *,
    user: str,
) -> JobRequest:
    """The job ``profile_name`` (default: the site's) with ``overrides``,
    for ``user`` (the Unix account the job will run as)."""
    name = profile_name or site.default_profile
    base = site.profiles.get(name)
    if base is None:
        raise ResourceError(
            f"profile: no profile {name!r} (this site has {', '.join(sorted(site.profiles))})"
        )
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        raise ResourceError(
            f"{unknown[0]}: not a resource that can be requested "
            f"(choose from {', '.join(OVERRIDABLE)})"
        )
    values = {key: value for key, value in overrides.items() if value not in (None, "")}
    try:
        profile = Profile.model_validate({**base.model_dump(), **values})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        # A check across fields (gpu_type needs gpus) names its field itself.
        raise ResourceError(f"{where}: {message}" if where else message) from exc
    partition = site.partitions.get(profile.partition)
    if partition is None:
        raise ResourceError(f"partition: {profile.partition!r} is not a partition of this site")
    refusal = _partition_refusal(profile.partition, partition, user)
    if refusal is None and profile.account is not None:
        refusal = _account_refusal(site, profile.account, user)
    if refusal is not None:
        raise ResourceError(refusal)
    problems = over_limits("", profile, partition, profile.partition)
    if problems:
        raise ResourceError(problems[0].removeprefix("."))
    return JobRequest(
        profile.partition,
        profile.time,
        profile.cpus,
        profile.mem,
        profile.gpus,
        profile.account,
        profile.qos,
        gpu_type=profile.gpu_type,
        constraint=profile.constraint,
        reservation=profile.reservation,
        exclusive=profile.exclusive,
        nodes=profile.nodes,
    )


def link_overrides(query: Mapping[str, str]) -> dict[str, str]:
    """The resources a launch link's query sets (:data:`LINK_OVERRIDES`),
    for :func:`request_for` and the server's ``user_options``."""
    return {key: query[key] for key in LINK_OVERRIDES if query.get(key)}


def request_for_link(site: Site, query: Mapping[str, str], *, user: str) -> JobRequest:
    """The request a launch link makes (its ``profile`` and
    :func:`link_overrides`), checked exactly as the spawn form's."""
    return request_for(site, query.get("profile"), link_overrides(query), user=user)
