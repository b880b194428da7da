"""Turning a node into a replica, and undoing it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from bulwark.errors import BulwarkError, InvalidInput, PeerUnreachable
from bulwark.git.runner import GitRunner
from bulwark.ha import state as ha_state
from bulwark.ha.client import PrimaryClient, register
from bulwark.ha.replicator import Replicator
from bulwark.ha.state import HAState, Progress
from bulwark.models import MaintenanceState
from bulwark.roles import NodeRole
from bulwark.store import Store
from bulwark.store.changes import ChangeLog

FENCED_PREFIX = "fenced:"

# (done, total, storage id) after each repository of the initial copy.
OnProgress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class SetupReport:
    primary_id: str
    epoch: int
    position: int
    repositories: int
    removed: int
    failed: list[str]


def setup_replica(
    store: Store,
    changelog: ChangeLog,
    git: GitRunner,
    replicator: Replicator,
    *,
    primary_url: str,
    token: str,
    advertise_url: str,
    on_progress: OnProgress | None = None,
) -> SetupReport:
    """Register with the primary, copy its metadata whole and its repositories by fetch.

    Repositories already on this node (a former primary coming back) are fetched
    into, so only what differs moves; repositories the primary does not have are
    removed.
    """
    current = ha_state.load(store)
    if current.role == NodeRole.HA_PRIMARY and not current.fenced and ha_state.load_replicas(store):
        raise InvalidInput(
            "this node is a primary with replicas; tear them down first ('bulwark repl teardown --node ID')"
        )
    node_id = ha_state.node_id(store)
    answer = register(primary_url, token, node_id=node_id, url=advertise_url)
    try:
        credential, primary_id, epoch = str(answer["credential"]), str(answer["primary_id"]), int(answer["epoch"])
    except (KeyError, TypeError, ValueError):
        raise PeerUnreachable(f"{primary_url} answered the registration with something unexpected") from None
    if primary_id == node_id:
        raise InvalidInput("that URL is this node itself")
    # Mark the role first, stopped: a crash half-way leaves a replica that is
    # obviously not in sync (never a primary holding half a copy).
    ha = HAState(
        role=NodeRole.HA_REPLICA,
        epoch=epoch,
        primary_url=primary_url.rstrip("/"),
        primary_id=primary_id,
        credential=credential,
        replicating=False,
    )
    ha_state.save(store, ha)
    client = PrimaryClient(primary_url, credential, node_id=node_id, epoch=epoch)
    try:
        snapshot = client.snapshot()
        before = {r.storage_id for r in store.list_repos()}
        changelog.load_snapshot(snapshot)
        repos = store.list_repos()
        wanted = {r.storage_id for r in repos}
        removed = 0
        for storage_id in sorted(before - wanted):
            git.remove(storage_id)
            removed += 1
        failed = []
        for done, repo in enumerate(repos, 1):
            try:
                replicator.fetch(client, repo.storage_id)
                with contextlib.suppress(BulwarkError):
                    git.set_head(repo.storage_id, repo.default_branch)
            except BulwarkError:
                failed.append(repo.storage_id)
                replicator.sync.want(repo.storage_id)
            if on_progress:
                on_progress(done, len(repos), repo.storage_id)
    finally:
        client.close()
    maintenance = store.get_maintenance()
    if maintenance.enabled and maintenance.message.startswith(FENCED_PREFIX):
        store.set_maintenance(MaintenanceState(enabled=False))
    ha_state.save_progress(store, Progress(position=snapshot.seq, primary_seq=snapshot.seq))
    ha_state.save(store, ha.with_(replicating=True))
    return SetupReport(primary_id, epoch, snapshot.seq, len(repos), removed, failed)


def set_replicating(store: Store, on: bool) -> HAState:
    ha = ha_state.load(store)
    if ha.role != NodeRole.HA_REPLICA:
        raise InvalidInput("this node is not a replica; set one up with 'bulwark repl setup'")
    ha = ha.with_(replicating=on)
    ha_state.save(store, ha)
    return ha


def teardown_replica(store: Store) -> HAState:
    """Make this replica a standalone node again, keeping its data."""
    ha = ha_state.load(store)
    if ha.role != NodeRole.HA_REPLICA:
        raise InvalidInput("this node is not a replica")
    new = HAState(role=NodeRole.STANDALONE, epoch=ha.epoch)
    ha_state.save(store, new)
    return new


def forget_replica(store: Store, node_id: str) -> None:
    """On the primary: drop a replica's record and revoke its credential."""
    replicas = ha_state.load_replicas(store)
    kept = [r for r in replicas if r.node_id != node_id]
    if len(kept) == len(replicas):
        known = ", ".join(r.node_id for r in replicas) or "none"
        raise InvalidInput(f"no replica {node_id!r} (known: {known})")
    ha_state.save_replicas(store, kept)
