"""Archive providers: Zenodo, Figshare, Dataverse, HydroShare, CKAN,
Software Heritage, and DOIs that name one of them.

Their specs are BinderHub's (``zenodo/10.5281/zenodo.3242074``,
``figshare/10.6084/m9.figshare.9782777.v1``, ``dataverse/10.7910/DVN/TJCLKP``,
``hydroshare/<resource id or URL-escaped URL>``, ``ckan/<URL-escaped dataset
URL>``), plus repo2docker's ``doi/<DOI>`` and ``swhid/swh:1:dir|rev:<id>``.
A record is resolved as BinderHub resolves it, to its version: Zenodo's
record id (a concept DOI resolves to the latest), Figshare's article
version, Dataverse's dataset version, HydroShare's modification date,
CKAN's ``metadata_modified``, Software Heritage's directory id.

:attr:`ResolvedRepo.commit` is :meth:`Record.commit`: 40 hex digits of a
hash of the provider, the service, the record and its version, so the
rest of the pipeline (a checkout's name, the served checkout a job copies,
the workspace's marker) takes it as it takes a git commit, and checkouts
are cached by record version. :meth:`RecordProvider.fetch` looks the
record up again unless this provider resolved it, and refuses a record
whose version moved since.

Every URL a provider contacts, redirects included, is judged by the site
(:mod:`hpcbinder.sources.download`); the record's URL (``provider.url``,
what the site's trust, allow and ban patterns see for the link) is
judged at resolve too. Files are unpacked only by
:mod:`hpcbinder.sources.archives`, within ``repos.max_fetch_mb``,
``repos.max_fetch_files`` and ``repos.fetch_timeout_seconds``.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from abc import abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote, unquote, urlsplit

from hpcbinder import textpatterns
from hpcbinder.config import RepoPolicy
from hpcbinder.errors import RepoNotAllowed, SpecError
from hpcbinder.sources import archives, providers
from hpcbinder.sources.archives import Bounds, Budget, RecordError
from hpcbinder.sources.download import NotFound, Session, check_fetch_url
from hpcbinder.sources.providers import RepoProvider, ResolvedRepo, echo

#: A DOI as these providers take it: the characters a URL path holds as is.
_DOI = textpatterns.compile(r"10\.[0-9]{4,9}/[A-Za-z0-9._:+-]+(?:/[A-Za-z0-9._:+-]+)*")
_HEX32 = textpatterns.compile(r"[0-9a-f]{32}")
#: A HydroShare link's body: the resource id, or its resource page's URL.
_HYDROSHARE = textpatterns.compile(
    r"(?:https?://[a-z0-9.-]+(?::[0-9]{1,5})?/resource/)?([0-9a-f]{32})/?"
)
_SWHID = textpatterns.compile(r"swh:1:(dir|rev):([0-9a-f]{40})")
#: A record id in a landing page's path: Zenodo's digits, InvenioRDM's ``abcde-12345``.
_RECORD_ID = textpatterns.compile(r"[0-9a-z][0-9a-z-]{0,63}")
#: A CKAN dataset's name or id: lower case only, as CKAN makes them.
_CKAN_NAME = textpatterns.compile(r"[a-z0-9][a-z0-9_-]{0,99}")
_FIGSHARE_VERSION = textpatterns.compile(r"v([0-9]{1,9})")
_DIGITS = textpatterns.compile(r"[0-9]{1,18}")
#: A version label as a service writes it (a date, numbers).
_VERSION = textpatterns.compile(r"[A-Za-z0-9.:+_-]{1,64}")
#: Seconds between asks whether Software Heritage's vault has cooked a tarball.
VAULT_POLL_SECONDS = 2.0


@dataclass(frozen=True)
class RecordFile:
    """One file of a record: its path in the record and where to download it."""

    name: str
    url: str


@dataclass(frozen=True)
class Record:
    """A record at one version, as its service describes it: its files, or
    one archive to unpack (``inner``: the folder in it that is the record)."""

    provider: str
    service: str
    record: str
    version: str
    files: tuple[RecordFile, ...] = ()
    archive: str | None = None
    inner: tuple[str, ...] = ()

    @property
    def commit(self) -> str:
        """The record version's id in the pipeline (see the module's docstring)."""
        key = "\0".join(("hpcbinder-record-1", self.provider, self.service, self.record))
        return hashlib.sha256(f"{key}\0{self.version}".encode()).hexdigest()[:40]


def _field(data: Any, *path: str | int) -> Any:
    """``data[path[0]][path[1]]...``; KeyError-free: :class:`_Shape` if missing."""
    for key in path:
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            raise _Shape(str(key)) from None
    return data


def _text(data: Any, *path: str | int) -> str:
    value = _field(data, *path)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _Shape(str(path[-1]))
    return str(value)


class _Shape(Exception):
    """A service's JSON lacks a field the provider reads."""


