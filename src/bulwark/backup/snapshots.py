"""The backup directory: its layout, its lock and its snapshots (``retention`` decides which stay).

::

    DIR/.bulwark-backup                 marks the directory as ours, with the layout's format
    DIR/lock                            held (flock) by the one backup command at work here
    DIR/current                         symlink to the latest complete snapshot
    DIR/snapshots/<id>/manifest.json    what the snapshot holds (written last)
    DIR/snapshots/<id>/metadata.json    the metadata document of the consistent point
    DIR/snapshots/<id>/repositories/<storage_id>.git
    DIR/snapshots/<id>/INCOMPLETE       present until the snapshot is finished
    DIR/snapshots/<id>/verified.json    the last ``verify`` of the snapshot: when, and its verdict

Snapshot ids are UTC timestamps, so they sort by age. Objects are shared between
snapshots by hard links, so deleting a snapshot frees only what no other one uses.
Every command but ``list`` holds the lock, so ``prune`` never deletes what a ``verify``
or ``restore`` is reading, nor what a ``create`` links from.
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
import time
from collections.abc import Callable, Iterator
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
VERIFIED = "verified.json"
DEFAULT_KEEP = 10

# Told, once, that a command waits for the lock and for whom.
LockWaiting = Callable[[str], None]

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


@dataclass(frozen=True)
class Verification:
    """The outcome of the last ``verify`` of a snapshot."""

    at: str  # ISO time, UTC
    ok: bool
    problems: int = 0
    damaged: tuple[str, ...] = ()  # storage ids of repositories with a problem

    def to_json(self) -> dict[str, Any]:
        return {"verified_at": self.at, "ok": self.ok, "problems": self.problems, "damaged": list(self.damaged)}

    @classmethod
    def from_json(cls, data: Any) -> Verification | None:
        """None for anything but a record ``to_json`` wrote (then the snapshot counts as never verified)."""
        if not isinstance(data, dict):
            return None
        at, ok, problems, damaged = data.get("verified_at"), data.get("ok"), data.get("problems"), data.get("damaged")
        if not (isinstance(at, str) and isinstance(ok, bool) and isinstance(problems, int)
                and isinstance(damaged, list) and all(isinstance(d, str) and d.isalnum() for d in damaged)):
            return None
        return cls(at, ok, problems, tuple(damaged))


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

    def verification(self) -> Verification | None:
        """The last verify's outcome; None if never verified (or its record is unreadable, which
        counts the same: retention must not keep a snapshot for a record it cannot read)."""
        try:
            return Verification.from_json(json.loads((self.path / VERIFIED).read_text()))
        except (OSError, ValueError):
            return None

    def record_verification(self, verification: Verification) -> None:
        write_file(self.path / VERIFIED, json.dumps(verification.to_json(), indent=1).encode() + b"\n")

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
    repaired: int | None = None  # copies of the previous snapshot found damaged and fetched afresh
    verification: Verification | None = None

    def to_json(self) -> dict[str, Any]:
        v = self.verification
        return {
            "id": self.id, "state": self.state.value, "current": self.current, "taken_at": self.taken_at,
            "source": self.source, "repositories": self.repositories, "bytes_written": self.bytes_written,
            "size": self.size, "problem": self.problem, "repaired": self.repaired,
            "verified_at": v.at if v is not None else None, "verified_ok": v.ok if v is not None else None,
        }


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        return False
    return True


def _holder(fd: int) -> str:
    """Who holds the lock, as its file says: "pid 123, bulwark backup create"."""
    pid, _, command = os.pread(fd, 256, 0).decode(errors="replace").strip().partition(" ")
    return f"pid {pid or 'unknown'}" + (f", bulwark backup {command.strip()}" if command.strip() else "")


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
    def locked(self, command: str, *, wait: float = 0.0, on_wait: LockWaiting | None = None) -> Iterator[None]:
        """One command at a time: a second one waits up to ``wait`` seconds (saying so through
        ``on_wait``), then fails naming the holder: its pid and command."""
        path = self.path / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _try_lock(fd):
                holder = _holder(fd)
                if wait <= 0:
                    raise Conflict(f"another backup command ({holder}) is using {self.path}; wait for it to "
                                   "finish, or pass --wait SECONDS")
                if on_wait is not None:
                    on_wait(f"Waiting up to {wait:g}s for another backup command ({holder}) to finish with "
                            f"{self.path}.")
                deadline = time.monotonic() + wait
                while not _try_lock(fd):
                    if time.monotonic() >= deadline:
                        raise Conflict(f"another backup command ({_holder(fd)}) held {self.path} for all of the "
                                       f"{wait:g}s waited; try again later")
                    time.sleep(0.1)
            # Written whole, then cut to length: a reader never sees an empty holder.
            mine = f"{os.getpid()} {command}\n".encode()
            os.pwrite(fd, mine, 0)
            os.ftruncate(fd, len(mine))
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
                repaired=len(m.repaired), verification=s.verification(),
            ))
        return infos

    # -- deleting --------------------------------------------------------------------

    def delete(self, snapshot: Snapshot) -> None:
        # Marked incomplete, then renamed away first: a crash half-way never leaves a
        # damaged snapshot that looks complete.
        with contextlib.suppress(FileNotFoundError):
            (snapshot.path / INCOMPLETE).write_text("being deleted\n")
        doomed = self.snapshots_dir / f".deleting-{snapshot.id}"
        os.replace(snapshot.path, doomed)
        shutil.rmtree(doomed)
