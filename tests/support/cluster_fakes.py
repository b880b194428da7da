"""Cluster state made by hand for tests: snapshots for the pure functions, a seeded etcd for the rest."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from bulwark.cluster import keys, state
from bulwark.cluster.config import ClusterConfig, NodeRoleInCluster, NodeSpec
from bulwark.cluster.state import ClusterSnapshot, NodeBeat, Placement
from bulwark.etcd import Etcd

STORAGE = (NodeRoleInCluster.FRONTEND, NodeRoleInCluster.STORAGE)


def make_snapshot(
    nodes: Iterable[str] = ("n1", "n2", "n3"),
    *,
    placements: Mapping[str, Mapping[str, int]] | None = None,
    dead: Iterable[str] = (),
    maintenance: Iterable[str] = (),
    evacuating: Iterable[str] = (),
    frontend_only: Iterable[str] = (),
    disk: Mapping[str, float] | None = None,
    rf: int = 3,
    wanted_rf: Mapping[str, int] | None = None,
    alive_extra: Iterable[str] = (),
    reconciler: str | None = "n1",
) -> ClusterSnapshot:
    """A snapshot of a cluster of ``nodes`` (all storage unless ``frontend_only``), alive unless ``dead``."""
    names = list(nodes)
    front = set(frontend_only)
    specs = tuple(
        NodeSpec(
            name=n, url=f"http://127.0.0.{i + 1}:8080",
            roles=(NodeRoleInCluster.FRONTEND,) if n in front else STORAGE,
        )
        for i, n in enumerate(names)
    )
    config = ClusterConfig(name="test", replication_factor=rf, etcd=("http://127.0.0.1:2379",), nodes=specs)
    down = set(dead)
    alive = {}
    for i, n in enumerate([*names, *alive_extra]):
        if n in down:
            continue
        used = int((disk or {}).get(n, 0.0) * 1000)
        alive[n] = NodeBeat(n, f"http://127.0.0.{i + 1}:8080", 0.0, disk_used=used, disk_total=1000)
    return ClusterSnapshot(
        config=config,
        alive=alive,
        maintenance={n: "maintenance" for n in maintenance},
        evacuating=frozenset(evacuating),
        placements={
            sid: Placement(sid, dict(replicas), wanted_rf=(wanted_rf or {}).get(sid), revision=1)
            for sid, replicas in (placements or {}).items()
        },
        revision=1,
        reconciler=reconciler,
        taken_at=1000.0,
    )


def url_of(node: str) -> str:
    return f"http://{node}.test:8080"


def seed(etcd: Etcd, nodes: list[str], *, alive: list[str] | None = None, rf: int = 3,
         placements: Mapping[str, Mapping[str, int]] | None = None, etcd_url: str = "http://127.0.0.1:2379") -> None:
    config = ClusterConfig(
        name="test", replication_factor=rf, etcd=(etcd_url,),
        nodes=tuple(NodeSpec(name=n, url=url_of(n)) for n in nodes),
    )
    etcd.put(keys.CONFIG, config.to_json())
    for node in nodes if alive is None else alive:
        etcd.put(keys.alive(node), NodeBeat(node, url_of(node), 0.0, disk_total=100).to_json())
    for sid, replicas in (placements or {}).items():
        state.create_placement(etcd, Placement(sid, dict(replicas)))
