"""`bulwark repl promote`: make this replica the primary, in seconds."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, replace

from bulwark.errors import BulwarkError, InvalidInput
from bulwark.ha import state as ha_state
from bulwark.ha.client import PrimaryClient
from bulwark.ha.gate import ReplicationGate
from bulwark.ha.replicator import Replicator
from bulwark.roles import NodeRole
from bulwark.store import Store
from bulwark.store.changes import ChangeLog


@dataclass(frozen=True)
class PromoteReport:
    epoch: int
    fenced_old_primary: bool
    fence_detail: str
    caught_up: bool
    missing_changes: int  # changes the old primary had that this node may lack (at last contact)
    pending_repositories: int
    steps: list[str]


def promote(
    store: Store,
    changelog: ChangeLog,
    replicator: Replicator,
    *,
    client: PrimaryClient | None,
    gate: ReplicationGate | None = None,
    gate_timeout: float = 60.0,
    waiting: Callable[[], None] | None = None,
    pid: int | None = None,
) -> PromoteReport:
    """Fence the old primary if reachable, take what it still has, raise the epoch, take writes.

    ``client`` talks to the old primary (None if this node has no usable credential).
    Every step that needs the old primary is best-effort: when it is gone the
    promotion still completes, and the report says what may be missing.
    ``gate``: held from the moment replication is stopped to the end, so no cycle of the
    serving node's replicator still runs when this node starts taking writes.
    ``pid``: recorded as the promoting process (this one by default). Should it die before the
    end, the serving node's HA loop sees that process gone and finishes the promotion.
    """
    ha = ha_state.load(store)
    if ha.role != NodeRole.HA_REPLICA:
        raise InvalidInput(f"this node is {ha.role}, not a replica: nothing to promote")
    # 1. Stop the running replicator from pulling while we work, and wait for a cycle under way.
    ha_state.save(store, ha.with_(replicating=False, promoting=os.getpid() if pid is None else pid))
    held = gate.exclusive(gate_timeout, waiting=waiting) if gate is not None else contextlib.nullcontext()
    try:
        with held:
            now = ha_state.load(store)
            if now.role != NodeRole.HA_REPLICA:
                raise InvalidInput(f"this node became {now.role} meanwhile: another process finished the promotion")
            return _promote(store, changelog, replicator, ha.with_(promoting=None), client)
    except BaseException:
        now = ha_state.load(store)
        if now.role == NodeRole.HA_REPLICA:
            ha_state.save(store, now.with_(replicating=ha.replicating, promoting=None))  # as it was
        raise


def _promote(store: Store, changelog: ChangeLog, replicator: Replicator, ha: ha_state.HAState,
             client: PrimaryClient | None) -> PromoteReport:
    steps: list[str] = ["stopped replication"]
    new_epoch = ha.epoch + 1

    # 2. Fence the old primary first, so nothing new lands there while we take the rest.
    fenced, fence_detail = False, "no credential for the old primary"
    if client is not None:
        try:
            client.fence(new_epoch, by=ha_state.node_id(store))
            fenced, fence_detail = True, f"old primary {ha.primary_url} is fenced (maintenance mode, no writes)"
        except BulwarkError as exc:
            fence_detail = f"could not fence the old primary ({exc.message}); it must not be restarted as is"
    steps.append(fence_detail)

    # 3. Take whatever the old primary still has: remaining changes and repository differences.
    caught_up = False
    progress = ha_state.load_progress(store)
    if client is not None and fenced:
        try:
            while True:
                primary_seq, changes = client.changes(changelog.replication_position(), limit=1000)
                if not changes:
                    break
                replicator.apply_batch(changes, client)
            progress = replace(progress, primary_seq=primary_seq)
            replicator.reconcile(client)
            replicator.fetch_all_pending(client)
            caught_up = not replicator.sync.pending
            steps.append(
                "caught up with the old primary"
                if caught_up
                else f"{len(replicator.sync.pending)} repositories could not be fetched"
            )
        except BulwarkError as exc:
            steps.append(f"could not finish catching up: {exc.message}")
    position = changelog.replication_position()
    missing = 0 if caught_up else max(0, progress.primary_seq - position)
    pending = len(replicator.sync.pending) if client is not None and fenced else progress.repos_pending

    # 4. Raise the epoch and take writes.
    ha_state.save(
        store,
        ha_state.HAState(role=NodeRole.HA_PRIMARY, epoch=new_epoch, primary_url=None, primary_id=None),
    )
    steps.append(f"this node is now the primary at epoch {new_epoch}")
    return PromoteReport(new_epoch, fenced, fence_detail, caught_up, missing, pending, steps)
