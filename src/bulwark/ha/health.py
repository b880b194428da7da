"""Pure decisions of HA: how healthy a stream is, and whether a node must fence itself."""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from bulwark.ha.state import PeerCheck, Progress
from bulwark.levels import Level
from bulwark.roles import NodeRole


@dataclass(frozen=True)
class Thresholds:
    warning_lag: float = 30.0  # seconds behind the primary
    critical_lag: float = 300.0
    warning_pending: int = 10  # repositories waiting to be fetched
    critical_pending: int = 100
    primary_timeout: float = 10.0  # seconds without an answer from the primary before it counts as down


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


# -- peers: is the primary there, can the primary reach its replicas -----------------------------

# A primary asks its replicas every few seconds; a check older than this was not made by a running server.
REPLICA_CHECK_STALE = 30.0


def observe(check: PeerCheck, answer: dict[str, Any] | str, now: datetime) -> PeerCheck:
    """``check`` after one ask: the peer's ``/status`` body, or why it could not be had."""
    if isinstance(answer, str):
        return replace(check, checked_at=now, error=answer, failing_since=check.failing_since or now)
    epoch = answer.get("epoch")
    return replace(check, checked_at=now, answered_at=now, failing_since=None, error=None,
                   role=str(answer.get("role") or "") or None, fenced=bool(answer.get("fenced")),
                   epoch=epoch if isinstance(epoch, int) else None)


class PrimaryState(enum.StrEnum):
    UP = "up"  # it answered its last ask, as a serving primary
    NOT_PRIMARY = "not-primary"  # it answers, but is fenced or no longer a primary
    LATE = "late"  # its last asks went unanswered, for less than the timeout (or none was made yet)
    DOWN = "down"  # no answer for the timeout or longer
    UNCHECKED = "unchecked"  # nobody asked it lately: this node's server is not running the check


@dataclass(frozen=True)
class PrimaryHealth:
    state: PrimaryState
    level: Level
    detail: str
    silent_seconds: float | None  # since its last answer; None when it never answered


def judge_primary(check: PeerCheck | None, now: datetime, timeout: float) -> PrimaryHealth:
    """How a replica's primary is doing, as of ``now``: judged when read, so a primary that stopped
    answering shows down ``timeout`` seconds after its last answer, whenever the next ask is made."""
    if check is None:
        return PrimaryHealth(PrimaryState.UNCHECKED, Level.WARNING,
                             "nobody has asked the primary yet: is this node's server ('bulwark serve') running?", None)
    last_answer = check.answered_at
    silent = (now - last_answer).total_seconds() if last_answer else None
    asked = check.checked_at or check.since
    if (now - asked).total_seconds() > timeout:
        return PrimaryHealth(PrimaryState.UNCHECKED, Level.WARNING,
                             f"nobody has asked the primary since {asked.isoformat(timespec='seconds')}: "
                             "is this node's server ('bulwark serve') running?", silent)
    if check.checked_at is not None and check.error is None:
        if check.role != NodeRole.HA_PRIMARY or check.fenced:
            what = "fenced" if check.fenced else f"{check.role or 'unknown'}, not a primary"
            return PrimaryHealth(PrimaryState.NOT_PRIMARY, Level.WARNING,
                                 f"{check.url} answers but is {what}: set this replica up against the new "
                                 "primary ('bulwark repl setup')", silent)
        return PrimaryHealth(PrimaryState.UP, Level.OK, f"{check.url} answers", silent)
    # Counted from this server's first ask at the earliest, so a restart does not report a primary down
    # before it was given the timeout to answer.
    reference = max(last_answer, check.since) if last_answer else check.since
    quiet = max(0.0, (now - reference).total_seconds())
    why = f" ({check.error})" if check.error else ""
    if quiet >= timeout:
        return PrimaryHealth(PrimaryState.DOWN, Level.CRITICAL,
                             f"{check.url} has not answered for {quiet:.0f}s{why}: if it does not come back, "
                             "promote this replica ('bulwark repl promote')", silent)
    if check.checked_at is None:
        return PrimaryHealth(PrimaryState.LATE, Level.OK, f"{check.url} not asked yet", silent)
    return PrimaryHealth(PrimaryState.LATE, Level.OK,
                         f"{check.url} has not answered for {quiet:.0f}s{why}; down after {timeout:g}s", silent)


def judge_reach(check: PeerCheck | None, now: datetime) -> tuple[bool | None, str]:
    """Whether a primary reaches a replica (None: not checked lately), and a sentence saying so."""
    if check is None or check.checked_at is None:
        return None, "not checked yet"
    if (now - check.checked_at).total_seconds() > REPLICA_CHECK_STALE:
        return None, (f"not checked since {check.checked_at.isoformat(timespec='seconds')}: "
                      "is this node's server running?")
    if check.error is None:
        return True, "reachable"
    since = check.failing_since or check.checked_at
    return False, f"cannot reach it at {check.url} since {since.isoformat(timespec='seconds')}: {check.error}"
