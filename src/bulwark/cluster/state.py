"""Cluster state as values: what etcd says about nodes and repository replicas.

Everything here is a frozen value or a function that reads or writes one through
:class:`~bulwark.etcd.Etcd`. Decisions (routing, placement, repair) take a
:class:`ClusterSnapshot` and return a plan; they never talk to etcd themselves.

Generations: every replica of a repository carries a generation. A push that a majority
committed raises the generation of exactly the replicas that committed it, so the
up-to-date replicas are those with the highest generation; the others are *outdated*
and serve no reads until the reconciler repairs them. A replica being built (new
placement, or found damaged) has generation ``-1``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from bulwark.cluster import keys
from bulwark.cluster.config import ClusterConfig
from bulwark.cluster.voting import majority
from bulwark.errors import Conflict, Unavailable
from bulwark.etcd import KV, Compare, Etcd, Op

BUILDING = -1


@dataclass(frozen=True)
class Placement:
    """The replicas of one repository: node name -> generation."""

    storage_id: str
    replicas: dict[str, int]
    # The replication factor asked for this repository (None: the cluster default).
    wanted_rf: int | None = None
    # etcd's mod revision of the record, for compare-and-set (0: not stored yet).
    revision: int = 0

    @property
    def generation(self) -> int:
        return max(self.replicas.values(), default=BUILDING)

    def up_to_date(self) -> list[str]:
        top = self.generation
        return sorted(n for n, g in self.replicas.items() if g == top and g > BUILDING)

    def outdated(self) -> list[str]:
        top = self.generation
        return sorted(n for n, g in self.replicas.items() if g < top or g == BUILDING)

    def quorum(self) -> int:
        """How many replicas must commit a write: a strict majority of all of them."""
        return majority(len(self.replicas))

    def to_json(self) -> str:
        return json.dumps({"replicas": self.replicas, "rf": self.wanted_rf}, sort_keys=True)

    @classmethod
    def from_kv(cls, kv: KV) -> Placement:
        raw = json.loads(kv.value)
        return cls(
            storage_id=keys.tail(kv.key, keys.PLACEMENT),
            replicas={str(k): int(v) for k, v in raw.get("replicas", {}).items()},
            wanted_rf=raw.get("rf"),
            revision=kv.mod_revision,
        )

    def with_replicas(self, replicas: dict[str, int]) -> Placement:
        return replace(self, replicas=dict(replicas))


@dataclass(frozen=True)
class NodeBeat:
    """What a live node publishes under its lease."""

    name: str
    url: str
    started_at: float
    disk_used: int = 0
    disk_total: int = 0
    repositories: int = 0

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_kv(cls, kv: KV) -> NodeBeat:
        raw: dict[str, Any] = json.loads(kv.value)
        return cls(
            name=str(raw["name"]),
            url=str(raw["url"]),
            started_at=float(raw.get("started_at", 0)),
            disk_used=int(raw.get("disk_used", 0)),
            disk_total=int(raw.get("disk_total", 0)),
            repositories=int(raw.get("repositories", 0)),
        )


@dataclass(frozen=True)
class ClusterSnapshot:
    """One consistent read of the cluster's state (taken at one etcd revision)."""

    config: ClusterConfig
    alive: dict[str, NodeBeat]
    maintenance: dict[str, str]
    evacuating: frozenset[str]
    placements: dict[str, Placement]
    revision: int
    reconciler: str | None = None
    taken_at: float = field(default_factory=time.time)
    # node -> the lease of its alive key: a new lease means the node lost its session and came back.
    sessions: dict[str, int] = field(default_factory=dict)

    def is_alive(self, node: str) -> bool:
        return node in self.alive

    def url_of(self, node: str) -> str | None:
        spec = self.config.node(node)
        return spec.url if spec else None

    def serving_replicas(self, storage_id: str) -> list[str]:
        """Up-to-date replicas on live nodes: the ones that may serve reads and lead writes."""
        placement = self.placements.get(storage_id)
        if placement is None:
            return []
        return [n for n in placement.up_to_date() if self.is_alive(n)]


