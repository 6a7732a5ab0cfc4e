"""Archive providers against loopback stand-ins that speak each service's API.

Specs are BinderHub's; each record resolves to its version and fetches to
the same files (:data:`tests.recordservices.CONTENT`); checkouts are
cached by record version; every URL contacted, redirects included, meets
the site's policy; fetches stay within the site's bounds; errors are one
line naming the record and the setting.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from hpcbinder.config import RepoPolicy
from hpcbinder.errors import RepoConfigError, RepoNotAllowed, SpecError, UserError
from hpcbinder.seams.addresses import AddressRule
from hpcbinder.sources import providers
from hpcbinder.sources.archives import FetchBoundExceeded, RecordError
from hpcbinder.sources.checkout import tree_id
from hpcbinder.sources.download import NotFound, _Guard
from hpcbinder.sources.records import RECORD_PROVIDERS, RecordProvider
from tests.recordservices import (
    CKAN_NAME,
    CONTENT,
    DATAVERSE_DOI,
    FIGSHARE_DOI,
    HYDROSHARE_DOI,
    HYDROSHARE_ID,
    ZENODO_CONCEPT,
    ZENODO_DOI,
    Services,
    answering,
    default_records,
    record_services,
    zipped,
)


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    with record_services(tmp_path_factory.mktemp("services")) as started:
        yield started


@pytest.fixture(autouse=True)
def _fresh_records(services: Services) -> Iterator[None]:
    yield
    for service in (services.zenodo, services.figshare, services.doi, services.ckan):
        service.records.clear()
    default_records(services)


def policy_for(services: Services, tmp_path: Path, **changes: Any) -> RepoPolicy:
    settings: dict[str, Any] = {
        "protocols": ["http"],
        **services.repos_setting(),
        "cache_dir": str(tmp_path / "cache"),
        **changes,
    }
    return RepoPolicy.model_validate(settings)


def fetched(spec: str, policy: RepoPolicy) -> tuple[providers.ResolvedRepo, Path]:
    provider = providers.parse_spec(spec, policy)
    resolved = provider.resolve()
    assert policy.cache_dir is not None
    return resolved, providers.checkout(provider, resolved, policy.cache_dir)


def files_of(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): path.read_text()
        for path in folder.rglob("*")
        if path.is_file() and ".git" not in path.relative_to(folder).parts
    }


FLAT = {name.rpartition("/")[2]: data for name, data in CONTENT.items()}


@pytest.mark.parametrize(
    "name", ["zenodo", "figshare", "dataverse", "hydroshare", "ckan", "swhid", "doi", "gist"]
)
def test_each_provider_resolves_and_fetches_its_record(
    services: Services, tmp_path: Path, name: str
) -> None:
    resolved, checkout = fetched(services.specs()[name], policy_for(services, tmp_path))
    assert providers.COMMIT.fullmatch(resolved.commit)
    # Figshare and CKAN files have no folders; the others keep the record's layout.
    assert files_of(checkout) == (FLAT if name in ("figshare", "ckan") else CONTENT)
    assert providers.served_checkout(policy_for(services, tmp_path), resolved.commit) == checkout
    assert len(tree_id(checkout)) >= 40


def test_every_provider_is_registered_with_what_a_link_generator_shows() -> None:
    for prefix in ("gist", "zenodo", "figshare", "hydroshare", "dataverse", "ckan", "doi", "swhid"):
        cls = providers.PROVIDERS[prefix]
        assert cls.display_name and cls.label_repo and cls.spec_example
    assert all(cls.label_ref is None for cls in RECORD_PROVIDERS)
    assert providers.PROVIDERS["gist"].label_ref


def test_a_concept_doi_resolves_to_the_latest_version_and_caches_by_version(
    services: Services, tmp_path: Path
) -> None:
    policy = policy_for(services, tmp_path)
    spec = f"zenodo/{ZENODO_CONCEPT}/"
    first, checkout = fetched(spec, policy)
    assert fetched(f"zenodo/{ZENODO_DOI}", policy)[0].commit == first.commit
    downloads = len([r for r in services.zenodo.requests if r.endswith("/content")])
    again, same = fetched(spec, policy)
    assert (again.commit, same) == (first.commit, checkout)
    assert len([r for r in services.zenodo.requests if r.endswith("/content")]) == downloads
    # A new version is published: the concept DOI now names another record.
    services.zenodo.records["3242080"] = {"repo.zip": zipped({"new.py": "print(2)\n"}, "r/")}
    services.zenodo.records["concepts"][ZENODO_CONCEPT] = "3242080"
    newer, new_checkout = fetched(spec, policy)
    assert newer.commit != first.commit
    assert files_of(new_checkout) == {"new.py": "print(2)\n"}
    assert files_of(checkout) == CONTENT  # the old version's checkout is kept


def test_figshare_without_version_takes_the_latest(services: Services, tmp_path: Path) -> None:
    article = FIGSHARE_DOI.rpartition(".")[2]
    services.figshare.records[article]["2"] = {"v2.py": "print(2)\n"}
    policy = policy_for(services, tmp_path)
    latest, checkout = fetched(f"figshare/{FIGSHARE_DOI}", policy)
    assert files_of(checkout) == {"v2.py": "print(2)\n"}
    assert latest.commit != fetched(f"figshare/{FIGSHARE_DOI}.v1", policy)[0].commit


@pytest.mark.parametrize(
    ("doi", "provider"),
    [
        (ZENODO_DOI, "zenodo"),
        (f"{FIGSHARE_DOI}.v1", "figshare"),
        (DATAVERSE_DOI, "dataverse"),
        (HYDROSHARE_DOI, "hydroshare"),
    ],
)
def test_a_doi_dispatches_by_its_landing_host(
    services: Services, tmp_path: Path, doi: str, provider: str
) -> None:
    """doi/ and the provider's own spec land on the same version (one checkout)."""
    policy = policy_for(services, tmp_path)
    own = HYDROSHARE_ID if provider == "hydroshare" else doi
    by_doi, checkout = fetched(f"doi/{doi}", policy)
    assert by_doi.commit == fetched(f"{provider}/{own}", policy)[0].commit
    assert files_of(checkout) in (CONTENT, FLAT)


