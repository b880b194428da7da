"""Building a node for its mode, in one place: store, change log, git runner, webhooks' store and,
on a cluster member, its runtime; and (in the modules beside this one) the background work that
``bulwark serve`` runs beside it: the HA loop, the cluster's loops, the webhook deliverer.

Everything below this package is given its parts; only here are the concrete ones chosen.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from bulwark.backup import barrier
from bulwark.clock import Clock, SystemClock
from bulwark.config import Settings
from bulwark.git.runner import GitRunner
from bulwark.node import Node
from bulwark.security import PasswordHasher
from bulwark.store.sqlite import SQLiteStore
from bulwark.webhooks.store_sqlite import SQLiteHooks

log = logging.getLogger("bulwark")


def open_node(
    settings: Settings, *, clock: Clock | None = None, hasher: PasswordHasher | None = None, starting: bool = False
) -> Node:
    """Open (and on first use create) the data dir of a node: standalone or HA on SQLite, or a
    cluster member on etcd when the settings name one.

    ``starting``: the node is about to serve (not a command run beside it), so nothing of its
    own runs git yet and what killed git processes left in its repositories is cleared first.
    """
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
    # Webhooks live beside the metadata; the SQLite store keeps the change log HA replication streams from.
    return Node(settings=settings, store=store, git=git, clock=clock, hasher=hasher or PasswordHasher(),
                hooks=SQLiteHooks(store), changelog=store)


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
    from bulwark.cluster.replicated_git import ClusterGit
    from bulwark.cluster.runtime import ClusterRuntime
    from bulwark.errors import InvalidInput
    from bulwark.etcd import Etcd
    from bulwark.services.access_cache import AccessCache
    from bulwark.store.etcd import EtcdStore
    from bulwark.webhooks.store_etcd import EtcdHooks

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
                access_cache=AccessCache(store, clock), hooks=EtcdHooks(store))
