"""Accounts, their tokens and organization membership in the SQLite store."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from datetime import datetime

from bulwark.errors import AlreadyExists, NotFound
from bulwark.models import Account, AccountType, Membership, OrgRole, Repository, Scope, Token
from bulwark.store.sqlite.base import _Base
from bulwark.store.sqlite.rows import (
    _ACCOUNT_COLUMNS,
    _REPO_COLUMNS,
    _TOKEN_COLUMNS,
    _account,
    _dump_scopes,
    _enum,
    _is_unique_violation,
    _membership,
    _page,
    _repo,
    _token,
)
from bulwark.store.times import dump_optional_time as _dump_optional_time
from bulwark.store.times import dump_time as _dump_time


class _Accounts(_Base):
    """The accounts, tokens and memberships of :class:`SQLiteStore`."""

    # -- accounts ----------------------------------------------------------------------

    def _insert_account(
        self,
        conn: sqlite3.Connection,
        login: str,
        type: AccountType,
        *,
        name: str,
        email: str,
        site_admin: bool = False,
        password_hash: str | None = None,
    ) -> int:
        now = self._now()
        try:
            cursor = conn.execute(
                "INSERT INTO accounts (login, type, name, email, site_admin, password_hash,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (login, type.value, name, email, int(site_admin), password_hash, now, now),
            )
        except sqlite3.IntegrityError as exc:
            if _is_unique_violation(exc):
                raise AlreadyExists(f"login {login!r} is already taken") from exc
            raise
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    @staticmethod
    def _read_account(conn: sqlite3.Connection, account_id: int) -> Account:
        row = conn.execute(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id = ?", (account_id,)).fetchone()
        assert row is not None
        return _account(row)

    def create_user(
        self,
        login: str,
        *,
        name: str = "",
        email: str = "",
        site_admin: bool = False,
        password_hash: str | None = None,
    ) -> Account:
        with self._write() as conn:
            user_id = self._insert_account(
                conn,
                login,
                AccountType.USER,
                name=name,
                email=email,
                site_admin=site_admin,
                password_hash=password_hash,
            )
            return self._read_account(conn, user_id)

    def create_org(self, login: str, *, owner_id: int, name: str = "", email: str = "") -> Account:
        with self._write() as conn:
            self._require_account(conn, owner_id, AccountType.USER, "owner")
            org_id = self._insert_account(conn, login, AccountType.ORGANIZATION, name=name, email=email)
            conn.execute(
                "INSERT INTO memberships (org_id, user_id, role) VALUES (?, ?, ?)",
                (org_id, owner_id, OrgRole.OWNER.value),
            )
            return self._read_account(conn, org_id)

    def get_account(self, login: str) -> Account | None:
        row = self._row(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE login = ?", (login,))
        return None if row is None else _account(row)

    def get_account_by_id(self, account_id: int) -> Account | None:
        row = self._row(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id = ?", (account_id,))
        return None if row is None else _account(row)

    def list_accounts(
        self, type: AccountType | None = None, *, limit: int | None = None, offset: int = 0
    ) -> list[Account]:
        page = _page(limit, offset)
        if type is None:
            rows = self._rows(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts ORDER BY id LIMIT ? OFFSET ?", page)
        else:
            rows = self._rows(
                f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE type = ? ORDER BY id LIMIT ? OFFSET ?",
                (_enum(AccountType, type, "type").value, *page),
            )
        return [_account(row) for row in rows]

    def save_account(self, account: Account) -> Account:
        with self._write() as conn:
            try:
                cursor = conn.execute(
                    "UPDATE accounts SET login = ?, name = ?, email = ?, email_public = ?, site_admin = ?,"
                    " suspended = ?, updated_at = ? WHERE id = ?",
                    (
                        account.login,
                        account.name,
                        account.email,
                        int(account.email_public),
                        int(account.site_admin),
                        int(account.suspended),
                        self._now(),
                        account.id,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                if _is_unique_violation(exc):
                    raise AlreadyExists(f"login {account.login!r} is already taken") from exc
                raise
            if cursor.rowcount == 0:
                raise NotFound(f"account {account.id} does not exist")
            return self._read_account(conn, account.id)

    def delete_account(self, account_id: int) -> list[Repository]:
        with self._write() as conn:
            repos = [
                _repo(row)
                for row in conn.execute(
                    f"SELECT {_REPO_COLUMNS} FROM repositories WHERE owner_id = ? ORDER BY id",
                    (account_id,),
                )
            ]
            # ON DELETE CASCADE removes the tokens, SSH keys, memberships (on either side),
            # collaborations, repositories and their collaborators and deploy keys in this statement.
            cursor = conn.execute("DELETE FROM accounts WHERE id = ?", (account_id,))
            if cursor.rowcount == 0:
                raise NotFound(f"account {account_id} does not exist")
            return repos

    def get_password_hash(self, user_id: int) -> str | None:
        row = self._row(
            "SELECT password_hash FROM accounts WHERE id = ? AND type = ?",
            (user_id, AccountType.USER.value),
        )
        return None if row is None else row["password_hash"]

    def set_password_hash(self, user_id: int, password_hash: str | None) -> None:
        with self._write() as conn:
            self._require_account(conn, user_id, AccountType.USER, "user")
            conn.execute(
                "UPDATE accounts SET password_hash = ?, updated_at = ? WHERE id = ?",
                (password_hash, self._now(), user_id),
            )

    # -- tokens ------------------------------------------------------------------------

    def create_token(
        self,
        user_id: int,
        *,
        token_hash: str,
        token_prefix: str,
        scopes: Iterable[Scope],
        note: str = "",
        expires_at: datetime | None = None,
    ) -> Token:
        stored_scopes = _dump_scopes(scopes)
        stored_expiry = _dump_optional_time(expires_at)
        with self._write() as conn:
            self._require_account(conn, user_id, AccountType.USER, "user")
            try:
                cursor = conn.execute(
                    "INSERT INTO tokens (user_id, note, token_hash, token_prefix, scopes,"
                    " created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        user_id,
                        note,
                        token_hash,
                        token_prefix,
                        stored_scopes,
                        self._now(),
                        stored_expiry,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                if _is_unique_violation(exc):
                    raise AlreadyExists("a token with this hash already exists") from exc
                raise
            row = conn.execute(f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE id = ?", (cursor.lastrowid,)).fetchone()
            return _token(row)

    def get_token_by_hash(self, token_hash: str) -> Token | None:
        row = self._row(f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE token_hash = ?", (token_hash,))
        return None if row is None else _token(row)

    def list_tokens(self, user_id: int) -> list[Token]:
        rows = self._rows(f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE user_id = ? ORDER BY id", (user_id,))
        return [_token(row) for row in rows]

    def delete_token(self, token_id: int) -> bool:
        with self._write() as conn:
            return conn.execute("DELETE FROM tokens WHERE id = ?", (token_id,)).rowcount > 0

    def touch_token(self, token_id: int, when: datetime) -> None:
        # Requests finish out of order, so keep the latest time rather than the last
        # written. A token deleted meanwhile is no error: the request was authorized.
        stamp = _dump_time(when)
        with self._write() as conn:
            conn.execute(
                "UPDATE tokens SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
                (stamp, token_id, stamp),
            )

    def end_token_sessions(self, token_id: int, when: datetime) -> None:
        stamp = _dump_time(when)
        with self._write() as conn:
            conn.execute(
                "UPDATE tokens SET sessions_ended_at = ? WHERE id = ?"
                " AND (sessions_ended_at IS NULL OR sessions_ended_at < ?)",
                (stamp, token_id, stamp),
            )

    # -- organization membership -------------------------------------------------------

    def set_membership(self, org_id: int, user_id: int, role: OrgRole) -> Membership:
        role = _enum(OrgRole, role, "role")
        with self._write() as conn:
            self._require_account(conn, org_id, AccountType.ORGANIZATION, "organization")
            self._require_account(conn, user_id, AccountType.USER, "user")
            conn.execute(
                "INSERT INTO memberships (org_id, user_id, role) VALUES (?, ?, ?)"
                " ON CONFLICT (org_id, user_id) DO UPDATE SET role = excluded.role",
                (org_id, user_id, role.value),
            )
        return Membership(org_id=org_id, user_id=user_id, role=role)

    def remove_membership(self, org_id: int, user_id: int) -> bool:
        with self._write() as conn:
            cursor = conn.execute("DELETE FROM memberships WHERE org_id = ? AND user_id = ?", (org_id, user_id))
            return cursor.rowcount > 0

    def get_membership(self, org_id: int, user_id: int) -> Membership | None:
        row = self._row(
            "SELECT org_id, user_id, role FROM memberships WHERE org_id = ? AND user_id = ?",
            (org_id, user_id),
        )
        return None if row is None else _membership(row)

    def list_members(self, org_id: int, role: OrgRole | None = None) -> list[Membership]:
        if role is None:
            rows = self._rows(
                "SELECT org_id, user_id, role FROM memberships WHERE org_id = ? ORDER BY user_id",
                (org_id,),
            )
        else:
            rows = self._rows(
                "SELECT org_id, user_id, role FROM memberships WHERE org_id = ? AND role = ? ORDER BY user_id",
                (org_id, _enum(OrgRole, role, "role").value),
            )
        return [_membership(row) for row in rows]

    def list_memberships_of(self, user_id: int) -> list[Membership]:
        rows = self._rows(
            "SELECT org_id, user_id, role FROM memberships WHERE user_id = ? ORDER BY org_id",
            (user_id,),
        )
        return [_membership(row) for row in rows]
