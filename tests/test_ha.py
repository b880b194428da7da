"""High availability with real processes: a primary, a replica, HAProxy, the real git client."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bulwark.store.sqlite import SQLiteStore
from tests.support.ha_helpers import HAProxy, Pusher, ha_pair, refs_of, repl, repl_status, setup_replica, wait_for
from tests.support.helpers import BULWARK, Server, bulwark, git

pytestmark = [pytest.mark.timeout(240), pytest.mark.system]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    with ha_pair(tmp_path, {"BULWARK_HA_RECONCILE_INTERVAL": "1"}) as servers:
        yield servers


def seed(primary: Server) -> dict[str, str]:
    tokens = {"alice": primary.create_user("alice"), "bob": primary.create_user("bob")}
    primary.create_repo(tokens["alice"], "app", private=True)
    r = primary.api("PUT", "/repos/alice/app/collaborators/bob", token=tokens["alice"], json={"permission": "push"})
    assert r.status_code in (201, 204), r.text
    r = primary.api("POST", "/admin/organizations", json={"login": "acme", "admin": "alice"})
    assert r.status_code == 201, r.text
    return tokens


def position_of(server: Server) -> int:
    store = SQLiteStore(server.data_dir / "metadata.db")
    try:
        return store.replication_position()
    finally:
        store.close()


def test_everything_reaches_the_replica_which_refuses_writes(pair: tuple[Server, Server], genv: dict[str, str],
                                                             tmp_path: Path) -> None:
    primary, replica = pair
    tokens = seed(primary)
    pusher = Pusher.clone(primary.remote("alice", "app", token=tokens["alice"]), tmp_path / "w", genv)
    for _ in range(3):
        assert pusher.push_new_branch()

    want = refs_of(primary.remote("alice", "app", token=tokens["alice"]), genv)
    wait_for(lambda: refs_of(replica.remote("alice", "app", token=tokens["alice"]), genv) == want,
             what="the replica's refs to equal the primary's")
    # Users, tokens (alice's works on the replica), collaborators and organizations came along.
    r = replica.api("GET", "/repos/alice/app/collaborators/bob/permission", token=tokens["alice"])
    assert r.status_code == 200 and r.json()["permission"] == "write"
    assert replica.api("GET", "/orgs/acme").status_code == 200
    assert replica.api("GET", "/user", token=tokens["bob"]).json()["login"] == "bob"

    status = wait_for(lambda: (s := repl_status(replica))["level"] == "OK" and s, what="replica status OK")
    assert status["exit_code"] == 0 and status["lag_changes"] == 0
    assert status["repositories"] == {"total": 1, "in_sync": 1, "pending": 0, "faulty": 0, "faulty_ids": []}
    on_primary = repl_status(primary)
    assert [r["url"] for r in on_primary["replicas"]] == [replica.url]
    report = httpx.get(f"{primary.url}/manage/v1/replication/status",
                       headers={"Authorization": f"token {primary.token}"}).json()
    assert report["role"] == "ha-primary" and report["replicas"][0]["node_id"] == on_primary["replicas"][0]["node_id"]

    # Roles on the wire: the replica refuses writes and says where the primary is.
    pusher.commit("refused.txt", "no\n")
    proc = git("push", replica.remote("alice", "app", token=tokens["alice"]), "HEAD:refs/heads/refused",
               cwd=pusher.workdir, env=genv, check=False)
    assert proc.returncode != 0 and "replica" in proc.stderr and primary.url in proc.stderr
    r = replica.api("POST", "/user/repos", token=tokens["alice"], json={"name": "nope"})
    assert r.status_code == 503 and primary.url in r.json()["message"]
    assert httpx.get(f"{replica.url}/status").status_code == 503
    assert httpx.get(f"{replica.url}/status/replication").status_code == 200
    assert httpx.get(f"{primary.url}/status").status_code == 200


def one_repository_in_sync(primary: Server, replica: Server, genv: dict[str, str],
                           tmp_path: Path) -> tuple[str, Pusher]:
    """alice/app with one pushed branch, replicated: alice's token and her working copy."""
    token = primary.create_user("alice")
    primary.create_repo(token, "app")
    pusher = Pusher.clone(primary.remote("alice", "app", token=token), tmp_path / "w", genv)
    assert pusher.push_new_branch()
    wait_for(lambda: repl_status(replica)["repositories"]["in_sync"] == 1, what="replica in sync")
    return token, pusher


