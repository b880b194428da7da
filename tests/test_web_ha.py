"""The web interface on an HA replica: pages served read-only, forms saying so and naming the primary."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.ha_helpers import setup_replica, wait_for
from tests.support.helpers import Server, git, git_env
from tests.support.web_helpers import PAGE, post, set_password, signed_in

pytestmark = [pytest.mark.timeout(180), pytest.mark.system]
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    root = tmp_path_factory.mktemp("web-ha")
    primary = Server(data_dir=root / "primary").start()
    replica = Server(data_dir=root / "replica", token=primary.token).start()
    try:
        alice = primary.create_user("alice")
        set_password(primary, "alice", PASSWORD)
        primary.create_repo(alice, "hello")
        env = git_env(root / "home")
        (root / "home").mkdir()
        work = root / "work"
        git("init", "-q", "-b", "main", str(work), env=env)
        (work / "README.md").write_text("# Replicated\n")
        git("add", "-A", cwd=work, env=env)
        git("commit", "-qm", "first", cwd=work, env=env)
        git("push", "-q", primary.remote("alice", "hello", token=alice), "main", cwd=work, env=env)
        setup_replica(replica, primary)
        yield primary, replica
    finally:
        replica.stop()
        primary.stop()


def test_a_replica_serves_pages_and_refuses_forms_naming_the_primary(pair: tuple[Server, Server]) -> None:
    primary, replica = pair

    def replicated() -> bool:
        r = httpx.get(f"{replica.url}/alice/hello", headers=PAGE, timeout=10)
        # The replica's own role arrives with its set-up, the repository with the stream: both, then.
        return r.status_code == 200 and "Replicated" in r.text and 'id="read-only"' in r.text

    wait_for(replicated, timeout=60, what="the repository's read-only page on the replica")
    page = httpx.get(f"{replica.url}/alice/hello/blob/main/README.md", headers=PAGE, timeout=10)
    assert page.status_code == 200 and 'id="read-only"' in page.text and primary.url in page.text
    # The session is checked against the replicated password hash: signing in needs no write.
    alice = signed_in(replica, "alice", PASSWORD)
    form = alice.get("/new")
    assert form.status_code == 200 and "disabled" in form.text and primary.url in form.text
    refused = post(alice, "/new", {"owner": "alice", "name": "nope", "visibility": "public"})
    assert refused.status_code == 503 and primary.url in refused.text and 'id="error"' in refused.text
    assert primary.api("GET", "/repos/alice/nope").status_code == 404
    assert 'id="read-only"' not in httpx.get(f"{primary.url}/alice/hello", headers=PAGE, timeout=10).text
