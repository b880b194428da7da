"""Repository and organization webhooks in GitHub's shapes: the hooks, pings and tests, and
their deliveries with redelivery. An adapter over ``webhooks/service.py``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bulwark.errors import InvalidInput, NotFound, Unavailable
from bulwark.http.api.common import Ctx, call, context, json_body, no_content, page_params, paginated, write_context
from bulwark.http.api.orgs import require_org_role
from bulwark.models import Account, OrgRole, Permission, Repository, Scope
from bulwark.webhooks.models import Attempt, Delivery, DeliveryState, Hook
from bulwark.webhooks.payloads import iso
from bulwark.webhooks.service import HookService


@dataclass(frozen=True)
class _Target:
    """What the hooks in the path belong to, and the API path of that."""

    service: HookService
    path: str
    repo: Repository | None = None
    org: Account | None = None


def _service(ctx: Ctx) -> HookService:
    if ctx.node.webhooks is None:
        raise Unavailable("this node keeps no webhooks")
    return ctx.node.webhooks


async def _target(ctx: Ctx) -> _Target:
    """The repository (its admins) or organization (its owners) whose hooks the caller manages."""
    service = _service(ctx)
    params = ctx.request.path_params
    if "org" in params:
        ctx.require_scope(Scope.ADMIN_ORG)
        org = await call(ctx.node.accounts.get_org, params["org"])
        await require_org_role(ctx, org, OrgRole.OWNER)
        return _Target(service, f"/orgs/{org.login}", org=org)
    from bulwark.http.api.common import find_repo

    access = await find_repo(ctx)
    ctx.node.repos.require(access, Permission.ADMIN)
    if not ctx.principal.has_scope(Scope.REPO):  # public_repo suffices for a public repository
        ctx.require_scope(Scope.REPO if access.repo.private else Scope.PUBLIC_REPO)
    return _Target(service, f"/repos/{access.full_name}", repo=access.repo)


def _int(ctx: Ctx, name: str) -> int:
    text = ctx.request.path_params[name]
    if not text.isdigit() or len(text) > 18:
        raise NotFound("Not Found")
    return int(text)


async def _hook(ctx: Ctx, target: _Target) -> Hook:
    return await call(target.service.get, _int(ctx, "hook_id"), repo=target.repo, org=target.org)


def _last_response(last: Attempt | None) -> dict[str, Any]:
    # GitHub's field; "failing" is how a hook whose latest delivery failed is flagged.
    if last is None:
        return {"code": None, "status": "unused", "message": None}
    if last.ok:
        return {"code": last.status_code, "status": "active", "message": "OK"}
    message = last.error or f"Invalid HTTP Response: {last.status_code}"
    return {"code": last.status_code, "status": "failing", "message": message}


def hook_json(ctx: Ctx, target: _Target, hook: Hook, last: Attempt | None) -> dict[str, Any]:
    base = ctx.url(f"/api/v3{target.path}/hooks/{hook.id}")
    config: dict[str, Any] = {"content_type": hook.content_type.value, "insecure_ssl": str(int(hook.insecure_ssl)),
                              "url": hook.url}
    if hook.secret:
        config["secret"] = "********"  # never shown back
    body: dict[str, Any] = {
        "type": "Repository" if hook.repo_id is not None else "Organization",
        "id": hook.id,
        "name": "web",
        "active": hook.active,
        "events": list(hook.events),
        "config": config,
        "updated_at": iso(hook.updated_at),
        "created_at": iso(hook.created_at),
        "url": base,
        "ping_url": f"{base}/pings",
        "deliveries_url": f"{base}/deliveries",
        "last_response": _last_response(last),
    }
    if hook.repo_id is not None:
        body["test_url"] = f"{base}/tests"
    return body


def _status(delivery: Delivery) -> str:
    if delivery.state is DeliveryState.PENDING and delivery.attempts == 0:
        return "pending"
    if delivery.status_code is not None and 200 <= delivery.status_code < 300:
        return "OK"
    if delivery.status_code is None:
        return "failed to connect" if delivery.state is DeliveryState.GAVE_UP else "pending retry: failed to connect"
    return f"Invalid HTTP Response: {delivery.status_code}"


def delivery_json(delivery: Delivery) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "guid": delivery.guid,
        "delivered_at": iso(delivery.delivered_at or delivery.created_at),
        "redelivery": delivery.redelivery,
        "duration": (delivery.duration_ms or 0) / 1000,
        "status": _status(delivery),
        "status_code": delivery.status_code or 0,
        "event": delivery.event,
        "action": delivery.action,
        "installation_id": None,
        "repository_id": delivery.repo_id,
        "throttled_at": None,
        # Bulwark's own: retries are attempts of one delivery, GitHub's deliveries are single tries.
        "state": delivery.state.value,
        "attempts": delivery.attempts,
        "next_attempt_at": iso(delivery.next_at)
        if delivery.state is DeliveryState.PENDING else None,
    }


def _delivery_detail(hook: Hook, delivery: Delivery, attempts: list[Attempt]) -> dict[str, Any]:
    last = attempts[-1] if attempts else None
    body = delivery_json(delivery)
    body["url"] = hook.url
    body["request"] = {"headers": last.request_headers if last else None, "payload": json.loads(delivery.payload)}
    body["response"] = {"headers": last.response_headers if last else None,
                        "payload": last.response_body if last else None}
    body["attempt_log"] = [
        {"at": iso(a.at), "status_code": a.status_code, "duration": a.duration_ms / 1000,
         "error": a.error or None}
        for a in attempts
    ]
    return body


# -- endpoints ------------------------------------------------------------------------------


async def list_hooks(request: Request) -> JSONResponse:
    ctx = await context(request)
    target = await _target(ctx)
    hooks = await call(target.service.hooks_of, repo=target.repo, org=target.org)
    params = page_params(request)
    page = hooks[params.offset : params.offset + params.per_page]
    body = [hook_json(ctx, target, hook, await call(target.service.last_attempt, hook)) for hook in page]
    return paginated(request, body, params, len(hooks) > params.offset + params.per_page)


async def create_hook(request: Request) -> JSONResponse:
    ctx = await write_context(request)
    target = await _target(ctx)
    data = await json_body(request)
    hook = await call(target.service.create, data, ctx.user, repo=target.repo, org=target.org)
    return JSONResponse(hook_json(ctx, target, hook, None), status_code=201,
                        headers={"Location": ctx.url(f"/api/v3{target.path}/hooks/{hook.id}")})


async def get_hook(request: Request) -> JSONResponse:
    ctx = await context(request)
    target = await _target(ctx)
    hook = await _hook(ctx, target)
    return JSONResponse(hook_json(ctx, target, hook, await call(target.service.last_attempt, hook)))


async def update_hook(request: Request) -> JSONResponse:
    ctx = await write_context(request)
    target = await _target(ctx)
    hook = await _hook(ctx, target)
    data = await json_body(request)
    if "config" in data and isinstance(data["config"], dict) and "url" not in data["config"]:
        data["config"] = {**data["config"], "url": hook.url}
    hook = await call(target.service.update, hook, data)
    return JSONResponse(hook_json(ctx, target, hook, await call(target.service.last_attempt, hook)))


async def delete_hook(request: Request) -> Response:
    ctx = await write_context(request)
    target = await _target(ctx)
    hook = await _hook(ctx, target)
    await call(target.service.delete, hook)
    return no_content()


async def ping_hook(request: Request) -> Response:
    ctx = await write_context(request)
    target = await _target(ctx)
    hook = await _hook(ctx, target)
    await call(target.service.ping, hook, ctx.user)
    return no_content()


async def test_hook(request: Request) -> Response:
    ctx = await write_context(request)
    target = await _target(ctx)
    hook = await _hook(ctx, target)
    assert target.repo is not None
    await call(target.service.test, hook, target.repo, ctx.user)
    return no_content()


async def list_deliveries(request: Request) -> JSONResponse:
    ctx = await context(request)
    target = await _target(ctx)
    hook = await _hook(ctx, target)
    params = page_params(request)
    cursor = request.query_params.get("cursor")
    if cursor is not None and not cursor.isdigit():
        raise InvalidInput("cursor must be a delivery id, as the Link header gives it", field="cursor")
    found = await call(target.service.deliveries, hook, limit=params.per_page + 1,
                       before=int(cursor) if cursor else None)
    page = found[: params.per_page]
    more = len(found) > params.per_page
    return paginated(request, [delivery_json(d) for d in page], params, more,
                     str(page[-1].id) if more and page else None)


async def get_delivery(request: Request) -> JSONResponse:
    ctx = await context(request)
    target = await _target(ctx)
    hook = await _hook(ctx, target)
    delivery, attempts = await call(target.service.delivery, hook, _int(ctx, "delivery_id"))
    return JSONResponse(_delivery_detail(hook, delivery, attempts))


async def redeliver(request: Request) -> JSONResponse:
    ctx = await write_context(request)
    target = await _target(ctx)
    hook = await _hook(ctx, target)
    again = await call(target.service.redeliver, hook, _int(ctx, "delivery_id"))
    return JSONResponse(delivery_json(again), status_code=202)


def _routes(prefix: str) -> list[Route]:
    return [
        Route(f"{prefix}/hooks", list_hooks, methods=["GET"]),
        Route(f"{prefix}/hooks", create_hook, methods=["POST"]),
        Route(f"{prefix}/hooks/{{hook_id}}", get_hook, methods=["GET"]),
        Route(f"{prefix}/hooks/{{hook_id}}", update_hook, methods=["PATCH"]),
        Route(f"{prefix}/hooks/{{hook_id}}", delete_hook, methods=["DELETE"]),
        Route(f"{prefix}/hooks/{{hook_id}}/pings", ping_hook, methods=["POST"]),
        Route(f"{prefix}/hooks/{{hook_id}}/deliveries", list_deliveries, methods=["GET"]),
        Route(f"{prefix}/hooks/{{hook_id}}/deliveries/{{delivery_id}}", get_delivery, methods=["GET"]),
        Route(f"{prefix}/hooks/{{hook_id}}/deliveries/{{delivery_id}}/attempts", redeliver, methods=["POST"]),
    ]


routes = [
    *_routes("/repos/{owner}/{repo}"),
    Route("/repos/{owner}/{repo}/hooks/{hook_id}/tests", test_hook, methods=["POST"]),
    *_routes("/orgs/{org}"),
]