def read_config(etcd: Etcd) -> ClusterConfig | None:
    kv = etcd.get(keys.CONFIG)
    return ClusterConfig.from_json(kv.text) if kv else None


def read_secret(etcd: Etcd) -> str | None:
    kv = etcd.get(keys.SECRET)
    return kv.text if kv else None


def snapshot(etcd: Etcd, *, placements: bool = True) -> ClusterSnapshot:
    """Read the whole cluster state in one transaction (so it is one consistent revision).

    ``placements=False`` leaves out every repository's placement: what a node needs on its hot
    paths (who is alive, where nodes are) stays small however many repositories there are."""
    reads = [
        Op.get(keys.CONFIG),
        Op.get(keys.ALIVE, prefix=True),
        Op.get(keys.MAINTENANCE, prefix=True),
        Op.get(keys.EVACUATING, prefix=True),
        Op.get(keys.RECONCILER),
    ]
    result = etcd.txn([], reads + ([Op.get(keys.PLACEMENT, prefix=True)] if placements else []))
    config_kv, alive_kvs, maint_kvs, evac_kvs, reconciler_kv = result.reads[:5]
    placement_kvs = result.reads[5] if placements else []
    if not config_kv:
        raise Unavailable("this etcd holds no cluster configuration; run 'bulwark cluster init' first")
    return ClusterSnapshot(
        config=ClusterConfig.from_json(config_kv[0].text),
        alive={b.name: b for b in (NodeBeat.from_kv(kv) for kv in alive_kvs)},
        maintenance={keys.tail(kv.key, keys.MAINTENANCE): kv.text for kv in maint_kvs},
        evacuating=frozenset(keys.tail(kv.key, keys.EVACUATING) for kv in evac_kvs),
        placements={p.storage_id: p for p in (Placement.from_kv(kv) for kv in placement_kvs)},
        revision=result.revision,
        reconciler=reconciler_kv[0].text if reconciler_kv else None,
        sessions={keys.tail(kv.key, keys.ALIVE): kv.lease for kv in alive_kvs},
    )


def get_placement(etcd: Etcd, storage_id: str) -> Placement | None:
    kv = etcd.get(keys.placement(storage_id))
    return Placement.from_kv(kv) if kv else None


def create_placement(etcd: Etcd, placement: Placement) -> Placement:
    """Store a new placement; if one exists already (a racing creator), return that one."""
    key = keys.placement(placement.storage_id)
    result = etcd.txn([Compare.absent(key)], [Op.put(key, placement.to_json())], [Op.get(key)])
    if not result.succeeded:
        return Placement.from_kv(result.reads[0][0])
    return replace(placement, revision=result.revision)


def save_placement(etcd: Etcd, placement: Placement) -> Placement:
    """Compare-and-set: write ``placement`` only if nobody changed it since it was read.

    Raises ``Conflict`` when someone did; the caller re-reads and decides again.
    """
    key = keys.placement(placement.storage_id)
    result = etcd.txn([Compare.unchanged(key, placement.revision)], [Op.put(key, placement.to_json())])
    if not result.succeeded:
        raise Conflict(f"the placement of {placement.storage_id} changed meanwhile")
    return replace(placement, revision=result.revision)


def delete_placement(etcd: Etcd, storage_id: str) -> None:
    etcd.delete(keys.placement(storage_id))


def update_placement(etcd: Etcd, storage_id: str, change: Any, *, attempts: int = 10) -> Placement | None:
    """Apply ``change(placement) -> placement`` with compare-and-set, retrying on conflict."""
    for _ in range(attempts):
        current = get_placement(etcd, storage_id)
        if current is None:
            return None
        wanted = change(current)
        if wanted == current:
            return current
        try:
            return save_placement(etcd, wanted)
        except Conflict:
            continue
    raise Conflict(f"the placement of {storage_id} kept changing; giving up")


def set_flag(etcd: Etcd, key: str, value: str | None) -> None:
    if value is None:
        etcd.delete(key)
    else:
        etcd.put(key, value)


def names(nodes: Iterable[str]) -> str:
    return ", ".join(sorted(nodes)) or "none"
