"""The server's guards below the app: slow headers are timed out, connections are capped."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bulwark.http.server import WAITING_OF_ITS_OWN, Guard, connection_budget
from tests.support.ha_helpers import wait_for
from tests.support.helpers import Server

pytestmark = pytest.mark.timeout(60)


def test_guard_counts_connections_in_all_and_per_address() -> None:
    guard = Guard(header_timeout=1, max_connections=3, max_per_address=2, trusted=["10.0.0.9"])
    assert guard.admit("192.0.2.1") is None and guard.admit("192.0.2.1") is None
    assert "192.0.2.1 has 2 connections open already" in (guard.admit("192.0.2.1") or "")
    assert guard.admit("10.0.0.9") is None  # a trusted balancer is not limited per address...
    assert "3 connections are open" in (guard.admit("10.0.0.9") or "")  # ...but counts in all
    guard.leave("192.0.2.1")
    assert guard.admit("192.0.2.2") is None
    assert guard.open == 3 and dict(guard.by_address) == {"192.0.2.1": 1, "10.0.0.9": 1, "192.0.2.2": 1}


def test_a_full_guard_makes_room_by_closing_the_oldest_connection_waiting_for_headers() -> None:
    guard = Guard(header_timeout=1, max_connections=WAITING_OF_ITS_OWN + 1, max_per_address=WAITING_OF_ITS_OWN + 5)
    closed: list[str] = []
    for key, address in enumerate(["192.0.2.1"] + ["192.0.2.2"] * WAITING_OF_ITS_OWN):
        assert guard.admit(address) is None

        def close(key: int = key, address: str = address) -> None:
            closed.append(address)
            guard.stop_waiting(key, address)
            guard.leave(address)

        guard.wait(key, address, close)
    # An address with several connections of its own waiting is refused, not let in at another's cost.
    assert "9 connections are open" in (guard.admit("192.0.2.2") or "")
    assert closed == []
    # One with fewer (here one, waiting) gets the place of the connection that has waited longest.
    assert guard.admit("192.0.2.1") is None
    assert closed == ["192.0.2.1"] and guard.open == 9 and guard.evicted == 1
    for key in range(1, WAITING_OF_ITS_OWN + 1):  # every connection left is busy with a request
        guard.stop_waiting(key, "192.0.2.2")
    assert "9 connections are open" in (guard.admit("192.0.2.4") or "")


def test_the_connection_budget_leaves_file_handles_for_git() -> None:
    assert connection_budget(1024, 4096) == 512
    assert connection_budget(1 << 20, 4096) == 4096
    assert connection_budget(100, 4096) == 64


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[Server]:
    srv = Server(data_dir=tmp_path / "node", extra_env={
        "BULWARK_HEADER_TIMEOUT": "1", "BULWARK_MAX_CONNECTIONS_PER_ADDRESS": "5",
    }).start()
    try:
        yield srv
    finally:
        srv.stop()


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


@pytest.mark.system
def test_headers_sent_a_byte_at_a_time_are_timed_out(guarded: Server) -> None:
    with socket.create_connection((guarded.host, guarded.port), timeout=30) as sock:
        sock.sendall(b"GET /status HTTP/1.1\r\nHo")  # and then nothing
        answer = read_all(sock)  # the server answers and closes, well before the socket's 30 s
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout")
    # A kept-alive connection whose next request stalls in its headers is timed out the same way.
    with socket.create_connection((guarded.host, guarded.port), timeout=30) as sock:
        sock.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"200 OK" in sock.recv(4096)
        sock.sendall(b"GET /status HTTP/1.1\r\n")
        assert b"408 Request Timeout" in read_all(sock)


def answers(server: Server) -> bool:
    try:
        return httpx.get(f"{server.url}/status", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False  # the server may not have seen the idle connections close yet


@pytest.mark.system
def test_one_address_cannot_take_every_connection(guarded: Server) -> None:
    idle = [socket.create_connection((guarded.host, guarded.port), timeout=30) for _ in range(5)]
    try:
        with socket.create_connection((guarded.host, guarded.port), timeout=30) as extra:
            extra.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                answer = read_all(extra)
            except ConnectionResetError:
                answer = b""
        assert answer == b""  # refused at once, without an answer
    finally:
        for sock in idle:
            sock.close()
    wait_for(lambda: answers(guarded), timeout=10, what="connections taken again once the idle ones closed")
    assert "connections open already" in guarded.log()


@pytest.mark.system
def test_slow_connections_from_many_addresses_cannot_keep_a_health_check_out(tmp_path: Path) -> None:
    srv = Server(data_dir=tmp_path / "node", extra_env={
        "BULWARK_HEADER_TIMEOUT": "60", "BULWARK_MAX_CONNECTIONS": "64", "BULWARK_MAX_CONNECTIONS_PER_ADDRESS": "16",
    }).start()
    slow: list[socket.socket] = []
    try:
        # 80 connections from 5 addresses, each sending part of its headers and then nothing.
        for i in range(80):
            sock = socket.socket()
            sock.bind((f"127.0.0.{20 + i % 5}", 0))
            sock.connect((srv.host, srv.port))
            sock.sendall(b"GET /status HTTP/1.1\r\nHo")
            slow.append(sock)
        for _ in range(5):
            assert httpx.get(f"{srv.url}/status", timeout=5).status_code == 200
        # The oldest was closed, with a 408, to make room; the slow addresses' extra ones were refused.
        slow[0].settimeout(5)
        assert read_all(slow[0]).startswith(b"HTTP/1.1 408 Request Timeout")
        text = httpx.get(f"{srv.url}/metrics", headers={"Authorization": f"token {srv.token}"}).text
        counts = {line.split()[0]: float(line.split()[-1]) for line in text.splitlines()
                  if line.startswith("bulwark_connections_")}
        assert counts["bulwark_connections_evicted_total"] >= 1, counts
        assert counts["bulwark_connections_refused_total"] >= 16, counts
    finally:
        for sock in slow:
            sock.close()
        srv.stop()
