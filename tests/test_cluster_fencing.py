"""A push leader cannot outlive its lease, and a follower that does not answer cannot stall a push.

The coordinator runs against etcd, the fake and a real one (locks, intents, generations, compare-and-set); the
followers are in-process fakes that answer, hang, or count what they were told.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any, cast

import pytest

from bulwark.cluster import intents, keys, state
from bulwark.cluster.client import refuses_connections
from bulwark.cluster.locks import RepoLocks, RepositoryBusy
from bulwark.cluster.push_follower import vote_of
from bulwark.cluster.push_leader import Coordinator, Push
from bulwark.cluster.state import BUILDING, Placement
from bulwark.errors import Unavailable
from bulwark.etcd import Etcd
from tests.support.etcd_helpers import BACKENDS, any_etcd, clean_backend

pytestmark = pytest.mark.timeout(60)

LINE = [("1" * 40, "2" * 40, "refs/heads/main")]
URLS = {n: f"http://{n}" for n in ("n1", "n2", "n3")}
SID = "ab12cd34"

# The fake etcd in the fast tier, a real one in the system tier; emptied around each test.
etcd_backend = pytest.fixture(any_etcd, scope="module", params=BACKENDS, name="etcd_backend")
etcd = pytest.fixture(clean_backend, name="etcd")


class Followers:
    """Followers that answer at once, except those in ``hung``, which never answer."""

    def __init__(self, hung: Sequence[str] = ()) -> None:
        self.hung = {URLS[n] for n in hung}
        self.calls: list[tuple[str, str]] = []
        self.tokens: list[str | None] = []

    async def _answer(self, verb: str, url: str) -> None:
        self.calls.append((verb, url))
        if url in self.hung and verb != "abort":
            await asyncio.Event().wait()

    async def prepare(self, url: str, storage_id: str, txn: str, lines: Sequence[tuple[str, str, str]],
                      source: str, pack: bytes | None = None, token: str | None = None) -> str:
        self.tokens.append(token)
        await self._answer("prepare", url)
        return vote_of(lines)

    async def commit(self, url: str, storage_id: str, txn: str, token: str | None = None) -> None:
        self.tokens.append(token)
        await self._answer("commit", url)

    async def abort(self, url: str, storage_id: str, txn: str) -> None:
        await self._answer("abort", url)

    def told(self, verb: str) -> set[str]:
        return {url for v, url in self.calls if v == verb}


class Lease:
    """This node's lease, as Membership reports it: a real etcd lease that a test can let lapse."""

    def __init__(self, etcd: Etcd) -> None:
        self.etcd = etcd
        self.id = etcd.grant(30)
        self.lapsed = False

    def current(self) -> int:
        return self.id

    def holds(self, lease: int, margin: float) -> bool:
        return not self.lapsed and lease == self.id

    def lapse(self) -> None:
        """What a cut link does: the lease expires in etcd, and with it the lock."""
        self.lapsed = True
        self.etcd.revoke(self.id)


@pytest.fixture
def lease(etcd: Etcd) -> Iterator[Lease]:
    state.create_placement(etcd, Placement(SID, {"n1": 4, "n2": 4, "n3": 4}))
    yield Lease(etcd)


def leader(etcd: Etcd, lease: Lease, followers: Followers, checksums: dict[str, str | None] | None = None,
           **options: Any) -> Coordinator:
    def checksum_of(node: str, storage_id: str) -> str | None:
        if checksums is None or node not in checksums:
            raise Unavailable(f"{node} does not answer")
        return checksums[node]

    return Coordinator("n1", URLS["n1"], etcd, RepoLocks(etcd, lease.current, "n1"), cast(Any, followers),
                       lambda: {"n1", "n2", "n3"}, lambda: URLS, liveness_every=0.05, holds=lease.holds,
                       checksum_of=checksum_of, **options)


async def push_once(coordinator: Coordinator, lapse: Lease | None = None, during: str = "") -> tuple[Push, bool, Any]:
    """One push of LINE as git drives it: prepared, then committed (or aborted), then finish;
    ``lapse``'s lease runs out at the moment ``during`` names."""
    push = await coordinator.begin(SID)
    if lapse is not None and during == "before prepare":
        lapse.lapse()
    ok, _ = await coordinator.on_hook(push.txn, "prepared", LINE)
    if lapse is not None and during == "before commit":
        lapse.lapse()
    await coordinator.on_hook(push.txn, "committed" if ok else "aborted", LINE)
    return push, ok, await coordinator.finish(push)


