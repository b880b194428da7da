"""Validation of the names users choose: logins, repository names, ref names."""

from __future__ import annotations

import re

from bulwark.errors import InvalidInput

# GitHub's rules: alphanumerics and single hyphens, not at either end, up to 39 chars.
_LOGIN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}$")
# Repository names: letters, digits, '.', '-', '_' up to 100 chars; never '.' or '..'
# and never ending in '.git' (the suffix is stripped from URLs).
_REPO = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
_RESERVED_LOGINS = frozenset({"admin-api", "api", "manage", "status", "metrics", "login", "static"})


def check_login(login: str) -> str:
    if not isinstance(login, str) or not _LOGIN.match(login):
        raise InvalidInput(
            f"invalid login {login!r}: use 1-39 letters, digits or single hyphens, "
            "not starting or ending with a hyphen",
            field="login",
        )
    if login.lower() in _RESERVED_LOGINS:
        raise InvalidInput(f"login {login!r} is reserved", field="login")
    return login


def check_repo_name(name: str) -> str:
    if not isinstance(name, str) or not _REPO.match(name) or name in {".", ".."}:
        raise InvalidInput(
            f"invalid repository name {name!r}: use 1-100 letters, digits, '.', '-' or '_'",
            field="name",
        )
    if name.lower().endswith(".git"):
        raise InvalidInput(f"invalid repository name {name!r}: must not end in '.git'", field="name")
    return name


def check_branch_name(name: str) -> str:
    """A branch name git itself would accept (the subset of check-ref-format we need)."""
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
