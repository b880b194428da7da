"""What a node is (standalone, one of an HA pair, a cluster member) and the kinds of requests it
serves. A leaf module, so the HA state (``ha/state.py``), the cluster's router and everything
above them name roles and traffic by the same enums."""

from __future__ import annotations

import enum


class NodeRole(enum.StrEnum):
    STANDALONE = "standalone"
    HA_PRIMARY = "ha-primary"
    HA_REPLICA = "ha-replica"
    CLUSTER_MEMBER = "cluster-member"


class Traffic(enum.Enum):
    """Kinds of requests: what a node in a given state still serves, and where a cluster routes
    a repository's reads (any up-to-date replica) and writes (its leader)."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"
