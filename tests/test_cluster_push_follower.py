"""A replica's half of a replicated push, on real repositories: the thin pack a leader sends
with its prepare request, and the fetch a follower falls back to."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from bulwark.cluster.push_follower import StaleLeader, Transactions
from bulwark.errors import Conflict, GitError
from bulwark.git.runner import ZERO_OID, GitRunner

pytestmark = pytest.mark.timeout(60)

SID = "ab12cd34"


def git(repo: Path, *args: str, input: bytes | None = None) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "A", "GIT_AUTHOR_EMAIL": "a@example.com",
           "GIT_COMMITTER_NAME": "A", "GIT_COMMITTER_EMAIL": "a@example.com", "GIT_CONFIG_GLOBAL": os.devnull,
           # Fixed dates: both replicas' first commits must be the same object.
           "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z"}
    return subprocess.run(["git", "--git-dir", str(repo), *args], input=input, env=env, capture_output=True,
                          check=True).stdout.decode().strip()


def new_commit(repo: Path, parent: str | None, content: bytes) -> str:
    """A commit whose objects are in ``repo`` but no ref points at it, as at a push's "prepared" moment."""
    blob = git(repo, "hash-object", "-w", "--stdin", input=content)
    tree = git(repo, "mktree", input=f"100644 blob {blob}\tfile\n".encode())
    return git(repo, "commit-tree", tree, *(["-p", parent] if parent else []), "-m", "change")


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Transactions, Transactions, str]:
    """A leader and a follower replica of one repository, both at the same first commit."""
    leader, follower = GitRunner(tmp_path / "leader"), GitRunner(tmp_path / "follower")
    first = ""
    for runner in (leader, follower):
        repo = runner.init_bare(SID, "main")
        first = new_commit(repo, None, b"first\n" * 1000)
        git(repo, "update-ref", "refs/heads/main", first)
    return Transactions(leader), Transactions(follower), first


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def pack_objects(pack: bytes) -> int:
    assert pack[:4] == b"PACK"
    return int.from_bytes(pack[8:12], "big")


async def prepare_and_commit(follower: Transactions, lines: list[tuple[str, str, str]], source: str,
                             pack: bytes | None) -> None:
    await follower.prepare(SID, "t1", lines, source, {}, pack=pack)
    await follower.commit("t1")


def test_a_thin_pack_carries_the_push_and_nothing_is_fetched(pair: tuple[Transactions, Transactions, str]) -> None:
    leader, follower, first = pair
    leader_repo, follower_repo = leader.git.path(SID), follower.git.path(SID)
    new = new_commit(leader_repo, first, b"first\n" * 1000 + b"one more line\n")
    pack = run(leader.thin_pack(SID, [new]))
    assert pack is not None and pack_objects(pack) == 3  # commit, tree, blob: the rest is the follower's
    # An address nobody listens on: the follower must not need it.
    run(prepare_and_commit(follower, [(first, new, "refs/heads/main")], "http://127.0.0.1:9/nowhere", pack))
    assert git(follower_repo, "rev-parse", "refs/heads/main") == new
    git(follower_repo, "fsck", "--strict")


def test_a_new_branch_sends_only_what_is_new(pair: tuple[Transactions, Transactions, str]) -> None:
    leader, follower, first = pair
    new = new_commit(leader.git.path(SID), first, b"topic\n")
    pack = run(leader.thin_pack(SID, [new]))
    assert pack is not None and pack_objects(pack) == 3
    run(prepare_and_commit(follower, [(ZERO_OID, new, "refs/heads/topic")], "http://127.0.0.1:9/nowhere", pack))
    assert git(follower.git.path(SID), "rev-parse", "refs/heads/topic") == new


def test_a_pack_that_does_not_apply_falls_back_to_fetching(
    pair: tuple[Transactions, Transactions, str]
) -> None:
    leader, follower, first = pair
    leader_repo = leader.git.path(SID)
    new = new_commit(leader_repo, first, b"second\n")
    git(leader_repo, "update-ref", "refs/heads/staging", new)  # so a plain fetch from the leader finds it
    run(prepare_and_commit(follower, [(first, new, "refs/heads/main")], str(leader_repo), b"PACK garbage" * 4))
    assert git(follower.git.path(SID), "rev-parse", "refs/heads/main") == new
    # With neither a good pack nor a reachable leader, the prepare fails: no vote without the objects.
    newer = new_commit(leader_repo, new, b"third\n")
    with pytest.raises(GitError):
        run(follower.prepare(SID, "t2", [(new, newer, "refs/heads/main")], "http://127.0.0.1:9/nowhere", {},
                             pack=None))


def test_a_push_larger_than_the_limit_is_not_packed(pair: tuple[Transactions, Transactions, str]) -> None:
    leader, _, first = pair
    small = Transactions(leader.git, pack_limit=1024)
    new = new_commit(leader.git.path(SID), first, os.urandom(64 * 1024))
    assert run(small.thin_pack(SID, [new])) is None
    assert run(leader.thin_pack(SID, [new])) is not None


