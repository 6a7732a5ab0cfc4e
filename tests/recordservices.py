"""Loopback stand-ins for the archive services hpcbinder's providers use.

One HTTP server per service, each answering the service's real API with the
JSON shapes of its published documentation, real files and real zips:

- a DOI resolver: ``GET /<doi>`` answers 302 to the landing page (doi.org);
- Zenodo: ``/records/<id>`` landing, ``/doi/<doi>`` (a concept DOI's
  redirect to the latest record), ``/api/records/<id>`` and
  ``/api/records/<id>/files/<key>/content``;
- Figshare: landing ``/articles/...``, the API ``/v2/articles/<id>/versions``
  and ``/v2/articles/<id>/versions/<v>``, downloads ``/ndownloader/files/<id>``
  redirecting to ``/s3/<id>`` (as figshare's go to S3);
- Dataverse: ``/citation?persistentId=doi:...`` landing,
  ``/api/datasets/:persistentId/?persistentId=doi:...`` and
  ``/api/access/datafile/<id>``;
- HydroShare: ``/resource/<id>/`` landing, ``/hsapi/resource/<id>/scimeta/elements``
  and the resource's bag zip at ``/hsapi/resource/<id>/``;
- CKAN: ``/api/3/action/package_show?id=<name>`` and resource downloads;
- Software Heritage: ``/api/1/resolve/<swhid>/``, ``/api/1/revision/<id>/``
  and the vault (``POST`` then ``GET /api/1/vault/flat/<swhid>/``, its
  ``raw/`` tarball);
- a gist host: a git repository over smart HTTP (``git http-backend``),
  anonymous.

Every record holds the same tiny repository (:data:`CONTENT`, no
environment file), so that one environment image serves a build of each.
Tests change a service's records (``services.zenodo.records[...]``) to
publish a new version or a hostile archive.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from tests.githttp import answer_with_git_http_backend
from tests.loopback import LOOPBACK_NETWORKS, QuietHandler, serving_on_loopback

#: The repository every record holds.
CONTENT = {
    "hello.py": "print('hello from an archived record')\n",
    "data/numbers.csv": "a,b\n1,2\n",
}
ZENODO_CONCEPT = "10.5281/zenodo.3242073"
ZENODO_DOI = "10.5281/zenodo.3242074"
FIGSHARE_DOI = "10.6084/m9.figshare.9782777"
DATAVERSE_DOI = "10.7910/DVN/TJCLKP"
HYDROSHARE_ID = "8f7c2f0341ef4180b0dbe97f59130756"
HYDROSHARE_DOI = f"10.4211/hs.{HYDROSHARE_ID}"
CKAN_NAME = "sample-dataset"
SWH_DIR = "1f7ca8e4b9f5a6fb5a0b1a8f3e8f6f0c7d5e3b21"
SWH_REV = "8a0d4b7c6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b"
GIST = "alice/0123456789abcdef0123456789abcdef"

Reply = tuple[int, dict[str, str], bytes]
Route = Callable[[str, str, dict[str, list[str]]], Reply]
#: How a stand-in answers one request (status, headers and body written to it).
Answer = Callable[[BaseHTTPRequestHandler], None]


def zipped(files: Mapping[str, str | bytes], top: str = "") -> bytes:
    """A real zip of ``files`` (below the folder ``top``, if given)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(f"{top}{name}", data)
    return out.getvalue()