def test_kill_primary_promote_replica_through_haproxy(pair: tuple[Server, Server], genv: dict[str, str],
                                                      tmp_path: Path) -> None:
    primary, replica = pair
    token = primary.create_user("alice")
    primary.create_repo(token, "app")
    lb = HAProxy(tmp_path, primary, replica)
    try:
        remote = f"http://x:{token}@127.0.0.1:{lb.port}/alice/app.git"
        wait_for(lambda: git("ls-remote", remote, env=genv, check=False).returncode == 0, what="HAProxy up")
        # HAProxy starts with every server up; two failed checks (fall 2, inter 1s) take the replica out.
        time.sleep(3)
        pusher = Pusher.clone(remote, tmp_path / "w", genv)
        acked: list[tuple[str, str]] = []
        stop = threading.Event()

        def push_stream() -> None:
            while not stop.is_set() and len(acked) < 200:
                done = pusher.push_new_branch(timeout=10)
                if done:
                    acked.append(done)
                else:
                    time.sleep(0.1)

        thread = threading.Thread(target=push_stream, daemon=True)
        thread.start()
        wait_for(lambda: len(acked) >= 15, timeout=90, what="15 acknowledged pushes")
        primary.kill()
        stop.set()
        thread.join(30)

        started = time.monotonic()
        r = repl(replica, "promote")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "could not fence" in r.stdout and "epoch 2" in r.stdout
        pusher.commit("after.txt", "after the failover\n")
        wait_for(lambda: git("push", "--quiet", remote, "HEAD:refs/heads/after-failover", cwd=pusher.workdir,
                             env=genv, check=False, timeout=10).returncode == 0,
                 timeout=60, interval=0.2, what="a push through HAProxy after promotion")
        promote_to_push = time.monotonic() - started
        print(f"\npromote-to-first-push through HAProxy: {promote_to_push:.2f}s; acknowledged pushes: {len(acked)}")

        # Every push the old primary had logged up to the replica's position is on the new primary.
        position = position_of(replica)
        old = sqlite3.connect(primary.data_dir / "metadata.db")
        rows = old.execute(
            "SELECT seq, row_json FROM changes WHERE tbl = 'event' AND seq <= ? ORDER BY seq", (position,)
        ).fetchall()
        old.close()
        replicated = {ref: new for _, row in rows for _old, new, ref in json.loads(row)["refs"]}
        now = refs_of(remote, genv)
        assert replicated, "the replica had applied pushes before the kill"
        for ref, oid in replicated.items():
            assert now.get(ref) == oid, f"{ref} was replicated before the kill but is missing after promotion"
        lost = [branch for branch, sha in acked if now.get(f"refs/heads/{branch}") != sha]
        print(f"acknowledged pushes not on the new primary (beyond the replica's position): {len(lost)}")
        assert len(lost) <= len(acked) - len(replicated)
        fsck = bulwark("fsck", env=replica.env())
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    finally:
        lb.stop()


def test_a_promotion_killed_part_way_is_finished_by_the_running_node(pair: tuple[Server, Server],
                                                                     genv: dict[str, str], tmp_path: Path) -> None:
    """`repl promote` lowers the replication flag first; killed after that, it would leave a pair
    that takes no writes anywhere until someone ran it again."""
    primary, replica = pair
    token, pusher = one_repository_in_sync(primary, replica, genv, tmp_path)
    assert primary.proc is not None
    os.kill(primary.proc.pid, signal.SIGSTOP)  # hung: the promotion waits on it, and is killed meanwhile
    try:
        promoting = subprocess.Popen([*BULWARK, "repl", "promote"], env=replica.env(),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: repl_status(replica)["promoting"] == promoting.pid, timeout=30, what="promotion begun")
        finally:
            promoting.kill()
            promoting.wait(10)
        wait_for(lambda: repl_status(replica)["role"] == "ha-primary", timeout=60, what="promotion finished")
        status = repl_status(replica)
        assert status["epoch"] == 2 and status["promoting"] is None, status
        assert "finished an interrupted promotion" in replica.log_path.read_text()
        assert pusher.push_new_branch(replica.remote("alice", "app", token=token))
    finally:
        os.kill(primary.proc.pid, signal.SIGCONT)
    # The old primary, running again, learns of the newer epoch and refuses writes.
    wait_for(lambda: httpx.get(f"{primary.url}/status").status_code == 503, timeout=30, what="old primary fenced")


def test_old_primary_comes_back_fenced_then_rejoins_as_replica(pair: tuple[Server, Server],
                                                                genv: dict[str, str], tmp_path: Path) -> None:
    primary, replica = pair
    token, pusher = one_repository_in_sync(primary, replica, genv, tmp_path)
    primary.kill()
    assert repl(replica, "promote").returncode == 0
    assert pusher.push_new_branch(replica.remote("alice", "app", token=token))

    primary.start()  # same data dir, same port: it believes it is the primary
    proc = None
    for _ in range(3):
        pusher.commit("split.txt", "split brain?\n")
        proc = git("push", primary.remote("alice", "app", token=token), "HEAD:refs/heads/split",
                   cwd=pusher.workdir, env=genv, check=False)
        if proc.returncode != 0:
            break
    assert proc is not None and proc.returncode != 0 and "no longer takes writes" in proc.stderr
    assert httpx.get(f"{primary.url}/status").status_code == 503

    # Turned into a replica of the new primary, it catches up.
    setup_replica(primary, replica, "--yes")
    want = refs_of(replica.remote("alice", "app", token=token), genv)
    wait_for(lambda: refs_of(primary.remote("alice", "app", token=token), genv) == want, what="old primary caught up")
    assert "refs/heads/split" not in want
    assert pusher.push_new_branch(replica.remote("alice", "app", token=token))
    want = refs_of(replica.remote("alice", "app", token=token), genv)
    wait_for(lambda: refs_of(primary.remote("alice", "app", token=token), genv) == want, what="new pushes flow")


