"""Where cluster state lives in etcd. No other module spells an etcd key of the cluster.

The metadata store keeps its own keys under ``/bulwark/store/`` (see ``bulwark.store.etcd``).
"""

from __future__ import annotations

ROOT = "/bulwark/cluster/"
CONFIG = ROOT + "config"  # the ClusterConfig, as JSON
SECRET = ROOT + "secret"  # the shared secret nodes authenticate each other's calls with
ALIVE = ROOT + "alive/"  # alive/<node> -> NodeBeat JSON, attached to the node's lease
MAINTENANCE = ROOT + "maintenance/"  # maintenance/<node> -> reason; the load balancer drains it
EVACUATING = ROOT + "evacuating/"  # evacuating/<node> -> "1"; its replicas move elsewhere
PLACEMENT = ROOT + "placement/"  # placement/<storage id> -> Placement JSON
LOCKS = ROOT + "locks/"  # locks/<storage id> -> holder, attached to the holder's lease
# intents/<storage id> -> "<lock token> <push id>", no lease: a push under way. One left behind
# (its leader died or was cut off) means the replicas' refs must be compared before they are trusted.
INTENTS = ROOT + "intents/"
RECONCILER = ROOT + "reconciler"  # the elected reconciler's node name, attached to its lease
WEBHOOK_DELIVERER = ROOT + "webhook-deliverer"  # the node that sends webhooks, attached to its lease
REPORT = ROOT + "reconciler-report"  # the last reconciler cycle's sentence and counts
# While present, no push takes a repository lock: a backup is reading every repository's refs.
BACKUP_BARRIER = ROOT + "backup-barrier"


def alive(node: str) -> str:
    return ALIVE + node


def maintenance(node: str) -> str:
    return MAINTENANCE + node


def evacuating(node: str) -> str:
    return EVACUATING + node


def placement(storage_id: str) -> str:
    return PLACEMENT + storage_id


def lock(storage_id: str) -> str:
    return LOCKS + storage_id


def intent(storage_id: str) -> str:
    return INTENTS + storage_id


def tail(key: str, prefix: str) -> str:
    return key.removeprefix(prefix)