def test_a_prepared_update_is_aborted_when_its_leader_dies(pair: tuple[Transactions, Transactions, str]) -> None:
    leader, follower_tx, first = pair
    alive = {"http://leader": True}
    follower = Transactions(follower_tx.git, leader_alive=lambda url: alive.get(url, False), check_every=0.05)
    new = new_commit(leader.git.path(SID), first, b"in flight\n")
    pack = run(leader.thin_pack(SID, [new]))
    line = [(first, new, "refs/heads/main")]

    async def scenario() -> None:
        await follower.prepare(SID, "t1", line, "http://127.0.0.1:9/nowhere", {}, pack=pack, leader="http://leader")
        await asyncio.sleep(0.2)
        assert follower.held() == 1  # a live leader's update stays prepared
        alive["http://leader"] = False  # the leader is killed before it says commit or abort
        for _ in range(600):  # bounded by the test's timeout, not by a guess at the machine's speed
            if follower.held() == 0:
                break
            await asyncio.sleep(0.05)
        assert follower.held() == 0
        # The ref is unlocked: the next leader's update of the same ref prepares and commits.
        await follower.prepare(SID, "t2", line, "http://127.0.0.1:9/nowhere", {}, pack=pack, leader="http://other")
        await follower.commit("t2")

    run(scenario())
    assert git(follower.git.path(SID), "rev-parse", "refs/heads/main") == new


def test_a_prepared_update_is_aborted_when_its_leaders_lock_goes(pair: tuple[Transactions, Transactions, str]) -> None:
    """A leader killed and started again within its lease's TTL is alive under the same name; the
    push died with the old process, and its lock with the old lease: the follower lets go then."""
    leader, follower_tx, first = pair
    lock = {SID: "n1/current"}
    follower = Transactions(follower_tx.git, leader_alive=lambda url: True, check_every=0.05,
                            lock_holds=lambda sid, token: lock.get(sid) == token)
    new = new_commit(leader.git.path(SID), first, b"leader restarted\n")
    pack = run(leader.thin_pack(SID, [new]))
    line = [(first, new, "refs/heads/main")]

    async def scenario() -> None:
        await follower.prepare(SID, "t1", line, "http://127.0.0.1:9/nowhere", {}, pack=pack, leader="http://leader",
                               token="n1/current")
        await asyncio.sleep(0.2)
        assert follower.held() == 1  # the lock is still the leader's: the update stays prepared
        del lock[SID]  # the old lease expired and took the lock with it
        for _ in range(600):
            if follower.held() == 0:
                break
            await asyncio.sleep(0.05)
        assert follower.held() == 0
        lock[SID] = "n1/again"
        await follower.prepare(SID, "t2", line, "http://127.0.0.1:9/nowhere", {}, pack=pack, leader="http://leader",
                               token="n1/again")
        await follower.commit("t2", "n1/again")

    run(scenario())
    assert git(follower.git.path(SID), "rev-parse", "refs/heads/main") == new


def test_a_stale_leader_can_neither_prepare_nor_commit(pair: tuple[Transactions, Transactions, str]) -> None:
    """The fencing check: a replica changes refs only for the token that is the repository's lock now."""
    leader, follower_tx, first = pair
    lock = {SID: "n1/current"}
    follower = Transactions(follower_tx.git, lock_holds=lambda sid, token: lock.get(sid) == token)
    new = new_commit(leader.git.path(SID), first, b"fenced\n")
    pack = run(leader.thin_pack(SID, [new]))
    line = [(first, new, "refs/heads/main")]
    with pytest.raises(StaleLeader):
        run(follower.prepare(SID, "t1", line, "http://127.0.0.1:9/nowhere", {}, pack=pack, token="n1/old"))

    async def lease_runs_out_between_prepare_and_commit() -> None:
        await follower.prepare(SID, "t2", line, "http://127.0.0.1:9/nowhere", {}, pack=pack, token="n1/current")
        lock[SID] = "n2/next"  # the leader's lease expired and another node took the lock
        with pytest.raises(StaleLeader):
            await follower.commit("t2", "n1/current")
        assert follower.held() == 0  # the refused update let go of its ref locks
        await follower.prepare(SID, "t3", line, "http://127.0.0.1:9/nowhere", {}, pack=pack, token="n2/next")
        await follower.commit("t3", "n2/next")

    run(lease_runs_out_between_prepare_and_commit())
    assert git(follower.git.path(SID), "rev-parse", "refs/heads/main") == new


def test_an_abort_that_overtakes_its_prepare_still_releases_the_refs(
    pair: tuple[Transactions, Transactions, str]
) -> None:
    """A leader that stopped waiting for a slow follower aborts it; the abort may arrive first."""
    leader, follower, first = pair
    new = new_commit(leader.git.path(SID), first, b"late\n")
    pack = run(leader.thin_pack(SID, [new]))
    line = [(first, new, "refs/heads/main")]

    async def scenario() -> None:
        await follower.abort("t1")
        with pytest.raises(Conflict, match="aborted by its leader"):
            await follower.prepare(SID, "t1", line, "http://127.0.0.1:9/nowhere", {}, pack=pack)
        assert follower.held() == 0
        await follower.prepare(SID, "t2", line, "http://127.0.0.1:9/nowhere", {}, pack=pack)
        await follower.commit("t2")

    run(scenario())
    assert git(follower.git.path(SID), "rev-parse", "refs/heads/main") == new
