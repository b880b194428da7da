"""A node: its settings, store, git runner and services, wired once at start-up.

The node's role is chosen here and only here; the HTTP and git layers ask the
node what it may do instead of branching on the mode themselves.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from bulwark.backup import barrier
from bulwark.clock import Clock, SystemClock
from bulwark.config import Settings
from bulwark.errors import ReadOnlyNode, Unavailable
from bulwark.git.runner import ZERO_OID, GitRunner
from bulwark.ha import state as ha_state
from bulwark.ha.state import HAState
from bulwark.models import Account, Repository
from bulwark.roles import NodeRole, Traffic
from bulwark.security import PasswordHasher
from bulwark.services.accounts import AccountService
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

    def __post_init__(self) -> None:
        # Webhooks live beside the metadata: in SQLite (standalone and HA), in etcd (a cluster).
        self.webhooks: HookService | None = None
        hooks = _hook_store(self.store)
        if hooks is not None:
            self.webhooks = HookService(
                hooks, self.store, self.git, base_url=self.settings.base_url,
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
        # The SQLite store keeps the change log HA replication streams from.
        self.changelog = cast(ChangeLog, self.store)
        self._ha: tuple[float, HAState] | None = None
        # Set when the server was asked to stop: /status answers 503 while it drains (http/listening.py).
        self.stopping = False

    def ha(self) -> HAState:
        """This node's HA state, re-read at most every half second (CLI commands change it)."""
        now = time.monotonic()
        if self._ha is None or now - self._ha[0] > 0.5:
            self._ha = (now, ha_state.load(self.store))
        return self._ha[1]

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
            if strict and self.cluster.membership.in_doubt():
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
            self.changelog.record_event(
                "push", {"storage_id": repo.storage_id, "checksum": checksum, "refs": [list(u) for u in landed]}
            )
        if deliveries:
            self.wake_deliverer()

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        self.store.close()


def _hook_store(store: Store) -> HookStore | None:
    from bulwark.store.etcd import EtcdStore
    from bulwark.store.sqlite import SQLiteStore

    if isinstance(store, SQLiteStore):
        from bulwark.store.hooks_sqlite import SQLiteHooks

        return SQLiteHooks(store)
    if isinstance(store, EtcdStore):
        from bulwark.store.hooks_etcd import EtcdHooks

        return EtcdHooks(store)
    return None


def open_node(
    settings: Settings, *, clock: Clock | None = None, hasher: PasswordHasher | None = None, starting: bool = False
) -> Node:
    """Open (and on first use create) the data dir of a node: standalone or HA on SQLite, or a
    cluster member on etcd when the settings name one.

    ``starting``: the node is about to serve (not a command run beside it), so nothing of its
    own runs git yet and what killed git processes left in its repositories is cleared first.
    """
    from bulwark.store.sqlite import SQLiteStore

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.repositories_dir.mkdir(exist_ok=True)
    clock = clock or SystemClock()
    if settings.cluster_node:
        return _open_cluster_node(settings, clock, hasher or PasswordHasher(), starting=starting)
    store = SQLiteStore(settings.metadata_path, clock=clock)
    # Every git process of the node passes the ref barrier a backup raises (backup/barrier.py).
    git = GitRunner(settings.repositories_dir, git=settings.git,
                    config={"core.hooksPath": str(barrier.install(settings.data_dir))},
                    advert_cache_bytes=settings.ref_cache_mb * 1024**2)
    if starting:
        accounts: dict[int, str] = {}
        labels: dict[str, str] = {}
        for repo in store.list_repos():
            if repo.owner_id not in accounts:
                owner = store.get_account_by_id(repo.owner_id)
                accounts[repo.owner_id] = owner.login if owner else str(repo.owner_id)
            labels[repo.storage_id] = f"{accounts[repo.owner_id]}/{repo.name}"
        _clear_leftovers(git, labels)
    return Node(
        settings=settings,
        store=store,
        git=git,
        clock=clock,
        hasher=hasher or PasswordHasher(),
    )


def _clear_leftovers(git: GitRunner, labels: dict[str, str]) -> None:
    """One log line per repository that a killed git left lock or temporary files in. Those a
    process still works in (a git of the killed run that has not exited yet) are tried again in
    the background until it has gone."""
    from bulwark.git import leftovers

    busy: dict[Path, str] = {}
    for cleared in leftovers.clear_all(git, labels, just_started=True):
        sentence = cleared.sentence()
        if sentence:
            log.warning("%s", sentence)
        if cleared.skipped == leftovers.BUSY and cleared.repo is not None:
            busy[cleared.repo] = cleared.label
    if busy:
        def later() -> None:
            for cleared in leftovers.clear_later(busy, lock=git.clearing):
                sentence = cleared.sentence()
                if sentence:
                    log.warning("%s", sentence)

        threading.Thread(target=later, name="leftovers", daemon=True).start()


def _open_cluster_node(settings: Settings, clock: Clock, hasher: PasswordHasher, *, starting: bool) -> Node:
    from bulwark.cluster.gitrouter import ClusterGit
    from bulwark.cluster.runtime import ClusterRuntime
    from bulwark.errors import InvalidInput
    from bulwark.etcd import Etcd
    from bulwark.services.access_cache import AccessCache
    from bulwark.store.etcd import EtcdStore

    if not settings.etcd:
        raise InvalidInput("a cluster node needs the etcd endpoints (etcd = [...] or BULWARK_ETCD)")
    assert settings.cluster_node is not None
    etcd = Etcd(settings.etcd, timeout=1.5)
    git = ClusterGit(settings.repositories_dir, git=settings.git, advert_cache_bytes=settings.ref_cache_mb * 1024**2)
    runtime = ClusterRuntime(etcd, settings, git)
    git.runtime = runtime
    if starting:
        # No etcd session yet, so no repository lock: safe because this node runs no push
        # before it serves, and a repository a live (orphaned) git works in is skipped.
        _clear_leftovers(git, {})
    store = EtcdStore(etcd, clock=clock)
    return Node(settings=settings, store=store, git=git, clock=clock, hasher=hasher, cluster=runtime,
                access_cache=AccessCache(store, clock))
