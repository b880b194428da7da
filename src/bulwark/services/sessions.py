"""Status-page sessions: a signed note in a cookie that a token's holder logged in, never the token.

A browser that logs in to the status page with a site administrator's token gets a cookie that
names the token (by id), its user and an expiry, signed with HMAC-SHA256 keyed by the token's
stored hash. Every node of a deployment holds that hash, since it is replicated with the token,
so any node checks the cookie without writing anything (an HA replica could not), and a copy of
the cookie opens the status page until it expires but is not a token: it pushes nothing and calls
no other API. Deleting the token ends its sessions at once. Logging out drops the cookie from the
browser and, where this node can write its store, records the time with the token: every session
of that token issued before it ends on every node, as the token replicates (an HA replica, which
cannot write, only drops the cookie).

The decisions here are pure: :func:`issue`, :func:`parse` and :func:`valid` take the token and the
time; the accounts service looks the token up.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bulwark.models import Token

VERSION = "s1"
LIFETIME = timedelta(hours=12)


@dataclass(frozen=True)
class Claim:
    """What a session cookie says: whose token, which one, until when, and its signature."""

    user_id: int
    token_id: int
    issued: int  # milliseconds since the epoch: a log-out ends the sessions issued before it
    expires: int  # seconds since the epoch
    mac: str


def _mac(token: Token, user_id: int, token_id: int, issued: int, expires: int) -> str:
    message = f"{VERSION}.{user_id}.{token_id}.{issued}.{expires}".encode()
    return hmac.new(f"status-session:{token.token_hash}".encode(), message, hashlib.sha256).hexdigest()


def millis(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def issue(token: Token, now: datetime, lifetime: timedelta = LIFETIME) -> str:
    """The cookie value for a session of ``token``; it ends with the lifetime or the token's expiry."""
    ends = now + lifetime
    if token.expires_at is not None and token.expires_at < ends:
        ends = token.expires_at
    issued, expires = millis(now), int(ends.timestamp())
    mac = _mac(token, token.user_id, token.id, issued, expires)
    return f"{VERSION}.{token.user_id}.{token.id}.{issued}.{expires}.{mac}"


def parse(value: str) -> Claim | None:
    """The claim in a cookie value, or None when it is not one of ours (an old cookie, junk)."""
    parts = value.split(".")
    if len(parts) != 6 or parts[0] != VERSION or not all(_number(p) for p in parts[1:5]):
        return None
    if len(parts[5]) != 64 or not all(c in "0123456789abcdef" for c in parts[5]):
        return None
    return Claim(int(parts[1]), int(parts[2]), int(parts[3]), int(parts[4]), parts[5])


def _number(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 18  # str.isdigit() alone takes "٣"


def valid(claim: Claim, token: Token | None, now: datetime, *, ended_before: int | None = None) -> bool:
    """Whether ``claim`` is a live session of ``token`` (None: the token is gone); ``ended_before``:
    when the token's holder last logged out (milliseconds), if they did."""
    if token is None or token.id != claim.token_id or token.user_id != claim.user_id:
        return False
    if datetime.fromtimestamp(claim.expires, UTC) <= now:
        return False
    if ended_before is not None and claim.issued <= ended_before:
        return False
    return hmac.compare_digest(claim.mac, _mac(token, claim.user_id, claim.token_id, claim.issued, claim.expires))
