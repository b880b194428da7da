"""Building a node's webhook deliverer from its parts: who may deliver in each mode."""

from __future__ import annotations

from bulwark.cluster.election import Election
from bulwark.cluster.keys import WEBHOOK_DELIVERER
from bulwark.node import Node
from bulwark.roles import NodeRole
from bulwark.webhooks.catchup import CatchUp
from bulwark.webhooks.deliverer import Deliverer
from bulwark.webhooks.transport import Sender


def deliverer_for(node: Node) -> Deliverer | None:
    """The webhook deliverer beside the HTTP server: it sends while this node takes writes."""
    if node.webhooks is None:
        return None
    settings = node.settings
    cluster = node.cluster
    # On a cluster, one node at a time delivers: the one holding the key, which goes with its
    # session, so another node takes over within the lease's TTL when it dies or is cut off.
    election = None if cluster is None else Election(
        cluster.etcd, WEBHOOK_DELIVERER, cluster.name, cluster.session.lease, job="the webhook deliverer")

    def may_deliver() -> str | None:
        if node.stopping:
            return "the node is stopping"
        if cluster is not None and election is not None:
            fenced = cluster.fenced_reason()
            if fenced:
                return f"this node is fenced: {fenced}"
            holder = election.campaign()
            return None if holder == cluster.name else f"{holder or 'no node'} delivers the cluster's webhooks"
        ha = node.ha()
        if ha.fenced:
            return f"this node is fenced: {ha.fenced}"
        if ha.role == NodeRole.HA_REPLICA:
            return "this node is a replica; its primary delivers"
        return None

    sender = Sender(timeout=settings.webhook_timeout, allow_private=settings.webhook_allow_private)
    # Ref moves nothing announced are looked for in this node's copies: on a cluster, a push's
    # leader records it before its client hears of it, and no copy is the whole truth alone.
    catch_up = CatchUp(node.webhooks).run if cluster is None else None
    deliverer = Deliverer(node.webhooks.hooks, sender, node.clock, may_deliver=may_deliver, catch_up=catch_up,
                          on_stop=election.resign if election is not None else None, workers=settings.webhook_workers)
    node.wake_deliverer = deliverer.wake
    return deliverer