def generations(etcd: Etcd) -> dict[str, int]:
    placement = state.get_placement(etcd, SID)
    assert placement is not None
    return placement.replicas


def test_a_push_records_generations_and_clears_its_lock_and_intent(etcd: Etcd, lease: Lease) -> None:
    followers = Followers()
    push, ok, outcome = asyncio.run(push_once(leader(etcd, lease, followers)))
    assert ok and outcome.acknowledged, outcome.message
    assert generations(etcd) == {"n1": 5, "n2": 5, "n3": 5}
    assert etcd.get(keys.lock(SID)) is None and etcd.get(keys.intent(SID)) is None
    # Every prepare and commit carried the lock token, for the followers' fencing check.
    assert followers.tokens and set(followers.tokens) == {push.lock_token}


def test_a_leader_whose_lease_lapsed_before_prepare_changes_nothing(etcd: Etcd, lease: Lease) -> None:
    followers = Followers()
    _, ok, outcome = asyncio.run(push_once(leader(etcd, lease, followers), lease, during="before prepare"))
    assert not ok and not outcome.acknowledged
    assert "lost its cluster session" in outcome.message
    assert not followers.told("prepare")
    assert generations(etcd) == {"n1": 4, "n2": 4, "n3": 4}


def test_a_leader_whose_lease_lapsed_before_commit_records_nothing_and_leaves_its_intent(
    etcd: Etcd, lease: Lease
) -> None:
    followers = Followers()
    _, ok, outcome = asyncio.run(push_once(leader(etcd, lease, followers), lease, during="before commit"))
    assert ok  # git was let commit here...
    assert not outcome.acknowledged and "not recorded" in outcome.message  # ...but the client is told it failed
    assert not followers.told("commit")
    assert followers.told("abort") == {URLS["n2"], URLS["n3"]}
    assert generations(etcd) == {"n1": 4, "n2": 4, "n3": 4}  # nothing counted as up to date
    assert etcd.get(keys.intent(SID)) is not None  # the next holder of the lock must compare the replicas


def test_the_next_push_settles_a_left_intent_by_majority(etcd: Etcd, lease: Lease) -> None:
    """The lapsed leader (n1) had committed locally; n2 and n3 had not. The next leader compares
    checksums on disk: n1 is behind the majority and is marked outdated before anything else."""
    asyncio.run(push_once(leader(etcd, lease, Followers()), lease, during="before commit"))
    lease2 = Lease(etcd)
    checksums: dict[str, str | None] = {"n1": "new", "n2": "old", "n3": "old"}
    coordinator = leader(etcd, lease2, Followers(), checksums)
    with pytest.raises(Unavailable, match="not up to date"):
        asyncio.run(coordinator.begin(SID))  # n1 leads no more: its copy is the odd one out
    assert generations(etcd) == {"n1": BUILDING, "n2": 4, "n3": 4}
    assert etcd.get(keys.intent(SID)) is None and etcd.get(keys.lock(SID)) is None


def test_a_left_intent_that_cannot_be_checked_blocks_writes_and_stays(etcd: Etcd, lease: Lease) -> None:
    asyncio.run(push_once(leader(etcd, lease, Followers()), lease, during="before commit"))
    coordinator = leader(etcd, Lease(etcd), Followers(), {"n1": "new"})  # n2 and n3 do not answer
    with pytest.raises(Unavailable, match="did not finish"):
        asyncio.run(coordinator.begin(SID))
    assert etcd.get(keys.intent(SID)) is not None
    assert generations(etcd) == {"n1": 4, "n2": 4, "n3": 4}


def test_judge_needs_a_majority_of_all_replicas() -> None:
    placement = Placement(SID, {"n1": 4, "n2": 4, "n3": 4})
    assert not intents.judge(placement, {"n1": "a"}).settled
    assert intents.judge(placement, {"n1": "a", "n2": "a"}).outdated == ()
    assert intents.judge(placement, {"n1": "b", "n2": "a", "n3": "a"}).outdated == ("n1",)
    # An outdated replica's answer does not count.
    assert not intents.judge(Placement(SID, {"n1": 4, "n2": 3, "n3": 3}), {"n1": "a", "n2": "a"}).settled


