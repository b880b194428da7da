"""The front page (repositories the visitor can see, searchable), user and organization pages,
and signing in and out."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from bulwark.errors import Forbidden, NotFound, TooManyAttempts, Unauthenticated
from bulwark.node import Node
from bulwark.services.permissions import Principal
from bulwark.services.repo_lists import Start
from bulwark.services.repositories import RepoAccess
from bulwark.web import session
from bulwark.web.render import page
from bulwark.web.repo import PageNotFound

PER_PAGE = 30
# The front page reads the site's repositories in id order, a chunk at a time, until a page of
# ones the visitor may see (and whose names match the search) is full, or this many were read.
SCAN_LIMIT = 20_000
CHUNK = 500
MAX_QUERY = 100


def _node(request: Request) -> Node:
    node: Node = request.app.state.node
    return node


def _number(request: Request) -> int:
    text = request.query_params.get("page", "1")
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 10_000:
        raise PageNotFound("There is no such page.")
    return int(text)


def explore_page(node: Node, principal: Principal, query: str, number: int) -> tuple[list[RepoAccess], bool, bool]:
    """A page of the repositories ``principal`` may see whose names contain ``query``; whether there
    is a next page, and whether the scan stopped at its limit before the page was full."""
    wanted = (number - 1) * PER_PAGE
    found: list[RepoAccess] = []
    offset = 0
    while offset < SCAN_LIMIT:
        chunk = node.store.list_repos(None, limit=CHUNK, offset=offset)
        if not chunk:
            return found[wanted:wanted + PER_PAGE], False, False
        offset += len(chunk)
        matching = [r for r in chunk if query in r.name.lower()] if query else chunk
        found.extend(node.repos.visible_to(principal, matching))
        if len(found) > wanted + PER_PAGE:
            return found[wanted:wanted + PER_PAGE], True, False
    return found[wanted:wanted + PER_PAGE], False, True


async def explore(request: Request, principal: Principal) -> Response:
    query = request.query_params.get("q", "").strip().lower()[:MAX_QUERY]
    number = _number(request)
    listed, has_next, stopped = await run_in_threadpool(explore_page, _node(request), principal, query, number)
    return await page(request, "explore.html", repos=listed, query=query, page_number=number,
                      has_next=has_next, stopped=stopped)


async def owner(request: Request, principal: Principal) -> Response:
    node = _node(request)
    login = request.path_params["owner"]
    number = _number(request)
    try:
        account = await run_in_threadpool(node.accounts.get, login)
    except NotFound:
        raise PageNotFound(f"There is no user or organization named {login!r}.") from None

    def read() -> tuple[list[RepoAccess], list[object]]:
        listed = node.repo_lists.owned(principal, account, visibility="all",
                                       start=Start(offset=(number - 1) * PER_PAGE), limit=PER_PAGE + 1)
        people = ([u for u, _role in node.accounts.members(account)] if account.is_org
                  else node.accounts.orgs_of(account))
        return listed, list(people)

    listed, people = await run_in_threadpool(read)
    return await page(request, "owner.html", account=account, repos=listed[:PER_PAGE], people=people,
                      page_number=number, has_next=len(listed) > PER_PAGE)


async def login_form(request: Request, principal: Principal) -> Response:
    if principal.account is not None:
        return RedirectResponse(session.safe_next(request.query_params.get("next")), status_code=303)
    return await page(request, "login.html", error=None, login="",
                      next=session.safe_next(request.query_params.get("next")))


async def login(request: Request, principal: Principal) -> Response:
    fields = await session.form(request)
    try:
        return await session.sign_in(request, fields)
    except (Unauthenticated, Forbidden, TooManyAttempts) as exc:
        status = 429 if isinstance(exc, TooManyAttempts) else 401
        message = "Incorrect login or password." if exc.message == "bad credentials" else exc.message
        return await page(request, "login.html", status, error=message, login=fields.get("login", ""),
                          next=session.safe_next(fields.get("next")))


async def logout(request: Request, principal: Principal) -> Response:
    await session.form(request)
    return session.sign_out(request)
