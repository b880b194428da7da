"""Who may do what to a repository: pure functions over plain values."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from bulwark.errors import Forbidden, Unauthenticated
from bulwark.models import (
    ALL_SCOPES,
    Account,
    Collaborator,
    Membership,
    OrgRole,
    Permission,
    Repository,
    Scope,
)


@dataclass(frozen=True)
class DeployGrant:
    """What a repository's deploy key lets its holder do: read it, or also push to it."""

    key_id: int
    repo_id: int
    write: bool


@dataclass(frozen=True)
class Principal:
    """The caller of a request: an account with the scopes of its credential, a deploy key, or anonymous."""

    account: Account | None
    scopes: frozenset[Scope] = field(default_factory=frozenset)
    token_id: int | None = None
    # A deploy key speaks for no account: it reaches its one repository (and public ones).
    deploy: DeployGrant | None = None
    # When the credential stops being valid by itself (a token's expiry).
    expires_at: datetime | None = None
    # When a kept decision about this caller must be made afresh even if nothing it read changed:
    # the token's expiry, or when its last use is next due to be recorded.
    recheck_at: datetime | None = None

    @property
    def anonymous(self) -> bool:
        return self.account is None and self.deploy is None

    @property
    def site_admin(self) -> bool:
        return self.account is not None and self.account.site_admin and Scope.SITE_ADMIN in self.scopes

    def has_scope(self, scope: Scope) -> bool:
        return scope in self.scopes

    @classmethod
    def for_password(cls, account: Account) -> Principal:
        # Someone who typed the account's password may do anything the account may.
        return cls(account=account, scopes=ALL_SCOPES)


ANONYMOUS = Principal(account=None)


def repo_permission(
    principal: Principal,
    repo: Repository,
    *,
    owner: Account,
    membership: Membership | None,
    collaborator: Collaborator | None,
) -> Permission:
    """The access ``principal`` has to ``repo``.

    ``membership`` is the caller's membership in the owning organization (if the
    owner is one) and ``collaborator`` the caller's collaborator record, both
    looked up by the caller of this function.
    """
    public_floor = Permission.NONE if repo.private else Permission.PULL
    if principal.deploy is not None:
        if principal.deploy.repo_id != repo.id:
            return public_floor
        return Permission.PUSH if principal.deploy.write else Permission.PULL
    user = principal.account
    if user is None or user.suspended:
        return public_floor
    if (user.site_admin and Scope.SITE_ADMIN in principal.scopes) or (not owner.is_org and owner.id == user.id):
        granted = Permission.ADMIN
    else:
        granted = Permission.NONE
        if membership is not None and membership.user_id == user.id:
            granted = Permission.ADMIN if membership.role is OrgRole.OWNER else Permission.PULL
        if collaborator is not None and collaborator.user_id == user.id:
            granted = max(granted, collaborator.permission)
    return min(max(granted, public_floor), scope_cap(principal.scopes, repo))


def scope_cap(scopes: frozenset[Scope], repo: Repository) -> Permission:
    """The most a credential with ``scopes`` may do to ``repo``, whatever the account may."""
    if Scope.REPO in scopes:
        return Permission.ADMIN
    if repo.private:
        return Permission.NONE
    if Scope.PUBLIC_REPO in scopes:
        return Permission.ADMIN
    return Permission.PULL


def sees_every_repo(principal: Principal, owner: Account, membership: Membership | None) -> bool:
    """Whether ``principal`` may read every repository of ``owner``, private ones included (what
    :func:`repo_permission` grants a private repository without a collaborator record): then a
    list of the owner's repositories needs no filtering and can be counted instead of read."""
    user = principal.account
    if user is None or user.suspended or Scope.REPO not in principal.scopes:
        return False
    if principal.site_admin or (not owner.is_org and owner.id == user.id):
        return True
    return owner.is_org and membership is not None and membership.user_id == user.id


def require_site_admin(principal: Principal, what: str) -> None:
    """The one check for site administration: 401 without credentials, 403 for anyone but a site
    administrator's account, or for such an account's token without the site_admin scope."""
    if principal.anonymous:
        raise Unauthenticated(f"{what} need a site administrator's token")
    if principal.account is None or not principal.account.site_admin:
        raise Forbidden(f"{what} are for site administrators only")
    if not principal.site_admin:
        raise Forbidden(f"{what} need a token with the site_admin scope")
