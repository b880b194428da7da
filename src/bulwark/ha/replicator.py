"""The replica's loop: pull metadata changes, apply them, keep repositories in sync.

Each cycle follows one shape: take a snapshot of the state, decide, act, and
return a sentence saying what happened (logged, and asserted on by tests).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from bulwark.clock import Clock
from bulwark.errors import BulwarkError, GitError, StaleEpoch
from bulwark.git import leftovers
from bulwark.git.runner import GitRunner
from bulwark.ha import state as ha_state
from bulwark.ha.client import PrimaryClient
from bulwark.ha.state import HAState
from bulwark.roles import NodeRole
from bulwark.store import Store
from bulwark.store.changes import Change, ChangeLog, ChangeOp

log = logging.getLogger("bulwark.ha")

PUSH_EVENT = "push"
# A repository that failed this many fetches in a row counts as faulty.
FAULTY_AFTER = 3


@dataclass
class RepoSync:
    """Which repositories need a fetch, and which keep failing."""

    pending: dict[str, str | None] = field(default_factory=dict)  # storage id -> wanted checksum
    failures: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def want(self, storage_id: str, checksum: str | None = None) -> None:
        self.pending[storage_id] = checksum

    def done(self, storage_id: str) -> None:
        self.pending.pop(storage_id, None)
        self.failures.pop(storage_id, None)
        self.errors.pop(storage_id, None)

    def failed(self, storage_id: str, error: str) -> None:
        self.failures[storage_id] = self.failures.get(storage_id, 0) + 1
        self.errors[storage_id] = error

    @property
    def faulty(self) -> list[str]:
        return sorted(s for s, n in self.failures.items() if n >= FAULTY_AFTER)


class Replicator:
    """Runs on a replica. ``client_for`` builds a client for the current HA state."""

    def __init__(
        self,
        store: Store,
        log_: ChangeLog,
        git: GitRunner,
        clock: Clock,
        *,
        client_for: Callable[[HAState, str], PrimaryClient],
        wait: float = 2.0,
        batch: int = 500,
        reconcile_every: float = 60.0,
        verify_objects: bool = True,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        """``stop``, asked while a fetch runs: whether to give it up (replication was stopped)."""
        self.store = store
        self.changelog = log_
        self.git = git
        self.clock = clock
        self.client_for = client_for
        self.wait = wait
        self.batch = batch
        self.reconcile_every = timedelta(seconds=reconcile_every)
        self.verify_objects = verify_objects
        self.stop = stop
        self.sync = RepoSync()
        # Repositories where a fetch failed part-way and what it left could not be cleared yet
        # (a live process worked in them); tried again each cycle, whatever this node's role.
        self.untidy: set[str] = set()
        self._client: PrimaryClient | None = None
        self._client_key: tuple[str | None, str | None, int] | None = None
        self._last_reconcile: datetime | None = None
        self.failing = False
        self._progress = ha_state.load_progress(store)

    # -- the cycle -------------------------------------------------------------------

    def run_once(self) -> str:
        ha = ha_state.load(self.store)
        if ha.role != NodeRole.HA_REPLICA or ha.fenced:
            self._drop_client()
            return "not a replica: nothing to replicate"
        if not ha.replicating:
            return "replication is stopped"
        client = self._client_for(ha)
        try:
            applied, primary_seq = self._pull(client)
            reconciled = self._maybe_reconcile(client)
            fetched = self._fetch_pending(client)
        except StaleEpoch as exc:
            self._note(error=exc.message)
            return f"primary refused our epoch: {exc.message}"
        except BulwarkError as exc:
            self._note(error=exc.message)
            return f"replication failed: {exc.message}"
        self._note(error=None)
        parts = [f"applied {applied} changes (position {self.changelog.replication_position()} of {primary_seq})"]
        if fetched:
            parts.append(f"fetched {fetched} repositories")
        if reconciled is not None:
            parts.append(reconciled)
        return ", ".join(parts)

    def _client_for(self, ha: HAState) -> PrimaryClient:
        key = (ha.primary_url, ha.credential, ha.epoch)
        if self._client is None or key != self._client_key:
            self._drop_client()
            self._client = self.client_for(ha, ha_state.node_id(self.store))
            self._client_key = key
        return self._client

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None

    # -- metadata --------------------------------------------------------------------

    def _pull(self, client: PrimaryClient) -> tuple[int, int]:
        position = self.changelog.replication_position()
        # Long-poll only when nothing is waiting locally, so repository fetches are not delayed.
        wait = 0.0 if self.sync.pending else self.wait
        primary_seq, changes = client.changes(position, limit=self.batch, wait=wait)
        self.apply_batch(changes, client)
        now = self.clock.now()
        position = self.changelog.replication_position()
        progress = replace(self._progress, position=position, primary_seq=max(primary_seq, position), last_contact=now)
        if position >= primary_seq:
            progress = replace(progress, caught_up_at=now)
        self._progress = progress
        return len(changes), primary_seq

    def apply_batch(self, changes: list[Change], client: PrimaryClient) -> None:
        """Apply changes from the primary, fetching pushed repositories before their push events.

        A push event is applied only once the repository's data is here, so the
        position means "everything up to here is on this node": what a promotion
        keeps is exactly what the position says. A fetch that fails stops the batch
        before the event, to be retried.
        """
        # Segments of metadata changes followed by push events: a segment ends where a
        # metadata change follows a push event.
        segment: list[Change] = []
        for change in changes:
            if not _is_push(change) and segment and _is_push(segment[-1]):
                self._apply_segment(segment, client)
                segment = []
            segment.append(change)
        if segment:
            self._apply_segment(segment, client)

    def _apply_segment(self, changes: list[Change], client: PrimaryClient) -> None:
        """Metadata changes, then the push events that follow them."""
        rows = [c for c in changes if not _is_push(c)]
        pushes = [c for c in changes if _is_push(c)]
        if rows:
            doomed = self._storage_ids_deleted_by(rows)
            self.changelog.apply_changes(rows)
            self._after_apply(rows, doomed)
        if not pushes:
            return
        local = {r.storage_id for r in self.store.list_repos()}
        for storage_id in dict.fromkeys(str((c.row or {}).get("storage_id", "")) for c in pushes):
            if storage_id in local:
                try:
                    self.fetch(client, storage_id)
                except GitError as exc:
                    self.sync.failed(storage_id, exc.message)
                    raise
                self.sync.done(storage_id)
        self.changelog.apply_changes(pushes)

    def _storage_ids_deleted_by(self, changes: list[Change]) -> dict[int, str]:
        # A delete carries only the key, so look the storage id up before the row is gone.
        doomed = {}
        for change in changes:
            if change.table == "repositories" and change.op is ChangeOp.DELETE:
                repo = self.store.get_repo_by_id(int(change.key["id"]))
                if repo is not None:
                    doomed[repo.id] = repo.storage_id
        return doomed

    def _after_apply(self, changes: list[Change], doomed: dict[int, str]) -> None:
        for change in changes:
            if change.table == "repositories" and change.op is ChangeOp.UPSERT and change.row:
                self._ensure_repo(str(change.row["storage_id"]), str(change.row["default_branch"]))
            elif change.table == "repositories" and change.op is ChangeOp.DELETE:
                storage_id = doomed.get(int(change.key["id"]))
                if storage_id:
                    self.git.remove(storage_id)
                    self.sync.done(storage_id)

    def _ensure_repo(self, storage_id: str, default_branch: str) -> None:
        if not self.git.exists(storage_id):
            self.git.init_bare(storage_id, default_branch)
            self.sync.want(storage_id)
        elif self.git.head_branch(storage_id) != default_branch:
            try:
                self.git.set_head(storage_id, default_branch)
            except GitError as exc:
                log.warning("cannot set HEAD of %s: %s", storage_id, exc.message)

    # -- repositories ----------------------------------------------------------------

    def _fetch_pending(self, client: PrimaryClient, budget: float = 5.0) -> int:
        """Fetch pending repositories for up to ``budget`` seconds; return how many succeeded."""
        started = time.monotonic()
        fetched = 0
        for storage_id in list(self.sync.pending):
            if time.monotonic() - started > budget:
                break
            try:
                self.fetch(client, storage_id)
            except GitError as exc:
                self.sync.failed(storage_id, exc.message)
                log.warning("fetching %s failed: %s", storage_id, exc.message)
            else:
                self.sync.done(storage_id)
                fetched += 1
        return fetched

    def fetch_all_pending(self, client: PrimaryClient) -> int:
        return self._fetch_pending(client, budget=float("inf"))

    def fetch(self, client: PrimaryClient, storage_id: str) -> None:
        """Make the local copy's refs and objects equal the primary's (only what differs moves)."""
        repo = self.store.get_repo_by_storage_id(storage_id)
        if not self.git.exists(storage_id):
            self.git.init_bare(storage_id, repo.default_branch if repo else "main")
        try:
            self.git.run(
                [
                    "--git-dir", str(self.git.path(storage_id)),
                    "fetch", "--quiet", "--prune", "--force", "--no-write-fetch-head",
                    client.git_url(storage_id), "+refs/*:refs/*",
                ],
                timeout=3600,
                secret_config=client.git_config(),
                stop=self.stop,
            )
        except GitError:
            # A pack cut off (the primary died mid-fetch) stays as objects/pack/tmp_pack_*: git
            # does not remove it, and nothing else would on a replica that is then promoted.
            self.untidy.add(storage_id)
            self.tidy()
            raise

    def tidy(self) -> str | None:
        """Clear what failed fetches left in their repositories; what was cleared, if anything.

        This loop is a replica's only writer, so a file there that no live process owns is a
        dead git's, however young (the check for a live process is :func:`leftovers.clear`'s)."""
        said = []
        for storage_id in sorted(self.untidy):
            path = self.git.path(storage_id)
            with self.git.clearing:
                cleared = leftovers.clear(path, label=storage_id, grace=0.0)
            if cleared.skipped == leftovers.BUSY:
                continue
            self.untidy.discard(storage_id)
            sentence = cleared.sentence()
            if sentence:
                log.warning("ha: %s", sentence)
                said.append(sentence)
        return "; ".join(said) or None

    def _maybe_reconcile(self, client: PrimaryClient) -> str | None:
        now = self.clock.now()
        if self._last_reconcile is not None and now - self._last_reconcile < self.reconcile_every:
            return None
        self._last_reconcile = now
        return self.reconcile(client)

    def reconcile(self, client: PrimaryClient) -> str:
        """Compare every repository's ref checksum with the primary's; queue and repair differences."""
        theirs = client.checksums()
        local = {r.storage_id for r in self.store.list_repos()}
        differing = damaged = 0
        for storage_id in sorted(local):
            if storage_id not in theirs:
                continue  # created after the checksums were taken; the stream brings it
            ok, checksum = self._local_checksum(storage_id)
            if not ok:
                damaged += 1
                self._set_aside(storage_id)
                self.sync.want(storage_id, theirs[storage_id])
            elif checksum != theirs[storage_id]:
                differing += 1
                self.sync.want(storage_id, theirs[storage_id])
        self._progress = replace(self._progress, last_reconcile=self.clock.now())
        return f"reconciled {len(local)} repositories: {differing} differed, {damaged} damaged"

    def _local_checksum(self, storage_id: str) -> tuple[bool, str | None]:
        """(healthy, checksum). Missing or corrupt data is unhealthy."""
        if not self.git.exists(storage_id):
            return False, None
        try:
            checksum = self.git.ref_checksum(storage_id)
            if self.verify_objects:
                proc = self.git.run(
                    ["--git-dir", str(self.git.path(storage_id)), "fsck", "--connectivity-only", "--no-progress"],
                    check=False,
                    timeout=3600,
                )
                if proc.returncode != 0:
                    return False, None
        except BulwarkError:
            return False, None
        return True, checksum

    def _set_aside(self, storage_id: str) -> None:
        """Move a damaged copy out of the way so the next fetch rebuilds it whole."""
        path = self.git.path(storage_id)
        if path.exists():
            aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
            shutil.move(str(path), str(aside))
            log.warning("repository %s was damaged on this replica; moved to %s and refetching", storage_id, aside)

    # -- progress --------------------------------------------------------------------

    def _note(self, *, error: str | None) -> None:
        self.failing = error is not None
        total = len(self.store.list_repos())
        faulty = self.sync.faulty
        pending = len(self.sync.pending)
        self._progress = replace(
            self._progress,
            last_error=error,
            repos_total=total,
            repos_pending=pending,
            repos_faulty=faulty,
            repos_in_sync=max(0, total - len(set(self.sync.pending) | set(faulty))),
        )
        ha_state.save_progress(self.store, self._progress)



def _is_push(change: Change) -> bool:
    return change.op is ChangeOp.EVENT and change.key.get("kind") == PUSH_EVENT
