"""Taking a snapshot: ask the instance for a consistent point, then copy exactly that point.

The point names every repository's refs at one moment together with the metadata of
that moment. Each repository starts as a hard-linked copy of the previous snapshot's
(no network, almost no disk); only objects the point names and the copy lacks are
fetched, and the refs are then set to exactly the point's. So the snapshot is the
point, whatever was pushed while it was being written, and an unchanged repository
costs a directory of hard links.

A linked copy is used only after its object files are checked against the previous
manifest's record of them (sizes and git's trailing checksums, no git process): a copy
whose files were deleted or damaged since is fetched afresh instead, and the snapshot
says so, so damage in one snapshot never spreads to the next by hard links.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from bulwark.backup import metadata, objects
from bulwark.backup.client import InstanceClient
from bulwark.backup.manifest import Manifest, NewerFormat, RepoEntry
from bulwark.backup.repos import SnapshotGit, disk_use, head_ref, link_copy
from bulwark.backup.snapshots import REPOSITORIES, BackupDir, LockWaiting, Snapshot, write_file
from bulwark.clock import Clock, SystemClock
from bulwark.errors import BulwarkError, GitError, InvalidInput
from bulwark.git.model import Ref, checksum_of, read_ref_files

POINT_FORMAT = 1


class BackupFailed(BulwarkError):
    status_code = 500


@dataclass(frozen=True)
class Point:
    mode: str
    instance: str
    taken_at: str
    metadata: dict[str, Any]
    repositories: list[RepoEntry]


def parse_point(data: Any) -> Point:
    """Check what the instance sent before anything is written from it."""
    if not isinstance(data, dict) or not isinstance(data.get("format"), int):
        raise InvalidInput("the instance answered something that is not a backup point")
    if data["format"] > POINT_FORMAT:
        raise InvalidInput(
            f"the instance sent a backup point in format {data['format']}, newer than this Bulwark reads "
            f"({POINT_FORMAT}); upgrade Bulwark on the backup host"
        )
    doc = metadata.check(data.get("metadata"))
    if not isinstance(data.get("repositories"), list):
        raise InvalidInput("the backup point has no repository list")
    repos = [RepoEntry.from_json(r) for r in data["repositories"]]
    ids = [r.storage_id for r in repos]
    if len(set(ids)) != len(ids):
        raise InvalidInput("the backup point names a repository twice")
    return Point(
        mode=str(data.get("mode", "")), instance=str(data.get("instance", "")),
        taken_at=str(data.get("taken_at", "")), metadata=doc, repositories=repos,
    )


class Source(Protocol):
    """Where a backup comes from: a point, and git URLs with credentials to fetch from."""

    @property
    def url(self) -> str: ...

    def point(self) -> dict[str, Any]: ...

    def repo_location(self, entry: RepoEntry) -> str: ...

    def git_auth(self) -> dict[str, str]: ...


@dataclass
class InstanceSource:
    """A running instance, reached over HTTP with a site admin's token."""

    client: InstanceClient
    allow_replica: bool = False

    @property
    def url(self) -> str:
        return self.client.url

    def point(self) -> dict[str, Any]:
        return self.client.point(allow_replica=self.allow_replica)

    def repo_location(self, entry: RepoEntry) -> str:
        return self.client.repo_url(entry.owner, entry.name)

    def git_auth(self) -> dict[str, str]:
        return self.client.git_auth()


@dataclass(frozen=True)
class Step:
    """Progress: ``done`` of ``total`` repositories copied, ``bytes_written`` so far."""

    done: int
    total: int
    name: str
    bytes_written: int


ProgressFn = Callable[[Step], None]


def no_progress(_step: Step) -> None:
    return None


@dataclass(frozen=True)
class Summary:
    snapshot_id: str
    path: Path
    source_url: str
    source_mode: str
    taken_at: str
    repositories: int
    fetched: int  # repositories that needed objects from the instance
    bytes_written: int
    size: int
    seconds: float
    # Copies of the previous snapshot found damaged and fetched afresh: (owner/name, what was wrong).
    repaired: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot": self.snapshot_id, "path": str(self.path), "source": self.source_url,
            "mode": self.source_mode, "taken_at": self.taken_at, "repositories": self.repositories,
            "fetched": self.fetched, "bytes_written": self.bytes_written, "size": self.size,
            "seconds": round(self.seconds, 3),
            "repaired": [{"repository": name, "problem": problem} for name, problem in self.repaired],
        }


