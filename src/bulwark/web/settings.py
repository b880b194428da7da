"""Forms that change things: new repositories, a repository's settings and collaborators, and a
user's password, tokens and SSH keys. Each form is checked for its CSRF token first, and the
node is asked whether it takes writes (an HA replica names its primary instead)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from bulwark.errors import AlreadyExists, BulwarkError, Forbidden, InvalidInput, NotFound
from bulwark.models import Account, OrgRole, Permission, Scope, Visibility
from bulwark.node import Node, Traffic
from bulwark.services.permissions import Principal
from bulwark.web import session
from bulwark.web.browse import _base
from bulwark.web.initial import supported, write_readme
from bulwark.web.render import page
from bulwark.web.repo import find

ROLES = {"read": Permission.PULL, "write": Permission.PUSH, "admin": Permission.ADMIN}
TOKEN_DAYS = {"7": 7, "30": 30, "90": 90, "365": 365, "never": None}


def _node(request: Request) -> Node:
    node: Node = request.app.state.node
    return node


async def _writable_form(request: Request) -> dict[str, str]:
    fields = await session.form(request)
    await run_in_threadpool(_node(request).check_serving, Traffic.WRITE)
    return fields


def _redirect(location: str) -> Response:
    return RedirectResponse(location, status_code=303)


# -- new repository -------------------------------------------------------------------------


def _owners(node: Node, user: Account) -> list[Account]:
    return [user, *node.accounts.orgs_of(user)]


async def new_repo_form(request: Request, principal: Principal) -> Response:
    user = session.require_user(principal, request)
    owners = await run_in_threadpool(_owners, _node(request), user)
    return await page(request, "new.html", owners=owners, error=None, values={},
                      readme_supported=supported(_node(request)))


async def new_repo(request: Request, principal: Principal) -> Response:
    user = session.require_user(principal, request)
    node = _node(request)
    fields = await _writable_form(request)
    owners = await run_in_threadpool(_owners, node, user)
    owner = next((o for o in owners if o.login == fields.get("owner")), None)
    try:
        if owner is None:
            raise InvalidInput("choose an owner you belong to")
        visibility = Visibility.PRIVATE if fields.get("visibility") == "private" else Visibility.PUBLIC
        name = fields.get("name", "").strip()

        def create() -> None:
            try:
                repo = node.repos.create(owner, name, visibility=visibility, description=fields.get("description", ""),
                                         sender=user)
            except AlreadyExists:
                raise InvalidInput(f"{owner.login}/{name} already exists") from None
            if owner.is_org and node.accounts.role_in(owner, user) is OrgRole.MEMBER:
                node.repos.add_collaborator(repo, user, Permission.ADMIN, user)  # a member administers what they bring
            if fields.get("readme") == "1":
                write_readme(node, repo, user)

        await run_in_threadpool(create)
    except BulwarkError as exc:
        return await page(request, "new.html", 422, owners=owners, error=exc.message, values=fields,
                          readme_supported=supported(node))
    return _redirect(f"/{owner.login}/{name}")


# -- a repository's settings ------------------------------------------------------------------


async def repo_settings(request: Request, principal: Principal, message: str | None = None,
                        error: str | None = None, status: int = 200) -> Response:
    access = await find(request, principal)
    if access.permission < Permission.ADMIN:
        raise Forbidden(f"you need admin access to {access.full_name} to change its settings")
    node = _node(request)
    people = await run_in_threadpool(node.repos.collaborators, access.repo)
    saved = {"saved": "Saved.", "added": "Collaborator added.", "removed": "Collaborator removed."}
    return await page(request, "settings.html", status, **_base(request, access), tab="settings",
                      collaborators=people, message=message or saved.get(request.query_params.get("done", "")),
                      error=error)


async def repo_settings_post(request: Request, principal: Principal) -> Response:
    access = await find(request, principal)
    node = _node(request)
    fields = await _writable_form(request)
    if access.permission < Permission.ADMIN:
        raise Forbidden(f"you need admin access to {access.full_name} to change its settings")
    action = fields.get("action", "")
    try:
        if action == "update":
            visibility = Visibility.PRIVATE if fields.get("visibility") == "private" else Visibility.PUBLIC
            name = fields.get("name", access.repo.name).strip()
            try:
                await run_in_threadpool(lambda: node.repos.update(
                    access.repo, name=name, description=fields.get("description", ""), visibility=visibility,
                    sender=principal.account))
            except AlreadyExists:
                raise InvalidInput(f"{access.owner.login}/{name} already exists") from None
            return _redirect(f"/{access.owner.login}/{name}/settings?done=saved")
        if action == "delete":
            if fields.get("confirm", "").strip() != access.full_name:
                raise InvalidInput(f"type {access.full_name} to confirm")
            await run_in_threadpool(node.repos.delete, access.repo, principal.account)
            return _redirect(f"/{access.owner.login}")
        if action == "add-collaborator":
            role = ROLES.get(fields.get("permission", "write"))
            if role is None:
                raise InvalidInput("permission must be read, write or admin")
            user = await run_in_threadpool(node.accounts.get_user, fields.get("login", "").strip())
            if user.id == access.owner.id:
                raise InvalidInput("the owner of a repository cannot be its collaborator")
            await run_in_threadpool(node.repos.add_collaborator, access.repo, user, role, principal.account)
            return _redirect(f"/{access.full_name}/settings?done=added")
        if action == "remove-collaborator":
            user = await run_in_threadpool(node.accounts.get_user, fields.get("login", ""))
            await run_in_threadpool(node.repos.remove_collaborator, access.repo, user, principal.account)
            return _redirect(f"/{access.full_name}/settings?done=removed")
        raise InvalidInput("unknown action")
    except (InvalidInput, NotFound) as exc:
        return await repo_settings(request, principal, error=exc.message, status=422)


# -- the user's own settings --------------------------------------------------------------------


async def _account_page(request: Request, user: Account, **values: Any) -> Response:
    node = _node(request)

    def read() -> dict[str, Any]:
        return {"tokens": node.store.list_tokens(user.id), "keys": node.keys.user_keys(user)}

    listed = await run_in_threadpool(read)
    values.setdefault("error", None)
    values.setdefault("message", None)
    values.setdefault("secret", None)
    return await page(request, "account.html", values.pop("status", 200), **listed, **values)


async def account(request: Request, principal: Principal) -> Response:
    return await _account_page(request, session.require_user(principal, request))


async def account_post(request: Request, principal: Principal) -> Response:
    user = session.require_user(principal, request)
    node = _node(request)
    fields = await _writable_form(request)
    action = fields.get("action", "")
    try:
        if action == "password":
            await _change_password(node, user, fields)
            # The session was signed with the old password: a new one for this browser.
            fresh = await run_in_threadpool(node.accounts.start_web_session, Principal.for_password(user))
            response = await _account_page(request, user, message="Password changed. Other sessions are signed out.")
            response.set_cookie(session.SESSION_COOKIE, fresh, max_age=session.SESSION_MAX_AGE, httponly=True,
                                samesite="lax", path="/", secure=request.url.scheme == "https")
            return response
        if action == "token":
            return await _new_token(request, node, user, fields)
        if action == "revoke-token":
            await run_in_threadpool(node.accounts.revoke_token, user, _int(fields.get("id")))
            return await _account_page(request, user, message="Token revoked.")
        if action == "add-key":
            await run_in_threadpool(lambda: node.keys.add_user_key(user, fields.get("key", ""),
                                                                   title=fields.get("title", "")))
            return await _account_page(request, user, message="SSH key added.")
        if action == "remove-key":
            key = await run_in_threadpool(node.keys.user_key, user, _int(fields.get("id")))
            await run_in_threadpool(node.keys.remove, key)
            return await _account_page(request, user, message="SSH key removed.")
        raise InvalidInput("unknown action")
    except (InvalidInput, NotFound, AlreadyExists) as exc:
        return await _account_page(request, user, error=exc.message, status=422)


def _int(text: str | None) -> int:
    if not text or not text.isascii() or not text.isdigit() or len(text) > 18:
        raise NotFound("no such item")
    return int(text)


async def _change_password(node: Node, user: Account, fields: dict[str, str]) -> None:
    current, new = fields.get("current", ""), fields.get("new", "")
    attempt = await run_in_threadpool(node.accounts.begin_password, user.login, "web-settings")
    matched = await asyncio.wrap_future(node.accounts.passwords.submit(attempt.stored_hash, current))
    if not matched:
        raise InvalidInput("the current password is not right")
    if new != fields.get("confirm", ""):
        raise InvalidInput("the new passwords do not match")
    await run_in_threadpool(node.accounts.finish_password, attempt, matched)
    await run_in_threadpool(node.accounts.set_password, user, new)


async def _new_token(request: Request, node: Node, user: Account, fields: dict[str, str]) -> Response:
    scopes = {s for s in Scope if fields.get(f"scope_{s.value}") == "1"}
    if Scope.SITE_ADMIN in scopes and not user.site_admin:
        raise InvalidInput("only site administrators may create site_admin tokens")
    if fields.get("expires", "30") not in TOKEN_DAYS:
        raise InvalidInput("choose when the token expires")
    days = TOKEN_DAYS[fields.get("expires", "30")]
    expires = None if days is None else node.clock.now() + timedelta(days=days)
    _, secret = await run_in_threadpool(lambda: node.accounts.issue_token(
        user, scopes, note=fields.get("note", "").strip(), expires_at=expires))
    return await _account_page(request, user, secret=secret,
                               message="Token created. Copy it now: it will not be shown again.")