def test_a_doi_elsewhere_names_the_settings(services: Services, tmp_path: Path) -> None:
    services.doi.records["10.1000/elsewhere"] = "http://example.org/paper"
    with pytest.raises(NotFound, match=r"example\.org.*repos\.records"):
        fetched("doi/10.1000/elsewhere", policy_for(services, tmp_path))
    # A Zenodo DOI of a site whose Zenodo is elsewhere: not this site's Zenodo.
    other = {**services.records_setting(), "zenodo": ["https://zenodo.org"]}
    with pytest.raises(NotFound, match=r"repos\.records\.zenodo"):
        fetched(f"zenodo/{ZENODO_DOI}", policy_for(services, tmp_path, records=other))


@pytest.mark.parametrize(
    "spec",
    [
        "zenodo/10.5281/zenodo.999",
        "figshare/10.6084/m9.figshare.1234.v1",
        "hydroshare/" + "0" * 32,
        "swhid/swh:1:dir:" + "0" * 40,
    ],
)
def test_an_unknown_record_is_not_found(services: Services, tmp_path: Path, spec: str) -> None:
    with pytest.raises(NotFound) as caught:
        fetched(spec, policy_for(services, tmp_path))
    message = str(caught.value)
    assert "not found" in message and "repos." in message and "\n" not in message


def test_an_unknown_ckan_dataset_is_not_found(services: Services, tmp_path: Path) -> None:
    spec = f"ckan/{quote(f'{services.ckan.url}/dataset/nothing', safe='')}"
    with pytest.raises(NotFound, match=r"not found.*repos\.records\.ckan"):
        fetched(spec, policy_for(services, tmp_path))


