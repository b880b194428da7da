"""Which snapshots ``prune`` keeps, and deleting the rest.

The decision is a pure function of the snapshot ids and what is known of each, so
every rule can be checked on its own; ``prune`` only gathers those facts under the
directory's lock and deletes what the decision names.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from bulwark.backup.snapshots import BackupDir, LockWaiting
from bulwark.errors import InvalidInput


@dataclass(frozen=True)
class Retention:
    doomed: list[str]  # oldest first
    newest_verified: str | None  # the newest complete snapshot whose last verify passed; never doomed
    beyond_keep: bool  # whether that one is kept only for having verified, past the newest ``keep``


def decide_retention(
    ids: list[str], complete: set[str], keep: int, current: str | None, newest_verified: str | None
) -> Retention:
    """What ``prune --keep`` deletes, given every snapshot id oldest first: complete snapshots
    beyond the newest ``keep``, and incomplete ones older than the newest complete one (a newer
    one may still be being written). Never ``current``'s target, and never the newest snapshot
    that verified: all the newer ones may be damaged, and then it is the last one known good."""
    if keep < 1:
        raise InvalidInput("--keep must be at least 1: the newest complete snapshot is always kept")
    done = [i for i in ids if i in complete]
    kept = set(done[-keep:])
    newest_complete = ids.index(done[-1]) if done else -1
    doomed = [
        i for n, i in enumerate(ids)
        if i != current and i not in kept and i != newest_verified and (i in complete or n < newest_complete)
    ]
    beyond = newest_verified is not None and newest_verified not in kept and newest_verified != current
    return Retention(doomed, newest_verified, beyond)


def plan(backup: BackupDir, keep: int) -> Retention:
    """The retention decision for the directory as it is now."""
    snapshots = backup.snapshots()
    complete = [s for s in snapshots if s.complete]
    verified = [s.id for s in complete if (v := s.verification()) is not None and v.ok]
    return decide_retention(
        [s.id for s in snapshots], {s.id for s in complete}, keep, backup.current_id(),
        verified[-1] if verified else None,
    )


@dataclass(frozen=True)
class Pruned:
    deleted: list[str]
    retention: Retention


def prune(backup: BackupDir, keep: int, *, wait: float = 0.0, on_wait: LockWaiting | None = None) -> Pruned:
    """Delete what retention does not keep, holding the lock: no ``verify`` or ``restore`` is
    reading a snapshot this deletes, and no ``create`` is linking from it."""
    with backup.locked("prune", wait=wait, on_wait=on_wait):
        # Leftovers of a deletion that was interrupted.
        for leftover in backup.snapshots_dir.glob(".deleting-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        retention = plan(backup, keep)
        by_id = {s.id: s for s in backup.snapshots()}
        for snapshot_id in retention.doomed:
            backup.delete(by_id[snapshot_id])
        return Pruned(retention.doomed, retention)