def tarred(files: Mapping[str, str | bytes], top: str = "") -> bytes:
    """A real .tar.gz of ``files`` below ``top``."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for name, data in files.items():
            raw = data.encode() if isinstance(data, str) else data
            info = tarfile.TarInfo(f"{top}{name}")
            info.size = len(raw)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(raw))
    return out.getvalue()


def _json(data: Any, status: int = 200) -> Reply:
    return status, {"Content-Type": "application/json"}, json.dumps(data).encode()


def _redirect(location: str, status: int = 302) -> Reply:
    return status, {"Location": location}, b""


def _bytes(data: str | bytes) -> Reply:
    raw = data.encode() if isinstance(data, str) else data
    return 200, {"Content-Type": "application/octet-stream"}, raw


NOT_FOUND: Reply = (404, {"Content-Type": "application/json"}, b'{"status": 404}')


@dataclass
class Service:
    """One stand-in: its base URL once started, its records, its request log."""

    name: str
    route: Route
    url: str = ""
    records: dict[str, Any] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)


@contextmanager
def answering(service: Service, reply: Reply, paths_ending: str = "") -> Iterator[None]:
    """``service`` answers ``reply`` (a hostile or broken service's answer)
    to every path ending in ``paths_ending``, as its route does to the others,
    until the block ends: a module's tests share one set of stand-ins, so
    its route is put back even when the test fails."""
    original = service.route

    def route(method: str, path: str, query: dict[str, list[str]]) -> Reply:
        return reply if path.endswith(paths_ending) else original(method, path, query)

    service.route = route
    try:
        yield
    finally:
        service.route = original


def _answer_route(service: Service) -> Answer:
    """Answers a request with what ``service``'s route replies."""

    def answer(request: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(request.path)
        status, headers, body = service.route(
            request.command, unquote(parts.path), parse_qs(parts.query)
        )
        request.send_response(status)
        for name, value in headers.items():
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    return answer


@contextmanager
def _serving(service: Service, answer: Answer) -> Iterator[None]:
    """``service`` on loopback (its ``url`` set), each request logged in
    ``service.requests`` (what tests assert was or was not asked) before
    ``answer`` answers it."""

    class Handler(QuietHandler):
        def _answer(self) -> None:
            service.requests.append(f"{self.command} {self.path}")
            answer(self)

        do_GET = _answer
        do_POST = _answer

    with serving_on_loopback(Handler) as url:
        service.url = url
        yield


@dataclass
class Services:
    """Every stand-in, started."""

    doi: Service
    zenodo: Service
    figshare: Service
    dataverse: Service
    hydroshare: Service
    ckan: Service
    swh: Service
    gist: Service

    def records_setting(self) -> dict[str, Any]:
        """``repos.records`` pointing at the stand-ins."""
        return {
            "doi_resolver": self.doi.url,
            "gist": self.gist.url,
            "zenodo": [self.zenodo.url],
            "figshare": [self.figshare.url],
            "figshare_api": f"{self.figshare.url}/v2",
            "dataverse": [self.dataverse.url],
            "hydroshare": self.hydroshare.url,
            "ckan": [self.ckan.url],
            "software_heritage": self.swh.url,
        }

    def repos_setting(self) -> dict[str, Any]:
        """The ``repos`` settings that reach the stand-ins: their services,
        and their loopback listed as the site's own network."""
        return {"records": self.records_setting(), "internal_networks": LOOPBACK_NETWORKS}

    def specs(self) -> dict[str, str]:
        """A mybinder.org-style spec of each provider's record."""
        return {
            "zenodo": f"zenodo/{ZENODO_DOI}/",
            "figshare": f"figshare/{FIGSHARE_DOI}.v1/",
            "dataverse": f"dataverse/{DATAVERSE_DOI}/",
            "hydroshare": f"hydroshare/{HYDROSHARE_ID}/",
            "ckan": f"ckan/{quote(f'{self.ckan.url}/dataset/{CKAN_NAME}', safe='')}/",
            "swhid": f"swhid/swh:1:rev:{SWH_REV}",
            "doi": f"doi/{ZENODO_CONCEPT}/",
            "gist": f"gist/{GIST}/HEAD",
        }


def _doi_route(services: Callable[[], Services]) -> Route:
    def route(method: str, path: str, query: dict[str, list[str]]) -> Reply:
        landing = services().doi.records.get(path.lstrip("/"))
        return _redirect(landing) if landing else NOT_FOUND

    return route


def _zenodo_route(service: Callable[[], Service]) -> Route:
    def route(method: str, path: str, query: dict[str, list[str]]) -> Reply:
        me = service()
        parts = path.strip("/").split("/")
        if parts[0] == "doi":  # a concept DOI: the latest version
            latest = me.records.get("concepts", {}).get("/".join(parts[1:]))
            return _redirect(f"{me.url}/records/{latest}") if latest else NOT_FOUND
        if parts[:2] == ["api", "records"] and len(parts) >= 3:
            record = me.records.get(parts[2])
            if record is None:
                return NOT_FOUND
            if len(parts) == 3:
                return _json(
                    {
                        "id": int(parts[2]),
                        "doi": f"10.5281/zenodo.{parts[2]}",
                        "metadata": {"title": "An archived repository"},
                        "files": [
                            {
                                "id": f"file-{index}",
                                "key": key,
                                "size": len(data),
                                "checksum": "md5:0",
                                "links": {
                                    "self": f"{me.url}/api/records/{parts[2]}/files/{key}/content"
                                },
                            }
                            for index, (key, data) in enumerate(record.items())
                        ],
                    }
                )
            if len(parts) >= 6 and parts[3] == "files" and parts[-1] == "content":
                data = record.get("/".join(parts[4:-1]))
                return _bytes(data) if data is not None else NOT_FOUND
        if parts[0] in ("record", "records") and parts[-1] in me.records:
            return 200, {"Content-Type": "text/html"}, b"<html>a record</html>"
        return NOT_FOUND

    return route


def _figshare_route(service: Callable[[], Service]) -> Route:
    def route(method: str, path: str, query: dict[str, list[str]]) -> Reply:
        me = service()
        parts = path.strip("/").split("/")
        if parts[:2] == ["v2", "articles"] and len(parts) >= 4 and parts[3] == "versions":
            versions = me.records.get(parts[2])
            if versions is None:
                return NOT_FOUND
            if len(parts) == 4:
                return _json(
                    [
                        {"version": int(v), "url": f"{me.url}/v2/articles/{parts[2]}/versions/{v}"}
                        for v in versions
                    ]
                )
            files = versions.get(parts[4])
            if files is None:
                return NOT_FOUND
            downloads = f"{me.url}/ndownloader/files"
            return _json(
                {
                    "id": int(parts[2]),
                    "version": int(parts[4]),
                    "title": "An archived repository",
                    "files": [
                        {
                            "id": int(f"{parts[2]}{parts[4]}{index}"),
                            "name": name,
                            "size": len(data),
                            "is_link_only": False,
                            "download_url": f"{downloads}/{parts[2]}/{parts[4]}/{index}",
                            "computed_md5": "0",
                        }
                        for index, (name, data) in enumerate(files.items())
                    ],
                }
            )
        if parts[0] == "ndownloader":  # figshare's downloads redirect to S3
            return _redirect(f"{me.url}/s3/{'/'.join(parts[2:])}")
        if parts[0] == "s3" and len(parts) == 4:
            files = me.records.get(parts[1], {}).get(parts[2], {})
            items = list(files.values())
            return _bytes(items[int(parts[3])]) if int(parts[3]) < len(items) else NOT_FOUND
        return NOT_FOUND

    return route


def _dataverse_route(service: Callable[[], Service]) -> Route:
    def route(method: str, path: str, query: dict[str, list[str]]) -> Reply:
        me = service()
        persistent = (query.get("persistentId") or [""])[0].removeprefix("doi:")
        if path == "/citation":
            return 200, {"Content-Type": "text/html"}, b"<html>a dataset</html>"
        if path.rstrip("/") == "/api/datasets/:persistentId":
            dataset = me.records.get(persistent)
            if dataset is None:
                return _json({"status": "ERROR", "message": "Dataset not found"}, 404)
            authority, _, identifier = persistent.partition("/")
            return _json(
                {
                    "status": "OK",
                    "data": {
                        "id": 3323458,
                        "identifier": identifier,
                        "persistentUrl": f"https://doi.org/{persistent}",
                        "protocol": "doi",
                        "authority": authority,
                        "latestVersion": {
                            "id": 70,
                            "versionNumber": dataset["version"],
                            "versionMinorNumber": 0,
                            "versionState": "RELEASED",
                            "files": [
                                {
                                    "label": name.rpartition("/")[2],
                                    **(
                                        {"directoryLabel": name.rpartition("/")[0]}
                                        if "/" in name
                                        else {}
                                    ),
                                    "restricted": name in dataset.get("restricted", ()),
                                    "dataFile": {
                                        "id": 3323460 + index,
                                        "filename": name.rpartition("/")[2],
                                        "filesize": len(data),
                                        "contentType": "text/plain",
                                    },
                                }
                                for index, (name, data) in enumerate(dataset["files"].items())
                            ],
                        },
                    },
                }
            )
        if path.startswith("/api/access/datafile/"):
            index = int(path.rpartition("/")[2]) - 3323460
            for dataset in me.records.values():
                items = list(dataset["files"].items())
                if 0 <= index < len(items):
                    name, data = items[index]
                    if name in dataset.get("restricted", ()):
                        return 403, {"Content-Type": "application/json"}, b'{"status": "ERROR"}'
                    return _bytes(data)
        return NOT_FOUND

    return route


def _hydroshare_route(service: Callable[[], Service]) -> Route:
    def route(method: str, path: str, query: dict[str, list[str]]) -> Reply:
        me = service()
        parts = path.strip("/").split("/")
        if parts[0] == "resource":
            return 200, {"Content-Type": "text/html"}, b"<html>a resource</html>"
        if parts[:2] == ["hsapi", "resource"] and len(parts) >= 3:
            resource = me.records.get(parts[2])
            if resource is None:
                return _json({"detail": "No resource was found for resource id"}, 404)
            if parts[3:] == ["scimeta", "elements"]:
                return _json(
                    {
                        "title": "An archived repository",
                        "dates": [
                            {"type": "created", "start_date": "2019-09-13T14:50:43.203145Z"},
                            {"type": "modified", "start_date": resource["modified"]},
                        ],
                    }
                )
            if len(parts) == 3:  # the resource's bag
                bag = {f"data/contents/{name}": data for name, data in resource["files"].items()}
                bag["bagit.txt"] = "BagIt-Version: 0.96\n"
                return _bytes(zipped(bag, top=f"{parts[2]}/"))
        return NOT_FOUND

    return route


def _ckan_route(service: Callable[[], Service]) -> Route:
    def route(method: str, path: str, query: dict[str, list[str]]) -> Reply:
        me = service()
        if path == "/api/3/action/package_show":
            name = (query.get("id") or [""])[0]
            dataset = me.records.get(name)
            if dataset is None:
                return _json(
                    {
                        "success": False,
                        "error": {"message": "Not found", "__type": "Not Found Error"},
                    },
                    404,
                )
            return _json(
                {
                    "help": f"{me.url}/api/3/action/help_show?name=package_show",
                    "success": True,
                    "result": {
                        "id": "c8a1-sample",
                        "name": name,
                        "metadata_modified": dataset["modified"],
                        "resources": [
                            {
                                "id": f"res-{index}",
                                "name": file_name,
                                "format": "",
                                "url": f"{me.url}/dataset/{name}/resource/res-{index}/download/"
                                f"{file_name}",
                            }
                            for index, file_name in enumerate(dataset["files"])
                        ],
                    },
                }
            )
        parts = path.strip("/").split("/")
        if len(parts) == 6 and parts[0] == "dataset" and parts[4] == "download":
            data = me.records.get(parts[1], {}).get("files", {}).get(parts[5])
            return _bytes(data) if data is not None else NOT_FOUND
        return NOT_FOUND

    return route


def _swh_route(service: Callable[[], Service]) -> Route:
    def route(method: str, path: str, query: dict[str, list[str]]) -> Reply:
        me = service()
        parts = path.strip("/").split("/")
        if parts[:2] != ["api", "1"] or len(parts) < 4:
            return NOT_FOUND
        directories = me.records.setdefault("directories", {})
        if parts[2] == "resolve":
            kind, _, object_id = parts[3].rpartition(":")
            known = object_id in directories or object_id in me.records.get("revisions", {})
            if not known:
                return _json({"exception": "NotFoundExc", "reason": "not found"}, 404)
            return _json({"object_id": object_id, "object_type": kind.rpartition(":")[2]})
        if parts[2] == "revision":
            directory = me.records.get("revisions", {}).get(parts[3])
            if directory is None:
                return _json({"exception": "NotFoundExc"}, 404)
            return _json({"id": parts[3], "directory": directory, "message": "a revision"})
        if parts[2:4] == ["vault", "flat"] and len(parts) >= 5:
            directory = parts[4].rpartition(":")[2]
            if directory not in directories:
                return _json({"exception": "NotFoundExc"}, 404)
            if parts[5:] == ["raw"]:
                return _bytes(tarred(directories[directory], top=f"{parts[4]}/"))
            asked = me.records.setdefault("cooking", {})
            status = "done" if asked.get(directory) else "new"
            asked[directory] = True
            return _json(
                {
                    "id": 1,
                    "swhid": parts[4],
                    "status": status,
                    "fetch_url": f"{me.url}/api/1/vault/flat/{parts[4]}/raw/",
                    "progress_message": None,
                }
            )
        return NOT_FOUND

    return route


def _gist_repository(root: Path) -> None:
    """The gist as a bare repository below ``root`` (``USER/ID.git``)."""
    work = root / "work"
    work.mkdir(parents=True)
    for name, data in CONTENT.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(data)
    identity = ["-c", "user.name=t", "-c", "user.email=t@hpcbinder.invalid"]
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "gist"]):
        subprocess.run(["git", *identity, *args], cwd=work, check=True, capture_output=True)
    bare = root / f"{GIST}.git"
    bare.parent.mkdir(parents=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)


