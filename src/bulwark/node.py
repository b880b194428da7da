"""A node: its settings, store, git runner and services, wired once at start-up.

The node's role is chosen here and only here; the HTTP and git layers ask the
node what it may do instead of branching on the mode themselves.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from bulwark.clock import Clock, SystemClock
from bulwark.config import Settings
from bulwark.errors import Unavailable
from bulwark.git.runner import GitRunner
from bulwark.security import PasswordHasher
from bulwark.services.accounts import AccountService
from bulwark.services.repositories import RepositoryService
from bulwark.store import Store


class NodeRole(enum.StrEnum):
    STANDALONE = "standalone"
    HA_PRIMARY = "ha-primary"
    HA_REPLICA = "ha-replica"
    CLUSTER_MEMBER = "cluster-member"


class Traffic(enum.Enum):
    """Kinds of requests, for deciding what a node in a given state still serves."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


@dataclass
class Node:
    settings: Settings
    store: Store
    git: GitRunner
    clock: Clock = field(default_factory=SystemClock)
    hasher: PasswordHasher = field(default_factory=PasswordHasher)
    role: NodeRole = NodeRole.STANDALONE

    def __post_init__(self) -> None:
        self.accounts = AccountService(self.store, self.hasher, self.clock)
        self.repos = RepositoryService(self.store, self.git, self.clock)

    def check_serving(self, traffic: Traffic, *, site_admin: bool = False) -> None:
        """Raise ``Unavailable`` if this node does not take ``traffic`` now."""
        maintenance = self.store.get_maintenance()
        if maintenance.enabled and not (site_admin and traffic is Traffic.ADMIN):
            raise Unavailable(maintenance.message or "this instance is in maintenance mode; try again later")

    def healthy(self) -> tuple[bool, str]:
        """Whether a load balancer should send traffic here, and why."""
        maintenance = self.store.get_maintenance()
        if maintenance.enabled:
            return False, "maintenance mode"
        return True, "serving"

    def close(self) -> None:
        self.store.close()


def open_node(settings: Settings, *, clock: Clock | None = None, hasher: PasswordHasher | None = None) -> Node:
    """Open (and on first use create) the data dir of a standalone node."""
    from bulwark.store.sqlite import SQLiteStore

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.repositories_dir.mkdir(exist_ok=True)
    clock = clock or SystemClock()
    store = SQLiteStore(settings.metadata_path, clock=clock)
    git = GitRunner(settings.repositories_dir, git=settings.git)
    return Node(
        settings=settings,
        store=store,
        git=git,
        clock=clock,
        hasher=hasher or PasswordHasher(),
    )
