"""Shared pieces of ``/api/v3``: the request context, JSON bodies, pagination.

Handlers are ``async`` and push store and git work to a worker thread with
``call``, so a slow disk or a slow KDF never stalls the event loop.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bulwark.errors import BadRequest, InvalidInput, PayloadTooLarge, Unauthenticated
from bulwark.http.auth import authenticate
from bulwark.models import Account, Scope
from bulwark.node import Node, Traffic
from bulwark.services.permissions import Principal
from bulwark.services.repositories import RepoAccess

P = ParamSpec("P")
T = TypeVar("T")

MAX_JSON_BYTES = 1024 * 1024
DEFAULT_PER_PAGE = 30
MAX_PER_PAGE = 100
# Beyond any real list; keeps offsets inside what the store and git accept.
MAX_PAGE = 1_000_000


async def call(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    return await run_in_threadpool(fn, *args, **kwargs)


@dataclass(frozen=True)
class Ctx:
    request: Request
    node: Node
    principal: Principal

    @property
    def user(self) -> Account:
        """The authenticated account; ``Unauthenticated`` for anonymous callers."""
        if self.principal.account is None:
            raise Unauthenticated("requires authentication")
        return self.principal.account

    def require_scope(self, scope: Scope) -> None:
        from bulwark.errors import Forbidden

        self.user  # noqa: B018  (anonymous callers get 401, not 403)
        if not self.principal.has_scope(scope):
            raise Forbidden(f"this token lacks the {scope.value!r} scope")

    def require_site_admin(self) -> None:
        from bulwark.errors import Forbidden

        if not self.user.site_admin:
            raise Forbidden("must be a site administrator")
        self.require_scope(Scope.SITE_ADMIN)

    def url(self, path: str) -> str:
        return f"{base_url(self.request)}{path}"


def base_url(request: Request) -> str:
    node: Node = request.app.state.node
    if node.settings.public_url:
        return node.settings.public_url.rstrip("/")
    return f"{request.url.scheme}://{request.url.netloc}"


async def context(request: Request, traffic: Traffic = Traffic.READ) -> Ctx:
    """Authenticate the caller and check that this node serves ``traffic`` now."""
    node: Node = request.app.state.node
    principal = await authenticate(request)
    await call(node.check_serving, traffic, site_admin=principal.site_admin)
    return Ctx(request=request, node=node, principal=principal)


async def write_context(request: Request) -> Ctx:
    """``context`` for a change: anonymous callers are told to authenticate (401) before anything else."""
    ctx = await context(request, Traffic.WRITE)
    ctx.user  # noqa: B018
    return ctx


async def find_repo(ctx: Ctx) -> RepoAccess:
    """The repository named by the ``owner`` and ``repo`` path parameters, as the caller sees it."""
    params = ctx.request.path_params
    return await call(ctx.node.repos.find, ctx.principal, params["owner"], params["repo"])


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object; 400 on malformed JSON, 413 when too large."""
    size = 0
    chunks = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_JSON_BYTES:
            raise PayloadTooLarge(f"request body exceeds {MAX_JSON_BYTES} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"Problems parsing JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("Problems parsing JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequest("Problems parsing JSON: expected an object")
    return data


def field(
    data: dict[str, Any], name: str, kind: type[T], *, required: bool = False, default: T | None = None
) -> T | None:
    """A typed field of a JSON body; 422 naming the field when missing or mistyped."""
    if name not in data or data[name] is None:
        if required:
            raise InvalidInput(f"missing required field {name!r}", field=name)
        return default
    value = data[name]
    # bool is an int in Python; a JSON true is never a number here.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidInput(f"field {name!r} must be of type {kind.__name__}", field=name)
    return value


def required(data: dict[str, Any], name: str, kind: type[T]) -> T:
    """A field that must be present, with its type; 422 naming the field otherwise."""
    value = field(data, name, kind, required=True)
    assert value is not None  # field() raised otherwise
    return value


@dataclass(frozen=True)
class PageParams:
    page: int
    per_page: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page


def page_params(request: Request) -> PageParams:
    try:
        page = int(request.query_params.get("page", "1"))
        per_page = int(request.query_params.get("per_page", str(DEFAULT_PER_PAGE)))
    except ValueError:
        raise InvalidInput("page and per_page must be integers") from None
    if not 1 <= page <= MAX_PAGE:
        raise InvalidInput(f"page must be between 1 and {MAX_PAGE}", field="page")
    return PageParams(page=page, per_page=max(1, min(per_page, MAX_PER_PAGE)))


def paginated(request: Request, items: Sequence[Any], params: PageParams, has_next: bool) -> JSONResponse:
    """A JSON list with GitHub's ``Link`` header (next, prev, first)."""
    links = []

    def link(page: int, rel: str) -> str:
        query = dict(request.query_params)
        query.update(page=str(page), per_page=str(params.per_page))
        return f'<{base_url(request)}{request.url.path}?{urlencode(query)}>; rel="{rel}"'

    if has_next:
        links.append(link(params.page + 1, "next"))
    if params.page > 1:
        links.append(link(params.page - 1, "prev"))
        links.append(link(1, "first"))
    headers = {"Link": ", ".join(links)} if links else {}
    return JSONResponse(list(items), headers=headers)


def paginate_list(request: Request, items: Sequence[Any]) -> JSONResponse:
    """Paginate an already-materialised list."""
    params = page_params(request)
    window = items[params.offset : params.offset + params.per_page + 1]
    return paginated(request, window[: params.per_page], params, len(window) > params.per_page)


def no_content() -> Response:
    return Response(status_code=204)
