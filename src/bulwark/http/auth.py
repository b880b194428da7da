"""Who is calling: credentials from the ``Authorization`` header."""

from __future__ import annotations

import asyncio
import base64
import binascii
from datetime import datetime

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from bulwark.errors import Unauthenticated
from bulwark.http import clients
from bulwark.node import Node, Traffic
from bulwark.security import looks_like_token
from bulwark.services.access_cache import cache_key
from bulwark.services.permissions import ANONYMOUS, Principal, require_site_admin


async def authenticate(request: Request) -> Principal:
    """The request's principal, computed once per request.

    Accepts ``Basic`` (token or password as the password), ``token X`` and
    ``Bearer X``. No header means anonymous; a bad header is an error, never
    silently anonymous.
    """
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    header = request.headers.get("authorization")
    if not header:
        request.state.principal = ANONYMOUS
        return ANONYMOUS
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "basic":
        username, secret = _basic(value.strip())
        if not looks_like_token(secret):
            principal = await _password(request, username, secret)
            request.state.principal = principal
            return principal
    # Tokens are looked up in the store: off the event loop.
    return await run_in_threadpool(principal_of, request)


async def _password(request: Request, username: str, secret: str) -> Principal:
    """A password sign-in. The argon2 check runs on the node's password threads and is awaited
    here, so a request thread is held only for the two store reads, never while it hashes."""
    accounts = _node(request).accounts
    attempt = await run_in_threadpool(accounts.begin_password, username, client_address(request))
    matched = await asyncio.wrap_future(accounts.passwords.submit(attempt.stored_hash, secret))
    return accounts.finish_password(attempt, matched)


def principal_of(request: Request) -> Principal:
    """``authenticate`` for code already running in a worker thread."""
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    node = _node(request)
    header = request.headers.get("authorization")
    if not header:
        principal = ANONYMOUS
    else:
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == "basic":
            username, secret = _basic(value)
            principal = node.accounts.authenticate_basic(username, secret, address=client_address(request))
        elif scheme in ("token", "bearer"):
            principal = node.accounts.authenticate_token(value)
        else:
            raise Unauthenticated(f"unsupported authorization scheme {scheme!r}")
    request.state.principal = principal
    return principal


async def serving_principal(request: Request, traffic: Traffic) -> Principal:
    """The caller, once the node has said it serves ``traffic`` now (``Node.check_serving``).

    On a cluster node both read etcd (the maintenance flag, the token, its account): the
    answer is kept and reused while one etcd transaction of comparisons confirms nothing
    they read has changed. Password sign-ins are never kept: each is checked and throttled.
    """
    node = _node(request)
    if node.access_cache is None or not _keepable(request.headers.get("authorization")):
        principal = await authenticate(request)
        await run_in_threadpool(node.check_serving, traffic, site_admin=principal.site_admin)
        return principal
    return await run_in_threadpool(_kept_serving_principal, request, traffic)


def _keepable(header: str | None) -> bool:
    if not header:
        return True
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return True
    return looks_like_token(_basic(value.strip())[1])


def _kept_serving_principal(request: Request, traffic: Traffic) -> Principal:
    node = _node(request)
    cache = node.access_cache
    assert cache is not None
    node.check_fenced(traffic)  # in memory: looked at on every request
    key = cache_key(["serving", request.headers.get("authorization"), traffic.value])

    def decide() -> tuple[Principal, datetime | None]:
        principal = principal_of(request)
        node.check_serving(traffic, site_admin=principal.site_admin)
        return principal, principal.recheck_at

    principal, _ = cache.get(key, decide)
    request.state.principal = principal
    return principal


def client_address(request: Request) -> str:
    """The client's address: the connection's, or what a trusted proxy says it is."""
    node = request.app.state.node
    return clients.client_address(request, node.settings.trusted_proxies)


def _node(request: Request) -> Node:
    node: Node = request.app.state.node
    return node


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
    require_site_admin(principal, what)
    return principal
