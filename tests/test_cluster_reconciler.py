"""The reconciler: decide() as a pure function, and run_once() against a real etcd with fake peers."""

from __future__ import annotations

import json
import time

import pytest

from bulwark.cluster import keys, state
from bulwark.cluster.locks import RepoLocks
from bulwark.cluster.reconciler import Reconciler
from bulwark.cluster.replica_plan import AddReplica, DataLoss, DropReplica, MarkOutdated, Repair, RepairFailure, decide
from bulwark.cluster.state import BUILDING, NodeBeat, Placement
from bulwark.cluster.voting import disagreeing
from bulwark.errors import GitError, PeerUnreachable
from bulwark.etcd import Etcd
from tests.support.cluster_fakes import make_snapshot, seed, url_of
from tests.support.etcd_helpers import BACKENDS, any_etcd, clean_backend
from tests.support.helpers import free_port

pytestmark = pytest.mark.timeout(60)


# -- decide ------------------------------------------------------------------------------------


def test_healthy_cluster_needs_nothing() -> None:
    snap = make_snapshot(placements={"a": {"n1": 3, "n2": 3, "n3": 3}})
    assert decide(snap, 100.0, {}, replace_after=60) == []


def test_outdated_and_building_replicas_are_repaired_from_a_rested_source() -> None:
    snap = make_snapshot(
        ("n1", "n2", "n3", "n4"),
        placements={"a": {"n1": 3, "n2": 3, "n3": 2}, "b": {"n1": 5, "n2": 5, "n4": BUILDING}},
        maintenance=["n1"],
    )
    assert decide(snap, 100.0, {}, replace_after=60) == [Repair("a", "n3", "n2"), Repair("b", "n4", "n2")]


def test_rf_capped_by_storage_nodes() -> None:
    snap = make_snapshot(("n1", "n2", "n3"), frontend_only=["n3"], placements={"a": {"n1": 1, "n2": 1}}, rf=3)
    assert decide(snap, 100.0, {}, replace_after=60) == []


def test_three_nodes_rf3_one_dead_cannot_replace_but_repairs_when_back() -> None:
    placements = {"a": {"n1": 4, "n2": 4, "n3": 3}}
    dead = make_snapshot(placements=placements, dead=["n3"])
    assert decide(dead, 10_000.0, {"n3": 0.0}, replace_after=60) == []  # no fourth node to add
    back = make_snapshot(placements=placements)
    [repair] = decide(back, 10_000.0, {}, replace_after=60)
    assert isinstance(repair, Repair) and repair.node == "n3" and repair.source in ("n1", "n2")


def test_missing_node_is_replaced_only_after_the_grace_period() -> None:
    snap = make_snapshot(("n1", "n2", "n3", "n4"), placements={"a": {"n1": 1, "n2": 1, "n3": 1}}, dead=["n3"])
    assert decide(snap, 100.0, {"n3": 50.0}, replace_after=60) == []
    assert decide(snap, 100.0, {}, replace_after=60) == []  # first seen missing now
    assert decide(snap, 200.0, {"n3": 50.0}, replace_after=60) == [AddReplica("a", "n4", "n2")]


def test_evacuating_node_is_replaced_at_once_then_dropped() -> None:
    nodes = ("n1", "n2", "n3", "n4")
    start = make_snapshot(nodes, placements={"a": {"n1": 1, "n2": 1, "n3": 1}}, evacuating=["n1"])
    assert decide(start, 100.0, {}, replace_after=60) == [AddReplica("a", "n4", "n3")]
    building = make_snapshot(nodes, placements={"a": {"n1": 1, "n2": 1, "n3": 1, "n4": BUILDING}}, evacuating=["n1"])
    assert decide(building, 100.0, {}, replace_after=60) == [Repair("a", "n4", "n3")]  # no drop before it is built
    built = make_snapshot(nodes, placements={"a": {"n1": 1, "n2": 1, "n3": 1, "n4": 1}}, evacuating=["n1"])
    assert decide(built, 100.0, {}, replace_after=60) == [DropReplica("a", "n1")]


