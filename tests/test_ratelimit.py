"""The request-rate limit per client address: the bucket's arithmetic, and a real node refusing a
flood from one address with 429 while other addresses, git and health checks go on, and a real
GitHub client library pacing itself by ``Retry-After``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from github import Auth, Github

from bulwark.http.ratelimit import Bucket, RateLimiter, take
from tests.support.helpers import Server, git, git_env

pytestmark = pytest.mark.timeout(120)


def test_a_bucket_allows_a_burst_then_one_request_per_refill() -> None:
    bucket = None
    for left in (2, 1, 0):
        bucket, verdict = take(bucket, 10.0, rate=2.0, burst=3)
        assert verdict.allowed and verdict.remaining == left
    bucket, verdict = take(bucket, 10.0, rate=2.0, burst=3)
    assert not verdict.allowed and verdict.retry_after == pytest.approx(0.5) and verdict.full_in == pytest.approx(1.5)
    bucket, verdict = take(bucket, 10.5, rate=2.0, burst=3)  # half a second later: one token back
    assert verdict.allowed and verdict.remaining == 0
    _, verdict = take(Bucket(0.0, 0.0), 100.0, rate=2.0, burst=3)  # idle long: full, not more
    assert verdict.allowed and verdict.remaining == 2


def test_addresses_have_their_own_buckets_and_idle_ones_are_forgotten() -> None:
    now = [0.0]
    limiter = RateLimiter(1.0, 2, clock=lambda: now[0], max_addresses=2)
    assert [limiter.check("10.0.0.1").allowed for _ in range(3)] == [True, True, False]
    assert limiter.check("10.0.0.2").allowed
    assert limiter.check("10.0.0.3").allowed  # 10.0.0.1 is the longest idle: forgotten
    assert limiter.check("10.0.0.1").allowed
    assert limiter.counts() == {"refused": 1}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(data_dir=Path(tmp_path_factory.mktemp("ratelimit")) / "node",
                 extra_env={"BULWARK_API_RATE": "4", "BULWARK_API_BURST": "6"}).start()
    try:
        yield srv
    finally:
        srv.stop()


def from_address(address: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=10)


@pytest.mark.system
def test_a_flood_from_one_address_is_refused_and_nobody_else_is(server: Server, tmp_path: Path) -> None:
    token = server.create_user("flood")  # before the flood: these calls count too
    server.create_repo(token, "site")
    with from_address("127.0.0.3") as flooder:
        answers = [flooder.get(f"{server.url}/api/v3/users/flood") for _ in range(12)]
    codes = [a.status_code for a in answers]
    assert codes[:6] == [200] * 6 and 429 in codes[6:], codes
    assert [a.headers["X-RateLimit-Remaining"] for a in answers[:6]] == ["5", "4", "3", "2", "1", "0"]
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json()["message"].startswith("API rate limit exceeded for 127.0.0.3")
    assert int(refused.headers["Retry-After"]) >= 1 and refused.headers["X-RateLimit-Limit"] == "6"

    with from_address("127.0.0.4") as other:
        assert other.get(f"{server.url}/api/v3/users/flood").status_code == 200
    with from_address("127.0.0.3") as flooder:
        assert flooder.get(f"{server.url}/status").status_code == 200  # health checks are not counted
        assert flooder.get(f"{server.url}/api/v3/users/flood").status_code == 429
    home = tmp_path / "home"
    home.mkdir()
    clone = git("clone", "-q", server.remote("flood", "site"), str(tmp_path / "clone"), env=git_env(home),
                check=False)
    assert clone.returncode == 0, clone.stderr  # git has its own limits
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    [line] = [ln for ln in metrics.splitlines() if ln.startswith("bulwark_requests_rate_limited_total ")]
    assert float(line.split()[1]) >= 2


@pytest.mark.system
def test_a_github_client_paces_itself_by_retry_after(server: Server) -> None:
    token = server.create_user("paced")
    client = Github(base_url=f"{server.url}/api/v3", auth=Auth.Token(token))  # its default retries
    logins = [client.get_user("paced").login for _ in range(15)]  # more than the burst
    assert logins == ["paced"] * 15