def _service_of(url: str, services: Iterable[str]) -> str | None:
    """The one of ``services`` (base URLs) that ``url`` is on, if any."""
    parts = urlsplit(url)
    for service in services:
        base = urlsplit(service)
        same_origin = (parts.scheme, parts.netloc.lower()) == (base.scheme, base.netloc)
        if same_origin and (parts.path + "/").startswith(base.path.rstrip("/") + "/"):
            return service
    return None


class RecordProvider(RepoProvider):
    """A provider whose repositories are archived records, not git."""

    #: The field of ``repos.records`` naming this provider's service(s),
    #: where it is not the provider's prefix.
    records_field: ClassVar[str | None] = None
    #: What a link names, for messages ("Zenodo record 10.5281/zenodo.1").
    noun: ClassVar[str]
    label_ref = None

    def __init__(self, body: str, policy: RepoPolicy) -> None:
        self.looked_up: dict[str, Record] = {}
        super().__init__(body, policy)

    def parse(self, body: str) -> tuple[str, str]:
        self.identifier = self.identify(unquote(body.removesuffix("/")))
        return self.record_url(), "HEAD"

    @abstractmethod
    def identify(self, text: str) -> str:
        """The record's identifier in ``text`` (the spec after the prefix,
        unescaped), checked; SpecError otherwise."""

    @abstractmethod
    def record_url(self) -> str:
        """The record's URL: what the site's trust, allow and ban patterns see."""

    @abstractmethod
    def lookup(self, session: Session) -> Record:
        """The record at the version the link names now."""

    @classmethod
    def services(cls, policy: RepoPolicy) -> list[str]:
        """The service base URLs this provider reads: its ``repos.records`` field."""
        value = getattr(policy.records, cls.records_field or cls.prefix)
        return [value] if isinstance(value, str) else list(value)

    @classmethod
    def services_setting(cls) -> str:
        """The site setting that names this provider's service(s)."""
        return f"repos.records.{cls.records_field or cls.prefix}"

    @property
    def setting(self) -> str:
        """The site setting a message names for the hosts this provider asks."""
        return self.services_setting()

    def readable_name(self) -> str:
        return f"{self.display_name} {self.identifier}"

    @property
    def what(self) -> str:
        return f"{self.noun} {self.identifier}"

    def bounds(self) -> Bounds:
        policy = self.policy
        return Bounds(
            policy.max_fetch_mb << 20, policy.max_fetch_files, policy.fetch_timeout_seconds
        )

    def session(self, budget: Budget) -> Session:
        return Session(self.policy, budget, self.setting)

    def judge(self) -> None:
        """RepoNotAllowed unless the site allows the record's URL."""
        check_fetch_url(self.url, self.policy)

    def _looked_up(self, session: Session) -> Record:
        self.judge()
        try:
            record = self.lookup(session)
        except _Shape as exc:
            raise RecordError(
                f"{self.what}: the service's answer has no usable {exc} field; check {self.setting}"
            ) from None
        except (TypeError, ValueError, AttributeError):  # a field of another type
            raise RecordError(
                f"{self.what}: the service's answer is not shaped as its API's; check "
                f"{self.setting}"
            ) from None
        self.looked_up[record.commit] = record
        return record

    def resolve(self) -> ResolvedRepo:
        budget = Budget(self.bounds(), f"looking up {self.what}")
        with self.session(budget) as session:
            record = self._looked_up(session)
        return ResolvedRepo(self.spec, self.url, self.ref, record.commit)

    def fetch(self, resolved: ResolvedRepo, dest: Path) -> None:
        budget = Budget(self.bounds(), f"fetching {self.what}")
        with self.session(budget) as session:
            self._fetch(session, resolved, dest)

    def _fetch(self, session: Session, resolved: ResolvedRepo, dest: Path) -> None:
        budget = session.budget
        record = self.looked_up.get(resolved.commit) or self._looked_up(session)
        if record.commit != resolved.commit:
            raise RecordError(
                f"{self.what} has a new version since it was resolved; launch it again"
            )
        work = Path(tempfile.mkdtemp(prefix=".record-", dir=dest.parent))
        try:
            if record.archive is not None:
                archive = work / "archive"
                session.save(record.archive, archive, self.what)
                archives.unpack_archive(archive, dest, budget, inner=record.inner)
            else:
                files = work / "files"
                files.mkdir()
                _download_files(session, record, archives.Tree(files, budget), self.what)
                archives.unpack_record(files, dest, budget)
        except OSError as exc:  # a path too long for this host, say: the record's
            shutil.rmtree(dest, ignore_errors=True)
            raise RecordError(
                f"{self.what} cannot be written here ({exc.strerror or 'an error'}): "
                "its files' names or layout do not fit this host"
            ) from None
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _download_files(session: Session, record: Record, tree: archives.Tree, what: str) -> None:
    """Each of ``record``'s files at its path in ``tree``: named, laid out
    and counted as an archive's members are."""
    for each in record.files:
        parts = archives.member_path(each.name)
        if parts is not None:
            session.save(each.url, tree.place(each.name, parts), what)


