"""Records as the etcd store keeps them: decoded with checks (a damaged record is a StoreError
naming its key), encoded as compact JSON; and the checks of paging arguments."""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, TypeVar

from bulwark.errors import InvalidInput, StoreError
from bulwark.etcd import KV, Compare
from bulwark.models import Account, AccountType, HostKey, Repository, Scope, SshKey, Token, Visibility
from bulwark.store.times import load_time

_E = TypeVar("_E", bound=enum.Enum)
_T = TypeVar("_T")


def _load_time(text: object) -> datetime:
    """A document's time; anything but text is a damaged document (``load_time`` takes only text)."""
    if not isinstance(text, str):
        raise ValueError(f"a time must be text, not {text!r}")
    return load_time(text)


def _load_optional_time(text: object) -> datetime | None:
    return None if text is None else _load_time(text)


def _enum(kind: type[_E], value: object, field: str) -> _E:
    """``value`` as a member of ``kind``; a plain value from a caller is accepted."""
    try:
        return kind(value)
    except ValueError:
        raise InvalidInput(f"invalid {field} {value!r}", field=field) from None


def _dump_scopes(scopes: Iterable[Scope]) -> list[str]:
    return sorted({_enum(Scope, scope, "scope").value for scope in scopes})


def _dump_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _text(doc: dict[str, Any], field: str) -> str:
    value = doc[field]
    if not isinstance(value, str):
        raise ValueError(f"{field} must be text")
    return value


def _optional_text(doc: dict[str, Any], field: str) -> str | None:
    return None if doc.get(field) is None else _text(doc, field)


def _int(doc: dict[str, Any], field: str) -> int:
    value = doc[field]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{field} must be an integer")
    return value


def _flag(doc: dict[str, Any], field: str) -> bool:
    value = doc[field]
    if not isinstance(value, bool):
        raise ValueError(f"{field} must be true or false")
    return value


def _load_account(doc: dict[str, Any]) -> Account:
    return Account(
        id=_int(doc, "id"),
        login=_text(doc, "login"),
        type=AccountType(doc["type"]),
        name=_text(doc, "name"),
        email=_text(doc, "email"),
        # Accounts written before the field existed keep their email private.
        email_public=_flag(doc, "email_public") if "email_public" in doc else False,
        site_admin=_flag(doc, "site_admin"),
        suspended=_flag(doc, "suspended"),
        created_at=_load_time(doc["created_at"]),
        updated_at=_load_time(doc["updated_at"]),
    )


def _load_token(doc: dict[str, Any]) -> Token:
    scopes = doc["scopes"]
    if not isinstance(scopes, list):
        raise ValueError("scopes must be a list")
    return Token(
        id=_int(doc, "id"),
        user_id=_int(doc, "user_id"),
        note=_text(doc, "note"),
        token_hash=_text(doc, "token_hash"),
        token_prefix=_text(doc, "token_prefix"),
        scopes=frozenset(Scope(scope) for scope in scopes),
        created_at=_load_time(doc["created_at"]),
        expires_at=_load_optional_time(doc.get("expires_at")),
        last_used_at=_load_optional_time(doc.get("last_used_at")),
        sessions_ended_at=_load_optional_time(doc.get("sessions_ended_at")),
    )


def _load_repo(doc: dict[str, Any]) -> Repository:
    return Repository(
        id=_int(doc, "id"),
        owner_id=_int(doc, "owner_id"),
        name=_text(doc, "name"),
        storage_id=_text(doc, "storage_id"),
        visibility=Visibility(doc["visibility"]),
        description=_text(doc, "description"),
        default_branch=_text(doc, "default_branch"),
        allow_force_push=_flag(doc, "allow_force_push"),
        created_at=_load_time(doc["created_at"]),
        updated_at=_load_time(doc["updated_at"]),
        pushed_at=_load_optional_time(doc.get("pushed_at")),
    )


def _optional_int(doc: dict[str, Any], field: str) -> int | None:
    return None if doc.get(field) is None else _int(doc, field)


def _load_ssh_key(doc: dict[str, Any]) -> SshKey:
    return SshKey(
        id=_int(doc, "id"),
        fingerprint=_text(doc, "fingerprint"),
        algorithm=_text(doc, "algorithm"),
        key=_text(doc, "key"),
        title=_text(doc, "title"),
        user_id=_optional_int(doc, "user_id"),
        repo_id=_optional_int(doc, "repo_id"),
        read_only=_flag(doc, "read_only"),
        created_at=_load_time(doc["created_at"]),
        last_used_at=_load_optional_time(doc.get("last_used_at")),
    )


def _load_host_key(doc: dict[str, Any]) -> HostKey:
    return HostKey(
        algorithm=_text(doc, "algorithm"),
        private_key=_text(doc, "private_key"),
        created_at=_load_time(doc["created_at"]),
    )


def _corrupt(kv: KV, exc: Exception) -> StoreError:
    return StoreError(f"the metadata store has a corrupt record at {kv.key}: {exc}")


def _doc(kv: KV) -> dict[str, Any]:
    """The JSON object stored at ``kv``."""
    try:
        doc = json.loads(kv.value)
    except ValueError as exc:
        raise _corrupt(kv, exc) from None
    if not isinstance(doc, dict):
        raise _corrupt(kv, ValueError("not a JSON object"))
    return doc


def _decode(kv: KV, load: Callable[[dict[str, Any]], _T]) -> _T:
    """The model stored at ``kv``, or ``StoreError`` if the record is damaged."""
    doc = _doc(kv)
    try:
        return load(doc)
    except (KeyError, TypeError, ValueError) as exc:
        raise _corrupt(kv, exc) from None


def _index_id(kv: KV) -> int:
    """The record id an index key points to."""
    try:
        return int(kv.text)
    except ValueError as exc:
        raise _corrupt(kv, exc) from None


def _pair(kv: KV, prefix: str) -> tuple[int, int]:
    """The two ids of a ``<prefix><id>/<id>`` key (memberships, collaborators)."""
    try:
        first, second = kv.key.removeprefix(prefix).split("/")
        return int(first), int(second)
    except ValueError as exc:
        raise _corrupt(kv, exc) from None


def _last_id(counter: KV | None) -> int:
    return 0 if counter is None else _index_id(counter)


def _still(key: str, kv: KV | None) -> Compare:
    """The key is as it was read: still missing, or not written since."""
    return Compare.absent(key) if kv is None else Compare.unchanged(key, kv.mod_revision)


def _check_page(limit: int | None, offset: int) -> None:
    if limit is not None and limit < 0:
        raise InvalidInput(f"limit must not be negative, got {limit}", field="limit")
    if offset < 0:
        raise InvalidInput(f"offset must not be negative, got {offset}", field="offset")


def _check_after(owner_id: int | None, by_name: bool, after: str | None) -> None:
    if by_name and owner_id is None:
        raise InvalidInput("repositories are listed by name for one owner only")
    if after is not None and not by_name:
        raise InvalidInput("after is a name: it needs the list in name order")


def _page(items: list[_T], limit: int | None, offset: int) -> list[_T]:
    return items[offset:] if limit is None else items[offset : offset + limit]
