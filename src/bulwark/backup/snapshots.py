"""The backup directory: its layout, its lock, its snapshots and their retention.

::

    DIR/.bulwark-backup                 marks the directory as ours, with the layout's format
    DIR/lock                            held (flock) by the one command writing here
    DIR/current                         symlink to the latest complete snapshot
    DIR/snapshots/<id>/manifest.json    what the snapshot holds (written last)
    DIR/snapshots/<id>/metadata.json    the metadata document of the consistent point
    DIR/snapshots/<id>/repositories/<storage_id>.git
    DIR/snapshots/<id>/INCOMPLETE       present until the snapshot is finished

Snapshot ids are UTC timestamps, so they sort by age. Objects are shared between
snapshots by hard links, so deleting a snapshot frees only what no other one uses.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bulwark.backup.manifest import FORMAT, Manifest, check_format
from bulwark.errors import Conflict, InvalidInput, NotFound

MARKER = ".bulwark-backup"
LOCK = "lock"
CURRENT = "current"
SNAPSHOTS = "snapshots"
MANIFEST = "manifest.json"
METADATA = "metadata.json"
REPOSITORIES = "repositories"
INCOMPLETE = "INCOMPLETE"
DEFAULT_KEEP = 10

_ID = re.compile(r"^(\d{8}T\d{6}Z)(?:-(\d+))?$")


class SnapshotState(enum.StrEnum):
    COMPLETE = "complete"
    INCOMPLETE = "incomplete"


def write_file(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all, and durably: a crash leaves the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    sync_dir(path.parent)


def sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Snapshot:
    path: Path

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def state(self) -> SnapshotState:
        if (self.path / INCOMPLETE).exists() or not (self.path / MANIFEST).is_file():
            return SnapshotState.INCOMPLETE
        return SnapshotState.COMPLETE

    @property
    def complete(self) -> bool:
        return self.state is SnapshotState.COMPLETE

    @property
    def metadata_path(self) -> Path:
        return self.path / METADATA

    def repo_path(self, storage_id: str) -> Path:
        if not storage_id.isalnum():
            raise ValueError(f"bad storage id {storage_id!r}")
        return self.path / REPOSITORIES / f"{storage_id}.git"

    def raw_manifest(self) -> dict[str, Any]:
        try:
            data = json.loads((self.path / MANIFEST).read_text())
        except FileNotFoundError:
            raise InvalidInput(f"snapshot {self.id} has no manifest: it is incomplete") from None
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"the manifest of snapshot {self.id} cannot be read: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidInput(f"the manifest of snapshot {self.id} is not a JSON object")
        return data

    def manifest(self) -> Manifest:
        return Manifest.from_json(self.raw_manifest(), f"snapshot {self.id}")

    def metadata(self) -> dict[str, Any]:
        try:
            data = json.loads(self.metadata_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"metadata.json of snapshot {self.id} cannot be read: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidInput(f"metadata.json of snapshot {self.id} is not a JSON object")
        return data


@dataclass(frozen=True)
class SnapshotInfo:
    """A snapshot as ``backup list`` shows it; manifest facts are None while incomplete."""

    id: str
    state: SnapshotState
    current: bool
    taken_at: str | None = None
    source: str | None = None
    repositories: int | None = None
    bytes_written: int | None = None
    size: int | None = None
    problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "state": self.state.value, "current": self.current, "taken_at": self.taken_at,
            "source": self.source, "repositories": self.repositories, "bytes_written": self.bytes_written,
            "size": self.size, "problem": self.problem,
        }


def _id_key(snapshot_id: str) -> tuple[str, int]:
    m = _ID.match(snapshot_id)
    return (m.group(1), int(m.group(2) or 0)) if m else ("", 0)


@dataclass
class BackupDir:
    path: Path

    # -- opening -----------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path) -> BackupDir:
        """An existing backup directory; anything else is refused without touching it."""
        if not path.exists():
            raise NotFound(f"{path} does not exist")
        if not path.is_dir():
            raise InvalidInput(f"{path} is not a directory")
        marker = path / MARKER
        if not marker.is_file():
            raise InvalidInput(f"{path} is not a Bulwark backup directory (it has no {MARKER} file)")
        try:
            data = json.loads(marker.read_text())
        except (OSError, ValueError):
            raise InvalidInput(f"{marker} is damaged; is {path} a Bulwark backup directory?") from None
        check_format(data, f"the backup directory {path}")
        return cls(path)

    @classmethod
    def check_creatable(cls, path: Path) -> None:
        """Refuse, before anything is written, a place where ``create`` cannot make a backup directory."""
        if (path / MARKER).is_file():
            cls.open(path)
        elif path.exists():
            if not path.is_dir():
                raise InvalidInput(f"{path} is not a directory")
            if any(path.iterdir()):
                raise InvalidInput(f"{path} is not a Bulwark backup directory (and not empty); pick another place")
        elif not path.parent.is_dir():
            raise NotFound(f"cannot create {path}: {path.parent} does not exist")

    @classmethod
    def open_or_init(cls, path: Path) -> BackupDir:
        cls.check_creatable(path)
        if not (path / MARKER).is_file():
            path.mkdir(exist_ok=True)
            (path / SNAPSHOTS).mkdir(exist_ok=True)
            write_file(path / MARKER, json.dumps({"format": FORMAT, "kind": "bulwark-backup"}).encode() + b"\n")
        return cls.open(path)

    # -- the lock ----------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One writer at a time; a second one fails at once, naming the holder."""
        path = self.path / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                raise Conflict(
                    f"another backup command (pid {holder}) is using {self.path}; wait for it to finish"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # -- snapshots ---------------------------------------------------------------------

    @property
    def snapshots_dir(self) -> Path:
        return self.path / SNAPSHOTS

    def snapshots(self) -> list[Snapshot]:
        """Every snapshot, oldest first (ids are timestamps)."""
        if not self.snapshots_dir.is_dir():
            return []
        found = [Snapshot(p) for p in self.snapshots_dir.iterdir() if p.is_dir() and _ID.match(p.name)]
        return sorted(found, key=lambda s: _id_key(s.id))

    def current_id(self) -> str | None:
        try:
            return Path(os.readlink(self.path / CURRENT)).name
        except OSError:
            return None

    def latest_complete(self) -> Snapshot | None:
        complete = [s for s in self.snapshots() if s.complete]
        return complete[-1] if complete else None

    def resolve(self, name: str) -> Snapshot:
        """A complete snapshot by id, or ``current``."""
        if name == CURRENT:
            current = self.current_id()
            if current is None:
                raise NotFound(f"{self.path} has no complete snapshot yet")
            name = current
        if not _ID.match(name):
            raise NotFound(f"no snapshot {name!r} in {self.path}; 'bulwark backup list {self.path}' shows them")
        snapshot = Snapshot(self.snapshots_dir / name)
        if not snapshot.path.is_dir():
            raise NotFound(f"no snapshot {name!r} in {self.path}; 'bulwark backup list {self.path}' shows them")
        if (snapshot.path / MANIFEST).is_file():
            check_format(snapshot.raw_manifest(), f"snapshot {name}")
        if not snapshot.complete:
            raise InvalidInput(f"snapshot {name} is incomplete: its backup did not finish")
        return snapshot

    def new_snapshot(self, started: datetime) -> Snapshot:
        """A new, empty, INCOMPLETE snapshot named by its start time (UTC)."""
        base = f"{started:%Y%m%dT%H%M%SZ}"
        taken = {s.id for s in self.snapshots()}
        name, n = base, 1
        while name in taken or (self.snapshots_dir / name).exists():
            n += 1
            name = f"{base}-{n}"
        path = self.snapshots_dir / name
        self.snapshots_dir.mkdir(exist_ok=True)
        path.mkdir()
        (path / INCOMPLETE).write_text("this snapshot is being written, or its backup failed\n")
        (path / REPOSITORIES).mkdir()
        return Snapshot(path)

    def finish(self, snapshot: Snapshot, manifest: Manifest) -> None:
        """Write the manifest, drop the INCOMPLETE marker, and make the snapshot ``current``."""
        write_file(snapshot.path / MANIFEST, json.dumps(manifest.to_json(), indent=1).encode() + b"\n")
        (snapshot.path / INCOMPLETE).unlink()
        sync_dir(snapshot.path)
        self.set_current(snapshot.id)

    def set_current(self, snapshot_id: str) -> None:
        tmp = self.path / f".{CURRENT}.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(f"{SNAPSHOTS}/{snapshot_id}", tmp)
        os.replace(tmp, self.path / CURRENT)
        sync_dir(self.path)

    def info(self) -> list[SnapshotInfo]:
        current = self.current_id()
        infos = []
        for s in self.snapshots():
            state = s.state
            if state is SnapshotState.INCOMPLETE:
                infos.append(SnapshotInfo(s.id, state, s.id == current))
                continue
            try:
                m = s.manifest()
            except InvalidInput as exc:
                infos.append(SnapshotInfo(s.id, state, s.id == current, problem=exc.message))
                continue
            infos.append(SnapshotInfo(
                s.id, state, s.id == current, taken_at=m.taken_at, source=m.source_url,
                repositories=len(m.repositories), bytes_written=m.bytes_written, size=m.size,
            ))
        return infos

    # -- retention ---------------------------------------------------------------------

    def doomed(self, keep: int) -> list[Snapshot]:
        """What ``prune --keep`` deletes: complete snapshots beyond the newest ``keep``, and
        incomplete ones older than the newest complete one; never ``current``'s target."""
        if keep < 1:
            raise InvalidInput("--keep must be at least 1: the newest complete snapshot is always kept")
        snapshots = self.snapshots()
        complete = [s for s in snapshots if s.complete]
        newest = _id_key(complete[-1].id) if complete else None
        kept = {s.id for s in complete[-keep:]}
        current = self.current_id()
        doomed = []
        for s in snapshots:
            if s.id == current or s.id in kept:
                continue
            if s.complete or (newest is not None and _id_key(s.id) < newest):
                doomed.append(s)
        return doomed

    def delete(self, snapshot: Snapshot) -> None:
        # Marked incomplete, then renamed away first: a crash half-way never leaves a
        # damaged snapshot that looks complete.
        with contextlib.suppress(FileNotFoundError):
            (snapshot.path / INCOMPLETE).write_text("being deleted\n")
        doomed = self.snapshots_dir / f".deleting-{snapshot.id}"
        os.replace(snapshot.path, doomed)
        shutil.rmtree(doomed)


def prune(backup: BackupDir, keep: int) -> list[str]:
    """Delete what retention does not keep; the ids deleted, oldest first."""
    with backup.locked():
        # Leftovers of a deletion that was interrupted.
        for leftover in backup.snapshots_dir.glob(".deleting-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        doomed = backup.doomed(keep)
        for snapshot in doomed:
            backup.delete(snapshot)
        return [s.id for s in doomed]
