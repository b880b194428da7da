"""The change log of the SQLite store and the replication that follows it."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any

from bulwark.errors import Conflict, InvalidInput, StoreError
from bulwark.store.changes import Change, ChangeOp, Snapshot
from bulwark.store.sqlite.base import _Base
from bulwark.store.sqlite.rows import _change, _checked_row, _dump_json
from bulwark.store.sqlite.schema import _NOW_SQL, EVENT_TABLE, REPLICATED_TABLES
from bulwark.store.times import dump_time as _dump_time


class _Replication(_Base):
    """The change log of :class:`SQLiteStore`: reading it, and applying a primary's changes and snapshots."""

    # -- change log and replication ----------------------------------------------------

    @staticmethod
    def _last_seq(conn: sqlite3.Connection) -> int:
        # The AUTOINCREMENT counter survives trimming and is what a snapshot sets.
        row = conn.execute(
            "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'changes'), 0),"
            " coalesce((SELECT max(seq) FROM changes), 0))"
        ).fetchone()
        return int(row[0])

    @staticmethod
    def _position(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT position FROM replication_state WHERE id = 1").fetchone()
        if row is None:
            raise StoreError("the replication state of the metadata database is missing")
        return int(row["position"])

    @staticmethod
    def _pause_capture(conn: sqlite3.Connection, paused: bool) -> None:
        # Only ever set inside a write transaction and cleared before it commits,
        # so no other transaction sees it set.
        conn.execute("UPDATE replication_state SET capture_paused = ? WHERE id = 1", (int(paused),))

    @staticmethod
    def _set_sequence(conn: sqlite3.Connection, table: str, value: int) -> None:
        """Make the next AUTOINCREMENT id of ``table`` be ``value + 1``."""
        conn.execute("DELETE FROM sqlite_sequence WHERE name = ?", (table,))
        conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, value))

    def last_seq(self) -> int:
        with self._read() as conn:
            return self._last_seq(conn)

    def oldest_seq(self) -> int:
        row = self._row("SELECT coalesce(min(seq), 0) FROM changes")
        assert row is not None
        return int(row[0])

    def changes_since(self, after: int, *, limit: int = 500) -> list[Change]:
        if limit < 1:
            raise InvalidInput(f"limit must be positive, got {limit}", field="limit")
        rows = self._rows(
            "SELECT seq, tbl, op, key_json, row_json, at FROM changes WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        )
        return [_change(row) for row in rows]

    def trim(self, keep_after: int) -> int:
        with self._write() as conn:
            return conn.execute("DELETE FROM changes WHERE seq <= ?", (keep_after,)).rowcount

    def record_event(self, kind: str, payload: dict[str, Any]) -> Change:
        if not isinstance(kind, str) or not kind:
            raise InvalidInput("an event needs a kind", field="kind")
        if not isinstance(payload, dict):
            raise InvalidInput("an event's payload must be an object", field="payload")
        key_json = _dump_json({"kind": kind}, "the event kind")
        row_json = _dump_json(payload, "the event payload")
        with self._write() as conn:
            cursor = conn.execute(
                f"INSERT INTO changes (tbl, op, key_json, row_json, at) VALUES (?, ?, ?, ?, {_NOW_SQL})",
                (EVENT_TABLE, ChangeOp.EVENT.value, key_json, row_json),
            )
            row = conn.execute(
                "SELECT seq, tbl, op, key_json, row_json, at FROM changes WHERE seq = ?", (cursor.lastrowid,)
            ).fetchone()
            return _change(row)

    def snapshot(self) -> Snapshot:
        with self._read() as conn:
            seq = self._last_seq(conn)
            tables = {}
            for table in REPLICATED_TABLES:
                shape = self._shapes[table]
                rows = conn.execute(f"SELECT {', '.join(shape.columns)} FROM {table} ORDER BY {', '.join(shape.key)}")
                tables[table] = [dict(row) for row in rows]
            marks = conn.execute(
                f"SELECT name, seq FROM sqlite_sequence WHERE name IN ({', '.join('?' * len(REPLICATED_TABLES))})",
                REPLICATED_TABLES,
            )
            sequences = {row["name"]: int(row["seq"]) for row in marks}
        return Snapshot(seq=seq, tables=tables, sequences=sequences)

    def load_snapshot(self, snapshot: Snapshot) -> None:
        if not isinstance(snapshot.seq, int) or snapshot.seq < 0:
            raise InvalidInput(f"invalid snapshot seq {snapshot.seq!r}")
        unknown = sorted(set(snapshot.tables) - set(REPLICATED_TABLES))
        if unknown:
            raise InvalidInput(f"the snapshot has tables that are not replicated: {', '.join(unknown)}")
        if not all(isinstance(mark, int) and mark >= 0 for mark in snapshot.sequences.values()):
            raise InvalidInput("the snapshot's id counters must be non-negative integers")
        with self._write() as conn:
            self._pause_capture(conn, True)
            for table in reversed(REPLICATED_TABLES):
                conn.execute(f"DELETE FROM {table}")
            for table in REPLICATED_TABLES:
                shape = self._shapes[table]
                for row in snapshot.tables.get(table, []):
                    what = f"snapshot row of {table}"
                    checked = _checked_row(shape, row, what)
                    self._execute_row(
                        conn,
                        f"INSERT INTO {table} ({', '.join(checked)}) VALUES ({', '.join('?' * len(checked))})",
                        list(checked.values()),
                        what,
                    )
                if shape.autoincrement:
                    # Ids of rows deleted on the primary must not be handed out again
                    # after a failover, so continue above the primary's counter too.
                    highest = conn.execute(f"SELECT coalesce(max({shape.key[0]}), 0) FROM {table}").fetchone()[0]
                    self._set_sequence(conn, table, max(int(highest), snapshot.sequences.get(table, 0)))
            conn.execute("DELETE FROM changes")
            self._set_sequence(conn, "changes", snapshot.seq)
            conn.execute("UPDATE replication_state SET position = ? WHERE id = 1", (snapshot.seq,))
            self._pause_capture(conn, False)

    def replication_position(self) -> int:
        with self._read() as conn:
            return self._position(conn)

    def apply_changes(self, changes: list[Change]) -> int:
        with self._write() as conn:
            position = self._position(conn)
            if not changes:
                return position
            local = self._last_seq(conn)
            if local != position:
                # Its own writes took the seqs the primary's changes need.
                raise Conflict(
                    f"this node's change log reaches {local} but it has applied changes up to {position} only:"
                    " it has changes of its own; load a snapshot from the primary"
                )
            for expected, change in enumerate(changes, position + 1):
                if change.seq != expected:
                    raise Conflict(
                        f"changes must continue at seq {position + 1} without gaps or replays:"
                        f" expected {expected}, got {change.seq}"
                    )
            self._pause_capture(conn, True)
            for change in changes:
                self._apply_change(conn, change)
            conn.execute("UPDATE replication_state SET position = ? WHERE id = 1", (changes[-1].seq,))
            self._pause_capture(conn, False)
            return changes[-1].seq

    def _apply_change(self, conn: sqlite3.Connection, change: Change) -> None:
        """Write one change from a primary and copy it into the local log under its seq."""
        what = f"change {change.seq}"
        try:
            op = ChangeOp(change.op)
        except ValueError:
            raise InvalidInput(f"{what}: unknown operation {change.op!r}") from None
        if not isinstance(change.key, dict):
            raise InvalidInput(f"{what}: the key is not an object")
        if op is ChangeOp.EVENT:
            if change.table != EVENT_TABLE:
                raise InvalidInput(f"{what}: an event must have table {EVENT_TABLE!r}, not {change.table!r}")
        else:
            shape = self._shapes.get(change.table)
            if shape is None:
                raise InvalidInput(f"{what}: {change.table!r} is not a replicated table")
            what = f"{what} ({op.value} on {change.table})"
            if set(change.key) != set(shape.key):
                raise InvalidInput(f"{what}: the key must name exactly {', '.join(shape.key)}")
            key = _checked_row(shape, change.key, what)
            if op is ChangeOp.DELETE:
                # A row already gone was removed here by the cascade of its parent's delete.
                where = " AND ".join(f"{name} = ?" for name in shape.key)
                self._execute_row(conn, f"DELETE FROM {change.table} WHERE {where}", list(key.values()), what)
            else:
                row = _checked_row(shape, change.row, what)
                if any(row[name] != key[name] for name in shape.key):
                    raise InvalidInput(f"{what}: the row does not match its key")
                # An upsert, never REPLACE: replacing a row deletes it first, and the
                # delete would cascade to its children (an account's tokens, say).
                names = list(row)
                updates = [f"{name} = excluded.{name}" for name in names if name not in shape.key]
                action = f"DO UPDATE SET {', '.join(updates)}" if updates else "DO NOTHING"
                sql = (
                    f"INSERT INTO {change.table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
                    f" ON CONFLICT ({', '.join(shape.key)}) {action}"
                )
                self._execute_row(conn, sql, list(row.values()), what)
        if not isinstance(change.at, datetime):
            raise InvalidInput(f"{what}: invalid time {change.at!r}")
        conn.execute(
            "INSERT INTO changes (seq, tbl, op, key_json, row_json, at) VALUES (?, ?, ?, ?, ?, ?)",
            (
                change.seq,
                change.table,
                op.value,
                _dump_json(change.key, f"{what}: the key"),
                None if change.row is None else _dump_json(change.row, f"{what}: the row"),
                _dump_time(change.at),
            ),
        )

    @staticmethod
    def _execute_row(conn: sqlite3.Connection, sql: str, params: list[Any], what: str) -> None:
        try:
            conn.execute(sql, params)
        except (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.ProgrammingError, OverflowError) as exc:
            raise InvalidInput(f"{what} cannot be applied: {exc}") from None