def test_drop_prefers_dead_then_removed_then_most_loaded() -> None:
    nodes = ("n1", "n2", "n3", "n4")
    dead = make_snapshot(nodes, placements={"a": {"n1": 1, "n2": 1, "n3": 1, "n4": 1}}, dead=["n2"])
    assert decide(dead, 100.0, {"n2": 99.0}, replace_after=60) == [DropReplica("a", "n2")]
    removed = make_snapshot(
        ("n1", "n2", "n3"), placements={"a": {"n1": 1, "n2": 1, "n3": 1, "gone": 1}}, alive_extra=["gone"]
    )
    assert decide(removed, 100.0, {}, replace_after=60) == [DropReplica("a", "gone")]
    loads = {"a": {"n1": 1, "n2": 1, "n3": 1, "n4": 1}, "x": {"n3": 1}, "y": {"n3": 1}}
    loaded = make_snapshot(nodes, placements=loads, wanted_rf={"x": 1, "y": 1})
    assert decide(loaded, 100.0, {}, replace_after=60) == [DropReplica("a", "n3")]


def test_drop_keeps_rf_up_to_date_replicas() -> None:
    # Four replicas, but only two up to date on usable nodes: nothing may go, the outdated one is repaired.
    snap = make_snapshot(("n1", "n2", "n3", "n4"), placements={"a": {"n1": 2, "n2": 2, "n3": 1, "n4": 2}},
                         dead=["n4"])
    assert decide(snap, 100.0, {"n4": 99.0}, replace_after=60) == [Repair("a", "n3", "n2")]


def test_lower_wanted_rf_drops_extra_replicas() -> None:
    snap = make_snapshot(placements={"a": {"n1": 1, "n2": 1, "n3": 1}}, wanted_rf={"a": 1})
    actions = decide(snap, 100.0, {}, replace_after=60)
    assert actions == [DropReplica("a", "n1"), DropReplica("a", "n2")]


def test_checksum_majority_wins() -> None:
    snap = make_snapshot(placements={"a": {"n1": 7, "n2": 7, "n3": 7}})
    votes = {"a": {"n1": "x", "n2": "y", "n3": "x"}}
    assert decide(snap, 100.0, {}, replace_after=60, checksums=votes) == [MarkOutdated("a", ("n2",), 7)]
    missing = {"a": {"n1": "x", "n2": "x", "n3": None}}
    assert decide(snap, 100.0, {}, replace_after=60, checksums=missing) == [MarkOutdated("a", ("n3",), 7)]
    agree = {"a": {"n1": "x", "n2": "x", "n3": "x"}}
    assert decide(snap, 100.0, {}, replace_after=60, checksums=agree) == []


def test_checksum_tie_keeps_the_first_node_by_name() -> None:
    placement = Placement("a", {"n1": 2, "n2": 2, "n3": 2, "n4": 2})
    assert disagreeing(placement, {"n2": "y", "n1": "x", "n3": "y", "n4": "x"}) == ["n2", "n3"]
    assert disagreeing(placement, {"n1": None, "n2": None}) == ["n1", "n2"]
    # Votes of replicas that are not up to date do not count.
    older = Placement("a", {"n1": 2, "n2": 2, "n3": 1})
    assert disagreeing(older, {"n1": "x", "n2": "x", "n3": "z"}) == []


def test_data_loss_is_reported_never_acted_on() -> None:
    snap = make_snapshot(("n1", "n2", "n3", "n4"), placements={"a": {"n1": 5, "n2": 5, "n3": 4}}, dead=["n1", "n2"])
    assert decide(snap, 10_000.0, {"n1": 0.0, "n2": 0.0}, replace_after=60) == [DataLoss("a")]
    building = make_snapshot(placements={"b": {"n1": BUILDING, "n2": BUILDING}})
    assert decide(building, 100.0, {}, replace_after=60) == [DataLoss("b")]


