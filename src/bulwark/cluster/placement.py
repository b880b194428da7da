"""Where replicas go: pure choices over a :class:`~bulwark.cluster.state.ClusterSnapshot`.

Nothing here talks to etcd. :func:`choose_nodes` picks the nodes for new replicas (a new
repository, or a replacement for a lost one); :func:`plan_rebalance` proposes moves that
even out how many replicas each storage node holds.

Both return *fewer* nodes or moves than asked when the cluster cannot do better (too few
live storage nodes); they never raise for that. The caller decides whether fewer is good
enough: the reconciler adds what it can now and the rest when nodes come back, while a
repository creation may refuse with ``Unavailable`` when it gets less than it needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from bulwark.cluster.state import ClusterSnapshot


@dataclass(frozen=True)
class Move:
    """Copy ``storage_id`` to ``to_node``, then drop the replica on ``from_node``."""

    storage_id: str
    from_node: str
    to_node: str


def replica_counts(snapshot: ClusterSnapshot) -> dict[str, int]:
    """How many replicas each node holds according to the placements (every node named in one)."""
    counts: dict[str, int] = {n.name: 0 for n in snapshot.config.storage_nodes}
    for placement in snapshot.placements.values():
        for node in placement.replicas:
            counts[node] = counts.get(node, 0) + 1
    return counts


def disk_fraction(snapshot: ClusterSnapshot, node: str) -> float:
    """The share of its disk a live node reports used (0 when unknown)."""
    beat = snapshot.alive.get(node)
    if beat is None or beat.disk_total <= 0:
        return 0.0
    return beat.disk_used / beat.disk_total


def eligible_nodes(snapshot: ClusterSnapshot) -> list[str]:
    """Nodes that may receive replicas: storage role in the config, alive, not evacuating."""
    return sorted(
        spec.name
        for spec in snapshot.config.storage_nodes
        if snapshot.is_alive(spec.name) and spec.name not in snapshot.evacuating
    )


def choose_nodes(
    snapshot: ClusterSnapshot,
    rf: int,
    *,
    exclude: Iterable[str] = (),
    extra: Mapping[str, int] | None = None,
) -> list[str]:
    """Up to ``rf`` distinct nodes for new replicas, best first; fewer if fewer are eligible.

    Nodes in maintenance come last (allowed, since a maintenance window ends, but not
    preferred); then fewer replicas first, then a lower disk use, then the name, so equal
    inputs give equal answers. ``extra`` adds replicas already promised this round (so
    several choices in one cycle spread out instead of all landing on the emptiest node).
    """
    skip = set(exclude)
    counts = replica_counts(snapshot)
    for node, n in (extra or {}).items():
        counts[node] = counts.get(node, 0) + n

    def rank(node: str) -> tuple[bool, int, float, str]:
        return node in snapshot.maintenance, counts.get(node, 0), disk_fraction(snapshot, node), node

    candidates = [n for n in eligible_nodes(snapshot) if n not in skip]
    return sorted(candidates, key=rank)[: max(0, rf)]


def plan_rebalance(snapshot: ClusterSnapshot, *, max_moves: int = 10) -> list[Move]:
    """At most ``max_moves`` moves that bring every eligible node within one replica of the others.

    Only healthy repositories move (every replica up to date on a live, eligible node, and
    not already above their replication factor, which means a move is under way): moving
    a degraded repository would take a good copy away while it is needed. No node gets a
    second replica of one repository, and each repository moves at most once per plan.
    Disk use is not balanced here; :func:`choose_nodes` weighs it for new replicas.
    """
    nodes = eligible_nodes(snapshot)
    targets = [n for n in nodes if n not in snapshot.maintenance]
    all_counts = replica_counts(snapshot)
    counts = {n: all_counts.get(n, 0) for n in nodes}
    eligible = set(nodes)

    movable: dict[str, list[str]] = {n: [] for n in nodes}  # node -> storage ids it could give away
    holders: dict[str, set[str]] = {}
    for storage_id in sorted(snapshot.placements):
        placement = snapshot.placements[storage_id]
        rf = snapshot.config.effective_rf(placement.wanted_rf)
        replicas = set(placement.replicas)
        healthy = (
            len(replicas) <= rf
            and replicas <= eligible
            and set(placement.up_to_date()) == replicas
        )
        if not healthy:
            continue
        holders[storage_id] = replicas
        for node in replicas:
            movable[node].append(storage_id)

    moves: list[Move] = []
    moved: set[str] = set()
    while len(moves) < max_moves:
        move = _best_move(counts, targets, movable, holders, moved)
        if move is None:
            break
        moves.append(move)
        moved.add(move.storage_id)
        counts[move.from_node] -= 1
        counts[move.to_node] += 1
    return moves


def _best_move(
    counts: dict[str, int],
    targets: list[str],
    movable: dict[str, list[str]],
    holders: dict[str, set[str]],
    moved: set[str],
) -> Move | None:
    """The move from the fullest node to the emptiest one that can take one of its repositories."""
    for source in sorted(counts, key=lambda n: (-counts[n], n)):
        for target in sorted(targets, key=lambda n: (counts[n], n)):
            if counts[source] - counts[target] <= 1:
                break  # targets only get fuller from here on
            for storage_id in movable[source]:
                if storage_id not in moved and target not in holders[storage_id]:
                    return Move(storage_id, source, target)
    return None
