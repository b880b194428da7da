"""A cheap record of a copy's object files, and the check of a copy against it, without git.

Git ends every pack, index, reverse index and bitmap with the hash of the file before it,
and an index names its pack's hash just before its own. Recording each file's size and
trailing hash when a snapshot is written, and comparing them with what is on disk before
the next snapshot hard-links the copy, catches a deleted, truncated or overwritten file for
the price of a stat and a 40-byte read per file. Damage inside a file whose tail is intact
is left to ``bulwark backup verify`` (git fsck).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bulwark.errors import InvalidInput

# pack-<hash>.<kind>: the files git writes for one pack; its .keep and .promisor hold no data.
_PACK_FILE = re.compile(r"^pack-([0-9a-f]{40}|[0-9a-f]{64})\.(pack|idx|rev|bitmap)$")
# A file too short to hold a hash was recorded with an empty trailer.
_TRAILER = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})?$")
_LOOSE_DIR = re.compile(r"^[0-9a-f]{2}$")


@dataclass(frozen=True)
class PackFile:
    size: int
    trailer: str  # the file's last hash, hex: git writes it as the hash of everything before
    names_pack: str | None = None  # an .idx: the pack hash it was written for (on disk only)


@dataclass(frozen=True)
class ObjectFiles:
    """A copy's object files: every pack file by name, and the loose objects' count and bytes."""

    packs: dict[str, PackFile]
    loose_count: int
    loose_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {
            "packs": {name: {"size": f.size, "trailer": f.trailer} for name, f in sorted(self.packs.items())},
            "loose_count": self.loose_count, "loose_bytes": self.loose_bytes,
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> ObjectFiles:
        try:
            packs = {}
            for name, f in data["packs"].items():
                if not _PACK_FILE.match(name) or not _TRAILER.match(f["trailer"]):
                    raise ValueError(name)
                packs[name] = PackFile(size=int(f["size"]), trailer=str(f["trailer"]))
            return cls(packs, int(data["loose_count"]), int(data["loose_bytes"]))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise InvalidInput(f"repository {where} has an invalid object record ({exc})") from None


def scan(repo: Path) -> ObjectFiles:
    """What a bare repository's object files are now (a missing folder holds nothing)."""
    packs = {}
    pack_dir = repo / "objects" / "pack"
    names = sorted(os.listdir(pack_dir)) if pack_dir.is_dir() else []
    for name in names:
        m = _PACK_FILE.match(name)
        if m is None:
            continue
        width = len(m.group(1)) // 2
        with open(pack_dir / name, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            tail = os.pread(f.fileno(), 2 * width, max(0, size - 2 * width))
        trailer = tail[-width:].hex() if len(tail) >= width else ""
        names_pack = tail[:width].hex() if m.group(2) == "idx" and len(tail) == 2 * width else None
        packs[name] = PackFile(size, trailer, names_pack)
    count = total = 0
    objects = repo / "objects"
    for sub in sorted(os.listdir(objects)) if objects.is_dir() else []:
        if _LOOSE_DIR.match(sub):
            for entry in os.scandir(objects / sub):
                if entry.is_file(follow_symlinks=False) and not entry.name.startswith("tmp_"):
                    count += 1
                    total += entry.stat(follow_symlinks=False).st_size
    return ObjectFiles(packs, count, total)


def inodes(repo: Path) -> set[tuple[int, int]]:
    """The (device, inode) of every object file of a copy: two copies that share one share its bytes."""
    found = set()
    for dirpath, _dirs, files in os.walk(repo / "objects"):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            found.add((st.st_dev, st.st_ino))
    return found


def damage(recorded: ObjectFiles, found: ObjectFiles) -> list[str]:
    """How ``found`` differs from ``recorded`` (empty: as recorded). Files the record does not
    name are no damage: git wrote them after, or they are a leftover git ignores."""
    problems = []
    for name, want in sorted(recorded.packs.items()):
        got = found.packs.get(name)
        if got is None:
            problems.append(f"missing {name}")
        elif got.size != want.size:
            problems.append(f"{name} is {got.size} bytes, not {want.size}")
        elif got.trailer != want.trailer:
            problems.append(f"{name} does not end with its checksum")
    for name, got in sorted(found.packs.items()):
        pack = recorded.packs.get(name.removesuffix(".idx") + ".pack")
        if name.endswith(".idx") and name in recorded.packs and pack is not None and got.names_pack != pack.trailer:
            problems.append(f"{name} names another pack's checksum")
    if found.loose_count != recorded.loose_count or found.loose_bytes != recorded.loose_bytes:
        problems.append(
            f"{found.loose_count} loose objects of {found.loose_bytes} bytes, not {recorded.loose_count} "
            f"of {recorded.loose_bytes} bytes"
        )
    return problems


def inconsistencies(found: ObjectFiles) -> list[str]:
    """Damage that shows without a record: a pack and its index that do not belong together,
    or one without the other."""
    problems = []
    for name, f in sorted(found.packs.items()):
        stem, _, kind = name.rpartition(".")
        if kind == "pack" and f"{stem}.idx" not in found.packs:
            problems.append(f"{name} has no index")
        elif kind == "idx":
            pack = found.packs.get(f"{stem}.pack")
            if pack is None:
                problems.append(f"missing {stem}.pack")
            elif f.names_pack != pack.trailer:
                problems.append(f"{stem}.pack does not match its index")
    return problems
