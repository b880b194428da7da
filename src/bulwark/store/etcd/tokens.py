"""Access tokens in the etcd store."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from bulwark.errors import AlreadyExists
from bulwark.etcd import Compare, Op
from bulwark.models import AccountType, Scope, Token
from bulwark.store.etcd.base import _Base
from bulwark.store.etcd.codec import (
    _decode,
    _doc,
    _dump_json,
    _dump_scopes,
    _index_id,
    _last_id,
    _load_token,
    _pair,
    _still,
)
from bulwark.store.times import dump_optional_time as _dump_optional_time
from bulwark.store.times import dump_time as _dump_time


class _Tokens(_Base):
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
        keys = self._keys
        stored_scopes = _dump_scopes(scopes)
        stored_expiry = _dump_optional_time(expires_at)
        user_key = keys.account(user_id)
        hash_key = keys.token_hash(token_hash)
        counter_key = keys.counter("tokens")

        def attempt() -> Token:
            user, taken, counter = self._read(user_key, hash_key, counter_key)
            self._require_account(user, user_id, AccountType.USER, "user")
            if taken is not None:
                raise AlreadyExists("a token with this hash already exists")
            token_id = _last_id(counter) + 1
            doc = {
                "id": token_id,
                "user_id": user_id,
                "note": note,
                "token_hash": token_hash,
                "token_prefix": token_prefix,
                "scopes": stored_scopes,
                "created_at": self._now(),
                "expires_at": stored_expiry,
                "last_used_at": None,
            }
            self._commit(
                [Compare.present(user_key), Compare.absent(hash_key), _still(counter_key, counter)],
                [
                    Op.put(counter_key, str(token_id)),
                    Op.put(keys.token(token_id), _dump_json(doc)),
                    Op.put(hash_key, str(token_id)),
                    Op.put(keys.token_index(user_id, token_id), ""),
                    self._touch_dependents(user_id),
                ],
                f"creating a token for user {user_id}",
            )
            return _load_token(doc)

        return self._retry(f"creating a token for user {user_id}", attempt)

    def get_token_by_hash(self, token_hash: str) -> Token | None:
        index = self._get(self._keys.token_hash(token_hash))
        if index is None:
            return None
        kv = self._get(self._keys.token(_index_id(index)))
        token = None if kv is None else _decode(kv, _load_token)
        return token if token is not None and token.token_hash == token_hash else None

    def list_tokens(self, user_id: int) -> list[Token]:
        # From the user's index, then the records, which are the truth (as for memberships).
        self._ensure_indexes()
        ids = [_pair(kv, self._keys.tokens_by_user)[1] for kv in self._range(self._keys.tokens_of(user_id))]
        found = self._read_many([self._keys.token(token_id) for token_id in ids])
        tokens = [_decode(kv, _load_token) for kv in found if kv is not None]
        return [token for token in tokens if token.user_id == user_id]

    def delete_token(self, token_id: int) -> bool:
        token_key = self._keys.token(token_id)

        def attempt() -> bool:
            kv = self._get(token_key)
            if kv is None:
                return False
            token = _decode(kv, _load_token)
            self._commit(
                [Compare.unchanged(token_key, kv.mod_revision)],
                [Op.delete(token_key), Op.delete(self._keys.token_hash(token.token_hash)),
                 Op.delete(self._keys.token_index(token.user_id, token_id))],
                f"deleting token {token_id}",
            )
            return True

        return self._retry(f"deleting token {token_id}", attempt)

    def touch_token(self, token_id: int, when: datetime) -> None:
        # Requests finish out of order, so keep the latest time rather than the last
        # written. A token deleted meanwhile is no error: the request was authorized.
        self._advance_token_time(token_id, "last_used_at", when, f"recording the use of token {token_id}")

    def end_token_sessions(self, token_id: int, when: datetime) -> None:
        self._advance_token_time(token_id, "sessions_ended_at", when, f"ending the sessions of token {token_id}")

    def _advance_token_time(self, token_id: int, field: str, when: datetime, what: str) -> None:
        """Set a time of the token to ``when`` unless it is later already (or the token is gone)."""
        stamp = _dump_time(when)
        token_key = self._keys.token(token_id)

        def attempt() -> None:
            kv = self._get(token_key)
            if kv is None:
                return
            current = getattr(_decode(kv, _load_token), field)
            if current is not None and current >= when:
                return
            doc = _doc(kv)
            doc[field] = stamp
            self._commit([Compare.unchanged(token_key, kv.mod_revision)], [Op.put(token_key, _dump_json(doc))], what)

        self._retry(what, attempt)
