"""A cluster node's moving parts, wired once: etcd, session, locks, peers, push path, repair.

Built by :func:`bulwark.assembly.open_node` when the settings name a cluster node. The HTTP
layer asks it where a repository's request goes; the services ask it (through
:class:`~bulwark.cluster.replicated_git.ClusterGit`) to create and remove replicas.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import socket
import threading
import time
from collections.abc import Collection, Iterator

from bulwark.cluster import hooks, keys, router, state
from bulwark.cluster import placement as placing
from bulwark.cluster.client import AsyncPeers, PeerClient, git_auth_config, refuses_connections
from bulwark.cluster.config import ClusterConfig
from bulwark.cluster.locks import RepoLocks
from bulwark.cluster.mirror import Mirror
from bulwark.cluster.proxy import Forwarder
from bulwark.cluster.push_follower import Transactions
from bulwark.cluster.push_leader import Coordinator
from bulwark.cluster.session import LeaseSession
from bulwark.cluster.state import ClusterSnapshot, NodeBeat, Placement
from bulwark.config import Settings
from bulwark.errors import InvalidInput, Unavailable
from bulwark.etcd import Compare, Etcd, Op
from bulwark.git.model import Ref
from bulwark.git.runner import GitRunner
from bulwark.roles import Traffic

log = logging.getLogger("bulwark.cluster")

# How old the replica counts used to place a new repository may be.
COUNTS_MAX_AGE = 30.0


class ClusterRuntime:
    def __init__(self, etcd: Etcd, settings: Settings, git: GitRunner) -> None:
        name = settings.cluster_node or ""
        config = state.read_config(etcd)
        if config is None:
            raise InvalidInput(
                f"etcd at {', '.join(etcd.endpoints)} holds no cluster configuration; run 'bulwark cluster init'"
            )
        spec = config.node(name)
        if spec is None:
            raise InvalidInput(
                f"node {name!r} is not in the cluster configuration (nodes: {', '.join(n.name for n in config.nodes)})"
            )
        secret = state.read_secret(etcd)
        if not secret:
            raise InvalidInput("the cluster has no shared secret; run 'bulwark cluster init'")
        self.etcd = etcd
        self.name = name
        self.url = spec.url
        self.secret = secret
        self.settings = settings
        self.data_dir = settings.data_dir
        self.git = git
        self.started_at = time.time()
        self.session = LeaseSession(etcd, name, self._beat, ttl=settings.lease_ttl, take_over=self._was_mine)
        self.locks = RepoLocks(etcd, self.session.lease, holder=name, gone=self._process_gone)
        self.peers = PeerClient(secret, name)
        self.transactions = Transactions(git, leader_alive=self.node_alive_at, lock_holds=self.locks.holds)
        # Every placement, kept by a watch: for views that may be a moment old, never for routing.
        self.placements: Mirror[Placement] = Mirror(etcd, keys.PLACEMENT, Placement.from_kv, name="placements")
        self._config = config
        self._snapshot: tuple[float, ClusterSnapshot] | None = None
        self._snapshot_lock = threading.Lock()
        self._counts: tuple[float, dict[str, int]] | None = None
        # Made on first use: they belong to the event loop that serves requests.
        self._apeers: AsyncPeers | None = None
        self._coordinator: Coordinator | None = None
        self._forwarder: Forwarder | None = None

    # -- state ------------------------------------------------------------------------------

    @property
    def config(self) -> ClusterConfig:
        return self.snapshot().config

    def snapshot(self, max_age: float = 0.5) -> ClusterSnapshot:
        now = time.monotonic()
        with self._snapshot_lock:
            cached = self._snapshot
        if cached is not None and now - cached[0] < max_age:
            return cached[1]
        snap = state.snapshot(self.etcd, placements=False)
        with self._snapshot_lock:
            self._snapshot = (time.monotonic(), snap)
        return snap

    def full_snapshot(self) -> ClusterSnapshot:
        """The cluster state with every placement: for views of all repositories, never per request.

        The placements come from the watched copy once it is loaded (a moment old at most; what acts
        on one reads or compares it in etcd first); the rest is read fresh."""
        if not self.placements.ready:
            return state.snapshot(self.etcd)
        _, placements = self.placements.view()
        return dataclasses.replace(state.snapshot(self.etcd, placements=False),
                                   placements={p.storage_id: p for p in placements.values()})

    def replica_counts(self) -> dict[str, int]:
        """Replicas per node for placing new ones: from a read of every placement at most every
        COUNTS_MAX_AGE seconds, plus the ones this node placed since (the balance is approximate)."""
        now = time.monotonic()
        with self._snapshot_lock:
            cached = self._counts
        if cached is None or now - cached[0] >= COUNTS_MAX_AGE:
            cached = (now, placing.replica_counts(self.full_snapshot()))
            with self._snapshot_lock:
                self._counts = cached
        return dict(cached[1])

    def note_placed(self, nodes: Collection[str]) -> None:
        with self._snapshot_lock:
            if self._counts is not None:
                for node in nodes:
                    self._counts[1][node] = self._counts[1].get(node, 0) + 1

    def placement(self, storage_id: str) -> Placement | None:
        """Read fresh on every request: routing must never trust a stale generation."""
        return state.get_placement(self.etcd, storage_id)

    def alive(self) -> set[str]:
        return set(self.snapshot().alive)

    def urls(self) -> dict[str, str]:
        return {n.name: n.url for n in self.snapshot().config.nodes}

    def node_alive_at(self, url: str) -> bool:
        """Whether the node reached at ``url`` holds its etcd session."""
        alive = self.alive()
        return any(name in alive for name, node_url in self.urls().items() if node_url == url)

    def _process_gone(self, node: str) -> bool:
        url = self.urls().get(node)
        return url is not None and refuses_connections(url)

    def holds_lease(self, lease: int, margin: float) -> bool:
        return self.session.holds(lease, margin=margin)

    def _local_refs(self, storage_id: str) -> dict[str, str]:
        return {r.name: r.oid for r in GitRunner.refs(self.git, storage_id)}

    def checksum_of(self, node: str, storage_id: str) -> str | None:
        """A replica's ref checksum on disk: this node's own, or asked of its node."""
        if node == self.name:
            # The base class's methods: this node's own disk, never routed to another node.
            return GitRunner.ref_checksum(self.git, storage_id) if GitRunner.exists(self.git, storage_id) else None
        url = self.urls().get(node)
        if url is None:
            raise Unavailable(f"node {node} is not in the cluster configuration")
        return self.peers.checksum(url, storage_id)

    def remote_refs_and_head(self, storage_id: str) -> tuple[list[Ref], str | None] | None:
        """A repository's refs and HEAD branch from another node's up-to-date replica; None when
        this node's own copy is the one to read."""
        route = self.route(storage_id, Traffic.READ)
        if route is None:
            raise Unavailable(f"no up-to-date replica of repository {storage_id} is reachable")
        if route.local:
            return None
        raw = self.peers.refs(route.url, storage_id, [])
        refs = [Ref(name=r["name"], oid=r["oid"], type=r["type"]) for r in raw]
        return refs, self.peers.head(route.url, storage_id)

    @contextlib.contextmanager
    def backup_barrier(self, timeout: float) -> Iterator[None]:
        """No ref moves on any node while a backup reads the refs.

        The barrier key stops leaders taking a repository's lock (cluster/push_leader.py); it is
        put on this node's lease, so a crashed backup cannot leave it up. Then the pushes already
        holding a lock are waited for."""
        key = keys.BACKUP_BARRIER
        result = self.etcd.txn([Compare.absent(key)], [Op.put(key, self.name, self.session.lease())])
        if not result.succeeded:
            raise Unavailable("another backup of this cluster is reading its refs; try again")
        try:
            deadline = time.monotonic() + timeout
            while self.etcd.get_prefix(keys.LOCKS, keys_only=True):
                if time.monotonic() > deadline:
                    raise Unavailable("pushes in progress did not finish in time for the backup; try again")
                time.sleep(0.05)
            yield
        finally:
            self.etcd.delete(key)

    def in_maintenance(self) -> str | None:
        return self.snapshot().maintenance.get(self.name)

    def fenced_reason(self) -> str | None:
        return self.session.fenced_reason()

    def route(self, storage_id: str, access: Traffic, avoid: Collection[str] = ()) -> router.Route | None:
        placement = self.placement(storage_id)
        if placement is None:
            return None
        snap = self.snapshot()
        choice = router.choose(
            placement, access, me=self.name, alive=set(snap.alive), urls=self.urls(), draining=set(snap.maintenance),
            avoid=avoid,
        )
        if choice is not None and choice.local and not self.git.exists(storage_id):
            # etcd says we hold it, the disk says no: stop claiming it and send the request elsewhere.
            log.warning("cluster: the replica of %s is missing on this node's disk; marking it for repair", storage_id)
            self.mark_outdated(storage_id)
            choice = router.choose(placement, access, me=self.name, alive=set(snap.alive), urls=self.urls(),
                                   draining=set(snap.maintenance), avoid={self.name, *avoid})
        return choice

    def git_source_config(self) -> dict[str, str]:
        return git_auth_config(self.secret)

    def hook_setup(self, txn: str) -> tuple[dict[str, str], dict[str, str]]:
        """The git config and environment under which git reports ``txn``'s ref updates to us."""
        return {"core.hooksPath": str(hooks.hooks_dir(self.data_dir))}, hooks.hook_env(txn, self.settings, self.secret)

    # -- async parts --------------------------------------------------------------------------

    @property
    def apeers(self) -> AsyncPeers:
        if self._apeers is None:
            self._apeers = AsyncPeers(self.secret, self.name)
        return self._apeers

    @property
    def coordinator(self) -> Coordinator:
        if self._coordinator is None:
            self._coordinator = Coordinator(self.name, self.url, self.etcd, self.locks, self.apeers,
                                            self.alive, self.urls, pack_for=self.transactions.thin_pack,
                                            holds=self.holds_lease, checksum_of=self.checksum_of,
                                            alive_now=lambda: set(self.snapshot(max_age=0).alive),
                                            local_refs=self._local_refs)
        return self._coordinator

    @property
    def forwarder(self) -> Forwarder:
        if self._forwarder is None:
            self._forwarder = Forwarder(self.secret, self.name)
        return self._forwarder

    # -- lifecycle ----------------------------------------------------------------------------

    def _beat(self) -> NodeBeat:
        try:
            usage = shutil.disk_usage(self.data_dir)
            used, total = usage.used, usage.total
        except OSError:
            used = total = 0
        return NodeBeat(self.name, self.url, self.started_at, disk_used=used, disk_total=total)

    def _was_mine(self, beat: NodeBeat) -> bool:
        """Whether a session under this node's name is an earlier process's, dead now: it gave this
        node's URL, started before this process, and nothing listens on this node's port."""
        return beat.url == self.url and beat.started_at < self.started_at and port_is_free(self.settings.host,
                                                                                           self.settings.port)

    def start(self) -> None:
        try:
            self.session.join()
        except Unavailable as exc:
            log.warning("cluster: could not register with etcd yet (%s); retrying in the background", exc)
        self.session.start()
        self.placements.start()

    def stop(self) -> None:
        self.placements.stop()
        self.session.stop()
        self.peers.close()

    def check_own_replicas(self) -> str:
        """Mark as outdated every replica etcd says this node holds but its disk does not.

        A node that comes back with a wiped or replaced disk must not serve reads from
        copies it no longer has; the reconciler rebuilds them.
        """
        missing = [p.storage_id for p in self.full_snapshot().placements.values()
                   if p.replicas.get(self.name, state.BUILDING) > state.BUILDING and not self.git.exists(p.storage_id)]
        for storage_id in missing:
            self.mark_outdated(storage_id)
        return f"{len(missing)} replicas missing on disk marked for repair" if missing else "every replica is on disk"

    def mark_outdated(self, storage_id: str) -> None:
        def outdated(current: Placement) -> Placement:
            if self.name not in current.replicas:
                return current
            return current.with_replicas({**current.replicas, self.name: state.BUILDING})

        state.update_placement(self.etcd, storage_id, outdated)

    def set_maintenance(self, message: str | None) -> None:
        state.set_flag(self.etcd, keys.maintenance(self.name), message)


def port_is_free(host: str, port: int) -> bool:
    """Whether no process listens on ``host:port`` (a bind that would succeed, then let go)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True
