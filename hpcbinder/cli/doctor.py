"""``hpcbinder doctor``: is this host ready to build images and launch them?

Each check returns a :class:`CheckResult`; a check never raises, so one
broken piece shows as one ✗ line with its fix and the others still run.
A required check that fails makes the whole report fail; an advisory one
(✱) only warns, e.g. a base image that has not been built yet.
"""

from __future__ import annotations

import enum
import importlib.metadata
import os
import pwd
import shutil
import stat
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hpcbinder.config import Site
from hpcbinder.errors import UserError
from hpcbinder.images.builder import base_is_current
from hpcbinder.jobs.servers import SERVER_ENV, SERVER_LOG_READER
from hpcbinder.render import templating
from hpcbinder.seams import apptainer, proc
from hpcbinder.seams.slurm import PartitionState, SlurmCLI, SlurmError, SubmitOptions

MIN_APPTAINER = (1, 1, 0)  # unprivileged squashfuse mounts and --fakeroot via subuid
SUBID_RANGE = 65536
JUPYTERHUB_MAJOR = 6
DOCTOR_JOB_TIMEOUT = 120.0
NODE_TMP = "/tmp"  # noqa: S108 - the test job's output, on the compute node


class Status(enum.Enum):
    OK = "✓"
    FAIL = "✗"
    WARN = "✱"


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str
    hint: str = ""

    def line(self) -> str:
        """One line: a program's multi-line error is folded into it."""
        text = f"{self.status.value} {self.name}: {' '.join(self.detail.split())}"
        return f"{text} — fix: {self.hint}" if self.hint and self.status != Status.OK else text


def _ok(name: str, detail: str) -> CheckResult:
    return CheckResult(name, Status.OK, detail)


def _fail(name: str, detail: str, hint: str) -> CheckResult:
    return CheckResult(name, Status.FAIL, detail, hint)


def _warn(name: str, detail: str, hint: str) -> CheckResult:
    return CheckResult(name, Status.WARN, detail, hint)


START_DAEMONS = "start the daemon (dev cluster: slurm/devcluster up)"


def check_munge() -> CheckResult:
    name = "munge"
    try:
        credential = proc.check(proc.run(["munge", "-n"], timeout=10)).stdout
        proc.check(proc.run(["unmunge"], input_text=credential, timeout=10))
    except proc.CommandError as exc:
        return _fail(name, f"cannot create and decode a credential ({exc})", START_DAEMONS)
    return _ok(name, "credentials encode and decode")


def check_controller(slurm: SlurmCLI) -> CheckResult:
    name = "slurm controller"
    try:
        host = slurm.ping()
    except (SlurmError, proc.CommandError) as exc:
        return _fail(name, str(exc), START_DAEMONS + "; check SlurmctldHost in slurm.conf")
    return _ok(name, f"slurmctld at {host} is up")


def _partition_state(partition: PartitionState) -> str:
    if not partition.available:
        return "down"
    return "/".join(sorted(partition.node_states))


def check_partitions(site: Site, slurm: SlurmCLI) -> CheckResult:
    name = "slurm partitions"
    try:
        found = slurm.partitions()
    except (SlurmError, proc.CommandError) as exc:
        return _fail(name, f"cannot list partitions ({exc})", START_DAEMONS)
    wanted = sorted({*site.partitions, site.build.partition})
    missing = [part for part in wanted if part not in found]
    unusable = [
        f"{part} ({_partition_state(found[part])})"
        for part in wanted
        if part in found and not found[part].usable
    ]
    if missing or unusable:
        problems = [f"missing: {', '.join(missing)}"] if missing else []
        problems += [f"no usable node: {', '.join(unusable)}"] if unusable else []
        return _fail(
            name,
            "; ".join(problems),
            "define the partitions of the site file in slurm.conf and resume their nodes",
        )
    return _ok(name, ", ".join(wanted) + " up with usable nodes")


def check_apptainer(site: Site) -> CheckResult:
    name = "apptainer"
    # As the build account where this account may become it (root), else as itself.
    account = site.build.account if proc.current_user() == "root" else proc.current_user()
    try:
        found = apptainer.version(user=account)
    except proc.CommandError as exc:
        return _fail(
            name,
            f"not usable by {account}: {exc}",
            "install Apptainer ≥ 1.1 on build and compute nodes",
        )
    text = ".".join(map(str, found))
    if found < MIN_APPTAINER:
        return _fail(name, f"version {text} is older than 1.1", "upgrade Apptainer to ≥ 1.1")
    return _ok(name, f"version {text} (as {account})")


def _subid_count(path: Path, user: str, uid: int) -> int:
    total = 0
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return 0
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] in (user, str(uid)) and parts[2].isdigit():
            total += int(parts[2])
    return total


def check_fakeroot(site: Site) -> CheckResult:
    name = "fakeroot builds"
    account = site.build.account
    try:
        uid = pwd.getpwnam(account).pw_uid
    except KeyError:
        return _fail(
            name, f"build account {account!r} does not exist", f"create it: useradd -m {account}"
        )
    short = [
        path.name
        for path in (Path("/etc/subuid"), Path("/etc/subgid"))
        if _subid_count(path, account, uid) < SUBID_RANGE
    ]
    if short:
        return _fail(
            name,
            f"{account} has fewer than {SUBID_RANGE} ids in {' and '.join(short)}",
            f"usermod --add-subuids/--add-subgids a range of {SUBID_RANGE} for {account}",
        )
    helper = shutil.which("newuidmap")
    if helper is None or not os.stat(helper).st_mode & stat.S_ISUID:
        return _fail(name, "newuidmap is missing or not setuid", "install the uidmap package")
    return _ok(name, f"{account} has subordinate uid and gid ranges; newuidmap present")


def check_fuse() -> CheckResult:
    name = "squashfuse"
    helper = shutil.which("squashfuse_ll") or shutil.which("squashfuse")
    hint = "install squashfuse and make /dev/fuse readable and writable by all (mode 666)"
    if helper is None:
        return _warn(name, "not installed: every launch unpacks the image to a sandbox", hint)
    try:
        mode = os.stat("/dev/fuse").st_mode
    except OSError:
        return _warn(name, "/dev/fuse is missing: every launch unpacks the image", hint)
    if mode & 0o006 != 0o006:
        return _warn(
            name, f"/dev/fuse is mode {stat.S_IMODE(mode):o}: users cannot mount SIFs", hint
        )
    return _ok(name, f"{Path(helper).name} present, /dev/fuse usable by all")


def check_image_store(site: Site) -> CheckResult:
    name = "image store"
    store, account = site.image_store, site.build.account
    if not store.is_dir():
        return _fail(name, f"{store} does not exist", f"install -d -o {account} -m 755 {store}")
    info = store.stat()
    try:
        owner = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        owner = str(info.st_uid)
    if owner != account or not info.st_mode & stat.S_IWUSR:
        # Read off the folder, not tried as the account: any account may run doctor.
        return _fail(
            name, f"{store} is {owner}'s, not writable by {account}", f"chown {account} {store}"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022:
        return _fail(
            name, f"{store} is mode {mode:o}: others could replace images", f"chmod go-w {store}"
        )
    return _ok(name, f"{store} written only by {account}")


def check_ca_bundle(site: Site) -> CheckResult:
    """The site's ``network.ca_bundle`` decides which servers every fetch
    and build trusts: whoever may change it (or a folder above it) may
    stand in for any HTTPS host the build server reaches."""
    name = "CA bundle"
    bundle = site.network.ca_bundle
    if bundle is None:
        return _ok(name, "none set: fetches and builds trust the system's CA store")
    try:
        real = bundle.resolve(strict=True)
        info = real.stat()
    except OSError as exc:
        return _fail(name, f"{bundle}: {exc.strerror}", "check network.ca_bundle in the site file")
    problems = []
    if info.st_uid != 0 or stat.S_IMODE(info.st_mode) & 0o022:
        problems.append(f"{real} is uid {info.st_uid}'s, mode {stat.S_IMODE(info.st_mode):o}")
    for folder in real.parents:
        above = folder.stat()
        if above.st_uid != 0 or (above.st_mode & 0o022 and not above.st_mode & stat.S_ISVTX):
            problems.append(
                f"its folder {folder} is uid {above.st_uid}'s, mode {stat.S_IMODE(above.st_mode):o}"
            )
    if problems:
        return _warn(
            name,
            f"network.ca_bundle: {'; '.join(problems)}: others could change whom fetches trust",
            f"chown root {real} and chmod go-w it and its folders",
        )
    return _ok(name, f"{bundle} written only by root")


def check_base_images(site: Site) -> CheckResult:
    """Every base of the site file is built, from the definition the site
    file gives it now: runtime.txt may pick any of them, and a base left
    behind by a site-file change (another mirror, release or CA bundle)
    would build repositories on what the site no longer declares."""
    name = "base images"
    fix = f"hpcbinder base build --missing (as {site.build.account})"
    try:
        hub_major: int | None = int(importlib.metadata.version("jupyterhub").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        hub_major = None  # the jupyterhub check says so; built is all we can tell
    missing, stale = [], []
    for base in site.bases:
        if not site.base_image_path(base).is_file():
            missing.append(base)
            continue
        if hub_major is None:
            continue
        try:
            current = base_is_current(site, base, hub_major)
        except UserError as exc:
            return _fail(name, str(exc), "correct the base in the site file")
        except (OSError, ValueError):  # unreadable metadata: rebuilding is the fix too
            current = False
        if not current:
            stale.append(base)
    problems = []
    if missing:
        problems.append(f"not built yet: {', '.join(missing)}")
    if stale:
        problems.append(f"built from another definition than the site file's: {', '.join(stale)}")
    if problems:
        return _warn(name, "; ".join(problems), fix)
    offered = ", ".join(f"{base} (Python {image.python})" for base, image in site.bases.items())
    return _ok(name, f"{offered} in {site.image_store / 'bases'}")


def check_jupyter() -> CheckResult:
    name = "jupyterhub"
    versions = {}
    for package in ("jupyterhub", "batchspawner"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return _fail(name, f"{package} is not installed", "pip install hpcbinder")
    major = int(versions["jupyterhub"].split(".")[0])
    if major != JUPYTERHUB_MAJOR:
        return _fail(
            name,
            f"jupyterhub {versions['jupyterhub']} is not {JUPYTERHUB_MAJOR}.x",
            f"pip install 'jupyterhub>={JUPYTERHUB_MAJOR},<{JUPYTERHUB_MAJOR + 1}'",
        )
    return _ok(
        name, f"jupyterhub {versions['jupyterhub']}, batchspawner {versions['batchspawner']}"
    )


def check_python() -> CheckResult:
    """Advisory: whether this Python's tarfile parses pax headers in linear
    time (CVE-2024-6232, fixed in 3.11.10 and 3.12.6 and by distributions'
    patches, which bring ``_header_length_prefix_re``). Records' tarballs
    are refused pax headers over 16 kB either way."""
    name = "python"
    version = sys.version.split()[0]
    if not hasattr(tarfile, "_header_length_prefix_re"):
        return _warn(
            name,
            f"{sys.executable} ({version}) has tarfile's quadratic pax-header parser "
            "(CVE-2024-6232)",
            "install hpcbinder on a patched Python (the distribution's, or 3.11.10+/3.12.6+)",
        )
    return _ok(name, f"{version}, tarfile patched for CVE-2024-6232")


#: What the service account runs as researchers (configs/sudoers.hpcbinder).
SERVICE_COMMANDS = ("/usr/bin/sbatch", "/usr/bin/squeue", "/usr/bin/scancel", SERVER_LOG_READER)
SUDOERS_HINT = "install configs/sudoers.hpcbinder as /etc/sudoers.d/hpcbinder (README: Deploying)"


def _sudo_list(account: str, *query: str) -> proc.CommandResult:
    """``sudo -l`` of ``account``'s rules: root may ask for any account, an
    account for itself only."""
    other = ["-U", account] if proc.current_user() != account else []
    return proc.run(["sudo", "-n", "-l", *other, *query], timeout=10)


def check_sudo_rules(site: Site, researcher: str | None) -> CheckResult:
    """The service account's sudo rules are the shipped ones: Slurm and the
    server-log reader as researchers, no SETENV, nothing as root or the
    build account."""
    name = "sudo rules"
    accounts = [a for a in site.build.requesters if _exists(a)]
    if not accounts:
        return _warn(name, "no service account of build.requesters exists here", SUDOERS_HINT)
    if proc.current_user() not in ("root", *accounts):
        return _warn(name, "not checked: run doctor as root or as the service account", "")
    problems = []
    for account in accounts:
        listing = _sudo_list(account)
        if not listing.ok:
            problems.append(f"{account} has no sudo rules")
            continue
        if "SETENV" in listing.stdout:
            problems.append(f"{account} may set any variable (SETENV): remove it")
        problems += _env_keep_problems(account, listing.stdout)
        for target in ("root", site.build.account):
            if _sudo_list(account, "-u", target, "/usr/bin/sbatch").ok:
                problems.append(f"{account} may run sbatch as {target}")
        for command in SERVICE_COMMANDS if researcher else ():
            if not _sudo_list(account, "-u", str(researcher), command).ok:
                problems.append(f"{account} may not run {command} as {researcher}")
    if problems:
        return _fail(name, "; ".join(problems), SUDOERS_HINT)
    checked = f" as {researcher}" if researcher else ""
    return _ok(name, f"{', '.join(accounts)}: Slurm and the server-log reader{checked}, no more")


def _env_keep_problems(account: str, listing: str) -> list[str]:
    """What is wrong with the variables sudo keeps for ``account`` (``sudo
    -l``'s ``env_keep="..."``): a pattern (it also matches the service's own
    secrets), or a server variable the hub passes that sudo would drop."""
    kept: set[str] = set()
    for part in listing.split("env_keep")[1:]:
        kept.update(part.partition('"')[2].partition('"')[0].split())
    problems = []
    if any("*" in name for name in kept):
        problems.append(f"{account} keeps variables by pattern (env_keep with *): name each")
    missing = {apptainer.CONTAINER_ENV_PREFIX + name for name in SERVER_ENV} - kept
    if missing:
        problems.append(f"{account} cannot pass a server's {', '.join(sorted(missing))} (env_keep)")
    return problems


def _exists(account: str) -> bool:
    try:
        pwd.getpwnam(account)
    except KeyError:
        return False
    return True


def check_job(site: Site, slurm: SlurmCLI, user: str) -> CheckResult:
    """Submit a real job as ``user`` that runs Apptainer on a compute node."""
    name = "test job"
    base = site.base_image_path(site.default_base)
    script = templating.render_text(
        "slurm", "doctor.sbatch.j2", image=str(base) if base.is_file() else ""
    )
    output = Path(NODE_TMP) / f"hpcbinder-doctor-{user}-{os.getpid()}.out"
    options = SubmitOptions(
        partition=site.default_partition,
        time="00:05:00",
        job_name="hpcbinder-doctor",
        output=str(output),
        chdir=NODE_TMP,
    )
    started = time.monotonic()
    try:
        job_id = slurm.submit(script, options, user=user)
        info = slurm.wait(job_id, timeout=DOCTOR_JOB_TIMEOUT)
    except (SlurmError, proc.CommandError) as exc:
        return _fail(name, str(exc), f"submit a job as {user} by hand and read its error")
    seconds = time.monotonic() - started
    if info.state != "COMPLETED" or info.exit_code != 0:
        tail = ""
        if output.is_file():
            tail = " | ".join(output.read_text(errors="replace").strip().splitlines()[-3:])
        return _fail(
            name,
            f"job {job_id} on {info.node_list or '?'} ended {info.state} "
            f"(exit {info.exit_code}): {tail or 'no output'}",
            f"read {output} on {info.node_list or 'the node'}",
        )
    output.unlink(missing_ok=True)
    ran = "ran the base image" if base.is_file() else "ran apptainer"
    return _ok(name, f"job {job_id} as {user} {ran} on {info.node_list} in {seconds:.1f} s")


def run_checks(site: Site, slurm: SlurmCLI, job_user: str | None = None) -> list[CheckResult]:
    """Every check, in the order a sysadmin would fix them."""
    checks: list[Callable[[], CheckResult]] = [
        check_munge,
        lambda: check_controller(slurm),
        lambda: check_partitions(site, slurm),
        lambda: check_apptainer(site),
        lambda: check_fakeroot(site),
        check_fuse,
        lambda: check_image_store(site),
        lambda: check_ca_bundle(site),
        lambda: check_base_images(site),
        check_jupyter,
        check_python,
        lambda: check_sudo_rules(site, job_user),
    ]
    if job_user is not None:
        checks.append(lambda: check_job(site, slurm, job_user))
    return [check() for check in checks]


def passed(results: list[CheckResult]) -> bool:
    return all(result.status != Status.FAIL for result in results)