def test_actions_are_bounded_but_data_loss_is_always_reported() -> None:
    placements: dict[str, dict[str, int]] = {f"r{i:02}": {"n1": 2, "n2": 2, "n3": 1} for i in range(30)}
    placements["zz-lost"] = {"n4": 1}
    snap = make_snapshot(("n1", "n2", "n3", "n4"), placements=placements, dead=["n4"], wanted_rf={"zz-lost": 1})
    actions = decide(snap, 100.0, {}, replace_after=60, max_actions=5)
    assert [type(a) for a in actions] == [Repair] * 5 + [DataLoss]
    skipped = decide(snap, 100.0, {}, replace_after=60, max_actions=5, skip={"r00"})
    assert skipped[0] == Repair("r01", "n3", skipped[0].source)  # type: ignore[union-attr]


def test_a_replica_whose_repairs_keep_failing_is_rebuilt() -> None:
    snap = make_snapshot(placements={"a": {"n1": 3, "n2": 3, "n3": 2}, "b": {"n1": 3, "n2": 3, "n3": 2}})
    actions = decide(snap, 100.0, {}, replace_after=60, failed_repairs={("a", "n3"): 3, ("b", "n3"): 2})
    assert [(a.storage_id, a.rebuild) for a in actions if isinstance(a, Repair)] == [("a", True), ("b", False)]


def test_additions_in_one_cycle_spread_over_nodes() -> None:
    placements = {f"r{i}": {"n1": 1, "n2": 1} for i in range(4)}
    snap = make_snapshot(("n1", "n2", "n3", "n4"), placements=placements, evacuating=["n1"], rf=2)
    targets = [a.node for a in decide(snap, 100.0, {}, replace_after=60) if isinstance(a, AddReplica)]
    assert sorted(targets) == ["n3", "n3", "n4", "n4"]


# -- run_once against etcd ------------------------------------------------------------------------


# The fake etcd in the fast tier, a real one in the system tier; emptied around each test.
etcd_backend = pytest.fixture(any_etcd, scope="module", params=BACKENDS, name="etcd_backend")
etcd = pytest.fixture(clean_backend, name="etcd")


class FakePeers:
    """Copies are checksums in a dict; sync copies the source's and sets the generation as a real node does."""

    def __init__(self, etcd: Etcd, copies: dict[tuple[str, str], str] | None = None) -> None:
        self.etcd = etcd
        self.copies = dict(copies or {})
        self.calls: list[tuple[str, ...]] = []
        self.broken: set[str] = set()  # nodes whose calls fail
        self.damaged: set[str] = set()  # nodes whose copies only a rebuild repairs

    @staticmethod
    def node(url: str) -> str:
        return url.removeprefix("http://").split(".")[0]

    def _check(self, node: str) -> None:
        if node in self.broken:
            raise PeerUnreachable(f"{node} does not answer")

    def sync(self, node_url: str, storage_id: str, source_url: str, *, rebuild: bool = False) -> str:
        node, source = self.node(node_url), self.node(source_url)
        self.calls.append(("rebuild" if rebuild else "sync", node, storage_id, source))
        self._check(node)
        if node in self.damaged and not rebuild:
            raise GitError("repairing a replica: git fetch failed: fatal: packed object is corrupt")
        self.copies[(node, storage_id)] = self.copies[(source, storage_id)]
        state.update_placement(
            self.etcd, storage_id, lambda p: p.with_replicas({**p.replicas, node: p.generation})
        )
        return self.copies[(node, storage_id)]

    def checksum(self, node_url: str, storage_id: str) -> str | None:
        node = self.node(node_url)
        self.calls.append(("checksum", node, storage_id))
        self._check(node)
        return self.copies.get((node, storage_id))

    def remove(self, node_url: str, storage_id: str) -> None:
        node = self.node(node_url)
        self.calls.append(("remove", node, storage_id))
        self._check(node)
        self.copies.pop((node, storage_id), None)


