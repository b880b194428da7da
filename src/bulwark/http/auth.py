"""Who is calling: credentials from the ``Authorization`` header."""

from __future__ import annotations

import base64
import binascii

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from bulwark.errors import Forbidden, Unauthenticated
from bulwark.node import Node
from bulwark.services.permissions import ANONYMOUS, Principal


async def authenticate(request: Request) -> Principal:
    """The request's principal, computed once per request.

    Accepts ``Basic`` (token or password as the password), ``token X`` and
    ``Bearer X``. No header means anonymous; a bad header is an error, never
    silently anonymous.
    """
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    if not request.headers.get("authorization"):
        request.state.principal = ANONYMOUS
        return ANONYMOUS
    # Password checks run argon2, which is slow on purpose, and tokens are looked up in the
    # store: both off the event loop.
    return await run_in_threadpool(principal_of, request)


def principal_of(request: Request) -> Principal:
    """``authenticate`` for code already running in a worker thread."""
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    node: Node = request.app.state.node
    header = request.headers.get("authorization")
    if not header:
        principal = ANONYMOUS
    else:
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == "basic":
            username, secret = _basic(value)
            principal = node.accounts.authenticate_basic(username, secret)
        elif scheme in ("token", "bearer"):
            principal = node.accounts.authenticate_token(value)
        else:
            raise Unauthenticated(f"unsupported authorization scheme {scheme!r}")
    request.state.principal = principal
    return principal


def _basic(value: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthenticated("malformed Basic credentials") from None
    username, sep, secret = decoded.partition(":")
    if not sep:
        raise Unauthenticated("malformed Basic credentials")
    return username, secret


async def site_admin(request: Request, what: str) -> Principal:
    """The caller, who must be a site administrator (401 without credentials, 403 otherwise).

    For endpoints that read whatever the node's state (maintenance, replica): no serving check.
    """
    principal = await authenticate(request)
    if principal.anonymous:
        raise Unauthenticated(f"{what} need a site administrator's token")
    if not principal.site_admin:
        raise Forbidden(f"{what} are for site administrators only")
    return principal
