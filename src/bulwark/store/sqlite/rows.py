"""Rows to models and back: column lists, decoders, and the checks of replicated rows."""

from __future__ import annotations

import enum
import json
import sqlite3
from collections.abc import Iterable
from typing import Any, NamedTuple, TypeVar

from bulwark.errors import InvalidInput
from bulwark.models import (
    Account,
    AccountType,
    Collaborator,
    HostKey,
    Membership,
    OrgRole,
    Permission,
    Repository,
    Scope,
    SshKey,
    Token,
    Visibility,
)
from bulwark.store.changes import Change, ChangeOp
from bulwark.store.times import load_optional_time, load_time

_E = TypeVar("_E", bound=enum.Enum)

_ACCOUNT_COLUMNS = "id, login, type, name, email, email_public, site_admin, suspended, created_at, updated_at"
_TOKEN_COLUMNS = (
    "id, user_id, note, token_hash, token_prefix, scopes, created_at, expires_at, last_used_at, sessions_ended_at"
)
_REPO_COLUMNS = (
    "id, owner_id, name, storage_id, visibility, description, default_branch,"
    " allow_force_push, created_at, updated_at, pushed_at"
)
_SSH_KEY_COLUMNS = (
    "id, fingerprint, algorithm, public_key, title, user_id, repo_id, read_only, created_at, last_used_at"
)


# -- value conversion --------------------------------------------------------------


_load_time = load_time
_load_optional_time = load_optional_time


def _enum(kind: type[_E], value: object, field: str) -> _E:
    """``value`` as a member of ``kind``; a plain string from a caller is accepted."""
    try:
        return kind(value)
    except ValueError:
        raise InvalidInput(f"invalid {field} {value!r}", field=field) from None


def _dump_scopes(scopes: Iterable[Scope]) -> str:
    return " ".join(sorted(_enum(Scope, scope, "scope").value for scope in scopes))


def _load_scopes(text: str) -> frozenset[Scope]:
    return frozenset(Scope(part) for part in text.split())


def _account(row: sqlite3.Row) -> Account:
    return Account(
        id=row["id"],
        login=row["login"],
        type=AccountType(row["type"]),
        name=row["name"],
        email=row["email"],
        email_public=bool(row["email_public"]),
        site_admin=bool(row["site_admin"]),
        suspended=bool(row["suspended"]),
        created_at=_load_time(row["created_at"]),
        updated_at=_load_time(row["updated_at"]),
    )


def _token(row: sqlite3.Row) -> Token:
    return Token(
        id=row["id"],
        user_id=row["user_id"],
        note=row["note"],
        token_hash=row["token_hash"],
        token_prefix=row["token_prefix"],
        scopes=_load_scopes(row["scopes"]),
        created_at=_load_time(row["created_at"]),
        expires_at=_load_optional_time(row["expires_at"]),
        last_used_at=_load_optional_time(row["last_used_at"]),
        sessions_ended_at=_load_optional_time(row["sessions_ended_at"]),
    )


def _membership(row: sqlite3.Row) -> Membership:
    return Membership(org_id=row["org_id"], user_id=row["user_id"], role=OrgRole(row["role"]))


def _repo(row: sqlite3.Row) -> Repository:
    return Repository(
        id=row["id"],
        owner_id=row["owner_id"],
        name=row["name"],
        storage_id=row["storage_id"],
        visibility=Visibility(row["visibility"]),
        description=row["description"],
        default_branch=row["default_branch"],
        allow_force_push=bool(row["allow_force_push"]),
        created_at=_load_time(row["created_at"]),
        updated_at=_load_time(row["updated_at"]),
        pushed_at=_load_optional_time(row["pushed_at"]),
    )


def _collaborator(row: sqlite3.Row) -> Collaborator:
    return Collaborator(repo_id=row["repo_id"], user_id=row["user_id"], permission=Permission(row["permission"]))


def _ssh_key(row: sqlite3.Row) -> SshKey:
    return SshKey(
        id=row["id"],
        fingerprint=row["fingerprint"],
        algorithm=row["algorithm"],
        key=row["public_key"],
        title=row["title"],
        user_id=row["user_id"],
        repo_id=row["repo_id"],
        read_only=bool(row["read_only"]),
        created_at=_load_time(row["created_at"]),
        last_used_at=_load_optional_time(row["last_used_at"]),
    )


def _host_key(row: sqlite3.Row) -> HostKey:
    return HostKey(
        algorithm=row["algorithm"], private_key=row["private_key"], created_at=_load_time(row["created_at"])
    )


def _page(limit: int | None, offset: int) -> tuple[int, int]:
    """LIMIT/OFFSET parameters; SQLite reads a negative LIMIT as "no limit"."""
    if limit is not None and limit < 0:
        raise InvalidInput(f"limit must not be negative, got {limit}", field="limit")
    if offset < 0:
        raise InvalidInput(f"offset must not be negative, got {offset}", field="offset")
    return (-1 if limit is None else limit), offset


def _is_unique_violation(exc: sqlite3.IntegrityError) -> bool:
    return exc.sqlite_errorcode in (
        sqlite3.SQLITE_CONSTRAINT_UNIQUE,
        sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY,
    )


class _Shape(NamedTuple):
    """The columns of a replicated table and its primary key, read from the schema."""

    columns: tuple[str, ...]
    key: tuple[str, ...]
    autoincrement: bool


def _dump_json(value: Any, what: str) -> str:
    """Compact JSON, as ``json_object`` writes it."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} is not JSON: {exc}") from None


def _change(row: sqlite3.Row) -> Change:
    return Change(
        seq=row["seq"],
        table=row["tbl"],
        op=ChangeOp(row["op"]),
        key=json.loads(row["key_json"]),
        row=None if row["row_json"] is None else json.loads(row["row_json"]),
        at=_load_time(row["at"]),
    )


def _checked_row(shape: _Shape, row: object, what: str) -> dict[str, Any]:
    """``row`` if it is an object of known columns with scalar values and a whole key."""
    if not isinstance(row, dict):
        raise InvalidInput(f"{what}: the row is not an object")
    unknown = sorted(set(row) - set(shape.columns))
    if unknown:
        raise InvalidInput(f"{what}: unknown columns {', '.join(map(str, unknown))}")
    missing = [name for name in shape.key if row.get(name) is None]
    if missing:
        raise InvalidInput(f"{what}: the key columns {', '.join(missing)} are missing")
    for name, value in row.items():
        if not (value is None or isinstance(value, str | int | float)):
            raise InvalidInput(f"{what}: column {name} is not a scalar")
    return row