def test_replica_restart_resumes_and_damage_is_repaired(pair: tuple[Server, Server], genv: dict[str, str],
                                                        tmp_path: Path) -> None:
    primary, replica = pair
    token = primary.create_user("alice")
    for name in ("one", "two", "three"):
        primary.create_repo(token, name)
    pushers = {
        n: Pusher.clone(primary.remote("alice", n, token=token), tmp_path / n, genv) for n in ("one", "two", "three")
    }
    for p in pushers.values():
        assert p.push_new_branch()
    wait_for(lambda: repl_status(replica)["repositories"]["in_sync"] == 3, what="3 repositories in sync")

    replica.kill()
    before = position_of(replica)
    for p in pushers.values():
        assert p.push_new_branch()
    replica.start()
    for n in pushers:
        want = refs_of(primary.remote("alice", n, token=token), genv)
        wait_for(lambda n=n, want=want: refs_of(replica.remote("alice", n, token=token), genv) == want,
                 what=f"{n} caught up after restart")
    assert position_of(replica) > before > 0
    assert _full_log(primary).count('"path": "/manage/v1/replication/snapshot"') == 1, "resumed without a full copy"

    # Damage: one repository deleted, one with its objects gone.
    store = SQLiteStore(replica.data_dir / "metadata.db")
    repos = {r.name: r.storage_id for r in store.list_repos()}
    store.close()
    root = replica.data_dir / "repositories"
    # Each damage is one rename, so the replica's reconciler never sees a half-done one.
    graveyard = tmp_path / "graveyard"
    graveyard.mkdir()
    os.rename(root / repos["one"][:2] / f"{repos['one']}.git", graveyard / "one.git")
    os.rename(root / repos["two"][:2] / f"{repos['two']}.git" / "objects", graveyard / "two-objects")
    for n in ("one", "two"):
        want = refs_of(primary.remote("alice", n, token=token), genv)
        wait_for(lambda n=n, want=want: git("ls-remote", replica.remote("alice", n, token=token), env=genv,
                                            check=False).returncode == 0
                 and refs_of(replica.remote("alice", n, token=token), genv) == want,
                 timeout=60, what=f"{n} repaired")
    wait_for(lambda: bulwark("fsck", env=replica.env()).returncode == 0, timeout=60, what="clean fsck on the replica")


def _full_log(server: Server) -> str:
    return server.log_path.read_text(errors="replace")


def test_replication_endpoints_refuse_bad_input(pair: tuple[Server, Server]) -> None:
    primary, replica = pair
    base = f"{primary.url}/manage/v1/replication"
    store = SQLiteStore(replica.data_dir / "metadata.db")
    ha = json.loads(store.get_setting("ha.state") or "{}")
    store.close()
    cred = ha["credential"]
    good = {"Authorization": f"Bearer {cred}", "X-Bulwark-Epoch": str(ha["epoch"])}

    assert httpx.get(f"{base}/changes").status_code == 401
    assert httpx.get(f"{base}/changes", headers={"Authorization": "Bearer bwr_" + "0" * 40}).status_code == 401
    assert httpx.get(f"{base}/changes", headers={**good, "X-Bulwark-Epoch": "0"}).status_code == 409
    assert httpx.get(f"{base}/changes", headers={**good, "X-Bulwark-Epoch": "x"}).status_code == 422
    for params in ({"after": "-1"}, {"after": "abc"}, {"after": str(10**9)}, {"limit": "0"}, {"wait": "soon"}):
        r = httpx.get(f"{base}/changes", headers=good, params=params)
        assert r.status_code == 422, (params, r.text)
        assert r.json()["message"]
    r = httpx.post(f"{base}/fence", headers=good, json={"epoch": ha["epoch"]})
    assert r.status_code == 409
    r = httpx.post(f"{base}/fence", headers=good, content=b"{not json")
    assert r.status_code == 400
    assert httpx.post(f"{base}/replicas", json={"node_id": "x", "url": "http://x"}).status_code == 401
    r = httpx.post(f"{base}/replicas", headers={"Authorization": f"token {primary.token}"}, json={"node_id": "../x"})
    assert r.status_code == 422

    # Nothing changed: the primary serves writes and the replica still follows.
    token = primary.create_user("carol")
    primary.create_repo(token, "still-works")
    wait_for(lambda: replica.api("GET", "/repos/carol/still-works", token=token).status_code == 200,
             what="replication still flowing")
    assert httpx.get(f"{primary.url}/status").status_code == 200
