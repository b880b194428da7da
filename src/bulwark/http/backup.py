"""``/manage/v1``: what backups and restores ask of a running instance (site admins only).

- ``POST /backup/point``: the metadata and every repository's refs at one consistent point;
  the backup then fetches exactly those objects through the ordinary clone URLs.
- ``POST`` / ``DELETE /maintenance``: maintenance mode on and off, over HTTP.
- ``POST /backup/restore``: recreate a snapshot's metadata and empty repositories in an
  instance in maintenance mode; the data follows by ``git push --mirror`` with the
  ``X-Bulwark-Restore`` header, which lets a site admin push during maintenance.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from bulwark.backup.metadata import check, import_into
from bulwark.backup.point import take_point
from bulwark.errors import Conflict
from bulwark.ha import state as ha_state
from bulwark.http.api.common import call, context, json_body
from bulwark.http.auth import site_admin
from bulwark.node import Node
from bulwark.roles import NodeRole, Traffic

RESTORE_HEADER = "x-bulwark-restore"


async def _site_admin(request: Request) -> Node:
    ctx = await context(request, Traffic.ADMIN)
    ctx.require_site_admin()
    return ctx.node


async def point(request: Request) -> Response:
    # A backup reads, whatever the node's state: in maintenance mode, or on a replica when allowed.
    await site_admin(request, "backups")
    node: Node = request.app.state.node
    allow_replica = request.query_params.get("allow_replica", "") in ("1", "true", "yes")
    return JSONResponse(await call(take_point, node, allow_replica=allow_replica))


async def maintenance_on(request: Request) -> Response:
    node = await _site_admin(request)
    body = await json_body(request) if await request.body() else {}
    message = str(body.get("message", "")) if isinstance(body, dict) else ""
    await call(node.maintenance.turn_on, message)
    return JSONResponse({"enabled": True, "message": message})


async def maintenance_off(request: Request) -> Response:
    node = await _site_admin(request)
    await call(node.maintenance.turn_off)
    return JSONResponse({"enabled": False})


async def maintenance_get(request: Request) -> Response:
    # Reading the state works on any node (an HA replica, a node in maintenance), like the backup point.
    await site_admin(request, "maintenance settings")
    node: Node = request.app.state.node
    state = await call(node.store.get_maintenance)
    return JSONResponse({"enabled": state.enabled, "message": state.message,
                         "since": state.since.isoformat() if state.since else None})


async def restore(request: Request) -> Response:
    node = await _site_admin(request)
    document = check(await json_body(request))
    result = await call(_restore, node, document)
    return JSONResponse(result)


def _restore(node: Node, document: dict[str, Any]) -> dict[str, Any]:
    if not node.store.get_maintenance().enabled:
        raise Conflict("put the instance in maintenance mode before restoring into it")
    if node.role in (NodeRole.HA_PRIMARY, NodeRole.HA_REPLICA):
        ha = ha_state.load(node.store)
        raise Conflict(
            f"this node is an HA {ha.role.removeprefix('ha-')}: replication would copy the restore half-way. "
            "Tear replication down first ('bulwark repl teardown'), restore, then set the replicas up again"
        )
    logins = [a.login for a in node.store.list_accounts()]
    if [login.lower() for login in logins] not in ([], ["admin"]) or node.store.list_repos(limit=1):
        raise Conflict(
            f"this instance already holds data ({len(logins)} accounts, repositories: "
            f"{'yes' if node.store.list_repos(limit=1) else 'no'}); restore into a fresh instance"
        )
    imported = import_into(node.store, document, skip_logins=["admin"])
    repos = []
    for repo in node.store.list_repos():
        owner = node.store.get_account_by_id(repo.owner_id)
        node.git.init_bare(repo.storage_id, repo.default_branch)
        repos.append({"storage_id": repo.storage_id, "owner": owner.login if owner else None, "name": repo.name})
    return {"repositories": repos, "summary": f"restored {imported.summary()}"}


routes: list[BaseRoute] = [
    Route("/backup/point", point, methods=["POST"]),
    Route("/backup/restore", restore, methods=["POST"]),
    Route("/maintenance", maintenance_on, methods=["POST"]),
    Route("/maintenance", maintenance_off, methods=["DELETE"]),
    Route("/maintenance", maintenance_get, methods=["GET"]),
]
