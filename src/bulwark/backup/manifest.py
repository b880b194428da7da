"""The manifest of a snapshot: where it came from, when, and every repository's refs and sizes.

It is written last, so a snapshot with a manifest (and no INCOMPLETE marker) is whole.
Everything read from it is checked: storage ids become paths, and a newer format is refused
rather than misread.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from bulwark.backup.objects import ObjectFiles
from bulwark.errors import InvalidInput

FORMAT = 1

_OID = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


class NewerFormat(InvalidInput):
    """Written by a newer Bulwark: refused, since reading it as this format could restore it wrongly."""


@dataclass
class RepoEntry:
    """One repository of a snapshot: where it is, what its refs were at the point."""

    storage_id: str
    owner: str
    name: str
    head: str | None
    refs: dict[str, str]
    checksum: str
    bytes: int = 0  # newly written for this snapshot (not hard-linked from the previous one)
    size: int = 0  # everything the copy holds
    fetched: bool = False  # whether the snapshot needed objects from the instance for it
    # The copy's object files as written; None in manifests of older Bulwarks (then unknown).
    objects: ObjectFiles | None = None
    # Why the previous snapshot's copy was not used (damaged), so this one was fetched afresh.
    repaired: str | None = None

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    def to_json(self) -> dict[str, Any]:
        return {
            "storage_id": self.storage_id, "owner": self.owner, "name": self.name, "head": self.head,
            "refs": dict(sorted(self.refs.items())), "checksum": self.checksum, "bytes": self.bytes,
            "size": self.size, "fetched": self.fetched,
            **({"objects": self.objects.to_json()} if self.objects is not None else {}),
            **({"repaired": self.repaired} if self.repaired else {}),
        }

    @classmethod
    def from_json(cls, data: Any) -> RepoEntry:
        """Read and check one entry; the storage id becomes a path, so it must be a plain name."""
        if not isinstance(data, dict):
            raise InvalidInput("a repository entry is not an object")
        storage_id = data.get("storage_id")
        if not isinstance(storage_id, str) or not storage_id.isalnum() or not storage_id.isascii():
            raise InvalidInput(f"bad storage id {storage_id!r}")
        refs = data.get("refs")
        if not isinstance(refs, dict) or not all(
            isinstance(k, str) and k.startswith("refs/") and isinstance(v, str) and _OID.match(v)
            for k, v in refs.items()
        ):
            raise InvalidInput(f"repository {storage_id} has invalid refs")
        head = data.get("head")
        checksum = data.get("checksum")
        if (head is not None and not isinstance(head, str)) or not isinstance(checksum, str):
            raise InvalidInput(f"repository {storage_id} has an invalid head or checksum")
        return cls(
            storage_id=storage_id, owner=str(data.get("owner", "")), name=str(data.get("name", "")), head=head,
            refs=dict(refs), checksum=checksum, bytes=int(data.get("bytes", 0)), size=int(data.get("size", 0)),
            fetched=bool(data.get("fetched", False)),
            objects=ObjectFiles.from_json(data["objects"], storage_id) if data.get("objects") is not None else None,
            repaired=str(data["repaired"]) if data.get("repaired") else None,
        )


@dataclass
class Manifest:
    id: str
    source_url: str
    source_mode: str
    taken_at: str
    started_at: str
    finished_at: str
    metadata_sha256: str
    metadata_bytes: int = 0
    repositories: list[RepoEntry] = field(default_factory=list)
    format: int = FORMAT

    @property
    def repaired(self) -> list[RepoEntry]:
        return [r for r in self.repositories if r.repaired]

    @property
    def bytes_written(self) -> int:
        return self.metadata_bytes + sum(r.bytes for r in self.repositories)

    @property
    def size(self) -> int:
        return self.metadata_bytes + sum(r.size for r in self.repositories)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "id": self.id,
            "source": {"url": self.source_url, "mode": self.source_mode},
            "taken_at": self.taken_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "metadata_sha256": self.metadata_sha256,
            "metadata_bytes": self.metadata_bytes,
            "repositories": [r.to_json() for r in self.repositories],
            "totals": {
                "repositories": len(self.repositories),
                "refs": sum(len(r.refs) for r in self.repositories),
                "bytes_written": self.bytes_written,
                "size": self.size,
                "repaired": len(self.repaired),
            },
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> Manifest:
        check_format(data, where)
        try:
            source = data.get("source") or {}
            return cls(
                id=str(data["id"]), source_url=str(source.get("url", "")), source_mode=str(source.get("mode", "")),
                taken_at=str(data["taken_at"]), started_at=str(data.get("started_at", "")),
                finished_at=str(data.get("finished_at", "")), metadata_sha256=str(data["metadata_sha256"]),
                metadata_bytes=int(data.get("metadata_bytes", 0)),
                repositories=[RepoEntry.from_json(r) for r in data["repositories"]], format=data["format"],
            )
        except NewerFormat:
            raise
        except (KeyError, TypeError, AttributeError, ValueError, InvalidInput) as exc:
            detail = exc.message if isinstance(exc, InvalidInput) else f"missing or invalid {exc}"
            raise InvalidInput(f"the manifest of {where} is damaged: {detail}") from None


def check_format(data: Any, where: str) -> None:
    """Refuse what a newer Bulwark wrote (:class:`NewerFormat`) or what has no format at all."""
    if not isinstance(data, dict) or not isinstance(data.get("format"), int):
        raise InvalidInput(f"{where} has no valid backup format number")
    if data["format"] > FORMAT:
        raise NewerFormat(
            f"{where} is in backup format {data['format']}, newer than this Bulwark reads ({FORMAT}); "
            "use a newer Bulwark for it"
        )
