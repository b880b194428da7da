"""The HA state of a node, kept in the store's node-local settings.

Settings are never part of the change stream, so each node keeps its own.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any

from bulwark.roles import NodeRole
from bulwark.store import Store

_KEY = "ha.state"
_NODE_ID = "node.id"
_PROGRESS = "ha.progress"
_REPLICAS = "ha.replicas"
_PRIMARY_CHECK = "ha.primary_check"
_REPLICA_CHECKS = "ha.replica_checks"


def node_id(store: Store) -> str:
    """This node's stable id, made on first use."""
    value = store.get_setting(_NODE_ID)
    if value is None:
        value = uuid.uuid4().hex[:12]
        store.set_setting(_NODE_ID, value)
    return value


@dataclass(frozen=True)
class HAState:
    """What this node is in an HA pair. A fresh node is standalone at epoch 0."""

    role: NodeRole = NodeRole.STANDALONE
    epoch: int = 0
    primary_url: str | None = None  # on a replica: where it replicates from
    primary_id: str | None = None
    credential: str | None = None  # on a replica: its secret for the primary's endpoints
    replicating: bool = False  # on a replica: `repl start` / `repl stop`
    fenced: str | None = None  # why this node refuses writes (a newer epoch exists), or None
    promoting: int | None = None  # on a replica: the process id of a `repl promote` under way

    def __post_init__(self) -> None:
        # Stored as its text (settings are JSON): made the enum again when loaded.
        object.__setattr__(self, "role", NodeRole(self.role))

    def with_(self, **changes: Any) -> HAState:
        return replace(self, **changes)


def load(store: Store) -> HAState:
    raw = store.get_setting(_KEY)
    return HAState(**json.loads(raw)) if raw else HAState()


def save(store: Store, state: HAState) -> None:
    store.set_setting(_KEY, json.dumps(asdict(state)))


@dataclass(frozen=True)
class Progress:
    """The replica's view of its stream, written by the running replicator for `repl status`."""

    position: int = 0
    primary_seq: int = 0  # the primary's newest seq at the last contact
    last_contact: datetime | None = None
    caught_up_at: datetime | None = None  # last time position == primary_seq
    last_error: str | None = None
    repos_total: int = 0
    repos_in_sync: int = 0
    repos_pending: int = 0
    repos_faulty: list[str] = field(default_factory=list)
    last_reconcile: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("last_contact", "caught_up_at", "last_reconcile"):
            value = data[key]
            data[key] = value.isoformat() if value else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Progress:
        data = dict(data)
        for key in ("last_contact", "caught_up_at", "last_reconcile"):
            if data.get(key):
                data[key] = datetime.fromisoformat(data[key])
        return cls(**data)


def load_progress(store: Store) -> Progress:
    raw = store.get_setting(_PROGRESS)
    return Progress.from_json(json.loads(raw)) if raw else Progress()


def save_progress(store: Store, progress: Progress) -> None:
    store.set_setting(_PROGRESS, json.dumps(progress.to_json()))


@dataclass(frozen=True)
class ReplicaRecord:
    """The primary's record of one replica."""

    node_id: str
    url: str
    credential_hash: str
    created_at: str
    last_seen: str | None = None
    position: int = 0  # the last seq this replica asked past, i.e. has applied
    epoch: int = 0  # the epoch the replica reported


def load_replicas(store: Store) -> list[ReplicaRecord]:
    raw = store.get_setting(_REPLICAS)
    return [ReplicaRecord(**r) for r in json.loads(raw)] if raw else []


def save_replicas(store: Store, replicas: list[ReplicaRecord]) -> None:
    store.set_setting(_REPLICAS, json.dumps([asdict(r) for r in replicas]) if replicas else None)


@dataclass(frozen=True)
class PeerCheck:
    """What this node last learned by asking a peer's ``/status``: a replica asks its primary,
    a primary its replicas (its epoch check). Written by the running server, read by commands."""

    url: str
    since: datetime  # when the running server began asking this URL
    checked_at: datetime | None = None  # the last ask, answered or not
    answered_at: datetime | None = None  # the last answer (possibly before ``since``, by an earlier run)
    failing_since: datetime | None = None  # the first unanswered ask after the last answer
    error: str | None = None  # why the last ask got no answer; None when it got one
    role: str | None = None  # as the last answer said
    fenced: bool = False
    epoch: int | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in _PEER_TIMES:
            data[key] = data[key].isoformat() if data[key] else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PeerCheck:
        data = dict(data)
        for key in _PEER_TIMES:
            data[key] = datetime.fromisoformat(data[key]) if data.get(key) else None
        return cls(**data)


_PEER_TIMES = ("since", "checked_at", "answered_at", "failing_since")


def load_primary_check(store: Store) -> PeerCheck | None:
    raw = store.get_setting(_PRIMARY_CHECK)
    return PeerCheck.from_json(json.loads(raw)) if raw else None


def save_primary_check(store: Store, check: PeerCheck | None) -> None:
    store.set_setting(_PRIMARY_CHECK, json.dumps(check.to_json()) if check else None)


def load_replica_checks(store: Store) -> dict[str, PeerCheck]:
    """The primary's checks of its replicas, by replica node id."""
    raw = store.get_setting(_REPLICA_CHECKS)
    return {k: PeerCheck.from_json(v) for k, v in json.loads(raw).items()} if raw else {}


def save_replica_checks(store: Store, checks: dict[str, PeerCheck]) -> None:
    store.set_setting(_REPLICA_CHECKS, json.dumps({k: v.to_json() for k, v in checks.items()}) if checks else None)
