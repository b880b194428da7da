"""A consistent point: the metadata and every repository's refs at one moment, from a live node.

On a standalone or HA node the ref barrier (``backup/barrier.py``) holds ref updates for
the moment the refs are read; in a cluster an etcd key does the same for every node
(leaders wait for it before taking a repository's lock, and the point is read only once
no push holds one). Metadata is read twice, before and after the refs; if anything but
last-use times changed in between, the point is taken again, so the metadata in a point
is what it was during the whole reading.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from bulwark.backup import barrier
from bulwark.backup.metadata import export
from bulwark.errors import Conflict, GitError, NotFound, Unavailable
from bulwark.git.model import Ref, checksum_of, read_ref_files
from bulwark.node import Node
from bulwark.roles import NodeRole

FORMAT = 1
ATTEMPTS = 5


def take_point(node: Node, *, allow_replica: bool = False) -> dict[str, Any]:
    if node.role is NodeRole.HA_REPLICA and not allow_replica:
        raise Conflict(
            "this node is an HA replica: its data may lag behind the primary. Back up the primary, or allow a "
            "replica explicitly (--allow-replica)"
        )
    for _ in range(ATTEMPTS):
        with _no_ref_updates(node):
            before = export(node.store)
            repositories = [_repository(node, r, before) for r in before["repositories"]]
            after = export(node.store)
        if _stable(before) == _stable(after) and None not in repositories:
            return {
                "format": FORMAT,
                "mode": node.role.value,
                "instance": node.settings.base_url,
                "taken_at": datetime.now(UTC).isoformat(),
                "metadata": before,
                "repositories": repositories,
            }
    raise Unavailable("the metadata kept changing while the backup read it; try again")


def _stable(document: dict[str, Any]) -> dict[str, Any]:
    """The metadata without what every request or push touches (last use, push times)."""
    tokens = [{k: v for k, v in t.items() if k != "last_used_at"} for t in document["tokens"]]
    repos = [{k: v for k, v in r.items() if k != "pushed_at"} for r in document["repositories"]]
    return {**document, "tokens": tokens, "repositories": repos}


def _repository(node: Node, record: dict[str, Any], document: dict[str, Any]) -> dict[str, Any] | None:
    owner = next((a["login"] for a in document["accounts"] if a["id"] == record["owner_id"]), None)
    storage_id = record["storage_id"]
    try:
        refs, head = _refs_and_head(node, storage_id)
    except (NotFound, GitError):
        return None  # deleted while we read: take the point again
    return {
        "storage_id": storage_id,
        "owner": owner,
        "name": record["name"],
        "head": head,
        "refs": {r.name: r.oid for r in refs},
        "checksum": checksum_of(refs),
    }


def _refs_and_head(node: Node, storage_id: str) -> tuple[list[Ref], str | None]:
    try:
        remote = node.cluster.remote_refs_and_head(storage_id) if node.cluster is not None else None
    except Unavailable as exc:
        raise Unavailable(f"{exc.message}; the backup cannot include it") from exc
    return remote if remote is not None else _local_refs_and_head(node, storage_id)


def _local_refs_and_head(node: Node, storage_id: str) -> tuple[list[Ref], str | None]:
    """From the files when they are plain (no ref moves while the barrier is up): two git processes
    fewer per repository, which is most of a point's time on a node with thousands of them."""
    files = read_ref_files(node.git.path(storage_id))
    if files is not None:
        head, refs = files
        branch = head.removeprefix("refs/heads/") if head.startswith("refs/heads/") else None
        return [Ref(name=name, oid=oid, type="") for name, oid in sorted(refs.items())], branch
    return node.git.local_refs(storage_id), node.git.local_head(storage_id)


@contextlib.contextmanager
def _no_ref_updates(node: Node, timeout: float = 60.0) -> Iterator[None]:
    if node.cluster is not None:
        with node.cluster.backup_barrier(timeout):
            yield
        return
    with barrier.held(node.settings.data_dir, timeout):
        yield