def reconciler(etcd: Etcd, peers: FakePeers, node: str = "n1", *, lease: int | None = None,
               **options: float) -> Reconciler:
    lease_id = lease if lease is not None else etcd.grant(30)
    locks = RepoLocks(etcd, lambda: lease_id, holder=node)
    settings = {"verify_every": 3600.0, "replace_after": 60.0, **options}
    return Reconciler(etcd, peers, locks, node=node, lease=lambda: lease_id, **settings)  # type: ignore[arg-type]


def test_one_reconciler_is_elected_and_leadership_dies_with_its_lease(etcd: Etcd) -> None:
    seed(etcd, ["n1", "n2", "n3"])
    peers = FakePeers(etcd)
    lease1 = etcd.grant(30)
    first = reconciler(etcd, peers, "n1", lease=lease1)
    second = reconciler(etcd, peers, "n2")
    assert first.run_once().startswith("repaired 0 replicas")
    assert second.run_once() == "not the reconciler (n1 is)"
    assert first.run_once().startswith("repaired 0")  # still the leader
    etcd.revoke(lease1)
    assert second.run_once().startswith("repaired 0")
    assert first.run_once() == "not the reconciler (n2 is)"
    second.resign()
    assert state.snapshot(etcd).reconciler is None


def test_no_session_means_no_campaign(etcd: Etcd) -> None:
    seed(etcd, ["n1", "n2", "n3"])
    assert reconciler(etcd, FakePeers(etcd), lease=0).run_once() == "not the reconciler (no etcd session)"
    assert etcd.get(keys.RECONCILER) is None


def test_repair_sets_the_generation_and_publishes_a_report(etcd: Etcd) -> None:
    seed(etcd, ["n1", "n2", "n3"], placements={"a": {"n1": 4, "n2": 4, "n3": 2}})
    peers = FakePeers(etcd, {("n1", "a"): "x", ("n2", "a"): "x", ("n3", "a"): "old"})
    sentence = reconciler(etcd, peers).run_once()
    # A new reconciler verifies what it inherits at once: n1 and n2 agree.
    assert sentence == "repaired 1 replicas, added 0, dropped 0, marked 0 outdated; 0 repositories without an " \
        "up-to-date replica; verified 1 repositories"
    placement = state.get_placement(etcd, "a")
    assert placement is not None and placement.replicas == {"n1": 4, "n2": 4, "n3": 4}
    assert peers.copies[("n3", "a")] == "x"
    kv = etcd.get(keys.REPORT)
    assert kv is not None
    report = json.loads(kv.value)
    assert report["leader"] == "n1" and report["sentence"] == sentence and report["counts"]["repaired"] == 1


def test_evacuation_adds_then_drops(etcd: Etcd) -> None:
    seed(etcd, ["n1", "n2", "n3", "n4"], placements={"a": {"n1": 1, "n2": 1, "n3": 1}})
    etcd.put(keys.evacuating("n1"), "1")
    peers = FakePeers(etcd, {(n, "a"): "x" for n in ("n1", "n2", "n3")})
    rec = reconciler(etcd, peers, "n2")
    assert rec.run_once().startswith("repaired 0 replicas, added 1, dropped 0")
    assert rec.run_once().startswith("repaired 0 replicas, added 0, dropped 1")
    placement = state.get_placement(etcd, "a")
    assert placement is not None and placement.replicas == {"n2": 1, "n3": 1, "n4": 1}
    assert ("remove", "n1", "a") in peers.calls and ("n1", "a") not in peers.copies
    assert rec.run_once().startswith("repaired 0 replicas, added 0, dropped 0")


