"""Checking a snapshot: is everything there, intact, and what the manifest says it is?

Every problem is reported, not only the first, so one run tells what a damaged snapshot
still holds. The outcome is recorded in the snapshot (``verified.json``): retention keeps
the newest snapshot that verified, and the next backup fetches afresh what was damaged.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

from bulwark.backup import metadata, objects
from bulwark.backup.manifest import NewerFormat, RepoEntry
from bulwark.backup.repos import SnapshotGit, head_ref
from bulwark.backup.snapshots import REPOSITORIES, BackupDir, LockWaiting, Snapshot, Verification
from bulwark.clock import Clock, SystemClock
from bulwark.errors import BulwarkError, InvalidInput

# Enough of git's report to name the damage without flooding the output.
SHOWN_LINES = 5


@dataclass(frozen=True)
class Problem:
    where: str  # "metadata.json", "manifest", or a repository
    what: str
    storage_id: str | None = None  # the repository's, when the problem is in one

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass
class VerifyReport:
    snapshot_id: str
    repositories: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot": self.snapshot_id, "ok": self.ok, "repositories": self.repositories,
            "problems": [{"where": p.where, "what": p.what} for p in self.problems],
        }

    def verification(self, at: str) -> Verification:
        damaged = sorted({p.storage_id for p in self.problems if p.storage_id})
        return Verification(at=at, ok=self.ok, problems=len(self.problems), damaged=tuple(damaged))


def verify_and_record(
    backup: BackupDir, name: str, *, wait: float = 0.0, on_wait: LockWaiting | None = None,
    clock: Clock | None = None, jobs: int = 2, progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Verify one snapshot under the directory's lock (no prune deletes it meanwhile) and record
    the outcome in it, written whole or not at all."""
    clock = clock or SystemClock()
    with backup.locked("verify", wait=wait, on_wait=on_wait):
        snapshot = backup.resolve(name)
        report = verify(snapshot, jobs=jobs, progress=progress)
        at = clock.now().astimezone(UTC).isoformat().replace("+00:00", "Z")
        snapshot.record_verification(report.verification(at))
    return report


def verify(snapshot: Snapshot, *, jobs: int = 2, progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    report = VerifyReport(snapshot.id)
    try:
        manifest = snapshot.manifest()
    except NewerFormat:
        raise
    except InvalidInput as exc:
        report.problems.append(Problem("manifest.json", exc.message))
        return report
    report.repositories = len(manifest.repositories)
    report.problems += _check_metadata(snapshot, manifest.metadata_sha256, manifest.repositories)
    git = SnapshotGit(snapshot.path / REPOSITORIES)
    listed = {r.storage_id for r in manifest.repositories}
    if git.root.is_dir():
        for path in sorted(git.root.iterdir()):
            if path.name.removesuffix(".git") not in listed:
                report.problems.append(Problem(f"repositories/{path.name}", "not in the manifest"))
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(_check_repository, git, entry) for entry in manifest.repositories]
        for done, future in enumerate(futures, 1):
            report.problems += future.result()
            if progress is not None:
                progress(done, len(futures))
    return report


def _check_metadata(snapshot: Snapshot, sha256: str, entries: list[RepoEntry]) -> list[Problem]:
    where = "metadata.json"
    try:
        data = snapshot.metadata_path.read_bytes()
    except OSError as exc:
        return [Problem(where, f"cannot be read: {exc.strerror or exc}")]
    problems = []
    if hashlib.sha256(data).hexdigest() != sha256:
        problems.append(Problem(where, "its sha256 differs from the manifest's: the file was changed or damaged"))
    try:
        document = metadata.check(json.loads(data))
    except ValueError as exc:
        return [*problems, Problem(where, f"is not valid JSON: {exc}")]
    except InvalidInput as exc:
        return [*problems, Problem(where, exc.message)]
    in_metadata = {r.get("storage_id") for r in document["repositories"] if isinstance(r, dict)}
    in_manifest = {e.storage_id for e in entries}
    for storage_id in sorted(in_metadata - in_manifest, key=str):
        problems.append(Problem(where, f"names repository {storage_id} that the manifest does not hold"))
    for storage_id in sorted(in_manifest - in_metadata):
        problems.append(Problem(where, f"does not name repository {storage_id} that the manifest holds"))
    return problems


def _check_repository(git: SnapshotGit, entry: RepoEntry) -> list[Problem]:
    where = f"{entry.full_name} (storage id {entry.storage_id})"
    sid = entry.storage_id
    if not git.exists(sid):
        return [Problem(where, f"its copy is missing (repositories/{sid}.git)", sid)]
    problems = []
    try:
        refs = {r.name: r.oid for r in git.refs(sid)}
        if refs != entry.refs:
            problems.append(Problem(where, f"refs differ from the manifest: {_ref_difference(entry.refs, refs)}", sid))
        if git.ref_checksum(sid) != entry.checksum:
            problems.append(Problem(where, "the ref checksum differs from the manifest's", sid))
        if entry.head and git.current_head(sid) != head_ref(entry.head):
            problems.append(Problem(where, f"HEAD is not {head_ref(entry.head)}", sid))
        # The manifest's record of the object files names what fsck's report would only hint at.
        found = objects.scan(git.path(sid))
        damage = objects.damage(entry.objects, found) if entry.objects is not None else objects.inconsistencies(found)
        problems += [Problem(where, what, sid) for what in damage]
        ok, output = git.check_objects(sid)
    except (BulwarkError, OSError, subprocess.SubprocessError) as exc:
        return [*problems, Problem(where, exc.message if isinstance(exc, BulwarkError) else str(exc), sid)]
    if not ok:
        lines = output.splitlines() or ["(git printed nothing)"]
        shown = "; ".join(lines[:SHOWN_LINES])
        if len(lines) > SHOWN_LINES:
            shown += f"; ... {len(lines) - SHOWN_LINES} more lines"
        problems.append(Problem(where, f"git fsck failed: {shown}", sid))
    return problems


def _ref_difference(want: dict[str, str], got: dict[str, str]) -> str:
    parts = [f"{name} missing" for name in sorted(set(want) - set(got))]
    parts += [f"{name} unexpected" for name in sorted(set(got) - set(want))]
    parts += [f"{name} moved" for name in sorted(set(want) & set(got)) if want[name] != got[name]]
    return ", ".join(parts[:10]) + (f" and {len(parts) - 10} more" if len(parts) > 10 else "")
