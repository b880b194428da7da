"""SSH keys in GitHub's shapes: the caller's keys, anyone's public keys, a repository's deploy keys,
and a site administrator's hand on any user's keys."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bulwark import __version__
from bulwark.errors import NotFound
from bulwark.http.api.common import (
    Ctx,
    call,
    context,
    field,
    find_repo,
    json_body,
    no_content,
    paginate_list,
    required,
    write_context,
)
from bulwark.http.api.serializers import iso
from bulwark.models import Account, Permission, Scope, SshKey
from bulwark.ssh import hostkeys


def key_json(ctx: Ctx, key: SshKey) -> dict[str, Any]:
    """A key as its owner (or a repository's administrator) sees it."""
    if key.repo_id is not None:
        repo = ctx.node.store.get_repo_by_id(key.repo_id)
        owner = ctx.node.store.get_account_by_id(repo.owner_id) if repo is not None else None
        url = ctx.url(f"/api/v3/repos/{owner.login}/{repo.name}/keys/{key.id}") if repo and owner else None
    else:
        url = ctx.url(f"/api/v3/user/keys/{key.id}")
    return {
        "id": key.id,
        "key": key.key,
        "url": url,
        "title": key.title,
        "verified": True,
        "created_at": iso(key.created_at),
        "read_only": key.read_only,
        "last_used": iso(key.last_used_at),
        "fingerprint": key.fingerprint,
    }


def public_key_json(key: SshKey) -> dict[str, Any]:
    """A key as anyone may see it (public keys are public, as on GitHub)."""
    return {"id": key.id, "key": key.key}


async def _new_key(ctx: Ctx, user: Account) -> JSONResponse:
    data = await json_body(ctx.request)
    text = required(data, "key", str)
    title = field(data, "title", str, default="") or ""
    key = await call(ctx.node.keys.add_user_key, user, text, title=title)
    return JSONResponse(await call(key_json, ctx, key), status_code=201)


# -- the caller's own keys -------------------------------------------------------------


async def list_my_keys(request: Request) -> JSONResponse:
    ctx = await context(request)
    keys = await call(ctx.node.keys.user_keys, ctx.user)
    return paginate_list(request, [await call(key_json, ctx, k) for k in keys])


async def get_my_key(request: Request) -> JSONResponse:
    ctx = await context(request)
    key = await call(ctx.node.keys.user_key, ctx.user, _key_id(request))
    return JSONResponse(await call(key_json, ctx, key))


async def add_my_key(request: Request) -> JSONResponse:
    ctx = await write_context(request)
    ctx.require_scope(Scope.USER)
    return await _new_key(ctx, ctx.user)


async def remove_my_key(request: Request) -> Response:
    ctx = await write_context(request)
    ctx.require_scope(Scope.USER)
    key = await call(ctx.node.keys.user_key, ctx.user, _key_id(request))
    await call(ctx.node.keys.remove, key)
    return no_content()


# -- anyone's public keys --------------------------------------------------------------


async def list_user_keys(request: Request) -> JSONResponse:
    ctx = await context(request)
    user = await call(ctx.node.accounts.get_user, request.path_params["username"])
    keys = await call(ctx.node.keys.user_keys, user)
    return paginate_list(request, [public_key_json(k) for k in keys])


async def plain_keys(request: Request) -> Response:
    """``/{user}.keys``: one key a line, for an ``authorized_keys`` file."""
    ctx = await context(request)
    try:
        user = await call(ctx.node.accounts.get_user, request.path_params["username"])
    except NotFound:
        return PlainTextResponse("Not Found\n", status_code=404)
    keys = await call(ctx.node.keys.user_keys, user)
    return PlainTextResponse("".join(f"{k.key}\n" for k in keys))


# -- a site administrator's hand on any user's keys --------------------------------------


async def admin_add_key(request: Request) -> JSONResponse:
    ctx = await write_context(request)
    ctx.require_site_admin()
    user = await call(ctx.node.accounts.get_user, request.path_params["username"])
    return await _new_key(ctx, user)


async def admin_list_keys(request: Request) -> JSONResponse:
    ctx = await context(request)
    ctx.require_site_admin()
    user = await call(ctx.node.accounts.get_user, request.path_params["username"])
    keys = await call(ctx.node.keys.user_keys, user)
    return paginate_list(request, [await call(key_json, ctx, k) for k in keys])


async def admin_remove_key(request: Request) -> Response:
    ctx = await write_context(request)
    ctx.require_site_admin()
    key = await call(ctx.node.store.get_ssh_key, _key_id(request))
    if key is None or key.user_id is None:
        raise NotFound(f"no user key {_key_id(request)}")
    await call(ctx.node.keys.remove, key)
    return no_content()


# -- deploy keys -------------------------------------------------------------------------


async def _repo_admin(ctx: Ctx) -> Any:
    access = await find_repo(ctx)
    ctx.node.repos.require(access, Permission.ADMIN)
    return access


async def list_deploy_keys(request: Request) -> JSONResponse:
    ctx = await context(request)
    access = await _repo_admin(ctx)
    keys = await call(ctx.node.keys.deploy_keys, access.repo)
    return paginate_list(request, [await call(key_json, ctx, k) for k in keys])


async def get_deploy_key(request: Request) -> JSONResponse:
    ctx = await context(request)
    access = await _repo_admin(ctx)
    key = await call(ctx.node.keys.deploy_key, access.repo, _key_id(request))
    return JSONResponse(await call(key_json, ctx, key))


async def add_deploy_key(request: Request) -> JSONResponse:
    ctx = await write_context(request)
    ctx.require_scope(Scope.REPO)
    access = await _repo_admin(ctx)
    data = await json_body(request)
    text = required(data, "key", str)
    title = field(data, "title", str, default="") or ""
    read_only = field(data, "read_only", bool, default=True)
    key = await call(ctx.node.keys.add_deploy_key, access.repo, text, title=title, read_only=bool(read_only))
    return JSONResponse(await call(key_json, ctx, key), status_code=201)


async def remove_deploy_key(request: Request) -> Response:
    ctx = await write_context(request)
    ctx.require_scope(Scope.REPO)
    access = await _repo_admin(ctx)
    key = await call(ctx.node.keys.deploy_key, access.repo, _key_id(request))
    await call(ctx.node.keys.remove, key)
    return no_content()


# -- the server's own host keys ---------------------------------------------------------

_FINGERPRINT_NAMES = {"ssh-ed25519": "SHA256_ED25519", "ecdsa-sha2-nistp256": "SHA256_ECDSA", "ssh-rsa": "SHA256_RSA"}



async def meta(request: Request) -> JSONResponse:
    """GitHub's ``/meta``: what a client checks its ``known_hosts`` against, and the version."""
    ctx = await context(request)
    host_keys = await call(hostkeys.published, ctx.node.store)
    return JSONResponse({
        "verifiable_password_authentication": False,
        "ssh_key_fingerprints": {
            _FINGERPRINT_NAMES.get(line.split()[0], line.split()[0]): fingerprint.removeprefix("SHA256:")
            for line, fingerprint in host_keys
        },
        "ssh_keys": [line for line, _ in host_keys],
        "installed_version": __version__,
    })


def _key_id(request: Request) -> int:
    text = request.path_params["key_id"]
    if not text.isdigit() or len(text) > 18:
        raise NotFound(f"no key {text!r}")
    return int(text)


routes = [
    Route("/meta", meta, methods=["GET"]),
    Route("/user/keys", list_my_keys, methods=["GET"]),
    Route("/user/keys", add_my_key, methods=["POST"]),
    Route("/user/keys/{key_id}", get_my_key, methods=["GET"]),
    Route("/user/keys/{key_id}", remove_my_key, methods=["DELETE"]),
    Route("/users/{username}/keys", list_user_keys, methods=["GET"]),
    Route("/admin/users/{username}/keys", admin_list_keys, methods=["GET"]),
    Route("/admin/users/{username}/keys", admin_add_key, methods=["POST"]),
    Route("/admin/keys/{key_id}", admin_remove_key, methods=["DELETE"]),
    Route("/repos/{owner}/{repo}/keys", list_deploy_keys, methods=["GET"]),
    Route("/repos/{owner}/{repo}/keys", add_deploy_key, methods=["POST"]),
    Route("/repos/{owner}/{repo}/keys/{key_id}", get_deploy_key, methods=["GET"]),
    Route("/repos/{owner}/{repo}/keys/{key_id}", remove_deploy_key, methods=["DELETE"]),
]

# Outside /api/v3, as GitHub serves it.
plain_routes = [Route("/{username}.keys", plain_keys, methods=["GET"])]
