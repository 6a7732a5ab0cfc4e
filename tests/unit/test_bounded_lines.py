"""Lines another account or a repository controls are capped before
anything reads them: a build's output through the command runner, and the
build server's request bodies."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from hpcbinder.boundedlines import CUT, LINE_LIMIT, capped_lines
from hpcbinder.images import server
from hpcbinder.seams import proc
from tests.conftest import free_port
from tests.repohelpers import site_for_tests


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="ab\n", max_size=3 * LINE_LIMIT), max_size=4))
def test_every_line_is_capped_and_short_lines_pass_whole(chunks: list[str]) -> None:
    text = "".join(chunks)
    lines = list(capped_lines(io.StringIO(text).readline))
    assert all(len(line) <= LINE_LIMIT + len(CUT) for line in lines)
    expected = [
        line if len(line) < LINE_LIMIT else line[:LINE_LIMIT] + CUT for line in text.split("\n")
    ]
    if text.endswith("\n") or not text:
        expected = expected[:-1]
    assert lines == expected


def test_a_build_printing_one_huge_line_passes_on_one_capped_line() -> None:
    seen: list[str] = []
    code = "import sys; sys.stdout.write('x' * 5_000_000); print(); print('after')"
    status = proc.stream(["python3", "-c", code], on_line=seen.append, timeout=60)
    assert status == 0
    assert seen == ["x" * LINE_LIMIT + CUT, "after"]


def test_the_build_server_reads_no_large_request_body(tmp_path: Path) -> None:
    async def ask() -> int:
        port = free_port()
        http = server.listen(site_for_tests(tmp_path), "127.0.0.1", port)
        try:
            await AsyncHTTPClient().fetch(
                f"http://127.0.0.1:{port}/build",
                method="POST",
                body=b"x" * (server.REQUEST_BYTES + 1),
            )
        except HTTPClientError as exc:
            return exc.code
        finally:
            http.stop()
        return 200

    assert asyncio.run(ask()) in (400, 413)
