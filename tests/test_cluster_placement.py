"""Placement choices: pure functions over hand-built snapshots."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import pytest

from bulwark.cluster.placement import Move, choose_nodes, plan_rebalance, replica_counts
from bulwark.cluster.state import BUILDING, ClusterSnapshot
from tests.support.cluster_fakes import make_snapshot

pytestmark = pytest.mark.timeout(30)


def spread(layout: Mapping[str, int], generation: int = 1) -> dict[str, dict[str, int]]:
    """Placements giving each node the number of single-replica repositories asked (for load)."""
    out: dict[str, dict[str, int]] = {}
    for node, count in layout.items():
        for i in range(count):
            out[f"{node}-load-{i}"] = {node: generation}
    return out


# -- choose_nodes ----------------------------------------------------------------------------


def test_choose_prefers_fewer_replicas() -> None:
    snap = make_snapshot(("n1", "n2", "n3", "n4"), placements=spread({"n1": 3, "n2": 1, "n3": 2}), rf=1)
    assert choose_nodes(snap, 2) == ["n4", "n2"]
    assert choose_nodes(snap, 4) == ["n4", "n2", "n3", "n1"]


def test_choose_breaks_replica_ties_by_disk_then_name() -> None:
    snap = make_snapshot(("n1", "n2", "n3"), disk={"n1": 0.9, "n2": 0.2, "n3": 0.2})
    assert choose_nodes(snap, 3) == ["n2", "n3", "n1"]


def test_choose_counts_replicas_on_dead_nodes_too() -> None:
    # A replica on a node that is down still takes that node's room when it returns.
    snap = make_snapshot(("n1", "n2"), placements={"a": {"n1": 1}}, dead=["n1"])
    assert replica_counts(snap) == {"n1": 1, "n2": 0}
    assert choose_nodes(snap, 2) == ["n2"]


def test_choose_skips_dead_evacuating_frontend_and_excluded_nodes() -> None:
    snap = make_snapshot(
        ("n1", "n2", "n3", "n4", "n5"), dead=["n1"], evacuating=["n2"], frontend_only=["n3"]
    )
    assert choose_nodes(snap, 3) == ["n4", "n5"]  # fewer than asked: the caller decides
    assert choose_nodes(snap, 3, exclude=["n4"]) == ["n5"]
    assert choose_nodes(snap, 0) == []


def test_choose_puts_maintenance_last_but_allows_it() -> None:
    snap = make_snapshot(("n1", "n2", "n3"), placements=spread({"n2": 5, "n3": 5}), maintenance=["n1"], rf=1)
    assert choose_nodes(snap, 1) == ["n2"]
    assert choose_nodes(snap, 3) == ["n2", "n3", "n1"]


def test_choose_ignores_live_nodes_not_in_the_config() -> None:
    snap = make_snapshot(("n1", "n2"), alive_extra=["stranger"])
    assert choose_nodes(snap, 3) == ["n1", "n2"]


def test_choose_adds_promised_replicas_and_is_deterministic() -> None:
    snap = make_snapshot(("n1", "n2", "n3"))
    assert choose_nodes(snap, 1) == ["n1"]
    assert choose_nodes(snap, 1, extra={"n1": 1}) == ["n2"]
    assert choose_nodes(snap, 1, extra={"n1": 1, "n2": 1}) == ["n3"]
    again = make_snapshot(("n3", "n2", "n1"))
    assert choose_nodes(again, 3) == choose_nodes(snap, 3) == ["n1", "n2", "n3"]


# -- plan_rebalance --------------------------------------------------------------------------------


def _apply(snap: ClusterSnapshot, moves: list[Move]) -> Counter[str]:
    counts = Counter(replica_counts(snap))
    for move in moves:
        counts[move.from_node] -= 1
        counts[move.to_node] += 1
    return counts


def test_rebalance_fills_a_new_node() -> None:
    placements = {f"r{i}": {"n1": 2, "n2": 2, "n3": 2} for i in range(6)}
    snap = make_snapshot(("n1", "n2", "n3", "n4"), placements=placements)
    moves = plan_rebalance(snap, max_moves=20)
    counts = _apply(snap, moves)
    assert max(counts.values()) - min(counts.values()) <= 1
    assert counts["n4"] == 4 and len(moves) == 4
    assert len({m.storage_id for m in moves}) == len(moves)  # each repository moves once
    for move in moves:
        assert move.to_node == "n4" and move.to_node not in placements[move.storage_id]
    assert plan_rebalance(snap, max_moves=20) == moves  # deterministic


def test_rebalance_is_bounded() -> None:
    placements = {f"r{i}": {"n1": 1, "n2": 1} for i in range(10)}
    snap = make_snapshot(("n1", "n2", "n3", "n4"), placements=placements, rf=2)
    assert len(plan_rebalance(snap, max_moves=3)) == 3
    assert len(plan_rebalance(snap, max_moves=100)) == 10  # 20 replicas over 4 nodes: 5 each


def test_rebalance_does_nothing_when_balanced() -> None:
    placements = {"a": {"n1": 1, "n2": 1}, "b": {"n2": 1, "n3": 1}, "c": {"n3": 1, "n1": 1}}
    assert plan_rebalance(make_snapshot(placements=placements, rf=2)) == []


def test_rebalance_never_puts_two_replicas_on_one_node() -> None:
    # n4 could only take repositories it lacks; every one of them is on n1.
    placements = {f"r{i}": {"n1": 1, "n2": 1, "n3": 1} for i in range(3)}
    snap = make_snapshot(("n1", "n2", "n3", "n4"), placements=placements)
    for move in plan_rebalance(snap, max_moves=10):
        assert move.to_node not in placements[move.storage_id]


def test_rebalance_moves_only_healthy_repositories() -> None:
    placements = {
        "outdated": {"n1": 2, "n2": 1},
        "building": {"n1": 2, "n2": BUILDING},
        "on-dead": {"n1": 2, "n3": 2},
        "over-rf": {"n1": 2, "n2": 2, "n4": 2},
        "healthy": {"n1": 2, "n2": 2},
    }
    snap = make_snapshot(("n1", "n2", "n3", "n4", "n5"), placements=placements, dead=["n3"], rf=2)
    moves = plan_rebalance(snap, max_moves=10)
    assert {m.storage_id for m in moves} <= {"healthy"}
    assert moves == [Move("healthy", "n1", "n5")]


def test_rebalance_skips_maintenance_and_evacuating_targets() -> None:
    placements = {f"r{i}": {"n1": 1} for i in range(4)}
    snap = make_snapshot(("n1", "n2", "n3"), placements=placements, maintenance=["n2"], evacuating=["n3"], rf=1)
    assert plan_rebalance(snap) == []