def test_dead_node_replaced_after_grace(etcd: Etcd) -> None:
    seed(etcd, ["n1", "n2", "n3", "n4"], alive=["n1", "n2", "n4"], placements={"a": {"n1": 1, "n2": 1, "n3": 1}})
    peers = FakePeers(etcd, {("n1", "a"): "x", ("n2", "a"): "x"})
    clock = [1000.0]
    rec = reconciler(etcd, peers, replace_after=30.0)
    rec.clock = lambda: clock[0]
    assert rec.run_once().startswith("repaired 0 replicas, added 0")
    clock[0] += 31
    assert rec.run_once().startswith("repaired 0 replicas, added 1, dropped 0")
    assert rec.run_once().startswith("repaired 0 replicas, added 0, dropped 1")  # the dead node's replica
    placement = state.get_placement(etcd, "a")
    assert placement is not None and sorted(placement.replicas) == ["n1", "n2", "n4"]
    assert ("remove", "n3", "a") not in peers.calls  # a dead node's copy is left alone


def test_checksum_verification_marks_and_repairs(etcd: Etcd) -> None:
    seed(etcd, ["n1", "n2", "n3"], placements={"a": {"n1": 3, "n2": 3, "n3": 3}, "b": {"n1": 1, "n2": 1, "n3": 1}})
    copies = {(n, s): "good" for n in ("n1", "n2", "n3") for s in ("a", "b")}
    copies[("n3", "a")] = "drifted"
    del copies[("n2", "b")]
    peers = FakePeers(etcd, copies)
    rec = reconciler(etcd, peers, verify_every=0.0)
    assert rec.run_once() == (
        "repaired 0 replicas, added 0, dropped 0, marked 2 outdated; 0 repositories without an up-to-date "
        "replica; verified 2 repositories"
    )
    a, b = state.get_placement(etcd, "a"), state.get_placement(etcd, "b")
    assert a is not None and a.replicas["n3"] == BUILDING
    assert b is not None and b.replicas["n2"] == BUILDING
    assert rec.run_once().startswith("repaired 2 replicas")
    assert peers.copies[("n3", "a")] == "good" and peers.copies[("n2", "b")] == "good"
    assert etcd.get(keys.lock("a")) is None  # the verification released its locks


def test_verification_skips_a_locked_repository(etcd: Etcd) -> None:
    seed(etcd, ["n1", "n2", "n3"], placements={"a": {"n1": 3, "n2": 3, "n3": 3}})
    peers = FakePeers(etcd, {("n1", "a"): "x", ("n2", "a"): "x", ("n3", "a"): "y"})
    etcd.put(keys.lock("a"), "n2/push")
    rec = reconciler(etcd, peers, verify_every=0.0)
    assert rec.run_once().startswith("repaired 0 replicas, added 0, dropped 0, marked 0 outdated")
    assert not [c for c in peers.calls if c[0] == "checksum"]


def test_failures_are_counted_and_retried_later(etcd: Etcd) -> None:
    seed(etcd, ["n1", "n2", "n3"], placements={"a": {"n1": 2, "n2": 2, "n3": 1}, "b": {"n1": 2, "n2": 2, "n3": 2}})
    peers = FakePeers(etcd, {("n1", "a"): "x", ("n2", "a"): "x"})
    peers.broken.add("n3")
    clock = [1000.0]
    rec = reconciler(etcd, peers, retry_after=10.0)
    rec.clock = lambda: clock[0]
    assert rec.run_once().endswith("; 1 actions failed")
    assert rec.run_once().startswith("repaired 0 replicas")  # waits before retrying
    peers.broken.clear()
    clock[0] += 11
    assert rec.run_once().startswith("repaired 1 replicas")


def test_data_loss_is_counted_in_the_sentence(etcd: Etcd) -> None:
    seed(etcd, ["n1", "n2", "n3"], alive=["n1", "n2"], placements={"a": {"n3": 1}})
    assert reconciler(etcd, FakePeers(etcd)).run_once().endswith("1 repositories without an up-to-date replica")


