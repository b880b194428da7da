"""The change log: an ordered, gap-free stream of every metadata change.

HA replication is built on it. A backend that keeps a change log (SQLite does)
records, in the same transaction as each mutation, one :class:`Change` per
changed row of a replicated table, numbered by ``seq`` without gaps. A replica
applies them in order, exactly once, storing its position in the same
transaction as the rows (``apply_changes``), so a crash never applies a change
twice or skips one.

Node-local state (maintenance mode, settings, the log itself, replication
bookkeeping) is never part of the stream.

Events that are not rows (a push changed a repository's refs) enter the same
stream through ``record_event`` so that a replica sees them in order with the
metadata they depend on (a push to a repository created just before).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


class ChangeOp(enum.StrEnum):
    UPSERT = "upsert"
    DELETE = "delete"
    EVENT = "event"


@dataclass(frozen=True)
class Change:
    seq: int
    table: str  # a replicated table's name, or "event" for events
    op: ChangeOp
    key: dict[str, Any]  # the row's primary key columns, or the event's kind
    row: dict[str, Any] | None  # every column after the change (None for deletes)
    at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "table": self.table,
            "op": self.op.value,
            "key": self.key,
            "row": self.row,
            "at": self.at.isoformat(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Change:
        """Parse a change received from another node; ``ValueError``/``KeyError``/``TypeError`` if malformed."""
        seq = data["seq"]
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise ValueError("seq must be a positive integer")
        key, row = data["key"], data.get("row")
        if not isinstance(key, dict) or not (row is None or isinstance(row, dict)):
            raise ValueError("key and row must be objects")
        return cls(
            seq=seq,
            table=str(data["table"]),
            op=ChangeOp(data["op"]),
            key=key,
            row=row,
            at=datetime.fromisoformat(str(data["at"])),
        )


@dataclass(frozen=True)
class Snapshot:
    """Every replicated row at one point of the stream (``seq``).

    ``sequences`` holds, per table, the highest id ever handed out, so that a node
    loading the snapshot never reuses the id of a row deleted before it; when it is
    missing, ids continue above the highest id present.
    """

    seq: int
    tables: dict[str, list[dict[str, Any]]]
    sequences: dict[str, int] = field(default_factory=dict)


class ChangeLog(Protocol):
    def last_seq(self) -> int:
        """The seq of the newest change, 0 for an empty log."""
        ...

    def changes_since(self, after: int, *, limit: int = 500) -> list[Change]:
        """Changes with ``seq > after`` in order, at most ``limit``."""
        ...

    def oldest_seq(self) -> int:
        """The seq of the oldest change still kept (older ones may be trimmed); 0 if empty."""
        ...

    def trim(self, keep_after: int) -> int:
        """Drop changes with ``seq <= keep_after``; return how many were dropped."""
        ...

    def record_event(self, kind: str, payload: dict[str, Any]) -> Change:
        """Append a non-row event (for example a push) to the stream."""
        ...

    def snapshot(self) -> Snapshot:
        """Every replicated row and the seq they are consistent with, read in one transaction."""
        ...

    def load_snapshot(self, snapshot: Snapshot) -> None:
        """Replace every replicated row with the snapshot's and set the position to its seq,
        atomically. The local log restarts at the snapshot's seq."""
        ...

    def replication_position(self) -> int:
        """The seq of the last change applied from a primary (0 if none)."""
        ...

    def apply_changes(self, changes: list[Change]) -> int:
        """Apply changes that must continue the position exactly (first seq = position + 1,
        then consecutive), with the position, in one transaction; return the new position.

        A gap, a replay or an unknown table raises ``Conflict`` / ``InvalidInput`` and
        applies nothing. The applied changes are copied into the local log under the
        same seqs, so a promoted replica's log continues the primary's numbering.
        """
        ...
