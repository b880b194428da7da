"""Building the HA pieces of a node from its parts."""

from __future__ import annotations

from collections.abc import Callable

from bulwark.errors import InvalidInput
from bulwark.ha import state as ha_state
from bulwark.ha.client import PrimaryClient
from bulwark.ha.gate import ReplicationGate
from bulwark.ha.loop import HALoop, PrimaryDuties
from bulwark.ha.promote import PromoteReport, promote
from bulwark.ha.replicator import Replicator
from bulwark.ha.state import HAState
from bulwark.ha.watch import PrimaryWatch
from bulwark.node import Node
from bulwark.roles import NodeRole


def client_for(ha: HAState, node_id: str) -> PrimaryClient:
    if not ha.primary_url or not ha.credential:
        raise InvalidInput("this node has no primary configured; run 'bulwark repl setup'")
    return PrimaryClient(ha.primary_url, ha.credential, node_id=node_id, epoch=ha.epoch)


def replicator_for(node: Node, *, verify_objects: bool = True, stop: Callable[[], bool] | None = None) -> Replicator:
    s = node.settings
    return Replicator(
        node.store,
        node.replication_log(),
        node.git,
        node.clock,
        client_for=client_for,
        reconcile_every=s.ha_reconcile_interval,
        verify_objects=verify_objects,
        stop=stop,
    )


def ha_loop_for(node: Node) -> HALoop:
    watch = PrimaryWatch(node.store, node.clock, timeout=node.settings.ha_primary_timeout)

    def stopped() -> bool:
        """A promotion lowered the flag while a fetch ran: give the fetch up so the promotion goes on."""
        ha = ha_state.load(node.store)
        return ha.role != NodeRole.HA_REPLICA or not ha.replicating or bool(ha.fenced)

    def resume() -> str:
        report = promote_node(node)
        return f"finished an interrupted promotion: {'; '.join(report.steps)}"

    return HALoop(node.store, replicator_for(node, stop=stopped),
                  PrimaryDuties(node.store, node.replication_log(), node.clock), watch,
                  gate=ReplicationGate(node.settings.data_dir), resume=resume)


def promote_node(node: Node, waiting: Callable[[], None] | None = None) -> PromoteReport:
    """Promote this replica, as `repl promote` does and as the HA loop does to finish one left undone."""
    client = primary_client(node)
    if client is not None:
        client.timeout = 5.0  # a dead primary must not hold up the promotion
    try:
        return promote(node.store, node.replication_log(), replicator_for(node, verify_objects=False), client=client,
                       gate=ReplicationGate(node.settings.data_dir), waiting=waiting)
    finally:
        if client is not None:
            client.close()


def primary_client(node: Node) -> PrimaryClient | None:
    ha = ha_state.load(node.store)
    if not ha.primary_url or not ha.credential:
        return None
    return client_for(ha, ha_state.node_id(node.store))
