"""SSH keys, the server's host keys and node settings in the SQLite store."""

from __future__ import annotations

import sqlite3
from datetime import datetime

from bulwark.errors import AlreadyExists
from bulwark.models import AccountType, HostKey, MaintenanceState, SshKey
from bulwark.store.sqlite.base import _Base
from bulwark.store.sqlite.rows import _SSH_KEY_COLUMNS, _host_key, _is_unique_violation, _load_optional_time, _ssh_key
from bulwark.store.times import dump_optional_time as _dump_optional_time
from bulwark.store.times import dump_time as _dump_time


class _KeysAndSettings(_Base):
    """The SSH keys, host keys and node settings of :class:`SQLiteStore`."""

    # -- SSH keys ----------------------------------------------------------------------

    def create_ssh_key(
        self,
        *,
        fingerprint: str,
        algorithm: str,
        key: str,
        title: str,
        user_id: int | None = None,
        repo_id: int | None = None,
        read_only: bool = False,
    ) -> SshKey:
        if (user_id is None) == (repo_id is None):
            raise ValueError("an SSH key belongs to a user or to a repository: give exactly one of user_id, repo_id")
        with self._write() as conn:
            if user_id is not None:
                self._require_account(conn, user_id, AccountType.USER, "user")
                read_only = False
            else:
                assert repo_id is not None
                self._require_repo(conn, repo_id)
            try:
                cursor = conn.execute(
                    "INSERT INTO ssh_keys (fingerprint, algorithm, public_key, title, user_id, repo_id,"
                    " read_only, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (fingerprint, algorithm, key, title, user_id, repo_id, int(read_only), self._now()),
                )
            except sqlite3.IntegrityError as exc:
                if _is_unique_violation(exc):
                    raise AlreadyExists(f"the SSH key {fingerprint} is already in use") from exc
                raise
            row = conn.execute(f"SELECT {_SSH_KEY_COLUMNS} FROM ssh_keys WHERE id = ?", (cursor.lastrowid,)).fetchone()
            return _ssh_key(row)

    def get_ssh_key(self, key_id: int) -> SshKey | None:
        row = self._row(f"SELECT {_SSH_KEY_COLUMNS} FROM ssh_keys WHERE id = ?", (key_id,))
        return None if row is None else _ssh_key(row)

    def get_ssh_key_by_fingerprint(self, fingerprint: str) -> SshKey | None:
        row = self._row(f"SELECT {_SSH_KEY_COLUMNS} FROM ssh_keys WHERE fingerprint = ?", (fingerprint,))
        return None if row is None else _ssh_key(row)

    def list_ssh_keys(self, *, user_id: int | None = None, repo_id: int | None = None) -> list[SshKey]:
        if (user_id is None) == (repo_id is None):
            raise ValueError("list the SSH keys of a user or of a repository: give exactly one of user_id, repo_id")
        column, owner = ("user_id", user_id) if user_id is not None else ("repo_id", repo_id)
        rows = self._rows(f"SELECT {_SSH_KEY_COLUMNS} FROM ssh_keys WHERE {column} = ? ORDER BY id", (owner,))
        return [_ssh_key(row) for row in rows]

    def delete_ssh_key(self, key_id: int) -> bool:
        with self._write() as conn:
            return conn.execute("DELETE FROM ssh_keys WHERE id = ?", (key_id,)).rowcount > 0

    def touch_ssh_key(self, key_id: int, when: datetime) -> None:
        # As for tokens: connections finish out of order, so keep the latest time, and a key
        # deleted meanwhile is no error.
        stamp = _dump_time(when)
        with self._write() as conn:
            conn.execute(
                "UPDATE ssh_keys SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
                (stamp, key_id, stamp),
            )

    # -- SSH host keys -----------------------------------------------------------------

    def get_ssh_host_keys(self) -> list[HostKey]:
        rows = self._rows("SELECT algorithm, private_key, created_at FROM ssh_host_keys ORDER BY algorithm")
        return [_host_key(row) for row in rows]

    def add_ssh_host_key(self, algorithm: str, private_key: str) -> HostKey:
        with self._write() as conn:
            # The first writer's key stays; a later one reads it back unchanged.
            conn.execute(
                "INSERT OR IGNORE INTO ssh_host_keys (algorithm, private_key, created_at) VALUES (?, ?, ?)",
                (algorithm, private_key, self._now()),
            )
            row = conn.execute(
                "SELECT algorithm, private_key, created_at FROM ssh_host_keys WHERE algorithm = ?", (algorithm,)
            ).fetchone()
            return _host_key(row)

    # -- node settings -----------------------------------------------------------------

    def get_maintenance(self) -> MaintenanceState:
        row = self._row("SELECT enabled, message, since FROM maintenance WHERE id = 1")
        if row is None:
            return MaintenanceState(enabled=False)
        return MaintenanceState(
            enabled=bool(row["enabled"]),
            message=row["message"],
            since=_load_optional_time(row["since"]),
        )

    def set_maintenance(self, state: MaintenanceState) -> None:
        since = _dump_optional_time(state.since)
        with self._write() as conn:
            conn.execute(
                "INSERT INTO maintenance (id, enabled, message, since) VALUES (1, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET enabled = excluded.enabled,"
                " message = excluded.message, since = excluded.since",
                (int(state.enabled), state.message, since),
            )

    def get_setting(self, key: str) -> str | None:
        row = self._row("SELECT value FROM settings WHERE key = ?", (key,))
        return None if row is None else row["value"]

    def set_setting(self, key: str, value: str | None) -> None:
        with self._write() as conn:
            if value is None:
                conn.execute("DELETE FROM settings WHERE key = ?", (key,))
            else:
                conn.execute(
                    "INSERT INTO settings (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )
