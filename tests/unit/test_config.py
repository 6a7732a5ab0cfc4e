"""The site file: defaults describe the dev cluster, and every mistake is
reported with its place in the file."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from hpcbinder.cli.main import main
from hpcbinder.config import Site, SiteConfigError, load_site, parse_site


def problems(text: str) -> list[str]:
    with pytest.raises(SiteConfigError) as caught:
        parse_site(text, "site.yaml")
    return caught.value.problems


def test_defaults_are_the_dev_cluster() -> None:
    site = Site()
    assert set(site.partitions) == {"interactive", "batch", "build"}
    assert site.default_partition == "interactive"
    assert site.build.account == "hpcbuild"
    assert not site.partitions["build"].researchers and site.partitions["interactive"].researchers
    assert site.accounts == {}
    assert site.base_image_path("default") == Path("/var/lib/hpcbinder/images/bases/default.sif")


def test_a_site_writes_only_what_differs() -> None:
    site = parse_site("image_store: /shared/images\nbuild: {account: imgbuild}\n")
    assert site.image_store == Path("/shared/images")
    assert site.build.account == "imgbuild"
    assert site.build.partition == "build"


def test_errors_name_their_path_in_the_file() -> None:
    found = problems(
        "partitions:\n"
        "  gpu: {max_time: forever}\n"
        "  interactive: {max_time: '1-00:00:00'}\n"
        "buidl: {account: x}\n"
        "bases: {default: {python: '3'}}\n"
    )
    assert "partitions.gpu.max_time: expected [D-]HH:MM:SS" in found
    assert "buidl: unknown setting" in found
    assert any(p.startswith("bases.default.python:") for p in found)
    assert len(found) == 3


def test_default_partition_must_exist() -> None:
    assert problems("partitions: {short: {}}\n") == [
        "default_partition: 'interactive' is not one of partitions"
    ]


def test_profiles_may_not_use_a_partition_closed_to_researchers() -> None:
    assert problems("profiles: {b: {partition: build}}\ndefault_profile: b\n") == [
        "profiles.b.partition: build is not for researchers' jobs "
        "(site file: partitions.build.researchers)"
    ]
    assert problems("default_partition: build\n") == [
        "default_partition: build is not for researchers' jobs "
        "(site file: partitions.build.researchers)"
    ]


def test_profile_accounts_must_be_listed_in_accounts() -> None:
    text = "profiles: {small: {account: physics}}\n"
    assert problems(text) == [
        "profiles.small.account: physics is not one of accounts "
        "(the accounts researchers may charge)"
    ]
    site = parse_site(text + "accounts: {physics: [physics, chem-staff]}\n")
    assert site.accounts == {"physics": ["physics", "chem-staff"]}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "profiles: {small: {mem: '0'}}\n",
            "profiles.small.mem: must be more than 0 (Slurm reads 0 as all of a node's memory)",
        ),
        (
            "profiles: {small: {time: '0-00:00:00'}}\n",
            "profiles.small.time: must be more than 0 (Slurm reads 0 as no limit)",
        ),
        (
            "partitions: {interactive: {max_mem: 0G}}\n",
            "partitions.interactive.max_mem: must be more than 0 "
            "(Slurm reads 0 as all of a node's memory)",
        ),
        (
            "partitions: {interactive: {max_time: '00:00:00'}}\n",
            "partitions.interactive.max_time: must be more than 0 (Slurm reads 0 as no limit)",
        ),
    ],
)
def test_sizes_and_times_must_be_more_than_zero(text: str, expected: str) -> None:
    assert problems(text) == [expected]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("partitions: [a, b\n", "line 2, column 1: not valid YAML"),
        ("- just\n- a list\n", "(top level): expected a mapping of settings"),
        ("build: {account: 'root; rm -rf /'}\n", "build.account: expected a Unix account name"),
    ],
)
def test_malformed_files(text: str, expected: str) -> None:
    assert any(p.startswith(expected) for p in problems(text)), problems(text)


def test_load_site_reads_env_then_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site_file = tmp_path / "site.yaml"
    site_file.write_text("image_store: /elsewhere\n")
    monkeypatch.setenv("HPCBINDER_SITE", str(site_file))
    assert load_site().image_store == Path("/elsewhere")
    with pytest.raises(SiteConfigError, match="cannot read"):
        load_site(tmp_path / "missing.yaml")


def test_config_check_command(tmp_path: Path) -> None:
    bad = tmp_path / "site.yaml"
    bad.write_text("partitions:\n  gpu: {max_time: '25h'}\ndefault_partition: gpu\n")
    result = CliRunner().invoke(main, ["config", "check", str(bad)])
    assert result.exit_code == 2
    assert "partitions.gpu.max_time: expected [D-]HH:MM:SS" in result.output

    bad.write_text(
        "partitions:\n  gpu: {max_time: '1-01:00:00'}\ndefault_partition: gpu\n"
        "profiles: {g: {partition: gpu}}\ndefault_profile: g\n"
    )
    result = CliRunner().invoke(main, ["config", "check", str(bad)])
    assert result.exit_code == 0, result.output
    assert "site file is valid: 1 partitions" in result.output


def test_example_site_file_is_valid() -> None:
    from tests.conftest import REPO

    site = load_site(REPO / "configs" / "site.example.yaml")
    assert site.python_policy == "nearest"
    assert site.dockerfiles.from_map["python:3.11-slim"] == "base:default"
    assert site.network.mirrors.pypi_index == "https://pypi-mirror.example.edu/simple"
    assert site.profiles["gpu"].gpus == 1 and site.default_profile == "small"
    assert site.partitions["gpu"].groups == ["gpu-users"]
    assert not site.partitions["build"].researchers
    assert site.accounts["physics"] == ["physics"]
