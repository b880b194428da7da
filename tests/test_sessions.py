"""Status-page sessions (services/sessions.py): what a cookie proves, and what it stops proving."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from bulwark.models import Scope, Token
from bulwark.security import hash_token
from bulwark.services import sessions

NOW = datetime(2030, 5, 6, 7, 8, 9, tzinfo=UTC)
TOKEN = Token(id=7, user_id=3, note="ops", token_hash=hash_token("bwk_" + "1" * 40), token_prefix="bwk_1111",
              scopes=frozenset({Scope.SITE_ADMIN}), created_at=NOW - timedelta(days=1))


def test_a_session_is_valid_for_its_token_until_it_expires() -> None:
    value = sessions.issue(TOKEN, NOW)
    assert "1" * 40 not in value and TOKEN.token_hash not in value
    claim = sessions.parse(value)
    assert claim is not None and (claim.user_id, claim.token_id) == (3, 7)
    assert sessions.valid(claim, TOKEN, NOW + sessions.LIFETIME - timedelta(seconds=1))
    assert not sessions.valid(claim, TOKEN, NOW + sessions.LIFETIME)


def test_a_session_ends_no_later_than_its_token() -> None:
    short = dataclasses.replace(TOKEN, expires_at=NOW + timedelta(minutes=5))
    claim = sessions.parse(sessions.issue(short, NOW))
    assert claim is not None and claim.expires == int((NOW + timedelta(minutes=5)).timestamp())
    assert not sessions.valid(claim, short, NOW + timedelta(minutes=6))


def test_a_session_does_not_survive_tampering_or_another_token() -> None:
    value = sessions.issue(TOKEN, NOW)
    version, user, token_id, issued, expires, mac = value.split(".")
    later = f"{version}.{user}.{token_id}.{issued}.{int(expires) + 86400}.{mac}"
    other_user = f"{version}.4.{token_id}.{issued}.{expires}.{mac}"
    reissued_later = f"{version}.{user}.{token_id}.{int(issued) + 60_000}.{expires}.{mac}"
    for forged in (later, other_user, reissued_later):
        claim = sessions.parse(forged)
        assert claim is not None and not sessions.valid(claim, TOKEN, NOW)
    claim = sessions.parse(value)
    assert claim is not None
    assert not sessions.valid(claim, None, NOW)  # the token was revoked
    # A new token that happens to get the same id (after a restore) has another hash.
    reissued = dataclasses.replace(TOKEN, token_hash=hash_token("bwk_" + "2" * 40))
    assert not sessions.valid(claim, reissued, NOW)


def test_a_log_out_ends_the_sessions_issued_before_it_and_not_later_ones() -> None:
    before = sessions.parse(sessions.issue(TOKEN, NOW))
    after = sessions.parse(sessions.issue(TOKEN, NOW + timedelta(seconds=5)))
    assert before is not None and after is not None
    logged_out = sessions.millis(NOW + timedelta(seconds=1))
    assert not sessions.valid(before, TOKEN, NOW + timedelta(seconds=10), ended_before=logged_out)
    assert sessions.valid(after, TOKEN, NOW + timedelta(seconds=10), ended_before=logged_out)


def test_what_is_not_a_session_is_refused_before_any_lookup() -> None:
    for junk in ("", "bwk_" + "1" * 40, "s1.3.7.1.99", "s1.3.7.1.99." + "0" * 63, "s2.3.7.1.99." + "0" * 64,
                 "s1.-3.7.1.99." + "0" * 64, "s1.3.7.1." + "9" * 40 + "." + "0" * 64,
                 "s1.٣.7.1.99." + "0" * 64, "s1.3.7.1.99." + "G" * 64, "s1.3.7.99." + "0" * 64):
        assert sessions.parse(junk) is None, junk
