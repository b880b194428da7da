"""Repairing this node's replica of a repository from an up-to-date one on another node.

The reconciler asks for it (``POST /internal/cluster/repos/<id>/sync``); the work runs here,
under the repository's cluster lock, so no push of the repository runs on any node meanwhile.
That is what makes it safe to clear what a killed git left in the copy first: a ref lock of a
push cut off by a crash, or of a prepared update whose node died, would otherwise make every
repair fail with "cannot lock ref ... File exists".

An incremental repair fetches what differs. A rebuild deletes the copy and fetches all of it:
the reconciler asks for one when incremental repairs of a replica keep failing (a corrupt
object, a damaged config), so a replica is never left outdated for good.
"""

from __future__ import annotations

import enum
import logging
from typing import TYPE_CHECKING

from bulwark.cluster import state
from bulwark.cluster.client import git_url
from bulwark.cluster.state import Placement
from bulwark.errors import Conflict, GitError, InvalidInput, NotFound
from bulwark.git import leftovers

if TYPE_CHECKING:
    from bulwark.cluster.replicated_git import ClusterGit
    from bulwark.cluster.runtime import ClusterRuntime

log = logging.getLogger("bulwark.cluster")


class RepairMode(enum.Enum):
    INCREMENTAL = "incremental"  # fetch what differs into the copy there is
    REBUILD = "rebuild"  # delete the copy, then fetch everything


def mode_for(rebuild_asked: bool, config_error: str | None) -> RepairMode:
    """A copy whose config does not parse cannot be fetched into: rebuild it whatever was asked."""
    return RepairMode.REBUILD if rebuild_asked or config_error else RepairMode.INCREMENTAL


def repair(rt: ClusterRuntime, git: ClusterGit, storage_id: str, source: str, *, rebuild: bool = False) -> str:
    """Make this node's copy identical to ``source``'s and record it as up to date; its checksum."""
    if source not in rt.urls().values() or source == rt.url:
        raise InvalidInput("the source must be another node of this cluster")
    with rt.locks.held(storage_id):
        placement = state.get_placement(rt.etcd, storage_id)
        if placement is None or rt.name not in placement.replicas:
            raise NotFound(f"this node holds no replica of {storage_id}")
        path = git.path(storage_id)
        config_error = None
        if path.is_dir():
            cleared = leftovers.clear(path, label=storage_id, git=git)
            sentence = cleared.sentence()
            if sentence:
                log.warning("cluster: %s", sentence)
            config_error = cleared.config_error
        mode = mode_for(rebuild, config_error)
        branch = rt.peers.head(source, storage_id)
        if mode is RepairMode.REBUILD:
            log.warning("cluster: rebuilding the replica of %s from %s from scratch", storage_id, source)
            git.local_remove(storage_id)
        git.local_init(storage_id, branch or "main")
        try:
            git.run(["--git-dir", str(path), "fetch", "--quiet", "--prune", "--no-tags", "--no-write-fetch-head",
                     git_url(source, storage_id), "+refs/*:refs/*"],
                    secret_config=rt.git_source_config(), timeout=3600)
        except GitError:
            # A source that died mid-fetch leaves the part of a pack received as tmp_pack_*. Under
            # the lock nothing else writes here, so it goes now, however young: a repair that
            # works soon after (from another source) would leave a file that young in place.
            sentence = leftovers.clear(path, label=storage_id, grace=0.0).sentence()
            if sentence:
                log.warning("cluster: %s", sentence)
            raise
        if branch:
            git.local_set_head(storage_id, branch)
        mine = git.local_checksum(storage_id)
        theirs = rt.peers.checksum(source, storage_id)
        if mine != theirs:
            raise Conflict(f"after fetching from {source}, the refs still differ")
        top = placement.generation

        def up_to_date(current: Placement) -> Placement:
            if rt.name not in current.replicas:
                raise NotFound(f"this node's replica of {storage_id} was dropped meanwhile")
            return current.with_replicas({**current.replicas, rt.name: max(top, current.generation, 0)})

        state.update_placement(rt.etcd, storage_id, up_to_date)
        how = "rebuilt" if mode is RepairMode.REBUILD else "repaired"
        log.info("cluster: replica of %s %s from %s (checksum %s)", storage_id, how, source,
                 mine[:12] if mine else "")
        return mine or ""