class _DoiProvider(RecordProvider):
    """A record named by its DOI, whose landing page (the resolver's
    redirect) is on one of the site's services for the provider."""

    label_repo = "DOI"

    def identify(self, text: str) -> str:
        if not _DOI.fullmatch(text) or any(p in ("", ".", "..") for p in text.split("/")):
            raise SpecError(f"invalid DOI {echo(text)}: expected 10.NNNN/suffix")
        return text

    def record_url(self) -> str:
        return f"{self.policy.records.doi_resolver}/{self.identifier}"

    def judge(self) -> None:
        """A DOI names one record in any case (10.5281/ZENODO.1 is
        10.5281/zenodo.1), so a ban matching it in lower or upper case
        bans it as written too; allow and trust see it as written."""
        super().judge()
        resolver = self.policy.records.doi_resolver
        for spelling in (self.identifier.lower(), self.identifier.upper()):
            url = f"{resolver}/{spelling}"
            if any(textpatterns.compile(p).fullmatch(url) for p in self.policy.ban):
                raise RepoNotAllowed(f"{self.url} is banned on this site (repos.ban)")

    def landing(self, session: Session) -> str:
        """Where the DOI resolver sends this DOI."""
        return session.location(self.url, f"DOI {self.identifier}")

    def lookup(self, session: Session) -> Record:
        return self.from_landing(session, self.landing(session))

    @abstractmethod
    def from_landing(self, session: Session, landing: str) -> Record:
        """The record, given where its DOI leads."""

    def service_for(self, landing: str) -> str:
        """The site's service ``landing`` is on: a DOI of another service is
        not this provider's record (the site's trust and bans see the DOI)."""
        service = _service_of(landing, self.services(self.policy))
        if service is None:
            raise NotFound(
                f"{self.what}: the DOI leads to {urlsplit(landing).netloc or 'nowhere'}, "
                f"which is not among this site's {self.services_setting()}"
            )
        return service


