"""Property-based fuzzing of what a git client sends: the pkt-line parser, and the git routes
of a real node. Whatever arrives, the answer is a clear error or a result, never a 5xx or a
hang. ``FUZZ_EXAMPLES`` sets how many requests (``make fuzz`` runs many more)."""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulwark.git import pktline
from bulwark.git.pktline import PktLineError, PktLineReader
from tests.support.helpers import Server

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
pytestmark = pytest.mark.timeout(600)


@settings(max_examples=EXAMPLES * 4, deadline=None)
@given(st.binary(max_size=4096), st.integers(min_value=1, max_value=64))
def test_the_parser_hands_out_packets_or_a_pkt_line_error(data: bytes, piece: int) -> None:
    reader, skimmer = PktLineReader(), PktLineReader()
    handed: list[pktline.Packet] = []
    try:
        for start in range(0, len(data), piece):
            reader.feed(data[start : start + piece])
            handed += reader.packets()
    except PktLineError:
        return
    skimmer.feed(data)
    count, last = skimmer.skim()
    assert count == len(handed) and last == (handed[-1] if handed else None)
    assert reader.consumed + reader.pending() == len(data)


def _packet() -> st.SearchStrategy[bytes]:
    words = st.sampled_from([b"want ", b"have ", b"done", b"shallow ", b"deepen ", b"command=ls-refs",
                             b"command=fetch", b"agent=x", b"object-format=sha1", b"filter blob:none",
                             b"0" * 40 + b" " + b"1" * 40 + b" refs/heads/main\0report-status", b""])
    payload = st.builds(lambda w, tail: w + tail, words, st.binary(max_size=60))
    data = payload.map(lambda p: pktline.encode(p[: pktline.MAX_PAYLOAD]))
    return st.one_of(data, st.sampled_from([b"0000", b"0001", b"0002", b"0004", b"fff", b"zzzz", b"0003"]))


BODIES = st.one_of(
    st.binary(max_size=2048),
    st.lists(_packet(), max_size=40).map(b"".join),
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # Bad bodies from one address and nothing else: pacing (tests/test_pacing.py) would only make it slow.
    srv = Server(data_dir=Path(tmp_path_factory.mktemp("fuzz")) / "node",
                 extra_env={"BULWARK_BAD_REQUEST_BURST": "0"}).start()
    token = srv.create_user("alice")
    srv.create_repo(token, "open")
    srv.create_repo(token, "empty")
    srv.extra_env["FUZZ_TOKEN"] = token
    try:
        yield srv
    finally:
        srv.stop()


@pytest.mark.system
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=BODIES,
    service=st.sampled_from(["git-upload-pack", "git-receive-pack"]),
    repo=st.sampled_from(["open", "empty", "missing"]),
    compress=st.booleans(),
    protocol=st.sampled_from([None, "version=2", "version=1", "junk\x7f"]),
    authenticated=st.booleans(),
)
def test_no_request_body_makes_a_git_route_fail_or_hang(
    server: Server, body: bytes, service: str, repo: str, compress: bool, protocol: str | None, authenticated: bool
) -> None:
    headers = {"Content-Type": f"application/x-{service}-request"}
    if compress:
        headers["Content-Encoding"] = "gzip"
        body = gzip.compress(body)
    if protocol is not None:
        headers["Git-Protocol"] = protocol
    auth = ("alice", server.extra_env["FUZZ_TOKEN"]) if authenticated else None
    answer = httpx.post(f"{server.url}/alice/{repo}.git/{service}", content=body, headers=headers, auth=auth,
                        timeout=30)
    assert answer.status_code < 500, (answer.status_code, answer.text[:300])
