"""Pacing: an address that keeps drawing refusals is served its turn, slowly, and nobody else is."""

from __future__ import annotations

import base64
import math
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bulwark.http.pacing import MAX_WAIT, Limits, Pacer, is_strike
from tests.support.helpers import Server

pytestmark = pytest.mark.timeout(120)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_address_is_paced_once_out_of_strikes_and_regains_them() -> None:
    clock = Clock()
    pacer = Pacer(Limits(burst=3, rate=2.0), clock=clock)
    assert pacer.wait("a") is None  # never seen
    for _ in range(3):
        pacer.strike("a")
    # Out of strikes: one request every half second, each taking the next turn.
    assert [pacer.wait("a") for _ in range(4)] == [0.0, 0.5, 1.0, 1.5]
    assert pacer.wait("b") is None  # others are not paced
    # Turns more than MAX_WAIT away are not given: the request is refused after waiting.
    for _ in range(int(MAX_WAIT * 2)):
        pacer.wait("a")
    assert pacer.wait("a") == math.inf
    assert pacer.counts()["refused"] >= 1
    # Time without refusals gives the strikes back.
    clock.now += 2.0
    assert pacer.wait("a") is None


def test_the_strikes_are_refusals_for_abuse() -> None:
    assert all(is_strike(status, []) for status in (400, 408, 413, 415, 429))
    assert is_strike(403, [(b"Retry-After", b"30")])  # a sign-in lockout
    assert not any(is_strike(status, []) for status in (200, 201, 204, 304, 401, 403, 404, 422, 503))


def test_the_standings_kept_are_bounded() -> None:
    pacer = Pacer(Limits(burst=1, rate=1.0), clock=Clock(), max_addresses=10)
    for i in range(100):
        pacer.strike(f"10.0.0.{i}")
    assert len(pacer._standing) == 10


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(data_dir=tmp_path / "node", extra_env={
        "BULWARK_BAD_REQUEST_BURST": "5", "BULWARK_BAD_REQUEST_RATE": "2",
    }).start()
    try:
        yield srv
    finally:
        srv.stop()


def bomb() -> bytes:
    z = zlib.compressobj(9, 8, 31)
    return b"".join([z.compress(b"0004" * 1024) for _ in range(1024)] + [z.compress(b"0000"), z.flush()])


def paced_total(server: Server) -> float:
    text = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"token {server.token}"}).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("bulwark_requests_paced_total "))


@pytest.mark.system
def test_a_client_sending_gzip_bombs_is_paced_and_others_are_not(server: Server) -> None:
    token = server.create_user("alice")
    server.create_repo(token, "open")
    headers = {"Content-Type": "application/x-git-upload-pack-request", "Content-Encoding": "gzip"}
    body = bomb()
    attacker = httpx.Client(base_url=server.url, transport=httpx.HTTPTransport(local_address="127.0.0.2"))
    with attacker:
        for _ in range(5):
            assert attacker.post("/alice/open.git/git-upload-pack", content=body, headers=headers).status_code == 400
        # Out of strikes: two requests a second, whatever the requests are.
        started = time.monotonic()
        for _ in range(4):
            assert attacker.post("/alice/open.git/git-upload-pack", content=body, headers=headers).status_code == 400
        assert attacker.get("/api/v3/repos/alice/open").status_code == 200
        paced_for = time.monotonic() - started
    assert paced_for >= 4 * 0.5 - 0.1, paced_for
    assert paced_total(server) >= 5
    # Another address is not paced.
    for _ in range(5):
        assert httpx.get(f"{server.url}/api/v3/repos/alice/open").status_code == 200
    assert paced_total(server) == 5


@pytest.mark.system
def test_a_client_past_its_sign_in_lockout_gets_its_refusals_slowly(server: Server) -> None:
    server.create_user("victim")
    wrong = base64.b64encode(b"victim:not-the-password").decode()
    attacker = httpx.Client(base_url=server.url, transport=httpx.HTTPTransport(local_address="127.0.0.3"))
    statuses = []
    with attacker:
        for _ in range(40):
            statuses.append(attacker.get("/api/v3/user", headers={"Authorization": f"Basic {wrong}"}).status_code)
            if paced_total(server) > 0:
                break
    assert 403 in statuses  # locked out, and the lockouts counted as strikes until it was paced
    assert paced_total(server) > 0
