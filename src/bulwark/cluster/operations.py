"""What an administrator asks of a cluster: store or change its configuration, drain a node,
evacuate or remove one, queue rebalancing moves.

Each is a guarded etcd write, made here; the elected reconciler moves the data afterwards.
``bulwark cluster`` (cli/cluster.py) only parses, prints and waits. A refusal is a Bulwark error
whose message says what to do instead.
"""

from __future__ import annotations

import secrets

from pydantic import ValidationError

from bulwark.cluster import keys, state
from bulwark.cluster.config import ClusterConfig, NodeSpec
from bulwark.cluster.placement import Move
from bulwark.cluster.state import BUILDING, ClusterSnapshot, Placement
from bulwark.errors import Conflict, InvalidInput, NotFound
from bulwark.etcd import Compare, Etcd, Op


def stored_config(etcd: Etcd) -> tuple[ClusterConfig, int]:
    """The configuration in etcd and its revision, for a compare-and-set."""
    kv = etcd.get(keys.CONFIG)
    if kv is None:
        raise NotFound("etcd holds no cluster configuration; run 'bulwark cluster init --config FILE' first")
    return ClusterConfig.from_json(kv.text), kv.mod_revision


def store_config(etcd: Etcd, config: ClusterConfig, revision: int) -> None:
    """Compare-and-set on the config key: a concurrent change makes this fail, not vanish."""
    result = etcd.txn([Compare.unchanged(keys.CONFIG, revision)], [Op.put(keys.CONFIG, config.to_json())])
    if not result.succeeded:
        raise Conflict("the stored configuration changed meanwhile; run the command again")


def init(etcd: Etcd, cluster: ClusterConfig, *, force: bool) -> bool:
    """Store a first configuration (or replace one, with ``force``) and make sure a shared secret
    for node-to-node calls exists. Whether the secret is a new one."""
    existing = state.read_config(etcd)
    if existing is not None and not force:
        raise Conflict(
            f"etcd already holds the configuration of cluster {existing.name!r}; change it with "
            "'bulwark cluster config-apply', or pass --force to replace it"
        )
    guard = [] if force else [Compare.absent(keys.CONFIG)]
    if not etcd.txn(guard, [Op.put(keys.CONFIG, cluster.to_json())]).succeeded:
        raise Conflict("another 'cluster init' stored a configuration meanwhile")
    fresh_secret = etcd.txn([Compare.absent(keys.SECRET)], [Op.put(keys.SECRET, secrets.token_hex(32))])
    return fresh_secret.succeeded


def _describe(spec: NodeSpec) -> str:
    return f"{spec.name} ({spec.url}, {','.join(r.value for r in spec.roles)})"


def config_changes(old: ClusterConfig, new: ClusterConfig) -> list[str]:
    """Human lines for what applying ``new`` over ``old`` changes (empty: nothing)."""
    lines: list[str] = []
    if old.name != new.name:
        lines.append(f"~ cluster name: {old.name} -> {new.name}")
    if old.replication_factor != new.replication_factor:
        lines.append(f"~ replication factor: {old.replication_factor} -> {new.replication_factor}")
    if old.etcd != new.etcd:
        lines.append(f"~ etcd: {', '.join(old.etcd)} -> {', '.join(new.etcd)}")
    before = {n.name: n for n in old.nodes}
    after = {n.name: n for n in new.nodes}
    lines += [f"+ node {_describe(after[n])}" for n in sorted(set(after) - set(before))]
    lines += [f"- node {_describe(before[n])}" for n in sorted(set(before) - set(after))]
    for name in sorted(set(before) & set(after)):
        if before[name] != after[name]:
            lines.append(f"~ node {_describe(before[name])} -> {_describe(after[name])}")
    return lines


def check_leaving(old: ClusterConfig, new: ClusterConfig, counts: dict[str, int]) -> None:
    """Refuse a configuration that takes storage from nodes still holding replicas."""
    still_storing = {n.name for n in new.storage_nodes}
    leaving = [n.name for n in old.storage_nodes if n.name not in still_storing and counts.get(n.name, 0) > 0]
    if leaving:
        held = ", ".join(f"{n} holds {counts[n]}" for n in leaving)
        raise Conflict(
            f"nodes leaving storage still hold replicas ({held}): run 'bulwark cluster evacuate NODE' first, "
            "or 'bulwark cluster remove-node NODE --no-evacuate' for a node that is gone for good"
        )


def apply_config(etcd: Etcd, old: ClusterConfig, new: ClusterConfig, revision: int) -> None:
    """Store ``new`` over ``old`` (as read at ``revision``); nodes that left lose their flags."""
    store_config(etcd, new, revision)
    for gone in {n.name for n in old.nodes} - {n.name for n in new.nodes}:
        state.set_flag(etcd, keys.evacuating(gone), None)
        state.set_flag(etcd, keys.maintenance(gone), None)


def replicas_on(snapshot: ClusterSnapshot, node: str) -> int:
    return sum(1 for p in snapshot.placements.values() if node in p.replicas)


def known_node(snapshot: ClusterSnapshot, node: str) -> None:
    if snapshot.config.node(node) is None:
        names = ", ".join(n.name for n in snapshot.config.nodes)
        raise NotFound(f"node {node!r} is not in the cluster configuration (nodes: {names})")


def start_evacuation(etcd: Etcd, node: str) -> ClusterSnapshot:
    """Flag ``node`` as evacuating: the reconciler moves its replicas away. The snapshot it was
    flagged on, to say how many there are to move."""
    snap = state.snapshot(etcd)
    known_node(snap, node)
    state.set_flag(etcd, keys.evacuating(node), "1")
    return snap


def remove_node(etcd: Etcd, node: str) -> ClusterSnapshot:
    """Take ``node`` out of the stored configuration and clear its flags; the snapshot after."""
    current, revision = stored_config(etcd)
    if current.node(node) is None:
        raise NotFound(f"node {node!r} is not in the cluster configuration")
    raw = current.model_dump(mode="json")
    raw["nodes"] = [n for n in raw["nodes"] if n["name"] != node]
    try:
        smaller = ClusterConfig.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(f"cannot remove {node}: {exc.errors()[0]['msg']}") from None
    store_config(etcd, smaller, revision)
    state.set_flag(etcd, keys.evacuating(node), None)
    state.set_flag(etcd, keys.maintenance(node), None)
    return state.snapshot(etcd)


def queue_moves(etcd: Etcd, moves: list[Move]) -> int:
    """Add each move's new replica as building; the reconciler copies it, then drops the extra
    one. How many were queued (a placement changed since the plan is left alone)."""
    queued = 0
    for move in moves:

        def add(p: Placement, move: Move = move) -> Placement:
            if move.to_node in p.replicas or move.from_node not in p.replicas:
                return p  # changed since the plan
            return p.with_replicas({**p.replicas, move.to_node: BUILDING})

        after = state.update_placement(etcd, move.storage_id, add)
        queued += bool(after and after.replicas.get(move.to_node) == BUILDING)
    return queued


def set_maintenance(etcd: Etcd, node: str, message: str | None) -> None:
    """Drain ``node`` (its /status answers 503) with ``message``, or bring it back with None."""
    known_node(state.snapshot(etcd), node)
    state.set_flag(etcd, keys.maintenance(node), message)
