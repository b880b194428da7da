"""What an HA primary does for its replicas: registers them (issuing each a credential),
authenticates and epoch-checks their calls, records how far each has read, and is fenced by a
promoted one. ``http/replication.py`` carries these over HTTP; nothing here knows of requests.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import replace
from typing import Any

from bulwark.clock import Clock
from bulwark.errors import Forbidden, InvalidInput, NotFound, PeerUnreachable, StaleEpoch, Unauthenticated, Unavailable
from bulwark.ha import state as ha_state
from bulwark.ha.client import EPOCH_HEADER, peer_status
from bulwark.ha.setup import FENCED_PREFIX
from bulwark.ha.state import ReplicaRecord
from bulwark.models import MaintenanceState
from bulwark.roles import NodeRole
from bulwark.security import hash_token
from bulwark.store import Store

CREDENTIAL_PREFIX = "bwr_"
# Seconds a primary gives a registering replica to answer at the URL it advertises.
CALL_BACK_TIMEOUT = 5.0
# Replica records are read-modify-written as one setting; one writer at a time.
_replicas_lock = threading.Lock()


def replica_by_credential(store: Store, authorization: str) -> ReplicaRecord:
    """The replica whose credential an ``Authorization`` header carries (no epoch or role checks)."""
    scheme, _, secret = authorization.partition(" ")
    if scheme.lower() != "bearer" or not secret.startswith(CREDENTIAL_PREFIX):
        raise Unauthenticated("replication endpoints need a replica's credential (Authorization: Bearer bwr_...)")
    digest = hash_token(secret.strip())
    record = next((r for r in ha_state.load_replicas(store) if r.credential_hash == digest), None)
    if record is None:
        raise Unauthenticated("unknown or revoked replication credential")
    return record


def authenticated_replica(store: Store, authorization: str, *, claimed: str | None,
                          raw_epoch: str | None) -> ReplicaRecord:
    """The calling replica, authenticated by its credential and checked for epoch."""
    record = replica_by_credential(store, authorization)
    if claimed is not None and claimed != record.node_id:
        raise Forbidden(f"this credential belongs to node {record.node_id}, not {claimed}")
    ha = ha_state.load(store)
    if raw_epoch is not None:
        try:
            epoch = int(raw_epoch)
        except ValueError:
            raise InvalidInput(f"{EPOCH_HEADER} must be an integer") from None
        if epoch > ha.epoch:
            # The caller knows a newer epoch: someone was promoted over us. Stop taking writes.
            reason = f"node {record.node_id} reports epoch {epoch}, above this node's {ha.epoch}"
            ha_state.save(store, ha.with_(fenced=reason))
            raise StaleEpoch(f"this node was superseded ({reason}); it no longer serves replication")
        if epoch < ha.epoch:
            raise StaleEpoch(f"wrong epoch {epoch}: this primary is at epoch {ha.epoch}; set the replica up again")
    if ha.role != NodeRole.HA_PRIMARY or ha.fenced:
        raise Unavailable(f"this node is not a serving primary ({ha.fenced or ha.role})")
    return record


def touch(store: Store, clock: Clock, record: ReplicaRecord, position: int | None) -> None:
    """Record that ``record`` was seen now, having read up to ``position``."""
    with _replicas_lock:
        replicas = ha_state.load_replicas(store)
        now = clock.now().isoformat()
        updated = [
            replace(r, last_seen=now, position=position if position is not None else r.position)
            if r.node_id == record.node_id
            else r
            for r in replicas
        ]
        ha_state.save_replicas(store, updated)


def register(store: Store, clock: Clock, node_id: str, url: str) -> dict[str, Any]:
    """Register (or register again) the replica ``node_id`` at ``url``; its new credential, shown once."""
    if not node_id.isalnum() or len(node_id) > 64:
        raise InvalidInput("node_id must be 1-64 letters or digits", field="node_id")
    if not url.startswith(("http://", "https://")):
        raise InvalidInput("url must be an http(s) URL", field="url")
    ha = ha_state.load(store)
    if ha.role == NodeRole.HA_REPLICA:
        raise InvalidInput(f"this node is a replica of {ha.primary_url}; register with the primary")
    if ha.fenced:
        raise Unavailable(f"this node is fenced ({ha.fenced}); register with the current primary")
    if node_id == ha_state.node_id(store):
        raise InvalidInput("a node cannot replicate from itself")
    call_back(url, node_id)
    if ha.role != NodeRole.HA_PRIMARY:
        ha = ha.with_(role=NodeRole.HA_PRIMARY, epoch=max(1, ha.epoch))
        ha_state.save(store, ha)
    credential = CREDENTIAL_PREFIX + secrets.token_hex(20)
    record = ReplicaRecord(
        node_id=node_id,
        url=url.rstrip("/"),
        credential_hash=hash_token(credential),
        created_at=clock.now().isoformat(),
    )
    with _replicas_lock:
        others = [r for r in ha_state.load_replicas(store) if r.node_id != node_id]
        ha_state.save_replicas(store, [*others, record])
    return {"credential": credential, "primary_id": ha_state.node_id(store), "epoch": ha.epoch}


def call_back(url: str, node_id: str) -> None:
    """Refuse a replica this primary cannot reach at ``url``: its epoch check could never see it
    promoted, and the status page could never ask it."""
    try:
        answer = peer_status(url, CALL_BACK_TIMEOUT)
    except PeerUnreachable as exc:
        raise InvalidInput(
            f"this primary cannot reach the replica at its advertised URL {url} ({exc.message}); start the "
            "replica with 'bulwark serve', or pass the URL this primary reaches it by with --advertise-url",
            field="url",
        ) from None
    other = answer.get("node_id")
    if isinstance(other, str) and other != node_id:
        raise InvalidInput(
            f"the advertised URL {url} is node {other}'s, not the replica's ({node_id}); pass the replica's own "
            "URL with --advertise-url",
            field="url",
        )


def remove(store: Store, node_id: str) -> None:
    with _replicas_lock:
        replicas = ha_state.load_replicas(store)
        kept = [r for r in replicas if r.node_id != node_id]
        if len(kept) == len(replicas):
            raise NotFound(f"no replica {node_id!r}")
        ha_state.save_replicas(store, kept)


def fence(store: Store, clock: Clock, record: ReplicaRecord, new_epoch: int, by: str) -> dict[str, Any]:
    """A replica being promoted at ``new_epoch`` tells this primary to stop taking writes."""
    ha = ha_state.load(store)
    if new_epoch <= ha.epoch:
        raise StaleEpoch(f"epoch {new_epoch} is not above this node's {ha.epoch}")
    reason = f"node {by or record.node_id} was promoted to primary at epoch {new_epoch}"
    ha_state.save(store, ha.with_(fenced=reason))
    store.set_maintenance(MaintenanceState(enabled=True, message=f"{FENCED_PREFIX} {reason}", since=clock.now()))
    return {"fenced": True, "reason": reason}
