"""Password sign-ins that cannot be used against the node: throttled per login and per address,
checked on a bounded pool of their own, and as slow for a login that does not exist as for one
that does."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bulwark.clock import SystemClock
from bulwark.errors import Overloaded, TooManyAttempts, Unauthenticated
from bulwark.security import PasswordHasher
from bulwark.services.accounts import AccountService
from bulwark.services.passwords import PasswordChecks
from bulwark.services.throttle import BY_ADDRESS, BY_LOGIN, Policy, Record, SignInThrottle, after_failure, wait_for
from bulwark.store.sqlite import SQLiteStore
from tests.support.helpers import Server, bulwark

pytestmark = pytest.mark.timeout(120)

POLICY = Policy(free=3, first_wait=2.0, lock_after=6, lockout=100.0, forget_after=100.0)


# -- the decision --------------------------------------------------------------------------------


def failures(count: int, last: float = 0.0) -> Record:
    return Record(failures=count, last=last)


def test_free_failures_never_wait() -> None:
    assert wait_for(None, 0.0, POLICY) == 0
    for count in range(POLICY.free):
        assert wait_for(failures(count), 0.0, POLICY) == 0


def test_the_wait_doubles_after_the_free_failures_then_locks_out() -> None:
    assert [wait_for(failures(n), 0.0, POLICY) for n in range(3, 8)] == [2.0, 4.0, 8.0, 100.0, 100.0]
    # It runs from the last failure.
    assert wait_for(failures(4, last=10.0), 11.5, POLICY) == 2.5
    assert wait_for(failures(4, last=10.0), 14.0, POLICY) == 0
    assert wait_for(failures(6, last=10.0), 109.0, POLICY) == 1.0


def test_a_record_is_forgotten_after_a_quiet_period() -> None:
    locked = failures(9, last=0.0)
    assert wait_for(locked, 99.0, POLICY) > 0
    assert wait_for(locked, 100.0, POLICY) == 0
    assert after_failure(locked, 100.0, POLICY) == Record(failures=1, last=100.0)
    assert after_failure(locked, 50.0, POLICY) == Record(failures=10, last=50.0)
    assert after_failure(None, 7.0, POLICY) == Record(failures=1, last=7.0)


def test_the_shipped_policies_allow_typos_and_lock_out_guessers() -> None:
    for policy in (BY_LOGIN, BY_ADDRESS):
        assert policy.free >= 5 and policy.lock_after > policy.free and policy.forget_after >= policy.lockout
    assert BY_ADDRESS.lock_after > BY_LOGIN.lock_after  # an address may be shared


# -- the throttle, with a fake clock -------------------------------------------------------------------


class Ticks:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ticks() -> Ticks:
    return Ticks()


def throttle(ticks: Ticks, **kwargs: object) -> SignInThrottle:
    address = Policy(free=10, first_wait=1.0, lock_after=20, lockout=300.0, forget_after=300.0)
    return SignInThrottle(ticks, by_login=POLICY, by_address=address, **kwargs)  # type: ignore[arg-type]


def attempt_fails(t: SignInThrottle, login: str, address: str = "10.0.0.1") -> None:
    t.begin(login, address)
    t.failed(login, address)


def test_a_login_waits_then_is_locked_out(ticks: Ticks, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bulwark.auth")
    t = throttle(ticks)
    for _ in range(3):
        attempt_fails(t, "alice")
    with pytest.raises(TooManyAttempts) as refused:
        t.begin("Alice", "10.0.0.2")  # the login counts whatever its case and wherever from
    assert refused.value.retry_after == 2 and refused.value.status_code == 403
    assert "Maximum number of login attempts exceeded" in refused.value.message
    ticks.now += 2
    attempt_fails(t, "alice")
    with pytest.raises(TooManyAttempts):
        t.begin("alice", "10.0.0.1")
    ticks.now += 4
    attempt_fails(t, "alice")
    ticks.now += 8
    attempt_fails(t, "alice")  # the sixth failure: locked out
    assert "sign-ins locked for 100 s: 6 failed password attempts for login 'alice'" in caplog.text
    ticks.now += 99
    with pytest.raises(TooManyAttempts) as refused:
        t.begin("alice", "10.0.0.1")
    assert refused.value.retry_after == 1
    ticks.now += 1
    t.begin("alice", "10.0.0.1")  # forgotten: a fresh start
    assert t.counts() == {"refused": 3, "failed": 6}


def test_attempts_made_at_once_are_counted_at_once(ticks: Ticks) -> None:
    """Parallel guesses must not all pass the check before the first one fails."""
    t = throttle(ticks)
    admitted = refused = 0
    for _ in range(50):  # all begun, none finished yet
        try:
            t.begin("bob", "10.0.0.1")
            admitted += 1
        except TooManyAttempts:
            refused += 1
    assert (admitted, refused) == (POLICY.free, 50 - POLICY.free)


def test_the_right_password_clears_the_login_and_takes_back_the_address_attempt(ticks: Ticks) -> None:
    t = throttle(ticks)
    for _ in range(2):
        attempt_fails(t, "carol")
    t.begin("carol", "10.0.0.1")
    t.succeeded("carol", "10.0.0.1")
    for _ in range(3):
        attempt_fails(t, "carol")  # three free failures again
    with pytest.raises(TooManyAttempts):
        t.begin("carol", "10.0.0.1")


def test_an_address_guessing_many_logins_is_throttled(ticks: Ticks) -> None:
    t = throttle(ticks)
    for i in range(10):
        attempt_fails(t, f"user{i}", "192.0.2.7")
    with pytest.raises(TooManyAttempts) as refused:
        t.begin("someone-new", "192.0.2.7")
    assert "address" in refused.value.message
    t.begin("someone-new", "192.0.2.8")  # another address is not affected


def test_records_are_bounded(ticks: Ticks) -> None:
    t = throttle(ticks, max_records=3)
    for _ in range(3):
        attempt_fails(t, "victim", "192.0.2.1")
    with pytest.raises(TooManyAttempts):
        t.begin("victim", "192.0.2.1")
    for i in range(3):
        attempt_fails(t, f"filler{i}", f"192.0.2.{10 + i}")
    t.begin("victim", "192.0.2.1")  # its record made room for newer ones
    assert len(t._logins.items) <= 3 and len(t._addresses.items) <= 3


def test_keys_are_cut_short() -> None:
    t = SignInThrottle(Ticks())
    t.begin("x" * 100_000, "y" * 100_000)
    assert max(len(k) for k in [*t._logins.items, *t._addresses.items]) <= 64


# -- the dummy hash and the bounded pool ------------------------------------------------------------------


class RecordingHasher(PasswordHasher):
    """Cheap hashes, and a list of every hash a password was checked against."""

    def __init__(self) -> None:
        super().__init__()
        self.checked: list[str] = []

    def hash(self, password: str) -> str:
        return f"hash:{password}"

    def verify(self, stored_hash: str, password: str) -> bool:
        self.checked.append(stored_hash)
        return stored_hash == f"hash:{password}"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "meta.db")
    yield s
    s.close()


def test_a_login_that_does_not_exist_costs_one_hash_check_too(store: SQLiteStore) -> None:
    """No enumeration by timing: an unknown login, an organization or a user without a password
    is checked against a dummy hash, as slow as any other."""
    hasher = RecordingHasher()
    accounts = AccountService(store, hasher, SystemClock(), throttle=SignInThrottle(Ticks()))
    owner = accounts.create_user("owner", password="right password")
    accounts.create_user("nopass")
    accounts.create_org("acme", owner=owner)
    for login in ("ghost", "acme", "nopass", "owner"):
        hasher.checked.clear()
        with pytest.raises(Unauthenticated):
            accounts.authenticate_basic(login, "wrong password")
        assert hasher.checked == [hasher.dummy_hash() if login != "owner" else "hash:right password"], login
    assert accounts.authenticate_basic("owner", "right password").account == owner
    assert accounts.throttle.counts()["failed"] == 4


class BlockingHasher(RecordingHasher):
    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()

    def verify(self, stored_hash: str, password: str) -> bool:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        self.release.wait(10)
        with self._lock:
            self.running -= 1
        return False


def test_the_password_pool_runs_few_checks_and_refuses_beyond_its_queue() -> None:
    hasher = BlockingHasher()
    checks = PasswordChecks(hasher, threads=2, waiting=3)
    futures = [checks.submit("hash:x", "y") for _ in range(5)]
    with pytest.raises(Overloaded) as refused:
        checks.submit("hash:x", "y")
    assert refused.value.status_code == 503 and refused.value.retry_after >= 1
    hasher.release.set()
    assert [f.result(10) for f in futures] == [False] * 5
    assert hasher.most == 2
    assert checks.submit("hash:x", "y").result(10) is False  # slots came back


def test_an_awaited_check_holds_no_thread_of_the_event_loop() -> None:
    hasher = BlockingHasher()
    checks = PasswordChecks(hasher, threads=1, waiting=10)

    async def main() -> list[bool]:
        waiting = [asyncio.wrap_future(checks.submit("hash:x", "y")) for _ in range(5)]
        await asyncio.sleep(0)  # the loop runs on while they wait
        hasher.release.set()
        return list(await asyncio.gather(*waiting))

    assert asyncio.run(main()) == [False] * 5 and hasher.most == 1


# -- against a real node -----------------------------------------------------------------------------------


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Server]:
    # Without pacing (tests/test_pacing.py), which would slow the lockouts down long before the throttle is seen.
    server = Server(data_dir=tmp_path / "node", extra_env={"BULWARK_BAD_REQUEST_BURST": "0"}).start()
    try:
        r = bulwark("user", "create", "alice", "--password-stdin", env=server.env(), input="alice's password\n")
        assert r.returncode == 0, r.stderr
        yield server
    finally:
        server.stop()


def until_refused(server: Server, login: str, *, limit: int = 15) -> tuple[int, httpx.Response]:
    """Wrong passwords for ``login`` until one is refused; how many were answered 401, and the refusal."""
    for answered in range(limit):
        r = httpx.get(f"{server.url}/api/v3/user", auth=(login, f"guess {answered}"), timeout=30)
        if r.status_code != 401:
            return answered, r
    raise AssertionError(f"{limit} wrong passwords for {login!r} were never refused")


@pytest.mark.system
def test_wrong_passwords_are_throttled_with_githubs_answer(node: Server) -> None:
    """1,000 wrong passwords for one login got 1,000 x 401."""
    answered, refused = until_refused(node, "alice")
    assert answered == BY_LOGIN.free
    assert refused.status_code == 403 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["message"].startswith("Maximum number of login attempts exceeded")
    # The right password waits too, while tokens keep working.
    r = httpx.get(f"{node.url}/api/v3/user", auth=("alice", "alice's password"), timeout=30)
    assert r.status_code == 403
    assert node.api("GET", "/user").status_code == 200
    # Git clients get the same answer, in plain text.
    r = httpx.get(f"{node.url}/alice/none.git/info/refs?service=git-upload-pack", auth=("alice", "x"), timeout=30)
    assert r.status_code == 403 and "Maximum number of login attempts" in r.text
    assert "failed password sign-in for login 'alice'" in node.log()


@pytest.mark.system
def test_a_login_that_does_not_exist_is_throttled_like_one_that_does(node: Server) -> None:
    answered, refused = until_refused(node, "nobody-at-all")
    assert answered == BY_LOGIN.free and refused.status_code == 403


@pytest.mark.system
def test_a_thousand_wrong_passwords_at_once(node: Server) -> None:
    """They shared the request threads with everything else: /status took 18 s."""

    async def attack() -> tuple[list[int], int]:
        # Over 100 connections: the node limits connections per client address.
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=node.url, timeout=60, limits=limits) as client:
            guesses = [
                client.get("/api/v3/user", auth=("alice" if i % 2 else f"user{i}", f"guess {i}")) for i in range(1000)
            ]
            status = client.get("/status")
            answers = await asyncio.gather(*guesses, status)
        return [r.status_code for r in answers[:-1]], answers[-1].status_code

    codes, status = asyncio.run(attack())
    assert status == 200
    assert set(codes) <= {401, 403, 503}, set(codes)
    # Counted as they start: one login and one address get their free attempts, no more.
    assert codes.count(401) <= BY_ADDRESS.free
    assert httpx.get(f"{node.url}/status", timeout=10).status_code == 200
