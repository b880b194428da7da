"""The access rules, as a table of cases over the pure decision function."""

from __future__ import annotations

import pytest

from bulwark.models import (
    ALL_SCOPES,
    Account,
    AccountType,
    Collaborator,
    Membership,
    OrgRole,
    Permission,
    Repository,
    Scope,
    Visibility,
)
from bulwark.services.permissions import ANONYMOUS, Principal, repo_permission, sees_every_repo

pytestmark = pytest.mark.timeout(10)

ALICE = Account(1, "alice", AccountType.USER)
BOB = Account(2, "bob", AccountType.USER)
ADMIN = Account(3, "root", AccountType.USER, site_admin=True)
ACME = Account(10, "acme", AccountType.ORGANIZATION)
SUSPENDED = Account(4, "mallory", AccountType.USER, suspended=True)


def repo(owner: Account, private: bool) -> Repository:
    return Repository(
        id=100, owner_id=owner.id, name="r", storage_id="abc",
        visibility=Visibility.PRIVATE if private else Visibility.PUBLIC,
    )


def perm(principal: Principal, r: Repository, owner: Account, *, membership: Membership | None = None,
         collaborator: Collaborator | None = None) -> Permission:
    return repo_permission(principal, r, owner=owner, membership=membership, collaborator=collaborator)


@pytest.mark.parametrize("private,expected", [(False, Permission.PULL), (True, Permission.NONE)])
def test_anonymous_reads_public_only(private: bool, expected: Permission) -> None:
    assert perm(ANONYMOUS, repo(ALICE, private), ALICE) is expected


def test_owner_is_admin_and_stranger_sees_nothing_private() -> None:
    r = repo(ALICE, True)
    assert perm(Principal.for_password(ALICE), r, ALICE) is Permission.ADMIN
    assert perm(Principal.for_password(BOB), r, ALICE) is Permission.NONE


def test_collaborator_gets_their_level() -> None:
    r = repo(ALICE, True)
    c = Collaborator(r.id, BOB.id, Permission.PUSH)
    assert perm(Principal.for_password(BOB), r, ALICE, collaborator=c) is Permission.PUSH


def test_org_roles() -> None:
    r = repo(ACME, True)
    member = Membership(ACME.id, BOB.id, OrgRole.MEMBER)
    owner = Membership(ACME.id, ALICE.id, OrgRole.OWNER)
    assert perm(Principal.for_password(BOB), r, ACME, membership=member) is Permission.PULL
    assert perm(Principal.for_password(ALICE), r, ACME, membership=owner) is Permission.ADMIN
    writer = Collaborator(r.id, BOB.id, Permission.PUSH)
    assert perm(Principal.for_password(BOB), r, ACME, membership=member, collaborator=writer) is Permission.PUSH


def test_records_of_someone_else_do_not_count() -> None:
    r = repo(ACME, True)
    other = Membership(ACME.id, ALICE.id, OrgRole.OWNER)
    assert perm(Principal.for_password(BOB), r, ACME, membership=other) is Permission.NONE


def test_site_admin_needs_the_site_admin_scope() -> None:
    r = repo(ALICE, True)
    assert perm(Principal(ADMIN, ALL_SCOPES), r, ALICE) is Permission.ADMIN
    assert perm(Principal(ADMIN, frozenset({Scope.REPO})), r, ALICE) is Permission.NONE


def test_suspended_user_is_anonymous() -> None:
    assert perm(Principal.for_password(SUSPENDED), repo(SUSPENDED, True), SUSPENDED) is Permission.NONE


@pytest.mark.parametrize(
    "scopes,private,expected",
    [
        ({Scope.REPO}, True, Permission.ADMIN),
        ({Scope.PUBLIC_REPO}, True, Permission.NONE),
        ({Scope.PUBLIC_REPO}, False, Permission.ADMIN),
        (set(), False, Permission.PULL),
        (set(), True, Permission.NONE),
    ],
)
def test_token_scopes_cap_access(scopes: set[Scope], private: bool, expected: Permission) -> None:
    assert perm(Principal(ALICE, frozenset(scopes)), repo(ALICE, private), ALICE) is expected


def test_seeing_every_repository_of_an_owner_is_what_a_private_one_grants() -> None:
    """A list counts an owner's repositories instead of reading them only when the caller sees every
    one: the shortcut must agree with the rule itself, for every caller, owner and membership."""
    principals = [ANONYMOUS, Principal.for_password(SUSPENDED)] + [
        Principal(who, frozenset(scopes))
        for who in (ALICE, BOB, ADMIN)
        for scopes in (ALL_SCOPES, {Scope.REPO}, {Scope.PUBLIC_REPO}, set(), {Scope.SITE_ADMIN, Scope.PUBLIC_REPO})
    ]
    memberships = [None, Membership(ACME.id, ALICE.id, OrgRole.MEMBER), Membership(ACME.id, BOB.id, OrgRole.OWNER)]
    for principal in principals:
        for owner in (ALICE, BOB, ACME, SUSPENDED):
            for membership in memberships if owner.is_org else [None]:
                granted = perm(principal, repo(owner, True), owner, membership=membership)
                assert sees_every_repo(principal, owner, membership) is (granted >= Permission.PULL), (
                    principal, owner, membership)