def test_a_hung_follower_does_not_stall_a_push_that_has_a_majority(etcd: Etcd, lease: Lease) -> None:
    followers = Followers(hung=["n3"])
    coordinator = leader(etcd, lease, followers, straggler_deadline=0.3)
    push, ok, outcome = asyncio.run(push_once(coordinator))
    assert ok and outcome.acknowledged, outcome.message
    assert any("n3 did not answer" in p for p in push.problems)
    assert generations(etcd) == {"n1": 5, "n2": 5, "n3": 4}  # n3 is outdated, to be repaired
    assert URLS["n3"] in followers.told("abort")  # whatever it prepared late is let go
    assert URLS["n3"] not in followers.told("commit")


def test_without_a_majority_a_hung_follower_is_waited_for_until_its_session_ends(etcd: Etcd, lease: Lease) -> None:
    alive = {"n1", "n2", "n3"}
    followers = Followers(hung=["n2", "n3"])
    coordinator = leader(etcd, lease, followers, straggler_deadline=0.1)
    coordinator.alive = lambda: set(alive)

    async def scenario() -> tuple[bool, str]:
        push = await coordinator.begin(SID)
        voting = asyncio.ensure_future(coordinator.on_hook(push.txn, "prepared", LINE))
        await asyncio.sleep(0.5)
        assert not voting.done()  # no majority yet: the deadline for stragglers does not apply
        alive.difference_update({"n2", "n3"})
        result = await voting
        await coordinator.cancel(push)
        return result

    ok, message = asyncio.run(scenario())
    assert not ok and "only 1 of 3" in message


def test_the_sweep_settles_an_intent_whose_leader_is_gone(etcd: Etcd, lease: Lease) -> None:
    """Nobody pushes again: the reconciler's node settles the dead leader's push by itself."""
    asyncio.run(push_once(leader(etcd, lease, Followers()), lease, during="before commit"))
    sweeper_lease = Lease(etcd)
    locks = RepoLocks(etcd, sweeper_lease.current, "n2")
    checksums = {"n1": "new", "n2": "old", "n3": "old"}

    def checksum_of(node: str, storage_id: str) -> str | None:
        return checksums[node]

    # While a push holds the lock, the sweep leaves its intent alone.
    busy = locks.try_acquire(SID)
    assert busy is not None
    assert intents.sweep(etcd, RepoLocks(etcd, sweeper_lease.current, "n3"), checksum_of) == "no unfinished pushes"
    locks.release(SID, busy)
    sentence = intents.sweep(etcd, locks, checksum_of)
    assert "left n1 behind the majority" in sentence
    assert generations(etcd) == {"n1": BUILDING, "n2": 4, "n3": 4}
    assert etcd.get(keys.intent(SID)) is None and etcd.get(keys.lock(SID)) is None
    assert intents.sweep(etcd, locks, checksum_of) == "no unfinished pushes"


def test_the_sweep_waits_while_too_few_replicas_answer(etcd: Etcd, lease: Lease) -> None:
    asyncio.run(push_once(leader(etcd, lease, Followers()), lease, during="before commit"))
    locks = RepoLocks(etcd, Lease(etcd).current, "n2")

    def checksum_of(node: str, storage_id: str) -> str | None:
        raise Unavailable(f"{node} does not answer")

    assert "wait for more replicas" in intents.sweep(etcd, locks, checksum_of)
    assert etcd.get(keys.intent(SID)) is not None and etcd.get(keys.lock(SID)) is None


class CutMidCall(Etcd):
    """etcd as seen from a node cut off mid-call: the next transaction times out, applied or not."""

    def __init__(self, real: Etcd, *, applied: bool) -> None:
        super().__init__(real.endpoints)
        self.real = real
        self.applied = applied
        self.armed = False

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.real.call(path, body)  # the real client's, or the fake's

    def txn(self, *args: Any, **kwargs: Any) -> Any:
        if not self.armed:
            return super().txn(*args, **kwargs)
        self.armed = False
        if self.applied:
            super().txn(*args, **kwargs)
        raise Unavailable("etcd is unreachable: timed out")


