"""What a node is: standalone, one of an HA pair, or a cluster member. A leaf module, so the HA
state (``ha/state.py``) and everything above it name roles by the same enum."""

from __future__ import annotations

import enum


class NodeRole(enum.StrEnum):
    STANDALONE = "standalone"
    HA_PRIMARY = "ha-primary"
    HA_REPLICA = "ha-replica"
    CLUSTER_MEMBER = "cluster-member"
