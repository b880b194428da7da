"""The contract every metadata store backend must meet.

Written against :class:`bulwark.store.Store` only. A backend's test module supplies
a ``store`` fixture (a fresh, empty store) and subclasses :class:`StoreContract`::

    @pytest.fixture
    def store(tmp_path):
        s = MyStore(...)
        yield s
        s.close()

    class TestMyStore(StoreContract):
        pass
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import itertools
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypedDict

import pytest

from bulwark.errors import AlreadyExists, InvalidInput, NotFound
from bulwark.models import (
    Account,
    AccountType,
    Collaborator,
    HostKey,
    MaintenanceState,
    Membership,
    OrgRole,
    Permission,
    Repository,
    Scope,
    SshKey,
    Token,
    Visibility,
)
from bulwark.store import Store
from tests.support.helpers import run_in_threads

pytestmark = pytest.mark.timeout(30)

_storage_ids = itertools.count(1)


def _user(store: Store, login: str, **fields: Any) -> Account:
    return store.create_user(login, **fields)


def _repo(store: Store, owner: Account, name: str) -> Repository:
    """A repository with a storage id no other test repository has."""
    return store.create_repo(owner.id, name, storage_id=f"sid-{next(_storage_ids)}")


def _token(store: Store, user: Account, token_hash: str) -> Token:
    return store.create_token(user.id, token_hash=token_hash, token_prefix=token_hash[:8], scopes={Scope.REPO})


class KeyOwner(TypedDict, total=False):
    """Who holds an SSH key, as ``Store.create_ssh_key``'s keyword arguments."""

    user_id: int
    repo_id: int
    read_only: bool