def test_etcd_outage_is_a_sentence() -> None:
    dead = Etcd([f"http://127.0.0.1:{free_port()}"], timeout=0.5)
    rec = Reconciler(dead, FakePeers(dead), RepoLocks(dead, lambda: 1, "n1"), node="n1", lease=lambda: 1)
    assert rec.run_once().startswith("etcd is unreachable, nothing done")


def test_loop_runs_in_a_thread_and_resigns(etcd: Etcd) -> None:
    seed(etcd, ["n1", "n2", "n3"], placements={"a": {"n1": 2, "n2": 2, "n3": 1}})
    peers = FakePeers(etcd, {("n1", "a"): "x", ("n2", "a"): "x"})
    rec = reconciler(etcd, peers, interval=0.05)
    rec.start()
    try:
        deadline = time.monotonic() + 10
        while rec.last_sentence != "repaired 0 replicas, added 0, dropped 0, marked 0 outdated; 0 repositories " \
                "without an up-to-date replica":
            assert time.monotonic() < deadline, rec.last_sentence
            time.sleep(0.02)
    finally:
        rec.stop()
    assert etcd.get(keys.RECONCILER) is None
    placement = state.get_placement(etcd, "a")
    assert placement is not None and placement.replicas["n3"] == 2


def test_repeated_failures_lead_to_a_rebuild_and_are_published_for_any_node(etcd: Etcd) -> None:
    seed(etcd, ["n1", "n2", "n3"], placements={"a": {"n1": 2, "n2": 2, "n3": 1}})
    peers = FakePeers(etcd, {("n1", "a"): "x", ("n2", "a"): "x", ("n3", "a"): "corrupt"})
    peers.damaged.add("n3")
    clock = [1000.0]
    rec = reconciler(etcd, peers, retry_after=10.0)
    rec.clock = lambda: clock[0]
    for attempt in (1, 2, 3):
        assert rec.run_once().endswith("; 1 actions failed")
        report = json.loads(etcd.get(keys.REPORT).value)  # type: ignore[union-attr]
        [failure] = report["repair_failures"]
        assert failure["storage_id"] == "a" and failure["node"] == "n3" and failure["attempts"] == attempt
        assert "packed object is corrupt" in failure["error"]
        clock[0] += 11
    assert [c[0] for c in peers.calls if c[1] == "n3"] == ["sync", "sync", "sync"]
    # A new leader takes the count over from the published report, and rebuilds.
    rec.resign()
    successor = reconciler(etcd, peers, "n2", retry_after=10.0)
    successor.clock = lambda: clock[0]
    assert successor.run_once().startswith("repaired 1 replicas")
    assert peers.calls[-1] == ("rebuild", "n3", "a", peers.calls[-1][3])
    placement = state.get_placement(etcd, "a")
    assert placement is not None and placement.replicas["n3"] == 2 and peers.copies[("n3", "a")] == "x"
    assert json.loads(etcd.get(keys.REPORT).value)["repair_failures"] == []  # type: ignore[union-attr]


def test_a_failure_of_a_replica_no_longer_outdated_is_forgotten(etcd: Etcd) -> None:
    seed(etcd, ["n1", "n2", "n3"], placements={"a": {"n1": 2, "n2": 2, "n3": 2}})
    rec = reconciler(etcd, FakePeers(etcd, {(n, "a"): "x" for n in ("n1", "n2", "n3")}))
    rec._leading = True  # as if this term had already seen the failure below
    rec.repair_failures = {("a", "n3"): RepairFailure("a", "n3", 2, "repair from n1 failed: timed out", 1.0)}
    rec.run_once()
    assert rec.repair_failures == {}