def default_records(services: Services) -> None:
    """Each service's records: the same :data:`CONTENT` in each service's shape."""
    zenodo_id = ZENODO_DOI.rpartition(".")[2]
    services.zenodo.records.update(
        {
            zenodo_id: {"repo-1.0.zip": zipped(CONTENT, top="repo-1.0/")},
            "concepts": {ZENODO_CONCEPT: zenodo_id},
        }
    )
    article = FIGSHARE_DOI.rpartition(".")[2]
    figshare_landing = f"{services.figshare.url}/articles/dataset/An_archive"
    services.figshare.records[article] = {
        "1": {name.rpartition("/")[2]: data for name, data in CONTENT.items()}
    }
    services.dataverse.records[DATAVERSE_DOI] = {"version": 1, "files": dict(CONTENT)}
    services.hydroshare.records[HYDROSHARE_ID] = {
        "modified": "2019-09-13T14:50:43.203145Z",
        "files": dict(CONTENT),
    }
    services.ckan.records[CKAN_NAME] = {
        "modified": "2023-01-05T10:00:00.123456",
        "files": {name.rpartition("/")[2]: data for name, data in CONTENT.items()},
    }
    services.swh.records["directories"] = {SWH_DIR: dict(CONTENT)}
    services.swh.records["revisions"] = {SWH_REV: SWH_DIR}
    services.doi.records.update(
        {
            ZENODO_DOI: f"{services.zenodo.url}/records/{zenodo_id}",
            ZENODO_CONCEPT: f"{services.zenodo.url}/doi/{ZENODO_CONCEPT}",
            FIGSHARE_DOI: f"{figshare_landing}/{article}",
            f"{FIGSHARE_DOI}.v1": f"{figshare_landing}/{article}/1",
            DATAVERSE_DOI: f"{services.dataverse.url}/citation?persistentId=doi:{DATAVERSE_DOI}",
            HYDROSHARE_DOI: f"{services.hydroshare.url}/resource/{HYDROSHARE_ID}/",
        }
    )


