"""A mybinder.org-style link of an archived record launches, end to end.

``doi/<concept DOI>`` through the Binder service's ``/build`` stream, as
BinderHub's clients ask: the DOI resolver and Zenodo are loopback stand-ins
speaking their APIs (:mod:`tests.recordservices`), the build server fetches
the record's zip and builds, and JupyterLab starts as alice in a Slurm job
with the record's files in its workspace. Every other provider's link is
built (and one run as a batch job) in tests/integration/test_record_links.py.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid

from tests.binderhelpers import build_events, phases
from tests.conftest import SHARED_SCRATCH, DevCluster
from tests.e2e.conftest import running_binder
from tests.hubhelpers import execute
from tests.recordservices import record_services


def test_a_doi_link_launches_the_records_files(devcluster: DevCluster) -> None:
    scratch = SHARED_SCRATCH / f"records-{uuid.uuid4().hex[:8]}"
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, scratch, ignore_errors=True)
        services = cleanup.enter_context(record_services(scratch))
        repos = {
            "protocols": ["https", "http", "file"],
            "local_roots": [str(SHARED_SCRATCH)],
            "records": services.records_setting(),
        }
        with running_binder({"repos": repos}) as binder:
            spec = services.specs()["doi"]
            events = build_events(binder.url, spec, binder.token, "labpath=hello.py")
            seen = phases(events)
            assert seen[0] == "fetching" and seen[-1] == "ready", events[-1]
            assert events[0]["message"].startswith("Fetching DOI 10.5281/zenodo.3242073"), events[0]
            ready = events[-1]
            server_url = ready["url"].split("lab/tree/")[0]
            assert ready["url"].endswith("lab/tree/hello.py"), ready
            code = "print(open('hello.py').read().strip()); print(open('data/numbers.csv').read())"
            output = execute(binder.hub, server_url, code)
            assert "hello from an archived record" in output and "1,2" in output, output
