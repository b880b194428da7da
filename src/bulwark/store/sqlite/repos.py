"""Repositories and their collaborators in the SQLite store."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from bulwark.errors import AlreadyExists, InvalidInput
from bulwark.models import AccountType, Collaborator, Permission, Repository, Visibility
from bulwark.store.sqlite.base import _Base
from bulwark.store.sqlite.rows import _REPO_COLUMNS, _collaborator, _enum, _is_unique_violation, _page, _repo
from bulwark.store.times import dump_optional_time as _dump_optional_time


class _Repositories(_Base):
    """The repositories and collaborators of :class:`SQLiteStore`."""

    # -- repositories ------------------------------------------------------------------

    @staticmethod
    def _repo_clash(exc: sqlite3.IntegrityError, name: str) -> Exception:
        """The error for a uniqueness violation on ``repositories``."""
        if "storage_id" in str(exc):
            return AlreadyExists("a repository with this storage id already exists")
        return AlreadyExists(f"repository {name!r} already exists for this owner")

    def create_repo(
        self,
        owner_id: int,
        name: str,
        *,
        storage_id: str,
        visibility: Visibility = Visibility.PUBLIC,
        description: str = "",
        default_branch: str = "main",
    ) -> Repository:
        with self._write() as conn:
            self._require_account(conn, owner_id, None, "owner")
            now = self._now()
            try:
                cursor = conn.execute(
                    "INSERT INTO repositories (owner_id, name, storage_id, visibility,"
                    " description, default_branch, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        owner_id,
                        name,
                        storage_id,
                        _enum(Visibility, visibility, "visibility").value,
                        description,
                        default_branch,
                        now,
                        now,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                if _is_unique_violation(exc):
                    raise self._repo_clash(exc, name) from exc
                raise
            row = conn.execute(f"SELECT {_REPO_COLUMNS} FROM repositories WHERE id = ?", (cursor.lastrowid,)).fetchone()
            return _repo(row)

    def get_repo(self, owner_id: int, name: str) -> Repository | None:
        row = self._row(
            f"SELECT {_REPO_COLUMNS} FROM repositories WHERE owner_id = ? AND name = ?",
            (owner_id, name),
        )
        return None if row is None else _repo(row)

    def get_repo_by_id(self, repo_id: int) -> Repository | None:
        row = self._row(f"SELECT {_REPO_COLUMNS} FROM repositories WHERE id = ?", (repo_id,))
        return None if row is None else _repo(row)

    def get_repos(self, repo_ids: Sequence[int]) -> list[Repository]:
        found: dict[int, Repository] = {}
        unique = list(dict.fromkeys(repo_ids))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            rows = self._rows(f"SELECT {_REPO_COLUMNS} FROM repositories WHERE id IN ({','.join('?' * len(chunk))})",
                              tuple(chunk))
            found.update((repo.id, repo) for repo in map(_repo, rows))
        return [found[i] for i in repo_ids if i in found]

    def get_repo_by_storage_id(self, storage_id: str) -> Repository | None:
        row = self._row(f"SELECT {_REPO_COLUMNS} FROM repositories WHERE storage_id = ?", (storage_id,))
        return None if row is None else _repo(row)

    def list_repos(
        self,
        owner_id: int | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
        by_name: bool = False,
        after: str | None = None,
    ) -> list[Repository]:
        page = _page(limit, offset)
        if by_name and owner_id is None:
            raise InvalidInput("repositories are listed by name for one owner only")
        if after is not None and not by_name:
            raise InvalidInput("after is a name: it needs the list in name order")
        if owner_id is None:
            rows = self._rows(f"SELECT {_REPO_COLUMNS} FROM repositories ORDER BY id LIMIT ? OFFSET ?", page)
        elif by_name:
            # The name column is NOCASE (ASCII folding), as is its unique index, which serves the order
            # and the start after a name.
            rows = self._rows(
                f"SELECT {_REPO_COLUMNS} FROM repositories WHERE owner_id = ? AND name > ?"
                " ORDER BY name LIMIT ? OFFSET ?",
                (owner_id, after or "", *page),
            )
        else:
            rows = self._rows(
                f"SELECT {_REPO_COLUMNS} FROM repositories WHERE owner_id = ? ORDER BY id LIMIT ? OFFSET ?",
                (owner_id, *page),
            )
        return [_repo(row) for row in rows]

    def count_repos(self, owner_id: int) -> int:
        rows = self._rows("SELECT COUNT(*) FROM repositories WHERE owner_id = ?", (owner_id,))
        return int(rows[0][0])

    def save_repo(self, repo: Repository) -> Repository:
        pushed_at = _dump_optional_time(repo.pushed_at)
        with self._write() as conn:
            self._require_repo(conn, repo.id)
            self._require_account(conn, repo.owner_id, None, "owner")
            try:
                conn.execute(
                    "UPDATE repositories SET owner_id = ?, name = ?, visibility = ?,"
                    " description = ?, default_branch = ?, allow_force_push = ?,"
                    " pushed_at = ?, updated_at = ? WHERE id = ?",
                    (
                        repo.owner_id,
                        repo.name,
                        _enum(Visibility, repo.visibility, "visibility").value,
                        repo.description,
                        repo.default_branch,
                        int(repo.allow_force_push),
                        pushed_at,
                        self._now(),
                        repo.id,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                if _is_unique_violation(exc):
                    raise self._repo_clash(exc, repo.name) from exc
                raise
            row = conn.execute(f"SELECT {_REPO_COLUMNS} FROM repositories WHERE id = ?", (repo.id,)).fetchone()
            return _repo(row)

    def delete_repo(self, repo_id: int) -> bool:
        with self._write() as conn:
            # Collaborators and deploy keys go with the repository through ON DELETE CASCADE.
            return conn.execute("DELETE FROM repositories WHERE id = ?", (repo_id,)).rowcount > 0

    # -- collaborators -----------------------------------------------------------------

    def set_collaborator(self, repo_id: int, user_id: int, permission: Permission) -> Collaborator:
        permission = _enum(Permission, permission, "permission")
        with self._write() as conn:
            self._require_repo(conn, repo_id)
            self._require_account(conn, user_id, AccountType.USER, "user")
            conn.execute(
                "INSERT INTO collaborators (repo_id, user_id, permission) VALUES (?, ?, ?)"
                " ON CONFLICT (repo_id, user_id) DO UPDATE SET permission = excluded.permission",
                (repo_id, user_id, int(permission)),
            )
        return Collaborator(repo_id=repo_id, user_id=user_id, permission=permission)

    def remove_collaborator(self, repo_id: int, user_id: int) -> bool:
        with self._write() as conn:
            cursor = conn.execute("DELETE FROM collaborators WHERE repo_id = ? AND user_id = ?", (repo_id, user_id))
            return cursor.rowcount > 0

    def get_collaborator(self, repo_id: int, user_id: int) -> Collaborator | None:
        row = self._row(
            "SELECT repo_id, user_id, permission FROM collaborators WHERE repo_id = ? AND user_id = ?",
            (repo_id, user_id),
        )
        return None if row is None else _collaborator(row)

    def list_collaborators(self, repo_id: int) -> list[Collaborator]:
        rows = self._rows(
            "SELECT repo_id, user_id, permission FROM collaborators WHERE repo_id = ? ORDER BY user_id",
            (repo_id,),
        )
        return [_collaborator(row) for row in rows]

    def list_collaborations_of(self, user_id: int) -> list[Collaborator]:
        rows = self._rows(
            "SELECT repo_id, user_id, permission FROM collaborators WHERE user_id = ? ORDER BY repo_id",
            (user_id,),
        )
        return [_collaborator(row) for row in rows]
