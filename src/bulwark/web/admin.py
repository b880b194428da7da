"""Site administration: accounts (create, suspend, promote), organizations, maintenance mode."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from bulwark.errors import AlreadyExists, InvalidInput, NotFound
from bulwark.models import AccountType
from bulwark.node import Node, Traffic
from bulwark.services.permissions import Principal, require_site_admin
from bulwark.web import session
from bulwark.web.render import page

PER_PAGE = 50


def _node(request: Request) -> Node:
    node: Node = request.app.state.node
    return node


def _require_admin(principal: Principal, request: Request) -> None:
    session.require_user(principal, request)  # to the login page first
    require_site_admin(principal, "site administration pages")


async def overview(request: Request, principal: Principal, *, error: str | None = None,
                   status: int = 200) -> Response:
    _require_admin(principal, request)
    node = _node(request)
    text = request.query_params.get("page", "1")
    number = int(text) if text.isascii() and text.isdigit() and 0 < int(text) < 100_000 else 1

    def read() -> dict[str, Any]:
        accounts = node.store.list_accounts(limit=PER_PAGE + 1, offset=(number - 1) * PER_PAGE)
        return {"accounts": accounts[:PER_PAGE], "has_next": len(accounts) > PER_PAGE,
                "maintenance": node.store.get_maintenance()}

    values = await run_in_threadpool(read)
    done = {"created": "Account created.", "saved": "Saved.", "maintenance": "Maintenance mode changed."}
    return await page(request, "admin.html", status, page_number=number, error=error,
                      message=done.get(request.query_params.get("done", "")), **values)


async def overview_post(request: Request, principal: Principal) -> Response:
    _require_admin(principal, request)
    node = _node(request)
    fields = await session.form(request)
    action = fields.get("action", "")
    # Maintenance is a site administrator's switch, also while it is on.
    await run_in_threadpool(node.check_serving, Traffic.ADMIN, site_admin=True)
    if action != "maintenance":
        await run_in_threadpool(node.check_serving, Traffic.WRITE, site_admin=True)
    try:
        await run_in_threadpool(_act, node, principal, action, fields)
    except (InvalidInput, NotFound, AlreadyExists) as exc:
        return await overview(request, principal, error=exc.message, status=422)
    done = {"create-user": "created", "create-org": "created", "maintenance": "maintenance"}.get(action, "saved")
    return RedirectResponse(f"/site-admin?done={done}", status_code=303)


def _act(node: Node, principal: Principal, action: str, fields: dict[str, str]) -> None:
    accounts = node.accounts
    login = fields.get("login", "").strip()
    if action == "create-user":
        try:
            accounts.create_user(login, email=fields.get("email", "").strip(),
                                 password=fields.get("password") or None, site_admin=fields.get("site_admin") == "1")
        except AlreadyExists:
            raise InvalidInput(f"{login!r} is taken") from None
    elif action == "create-org":
        owner = accounts.get_user(fields.get("owner", "").strip())
        try:
            accounts.create_org(login, owner=owner)
        except AlreadyExists:
            raise InvalidInput(f"{login!r} is taken") from None
    elif action in ("suspend", "unsuspend"):
        user = accounts.get_user(login)
        if principal.account is not None and user.id == principal.account.id:
            raise InvalidInput("you cannot suspend yourself")
        accounts.set_suspended(user, action == "suspend")
    elif action in ("promote", "demote"):
        user = accounts.get_user(login)
        if action == "demote" and principal.account is not None and user.id == principal.account.id:
            raise InvalidInput("you cannot demote yourself")
        accounts.set_site_admin(user, action == "promote")
    elif action == "maintenance":
        on = fields.get("enabled") == "1"
        if on:
            node.maintenance.turn_on(fields.get("message", "").strip())
        else:
            node.maintenance.turn_off()
    else:
        raise InvalidInput("unknown action")


def account_kind(kind: AccountType) -> str:
    return "organization" if kind is AccountType.ORGANIZATION else "user"