def fingerprint(seed: str) -> str:
    """A fingerprint as ssh-keygen prints it: SHA256 and 43 base64 characters (with + and / in many)."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(seed.encode()).digest()).decode().rstrip("=")


def _ssh_key(
    store: Store, seed: str, *, user: Account | None = None, repo: Repository | None = None, read_only: bool = False
) -> SshKey:
    """A key of ``user`` or a deploy key of ``repo``, its fingerprint made from ``seed``."""
    blob = base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519" + hashlib.sha256(seed.encode()).digest()).decode()
    return store.create_ssh_key(
        fingerprint=fingerprint(seed),
        algorithm="ssh-ed25519",
        key=f"ssh-ed25519 {blob}",
        title=f"key {seed}",
        user_id=None if user is None else user.id,
        repo_id=None if repo is None else repo.id,
        read_only=read_only,
    )


def _is_utc(value: datetime | None) -> bool:
    return value is not None and value.utcoffset() == timedelta(0)


class StoreContract:
    """Tests that every :class:`Store` backend must pass."""

    pytestmark = [pytest.mark.timeout(30)]

    # -- accounts ----------------------------------------------------------------------

    def test_create_user_returns_the_stored_account(self, store: Store) -> None:
        user = store.create_user(
            "Alice", name="Alice A.", email="alice@example.com", site_admin=True, password_hash="h1"
        )
        assert isinstance(user.id, int)
        assert user.login == "Alice"
        assert user.type is AccountType.USER
        assert (user.name, user.email, user.site_admin, user.suspended) == (
            "Alice A.",
            "alice@example.com",
            True,
            False,
        )
        assert _is_utc(user.created_at) and _is_utc(user.updated_at)
        assert store.get_account_by_id(user.id) == user
        assert store.get_password_hash(user.id) == "h1"

    def test_create_user_defaults(self, store: Store) -> None:
        user = store.create_user("bob")
        assert (user.name, user.email, user.site_admin, user.suspended) == ("", "", False, False)
        assert store.get_password_hash(user.id) is None

    def test_get_account_matches_login_case_insensitively(self, store: Store) -> None:
        user = _user(store, "MixedCase")
        assert store.get_account("mixedcase") == user
        assert store.get_account("MIXEDCASE") == user
        assert store.get_account("MixedCase") == user
        assert user.login == "MixedCase"

    def test_getters_return_none_for_missing_records(self, store: Store) -> None:
        assert store.get_account("nobody") is None
        assert store.get_account_by_id(424242) is None
        assert store.get_password_hash(424242) is None
        assert store.get_token_by_hash("0" * 64) is None
        assert store.get_membership(424242, 424243) is None
        assert store.get_repo(424242, "nothing") is None
        assert store.get_repo_by_id(424242) is None
        assert store.get_collaborator(424242, 424243) is None
        assert store.get_ssh_key(424242) is None
        assert store.get_ssh_key_by_fingerprint(fingerprint("nobody's")) is None
        assert store.get_setting("no-such-key") is None

    def test_ids_are_distinct_and_increasing(self, store: Store) -> None:
        a = _user(store, "a1")
        b = _user(store, "b1")
        org = store.create_org("o1", owner_id=a.id)
        assert a.id < b.id < org.id

    def test_duplicate_login_differing_only_in_case_is_rejected(self, store: Store) -> None:
        _user(store, "alice")
        with pytest.raises(AlreadyExists, match=r"(?i)login 'alice'"):
            store.create_user("ALICE")
        with pytest.raises(AlreadyExists):
            store.create_user("alice")
        assert [a.login for a in store.list_accounts()] == ["alice"]

    def test_users_and_orgs_share_one_namespace(self, store: Store) -> None:
        owner = _user(store, "owner")
        store.create_org("acme", owner_id=owner.id)
        with pytest.raises(AlreadyExists):
            store.create_user("Acme")
        with pytest.raises(AlreadyExists):
            store.create_org("OWNER", owner_id=owner.id)

    def test_create_org_adds_the_owner_as_owner_member(self, store: Store) -> None:
        owner = _user(store, "owner")
        org = store.create_org("Acme", owner_id=owner.id, name="Acme Inc", email="hi@acme.test")
        assert org.type is AccountType.ORGANIZATION and org.is_org
        assert (org.login, org.name, org.email, org.site_admin) == ("Acme", "Acme Inc", "hi@acme.test", False)
        assert _is_utc(org.created_at)
        assert store.get_account("acme") == org
        assert store.get_membership(org.id, owner.id) == Membership(org.id, owner.id, OrgRole.OWNER)
        assert store.list_members(org.id) == [Membership(org.id, owner.id, OrgRole.OWNER)]

    def test_create_org_with_missing_owner_creates_nothing(self, store: Store) -> None:
        with pytest.raises(NotFound):
            store.create_org("acme", owner_id=424242)
        assert store.get_account("acme") is None

    def test_create_org_owned_by_an_org_is_invalid(self, store: Store) -> None:
        owner = _user(store, "owner")
        org = store.create_org("acme", owner_id=owner.id)
        with pytest.raises(InvalidInput):
            store.create_org("sub", owner_id=org.id)
        assert store.get_account("sub") is None

    def test_create_org_with_taken_login_adds_no_membership(self, store: Store) -> None:
        owner = _user(store, "owner")
        _user(store, "taken")
        with pytest.raises(AlreadyExists):
            store.create_org("TAKEN", owner_id=owner.id)
        assert store.list_memberships_of(owner.id) == []
        assert store.list_accounts(AccountType.ORGANIZATION) == []

    def test_list_accounts_is_ordered_by_id_filtered_and_paginated(self, store: Store) -> None:
        u1 = _user(store, "zed")
        u2 = _user(store, "amy")
        org = store.create_org("mid", owner_id=u1.id)
        u3 = _user(store, "bea")
        assert [a.id for a in store.list_accounts()] == [u1.id, u2.id, org.id, u3.id]
        assert [a.id for a in store.list_accounts(AccountType.USER)] == [u1.id, u2.id, u3.id]
        assert store.list_accounts(AccountType.ORGANIZATION) == [org]
        assert [a.id for a in store.list_accounts(limit=2)] == [u1.id, u2.id]
        assert [a.id for a in store.list_accounts(limit=2, offset=2)] == [org.id, u3.id]
        assert [a.id for a in store.list_accounts(offset=3)] == [u3.id]
        assert store.list_accounts(limit=2, offset=10) == []
        assert store.list_accounts(limit=0) == []
        assert [a.id for a in store.list_accounts(AccountType.USER, limit=1, offset=1)] == [u2.id]

    def test_negative_pagination_is_invalid(self, store: Store) -> None:
        with pytest.raises(InvalidInput):
            store.list_accounts(limit=-1)
        with pytest.raises(InvalidInput):
            store.list_repos(offset=-1)

    def test_save_account_stores_the_mutable_fields(self, store: Store) -> None:
        user = _user(store, "carol", name="Carol")
        changed = dataclasses.replace(
            user, login="carol2", name="Caroline", email="c@example.com", site_admin=True, suspended=True
        )
        saved = store.save_account(changed)
        assert (saved.login, saved.name, saved.email, saved.site_admin, saved.suspended) == (
            "carol2",
            "Caroline",
            "c@example.com",
            True,
            True,
        )
        assert saved.created_at == user.created_at
        assert saved.updated_at is not None and user.updated_at is not None
        assert saved.updated_at >= user.updated_at
        assert store.get_account_by_id(user.id) == saved
        assert store.get_account("carol") is None
        assert store.get_account("CAROL2") == saved

    def test_an_email_is_private_until_made_public(self, store: Store) -> None:
        user = _user(store, "pat", email="pat@example.com")
        assert user.email_public is False
        shown = store.save_account(dataclasses.replace(user, email_public=True))
        assert shown.email_public is True and store.get_account("pat") == shown
        hidden = store.save_account(dataclasses.replace(shown, email_public=False))
        assert store.get_account_by_id(user.id) == hidden and hidden.email_public is False

    def test_save_account_ignores_immutable_fields(self, store: Store) -> None:
        user = _user(store, "dave")
        earlier = datetime(2000, 1, 1, tzinfo=UTC)
        saved = store.save_account(
            dataclasses.replace(user, type=AccountType.ORGANIZATION, created_at=earlier, name="D")
        )
        assert saved.type is AccountType.USER
        assert saved.created_at == user.created_at
        assert saved.name == "D"

    def test_save_account_may_change_only_the_case_of_its_login(self, store: Store) -> None:
        user = _user(store, "erin")
        saved = store.save_account(dataclasses.replace(user, login="Erin"))
        assert saved.login == "Erin"
        assert store.get_account("erin") == saved

    def test_save_account_onto_a_taken_login_is_rejected(self, store: Store) -> None:
        _user(store, "frank")
        owner = _user(store, "grace")
        org = store.create_org("guild", owner_id=owner.id)
        with pytest.raises(AlreadyExists, match="FRANK"):
            store.save_account(dataclasses.replace(owner, login="FRANK", name="changed"))
        with pytest.raises(AlreadyExists):
            store.save_account(dataclasses.replace(org, login="Grace"))
        assert store.get_account_by_id(owner.id) == owner
        assert store.get_account_by_id(org.id) == org

    def test_save_account_of_a_missing_account_is_not_found(self, store: Store) -> None:
        ghost = Account(id=424242, login="ghost", type=AccountType.USER)
        with pytest.raises(NotFound):
            store.save_account(ghost)
        assert store.get_account("ghost") is None

    def test_password_hash_set_replace_and_clear(self, store: Store) -> None:
        user = _user(store, "heidi")
        other = _user(store, "ivan", password_hash="other")
        store.set_password_hash(user.id, "argon2-a")
        assert store.get_password_hash(user.id) == "argon2-a"
        store.set_password_hash(user.id, "argon2-b")
        assert store.get_password_hash(user.id) == "argon2-b"
        store.set_password_hash(user.id, None)
        assert store.get_password_hash(user.id) is None
        assert store.get_password_hash(other.id) == "other"

    def test_set_password_hash_of_a_missing_user_is_not_found(self, store: Store) -> None:
        with pytest.raises(NotFound):
            store.set_password_hash(424242, "h")

    def test_delete_user_cascades(self, store: Store) -> None:
        victim = _user(store, "victim")
        other = _user(store, "other")
        org = store.create_org("club", owner_id=other.id)
        store.set_membership(org.id, victim.id, OrgRole.MEMBER)
        own1 = _repo(store, victim, "one")
        own2 = _repo(store, victim, "two")
        theirs = _repo(store, other, "theirs")
        store.set_collaborator(own1.id, other.id, Permission.PUSH)
        store.set_collaborator(theirs.id, victim.id, Permission.ADMIN)
        _token(store, victim, "victim-hash")
        kept_token = _token(store, other, "other-hash")

        removed = store.delete_account(victim.id)

        assert sorted(r.id for r in removed) == [own1.id, own2.id]
        assert {r.storage_id for r in removed} == {own1.storage_id, own2.storage_id}
        assert store.get_account_by_id(victim.id) is None
        assert store.get_account("victim") is None
        assert store.get_token_by_hash("victim-hash") is None
        assert store.list_tokens(victim.id) == []
        assert store.get_token_by_hash("other-hash") == kept_token
        assert store.get_membership(org.id, victim.id) is None
        assert store.list_memberships_of(victim.id) == []
        assert store.list_members(org.id) == [Membership(org.id, other.id, OrgRole.OWNER)]
        assert store.get_repo_by_id(own1.id) is None and store.get_repo_by_id(own2.id) is None
        assert store.list_repos(victim.id) == []
        assert store.list_collaborators(own1.id) == []
        assert store.list_collaborations_of(other.id) == []
        assert store.list_collaborators(theirs.id) == []
        assert store.list_collaborations_of(victim.id) == []
        assert store.list_repos() == [theirs]
        # The login is free again.
        again = _user(store, "Victim")
        assert again.id != victim.id

    def test_delete_org_cascades_but_keeps_its_members(self, store: Store) -> None:
        owner = _user(store, "owner")
        member = _user(store, "member")
        org = store.create_org("acme", owner_id=owner.id)
        store.set_membership(org.id, member.id, OrgRole.MEMBER)
        repo = _repo(store, org, "site")
        store.set_collaborator(repo.id, member.id, Permission.PULL)

        removed = store.delete_account(org.id)

        assert [r.id for r in removed] == [repo.id]
        assert store.get_account("acme") is None
        assert store.list_members(org.id) == []
        assert store.list_memberships_of(owner.id) == []
        assert store.list_memberships_of(member.id) == []
        assert store.list_collaborations_of(member.id) == []
        assert store.get_repo_by_id(repo.id) is None
        assert store.get_account_by_id(owner.id) == owner
        assert store.get_account_by_id(member.id) == member

    def test_delete_account_without_repositories_returns_an_empty_list(self, store: Store) -> None:
        user = _user(store, "plain")
        assert store.delete_account(user.id) == []

    def test_delete_missing_account_is_not_found(self, store: Store) -> None:
        with pytest.raises(NotFound):
            store.delete_account(424242)

    # -- tokens ------------------------------------------------------------------------

    def test_create_token_and_look_it_up_by_hash(self, store: Store) -> None:
        user = _user(store, "judy")
        expires = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
        token = store.create_token(
            user.id,
            token_hash="a" * 64,
            token_prefix="bwk_aaaa",
            scopes=[Scope.REPO, Scope.READ_ORG, Scope.REPO],
            note="laptop",
            expires_at=expires,
        )
        assert isinstance(token.id, int)
        assert (token.user_id, token.note, token.token_hash, token.token_prefix) == (
            user.id,
            "laptop",
            "a" * 64,
            "bwk_aaaa",
        )
        assert token.scopes == frozenset({Scope.REPO, Scope.READ_ORG})
        assert isinstance(token.scopes, frozenset)
        assert all(type(s) is Scope for s in token.scopes)
        assert token.expires_at == expires and _is_utc(token.expires_at)
        assert _is_utc(token.created_at)
        assert token.last_used_at is None
        assert store.get_token_by_hash("a" * 64) == token
        assert store.get_token_by_hash("b" * 64) is None

    def test_token_with_no_scopes_and_no_expiry(self, store: Store) -> None:
        user = _user(store, "kim")
        token = store.create_token(user.id, token_hash="h", token_prefix="p", scopes=())
        assert token.scopes == frozenset()
        assert token.expires_at is None
        assert store.get_token_by_hash("h") == token

    def test_every_scope_round_trips(self, store: Store) -> None:
        user = _user(store, "leo")
        store.create_token(user.id, token_hash="all", token_prefix="p", scopes=set(Scope))
        found = store.get_token_by_hash("all")
        assert found is not None and found.scopes == frozenset(Scope)

    def test_expiry_in_another_time_zone_is_returned_in_utc(self, store: Store) -> None:
        user = _user(store, "mia")
        plus_two = timezone(timedelta(hours=2))
        expires = datetime(2030, 1, 1, 12, 0, tzinfo=plus_two)
        store.create_token(user.id, token_hash="tz", token_prefix="p", scopes=(), expires_at=expires)
        found = store.get_token_by_hash("tz")
        assert found is not None
        assert found.expires_at == expires
        assert found.expires_at is not None and found.expires_at.hour == 10 and _is_utc(found.expires_at)

    def test_naive_times_are_rejected(self, store: Store) -> None:
        user = _user(store, "naive")
        with pytest.raises(InvalidInput):
            store.create_token(user.id, token_hash="n", token_prefix="p", scopes=(), expires_at=datetime(2030, 1, 1))
        assert store.get_token_by_hash("n") is None

    def test_unknown_enum_values_are_invalid_input(self, store: Store) -> None:
        user = _user(store, "enums")
        repo = _repo(store, user, "r")
        with pytest.raises(InvalidInput):
            store.create_token(user.id, token_hash="x", token_prefix="p", scopes=["write:everything"])  # type: ignore[list-item]
        with pytest.raises(InvalidInput):
            store.set_collaborator(repo.id, user.id, 7)  # type: ignore[arg-type]
        assert store.get_token_by_hash("x") is None
        assert store.list_collaborators(repo.id) == []

    def test_duplicate_token_hash_is_rejected(self, store: Store) -> None:
        a = _user(store, "nick")
        b = _user(store, "olga")
        _token(store, a, "same")
        with pytest.raises(AlreadyExists):
            _token(store, b, "same")
        assert store.list_tokens(b.id) == []

    def test_token_for_a_missing_user_is_not_found(self, store: Store) -> None:
        with pytest.raises(NotFound):
            store.create_token(424242, token_hash="x", token_prefix="p", scopes=())
        assert store.get_token_by_hash("x") is None

    def test_token_for_an_org_is_invalid(self, store: Store) -> None:
        owner = _user(store, "owner")
        org = store.create_org("acme", owner_id=owner.id)
        with pytest.raises(InvalidInput):
            store.create_token(org.id, token_hash="x", token_prefix="p", scopes=())

    def test_list_tokens_is_per_user_in_id_order(self, store: Store) -> None:
        a = _user(store, "pat")
        b = _user(store, "quinn")
        t1 = _token(store, a, "t1")
        _token(store, b, "t2")
        t3 = _token(store, a, "t3")
        assert store.list_tokens(a.id) == [t1, t3]
        assert store.list_tokens(424242) == []

    def test_delete_token(self, store: Store) -> None:
        user = _user(store, "rob")
        t1 = store.create_token(user.id, token_hash="d1", token_prefix="p", scopes=())
        t2 = store.create_token(user.id, token_hash="d2", token_prefix="p", scopes=())
        assert store.delete_token(t1.id) is True
        assert store.delete_token(t1.id) is False
        assert store.get_token_by_hash("d1") is None
        assert store.list_tokens(user.id) == [t2]
        assert store.delete_token(424242) is False

    def test_touch_token_records_last_use(self, store: Store) -> None:
        user = _user(store, "sam")
        token = store.create_token(user.id, token_hash="used", token_prefix="p", scopes=())
        other = store.create_token(user.id, token_hash="unused", token_prefix="p", scopes=())
        when = datetime(2030, 2, 3, 4, 5, 6, 789000, tzinfo=UTC)
        store.touch_token(token.id, when)
        found = store.get_token_by_hash("used")
        assert found is not None and found.last_used_at == when and _is_utc(found.last_used_at)
        assert dataclasses.replace(found, last_used_at=None) == token
        assert store.get_token_by_hash("unused") == other
        later = when + timedelta(minutes=5)
        store.touch_token(token.id, later)
        found = store.get_token_by_hash("used")
        assert found is not None and found.last_used_at == later

    def test_touch_token_never_moves_last_use_backwards(self, store: Store) -> None:
        user = _user(store, "tess")
        token = store.create_token(user.id, token_hash="t", token_prefix="p", scopes=())
        when = datetime(2030, 1, 1, tzinfo=UTC)
        store.touch_token(token.id, when)
        store.touch_token(token.id, when - timedelta(seconds=1))
        found = store.get_token_by_hash("t")
        assert found is not None and found.last_used_at == when

    def test_touch_of_a_deleted_token_is_ignored(self, store: Store) -> None:
        store.touch_token(424242, datetime(2030, 1, 1, tzinfo=UTC))

    def test_a_log_out_is_kept_with_the_token_and_never_moves_back(self, store: Store) -> None:
        user = _user(store, "lou")
        token = store.create_token(user.id, token_hash="lo", token_prefix="p", scopes=())
        assert token.sessions_ended_at is None
        when = datetime(2030, 2, 3, 4, 5, 6, 789000, tzinfo=UTC)
        store.end_token_sessions(token.id, when)
        store.end_token_sessions(token.id, when - timedelta(seconds=1))
        found = store.get_token_by_hash("lo")
        assert found is not None and found.sessions_ended_at == when and _is_utc(found.sessions_ended_at)
        assert dataclasses.replace(found, sessions_ended_at=None) == token
        store.end_token_sessions(424242, when)  # a token deleted meanwhile: nothing to end

    # -- organization membership -------------------------------------------------------

    def test_set_membership_is_an_upsert(self, store: Store) -> None:
        owner = _user(store, "owner")
        user = _user(store, "uma")
        org = store.create_org("acme", owner_id=owner.id)
        added = store.set_membership(org.id, user.id, OrgRole.MEMBER)
        assert added == Membership(org.id, user.id, OrgRole.MEMBER)
        assert store.get_membership(org.id, user.id) == added
        promoted = store.set_membership(org.id, user.id, OrgRole.OWNER)
        assert promoted.role is OrgRole.OWNER
        found = store.get_membership(org.id, user.id)
        assert found is not None and found.role is OrgRole.OWNER
        assert len(store.list_members(org.id)) == 2
        demoted = store.set_membership(org.id, owner.id, OrgRole.MEMBER)
        assert store.get_membership(org.id, owner.id) == demoted

    def test_remove_membership(self, store: Store) -> None:
        owner = _user(store, "owner")
        user = _user(store, "vic")
        org = store.create_org("acme", owner_id=owner.id)
        store.set_membership(org.id, user.id, OrgRole.MEMBER)
        assert store.remove_membership(org.id, user.id) is True
        assert store.remove_membership(org.id, user.id) is False
        assert store.get_membership(org.id, user.id) is None
        assert store.list_members(org.id) == [Membership(org.id, owner.id, OrgRole.OWNER)]
        assert store.get_account_by_id(user.id) is not None

    def test_list_members_orders_by_user_and_filters_by_role(self, store: Store) -> None:
        owner = _user(store, "owner")
        m1 = _user(store, "m1")
        m2 = _user(store, "m2")
        org = store.create_org("acme", owner_id=owner.id)
        other = store.create_org("other", owner_id=m1.id)
        store.set_membership(org.id, m2.id, OrgRole.MEMBER)
        store.set_membership(org.id, m1.id, OrgRole.OWNER)
        assert store.list_members(org.id) == [
            Membership(org.id, owner.id, OrgRole.OWNER),
            Membership(org.id, m1.id, OrgRole.OWNER),
            Membership(org.id, m2.id, OrgRole.MEMBER),
        ]
        assert [m.user_id for m in store.list_members(org.id, OrgRole.OWNER)] == [owner.id, m1.id]
        assert store.list_members(org.id, OrgRole.MEMBER) == [Membership(org.id, m2.id, OrgRole.MEMBER)]
        assert store.list_members(other.id) == [Membership(other.id, m1.id, OrgRole.OWNER)]
        assert store.list_members(424242) == []

    def test_list_memberships_of_a_user_orders_by_org(self, store: Store) -> None:
        user = _user(store, "wendy")
        boss = _user(store, "boss")
        o1 = store.create_org("o1", owner_id=boss.id)
        o2 = store.create_org("o2", owner_id=user.id)
        store.set_membership(o1.id, user.id, OrgRole.MEMBER)
        assert store.list_memberships_of(user.id) == [
            Membership(o1.id, user.id, OrgRole.MEMBER),
            Membership(o2.id, user.id, OrgRole.OWNER),
        ]
        assert store.list_memberships_of(424242) == []

    def test_membership_needs_an_existing_org_and_user(self, store: Store) -> None:
        owner = _user(store, "owner")
        org = store.create_org("acme", owner_id=owner.id)
        with pytest.raises(NotFound):
            store.set_membership(424242, owner.id, OrgRole.MEMBER)
        with pytest.raises(NotFound):
            store.set_membership(org.id, 424242, OrgRole.MEMBER)
        assert store.list_members(org.id) == [Membership(org.id, owner.id, OrgRole.OWNER)]

    def test_membership_needs_an_org_and_a_user(self, store: Store) -> None:
        owner = _user(store, "owner")
        user = _user(store, "xena")
        org = store.create_org("acme", owner_id=owner.id)
        other = store.create_org("other", owner_id=owner.id)
        with pytest.raises(InvalidInput):
            store.set_membership(user.id, owner.id, OrgRole.MEMBER)
        with pytest.raises(InvalidInput):
            store.set_membership(org.id, other.id, OrgRole.MEMBER)
        assert store.list_memberships_of(owner.id) == [
            Membership(org.id, owner.id, OrgRole.OWNER),
            Membership(other.id, owner.id, OrgRole.OWNER),
        ]

    # -- repositories ------------------------------------------------------------------

    def test_create_repo_returns_the_stored_repository(self, store: Store) -> None:
        owner = _user(store, "yara")
        repo = store.create_repo(
            owner.id,
            "Project.X",
            storage_id="ab/cdef",
            visibility=Visibility.PRIVATE,
            description="secret",
            default_branch="trunk",
        )
        assert isinstance(repo.id, int)
        assert (repo.owner_id, repo.name, repo.storage_id, repo.description, repo.default_branch) == (
            owner.id,
            "Project.X",
            "ab/cdef",
            "secret",
            "trunk",
        )
        assert repo.visibility is Visibility.PRIVATE and repo.private
        assert repo.allow_force_push is True
        assert _is_utc(repo.created_at) and _is_utc(repo.updated_at)
        assert repo.pushed_at is None
        assert store.get_repo_by_id(repo.id) == repo
        assert store.get_repo(owner.id, "Project.X") == repo

    def test_create_repo_defaults(self, store: Store) -> None:
        owner = _user(store, "zoe")
        repo = store.create_repo(owner.id, "plain", storage_id="s-plain")
        assert repo.visibility is Visibility.PUBLIC
        assert (repo.description, repo.default_branch) == ("", "main")

    def test_get_repo_matches_the_name_case_insensitively(self, store: Store) -> None:
        owner = _user(store, "owner")
        repo = _repo(store, owner, "MyRepo")
        assert store.get_repo(owner.id, "myrepo") == repo
        assert store.get_repo(owner.id, "MYREPO") == repo
        assert store.get_repo(owner.id + 1000, "myrepo") is None

    def test_get_repo_by_storage_id(self, store: Store) -> None:
        owner = _user(store, "sid")
        repo = store.create_repo(owner.id, "disk", storage_id="abc123")
        assert store.get_repo_by_storage_id("abc123") == repo
        assert store.get_repo_by_storage_id("abc124") is None
        store.delete_repo(repo.id)
        assert store.get_repo_by_storage_id("abc123") is None

    def test_get_repos_in_the_order_asked_leaving_out_missing_ones(self, store: Store) -> None:
        owner = _user(store, "many")
        repos = [store.create_repo(owner.id, f"r{i}", storage_id=f"many{i}") for i in range(5)]
        ids = [repos[3].id, repos[0].id, 999_999, repos[4].id]
        assert store.get_repos(ids) == [repos[3], repos[0], repos[4]]
        assert store.get_repos([]) == []

    def test_repo_names_are_unique_per_owner_case_insensitively(self, store: Store) -> None:
        a = _user(store, "ann")
        b = _user(store, "ben")
        _repo(store, a, "tools")
        with pytest.raises(AlreadyExists, match="Tools"):
            _repo(store, a, "Tools")
        assert len(store.list_repos(a.id)) == 1
        other = _repo(store, b, "TOOLS")
        assert store.get_repo(b.id, "tools") == other

    def test_storage_ids_are_unique(self, store: Store) -> None:
        a = _user(store, "ann")
        b = _user(store, "ben")
        store.create_repo(a.id, "one", storage_id="shared")
        with pytest.raises(AlreadyExists):
            store.create_repo(b.id, "two", storage_id="shared")
        assert store.list_repos(b.id) == []

    def test_create_repo_for_a_missing_owner_is_not_found(self, store: Store) -> None:
        with pytest.raises(NotFound):
            store.create_repo(424242, "orphan", storage_id="s")
        assert store.list_repos() == []

    def test_orgs_own_repositories(self, store: Store) -> None:
        owner = _user(store, "owner")
        org = store.create_org("acme", owner_id=owner.id)
        repo = _repo(store, org, "site")
        assert store.list_repos(org.id) == [repo]
        assert store.list_repos(owner.id) == []

    def test_list_repos_per_owner_and_of_everyone_with_pagination(self, store: Store) -> None:
        a = _user(store, "ann")
        b = _user(store, "ben")
        r1 = _repo(store, a, "zzz")
        r2 = _repo(store, b, "aaa")
        r3 = _repo(store, a, "mmm")
        r4 = _repo(store, a, "bbb")
        assert store.list_repos() == [r1, r2, r3, r4]
        assert store.list_repos(a.id) == [r1, r3, r4]
        assert store.list_repos(b.id) == [r2]
        assert store.list_repos(a.id, limit=2) == [r1, r3]
        assert store.list_repos(a.id, limit=2, offset=2) == [r4]
        assert store.list_repos(limit=1, offset=1) == [r2]
        assert store.list_repos(offset=3) == [r4]
        assert store.list_repos(a.id, offset=5) == []
        assert store.list_repos(424242) == []

    def test_one_owner_s_repositories_are_listed_in_name_order_a_page_at_a_time(self, store: Store) -> None:
        a = _user(store, "ann")
        other = _repo(store, _user(store, "ben"), "aaa")
        names = ["Zeta", "alpha", "b.c", "b-c", "B_d", "mid", "0lead", "Ab"]
        made = {name: _repo(store, a, name) for name in names}
        in_order = [made[n] for n in sorted(names, key=str.lower)]
        assert store.list_repos(a.id, by_name=True) == in_order
        assert store.list_repos(a.id, by_name=True, limit=3) == in_order[:3]
        assert store.list_repos(a.id, by_name=True, limit=3, offset=6) == in_order[6:]
        assert other not in store.list_repos(a.id, by_name=True)
        # A rename moves the repository to its new place.
        renamed = store.save_repo(dataclasses.replace(made["Zeta"], name="00first"))
        assert store.list_repos(a.id, by_name=True, limit=1) == [renamed]
        with pytest.raises(InvalidInput):
            store.list_repos(by_name=True)

    def test_a_walk_by_name_cursor_sees_each_lasting_repository_once_while_others_write(
        self, store: Store
    ) -> None:
        a = _user(store, "ann")
        made = {name: _repo(store, a, name) for name in (f"r{n:02d}" for n in range(0, 60, 2))}
        assert store.count_repos(a.id) == 30
        seen: list[str] = []
        after: str | None = None
        added = deleted = 0
        while True:
            page = store.list_repos(a.id, by_name=True, limit=7, after=after)
            seen += [r.name for r in page]
            if len(page) < 7:
                break
            after = page[-1].name
            seen_folded = {n.lower() for n in seen}
            # Between pages other writers delete one repository already seen and one not yet seen,
            # and add one before the cursor and one after it.
            ahead = [n for n in made if n > after.lower() and n not in seen_folded]
            for name in (seen[0].lower(), ahead[0] if ahead else None):
                if name is not None and name in made:
                    assert store.delete_repo(made.pop(name).id)
                    deleted += 1
            for name in (f"q{after}", f"{after}B"):  # one before the cursor, one after it
                made[name.lower()] = _repo(store, a, name)
                added += 1
        folded = [n.lower() for n in seen]
        assert len(set(folded)) == len(folded)  # never a repository twice
        assert folded == sorted(folded)
        assert store.count_repos(a.id) == 30 + added - deleted
        # Every repository there from start to end is seen, and so is every one added after the cursor.
        assert {n for n in made if not n.startswith("q")} <= set(folded)
        assert store.list_repos(a.id, by_name=True, after="r99") == []
        next_after_r10 = min(n for n in made if n > "r10")
        assert store.list_repos(a.id, by_name=True, after="R10", limit=1) == [made[next_after_r10]]
        assert store.count_repos(424242) == 0
        with pytest.raises(InvalidInput):
            store.list_repos(a.id, after="r10")

    def test_save_repo_stores_the_mutable_fields(self, store: Store) -> None:
        owner = _user(store, "owner")
        repo = _repo(store, owner, "app")
        pushed = datetime(2030, 3, 4, 5, 6, 7, tzinfo=UTC)
        changed = dataclasses.replace(
            repo,
            name="application",
            visibility=Visibility.PRIVATE,
            description="the app",
            default_branch="develop",
            allow_force_push=False,
            pushed_at=pushed,
        )
        saved = store.save_repo(changed)
        assert (saved.name, saved.visibility, saved.description, saved.default_branch) == (
            "application",
            Visibility.PRIVATE,
            "the app",
            "develop",
        )
        assert saved.visibility is Visibility.PRIVATE
        assert saved.allow_force_push is False
        assert saved.pushed_at == pushed and _is_utc(saved.pushed_at)
        assert saved.created_at == repo.created_at
        assert saved.updated_at is not None and repo.updated_at is not None
        assert saved.updated_at >= repo.updated_at
        assert store.get_repo_by_id(repo.id) == saved
        assert store.get_repo(owner.id, "app") is None
        assert store.get_repo(owner.id, "APPLICATION") == saved

    def test_save_repo_never_changes_the_storage_id(self, store: Store) -> None:
        owner = _user(store, "owner")
        repo = _repo(store, owner, "app")
        saved = store.save_repo(dataclasses.replace(repo, storage_id="elsewhere", description="d"))
        assert saved.storage_id == repo.storage_id
        assert saved.description == "d"

    def test_save_repo_clears_pushed_at(self, store: Store) -> None:
        owner = _user(store, "owner")
        repo = _repo(store, owner, "app")
        pushed = store.save_repo(dataclasses.replace(repo, pushed_at=datetime(2030, 1, 1, tzinfo=UTC)))
        cleared = store.save_repo(dataclasses.replace(pushed, pushed_at=None))
        assert cleared.pushed_at is None

    def test_save_repo_may_change_only_the_case_of_its_name(self, store: Store) -> None:
        owner = _user(store, "owner")
        repo = _repo(store, owner, "app")
        saved = store.save_repo(dataclasses.replace(repo, name="App"))
        assert saved.name == "App"

    def test_rename_onto_a_taken_name_is_rejected(self, store: Store) -> None:
        owner = _user(store, "owner")
        _repo(store, owner, "taken")
        repo = _repo(store, owner, "free")
        with pytest.raises(AlreadyExists, match="TAKEN"):
            store.save_repo(dataclasses.replace(repo, name="TAKEN", description="changed"))
        assert store.get_repo_by_id(repo.id) == repo

    def test_transfer_to_another_owner(self, store: Store) -> None:
        a = _user(store, "ann")
        b = _user(store, "ben")
        org = store.create_org("acme", owner_id=b.id)
        repo = _repo(store, a, "proj")
        store.set_collaborator(repo.id, b.id, Permission.PUSH)
        moved = store.save_repo(dataclasses.replace(repo, owner_id=org.id))
        assert moved.owner_id == org.id
        assert moved.storage_id == repo.storage_id
        assert store.get_repo(a.id, "proj") is None
        assert store.get_repo(org.id, "proj") == moved
        assert store.list_repos(a.id) == []
        assert store.list_repos(org.id) == [moved]
        assert store.list_collaborators(repo.id) == [Collaborator(repo.id, b.id, Permission.PUSH)]

    def test_transfer_onto_a_taken_name_is_rejected(self, store: Store) -> None:
        a = _user(store, "ann")
        b = _user(store, "ben")
        repo = _repo(store, a, "proj")
        _repo(store, b, "Proj")
        with pytest.raises(AlreadyExists):
            store.save_repo(dataclasses.replace(repo, owner_id=b.id))
        assert store.get_repo_by_id(repo.id) == repo
        # Transfer and rename at once onto a free name works.
        moved = store.save_repo(dataclasses.replace(repo, owner_id=b.id, name="proj-2"))
        assert store.get_repo(b.id, "proj-2") == moved

    def test_transfer_to_a_missing_owner_is_not_found(self, store: Store) -> None:
        a = _user(store, "ann")
        repo = _repo(store, a, "proj")
        with pytest.raises(NotFound):
            store.save_repo(dataclasses.replace(repo, owner_id=424242))
        assert store.get_repo_by_id(repo.id) == repo

    def test_save_repo_of_a_missing_repository_is_not_found(self, store: Store) -> None:
        owner = _user(store, "owner")
        ghost = Repository(id=424242, owner_id=owner.id, name="ghost", storage_id="g")
        with pytest.raises(NotFound):
            store.save_repo(ghost)
        assert store.get_repo(owner.id, "ghost") is None

    def test_delete_repo_removes_its_collaborators(self, store: Store) -> None:
        owner = _user(store, "owner")
        helper = _user(store, "helper")
        repo = _repo(store, owner, "gone")
        kept = _repo(store, owner, "kept")
        store.set_collaborator(repo.id, helper.id, Permission.PUSH)
        store.set_collaborator(kept.id, helper.id, Permission.PULL)
        assert store.delete_repo(repo.id) is True
        assert store.delete_repo(repo.id) is False
        assert store.get_repo_by_id(repo.id) is None
        assert store.get_repo(owner.id, "gone") is None
        assert store.list_collaborators(repo.id) == []
        assert store.list_collaborations_of(helper.id) == [Collaborator(kept.id, helper.id, Permission.PULL)]
        assert store.list_repos(owner.id) == [kept]
        # The name is free again.
        assert _repo(store, owner, "gone").id != repo.id

    # -- collaborators -----------------------------------------------------------------

    def test_set_collaborator_is_an_upsert(self, store: Store) -> None:
        owner = _user(store, "owner")
        helper = _user(store, "helper")
        repo = _repo(store, owner, "r")
        added = store.set_collaborator(repo.id, helper.id, Permission.PULL)
        assert added == Collaborator(repo.id, helper.id, Permission.PULL)
        assert store.get_collaborator(repo.id, helper.id) == added
        changed = store.set_collaborator(repo.id, helper.id, Permission.ADMIN)
        assert changed.permission is Permission.ADMIN
        found = store.get_collaborator(repo.id, helper.id)
        assert found is not None and found.permission is Permission.ADMIN
        assert store.list_collaborators(repo.id) == [changed]

    def test_every_permission_round_trips(self, store: Store) -> None:
        owner = _user(store, "owner")
        helper = _user(store, "helper")
        repo = _repo(store, owner, "r")
        for permission in Permission:
            store.set_collaborator(repo.id, helper.id, permission)
            found = store.get_collaborator(repo.id, helper.id)
            assert found is not None and found.permission is permission

    def test_collaborator_listings_are_ordered_by_id(self, store: Store) -> None:
        owner = _user(store, "owner")
        u1 = _user(store, "u1")
        u2 = _user(store, "u2")
        r1 = _repo(store, owner, "r1")
        r2 = _repo(store, owner, "r2")
        store.set_collaborator(r2.id, u2.id, Permission.PUSH)
        store.set_collaborator(r1.id, u2.id, Permission.PULL)
        store.set_collaborator(r1.id, u1.id, Permission.ADMIN)
        assert store.list_collaborators(r1.id) == [
            Collaborator(r1.id, u1.id, Permission.ADMIN),
            Collaborator(r1.id, u2.id, Permission.PULL),
        ]
        assert store.list_collaborators(r2.id) == [Collaborator(r2.id, u2.id, Permission.PUSH)]
        assert store.list_collaborations_of(u2.id) == [
            Collaborator(r1.id, u2.id, Permission.PULL),
            Collaborator(r2.id, u2.id, Permission.PUSH),
        ]
        assert store.list_collaborations_of(u1.id) == [Collaborator(r1.id, u1.id, Permission.ADMIN)]
        assert store.list_collaborations_of(owner.id) == []
        assert store.list_collaborators(424242) == []

    def test_remove_collaborator(self, store: Store) -> None:
        owner = _user(store, "owner")
        helper = _user(store, "helper")
        repo = _repo(store, owner, "r")
        store.set_collaborator(repo.id, helper.id, Permission.PUSH)
        assert store.remove_collaborator(repo.id, helper.id) is True
        assert store.remove_collaborator(repo.id, helper.id) is False
        assert store.get_collaborator(repo.id, helper.id) is None
        assert store.list_collaborators(repo.id) == []

    def test_collaborator_needs_an_existing_repo_and_user(self, store: Store) -> None:
        owner = _user(store, "owner")
        repo = _repo(store, owner, "r")
        with pytest.raises(NotFound):
            store.set_collaborator(424242, owner.id, Permission.PULL)
        with pytest.raises(NotFound):
            store.set_collaborator(repo.id, 424242, Permission.PULL)
        assert store.list_collaborators(repo.id) == []

    def test_an_org_cannot_be_a_collaborator(self, store: Store) -> None:
        owner = _user(store, "owner")
        org = store.create_org("acme", owner_id=owner.id)
        repo = _repo(store, owner, "r")
        with pytest.raises(InvalidInput):
            store.set_collaborator(repo.id, org.id, Permission.PULL)
        assert store.list_collaborators(repo.id) == []

    # -- SSH keys ----------------------------------------------------------------------

    def test_create_a_user_s_ssh_key_and_look_it_up(self, store: Store) -> None:
        user = _user(store, "kai")
        key = store.create_ssh_key(
            fingerprint=fingerprint("kai-laptop"),
            algorithm="ssh-ed25519",
            key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
            title="laptop",
            user_id=user.id,
            read_only=True,  # means nothing for a user's key
        )
        assert isinstance(key.id, int)
        assert (key.fingerprint, key.algorithm, key.title, key.user_id, key.repo_id, key.read_only) == (
            fingerprint("kai-laptop"),
            "ssh-ed25519",
            "laptop",
            user.id,
            None,
            False,
        )
        assert key.key == "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
        assert _is_utc(key.created_at) and key.last_used_at is None
        assert store.get_ssh_key(key.id) == key
        assert store.get_ssh_key_by_fingerprint(fingerprint("kai-laptop")) == key
        assert store.list_ssh_keys(user_id=user.id) == [key]

    def test_a_deploy_key_belongs_to_its_repository(self, store: Store) -> None:
        owner = _user(store, "owner")
        repo = _repo(store, owner, "site")
        reader = _ssh_key(store, "ci-read", repo=repo, read_only=True)
        writer = _ssh_key(store, "ci-write", repo=repo, read_only=False)
        assert (reader.repo_id, reader.user_id, reader.read_only) == (repo.id, None, True)
        assert (writer.repo_id, writer.user_id, writer.read_only) == (repo.id, None, False)
        assert store.get_ssh_key_by_fingerprint(fingerprint("ci-read")) == reader
        assert store.get_ssh_key(writer.id) == writer
        assert store.list_ssh_keys(repo_id=repo.id) == [reader, writer]
        assert store.list_ssh_keys(user_id=owner.id) == []

    def test_an_ssh_key_has_exactly_one_owner(self, store: Store) -> None:
        owner = _user(store, "owner")
        repo = _repo(store, owner, "r")
        with pytest.raises(ValueError):
            _ssh_key(store, "both", user=owner, repo=repo)
        with pytest.raises(ValueError):
            _ssh_key(store, "neither")
        with pytest.raises(ValueError):
            store.list_ssh_keys()
        with pytest.raises(ValueError):
            store.list_ssh_keys(user_id=owner.id, repo_id=repo.id)
        assert store.get_ssh_key_by_fingerprint(fingerprint("both")) is None
        assert store.get_ssh_key_by_fingerprint(fingerprint("neither")) is None

    def test_an_ssh_key_of_a_missing_user_or_repository_is_not_found(self, store: Store) -> None:
        owner = _user(store, "owner")
        ghost = Account(id=424242, login="ghost", type=AccountType.USER)
        with pytest.raises(NotFound):
            _ssh_key(store, "ghost-user", user=ghost)
        with pytest.raises(NotFound):
            _ssh_key(store, "ghost-repo", repo=Repository(id=424242, owner_id=owner.id, name="g", storage_id="g"))
        assert store.get_ssh_key_by_fingerprint(fingerprint("ghost-user")) is None
        assert store.get_ssh_key_by_fingerprint(fingerprint("ghost-repo")) is None
        assert store.list_ssh_keys(user_id=ghost.id) == [] and store.list_ssh_keys(repo_id=424242) == []
        # The failed attempts left the fingerprints free.
        assert _ssh_key(store, "ghost-user", user=owner).user_id == owner.id

    def test_an_organization_has_no_ssh_keys_of_its_own(self, store: Store) -> None:
        owner = _user(store, "owner")
        org = store.create_org("acme", owner_id=owner.id)
        with pytest.raises(InvalidInput):
            _ssh_key(store, "org", user=org)
        assert store.list_ssh_keys(user_id=org.id) == []
        # Its repositories take deploy keys.
        repo = _repo(store, org, "site")
        assert _ssh_key(store, "org", repo=repo).repo_id == repo.id

    def test_a_fingerprint_is_unique_across_the_site(self, store: Store) -> None:
        ann = _user(store, "ann")
        ben = _user(store, "ben")
        mine = _repo(store, ann, "mine")
        theirs = _repo(store, ben, "theirs")
        first = _ssh_key(store, "shared", user=ann)
        with pytest.raises(AlreadyExists):
            _ssh_key(store, "shared", user=ben)  # another user
        with pytest.raises(AlreadyExists):
            _ssh_key(store, "shared", user=ann)  # the same user again
        with pytest.raises(AlreadyExists):
            _ssh_key(store, "shared", repo=theirs)  # a deploy key of any repository
        deploy = _ssh_key(store, "deploy", repo=mine)
        with pytest.raises(AlreadyExists):
            _ssh_key(store, "deploy", repo=theirs)
        with pytest.raises(AlreadyExists):
            _ssh_key(store, "deploy", user=ben)
        assert store.get_ssh_key_by_fingerprint(fingerprint("shared")) == first
        assert store.get_ssh_key_by_fingerprint(fingerprint("deploy")) == deploy
        assert store.list_ssh_keys(user_id=ben.id) == []
        assert store.list_ssh_keys(repo_id=theirs.id) == []
        assert store.list_ssh_keys(user_id=ann.id) == [first]
        # Fingerprints are base64: compared exactly, case included.
        other_case = store.create_ssh_key(
            fingerprint=first.fingerprint.swapcase(), algorithm="ssh-ed25519", key="k", title="", user_id=ben.id
        )
        assert store.get_ssh_key_by_fingerprint(first.fingerprint.swapcase()) == other_case
        assert store.get_ssh_key_by_fingerprint(first.fingerprint) == first

    def test_ssh_keys_are_listed_per_owner_in_id_order(self, store: Store) -> None:
        ann = _user(store, "ann")
        ben = _user(store, "ben")
        r1 = _repo(store, ann, "r1")
        r2 = _repo(store, ann, "r2")
        a1 = _ssh_key(store, "a1", user=ann)
        d1 = _ssh_key(store, "d1", repo=r1)
        b1 = _ssh_key(store, "b1", user=ben)
        a2 = _ssh_key(store, "a2", user=ann)
        d2 = _ssh_key(store, "d2", repo=r2)
        d3 = _ssh_key(store, "d3", repo=r1, read_only=True)
        assert a1.id < d1.id < b1.id < a2.id < d2.id < d3.id
        assert store.list_ssh_keys(user_id=ann.id) == [a1, a2]
        assert store.list_ssh_keys(user_id=ben.id) == [b1]
        assert store.list_ssh_keys(repo_id=r1.id) == [d1, d3]
        assert store.list_ssh_keys(repo_id=r2.id) == [d2]
        assert store.list_ssh_keys(user_id=424242) == []
        assert store.list_ssh_keys(repo_id=424242) == []

    def test_delete_ssh_key(self, store: Store) -> None:
        user = _user(store, "rob")
        repo = _repo(store, user, "r")
        gone = _ssh_key(store, "gone", user=user)
        kept = _ssh_key(store, "kept", user=user)
        deploy = _ssh_key(store, "deploy", repo=repo)
        assert store.delete_ssh_key(gone.id) is True
        assert store.delete_ssh_key(gone.id) is False
        assert store.delete_ssh_key(deploy.id) is True
        assert store.delete_ssh_key(424242) is False
        assert store.get_ssh_key(gone.id) is None
        assert store.get_ssh_key_by_fingerprint(gone.fingerprint) is None
        assert store.get_ssh_key_by_fingerprint(deploy.fingerprint) is None
        assert store.list_ssh_keys(user_id=user.id) == [kept]
        assert store.list_ssh_keys(repo_id=repo.id) == []
        # The fingerprints are free again, for anyone; ids are not reused.
        again = _ssh_key(store, "gone", repo=repo)
        assert again.id > deploy.id and store.get_ssh_key_by_fingerprint(gone.fingerprint) == again
        assert _ssh_key(store, "deploy", user=user).user_id == user.id

    def test_touch_ssh_key_records_the_latest_use(self, store: Store) -> None:
        user = _user(store, "sam")
        key = _ssh_key(store, "used", user=user)
        other = _ssh_key(store, "unused", user=user)
        when = datetime(2030, 2, 3, 4, 5, 6, 789000, tzinfo=UTC)
        store.touch_ssh_key(key.id, when)
        found = store.get_ssh_key_by_fingerprint(key.fingerprint)
        assert found is not None and found.last_used_at == when and _is_utc(found.last_used_at)
        assert dataclasses.replace(found, last_used_at=None) == key
        assert store.get_ssh_key(other.id) == other
        store.touch_ssh_key(key.id, when - timedelta(seconds=1))  # a connection that ended earlier
        assert store.get_ssh_key(key.id) == found
        later = when + timedelta(minutes=5)
        store.touch_ssh_key(key.id, later)
        assert store.list_ssh_keys(user_id=user.id) == [dataclasses.replace(key, last_used_at=later), other]
        store.touch_ssh_key(424242, when)  # a key deleted meanwhile: ignored

    def test_delete_account_removes_its_keys_and_the_deploy_keys_of_its_repositories(self, store: Store) -> None:
        victim = _user(store, "victim")
        other = _user(store, "other")
        own = _repo(store, victim, "own")
        theirs = _repo(store, other, "theirs")
        victim_keys = [_ssh_key(store, "v1", user=victim), _ssh_key(store, "v2", user=victim)]
        own_deploy = _ssh_key(store, "own-deploy", repo=own)
        kept = [_ssh_key(store, "o1", user=other), _ssh_key(store, "theirs-deploy", repo=theirs)]

        store.delete_account(victim.id)

        for key in [*victim_keys, own_deploy]:
            assert store.get_ssh_key(key.id) is None
            assert store.get_ssh_key_by_fingerprint(key.fingerprint) is None
        assert store.list_ssh_keys(user_id=victim.id) == []
        assert store.list_ssh_keys(repo_id=own.id) == []
        assert store.list_ssh_keys(user_id=other.id) == [kept[0]]
        assert store.list_ssh_keys(repo_id=theirs.id) == [kept[1]]
        assert _ssh_key(store, "v1", user=other).user_id == other.id  # the fingerprint is free again

    def test_delete_org_removes_the_deploy_keys_of_its_repositories(self, store: Store) -> None:
        owner = _user(store, "owner")
        org = store.create_org("acme", owner_id=owner.id)
        repo = _repo(store, org, "site")
        deploy = _ssh_key(store, "site-deploy", repo=repo)
        mine = _ssh_key(store, "owner-key", user=owner)
        store.delete_account(org.id)
        assert store.get_ssh_key_by_fingerprint(deploy.fingerprint) is None
        assert store.list_ssh_keys(repo_id=repo.id) == []
        assert store.list_ssh_keys(user_id=owner.id) == [mine]

    def test_delete_repo_removes_its_deploy_keys(self, store: Store) -> None:
        owner = _user(store, "owner")
        gone = _repo(store, owner, "gone")
        kept = _repo(store, owner, "kept")
        deploy = [_ssh_key(store, "g1", repo=gone), _ssh_key(store, "g2", repo=gone, read_only=True)]
        kept_deploy = _ssh_key(store, "k1", repo=kept)
        user_key = _ssh_key(store, "u1", user=owner)
        assert store.delete_repo(gone.id) is True
        for key in deploy:
            assert store.get_ssh_key(key.id) is None
            assert store.get_ssh_key_by_fingerprint(key.fingerprint) is None
        assert store.list_ssh_keys(repo_id=gone.id) == []
        assert store.list_ssh_keys(repo_id=kept.id) == [kept_deploy]
        assert store.list_ssh_keys(user_id=owner.id) == [user_key]
        assert _ssh_key(store, "g1", repo=kept).repo_id == kept.id

    def test_deploy_keys_move_with_a_transferred_repository(self, store: Store) -> None:
        ann = _user(store, "ann")
        ben = _user(store, "ben")
        repo = _repo(store, ann, "proj")
        deploy = _ssh_key(store, "proj-deploy", repo=repo)
        store.save_repo(dataclasses.replace(repo, owner_id=ben.id))
        assert store.list_ssh_keys(repo_id=repo.id) == [deploy]
        store.delete_account(ann.id)
        assert store.get_ssh_key(deploy.id) == deploy
        store.delete_account(ben.id)
        assert store.get_ssh_key(deploy.id) is None

    # -- SSH host keys -----------------------------------------------------------------

    def test_there_are_no_host_keys_until_added(self, store: Store) -> None:
        assert store.get_ssh_host_keys() == []

    def test_the_first_host_key_of_an_algorithm_wins(self, store: Store) -> None:
        pem = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA{}\n-----END OPENSSH PRIVATE KEY-----\n"
        first = store.add_ssh_host_key("ssh-ed25519", pem.format("first"))
        assert isinstance(first, HostKey)
        assert (first.algorithm, first.private_key) == ("ssh-ed25519", pem.format("first"))
        assert _is_utc(first.created_at)
        # A second node starting with a key of its own gets the stored one back, unchanged.
        assert store.add_ssh_host_key("ssh-ed25519", pem.format("second")) == first
        rsa = store.add_ssh_host_key("rsa-sha2-512", pem.format("rsa"))
        ecdsa = store.add_ssh_host_key("ecdsa-sha2-nistp256", pem.format("ecdsa"))
        assert store.get_ssh_host_keys() == [ecdsa, rsa, first]  # by algorithm

    # -- node settings -----------------------------------------------------------------

    def test_maintenance_is_off_until_set(self, store: Store) -> None:
        assert store.get_maintenance() == MaintenanceState(enabled=False)

    def test_maintenance_round_trip(self, store: Store) -> None:
        since = datetime(2030, 6, 7, 8, 9, 10, tzinfo=UTC)
        on = MaintenanceState(enabled=True, message="upgrading to 2.0", since=since)
        store.set_maintenance(on)
        assert store.get_maintenance() == on
        found = store.get_maintenance()
        assert _is_utc(found.since)
        off = MaintenanceState(enabled=False)
        store.set_maintenance(off)
        assert store.get_maintenance() == off

    def test_settings_round_trip(self, store: Store) -> None:
        store.set_setting("replication.epoch", "7")
        store.set_setting("other", "")
        assert store.get_setting("replication.epoch") == "7"
        assert store.get_setting("other") == ""
        store.set_setting("replication.epoch", "8")
        assert store.get_setting("replication.epoch") == "8"
        store.set_setting("replication.epoch", None)
        assert store.get_setting("replication.epoch") is None
        assert store.get_setting("other") == ""
        store.set_setting("never-set", None)
        assert store.get_setting("never-set") is None

    def test_settings_keys_are_case_sensitive(self, store: Store) -> None:
        store.set_setting("Key", "upper")
        store.set_setting("key", "lower")
        assert store.get_setting("Key") == "upper"
        assert store.get_setting("key") == "lower"

    # -- races: "a clash raises AlreadyExists, whichever writer loses a race" -----------
    # Writers on threads of one store, started together; each backend's own module races two stores too.

    def test_racing_creators_of_one_login_have_exactly_one_winner(self, store: Store) -> None:
        owner = _user(store, "owner")
        for round_ in range(3):
            login = f"contested{round_}"

            def create(i: int, login: str = login) -> Account:
                # Users and organizations, in either case, race for one login.
                spelled = login.upper() if i % 2 else login
                return store.create_org(spelled, owner_id=owner.id) if i % 3 == 0 else store.create_user(spelled)

            results, errors = run_in_threads(6, create)
            assert len(results) == 1, errors
            assert len(errors) == 5 and all(isinstance(e, AlreadyExists) for e in errors), errors
            assert store.get_account(login) == results[0]

    def test_racing_creators_of_one_repository_name_have_exactly_one_winner(self, store: Store) -> None:
        owner = _user(store, "owner")
        results, errors = run_in_threads(6, lambda i: store.create_repo(owner.id, "Same" if i % 2 else "same",
                                                                          storage_id=f"race-{i}"))
        assert len(results) == 1, errors
        assert len(errors) == 5 and all(isinstance(e, AlreadyExists) for e in errors), errors
        assert store.list_repos(owner.id) == results

    def test_racing_creators_of_one_fingerprint_have_exactly_one_winner(self, store: Store) -> None:
        ann, ben = _user(store, "ann"), _user(store, "ben")
        repo = _repo(store, ann, "r")
        owners: list[KeyOwner] = [{"user_id": ann.id}, {"user_id": ben.id}, {"repo_id": repo.id}]
        fp = fingerprint("contested")
        results, errors = run_in_threads(6, lambda i: store.create_ssh_key(
            fingerprint=fp, algorithm="ssh-ed25519", key="k", title=str(i), **owners[i % 3]))
        assert len(results) == 1, errors
        assert len(errors) == 5 and all(isinstance(e, AlreadyExists) for e in errors), errors
        assert store.get_ssh_key_by_fingerprint(fp) == results[0]

    def test_a_rename_racing_a_create_onto_one_login_has_one_winner(self, store: Store) -> None:
        for round_ in range(3):
            user = _user(store, f"old{round_}")
            wanted = f"new{round_}"

            def work(i: int, user: Account = user, wanted: str = wanted) -> Account:
                if i == 0:
                    return store.save_account(dataclasses.replace(user, login=wanted))
                return store.create_user(wanted.upper())

            results, errors = run_in_threads(2, work)
            assert len(results) == 1 and len(errors) == 1 and isinstance(errors[0], AlreadyExists), errors
            assert store.get_account(wanted) == results[0]

    def test_racing_writers_lose_no_updates_and_get_distinct_ids(self, store: Store) -> None:
        owner = _user(store, "owner")
        org = store.create_org("acme", owner_id=owner.id)

        def work(i: int) -> list[int]:
            user = _user(store, f"user-{i}")
            store.set_membership(org.id, user.id, OrgRole.MEMBER)
            ids = []
            for n in range(5):
                repo = store.create_repo(org.id, f"repo-{i}-{n}", storage_id=f"race-{i}-{n}")
                store.set_collaborator(repo.id, user.id, Permission.PUSH)
                ids.append(repo.id)
            return ids

        results, errors = run_in_threads(6, work)
        assert errors == []
        ids = [repo_id for per_thread in results for repo_id in per_thread]
        assert len(set(ids)) == 30
        assert all(per_thread == sorted(per_thread) for per_thread in results)  # each writer's increase
        assert [r.id for r in store.list_repos(org.id)] == sorted(ids)
        assert len(store.list_members(org.id)) == 7
        assert all(len(store.list_collaborators(repo_id)) == 1 for repo_id in ids)

    def test_host_keys_added_at_once_end_as_one(self, store: Store) -> None:
        results, errors = run_in_threads(6, lambda i: store.add_ssh_host_key("ssh-ed25519", f"key of writer {i}"))
        assert errors == []
        assert len(set(results)) == 1
        assert store.get_ssh_host_keys() == [results[0]]