def test_status_shows_each_replica_s_last_repair_error() -> None:
    from io import StringIO

    from rich.console import Console

    from bulwark.cluster.report import cluster_report, render

    snap = make_snapshot(placements={"a": {"n1": 3, "n2": 3, "n3": 2}, "b": {"n1": 1, "n2": 1, "n3": 1}})
    published = {"repair_failures": [
        {"storage_id": "a", "node": "n3", "attempts": 2, "error": "repair from n1 failed: cannot lock ref", "at": 1.0},
        {"storage_id": "b", "node": "n3", "attempts": 1, "error": "repaired since", "at": 1.0},  # b is healthy now
    ]}
    report = cluster_report(snap, reconciler_report=published)
    assert "1 replicas failed their last repair (see 'bulwark cluster status -v')" in report.reasons
    [problem] = report.problems
    assert problem.to_json()["repair_failures"][0]["error"] == "repair from n1 failed: cannot lock ref"
    out = StringIO()
    render(report, Console(file=out, width=250), verbose=True)
    assert "n3 (attempt 2): repair from n1 failed: cannot lock ref" in out.getvalue()


def test_a_node_back_with_a_new_session_has_its_repositories_verified_at_once(etcd: Etcd) -> None:
    seed(etcd, ["n1", "n2", "n3", "n4"],
         placements={"a": {"n1": 2, "n2": 2, "n3": 2}, "b": {"n1": 1, "n2": 1, "n4": 1}})
    peers = FakePeers(etcd, {(n, s): "good" for s, ns in (("a", "n1 n2 n3"), ("b", "n1 n2 n4")) for n in ns.split()})
    rec = reconciler(etcd, peers)  # verifies everything once an hour only
    assert rec.run_once().endswith("verified 2 repositories")
    # n3 was cut off (a partition, a pause) and its copy of a went its own way meanwhile.
    peers.copies[("n3", "a")] = "diverged"
    etcd.delete(keys.alive("n3"))
    for _ in range(2):  # gone, then still gone: nothing to verify
        sentence = rec.run_once()
        assert "marked 0 outdated" in sentence and "verified" not in sentence, sentence
    etcd.put(keys.alive("n3"), NodeBeat("n3", url_of("n3"), 0.0, disk_total=100).to_json(), lease=etcd.grant(30))
    before = len(peers.calls)
    sentence = rec.run_once()
    assert "marked 1 outdated" in sentence and sentence.endswith("verified 1 repositories"), sentence
    a = state.get_placement(etcd, "a")
    assert a is not None and a.replicas["n3"] == BUILDING
    asked = {call[2] for call in peers.calls[before:] if call[0] == "checksum"}
    assert asked == {"a"}  # only the returned node's repositories
    assert "verified" not in rec.run_once()  # the same session next time: nothing more to verify


def test_a_verification_pass_is_spread_over_cycles_within_its_budget(etcd: Etcd) -> None:
    """With no time to spare a cycle compares one repository; the pass goes on where it stopped,
    and a returned node's repositories go first."""
    names = ["a", "b", "c"]
    seed(etcd, ["n1", "n2", "n3"], placements={s: {"n1": 1, "n2": 1, "n3": 1} for s in names})
    peers = FakePeers(etcd, {(n, s): "good" for n in ("n1", "n2", "n3") for s in names})
    peers.copies[("n2", "c")] = "drifted"
    rec = reconciler(etcd, peers, verify_budget=0.0)

    def compared() -> list[str]:
        return [call[2] for call in peers.calls if call[0] == "checksum"]

    assert rec.run_once().endswith("verified 1 repositories (2 more to verify)")
    assert set(compared()) == {"a"}
    assert rec.run_once().endswith("verified 1 repositories (1 more to verify)")
    sentence = rec.run_once()
    assert "marked 1 outdated" in sentence and sentence.endswith("verified 1 repositories"), sentence
    assert "verified" not in rec.run_once()  # the pass is over; the next starts after verify_every
    # n3 comes back with a new session: its repositories are compared next, one a cycle here.
    etcd.put(keys.alive("n3"), NodeBeat("n3", url_of("n3"), 0.0, disk_total=100).to_json(), lease=etcd.grant(30))
    before = len(peers.calls)
    assert rec.run_once().endswith("(2 more to verify)")
    assert next(call[2] for call in peers.calls[before:] if call[0] == "checksum") == "a"
