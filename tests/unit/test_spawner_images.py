"""The spawner launches an image of the store only when the build server
says the researcher may (the store's one rule, ``ImageStore.may_launch``):
another researcher's image of a repository on this host is a 403, and
submits no job; a build server that cannot be asked leaves the same rule
to the store's records. With
Slurm a scripted command runner and the build server a fake over a real
store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tornado import web

from hpcbinder.images.store import META, ImageStore
from tests.unit.fakes import BuildServerUses, ScriptedSlurm, publish_fake_image
from tests.unit.test_spawner import ON_THIS_HOST, USER, spawner_for, started

KEY = "ab" * 16


def store_with_image(tmp_path: Path, used_by: str) -> ImageStore:
    """The spawner's store (as spawner_for sets it) with image :data:`KEY`
    of no network repository (a local one's), built or used by ``used_by``."""
    store = ImageStore(tmp_path / "images")
    publish_fake_image(store, KEY)
    store.record_use(KEY, used_by)
    return store


def test_another_researchers_image_is_refused_before_any_job(tmp_path: Path) -> None:
    uses = BuildServerUses(store_with_image(tmp_path, used_by="alice"))
    slurm = ScriptedSlurm([ON_THIS_HOST])
    spawner = spawner_for(tmp_path, slurm, {"image": KEY})
    spawner.build_server = uses
    with pytest.raises(web.HTTPError) as refused:
        asyncio.run(spawner.start())
    assert refused.value.status_code == 403
    assert refused.value.log_message == f"image: no image {KEY} that {USER} may launch"
    assert uses.reports == [(KEY, USER)]
    assert slurm.calls == []  # no job, so its comment pins nothing either
    assert uses.store.users(KEY) == {"alice"}


def test_an_image_the_researcher_used_starts_and_its_use_is_recorded(tmp_path: Path) -> None:
    uses = BuildServerUses(store_with_image(tmp_path, used_by=USER))
    slurm = ScriptedSlurm([ON_THIS_HOST])
    spawner = spawner_for(tmp_path, slurm, {"image": KEY})
    spawner.build_server = uses
    asyncio.run(started(spawner))
    assert uses.reports == [(KEY, USER)]
    [submission] = slurm.submissions
    assert str(tmp_path / "images" / "envs" / KEY) in submission.script


def test_with_the_build_server_down_the_stores_records_rule_on_launches(
    tmp_path: Path,
) -> None:
    """A build node that is down stops builds, not launches of images
    built: the store's rule, read from its records, admits the researcher's
    image and refuses another's (no job); an unreadable record is a 503."""
    uses = BuildServerUses(store_with_image(tmp_path, used_by=USER), reachable=False)
    slurm = ScriptedSlurm([ON_THIS_HOST])
    spawner = spawner_for(tmp_path, slurm, {"image": KEY})
    spawner.build_server = uses
    asyncio.run(started(spawner))
    assert uses.reports == [(KEY, USER)] and len(slurm.submissions) == 1

    others = tmp_path / "others"
    others.mkdir()
    uses = BuildServerUses(store_with_image(others, used_by="alice"), reachable=False)
    slurm = ScriptedSlurm([ON_THIS_HOST])
    spawner = spawner_for(others, slurm, {"image": KEY})
    spawner.build_server = uses
    with pytest.raises(web.HTTPError) as refused:
        asyncio.run(spawner.start())
    assert refused.value.status_code == 403
    assert refused.value.log_message == f"image: no image {KEY} that {USER} may launch"
    assert slurm.calls == []

    (others / "images" / "envs" / KEY / META).write_text("{not json")
    with pytest.raises(web.HTTPError) as unreadable:
        asyncio.run(spawner._admit_image(KEY))
    assert unreadable.value.status_code == 503
    message = str(unreadable.value.log_message)
    assert message.startswith(f"cannot check that {USER} may launch image {KEY}")
    assert "cannot reach the build server" in message and "build.server_url" in message
    assert "\n" not in message
    assert slurm.calls == []


def test_a_site_base_needs_no_ruling(tmp_path: Path) -> None:
    uses = BuildServerUses(ImageStore(tmp_path / "images"), reachable=False)
    slurm = ScriptedSlurm([ON_THIS_HOST])
    spawner = spawner_for(tmp_path, slurm, {"image": "base:default"})
    spawner.build_server = uses
    asyncio.run(started(spawner))
    assert uses.reports == [] and len(slurm.submissions) == 1


def test_the_build_servers_own_refusal_is_not_overruled_by_the_store(tmp_path: Path) -> None:
    """Review finding: only a build server that cannot be asked leaves the
    ruling to the store's records; its own refusals and failures (a 403
    for an account it does not serve, a MUNGE credential that does not
    verify, a 5xx) stand: a 503 naming them, no job."""
    failure = "the build server did not record the use of " + KEY + ": 403: not an account"
    uses = BuildServerUses(store_with_image(tmp_path, used_by=USER), failure=failure)
    slurm = ScriptedSlurm([ON_THIS_HOST])
    spawner = spawner_for(tmp_path, slurm, {"image": KEY})
    spawner.build_server = uses
    with pytest.raises(web.HTTPError) as refused:
        asyncio.run(spawner.start())
    assert refused.value.status_code == 503
    assert str(refused.value.log_message).endswith(failure)
    assert slurm.calls == []
