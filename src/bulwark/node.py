"""A node: its settings, store, git runner and services; built for its mode by bulwark.assembly.

The node's role is read here and only here; the HTTP and git layers ask the
node what it may do instead of branching on the mode themselves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bulwark.clock import Clock, SystemClock
from bulwark.config import Settings
from bulwark.errors import InvalidInput, ReadOnlyNode, Unavailable
from bulwark.git.runner import ZERO_OID, GitRunner
from bulwark.ha import state as ha_state
from bulwark.ha.state import HAState
from bulwark.models import Account, Repository
from bulwark.roles import NodeRole, Traffic
from bulwark.security import PasswordHasher
from bulwark.services.accounts import AccountService
from bulwark.services.maintenance import MaintenanceService
from bulwark.services.repo_lists import RepoLists
from bulwark.services.repositories import RepositoryService
from bulwark.services.ssh_keys import KeyService
from bulwark.store import Store
from bulwark.store.changes import ChangeLog
from bulwark.webhooks.service import HookService
from bulwark.webhooks.store import HookStore

log = logging.getLogger("bulwark")

if TYPE_CHECKING:
    from bulwark.cluster.runtime import ClusterRuntime
    from bulwark.services.access_cache import AccessCache


@dataclass
class Node:
    settings: Settings
    store: Store
    git: GitRunner
    clock: Clock = field(default_factory=SystemClock)
    hasher: PasswordHasher = field(default_factory=PasswordHasher)
    # Set on a cluster member: etcd, its session, routing and the push path.
    cluster: ClusterRuntime | None = None
    # On a cluster member: git requests' authorization decisions, kept while their etcd keys are unchanged.
    access_cache: AccessCache[Any] | None = None
    # Where webhooks and their outbox live: beside the metadata, in SQLite or in etcd.
    hooks: HookStore | None = None
    # The SQLite store's change log, which HA replication streams from (None on a cluster member).
    changelog: ChangeLog | None = None

    def __post_init__(self) -> None:
        self.webhooks: HookService | None = None
        if self.hooks is not None:
            self.webhooks = HookService(
                self.hooks, self.store, self.git, base_url=self.settings.base_url,
                ssh_clone_url=self.settings.ssh_clone_url, queued=lambda: self.wake_deliverer(),
            )
        # Set by ``bulwark serve`` to its deliverer's wake-up, so a queued event goes out at once.
        self.wake_deliverer: Callable[[], None] = lambda: None
        self.accounts = AccountService(
            self.store, self.hasher, self.clock, metadata_writable=lambda: self.role is not NodeRole.HA_REPLICA
        )
        self.repos = RepositoryService(self.store, self.git, self.clock, events=self.webhooks)
        self.keys = KeyService(self.store, self.clock, metadata_writable=lambda: self.role is not NodeRole.HA_REPLICA)
        self.repo_lists = RepoLists(self.store)
        self.maintenance = MaintenanceService(self.store, self.clock)
        self._ha: tuple[float, HAState] | None = None
        # Set when the server was asked to stop: /status answers 503 while it drains (http/listening.py).
        self.stopping = False

    def ha(self) -> HAState:
        """This node's HA state, re-read at most every half second (CLI commands change it)."""
        now = time.monotonic()
        if self._ha is None or now - self._ha[0] > 0.5:
            self._ha = (now, ha_state.load(self.store))
        return self._ha[1]

    def replication_log(self) -> ChangeLog:
        """The change log HA replication streams from; a cluster member has none."""
        if self.changelog is None:
            raise InvalidInput("HA replication runs on the embedded store; this node is a cluster member, "
                               "whose copies are kept by the cluster")
        return self.changelog

    def forget_cached_state(self) -> None:
        self._ha = None

    @property
    def role(self) -> NodeRole:
        if self.cluster is not None:
            return NodeRole.CLUSTER_MEMBER
        return NodeRole(self.ha().role)

    def check_fenced(self, traffic: Traffic) -> None:
        """Raise ``ReadOnlyNode`` if this cluster node lost its session and ``traffic`` writes."""
        if self.cluster is not None and traffic is not Traffic.READ:
            fenced = self.cluster.fenced_reason()
            if fenced:
                raise ReadOnlyNode(f"this cluster node takes no writes: it {fenced}; use another node")

    def check_serving(self, traffic: Traffic, *, site_admin: bool = False) -> None:
        """Raise ``Unavailable`` if this node does not take ``traffic`` now."""
        self.check_fenced(traffic)
        maintenance = self.store.get_maintenance()
        if maintenance.enabled and not (site_admin and traffic is Traffic.ADMIN):
            raise Unavailable(maintenance.message or "this instance is in maintenance mode; try again later")
        if traffic is Traffic.READ:
            return
        if self.cluster is not None:
            return
        ha = self.ha()
        if ha.fenced or ha.role == NodeRole.HA_REPLICA:
            # A refusal is read afresh: a replica promoted a moment ago takes the write at once.
            self.forget_cached_state()
            ha = self.ha()
        if ha.fenced:
            raise ReadOnlyNode(
                f"this node no longer takes writes: {ha.fenced}. Use the new primary, or make this node "
                "its replica with 'bulwark repl setup --primary URL'"
            )
        if ha.role == NodeRole.HA_REPLICA:
            raise ReadOnlyNode(f"this node is a read-only replica; send writes to the primary at {ha.primary_url}")

    def healthy(self, *, strict: bool = True) -> tuple[bool, str]:
        """Whether a load balancer should send traffic here, and why.

        ``strict=False`` is the balancer's last resort, asked only when no node passes the strict
        check: it overlooks a lease renewal that is late but not yet lost. While etcd elects a
        leader every node's renewal is late at once, and then they should serve rather than none."""
        if self.stopping:
            return False, "shutting down: finishing the requests under way"
        if self.cluster is not None:
            # Before anything that needs etcd: a node without its session must answer at once.
            fenced = self.cluster.fenced_reason()
            if fenced:
                return False, f"fenced: this node {fenced}"
            if strict and self.cluster.session.in_doubt():
                # A renewal is overdue: answer now rather than wait on an etcd that may be cut off.
                return False, "session in doubt: this node has not renewed its etcd lease on time"
        maintenance = self.store.get_maintenance()
        if maintenance.enabled:
            return False, f"maintenance mode: {maintenance.message}" if maintenance.message else "maintenance mode"
        if self.cluster is not None:
            drained = self.cluster.in_maintenance()
            if drained is not None:
                return False, f"drained for maintenance: {drained}" if drained else "drained for maintenance"
            return True, "serving"
        ha = self.ha()
        if ha.fenced:
            return False, f"fenced: {ha.fenced}"
        if ha.role == NodeRole.HA_REPLICA:
            return False, f"replica of {ha.primary_url}"
        return True, "serving"

    def record_push(
        self, repo: Repository, commands: list[tuple[str, str, str]], pusher: Account | None = None
    ) -> None:
        """After a push: note when, put the ref updates that landed into the change stream, where
        replicas learn which repository to fetch (in order with the metadata), and queue the
        webhook deliveries of the push, all in one transaction."""
        names = [ref for _old, _new, ref in commands]
        # This node's own copy: the one git just updated (a cluster's push leader has one).
        now = {r.name: r.oid for r in GitRunner.refs(self.git, repo.storage_id, *names)} if names else {}
        landed = [(old, new, ref) for old, new, ref in commands if now.get(ref, ZERO_OID) == new]
        # Git is read before the transaction, which holds the database's write lock.
        deliveries = self.webhooks.push_deliveries(repo, pusher, landed) if self.webhooks and pusher else []
        if self.cluster is not None:
            # The cluster's replicas took part in the push itself; etcd has no transaction across
            # these writes, and needs none: the client hears of the push only after they are done.
            # (The refs announced are not noted: a cluster does not look for unannounced moves.)
            if self.webhooks is not None:
                self.webhooks.enqueue(repo, deliveries)
            self.repos.record_push(repo)
            if deliveries:
                self.wake_deliverer()
            return
        checksum = self.git.ref_checksum(repo.storage_id)
        with self.store.transaction():
            self.repos.record_push(repo)
            # The deliveries before the push event: a replica applies the rows before it fetches
            # for the event, so a replica that holds the push holds its deliveries.
            if self.webhooks is not None:
                self.webhooks.enqueue(repo, deliveries)
                self.webhooks.announced(repo, landed)
            self.replication_log().record_event(
                "push", {"storage_id": repo.storage_id, "checksum": checksum, "refs": [list(u) for u in landed]}
            )
        if deliveries:
            self.wake_deliverer()

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        self.store.close()