class ZenodoProvider(_DoiProvider):
    prefix = "zenodo"
    display_name = "Zenodo DOI"
    label_repo = "Zenodo DOI"
    spec_example = "10.5281/zenodo.3242074"
    noun = "Zenodo record"

    def from_landing(self, session: Session, landing: str) -> Record:
        service = self.service_for(landing)
        record_id = _record_id(landing)
        if record_id is None:  # a concept DOI's /doi/... page redirects to the latest record
            landing = session.final_url(landing)
            service, record_id = self.service_for(landing), _record_id(landing)
        if record_id is None:
            raise NotFound(f"{self.what}: its DOI leads to no record ({self.setting})")
        data = session.json(f"{service}/api/records/{record_id}", self.what)
        entries = _field(data, "files")
        if isinstance(entries, dict):  # InvenioRDM's own shape
            entries = list(_field(entries, "entries").values())
        files = []
        for entry in entries:
            links = _field(entry, "links")
            url = links.get("content") or links.get("self") if isinstance(links, dict) else None
            if not isinstance(url, str):
                raise _Shape("links")
            files.append(RecordFile(_text(entry, "key"), url))
        return Record(self.prefix, service, record_id, record_id, tuple(files))


def _record_id(landing: str) -> str | None:
    """The id in a landing page's ``/record/ID`` or ``/records/ID`` path."""
    parts = urlsplit(landing).path.strip("/").split("/")
    if len(parts) >= 2 and parts[-2] in ("record", "records") and _RECORD_ID.fullmatch(parts[-1]):
        return parts[-1]
    return None


class FigshareProvider(_DoiProvider):
    prefix = "figshare"
    display_name = "Figshare DOI"
    label_repo = "Figshare DOI"
    spec_example = "10.6084/m9.figshare.9782777.v1"
    noun = "Figshare article"

    @property
    def setting(self) -> str:
        """Its API's: what a Figshare link asks after its DOI's landing page."""
        return "repos.records.figshare_api"

    def identify(self, text: str) -> str:
        doi = super().identify(text)
        self.article, self.version = _figshare_article(doi)
        return doi

    def from_landing(self, session: Session, landing: str) -> Record:
        # The article is read from the DOI, so the DOI must be Figshare's:
        # figshare/10.5281/zenodo.N would otherwise fetch Figshare's article
        # N under a Zenodo DOI that the site trusts.
        self.service_for(landing)
        api = self.policy.records.figshare_api
        version = self.version
        if version is None:  # BinderHub's rule: the latest version
            listed = session.json(f"{api}/articles/{self.article}/versions", self.what)
            numbers = [int(_text(each, "version")) for each in listed]
            if not numbers:
                raise NotFound(f"{self.what}: it has no versions ({self.setting})")
            version = str(max(numbers))
        data = session.json(f"{api}/articles/{self.article}/versions/{version}", self.what)
        files = tuple(
            RecordFile(_text(each, "name"), _text(each, "download_url"))
            for each in _field(data, "files")
            if not _field(each, "is_link_only")
        )
        return Record(self.prefix, api, self.article, version, files)


def _figshare_article(doi: str) -> tuple[str, str | None]:
    """(article id, version or None) in a Figshare DOI's last fields
    (``m9.figshare.9782777.v1``), as BinderHub reads them."""
    fields = doi.partition("/")[2].split(".")
    version_match = _FIGSHARE_VERSION.fullmatch(fields[-1])
    version = version_match.group(1) if version_match else None
    article = fields[-2] if version_match else fields[-1]
    if len(fields) < 2 or not _DIGITS.fullmatch(article):
        raise SpecError(
            f"invalid Figshare DOI {echo(doi)}: expected e.g. 10.6084/m9.figshare.ID.vN"
        )
    return article, version


