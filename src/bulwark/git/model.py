"""What git's answers become: refs, commits, tree entries, fsck results; the parsing of git's
output into them, the refs read from a repository's files, and the refs' checksum. No process
starts here (the runner, ``git/runner.py``, starts them).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

log = logging.getLogger("bulwark.git")

@dataclass(frozen=True)
class Ref:
    name: str
    oid: str
    type: str  # the object type the ref points at: commit, tag, ...


@dataclass(frozen=True)
class Person:
    name: str
    email: str
    date: datetime


@dataclass(frozen=True)
class Commit:
    sha: str
    tree: str
    parents: tuple[str, ...]
    author: Person
    committer: Person
    message: str


@dataclass(frozen=True)
class TreeEntry:
    name: str
    path: str
    type: str  # blob, tree or commit (a submodule)
    mode: str
    sha: str
    size: int


@dataclass(frozen=True)
class FsckResult:
    storage_id: str
    ok: bool
    output: str


# More tips than fit on one command line are not checked again from a list (see steady_fsck).
FSCK_MAX_HEADS = 10_000


def steady_fsck(check: Callable[[], FsckResult], heads: Callable[[], tuple[str, ...] | None],
                check_from: Callable[[tuple[str, ...]], FsckResult]) -> FsckResult:
    """``check()``; if it failed while the refs (``heads()``, their tips) moved, the verdict is
    ``check_from(tips)``: tips named before git lists the objects, so a push that lands during
    that check cannot look like a missing commit (git fsck lists objects, then reads refs)."""
    before = heads()
    result = check()
    if result.ok:
        return result
    after = heads()
    if after is None or after == before:
        return result
    if len(after) > FSCK_MAX_HEADS:
        note = "(the refs changed while git fsck ran: pushes were coming in; run it again later)"
        return FsckResult(result.storage_id, False, f"{result.output}\n{note}".strip())
    return check_from(after)


_LOG_FORMAT = "%H%x00%T%x00%P%x00%an%x00%ae%x00%aI%x00%cn%x00%ce%x00%cI%x00%B%x1e"


_OID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def read_ref_files(repo: Path) -> tuple[str, dict[str, str]] | None:
    """HEAD's target and every ref of a bare repository, read from its files without git.

    For callers that read thousands of repositories at once (backups). ``None`` whenever
    anything is not plain (a detached or missing HEAD, a symbolic or unreadable ref, the
    reftable format): the caller then asks git. Loose refs win over packed ones, as in git.
    """
    try:
        head = (repo / "HEAD").read_text()
        if not head.startswith("ref: refs/") or (repo / "reftable").exists():
            return None
        refs: dict[str, str] = {}
        packed = repo / "packed-refs"
        if packed.exists():
            for line in packed.read_text().splitlines():
                if line and not line.startswith(("#", "^")):
                    oid, _, name = line.partition(" ")
                    refs[name] = oid
        for dirpath, _dirs, files in os.walk(repo / "refs"):
            for name in files:
                if name.endswith(".lock"):
                    continue  # a ref being written, or left by a git that died: not a ref
                full = os.path.join(dirpath, name)
                refs[os.path.relpath(full, repo).replace(os.sep, "/")] = Path(full).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not all(_OID.fullmatch(oid) for oid in refs.values()):
        return None
    return head[5:].strip(), refs


def _parse_person(name: str, email: str, date: str) -> Person:
    return Person(name=name, email=email, date=datetime.fromisoformat(date))


def _parse_commit(record: str) -> Commit:
    fields = record.lstrip("\n").split("\0")
    sha, tree, parents, an, ae, ad, cn, ce, cd, message = fields[:10]
    return Commit(
        sha=sha,
        tree=tree,
        parents=tuple(parents.split()),
        author=_parse_person(an, ae, ad),
        committer=_parse_person(cn, ce, cd),
        message=message.rstrip("\n"),
    )


def _parse_ls_tree(record: str) -> TreeEntry:
    meta, path = record.split("\t", 1)
    mode, type_, sha, size = meta.split()
    return TreeEntry(
        name=path.rsplit("/", 1)[-1],
        path=path,
        type=type_,
        mode=mode,
        sha=sha,
        size=int(size) if size != "-" else 0,
    )


def checksum_of(refs: Sequence[Ref]) -> str:
    """An order-independent checksum of every ``oid ref`` pair (XOR of SHA-256s).

    Equal checksums mean equal refs; replicas compare these instead of ref lists.
    """
    acc = 0
    for ref in refs:
        digest = hashlib.sha256(f"{ref.oid} {ref.name}".encode()).digest()
        acc ^= int.from_bytes(digest, "big")
    return f"{acc:064x}"