def test_an_unreachable_service_names_its_host_and_setting(
    services: Services, tmp_path: Path
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    records = {**services.records_setting(), "hydroshare": f"http://127.0.0.1:{port}"}
    with pytest.raises(RecordError) as caught:
        fetched(f"hydroshare/{HYDROSHARE_ID}", policy_for(services, tmp_path, records=records))
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message and "repos.records.hydroshare" in message
    assert f"HydroShare resource {HYDROSHARE_ID}" in message and "\n" not in message
    # A host that does not resolve: the same, naming it.
    records["hydroshare"] = "http://no-such-host.invalid"
    with pytest.raises(
        RecordError, match=r"HydroShare resource .*no-such-host\.invalid.*hydroshare"
    ):
        fetched(f"hydroshare/{HYDROSHARE_ID}", policy_for(services, tmp_path, records=records))


@pytest.mark.parametrize(
    "spec",
    [
        "zenodo/10.5281",
        "zenodo/not-a-doi",
        "zenodo/10.5281/../x",
        "zenodo/10.5281/a%2F..%2Fb",
        "figshare/10.6084/m9.figshare.x",
        "hydroshare/xyz",
        "ckan/https%3A%2F%2Fdemo.ckan.org%2Fnot-a-dataset",
        "ckan/file%3A%2F%2F%2Fetc%2Fdataset%2Fx",
        "swhid/swh:1:cnt:" + "0" * 40,
        "swhid/swh:1:dir:" + "0" * 40 + ";origin=https://x.org",
        "gist/user",
        "gist/user/not-hex",
        "doi/10.5281/zenodo.1%0Aevil",
    ],
)
def test_malformed_specs_are_refused(services: Services, tmp_path: Path, spec: str) -> None:
    with pytest.raises(SpecError):
        providers.parse_spec(spec, policy_for(services, tmp_path))


def test_ckan_portals_are_the_sites(services: Services, tmp_path: Path) -> None:
    spec = f"ckan/{quote('https://demo.ckan.org/dataset/x', safe='')}"
    with pytest.raises(SpecError, match=r"repos\.records\.ckan"):
        providers.parse_spec(spec, policy_for(services, tmp_path))


def test_gist_refs_are_binderhubs(services: Services, tmp_path: Path) -> None:
    policy = policy_for(services, tmp_path)
    user_gist = services.specs()["gist"].removeprefix("gist/").removesuffix("/HEAD")
    commits = {
        providers.parse_spec(f"gist/{user_gist}{ref}", policy).resolve().commit
        for ref in ("", "/", "/HEAD", "/master", "/main")
    }
    assert len(commits) == 1
    (commit,) = commits
    assert providers.parse_spec(f"gist/{user_gist}/{commit}", policy).resolve().commit == commit


def test_the_sites_ban_and_allow_apply_to_every_url_contacted(
    services: Services, tmp_path: Path
) -> None:
    spec = services.specs()["figshare"]
    # The record's own URL is judged, as a clone URL is.
    with pytest.raises(RepoNotAllowed, match=r"repos\.ban"):
        fetched(spec, policy_for(services, tmp_path, ban=[r"http://127\.0\.0\.1:\d+/10\.6084/.*"]))
    # So is its download's redirect to "S3".
    banned = policy_for(services, tmp_path, ban=[rf"{services.figshare.url}/s3/.*"])
    with pytest.raises(RepoNotAllowed, match=r"repos\.ban"):
        fetched(spec, banned)
    assert not any((tmp_path / "cache").rglob("hello.py"))
    # An allow list admits only what it lists: the DOI, its landing page and
    # the API, not the downloads.
    allow = [rf"{services.doi.url}/.*", rf"{services.figshare.url}/(articles|v2)/.*"]
    with pytest.raises(RepoNotAllowed, match=r"ndownloader.*repos\.allow"):
        fetched(spec, policy_for(services, tmp_path, allow=allow))
    allow.append(rf"{services.figshare.url}/(ndownloader|s3)/.*")
    fetched(spec, policy_for(services, tmp_path, allow=allow))


@pytest.mark.parametrize(
    "landing",
    ["file:///etc/passwd", "ftp://127.0.0.1/x", "http://user:secret@127.0.0.1/records/1"],
)
def test_a_doi_redirecting_off_http_or_with_credentials_is_refused(
    services: Services, tmp_path: Path, landing: str
) -> None:
    services.doi.records[ZENODO_DOI] = landing
    with pytest.raises(UserError) as caught:
        fetched(f"doi/{ZENODO_DOI}", policy_for(services, tmp_path))
    assert "secret" not in str(caught.value)


def test_a_download_redirecting_to_a_file_url_is_refused(
    services: Services, tmp_path: Path
) -> None:
    """The Zenodo stand-in's file link points at the DOI stand-in, which
    redirects to file:///etc/passwd: no hop is followed unjudged."""
    services.doi.records["evil"] = "file:///etc/passwd"
    record = services.zenodo.records[ZENODO_DOI.rpartition(".")[2]]
    record.clear()
    record["passwd"] = b"x"
    redirect = (302, {"Location": f"{services.doi.url}/evil"}, b"")
    with (
        answering(services.zenodo, redirect, "/files/passwd/content"),
        pytest.raises(RepoNotAllowed, match=r"protocol 'file'.*repos\.protocols"),
    ):
        fetched(services.specs()["zenodo"], policy_for(services, tmp_path))


def test_fetch_bounds_count_downloads_and_unpacked_bytes(
    services: Services, tmp_path: Path
) -> None:
    zenodo_id = ZENODO_DOI.rpartition(".")[2]
    services.zenodo.records[zenodo_id] = {"bomb.zip": zipped({"zeros": b"\0" * (3 << 20)}, "r/")}
    policy = policy_for(services, tmp_path, max_fetch_mb=1)
    with pytest.raises(FetchBoundExceeded, match=r"more than 1 MB.*repos\.max_fetch_mb"):
        fetched(services.specs()["zenodo"], policy)
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []
    services.zenodo.records[zenodo_id] = {f"f{i}.py": "x" for i in range(5)}
    with pytest.raises(FetchBoundExceeded, match=r"repos\.max_fetch_files"):
        fetched(services.specs()["zenodo"], policy_for(services, tmp_path, max_fetch_files=3))


def test_a_hostile_record_is_refused_and_leaves_nothing(services: Services, tmp_path: Path) -> None:
    zenodo_id = ZENODO_DOI.rpartition(".")[2]
    services.zenodo.records[zenodo_id] = {"repo.zip": zipped({"../../escape.py": "x"})}
    with pytest.raises(RepoConfigError, match=r"\.\. part"):
        fetched(services.specs()["zenodo"], policy_for(services, tmp_path))
    assert not list(tmp_path.rglob("escape.py"))
    # A record's own file names are checked as archive members are.
    services.zenodo.records[zenodo_id] = {"../escape.py": "x", "b": "y"}
    with pytest.raises(RepoConfigError, match=r"\.\. part"):
        fetched(services.specs()["zenodo"], policy_for(services, tmp_path))
    assert not list(tmp_path.rglob("escape.py"))
    for names in (["a/b", "a"], ["a", "a/b"], ["a", "./a"]):
        services.zenodo.records[zenodo_id] = {name: "x" for name in names} | {"c": "y"}
        if len(services.zenodo.records[zenodo_id]) < 3:  # ./a and a: one key each
            services.zenodo.records[zenodo_id] = {"a": "x", "./a": "y"}
        with pytest.raises(RepoConfigError, match="appears twice"):
            fetched(services.specs()["zenodo"], policy_for(services, tmp_path))


def test_a_record_whose_version_moved_is_not_fetched_as_the_old_one(
    services: Services, tmp_path: Path
) -> None:
    policy = policy_for(services, tmp_path)
    spec = services.specs()["ckan"]
    resolved = providers.parse_spec(spec, policy).resolve()
    services.ckan.records[CKAN_NAME]["modified"] = "2024-01-01T00:00:00.000000"
    fresh = providers.parse_spec(spec, policy)  # a build server that did not resolve it
    with pytest.raises(RecordError, match="new version"):
        providers.checkout(fresh, resolved, tmp_path / "cache")


def test_the_build_server_connects_to_no_internal_address_unless_the_site_lists_it(
    services: Services, tmp_path: Path
) -> None:
    """A service's JSON names its downloads: a hostile one could send the
    build account to its own loopback or the cloud's metadata address, and
    the answer would become a file of a world-readable checkout."""
    with pytest.raises(RepoNotAllowed, match=r"127\.0\.0\.1.*repos\.internal_networks"):
        fetched(services.specs()["zenodo"], policy_for(services, tmp_path, internal_networks=[]))
    # A download redirected to another internal address is refused before
    # any connection (the site lists 127.0.0.1 only).
    zenodo_id = ZENODO_DOI.rpartition(".")[2]
    port = services.zenodo.url.rpartition(":")[2]
    redirect = (302, {"Location": f"http://127.0.0.2:{port}/secret"}, b"")
    services.zenodo.records[zenodo_id] = {"passwd": b"x"}
    with (
        answering(services.zenodo, redirect, "/files/passwd/content"),
        pytest.raises(RepoNotAllowed, match=r"127\.0\.0\.2 is at 127\.0\.0\.2"),
    ):
        fetched(services.specs()["zenodo"], policy_for(services, tmp_path))
    assert not any(r.endswith("/secret") for r in services.zenodo.requests)
    # A name is judged by the address it resolves to, not its text.
    with pytest.raises(RepoNotAllowed, match=r"localhost is at .*internal_networks"):
        rule = AddressRule([ipaddress.ip_network("10.0.0.0/8")])
        _Guard(rule, {}, time.monotonic() + 30).address("localhost", 80)


@pytest.fixture
def trickling_server() -> Iterator[str]:
    """Answers every connection with a status line, then one header byte
    every 0.2 s, forever: a server that would hold a reader."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                try:
                    connection.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                    while not stop.wait(0.2):
                        connection.sendall(b"a")
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    listener.close()


def test_a_server_trickling_its_answer_is_stopped_at_the_deadline(
    services: Services, tmp_path: Path, trickling_server: str
) -> None:
    records = {**services.records_setting(), "hydroshare": trickling_server}
    policy = policy_for(services, tmp_path, records=records, fetch_timeout_seconds=1.5)
    started = time.monotonic()
    with pytest.raises(FetchBoundExceeded, match=r"repos\.fetch_timeout_seconds"):
        fetched(f"hydroshare/{HYDROSHARE_ID}", policy)
    assert time.monotonic() - started < 5


def test_a_stalling_resolver_is_stopped_at_the_deadline(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DNS lookup counts against the fetch's time: the old code waited
    for the resolver however long it took, past repos.fetch_timeout_seconds."""
    released = threading.Event()
    original = socket.getaddrinfo

    def stalling(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "records.stall.test":
            released.wait(20)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return original(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", stalling)
    records = {**services.records_setting(), "hydroshare": "http://records.stall.test"}
    policy = policy_for(services, tmp_path, records=records, fetch_timeout_seconds=1.5)
    started = time.monotonic()
    try:
        with pytest.raises(FetchBoundExceeded, match=r"repos\.fetch_timeout_seconds"):
            fetched(f"hydroshare/{HYDROSHARE_ID}", policy)
        assert time.monotonic() - started < 5
    finally:
        released.set()


def test_hostile_json_is_one_line(services: Services, tmp_path: Path) -> None:
    answers = [b"[" * 200_000, b'{"success": true, "result": {"resources": 5}}', b"\xff\xfe"]

    for answer in answers:
        reply = (200, {"Content-Type": "application/json"}, answer)
        with answering(services.ckan, reply), pytest.raises(RecordError) as caught:
            fetched(services.specs()["ckan"], policy_for(services, tmp_path))
        assert "\n" not in str(caught.value) and "repos.records.ckan" in str(caught.value)


@pytest.mark.parametrize(
    ("spec", "url"),
    [
        ("zenodo/10.5281/zenodo.3242074/", "https://doi.org/10.5281/zenodo.3242074"),
        (
            "figshare/10.6084/m9.figshare.9782777.v1/",
            "https://doi.org/10.6084/m9.figshare.9782777.v1",
        ),
        ("dataverse/10.7910/DVN/TJCLKP/", "https://doi.org/10.7910/DVN/TJCLKP"),
        (
            "hydroshare/https%3A%2F%2Fwww.hydroshare.org%2Fresource%2F"
            "8f7c2f0341ef4180b0dbe97f59130756%2F",
            "https://www.hydroshare.org/resource/8f7c2f0341ef4180b0dbe97f59130756",
        ),
        (
            "ckan/https%3A%2F%2Fdemo.ckan.org%2Fdataset%2Fsample-dataset-1/",
            "https://demo.ckan.org/dataset/sample-dataset-1",
        ),
        ("gist/jupyterhub/0123abcd/HEAD", "https://gist.github.com/jupyterhub/0123abcd.git"),
        ("doi/10.5281/zenodo.3242074", "https://doi.org/10.5281/zenodo.3242074"),
    ],
)
def test_mybinder_links_parse_with_the_public_services_by_default(spec: str, url: str) -> None:
    """The links mybinder.org's own documentation shows, with a default site."""
    provider = providers.parse_spec(spec, RepoPolicy())
    assert (provider.url, provider.ref) == (url, "HEAD")


def test_a_datasets_restricted_files_are_left_out(services: Services, tmp_path: Path) -> None:
    """Dataverse lists restricted files to anyone but serves them to none
    of an anonymous fetch: the rest of the dataset is the repository."""
    services.dataverse.records[DATAVERSE_DOI]["restricted"] = {"data/numbers.csv"}
    try:
        _resolved, checkout = fetched(services.specs()["dataverse"], policy_for(services, tmp_path))
    finally:
        del services.dataverse.records[DATAVERSE_DOI]["restricted"]
    assert files_of(checkout) == {"hello.py": CONTENT["hello.py"]}


@pytest.mark.parametrize("doi", ["10.5281/ZENODO.3242074", "10.5281/Zenodo.3242074"])
def test_a_doi_in_another_case_is_the_banned_record(
    services: Services, tmp_path: Path, doi: str
) -> None:
    """doi.org resolves DOIs in any case: a ban written in lower case holds."""
    services.doi.records[doi] = services.doi.records[ZENODO_DOI]
    ban = [rf"{services.doi.url}/10\.5281/zenodo\.3242074"]
    for prefix in ("zenodo", "doi"):
        with pytest.raises(RepoNotAllowed, match=r"repos\.ban"):
            fetched(f"{prefix}/{doi}", policy_for(services, tmp_path, ban=ban))
    fetched(f"zenodo/{doi}", policy_for(services, tmp_path))


def test_a_figshare_link_of_another_services_doi_is_refused(
    services: Services, tmp_path: Path
) -> None:
    """Figshare's article is read from the DOI's last number: under a DOI the
    site trusts (any Zenodo record), figshare/10.5281/zenodo.N named
    Figshare's article N, anyone's."""
    article = FIGSHARE_DOI.rpartition(".")[2]
    doi = f"10.5281/zenodo.{article}"
    services.doi.records[doi] = f"{services.zenodo.url}/records/{article}"
    asked = len(services.figshare.requests)
    with pytest.raises(NotFound, match=r"not among this site's repos\.records\.figshare"):
        fetched(f"figshare/{doi}", policy_for(services, tmp_path))
    assert len(services.figshare.requests) == asked


def test_a_records_folders_count_as_its_archives_do(services: Services, tmp_path: Path) -> None:
    """A record's own files make their folders through the extractor's
    tree: each folder counts against repos.max_fetch_files, and no name
    is deeper than archives.MAX_DEPTH."""
    zenodo_id = ZENODO_DOI.rpartition(".")[2]
    services.zenodo.records[zenodo_id] = {"a/b/c/d/e/f.py": "x", "g.py": "y"}
    with pytest.raises(FetchBoundExceeded, match=r"more than 4 files.*repos\.max_fetch_files"):
        fetched(services.specs()["zenodo"], policy_for(services, tmp_path, max_fetch_files=4))
    services.zenodo.records[zenodo_id] = {"d/" * 65 + "f.py": "x", "g.py": "y"}
    with pytest.raises(RepoConfigError, match="more than 64 folders deep"):
        fetched(services.specs()["zenodo"], policy_for(services, tmp_path))
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


def test_a_record_path_too_long_for_this_host_names_the_record(
    services: Services, tmp_path: Path
) -> None:
    """A name within the record's limits that the checkout's place makes
    longer than the host's PATH_MAX: one line naming the record, not an
    internal error."""
    zenodo_id = ZENODO_DOI.rpartition(".")[2]
    services.zenodo.records[zenodo_id] = {"/".join(["p" * 250] * 16): "x", "g.py": "y"}
    with pytest.raises(RecordError, match=rf"Zenodo record {ZENODO_DOI} cannot be written here"):
        fetched(services.specs()["zenodo"], policy_for(services, tmp_path))


@pytest.mark.parametrize("provider", RECORD_PROVIDERS, ids=lambda cls: cls.prefix)
def test_each_provider_reads_the_services_of_the_setting_it_names(
    provider: type[RecordProvider],
) -> None:
    """One rule for every record provider: the services it reads are the
    ``repos.records`` field its messages name (the old code repeated it in
    each provider, and HydroShare, CKAN and Software Heritage had none)."""
    records = {
        "doi_resolver": "https://doi.example.org",
        "zenodo": ["https://zenodo.example.org", "https://rdm.example.org"],
        "figshare": ["https://figshare.example.org"],
        "dataverse": ["https://dataverse.example.org"],
        "hydroshare": "https://hydroshare.example.org",
        "ckan": ["https://ckan.example.org"],
        "software_heritage": "https://swh.example.org",
    }
    field = provider.services_setting().removeprefix("repos.records.")
    value = records[field]
    expected = [value] if isinstance(value, str) else value
    assert provider.services(RepoPolicy.model_validate({"records": records})) == expected
