"""The cap on git processes: a request waits for a slot, then is refused in git's words."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bulwark.git import pktline
from bulwark.gitservice.slots import Busy, GitSlots, Limits, admits
from bulwark.http.clients import real_address
from bulwark.http.gitbody import RateFloor
from bulwark.http.smart import FETCH_READ_WHOLE
from tests.support.cluster_helpers import wait_for
from tests.support.helpers import Server, git

pytestmark = pytest.mark.timeout(120)


def test_admission_counts_the_node_and_the_client() -> None:
    limits = Limits(total=3, per_client=2, wait=0)
    assert admits(0, 0, limits) and admits(2, 1, limits)
    assert not admits(3, 0, limits)  # the node is full
    assert not admits(1, 2, limits)  # this client has its share


@pytest.mark.system
def test_a_waiting_request_gets_the_slot_released_and_a_late_one_is_refused() -> None:
    async def scenario() -> list[str]:
        slots = GitSlots(Limits(total=1, per_client=1, wait=0.5))
        first = await slots.acquire("a")
        waiting = asyncio.ensure_future(slots.acquire("b"))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        first.release()
        first.release()  # twice is once
        second = await waiting
        assert slots.running == 1 and dict(slots.by_client) == {"b": 1}
        messages = []
        for client in ("b", "c"):
            with pytest.raises(Busy) as refused:
                await GitSlots.acquire(slots, client)
            messages.append(refused.value.message)
        second.release()
        await asyncio.sleep(0)
        assert slots.running == 0 and not slots.by_client and slots.refused == 2
        return messages

    mine, everyone = asyncio.run(scenario())
    assert "you already have 1 git requests running" in mine
    assert "the server is busy" in everyone


@pytest.fixture
def busy_server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(data_dir=tmp_path / "node", extra_env={
        "BULWARK_MAX_GIT_PROCESSES": "1", "BULWARK_GIT_SLOT_WAIT": "0.5", "BULWARK_REF_CACHE_MB": "0",
    }).start()
    try:
        yield srv
    finally:
        srv.stop()


def pushed_commit(server: Server, genv: dict[str, str], tmp_path: Path) -> tuple[str, Path, str]:
    """alice/proj (public) with one commit on main: its authenticated URL, the work tree and the commit."""
    token = server.create_user("alice")
    server.create_repo(token, "proj")
    url = server.remote("alice", "proj", token=token)
    work = tmp_path / "work"
    git("init", "-q", "-b", "main", str(work), env=genv)
    git("commit", "-q", "--allow-empty", "-m", "one", cwd=work, env=genv)
    git("push", "-q", url, "main", cwd=work, env=genv)
    return url, work, git("rev-parse", "HEAD", cwd=work, env=genv).stdout.strip()


def hold_a_git_process(server: Server, path: str, oid: str) -> socket.socket:
    """A fetch that sends its wants, more haves than are read before git starts, and then nothing
    more: its git process waits for the rest."""
    sock = socket.create_connection((server.host, server.port))
    wants = pktline.encode(f"want {oid} side-band-64k\n") + pktline.flush()
    haves = pktline.encode(f"have {oid}\n") * (FETCH_READ_WHOLE // 45 + 100)
    sock.sendall(
        f"POST {path}/git-upload-pack HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/x-git-upload-pack-request\r\n"
        f"Content-Length: {4 * FETCH_READ_WHOLE}\r\n\r\n".encode() + wants + haves
    )
    # The server passes a piece on once the next one arrives (the last is held until the body ends well).
    time.sleep(0.3)
    sock.sendall(pktline.encode(f"have {oid}\n"))
    return sock


def running_git(server: Server) -> float:
    text = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"token {server.token}"}).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("bulwark_git_processes{"))


def refused(server: Server, reason: str) -> float:
    text = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"token {server.token}"}).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("bulwark_git_refused_total{") and f'reason="{reason}"' in line)


@pytest.mark.system
def test_a_full_node_refuses_fetches_and_pushes_in_git_s_words(
    busy_server: Server, genv: dict[str, str], tmp_path: Path
) -> None:
    url, work, oid = pushed_commit(busy_server, genv, tmp_path)
    held = hold_a_git_process(busy_server, "/alice/proj.git", oid)
    wait_for(lambda: running_git(busy_server) == 1, timeout=10, what="the held fetch's git process")
    try:
        # info/refs then needs the only slot too (no kept answers here): a 503 git shows as "remote:".
        cloned = git("clone", url, str(tmp_path / "clone"), env=genv, check=False)
        assert cloned.returncode != 0
        assert "remote: the server is busy" in cloned.stderr, cloned.stderr
        git("commit", "-q", "--allow-empty", "-m", "two", cwd=work, env=genv)
        pushed = git("push", url, "main", cwd=work, env=genv, check=False)
        assert pushed.returncode != 0
        assert "the server is busy" in pushed.stderr, pushed.stderr
        assert "hung up" not in cloned.stderr + pushed.stderr
        assert refused(busy_server, "busy") >= 2  # the clone's info/refs and the push's
    finally:
        held.close()
    # The held process ends with its connection, and its slot is free again.
    wait_for(lambda: running_git(busy_server) == 0, timeout=30, what="the held git process to end")
    pushed = git("push", "-q", url, "main", cwd=work, env=genv, check=False)
    assert pushed.returncode == 0, pushed.stderr


def test_the_client_behind_a_trusted_balancer_is_the_forwarded_address() -> None:
    trusted = ["10.0.0.0/24"]
    assert real_address("10.0.0.9", "203.0.113.7", trusted) == "203.0.113.7"
    # A client cannot pass itself off as another by sending its own header through the balancer.
    assert real_address("10.0.0.9", "198.51.100.1, 203.0.113.7", trusted) == "203.0.113.7"
    assert real_address("10.0.0.9", "203.0.113.7, 10.0.0.8", trusted) == "203.0.113.7"
    # Nobody else is believed.
    assert real_address("203.0.113.7", "198.51.100.1", trusted) == "203.0.113.7"
    assert real_address("10.0.0.9", None, trusted) == "10.0.0.9"
    assert real_address("10.0.0.9", "198.51.100.1", []) == "10.0.0.9"


def test_the_rate_floor_counts_the_last_window_not_the_average() -> None:
    floor = RateFloor(grace=5.0, rate=1024, window=10.0)
    assert not floor.too_slow(0, 4.0)  # within the grace
    # A burst, then next to nothing: the average since the start is high, the last 10 s are not.
    floor = RateFloor(grace=5.0, rate=1024, window=10.0)
    assert not floor.too_slow(100_000, 1.0)
    assert not floor.too_slow(100_001, 6.0)
    assert floor.too_slow(100_002, 12.0)
    steady = RateFloor(grace=5.0, rate=1024, window=10.0)
    assert not any(steady.too_slow(2048 * t, float(t)) for t in range(1, 120))
    # A million tiny pieces in 10 s: judged the same, and the floor keeps a few marks, not a million.
    tiny = RateFloor(grace=5.0, rate=1024, window=10.0)
    assert not any(tiny.too_slow(i, i * 1e-5) for i in range(1_000_000))
    assert len(tiny._marks) <= 2 * 10.0 / 0.5 + 2
    assert tiny.too_slow(1_000_000, 100.0)  # then next to nothing for 90 s


@pytest.mark.system
def test_a_fetch_that_stops_sending_is_given_up_long_before_the_idle_timeout(
    busy_server: Server, genv: dict[str, str], tmp_path: Path
) -> None:
    _, _, oid = pushed_commit(busy_server, genv, tmp_path)
    sock = hold_a_git_process(busy_server, "/alice/proj.git", oid)
    wait_for(lambda: running_git(busy_server) == 1, timeout=10, what="the stalled fetch's git process")
    try:
        # Nothing more is sent: the idle timeout (120 s) alone would keep the slot for two minutes.
        started = time.monotonic()
        wait_for(lambda: running_git(busy_server) == 0, timeout=30, what="the stalled fetch given up")
        print(f"\na stalled fetch held its git process {time.monotonic() - started:.1f}s more")
        # git answered the haves it had read, so the answer began 200; then it ends, without a pack.
        sock.settimeout(5)
        answer = bytearray()
        while not answer.endswith(b"\r\n0\r\n\r\n") and (chunk := sock.recv(65536)):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 "), bytes(answer[:100])
        assert b"PACK" not in answer
    finally:
        sock.close()


@pytest.mark.system
def test_a_fetch_that_trickles_its_haves_holds_no_git_process(
    busy_server: Server, genv: dict[str, str], tmp_path: Path
) -> None:
    _, _, oid = pushed_commit(busy_server, genv, tmp_path)
    # Each of these sends its wants and a have, then a byte now and then: the node's one git slot
    # would be theirs if a fetch got its git process before its body was read.
    socks = []
    for _ in range(3):
        sock = socket.create_connection((busy_server.host, busy_server.port))
        sock.sendall(
            b"POST /alice/proj.git/git-upload-pack HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/x-git-upload-pack-request\r\nContent-Length: 1000\r\n\r\n"
            + pktline.encode(f"want {oid} side-band-64k\n") + pktline.flush() + pktline.encode(f"have {oid}\n")
        )
        socks.append(sock)
    try:
        for _ in range(3):
            time.sleep(1)
            for sock in socks:
                sock.sendall(b"0")
            assert running_git(busy_server) == 0
        anonymous = f"{busy_server.url}/alice/proj.git"
        cloned = git("clone", "-q", anonymous, str(tmp_path / "clone"), env=genv, check=False)
        assert cloned.returncode == 0, cloned.stderr
        # And the tricklers are given up by the rate floor, with a 408.
        for sock in socks:
            sock.settimeout(30)
            assert b" 408 " in sock.recv(4096).split(b"\r\n", 1)[0] + b" "
    finally:
        for sock in socks:
            sock.close()