def test_a_lock_taken_by_a_transaction_that_seemed_to_fail_is_released(etcd: Etcd, lease: Lease) -> None:
    """The partition finding: a push's lock transaction timed out but was applied; the lease lived on,
    and with it the lock, so every later push and repair of the repository was refused for good."""
    cut = CutMidCall(etcd, applied=True)
    cut.armed = True
    coordinator = Coordinator("n1", URLS["n1"], cut, RepoLocks(cut, lease.current, "n1"), cast(Any, Followers()),
                              lambda: {"n1", "n2", "n3"}, lambda: URLS, liveness_every=0.05, holds=lease.holds,
                              checksum_of=lambda node, sid: "same", lock_wait=0.2)
    with pytest.raises(Unavailable):
        asyncio.run(coordinator.begin(SID))
    orphan = etcd.get(keys.lock(SID))
    assert orphan is not None and orphan.text.startswith("n1/")  # applied, though the push was refused

    held_by_other_work = coordinator.locks.try_acquire("another-repo")
    elsewhere = RepoLocks(etcd, Lease(etcd).current, "n2")
    theirs = elsewhere.try_acquire("third-repo")
    assert coordinator.locks.drop_orphans() == 1
    assert etcd.get(keys.lock(SID)) is None
    # What work on this node holds, and other nodes' locks, stay.
    assert etcd.get(keys.lock("another-repo")).text == held_by_other_work  # type: ignore[union-attr]
    assert etcd.get(keys.lock("third-repo")).text == theirs  # type: ignore[union-attr]
    # The next push takes the lock, settles the intent the lost transaction wrote, and is acknowledged.
    _, ok, outcome = asyncio.run(push_once(leader(etcd, lease, Followers(), {"n1": "a", "n2": "a", "n3": "a"})))
    assert ok and outcome.acknowledged, outcome
    assert etcd.get(keys.intent(SID)) is None


def test_a_release_that_did_not_get_through_leaves_no_lock_behind(etcd: Etcd, lease: Lease) -> None:
    cut = CutMidCall(etcd, applied=False)
    locks = RepoLocks(cut, lease.current, "n1")
    token = locks.try_acquire(SID)
    assert token is not None
    cut.armed = True
    with pytest.raises(Unavailable):
        locks.release(SID, token)
    assert etcd.get(keys.lock(SID)) is not None  # the lease lives on, and so would the lock
    assert locks.drop_orphans() == 1
    assert etcd.get(keys.lock(SID)) is None


def test_a_lock_whose_holder_process_is_gone_is_taken_at_once(etcd: Etcd, lease: Lease) -> None:
    """A node killed while it held a lock would keep it until its lease expired (3 s by default,
    30 s here); a node that finds the holder refusing connections ends that lease instead."""
    dead = RepoLocks(etcd, lease.current, "n1")
    assert dead.try_acquire(SID) is not None
    asked: list[str] = []

    def gone(node: str) -> bool:
        asked.append(node)
        return node == "n1"

    waiting = RepoLocks(etcd, Lease(etcd).current, "n2", gone=gone)
    held = waiting.acquire_for_push(SID, 0.5, unless=keys.BACKUP_BARRIER, intent="t")
    assert held.token.startswith("n2/") and asked == ["n1"]
    assert etcd.get(keys.lock(SID)) is not None and etcd.get(keys.lock(SID)).text == held.token  # type: ignore[union-attr]
    waiting.release(SID, held.token)
    # A repair's lock the same way; and a holder that is merely slow is waited for, asked once.
    slow = RepoLocks(etcd, Lease(etcd).current, "n3")
    assert slow.try_acquire(SID) is not None
    with pytest.raises(RepositoryBusy, match="on n3"):
        waiting.acquire(SID, 0.3)
    assert asked == ["n1", "n3"]


def test_refuses_connections_only_when_the_host_says_so() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert refuses_connections(f"http://127.0.0.1:{port}")  # bound, not listening: refused
        s.listen(0)
        assert not refuses_connections(f"http://127.0.0.1:{port}")  # answered (and now fills the backlog)
        # A full backlog drops the handshake, as a hung or cut-off host does: not known to be down.
        assert not refuses_connections(f"http://127.0.0.1:{port}", timeout=0.2)
