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
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bulwark.errors import BadRequest, InvalidInput, PayloadTooLarge, Unauthenticated, ValidationFailed
from bulwark.http.auth import serving_principal
from bulwark.models import Account, Scope
from bulwark.node import Node, Traffic
from bulwark.services.access_cache import cache_key
from bulwark.services.permissions import Principal, require_site_admin
from bulwark.services.repositories import RepoAccess

P = ParamSpec("P")
T = TypeVar("T")

MAX_JSON_BYTES = 1024 * 1024
# Integers in a JSON body must fit in 64 bits: nothing Bulwark stores is larger, and parsing a
# number of thousands of digits is slow (Python refuses beyond 4,300 digits).
_INT_RANGE = range(-(2**63), 2**63)
_MAX_INT_DIGITS = 20
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
        require_site_admin(self.principal, "site administration endpoints")

    def url(self, path: str) -> str:
        return f"{base_url(self.request)}{path}"


def base_url(request: Request) -> str:
    """The node's URL for links: ``public_url``, else its listen address. Never the request's
    ``Host`` header, which a client chooses, and a shared cache would serve its links to others."""
    node: Node = request.app.state.node
    return node.settings.base_url


async def context(request: Request, traffic: Traffic = Traffic.READ) -> Ctx:
    """Authenticate the caller and check that this node serves ``traffic`` now."""
    node: Node = request.app.state.node
    principal = await serving_principal(request, traffic)
    return Ctx(request=request, node=node, principal=principal)


async def write_context(request: Request) -> Ctx:
    """``context`` for a change: anonymous callers are told to authenticate (401) before anything else."""
    ctx = await context(request, Traffic.WRITE)
    ctx.user  # noqa: B018
    return ctx


async def find_repo(ctx: Ctx) -> RepoAccess:
    """The repository named by the ``owner`` and ``repo`` path parameters, as the caller sees it."""
    params = ctx.request.path_params
    return await call(_find, ctx.node, ctx.principal, params["owner"], params["repo"])


def _find(node: Node, principal: Principal, owner: str, name: str) -> RepoAccess:
    cache = node.access_cache
    if cache is None:
        return node.repos.find(principal, owner, name)
    # On a cluster node: kept while etcd confirms that nothing the decision read has changed.
    account = principal.account
    key = cache_key([
        "find", repr((account.id, account.site_admin, account.suspended)) if account else None,
        str(principal.token_id), ",".join(sorted(principal.scopes)), owner.lower(), name.lower(),
    ])
    access: RepoAccess
    access, _ = cache.get(key, lambda: (node.repos.find(principal, owner, name), None))
    return access


class _NumberOutOfRange(ValueError):
    pass


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS or (value := int(text)) not in _INT_RANGE:
        raise _NumberOutOfRange(text)
    return value


def _check_unicode(data: dict[str, Any]) -> None:
    """422 naming the field when a string holds a lone surrogate (JSON's ``"\\ud800"``), which
    no UTF-8 text can: the store, the change log and every response would choke on it."""
    for key, value in data.items():
        pending: list[Any] = [key, value]
        while pending:
            item = pending.pop()
            if isinstance(item, str):
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    name = ascii(key)[1:-1]
                    raise ValidationFailed(
                        f"{name} is not valid Unicode text (it holds a lone surrogate)",
                        resource="Request",
                        field=name,
                        code="invalid",
                    ) from None
            elif isinstance(item, dict):
                pending.extend(item.keys())
                pending.extend(item.values())
            elif isinstance(item, list):
                pending.extend(item)


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object; 400 on malformed JSON, 413 when too large, 422 for numbers
    beyond 64 bits and strings that are not Unicode text."""
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
        data = json.loads(raw, parse_int=_json_int)
    except _NumberOutOfRange:
        raise InvalidInput("a number in the body does not fit in 64 bits") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"Problems parsing JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("Problems parsing JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequest("Problems parsing JSON: expected an object")
    _check_unicode(data)
    return data


_BODILESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def is_json_type(content_type: str) -> bool:
    """``application/json`` or a ``+json`` type (GitHub's ``application/vnd.github+json``), any parameters."""
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def body_is_not_json(method: str, headers: Headers) -> bool:
    """Whether a request carries, or says it carries, a body that is not JSON.

    A page on another site can make a browser send a form or ``text/plain`` POST, or one with
    no type at all, without asking first, and the browser adds the Basic credentials it has
    cached for this node. It cannot send ``application/json`` without a CORS preflight, which
    this node never answers: requiring the JSON type is what keeps such requests out.
    """
    if method.upper() in _BODILESS_METHODS:
        return False
    content_type = headers.get("content-type")
    if content_type is not None:
        return not is_json_type(content_type)
    has_body = "transfer-encoding" in headers or headers.get("content-length", "0").strip() not in ("", "0")
    return has_body


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


def paginated(request: Request, items: Sequence[Any], params: PageParams, has_next: bool,
              next_cursor: str | None = None) -> JSONResponse:
    """A JSON list with GitHub's ``Link`` header (next, prev, first). ``next_cursor`` goes into the
    next page's link only: a client that follows links reads each page from where the last ended."""
    links = []

    def link(page: int, rel: str, cursor: str | None = None) -> str:
        query = dict(request.query_params)
        query.pop("cursor", None)
        query.update(page=str(page), per_page=str(params.per_page))
        if cursor is not None:
            query["cursor"] = cursor
        return f'<{base_url(request)}{request.url.path}?{urlencode(query)}>; rel="{rel}"'

    if has_next:
        links.append(link(params.page + 1, "next", next_cursor))
    if params.page > 1:
        links.append(link(params.page - 1, "prev"))
        links.append(link(1, "first"))
    headers = {"Link": ", ".join(links)} if links else {}
    return JSONResponse(list(items), headers=headers)


def paginate_list(request: Request, items: Sequence[Any], render: Callable[[Any], Any] | None = None) -> JSONResponse:
    """Paginate an already-materialised list; ``render`` makes the JSON of the page's items only
    (rendering all of a list of thousands for a page of 30 cost more than reading them)."""
    params = page_params(request)
    window = items[params.offset : params.offset + params.per_page + 1]
    page = window[: params.per_page]
    return paginated(request, [render(item) for item in page] if render else page, params,
                     len(window) > params.per_page)


def no_content() -> Response:
    return Response(status_code=204)
