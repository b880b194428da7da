"""Restoring a snapshot: into a fresh data dir, or into a running instance over HTTP.

Both check the snapshot's metadata against its manifest first, refuse a target that
already holds data, and end by comparing every restored repository's refs with the
manifest, so a restore that finishes restored exactly the snapshot.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bulwark.backup import metadata
from bulwark.backup.client import RESTORE_HEADER, InstanceClient
from bulwark.backup.manifest import Manifest, RepoEntry
from bulwark.backup.repos import SnapshotGit
from bulwark.backup.snapshots import REPOSITORIES, Snapshot
from bulwark.errors import BulwarkError, InvalidInput
from bulwark.git.model import Ref, checksum_of
from bulwark.git.runner import GitRunner
from bulwark.store.sqlite import SQLiteStore

METADATA_DB = "metadata.db"
MAINTENANCE_MESSAGE = "restoring from a backup"

# ``(done, total, "owner/name")`` after each repository.
RestoreProgress = Callable[[int, int, str], None]


class RestoreFailed(BulwarkError):
    status_code = 500


@dataclass
class RestoreSummary:
    snapshot_id: str
    target: str
    repositories: int
    accounts: int
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot": self.snapshot_id, "target": self.target, "repositories": self.repositories,
            "accounts": self.accounts, "notes": self.notes,
        }


def load(snapshot: Snapshot) -> tuple[Manifest, dict[str, Any]]:
    """The manifest and the metadata document, checked against each other."""
    manifest = snapshot.manifest()
    data = snapshot.metadata_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != manifest.metadata_sha256:
        raise InvalidInput(
            f"metadata.json of snapshot {snapshot.id} differs from its manifest (damaged or edited); "
            f"'bulwark backup verify' tells more"
        )
    return manifest, metadata.check(snapshot.metadata())


def _no_progress(_done: int, _total: int, _name: str) -> None:
    return None


# -- into a data dir ---------------------------------------------------------------------


def restore_to_data_dir(
    snapshot: Snapshot, data_dir: Path, *, progress: RestoreProgress = _no_progress
) -> RestoreSummary:
    """Make ``data_dir`` a standalone node holding the snapshot; start it with ``bulwark serve``."""
    manifest, document = load(snapshot)
    repos_dir = data_dir / REPOSITORIES
    if (data_dir / METADATA_DB).exists() or (repos_dir.is_dir() and any(repos_dir.iterdir())):
        raise InvalidInput(f"{data_dir} is not empty: it holds a node's data already; restore into a new data dir")
    if data_dir.exists() and not data_dir.is_dir():
        raise InvalidInput(f"{data_dir} is not a directory")
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        store = SQLiteStore(data_dir / METADATA_DB)
        try:
            imported = metadata.import_into(store, document)
            default_branch = {r.storage_id: r.default_branch for r in store.list_repos()}
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"metadata.json of snapshot {snapshot.id} is damaged: bad or missing {exc}") from None
        finally:
            store.close()
        git = GitRunner(repos_dir)
        source = SnapshotGit(snapshot.path / REPOSITORIES)
        entries = {e.storage_id: e for e in manifest.repositories}
        notes = []
        for done, (storage_id, branch) in enumerate(sorted(default_branch.items()), 1):
            entry = entries.get(storage_id)
            head = entry.head if entry is not None and entry.head else branch
            path = git.init_bare(storage_id, head.removeprefix("refs/heads/"))
            if entry is None:
                notes.append(f"repository {storage_id} is in the metadata but not in the snapshot: created empty")
                continue
            if entry.refs:
                git.run(["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", str(source.path(storage_id)),
                         "+refs/*:refs/*"], extra_env={"GIT_DIR": str(path)}, timeout=3600)
            _check_refs(entry, {r.name: r.oid for r in git.refs(storage_id)})
            progress(done, len(default_branch), entry.full_name)
    except BaseException:
        # Everything here is ours (the data dir was checked empty): leave it empty again.
        for name in (METADATA_DB, f"{METADATA_DB}-wal", f"{METADATA_DB}-shm"):
            with contextlib.suppress(FileNotFoundError):
                (data_dir / name).unlink()
        shutil.rmtree(repos_dir, ignore_errors=True)
        raise
    return RestoreSummary(snapshot.id, str(data_dir), len(default_branch), len(imported.accounts), notes)


# -- into a running instance ------------------------------------------------------------


def restore_to_url(
    snapshot: Snapshot, client: InstanceClient, *, progress: RestoreProgress = _no_progress
) -> RestoreSummary:
    """Recreate the snapshot in an empty running instance (a node, or a cluster through any node).

    The instance goes into maintenance mode for the restore, and out of it afterwards only
    if this restore put it there.
    """
    manifest, document = load(snapshot)
    was_in_maintenance = client.in_maintenance()
    if not was_in_maintenance:
        client.set_maintenance(True, MAINTENANCE_MESSAGE)
    try:
        created = client.restore_metadata(document)
    except BaseException as exc:
        if not was_in_maintenance:  # nothing changed: leave the instance as it was
            with contextlib.suppress(BulwarkError):
                client.set_maintenance(False)
        if isinstance(exc, BulwarkError):
            raise RestoreFailed(exc.message + _hint(exc.message, client.url)) from None
        raise
    notes = [str(created.get("summary", ""))] if created.get("summary") else []
    try:
        _push_all(snapshot, manifest, client, progress)
    except BulwarkError as exc:
        raise RestoreFailed(
            f"{exc.message}. The instance stays in maintenance mode with a partial restore; "
            f"restore again into a fresh instance{_hint(exc.message, client.url)}"
        ) from None
    if was_in_maintenance:
        notes.append("the instance was in maintenance mode before the restore and stays in it; "
                     "turn it off when ready")
    else:
        client.set_maintenance(False)
    return RestoreSummary(snapshot.id, client.url, len(manifest.repositories), len(document["accounts"]), notes)


def _hint(message: str, url: str) -> str:
    if "503" not in message:
        return ""
    return (f". If {url} is a load balancer: it sends no traffic anywhere while the instance is in maintenance "
            "mode, so restore through one node's own URL")


def _push_all(snapshot: Snapshot, manifest: Manifest, client: InstanceClient, progress: RestoreProgress) -> None:
    # The restore header lets a site admin's pushes (and reads) through maintenance mode.
    git = SnapshotGit(snapshot.path / REPOSITORIES, config={"http.extraHeader": f"{RESTORE_HEADER}: 1"})
    auth = client.git_auth()
    total = len(manifest.repositories)
    for done, entry in enumerate(manifest.repositories, 1):
        url = client.repo_url(entry.owner, entry.name)
        try:
            if entry.refs:
                git.in_repo(entry.storage_id, ["push", "--quiet", "--mirror", url], secret_config=auth, timeout=3600)
            listed = git.run(["ls-remote", "--refs", url], secret_config=auth).stdout.decode()
        except BulwarkError as exc:
            raise RestoreFailed(f"{entry.full_name}: {exc.message}") from None
        remote = {}
        for line in listed.splitlines():
            oid, _, name = line.partition("\t")
            remote[name] = oid
        _check_refs(entry, remote)
        progress(done, total, entry.full_name)


def _check_refs(entry: RepoEntry, refs: dict[str, str]) -> None:
    if refs != entry.refs:
        differ = sorted(set(refs.items()) ^ set(entry.refs.items()))
        names = ", ".join(sorted({name for name, _ in differ})[:5])
        raise RestoreFailed(f"{entry.full_name}: the restored refs differ from the snapshot's ({names})")
    if checksum_of([Ref(name=name, oid=oid, type="") for name, oid in refs.items()]) != entry.checksum:
        raise RestoreFailed(f"{entry.full_name}: the restored refs' checksum differs from the snapshot's")
