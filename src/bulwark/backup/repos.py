"""Git work on a snapshot's repositories: hard-linked copies, fetching exact oids, exact refs.

A snapshot keeps its repositories flat (``repositories/<storage_id>.git``), so the
runner here is the node's runner with that one difference in layout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bulwark.errors import GitError, NotFound
from bulwark.git.model import read_ref_files
from bulwark.git.runner import GitRunner

# Every incremental fetch adds a pack; past this many, one repack keeps reads and restores fast.
MAX_PACKS = 50

_SNAPSHOT_CONFIG = (
    # A snapshot never changes by itself: no automatic gc or maintenance after a fetch.
    ("gc.auto", "0"),
    ("maintenance.auto", "false"),
    # Fetched objects stay in one pack per fetch instead of many loose files to link next time.
    ("fetch.unpackLimit", "1"),
    ("core.logAllRefUpdates", "false"),
)


class SnapshotGit(GitRunner):
    """A git runner over a snapshot's ``repositories`` folder."""

    def path(self, storage_id: str) -> Path:
        if not storage_id.isalnum():
            raise ValueError(f"bad storage id {storage_id!r}")
        return self.root / f"{storage_id}.git"

    def in_repo(self, storage_id: str, args: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        """Run git in one repository; errors name the git command (``git fetch failed: ...``)."""
        path = self.path(storage_id)
        if not path.is_dir():
            raise NotFound(f"repository copy {path.name} is missing")
        return self.run(args, extra_env={"GIT_DIR": str(path)}, **kwargs)

    def init(self, storage_id: str) -> Path:
        path = self.path(storage_id)
        # No template: sample hooks would be copied into every repository of every snapshot.
        self.run(["init", "--quiet", "--bare", "--template=", str(path)])
        # Appended as git writes it, rather than one `git config` process per key.
        with open(path / "config", "a", encoding="utf-8") as config:
            for key, value in _SNAPSHOT_CONFIG:
                section, name = key.split(".", 1)
                config.write(f"[{section}]\n\t{name} = {value}\n")
        return path

    def missing(self, storage_id: str, oids: Iterable[str]) -> list[str]:
        """Which of ``oids`` this repository does not have."""
        wanted = sorted(set(oids))
        if not wanted:
            return []
        proc = self.in_repo(storage_id, ["cat-file", "--batch-check=%(objectname)"], input="\n".join(wanted).encode())
        return [line.split()[0] for line in proc.stdout.decode().splitlines() if line.endswith(" missing")]

    def fetch_oids(self, storage_id: str, url: str, oids: list[str], secret_config: Mapping[str, str]) -> None:
        """Fetch exactly these objects (and what they need); no ref changes, no FETCH_HEAD."""
        self.in_repo(
            storage_id, ["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--stdin", url],
            input="".join(f"{oid}\n" for oid in oids).encode(), secret_config=secret_config, timeout=3600,
        )

    def set_refs(self, storage_id: str, refs: Mapping[str, str]) -> None:
        """Make the refs exactly ``refs``, in one transaction: update these, delete all others."""
        now = self.current_refs(storage_id)
        lines = ["option no-deref"]
        lines += [f"update {name} {oid}" for name, oid in sorted(refs.items()) if now.get(name) != oid]
        lines += [f"delete {name}" for name in sorted(now) if name not in refs]
        if len(lines) > 1:
            self.in_repo(storage_id, ["update-ref", "--stdin"], input=("\n".join(lines) + "\n").encode())
            # One packed-refs file instead of a file (and a disk block) per ref in every later snapshot.
            self.in_repo(storage_id, ["pack-refs", "--all", "--prune"])

    def current_refs(self, storage_id: str) -> dict[str, str]:
        """Every ref's oid: from the files when they are plain, else from git."""
        files = read_ref_files(self.path(storage_id))
        if files is not None:
            return files[1]
        return {r.name: r.oid for r in self.refs(storage_id)}

    def clear_refs(self, storage_id: str) -> None:
        """Forget every ref of a linked copy (its own files, never shared), so ``set_refs`` writes
        them all from the point, whatever state the copy's ref files were in."""
        path = self.path(storage_id)
        (path / "packed-refs").unlink(missing_ok=True)
        for dirpath, _dirs, files in os.walk(path / "refs"):
            for name in files:
                os.unlink(os.path.join(dirpath, name))

    def set_head_ref(self, storage_id: str, head: str | None) -> None:
        if head:
            self.in_repo(storage_id, ["symbolic-ref", "HEAD", head_ref(head)])

    def current_head(self, storage_id: str) -> str | None:
        proc = self.in_repo(storage_id, ["symbolic-ref", "--quiet", "HEAD"], check=False)
        return proc.stdout.decode().strip() or None if proc.returncode == 0 else None

    def consolidate(self, storage_id: str) -> bool:
        """Repack a repository whose incremental packs piled up; whether it did."""
        packs = list((self.path(storage_id) / "objects" / "pack").glob("*.pack"))
        if len(packs) <= MAX_PACKS:
            return False
        self.in_repo(storage_id, ["repack", "-a", "-d", "-q"], timeout=3600)
        return True

    def check_connectivity(self, storage_id: str) -> tuple[bool, str]:
        """Whether every object the refs reach is there and every pack opens (no content check)."""
        proc = self.in_repo(
            storage_id, ["fsck", "--connectivity-only", "--no-dangling", "--no-progress"], check=False, timeout=3600
        )
        return proc.returncode == 0, (proc.stdout + proc.stderr).decode(errors="replace").strip()

    def check_objects(self, storage_id: str) -> tuple[bool, str]:
        """Full connectivity and object check; dangling objects (earlier refs) are no failure."""
        proc = self.in_repo(
            storage_id, ["fsck", "--full", "--no-progress", "--no-dangling"], check=False, timeout=3600
        )
        return proc.returncode == 0, (proc.stdout + proc.stderr).decode(errors="replace").strip()


def head_ref(head: str) -> str:
    """A head given as a branch name or a full ref, as a full ref."""
    return head if head.startswith("refs/") else f"refs/heads/{head}"


def link_copy(src: Path, dest: Path) -> None:
    """Copy a bare repository, hard-linking every object file (git never rewrites one in place)
    and copying the small rest (refs, config, HEAD, packed-refs)."""
    if dest.exists():
        raise GitError(f"{dest} exists already")
    for dirpath, dirnames, filenames in os.walk(src):
        here = Path(dirpath)
        rel = here.relative_to(src)
        (dest / rel).mkdir(parents=True, exist_ok=True)
        shared = rel.parts[:1] == ("objects",)
        for name in filenames:
            if name.endswith(".lock"):
                continue  # a git process died holding it; it is no part of the data
            source, target = here / name, dest / rel / name
            if shared:
                try:
                    os.link(source, target)
                    continue
                except OSError:
                    pass  # a file system without hard links: copy instead
            shutil.copy2(source, target)
        dirnames.sort()


@dataclass(frozen=True)
class DiskUse:
    size: int  # every byte the copy holds
    new: int  # bytes in files no other snapshot shares (not hard-linked)


def disk_use(path: Path) -> DiskUse:
    size = new = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            size += st.st_size
            if st.st_nlink == 1:
                new += st.st_size
    return DiskUse(size, new)
