"""Pure decisions of HA: how healthy a stream is, and whether a node must fence itself."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from bulwark.ha.state import Progress


class Level(enum.IntEnum):
    """Nagios levels; the value is the exit code."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


@dataclass(frozen=True)
class Thresholds:
    warning_lag: float = 30.0  # seconds behind the primary
    critical_lag: float = 300.0
    warning_pending: int = 10  # repositories waiting to be fetched
    critical_pending: int = 100


@dataclass(frozen=True)
class StreamHealth:
    name: str
    level: Level
    detail: str


@dataclass(frozen=True)
class ReplicaHealth:
    metadata: StreamHealth
    repositories: StreamHealth
    lag_seconds: float
    lag_changes: int

    @property
    def level(self) -> Level:
        return max(self.metadata.level, self.repositories.level)


def metadata_lag(progress: Progress, now: datetime) -> tuple[float, int]:
    """(seconds, changes) this replica is behind, as of its last contact with the primary."""
    changes = max(0, progress.primary_seq - progress.position)
    if changes == 0 and progress.caught_up_at is not None:
        # Caught up at the last contact: what may have happened since is unknown, so the
        # lag is the silence since then, which is ~0 while the stream is alive.
        last = progress.last_contact or progress.caught_up_at
        return max(0.0, (now - last).total_seconds()), 0
    since = progress.caught_up_at or progress.last_contact
    return (max(0.0, (now - since).total_seconds()) if since else float("inf")), changes


def replica_health(progress: Progress, *, replicating: bool, now: datetime, limits: Thresholds) -> ReplicaHealth:
    seconds, changes = metadata_lag(progress, now)
    if not replicating:
        meta = StreamHealth("metadata", Level.CRITICAL, "replication is stopped (run 'bulwark repl start')")
    elif progress.last_contact is None:
        meta = StreamHealth("metadata", Level.CRITICAL, "has not reached the primary yet")
    elif seconds >= limits.critical_lag:
        meta = StreamHealth("metadata", Level.CRITICAL, _lag_text(seconds, changes, progress.last_error))
    elif seconds >= limits.warning_lag:
        meta = StreamHealth("metadata", Level.WARNING, _lag_text(seconds, changes, progress.last_error))
    else:
        meta = StreamHealth("metadata", Level.OK, _lag_text(seconds, changes, None))

    pending, faulty = progress.repos_pending, len(progress.repos_faulty)
    counts = f"{progress.repos_in_sync}/{progress.repos_total} in sync, {pending} pending, {faulty} faulty"
    if not replicating:
        repos = StreamHealth("repositories", Level.CRITICAL, f"replication is stopped; {counts}")
    elif faulty or pending >= limits.critical_pending:
        repos = StreamHealth("repositories", Level.CRITICAL, counts)
    elif pending >= limits.warning_pending:
        repos = StreamHealth("repositories", Level.WARNING, counts)
    else:
        repos = StreamHealth("repositories", Level.OK, counts)
    return ReplicaHealth(meta, repos, seconds, changes)


def _lag_text(seconds: float, changes: int, error: str | None) -> str:
    text = f"{seconds:.1f}s and {changes} changes behind the primary"
    return f"{text}; last error: {error}" if error else text


class FenceDecision(enum.Enum):
    KEEP_SERVING = "keep serving"
    FENCE = "fence"


def decide_fencing(own_epoch: int, peer_epochs: dict[str, int]) -> tuple[FenceDecision, str]:
    """A primary that sees any peer at a higher epoch was superseded: it must stop taking writes."""
    newer = {peer: epoch for peer, epoch in peer_epochs.items() if epoch > own_epoch}
    if not newer:
        return FenceDecision.KEEP_SERVING, f"no peer knows an epoch above {own_epoch}"
    peer, epoch = max(newer.items(), key=lambda item: item[1])
    return FenceDecision.FENCE, f"{peer} is primary at epoch {epoch}, above this node's {own_epoch}"
