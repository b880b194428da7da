"""The reconciler's decisions, pure: from a snapshot of the cluster (and the repairs that keep
failing), the actions that bring every repository back to its replication factor with up-to-date
replicas. ``cluster/reconciler.py`` takes the snapshot, acts and says what it did.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any

from bulwark.cluster.placement import choose_nodes, replica_counts
from bulwark.cluster.state import ClusterSnapshot, Placement
from bulwark.cluster.voting import disagreeing

# node -> ref checksum of its copy (None: it has no copy), per storage id.
Checksums = Mapping[str, Mapping[str, str | None]]


# -- actions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Repair:
    storage_id: str
    node: str
    source: str
    rebuild: bool = False  # incremental repairs kept failing: delete the copy and fetch it all


@dataclass(frozen=True)
class AddReplica:
    storage_id: str
    node: str
    source: str


@dataclass(frozen=True)
class DropReplica:
    storage_id: str
    node: str


@dataclass(frozen=True)
class MarkOutdated:
    storage_id: str
    nodes: tuple[str, ...]
    generation: int  # only replicas still at this generation are marked (a newer push proves them current)


@dataclass(frozen=True)
class DataLoss:
    storage_id: str


Action = Repair | AddReplica | DropReplica | MarkOutdated | DataLoss

# Failed repairs of one replica in a row after which it is rebuilt from scratch.
REBUILD_AFTER = 3


@dataclass(frozen=True)
class RepairFailure:
    """The last failed repair of one replica, and how many failed in a row."""

    storage_id: str
    node: str
    attempts: int
    error: str
    at: float

    def to_json(self) -> dict[str, Any]:
        return {"storage_id": self.storage_id, "node": self.node, "attempts": self.attempts, "error": self.error,
                "at": self.at}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RepairFailure:
        return cls(str(raw["storage_id"]), str(raw["node"]), int(raw.get("attempts", 1)), str(raw.get("error", "")),
                   float(raw.get("at", 0)))


def still_failing(snapshot: ClusterSnapshot, failures: Mapping[tuple[str, str], RepairFailure]
                  ) -> dict[tuple[str, str], RepairFailure]:
    """The failures that still matter: replicas that are still placed and still outdated."""
    kept = {}
    for key, failure in failures.items():
        placement = snapshot.placements.get(failure.storage_id)
        if placement is not None and failure.node in placement.outdated():
            kept[key] = failure
    return kept


# -- decisions -------------------------------------------------------------------------------


def usable(snapshot: ClusterSnapshot, node: str) -> bool:
    """Whether ``node`` may hold a replica now: a storage node in the config, alive, not evacuating."""
    spec = snapshot.config.node(node)
    return (
        spec is not None and spec.stores_repositories and snapshot.is_alive(node) and node not in snapshot.evacuating
    )


def decide(
    snapshot: ClusterSnapshot,
    now: float,
    missing_since: Mapping[str, float],
    *,
    replace_after: float,
    checksums: Checksums | None = None,
    max_actions: int = 20,
    skip: Collection[str] = (),
    failed_repairs: Mapping[tuple[str, str], int] | None = None,
    rebuild_after: int = REBUILD_AFTER,
) -> list[Action]:
    """What to do this cycle, repository by repository in storage id order.

    ``missing_since`` maps dead nodes to when they were first seen missing (a dead node not
    in it counts as missing since ``now``). At most ``max_actions`` actions that change
    something are returned so one cycle stays short; ``DataLoss`` reports are not counted
    and cover every repository. Repositories in ``skip`` (recent failures) wait a cycle.
    ``failed_repairs`` counts the failed repairs in a row per (storage id, node): from
    ``rebuild_after`` on, that replica's repair is a rebuild.
    """
    actions: list[Action] = []
    budget = max_actions
    promised: Counter[str] = Counter()  # replicas this cycle adds per node, so additions spread
    for storage_id in sorted(snapshot.placements):
        placement = snapshot.placements[storage_id]
        if not snapshot.serving_replicas(storage_id):
            actions.append(DataLoss(storage_id))
            continue
        if budget <= 0 or storage_id in skip:
            continue
        votes = (checksums or {}).get(storage_id)
        planned = _decide_one(snapshot, placement, now, missing_since, replace_after, votes, promised)[:budget]
        planned = [
            replace(a, rebuild=True)
            if isinstance(a, Repair) and (failed_repairs or {}).get((a.storage_id, a.node), 0) >= rebuild_after
            else a
            for a in planned
        ]
        for action in planned:
            if isinstance(action, AddReplica):
                promised[action.node] += 1
        actions.extend(planned)
        budget -= len(planned)
    return actions


def _decide_one(
    snapshot: ClusterSnapshot,
    placement: Placement,
    now: float,
    missing_since: Mapping[str, float],
    replace_after: float,
    votes: Mapping[str, str | None] | None,
    promised: Mapping[str, int],
) -> list[Action]:
    storage_id = placement.storage_id
    if votes:
        wrong = disagreeing(placement, votes)
        if wrong:
            # The rest waits for the next snapshot, which shows these replicas outdated.
            return [MarkOutdated(storage_id, tuple(wrong), placement.generation)]

    rf = snapshot.config.effective_rf(placement.wanted_rf)
    source = pick_source(snapshot, storage_id)
    dropping = replicas_to_drop(snapshot, placement, rf)
    actions: list[Action] = [DropReplica(storage_id, node) for node in dropping]
    actions += [
        Repair(storage_id, node, source)
        for node in placement.outdated()
        if node not in dropping and usable(snapshot, node)
    ]

    def counts_toward_rf(node: str) -> bool:
        spec = snapshot.config.node(node)
        if spec is None or not spec.stores_repositories or node in snapshot.evacuating:
            return False
        if snapshot.is_alive(node):
            return True
        return now - missing_since.get(node, now) < replace_after  # may still come back

    kept = [n for n in placement.replicas if n not in dropping and counts_toward_rf(n)]
    if len(kept) < rf:
        targets = choose_nodes(snapshot, rf - len(kept), exclude=placement.replicas, extra=promised)
        actions += [AddReplica(storage_id, node, source) for node in targets]
    return actions


def pick_source(snapshot: ClusterSnapshot, storage_id: str) -> str:
    """A live up-to-date replica to copy from: not in maintenance nor evacuating if possible.

    Among equals the storage id picks one, so repairs spread over the good replicas.
    """
    serving = sorted(snapshot.serving_replicas(storage_id))
    rested = [n for n in serving if n not in snapshot.maintenance and n not in snapshot.evacuating]
    pool = rested or serving
    return pool[zlib.crc32(storage_id.encode()) % len(pool)]


def replicas_to_drop(snapshot: ClusterSnapshot, placement: Placement, rf: int) -> list[str]:
    """Replicas above RF to remove, while RF up-to-date replicas on usable nodes remain without them.

    Evacuating nodes go first, then dead ones, then nodes no longer storing for the
    cluster, then the most loaded. A healthy node's replica is only dropped once every
    replica on a usable node is up to date, so a copy being built is never the one dropped.
    """
    if len(placement.replicas) <= rf:
        return []
    good = {n for n in placement.up_to_date() if usable(snapshot, n)}
    settled = all(n in good for n in placement.replicas if usable(snapshot, n))
    counts = replica_counts(snapshot)

    def rank(node: str) -> tuple[int, int, str]:
        spec = snapshot.config.node(node)
        if node in snapshot.evacuating:
            category = 0
        elif not snapshot.is_alive(node):
            category = 1
        elif spec is None or not spec.stores_repositories:
            category = 2
        else:
            category = 3
        return category, -counts.get(node, 0), node

    remaining = len(placement.replicas)
    dropped: list[str] = []
    for node in sorted(placement.replicas, key=rank):
        if remaining <= rf:
            break
        if rank(node)[0] == 3 and not settled:
            break
        if len(good - {node}) < rf:
            continue
        dropped.append(node)
        good.discard(node)
        remaining -= 1
    return dropped


# -- the loop ------------------------------------------------------------------------------