class DataverseProvider(_DoiProvider):
    prefix = "dataverse"
    display_name = "Dataverse DOI"
    label_repo = "Dataverse DOI"
    spec_example = "10.7910/DVN/TJCLKP"
    noun = "Dataverse dataset"

    def from_landing(self, session: Session, landing: str) -> Record:
        service = self.service_for(landing)
        persistent = quote(f"doi:{self.identifier}", safe=":/")
        url = f"{service}/api/datasets/:persistentId/?persistentId={persistent}"
        data = session.json(url, self.what)
        if _field(data, "status") != "OK":
            raise NotFound(f"{self.what}: not found at {urlsplit(service).netloc} ({self.setting})")
        dataset = _field(data, "data")
        latest = _field(dataset, "latestVersion")
        major, minor = _text(latest, "versionNumber"), _text(latest, "versionMinorNumber")
        files = []
        for entry in _field(latest, "files"):
            if entry.get("restricted") is True:  # not for anonymous readers
                continue
            data_file = _field(entry, "dataFile")
            file_id = _text(data_file, "id")
            if not _DIGITS.fullmatch(file_id):
                raise _Shape("dataFile.id")
            original = data_file.get("originalFileName") if isinstance(data_file, dict) else None
            name = original if isinstance(original, str) else _text(data_file, "filename")
            folder = entry.get("directoryLabel") if isinstance(entry, dict) else None
            path = f"{folder}/{name}" if isinstance(folder, str) and folder else name
            query = "?format=original" if isinstance(original, str) else ""
            files.append(RecordFile(path, f"{service}/api/access/datafile/{file_id}{query}"))
        version = f"{_text(dataset, 'id')}.v{major}.{minor}"
        return Record(self.prefix, service, self.identifier, version, tuple(files))


class HydroshareProvider(RecordProvider):
    prefix = "hydroshare"
    display_name = "HydroShare resource"
    label_repo = "HydroShare resource id"
    spec_example = "8f7c2f0341ef4180b0dbe97f59130756"
    url_encode = True
    noun = "HydroShare resource"

    def identify(self, text: str) -> str:
        match = _HYDROSHARE.fullmatch(text)
        if match is None:
            raise SpecError(f"invalid HydroShare resource {echo(text)}: expected its 32-digit id")
        return match.group(1)

    def record_url(self) -> str:
        return f"{self.policy.records.hydroshare}/resource/{self.identifier}"

    def lookup(self, session: Session) -> Record:
        service = self.policy.records.hydroshare
        api = f"{service}/hsapi/resource/{self.identifier}"
        meta = session.json(f"{api}/scimeta/elements", self.what)
        dates = [d for d in _field(meta, "dates") if isinstance(d, dict)]
        modified = [_text(d, "start_date") for d in dates if d.get("type") == "modified"]
        if not modified or not _VERSION.fullmatch(modified[0]):
            raise _Shape("dates")
        return Record(
            self.prefix,
            service,
            self.identifier,
            modified[0],
            archive=f"{api}/",
            inner=(self.identifier, "data", "contents"),
        )


class CkanProvider(RecordProvider):
    prefix = "ckan"
    display_name = "CKAN dataset"
    label_repo = "CKAN dataset URL"
    spec_example = "https://demo.ckan.org/dataset/my-sample-dataset-001"
    url_encode = True
    noun = "CKAN dataset"

    def identify(self, text: str) -> str:
        portal, sep, name = text.rpartition("/dataset/")
        base = urlsplit(portal)
        ok = (
            sep
            and base.scheme in ("http", "https")
            and _CKAN_NAME.fullmatch(name)
            and not base.query
            and not base.fragment
        )
        if not ok:
            raise SpecError(
                f"invalid CKAN dataset URL {echo(text)}: expected https://PORTAL/dataset/NAME"
            )
        portals = self.policy.records.ckan
        if portals and portal not in portals:
            raise SpecError(
                f"{echo(portal)} is not among this site's CKAN portals ({self.setting})"
            )
        self.portal, self.name = portal, name
        return text

    def record_url(self) -> str:
        return self.identifier

    def lookup(self, session: Session) -> Record:
        data = session.json(f"{self.portal}/api/3/action/package_show?id={self.name}", self.what)
        if _field(data, "success") is not True:
            raise NotFound(f"{self.what}: not found ({self.setting})")
        result = _field(data, "result")
        files = []
        for resource in _field(result, "resources"):
            url = _text(resource, "url")
            name = unquote(urlsplit(url).path.rstrip("/").rpartition("/")[2]) or _text(
                resource, "id"
            )
            files.append(RecordFile(name, url))
        version = _text(result, "metadata_modified")
        if not _VERSION.fullmatch(version):
            raise _Shape("metadata_modified")
        return Record(self.prefix, self.portal, self.name, version, tuple(files))


