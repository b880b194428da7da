"""Web sign-in sessions: a signed note in a cookie that someone typed the account's password.

The cookie names the user, when it was issued and until when it lasts, signed with HMAC-SHA256
keyed by the user's stored password hash. Every node of a deployment holds that hash (it is
replicated with the account), so any node, an HA replica or any cluster node, checks the cookie
without writing anything, and a new password ends every session at once. Signing out drops the
cookie; to end sessions on other browsers too, change the password.

The decisions here are pure: :func:`issue`, :func:`parse` and :func:`valid` take the hash and
the time; the accounts service looks the hash up.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

VERSION = "w1"
LIFETIME = timedelta(days=14)


@dataclass(frozen=True)
class Claim:
    user_id: int
    issued: int  # milliseconds since the epoch
    expires: int  # seconds since the epoch
    mac: str


def _mac(password_hash: str, user_id: int, issued: int, expires: int) -> str:
    message = f"{VERSION}.{user_id}.{issued}.{expires}".encode()
    return hmac.new(f"web-session:{password_hash}".encode(), message, hashlib.sha256).hexdigest()


def issue(user_id: int, password_hash: str, now: datetime, lifetime: timedelta = LIFETIME) -> str:
    issued, expires = int(now.timestamp() * 1000), int((now + lifetime).timestamp())
    return f"{VERSION}.{user_id}.{issued}.{expires}.{_mac(password_hash, user_id, issued, expires)}"


def parse(value: str) -> Claim | None:
    """The claim in a cookie value, or None when it is not one of ours."""
    parts = value.split(".")
    if len(parts) != 5 or parts[0] != VERSION or not all(_number(p) for p in parts[1:4]):
        return None
    if len(parts[4]) != 64 or not all(c in "0123456789abcdef" for c in parts[4]):
        return None
    return Claim(int(parts[1]), int(parts[2]), int(parts[3]), parts[4])


def _number(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 18


def valid(claim: Claim, password_hash: str | None, now: datetime) -> bool:
    """Whether ``claim`` is a live session of the user whose password hash is ``password_hash``
    (None: the user is gone or has no password)."""
    if password_hash is None or datetime.fromtimestamp(claim.expires, UTC) <= now:
        return False
    return hmac.compare_digest(claim.mac, _mac(password_hash, claim.user_id, claim.issued, claim.expires))