def create_backup(
    source: Source,
    backup_path: Path,
    *,
    progress: ProgressFn = no_progress,
    clock: Clock | None = None,
    jobs: int = 4,
    full: bool = False,
    wait: float = 0.0,
    on_wait: LockWaiting | None = None,
) -> Summary:
    """Take one snapshot into ``backup_path`` (created on first use). ``full`` copies everything
    afresh instead of linking from the previous snapshot, whose shared files may be damaged."""
    clock = clock or SystemClock()
    # Nothing is written before the instance has answered: a wrong token or URL leaves no trace.
    BackupDir.check_creatable(backup_path)
    started = time.monotonic()
    point = parse_point(source.point())
    backup = BackupDir.open_or_init(backup_path)
    waited: list[str] = []

    def waiting(message: str) -> None:
        waited.append(message)
        if on_wait is not None:
            on_wait(message)

    with backup.locked("create", wait=wait, on_wait=waiting):
        if waited:
            # The point is as old as the wait, and objects it names may be gone by now: ask again.
            point = parse_point(source.point())
        # Named under the lock, so snapshot ids sort in the order the snapshots were written.
        started_at = clock.now()
        base = Base.of(backup, None if full else backup.latest_complete(), point)
        snapshot = backup.new_snapshot(started_at)
        try:
            manifest = _write(snapshot, point, source, base, progress, jobs)
        except BulwarkError as exc:
            raise BackupFailed(f"{exc.message} (snapshot {snapshot.id} is left incomplete)") from None
        except (OSError, concurrent.futures.CancelledError) as exc:
            raise BackupFailed(f"{exc} (snapshot {snapshot.id} is left incomplete)") from None
        manifest.started_at = _iso(started_at)
        manifest.finished_at = _iso(clock.now())
        backup.finish(snapshot, manifest)
    return Summary(
        snapshot_id=snapshot.id, path=snapshot.path, source_url=source.url, source_mode=point.mode,
        taken_at=point.taken_at, repositories=len(manifest.repositories),
        fetched=sum(1 for r in manifest.repositories if r.fetched), bytes_written=manifest.bytes_written,
        size=manifest.size, seconds=time.monotonic() - started,
        repaired=[(r.full_name, r.repaired) for r in manifest.repositories if r.repaired],
    )


@dataclass(frozen=True)
class Base:
    """What a new snapshot builds on: the previous one and its manifest (both None for a full
    copy), and why some of its copies must not be linked."""

    snapshot: Snapshot | None
    manifest: Manifest | None
    damaged: dict[str, str]  # storage id -> why its copy is fetched afresh

    @classmethod
    def of(cls, backup: BackupDir, previous: Snapshot | None, point: Point) -> Base:
        if previous is None:
            return cls(None, None, {})
        try:
            manifest = previous.manifest()
        except NewerFormat:
            raise
        except InvalidInput as exc:
            # Nothing the manifest would have said about its copies can be trusted.
            why = f"{exc.message}, so its copy there was not used"
            held = {r.storage_id: why for r in point.repositories if previous.repo_path(r.storage_id).is_dir()}
            return cls(None, None, held)
        return cls(previous, manifest, known_damage(backup, previous))


def known_damage(backup: BackupDir, previous: Snapshot) -> dict[str, str]:
    """Copies of ``previous`` that a failed ``verify`` found damaged, there or in any snapshot
    whose object files the copy shares (the same files, so the same damage): damage inside a
    file, which the cheap check of a linked copy cannot see."""
    found: dict[str, str] = {}
    for checked in reversed(backup.snapshots()):
        v = checked.verification()
        if v is None or v.ok:
            continue
        for sid in v.damaged:
            mine = previous.repo_path(sid)
            if sid in found or not mine.is_dir():
                continue
            if checked.id == previous.id:
                found[sid] = f"'bulwark backup verify' found it damaged ({v.at})"
            elif objects.inodes(checked.repo_path(sid)) & objects.inodes(mine):
                found[sid] = (f"'bulwark backup verify' found it damaged in snapshot {checked.id} ({v.at}), "
                              "whose object files it shares")
    return found


def _write(
    snapshot: Snapshot, point: Point, source: Source, base: Base, progress: ProgressFn, jobs: int
) -> Manifest:
    data = json.dumps(point.metadata, indent=1).encode() + b"\n"
    write_file(snapshot.metadata_path, data)
    git = SnapshotGit(snapshot.path / REPOSITORIES)
    prev_git = SnapshotGit(base.snapshot.path / REPOSITORIES) if base.snapshot is not None else None
    prev_entries = {r.storage_id: r for r in base.manifest.repositories} if base.manifest is not None else {}
    total = len(point.repositories)
    progress(Step(0, total, "", 0))
    done: list[RepoEntry] = []
    written = len(data)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs))
    try:
        futures = {
            pool.submit(
                copy_repository, git, entry, source, prev_git, prev_entries.get(entry.storage_id),
                base.damaged.get(entry.storage_id),
            ): entry
            for entry in point.repositories
        }
        for future in concurrent.futures.as_completed(futures):
            entry = futures[future]
            try:
                copied = future.result()
            except (BulwarkError, OSError, subprocess.SubprocessError) as exc:
                reason = exc.message if isinstance(exc, BulwarkError) else str(exc)
                raise BackupFailed(f"{entry.full_name} (storage id {entry.storage_id}): {reason}") from None
            done.append(copied)
            written += copied.bytes
            progress(Step(len(done), total, entry.full_name, written))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    order = {r.storage_id: i for i, r in enumerate(point.repositories)}
    done.sort(key=lambda r: order[r.storage_id])
    return Manifest(
        id=snapshot.id, source_url=source.url, source_mode=point.mode, taken_at=point.taken_at,
        started_at="", finished_at="", metadata_sha256=hashlib.sha256(data).hexdigest(),
        metadata_bytes=len(data), repositories=done,
    )