@contextmanager
def record_services(scratch: Path) -> Iterator[Services]:
    """Every stand-in on loopback, with :func:`default_records`; ``scratch``
    holds the gist's repository."""
    holder: list[Services] = []

    def get() -> Services:
        return holder[0]

    services = Services(
        doi=Service("doi", _doi_route(get)),
        zenodo=Service("zenodo", _zenodo_route(lambda: get().zenodo)),
        figshare=Service("figshare", _figshare_route(lambda: get().figshare)),
        dataverse=Service("dataverse", _dataverse_route(lambda: get().dataverse)),
        hydroshare=Service("hydroshare", _hydroshare_route(lambda: get().hydroshare)),
        ckan=Service("ckan", _ckan_route(lambda: get().ckan)),
        swh=Service("swh", _swh_route(lambda: get().swh)),
        gist=Service("gist", lambda *_: NOT_FOUND),  # served by git http-backend
    )
    holder.append(services)
    _gist_repository(scratch / "gists")
    with ExitStack() as stack:
        for each in (
            services.doi,
            services.zenodo,
            services.figshare,
            services.dataverse,
            services.hydroshare,
            services.ckan,
            services.swh,
        ):
            stack.enter_context(_serving(each, _answer_route(each)))
        gists = scratch / "gists"
        stack.enter_context(
            _serving(services.gist, lambda request: answer_with_git_http_backend(request, gists))
        )
        default_records(services)
        yield services
