"""Secrets: password hashing with argon2 and personal access tokens.

Passwords are low-entropy, so they get a slow, salted KDF (argon2id). Tokens are
random 160-bit secrets, so a SHA-256 digest is enough to make the stored value
useless to a thief while keeping per-request lookups cheap.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading

from argon2 import PasswordHasher as _Argon2
from argon2.exceptions import InvalidHashError, VerificationError

TOKEN_PREFIX = "bwk_"


class PasswordHasher:
    # memory_cost is in KiB: each hash or check in progress holds 19 MiB.
    def __init__(self, *, time_cost: int = 2, memory_cost: int = 19456) -> None:
        self._argon2 = _Argon2(time_cost=time_cost, memory_cost=memory_cost)
        self._dummy: str | None = None
        self._dummy_lock = threading.Lock()

    def hash(self, password: str) -> str:
        return self._argon2.hash(password)

    def verify(self, stored_hash: str, password: str) -> bool:
        try:
            return self._argon2.verify(stored_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def dummy_hash(self) -> str:
        """A hash of a random password, with this hasher's parameters, made once."""
        with self._dummy_lock:
            if self._dummy is None:
                self._dummy = self.hash(secrets.token_urlsafe(16))
            return self._dummy

    def verify_or_dummy(self, stored_hash: str | None, password: str) -> bool:
        """``verify``, or for an account with no password (or no account) a check against the
        dummy hash that always fails: the answer takes as long either way, so timing does not
        tell which logins exist."""
        if stored_hash is None:
            self.verify(self.dummy_hash(), password)
            return False
        return self.verify(stored_hash, password)


def new_token() -> str:
    """A fresh token secret, shown to its owner once."""
    return TOKEN_PREFIX + secrets.token_hex(20)


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def token_display_prefix(secret: str) -> str:
    """The part of a token that may be shown in listings to tell tokens apart."""
    return secret[: len(TOKEN_PREFIX) + 6]


def looks_like_token(secret: str) -> bool:
    return secret.startswith(TOKEN_PREFIX) and len(secret) == len(TOKEN_PREFIX) + 40


def constant_time_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