class SoftwareHeritageProvider(RecordProvider):
    prefix = "swhid"
    display_name = "Software Heritage ID"
    label_repo = "SWHID (swh:1:dir:... or swh:1:rev:...)"
    spec_example = "swh:1:dir:1f7ca8e4b9f5a6fb5a0b1a8f3e8f6f0c7d5e3b21"
    records_field = "software_heritage"
    noun = "Software Heritage object"

    def identify(self, text: str) -> str:
        match = _SWHID.fullmatch(text)
        if match is None:
            raise SpecError(f"invalid SWHID {echo(text)}: expected swh:1:dir:ID or swh:1:rev:ID")
        self.kind, self.object_id = match.group(1), match.group(2)
        return text

    def record_url(self) -> str:
        return f"{self.policy.records.software_heritage}/{self.identifier}"

    def lookup(self, session: Session) -> Record:
        api = f"{self.policy.records.software_heritage}/api/1"
        directory = self.object_id
        if self.kind == "rev":
            revision = session.json(f"{api}/revision/{self.object_id}/", self.what)
            directory = _text(revision, "directory")
            if not _SWHID.fullmatch(f"swh:1:dir:{directory}"):
                raise _Shape("directory")
        else:
            session.json(f"{api}/resolve/{self.identifier}/", self.what)
        vault = f"{api}/vault/flat/swh:1:dir:{directory}/"
        cooking = session.json(vault, self.what, method="POST")
        while _text(cooking, "status") != "done":
            if _text(cooking, "status") == "failed":
                raise RecordError(f"{self.what}: Software Heritage's vault failed to pack it")
            time.sleep(min(VAULT_POLL_SECONDS, session.budget.remaining_seconds()))
            cooking = session.json(vault, self.what)
        return Record(
            self.prefix,
            self.policy.records.software_heritage,
            directory,
            directory,
            archive=_text(cooking, "fetch_url"),
        )


class DoiProvider(_DoiProvider):
    """``doi/<DOI>``: the provider whose service the DOI's landing page is on."""

    prefix = "doi"
    display_name = "DOI"
    spec_example = "10.5281/zenodo.3242074"
    records_field = "doi_resolver"
    noun = "DOI"

    @property
    def setting(self) -> str:
        """Every service's: a DOI may lead to any of them."""
        return "repos.records"

    def from_landing(self, session: Session, landing: str) -> Record:
        for cls in (ZenodoProvider, FigshareProvider, DataverseProvider):
            if _service_of(landing, cls.services(self.policy)) is not None:
                return cls(self.identifier, self.policy).from_landing(session, landing)
        if _service_of(landing, HydroshareProvider.services(self.policy)) is not None:
            found = [match.group(0) for match in _HEX32.finditer(urlsplit(landing).path)]
            if len(found) == 1:
                return HydroshareProvider(found[0], self.policy).lookup(session)
        raise NotFound(
            f"DOI {self.identifier} leads to {urlsplit(landing).netloc or 'nowhere'}, which is "
            "none of this site's record services (repos.records: zenodo, figshare, dataverse, "
            "hydroshare)"
        )


RECORD_PROVIDERS: tuple[type[RecordProvider], ...] = (
    ZenodoProvider,
    FigshareProvider,
    DataverseProvider,
    HydroshareProvider,
    CkanProvider,
    SoftwareHeritageProvider,
    DoiProvider,
)
providers.PROVIDERS.update({cls.prefix: cls for cls in RECORD_PROVIDERS})
