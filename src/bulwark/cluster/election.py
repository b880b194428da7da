"""One node of the cluster at a time does a job (reconciling, delivering webhooks): the one that
holds the job's key in etcd. The key is attached to the holder's session lease, so it goes when
the holder dies or is cut off (within the lease's TTL), and the next node to campaign takes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from bulwark.errors import Unavailable
from bulwark.etcd import Compare, Etcd, Op

log = logging.getLogger("bulwark.cluster")


class Election:
    def __init__(self, etcd: Etcd, key: str, node: str, lease: Callable[[], int], *, job: str) -> None:
        self.etcd = etcd
        self.key = key
        self.node = node
        self.lease = lease  # the node's session lease: the job dies with it
        self.job = job  # for the log: "the reconciler", "the webhook deliverer"

    def campaign(self) -> str | None:
        """Take the job if nobody has it; the name of whoever has it (None: nobody)."""
        try:
            lease = self.lease()
        except Unavailable:
            lease = 0  # no session: a key without a lease would outlive this node
        if lease:
            result = self.etcd.txn(
                [Compare.absent(self.key)],
                [Op.put(self.key, self.node, lease)],
                [Op.get(self.key)],
            )
            if result.succeeded:
                log.info("%s is now %s", self.node, self.job)
                return self.node
            found = result.reads[0] if result.reads else []
        else:
            kv = self.etcd.get(self.key)
            found = [kv] if kv else []
        return found[0].text if found else None

    def resign(self) -> None:
        self.etcd.txn([Compare.value_is(self.key, self.node)], [Op.delete(self.key)])
