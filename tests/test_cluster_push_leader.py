"""The leader's wait on its followers: a follower that hangs (its node stopped, not dead) is
given up on once its node loses its etcd session, instead of holding the push for the whole
peer timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, cast

import pytest

from bulwark.cluster.locks import RepoLocks
from bulwark.cluster.push_follower import vote_of
from bulwark.cluster.push_leader import Coordinator, Push
from bulwark.cluster.state import Placement

pytestmark = pytest.mark.timeout(30)

LINE = [("1" * 40, "2" * 40, "refs/heads/main")]


class Peers:
    """Followers answering at once, except those in ``hung``, which never answer."""

    def __init__(self, hung: set[str]) -> None:
        self.hung = hung
        self.calls: list[tuple[str, str]] = []

    async def _answer(self, verb: str, url: str) -> None:
        self.calls.append((verb, url))
        if url in self.hung:
            await asyncio.Event().wait()

    async def prepare(self, url: str, storage_id: str, txn: str, lines: Sequence[tuple[str, str, str]],
                      source: str, pack: bytes | None = None, token: str | None = None) -> str:
        await self._answer("prepare", url)
        return vote_of(lines)

    async def commit(self, url: str, storage_id: str, txn: str, token: str | None = None) -> None:
        await self._answer("commit", url)

    async def abort(self, url: str, storage_id: str, txn: str) -> None:
        await self._answer("abort", url)


def leader(peers: Peers, alive: set[str]) -> tuple[Coordinator, Push]:
    urls = {n: f"http://{n}" for n in ("n1", "n2", "n3")}
    coordinator = Coordinator("n1", urls["n1"], cast(Any, None), cast(Any, None), cast(Any, peers),
                              lambda: set(alive), lambda: urls, liveness_every=0.02)
    push = Push("t1", "s1", "lock", Placement("s1", {"n1": 0, "n2": 0, "n3": 0}),
                {"n2": urls["n2"], "n3": urls["n3"]}, good={"n2", "n3"})
    coordinator._pushes[push.txn] = push  # as begin() would, without etcd
    return coordinator, push


def test_a_hung_follower_is_given_up_on_when_its_session_ends() -> None:
    alive = {"n1", "n2", "n3"}
    peers = Peers(hung={"http://n3"})
    coordinator, push = leader(peers, alive)

    async def scenario() -> tuple[bool, str]:
        voting = asyncio.ensure_future(coordinator.on_hook("t1", "prepared", LINE))
        await asyncio.sleep(0.2)
        assert not voting.done()  # n3 still holds its session: its answer is awaited
        alive.discard("n3")  # its lease runs out
        ok, message = await voting
        await coordinator.on_hook("t1", "committed", LINE)
        return ok, message

    ok, message = asyncio.run(scenario())
    assert ok and "2 of 3" in message
    assert push.good == {"n2"} and push.rounds == 1
    assert any("n3 lost its cluster session" in p for p in push.problems)
    assert ("commit", "http://n2") in peers.calls and ("commit", "http://n3") not in peers.calls


def test_without_a_majority_the_push_is_refused_and_followers_told_to_abort() -> None:
    alive = {"n1"}
    peers = Peers(hung={"http://n2", "http://n3"})
    coordinator, push = leader(peers, alive)
    ok, message = asyncio.run(coordinator.on_hook("t1", "prepared", LINE))
    assert not ok and "only 1 of 3" in message
    assert push.prepared == {}


class SlowPeers(Peers):
    """Followers that all answer after ``delay``."""

    def __init__(self, delay: float) -> None:
        super().__init__(hung=set())
        self.delay = delay

    async def _answer(self, verb: str, url: str) -> None:
        self.calls.append((verb, url))
        await asyncio.sleep(self.delay)


def test_followers_that_answer_during_the_liveness_check_are_counted() -> None:
    # Both followers answer while the leader is asking etcd who is alive, after the straggler
    # deadline has passed: their answers count, and nobody is outdated as a straggler.
    peers = SlowPeers(delay=0.15)
    urls = {n: f"http://{n}" for n in ("n1", "n2", "n3")}

    def slow_alive() -> set[str]:
        time.sleep(0.3)
        return {"n1", "n2", "n3"}

    coordinator = Coordinator("n1", urls["n1"], cast(Any, None), cast(Any, None), cast(Any, peers),
                              slow_alive, lambda: urls, liveness_every=0.05, straggler_deadline=0.01)
    push = Push("t1", "s1", "lock", Placement("s1", {"n1": 0, "n2": 0, "n3": 0}),
                {"n2": urls["n2"], "n3": urls["n3"]}, good={"n2", "n3"})
    coordinator._pushes[push.txn] = push

    async def scenario() -> tuple[bool, str]:
        ok, message = await coordinator.on_hook("t1", "prepared", LINE)
        await coordinator.on_hook("t1", "committed", LINE)
        return ok, message

    ok, message = asyncio.run(scenario())
    assert ok and "3 of 3" in message, message
    assert push.good == {"n2", "n3"} and not push.problems, push.problems


def test_a_straggler_gets_the_deadline_after_the_majority_not_after_the_start() -> None:
    # n2 answers late (after more than the deadline), n3 a little after it: n3 is not cut off.
    class Staggered(Peers):
        async def _answer(self, verb: str, url: str) -> None:
            self.calls.append((verb, url))
            await asyncio.sleep({"http://n2": 0.3, "http://n3": 0.4}[url])

    peers = Staggered(hung=set())
    urls = {n: f"http://{n}" for n in ("n1", "n2", "n3")}
    coordinator = Coordinator("n1", urls["n1"], cast(Any, None), cast(Any, None), cast(Any, peers),
                              lambda: {"n1", "n2", "n3"}, lambda: urls, liveness_every=0.02,
                              straggler_deadline=0.25)
    push = Push("t1", "s1", "lock", Placement("s1", {"n1": 0, "n2": 0, "n3": 0}),
                {"n2": urls["n2"], "n3": urls["n3"]}, good={"n2", "n3"})
    coordinator._pushes[push.txn] = push
    ok, message = asyncio.run(coordinator.on_hook("t1", "prepared", LINE))
    assert ok and "3 of 3" in message, (message, push.problems)


class NoEtcd:
    """Releasing the lock is all finish() asks of etcd on the paths tested here."""

    def txn(self, *args: Any, **kwargs: Any) -> None:
        return None


def prepared_leader(on_disk: dict[str, str]) -> tuple[Coordinator, Push, Peers]:
    peers = Peers(hung=set())
    urls = {n: f"http://{n}" for n in ("n1", "n2", "n3")}
    coordinator = Coordinator("n1", urls["n1"], cast(Any, NoEtcd()), RepoLocks(cast(Any, NoEtcd()), lambda: 0, "n1"),
                              cast(Any, peers), lambda: {"n1", "n2", "n3"}, lambda: urls, liveness_every=0.02,
                              local_refs=lambda storage_id: dict(on_disk))
    push = Push("t1", "s1", "lock", Placement("s1", {"n1": 0, "n2": 0, "n3": 0}),
                {"n2": urls["n2"], "n3": urls["n3"]}, good={"n2", "n3"})
    coordinator._pushes[push.txn] = push
    ok, _ = asyncio.run(coordinator.on_hook("t1", "prepared", LINE))
    assert ok and push.round_active
    return coordinator, push, peers


def test_a_commit_the_hook_never_reported_is_sent_to_the_followers() -> None:
    # git committed (the ref on disk is the new one) but its "committed" hook could not reach this
    # node (it was shutting down): the followers must commit too, not let their prepared update expire.
    coordinator, push, peers = prepared_leader({"refs/heads/main": "2" * 40})
    asyncio.run(coordinator._resolve_round(push))
    assert not push.round_active and push.rounds == 1
    assert {("commit", "http://n2"), ("commit", "http://n3")} <= set(peers.calls)


def test_an_abort_the_hook_never_reported_is_sent_to_the_followers() -> None:
    coordinator, push, peers = prepared_leader({"refs/heads/main": "1" * 40})
    outcome = asyncio.run(coordinator.finish(push))
    assert outcome.acknowledged and outcome.message == "no ref changed"  # git's own report says it failed
    assert {("abort", "http://n2"), ("abort", "http://n3")} <= set(peers.calls)
    assert not any(verb == "commit" for verb, _ in peers.calls)


def test_a_round_whose_outcome_cannot_be_told_is_not_acknowledged() -> None:
    coordinator, push, peers = prepared_leader({"refs/heads/main": "3" * 40})
    outcome = asyncio.run(coordinator.finish(push))
    assert not outcome.acknowledged and "could not tell" in outcome.message
    assert push.keep_intent  # the next holder of the lock compares the replicas
    assert not any(verb in ("commit", "abort") for verb, _ in peers.calls)
