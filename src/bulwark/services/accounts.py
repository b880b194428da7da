"""Users, organizations, tokens and authentication."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bulwark.clock import Clock
from bulwark.errors import AlreadyExists, Forbidden, InvalidInput, NotFound, Unauthenticated, ValidationFailed
from bulwark.models import ALL_SCOPES, Account, AccountType, Membership, OrgRole, Scope, Token
from bulwark.names import MAX_PROFILE_NAME, MAX_TOKEN_NOTE, check_email, check_login, check_text
from bulwark.security import (
    PasswordHasher,
    hash_token,
    looks_like_token,
    new_token,
    token_display_prefix,
)
from bulwark.services import sessions, web_sessions
from bulwark.services.passwords import PasswordChecks
from bulwark.services.permissions import Principal
from bulwark.services.throttle import SignInThrottle
from bulwark.store import Store

ADMIN_LOGIN = "admin"
# Writing last-used on every request would turn every read into a write.
_TOUCH_EVERY = timedelta(minutes=1)


def _resource(type: AccountType) -> str:
    return "Organization" if type is AccountType.ORGANIZATION else "User"


def check_profile(type: AccountType, *, name: str, email: str) -> None:
    """The free-text fields of an account: 422 naming the field that is too long or malformed."""
    check_text(name, resource=_resource(type), field="name", limit=MAX_PROFILE_NAME)
    check_email(email, resource=_resource(type))


def utc_expiry(when: datetime | None) -> datetime | None:
    """A token's expiry in UTC; naive times are taken as UTC. 422 when UTC cannot hold it
    (a time zone pushes it past the last representable instant)."""
    if when is None:
        return None
    try:
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    except OverflowError:
        raise ValidationFailed(
            "expires_at is out of range", resource="Token", field="expires_at", code="invalid"
        ) from None


def parse_scopes(values: Iterable[str]) -> frozenset[Scope]:
    scopes = set()
    for value in values:
        try:
            scopes.add(Scope(value))
        except ValueError:
            known = ", ".join(s.value for s in Scope)
            raise InvalidInput(f"unknown scope {value!r}; known scopes: {known}", field="scopes") from None
    return frozenset(scopes)


@dataclass(frozen=True)
class PasswordAttempt:
    """A password sign-in between its two halves: admitted by the throttle, hash not yet checked."""

    login: str
    address: str
    user: Account | None  # None: no such user (the check runs against a dummy hash)
    stored_hash: str | None


class AccountService:
    def __init__(
        self,
        store: Store,
        hasher: PasswordHasher,
        clock: Clock,
        *,
        metadata_writable: Callable[[], bool] = lambda: True,
        throttle: SignInThrottle | None = None,
        passwords: PasswordChecks | None = None,
    ) -> None:
        self.store = store
        self.hasher = hasher
        self.clock = clock
        # A replica's metadata comes only from its primary: reads there must not write (last-used times).
        self.metadata_writable = metadata_writable
        self.throttle = throttle or SignInThrottle()
        self.passwords = passwords or PasswordChecks(hasher)

    # -- lookup ----------------------------------------------------------------------

    def get(self, login: str) -> Account:
        account = self.store.get_account(login)
        if account is None:
            raise NotFound(f"no user or organization named {login!r}")
        return account

    def get_user(self, login: str) -> Account:
        account = self.get(login)
        if account.is_org:
            raise NotFound(f"no user named {login!r}")
        return account

    def get_org(self, login: str) -> Account:
        account = self.get(login)
        if not account.is_org:
            raise NotFound(f"no organization named {login!r}")
        return account

    # -- authentication ----------------------------------------------------------------

    def authenticate_token(self, secret: str) -> Principal:
        return self._authenticate_token(secret)[0]

    def _authenticate_token(self, secret: str) -> tuple[Principal, Token]:
        token = self.store.get_token_by_hash(hash_token(secret)) if looks_like_token(secret) else None
        if token is None:
            raise Unauthenticated("bad credentials")
        now = self.clock.now()
        principal = self._holder(token, now, gone="bad credentials")
        stale = token.last_used_at is None or now - token.last_used_at >= _TOUCH_EVERY
        used = token.last_used_at
        if stale and self.metadata_writable():
            self.store.touch_token(token.id, now)
            used = now
        due = (used or now) + _TOUCH_EVERY
        recheck = due if token.expires_at is None else min(due, token.expires_at)
        return dataclasses.replace(principal, recheck_at=recheck), token

    def _holder(self, token: Token, now: datetime, *, gone: str) -> Principal:
        """The principal of a live token: not expired, its user there and not suspended."""
        if token.expires_at is not None and token.expires_at <= now:
            raise Unauthenticated("token expired")
        user = self.store.get_account_by_id(token.user_id)
        if user is None:
            raise Unauthenticated(gone)
        if user.suspended:
            raise Forbidden(f"account {user.login!r} is suspended")
        return Principal(account=user, scopes=token.scopes, token_id=token.id, expires_at=token.expires_at)

    def start_session(self, secret: str) -> tuple[Principal, str]:
        """Check a token and return a status-page session cookie for it (services/sessions.py)."""
        principal, token = self._authenticate_token(secret)
        return principal, sessions.issue(token, self.clock.now())

    def authenticate_session(self, value: str) -> Principal:
        """The principal of a status-page session cookie; its token must still be there."""
        ended = "the session has ended: log in again"
        claim = sessions.parse(value)
        if claim is None:
            raise Unauthenticated(ended)
        token = next((t for t in self.store.list_tokens(claim.user_id) if t.id == claim.token_id), None)
        if token is None:
            raise Unauthenticated(ended)
        now = self.clock.now()
        out = token.sessions_ended_at
        if not sessions.valid(claim, token, now, ended_before=None if out is None else sessions.millis(out)):
            raise Unauthenticated(ended)
        return self._holder(token, now, gone=ended)

    def end_session(self, value: str) -> bool:
        """Log out: end every session of the cookie's token issued until now; False when this node
        cannot write (an HA replica) or the cookie is no live session."""
        try:
            principal = self.authenticate_session(value)
        except (Unauthenticated, Forbidden):
            return False
        if principal.token_id is None or not self.metadata_writable():
            return False
        self.store.end_token_sessions(principal.token_id, self.clock.now())
        return True

    def start_web_session(self, principal: Principal) -> str:
        """A web session cookie for a user who has just typed their password (services/web_sessions.py)."""
        user = principal.account
        stored = self.store.get_password_hash(user.id) if user is not None else None
        if user is None or stored is None:
            raise Unauthenticated("bad credentials")
        return web_sessions.issue(user.id, stored, self.clock.now())

    def authenticate_web_session(self, value: str) -> Principal:
        """The principal of a web session cookie: its user there, not suspended, the password unchanged."""
        ended = "your session has ended: sign in again"
        claim = web_sessions.parse(value)
        user = self.store.get_account_by_id(claim.user_id) if claim is not None else None
        if claim is None or user is None or user.is_org:
            raise Unauthenticated(ended)
        if not web_sessions.valid(claim, self.store.get_password_hash(user.id), self.clock.now()):
            raise Unauthenticated(ended)
        if user.suspended:
            raise Forbidden(f"account {user.login!r} is suspended")
        return Principal.for_password(user)

    def authenticate_basic(self, username: str, secret: str, *, address: str = "") -> Principal:
        """HTTP Basic: the secret is a token (any username) or the user's password.

        ``address`` is the client's, for the throttle. This waits for the password check; the
        API's async path runs the halves itself (``begin_password``, ``finish_password``).
        """
        if looks_like_token(secret):
            return self.authenticate_token(secret)
        attempt = self.begin_password(username, address)
        return self.finish_password(attempt, self.passwords.verify(attempt.stored_hash, secret))

    def begin_password(self, username: str, address: str) -> PasswordAttempt:
        """Admit a password sign-in (``TooManyAttempts`` if throttled) and find what to check it against.

        A login that does not exist, an organization and a user without a password are all
        checked against a dummy hash, so they answer in the same time as a wrong password.
        """
        self.throttle.begin(username, address)
        user = self.store.get_account(username)
        stored = self.store.get_password_hash(user.id) if user is not None and not user.is_org else None
        return PasswordAttempt(login=username, address=address, user=user, stored_hash=stored)

    def finish_password(self, attempt: PasswordAttempt, matched: bool) -> Principal:
        user = attempt.user
        if not matched or user is None or attempt.stored_hash is None:
            self.throttle.failed(attempt.login, attempt.address)
            raise Unauthenticated("bad credentials")
        self.throttle.succeeded(attempt.login, attempt.address)
        if user.suspended:
            raise Forbidden(f"account {user.login!r} is suspended")
        return Principal.for_password(user)

    # -- users -----------------------------------------------------------------------

    def create_user(
        self,
        login: str,
        *,
        name: str = "",
        email: str = "",
        site_admin: bool = False,
        password: str | None = None,
    ) -> Account:
        check_login(login)
        check_profile(AccountType.USER, name=name, email=email)
        if password is not None and len(password) < 8:
            raise InvalidInput("password must be at least 8 characters", field="password")
        password_hash = self.hasher.hash(password) if password else None
        return self.store.create_user(
            login, name=name, email=email, site_admin=site_admin, password_hash=password_hash
        )

    def set_password(self, user: Account, password: str) -> None:
        if len(password) < 8:
            raise InvalidInput("password must be at least 8 characters", field="password")
        self.store.set_password_hash(user.id, self.hasher.hash(password))

    def update(self, account: Account, **changes: object) -> Account:
        if "login" in changes:
            check_login(str(changes["login"]))
        check_profile(account.type, name=str(changes.get("name", "")), email=str(changes.get("email", "")))
        return self.store.save_account(dataclasses.replace(account, **changes))  # type: ignore[arg-type]

    def set_suspended(self, user: Account, suspended: bool) -> Account:
        if user.is_org:
            raise InvalidInput("organizations cannot be suspended")
        if suspended and user.site_admin and self._is_last_admin(user):
            raise Forbidden("cannot suspend the last active site administrator")
        return self.store.save_account(dataclasses.replace(user, suspended=suspended))

    def _is_last_admin(self, user: Account) -> bool:
        admins = [
            a
            for a in self.store.list_accounts(AccountType.USER)
            if a.site_admin and not a.suspended and a.id != user.id
        ]
        return not admins

    def check_deletable(self, account: Account) -> None:
        if account.is_org:
            return
        if account.site_admin and self._is_last_admin(account):
            raise Forbidden("cannot delete the last active site administrator")
        for m in self.store.list_memberships_of(account.id):
            owners = self.store.list_members(m.org_id, OrgRole.OWNER)
            if m.role is OrgRole.OWNER and len(owners) == 1:
                org = self.store.get_account_by_id(m.org_id)
                name = org.login if org else m.org_id
                raise Forbidden(f"{account.login!r} is the only owner of {name!r}: add another owner first")

    # -- bootstrap -------------------------------------------------------------------

    def bootstrap_admin(self, token_secret: str | None) -> str | None:
        """On an empty instance, create the site admin ``admin`` and a token for it.

        Returns the token secret to show once, or None if the instance had accounts.
        ``token_secret`` (from the environment, for automated deployments) is used
        instead of a generated one when given.
        """
        if self.store.list_accounts(limit=1):
            return None
        if token_secret is not None and not looks_like_token(token_secret):
            raise InvalidInput("BULWARK_ADMIN_TOKEN must look like bwk_ followed by 40 hex digits")
        try:
            admin = self.store.create_user(ADMIN_LOGIN, name="Site administrator", site_admin=True)
        except AlreadyExists:  # another process bootstrapped first
            return None
        _, secret = self.issue_token(admin, ALL_SCOPES, note="bootstrap", secret=token_secret)
        return secret

    # -- tokens ----------------------------------------------------------------------

    def issue_token(
        self,
        user: Account,
        scopes: Iterable[Scope],
        *,
        note: str = "",
        expires_at: datetime | None = None,
        secret: str | None = None,
    ) -> tuple[Token, str]:
        """Create a token; the secret is returned here and never again."""
        if user.is_org:
            raise InvalidInput("tokens belong to users, not organizations")
        check_text(note, resource="Token", field="note", limit=MAX_TOKEN_NOTE)
        expires_at = utc_expiry(expires_at)
        if expires_at is not None and expires_at <= self.clock.now():
            raise InvalidInput("expiry must be in the future", field="expires_at")
        secret = secret or new_token()
        token = self.store.create_token(
            user.id,
            token_hash=hash_token(secret),
            token_prefix=token_display_prefix(secret),
            scopes=frozenset(scopes),
            note=note,
            expires_at=expires_at,
        )
        return token, secret

    def revoke_all_tokens(self, user: Account) -> int:
        tokens = self.store.list_tokens(user.id)
        for token in tokens:
            self.store.delete_token(token.id)
        return len(tokens)

    def revoke_token(self, user: Account, token_id: int) -> None:
        if not any(t.id == token_id for t in self.store.list_tokens(user.id)):
            raise NotFound(f"no token {token_id} for {user.login!r}")
        self.store.delete_token(token_id)

    # -- organizations ---------------------------------------------------------------

    def create_org(self, login: str, *, owner: Account, name: str = "", email: str = "") -> Account:
        check_login(login)
        check_profile(AccountType.ORGANIZATION, name=name, email=email)
        if owner.is_org:
            raise InvalidInput("an organization's owner must be a user", field="admin")
        return self.store.create_org(login, owner_id=owner.id, name=name, email=email)

    def set_member(self, org: Account, user: Account, role: OrgRole) -> Membership:
        if not org.is_org:
            raise NotFound(f"no organization named {org.login!r}")
        if user.is_org:
            raise InvalidInput("only users can be members of an organization")
        current = self.store.get_membership(org.id, user.id)
        if current is not None and current.role is OrgRole.OWNER and role is not OrgRole.OWNER:
            self._keep_an_owner(org, user)
        return self.store.set_membership(org.id, user.id, role)

    def remove_member(self, org: Account, user: Account) -> None:
        current = self.store.get_membership(org.id, user.id)
        if current is None:
            raise NotFound(f"{user.login!r} is not a member of {org.login!r}")
        if current.role is OrgRole.OWNER:
            self._keep_an_owner(org, user)
        self.store.remove_membership(org.id, user.id)

    def _keep_an_owner(self, org: Account, leaving: Account) -> None:
        owners = [m for m in self.store.list_members(org.id, OrgRole.OWNER) if m.user_id != leaving.id]
        if not owners:
            raise InvalidInput(f"{org.login!r} must keep at least one owner")

    def role_in(self, org: Account, user: Account) -> OrgRole | None:
        """``user``'s role in ``org``; None if not a member."""
        membership = self.store.get_membership(org.id, user.id) if org.is_org else None
        return membership.role if membership else None

    def members(self, org: Account, role: OrgRole | None = None) -> list[tuple[Account, OrgRole]]:
        result = []
        for m in self.store.list_members(org.id, role):
            user = self.store.get_account_by_id(m.user_id)
            if user is not None:
                result.append((user, m.role))
        return result

    def orgs_of(self, user: Account) -> list[Account]:
        orgs = [self.store.get_account_by_id(m.org_id) for m in self.store.list_memberships_of(user.id)]
        return [o for o in orgs if o is not None]

    # -- site administration ---------------------------------------------------------

    def set_site_admin(self, user: Account, site_admin: bool) -> Account:
        if user.is_org:
            raise InvalidInput("organizations cannot be site administrators")
        if not site_admin and user.site_admin and self._is_last_admin(user):
            raise Forbidden("cannot demote the last active site administrator")
        return self.store.save_account(dataclasses.replace(user, site_admin=site_admin))