def copy_repository(
    git: SnapshotGit, entry: RepoEntry, source: Source, prev_git: SnapshotGit | None, prev: RepoEntry | None,
    known_damage: str | None = None,
) -> RepoEntry:
    """Make ``git``'s copy of one repository hold exactly the point's refs; the entry with its sizes.
    ``known_damage`` says why the previous snapshot's copy must not be linked."""
    sid = entry.storage_id
    repaired = known_damage
    linked = False
    if repaired is None and prev_git is not None and prev is not None:
        if not prev_git.exists(sid):
            repaired = "its copy in the previous snapshot is missing"
        else:
            link_copy(prev_git.path(sid), git.path(sid))
            problems = linked_damage(git, prev)
            if problems:
                # Linking would carry the damage into this snapshot: fetch everything afresh instead.
                # Removing the links leaves the previous snapshot's files as they are.
                repaired = problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
                shutil.rmtree(git.path(sid))
            elif prev.refs == entry.refs and _unchanged_copy(git, entry):
                # The copy is already the point's: no git process for most of an incremental snapshot.
                return _entry(git, entry, fetched=False, repaired=None)
            else:
                linked = True
    if not linked:
        git.init(sid)
    missing = git.missing(sid, entry.refs.values())
    if missing:
        try:
            # The copy's refs tell the instance what it has already: only the new objects come.
            git.fetch_oids(sid, source.repo_location(entry), missing, source.git_auth())
        except GitError:
            if not linked:
                raise
            # A copy whose ref files are damaged cannot negotiate: fetch without them.
            git.clear_refs(sid)
            git.fetch_oids(sid, source.repo_location(entry), missing, source.git_auth())
    if linked:
        # Changed, or not as its manifest says: the copy's refs are written afresh from the point.
        git.clear_refs(sid)
    git.set_refs(sid, entry.refs)
    git.consolidate(sid)
    git.set_head_ref(sid, entry.head)
    copied = git.current_refs(sid)
    if copied != entry.refs:
        raise BackupFailed("the copied refs differ from the point's")
    if not _checksum_matches(copied, entry):
        raise BackupFailed("the copied refs do not match the checksum the instance gave")
    return _entry(git, entry, fetched=bool(missing), repaired=repaired)


def linked_damage(git: SnapshotGit, prev: RepoEntry) -> list[str]:
    """What is wrong with a freshly linked copy's objects (empty: fit to build on). Checked
    against the previous manifest's record without git; a manifest from before such records
    leaves only git to tell whether every object the copy's refs need is there."""
    found = objects.scan(git.path(prev.storage_id))
    if prev.objects is not None:
        return objects.damage(prev.objects, found)
    problems = objects.inconsistencies(found)
    if problems:
        return problems
    ok, output = git.check_connectivity(prev.storage_id)
    if ok:
        return []
    # One line of git's report, the one naming a missing object or an error if there is one.
    lines = [" ".join(line.split()) for line in output.splitlines() if line.strip()]
    named = [line for line in lines if line.startswith(("missing ", "error: "))]
    return [f"git fsck: {(named or lines or ['failed'])[0].removeprefix('error: ')}"]


def _entry(git: SnapshotGit, entry: RepoEntry, *, fetched: bool, repaired: str | None) -> RepoEntry:
    path = git.path(entry.storage_id)
    use = disk_use(path)
    return RepoEntry(
        storage_id=entry.storage_id, owner=entry.owner, name=entry.name, head=entry.head, refs=entry.refs,
        checksum=entry.checksum, bytes=use.new, size=use.size, fetched=fetched, objects=objects.scan(path),
        repaired=repaired,
    )


def _unchanged_copy(git: SnapshotGit, entry: RepoEntry) -> bool:
    """Whether the linked copy's files already hold exactly the point's refs, HEAD and checksum."""
    on_disk = read_ref_files(git.path(entry.storage_id))
    if on_disk is None:
        return False
    head, refs = on_disk
    head_ok = entry.head is None or head == head_ref(entry.head)
    return head_ok and refs == entry.refs and _checksum_matches(refs, entry)


def _checksum_matches(refs: dict[str, str], entry: RepoEntry) -> bool:
    return checksum_of([Ref(name=name, oid=oid, type="") for name, oid in refs.items()]) == entry.checksum


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
