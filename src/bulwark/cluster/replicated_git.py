"""The git runner of a cluster node: repository-wide operations go to every replica.

The services call ``init_bare``, ``remove``, ``set_head`` and ``refs`` without knowing
the mode. Here, creating a repository places it on RF nodes (recorded in etcd first,
so a half-created repository is one the reconciler finishes, never one nobody knows
of), removing one drops its placement and its copies, and reads go to an up-to-date
replica. Everything else (the git data path) is routed by the HTTP layer.
"""

from __future__ import annotations

import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import anyio.from_thread

from bulwark.cluster import keys, state
from bulwark.cluster import placement as placing
from bulwark.cluster.state import BUILDING, Placement
from bulwark.errors import BulwarkError, Unavailable
from bulwark.git.model import Ref
from bulwark.git.runner import GitRunner
from bulwark.roles import Traffic

if TYPE_CHECKING:
    from bulwark.cluster.runtime import ClusterRuntime

log = logging.getLogger("bulwark.cluster")


class ClusterGit(GitRunner):
    def __init__(self, root: Path, *, git: str = "git", advert_cache_bytes: int = 64 * 1024**2) -> None:
        super().__init__(root, git=git, advert_cache_bytes=advert_cache_bytes)
        self.runtime: ClusterRuntime | None = None

    def _rt(self) -> ClusterRuntime:
        if self.runtime is None:
            raise Unavailable("the cluster runtime is not ready")
        return self.runtime

    # -- repository lifecycle across replicas ---------------------------------------------------

    def init_bare(self, storage_id: str, default_branch: str) -> Path:
        rt = self._rt()
        # The node's cached view (at most half a second old): a node that died since is given a
        # replica all the same, which is marked BUILDING below and made by the reconciler.
        snap = rt.snapshot()
        rf = snap.config.effective_rf()
        # The snapshot has no placements: the counts to balance by come apart, kept for a while.
        nodes = placing.choose_nodes(snap, rf, extra=rt.replica_counts())
        if not nodes:
            raise Unavailable("no live storage node can take a new repository")
        # Generation 0 for every replica; one that cannot be created now is set to BUILDING below.
        # The lock keeps the checksum verifier away from copies that are still being made; it is
        # taken in the transaction that writes the placement.
        fresh = Placement(storage_id, {n: 0 for n in nodes})
        token = rt.locks.try_create(storage_id, keys.placement(storage_id), fresh.to_json())
        placed = fresh
        if token is None:  # the lock is held, or the placement exists (a racing creator): wait, then look
            token = rt.locks.acquire(storage_id, 30.0)
            placed = state.create_placement(rt.etcd, fresh)
        try:
            rt.note_placed(placed.replicas)
            self._create_copies(rt, placed, default_branch)
        finally:
            with contextlib.suppress(Unavailable):  # the lease drops it anyway
                rt.locks.release(storage_id, token)
        return self.path(storage_id)

    def _create_copies(self, rt: ClusterRuntime, placed: Placement, default_branch: str) -> None:
        storage_id = placed.storage_id
        urls = rt.urls()

        def create(node: str) -> str | None:
            """The node, if its copy could not be made."""
            try:
                if node == rt.name:
                    if not GitRunner.exists(self, storage_id):
                        GitRunner.init_bare(self, storage_id, default_branch)
                else:
                    rt.peers.init(urls.get(node, ""), storage_id, default_branch)
            except BulwarkError as exc:
                log.warning("could not create replica of %s on %s: %s", storage_id, node, exc)
                return node
            return None

        # All copies at once: a create waits for the slowest node, not for the sum of them.
        with ThreadPoolExecutor(max_workers=len(placed.replicas) or 1) as pool:
            failed = [node for node in pool.map(create, placed.replicas) if node is not None]
        if failed:
            state.update_placement(
                rt.etcd, storage_id,
                lambda p: p.with_replicas({n: (BUILDING if n in failed else g) for n, g in p.replicas.items()}),
            )

    def remove(self, storage_id: str) -> None:
        rt = self._rt()
        current = state.get_placement(rt.etcd, storage_id)
        state.delete_placement(rt.etcd, storage_id)
        rt.etcd.delete(keys.intent(storage_id))  # nothing left to settle
        urls = rt.urls()
        for node in (current.replicas if current else {}):
            try:
                if node == rt.name:
                    super().remove(storage_id)
                else:
                    rt.peers.remove(urls.get(node, ""), storage_id)
            except BulwarkError as exc:
                log.warning("could not remove the replica of %s on %s: %s", storage_id, node, exc)
        super().remove(storage_id)

    def set_head(self, storage_id: str, branch: str) -> None:
        rt = self._rt()
        current = state.get_placement(rt.etcd, storage_id)
        urls = rt.urls()
        alive = rt.alive()
        for node in (current.replicas if current else {}):
            if node == rt.name:
                super().set_head(storage_id, branch)
            elif node in alive:
                try:
                    rt.peers.set_head(urls[node], storage_id, branch)
                except BulwarkError as exc:
                    log.warning("could not set HEAD of %s on %s: %s", storage_id, node, exc)

    def refs(self, storage_id: str, *patterns: str) -> list[Ref]:
        rt = self.runtime
        if rt is None:
            return super().refs(storage_id, *patterns)
        route = rt.route(storage_id, Traffic.READ)
        if route is None:
            raise Unavailable("no up-to-date replica of this repository is reachable")
        if route.local:
            return super().refs(storage_id, *patterns)
        return [Ref(name=r["name"], oid=r["oid"], type=r["type"]) for r in rt.peers.refs(route.url, storage_id,
                                                                                           patterns)]

    def update_ref(self, storage_id: str, ref: str, new: str, old: str | None = None) -> None:
        args = ["update-ref", "--no-deref", ref, new] + ([old] if old is not None else [])
        self._replicated(storage_id, args)

    def delete_ref(self, storage_id: str, ref: str, old: str | None = None) -> None:
        args = ["update-ref", "--no-deref", "-d", ref] + ([old] if old is not None else [])
        self._replicated(storage_id, args)

    def _replicated(self, storage_id: str, args: list[str]) -> None:
        """A ref update made here (the API's), voted on by the replicas like a push.

        Runs in a worker thread; the push path's coordinator lives on the event loop, where
        git's hook reaches it through this node's HTTP endpoint.
        """
        rt = self._rt()
        push = anyio.from_thread.run(rt.coordinator.begin, storage_id)
        try:
            config, env = rt.hook_setup(push.txn)
            self.run(["--git-dir", str(self.path(storage_id)), *args], secret_config=config, extra_env=env)
        finally:
            self.refs_changed(storage_id)
            outcome = anyio.from_thread.run(rt.coordinator.finish, push)
        if not outcome.acknowledged:
            raise Unavailable(outcome.message)

    # -- this node's own copies (for the internal endpoints) ------------------------------------

    def local_checksum(self, storage_id: str) -> str | None:
        return GitRunner.ref_checksum(self, storage_id) if super().exists(storage_id) else None

    def local_init(self, storage_id: str, default_branch: str) -> None:
        if not super().exists(storage_id):
            super().init_bare(storage_id, default_branch)

    def local_remove(self, storage_id: str) -> None:
        super().remove(storage_id)

    def local_set_head(self, storage_id: str, branch: str) -> None:
        super().set_head(storage_id, branch)
