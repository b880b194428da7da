"""Validation of what users choose: logins, repository names, ref names, and free text.

Every text a user sends is stored, copied into the change log and served again to
anyone who lists it, so each has a length limit: GitHub's where GitHub has one.
"""

from __future__ import annotations

import re

from bulwark.errors import InvalidInput, ValidationFailed

# GitHub's rules: alphanumerics and single hyphens, not at either end, up to 39 chars.
_LOGIN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}$")
# Repository names: letters, digits, '.', '-', '_' up to 100 chars; never '.' or '..'
# and never ending in '.git' (the suffix is stripped from URLs).
_REPO = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
_RESERVED_LOGINS = frozenset({"admin-api", "api", "manage", "status", "metrics", "login", "static",
                             # the web interface's own pages
                             "logout", "explore", "new", "settings", "site-admin", "internal"})

# Length limits, in characters (GitHub's, except where noted).
MAX_LOGIN = 39
MAX_REPO_NAME = 100
MAX_PROFILE_NAME = 255  # a user's or an organization's display name
MAX_EMAIL = 254  # the longest address SMTP can carry (RFC 5321)
MAX_REPO_DESCRIPTION = 350
MAX_TOKEN_NOTE = 100
MAX_BRANCH_NAME = 255  # Bulwark's: the longest file name most file systems take
MAX_REF_NAME = 255  # Bulwark's, for a fully qualified ref (refs/heads/...)
# How much of a rejected value an error message repeats.
_SHOWN = 40


def shown(value: object) -> str:
    """``value`` for an error message: quoted, escaped, and cut short if long."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 4] + "...'"


def check_login(login: str) -> str:
    if not isinstance(login, str) or not _LOGIN.match(login):
        raise InvalidInput(
            f"invalid login {shown(login)}: use 1-{MAX_LOGIN} letters, digits or single hyphens, "
            "not starting or ending with a hyphen",
            field="login",
        )
    if login.lower() in _RESERVED_LOGINS:
        raise InvalidInput(f"login {login!r} is reserved", field="login")
    return login


def check_repo_name(name: str) -> str:
    if not isinstance(name, str) or not _REPO.match(name) or name in {".", ".."}:
        raise InvalidInput(
            f"invalid repository name {shown(name)}: use 1-{MAX_REPO_NAME} letters, digits, '.', '-' or '_'",
            field="name",
        )
    if name.lower().endswith(".git"):
        raise InvalidInput(f"invalid repository name {name!r}: must not end in '.git'", field="name")
    return name


def check_branch_name(name: str) -> str:
    """A branch name git itself would accept (the subset of check-ref-format we need)."""
    if len(name) > MAX_BRANCH_NAME:
        raise ValidationFailed(
            f"default_branch is too long (maximum is {MAX_BRANCH_NAME} characters)",
            resource="Repository",
            field="default_branch",
        )
    bad = (
        not name
        or name.startswith(("-", "/", "."))
        or name.endswith(("/", ".", ".lock"))
        or ".." in name
        or "//" in name
        or "@{" in name
        or any(c in name for c in " ~^:?*[\\\x7f")
        or any(ord(c) < 32 for c in name)
    )
    if bad:
        raise InvalidInput(f"invalid branch name {name!r}", field="default_branch")
    return name


def check_text(value: str, *, resource: str, field: str, limit: int) -> str:
    """Free text (a name, a description, a note) of at most ``limit`` characters."""
    if len(value) > limit:
        raise ValidationFailed(
            f"{field} is too long (maximum is {limit} characters)", resource=resource, field=field
        )
    if any((ord(c) < 32 and c not in "\t\n\r") or c == "\x7f" for c in value):
        raise ValidationFailed(f"{field} contains control characters", resource=resource, field=field,
                               code="invalid")
    return value


def check_email(email: str, *, resource: str = "User") -> str:
    """An email address, or '' for none: one '@', no spaces, at most ``MAX_EMAIL`` characters."""
    check_text(email, resource=resource, field="email", limit=MAX_EMAIL)
    if email and ("@" not in email or any(c.isspace() for c in email)):
        raise ValidationFailed(f"invalid email address {shown(email)}", resource=resource, field="email",
                               code="invalid")
    return email
