"""Who may fetch or push: users, SSH sessions relayed by a cluster node, replicas and cluster peers."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from bulwark.cluster.proxy import SSH_KEY_HEADER
from bulwark.errors import BadRequest, Forbidden, InvalidInput, NotFound, Unauthenticated
from bulwark.gitservice.access import authorize
from bulwark.gitservice.session import UPLOAD_PACK
from bulwark.http import internal, replication
from bulwark.http.auth import principal_of
from bulwark.http.backup import RESTORE_HEADER
from bulwark.models import Account, AccountType, Permission, Repository
from bulwark.names import check_login, check_repo_name
from bulwark.node import Node
from bulwark.services.repositories import RepoAccess
from bulwark.services.ssh_keys import Holder


def _node(request: Request) -> Node:
    node: Node = request.app.state.node
    return node


def _advertised_service(request: Request) -> str:
    service = request.query_params.get("service")
    if service not in ("git-upload-pack", "git-receive-pack"):
        raise BadRequest(
            "only the smart HTTP protocol is supported (dumb HTTP is not): "
            "request info/refs?service=git-upload-pack or info/refs?service=git-receive-pack"
        )
    return service.removeprefix("git-")


def _repo_names(request: Request) -> tuple[str, str]:
    owner = request.path_params["owner"]
    name = request.path_params["repo"].removesuffix(".git")
    try:
        check_login(owner)
        check_repo_name(name)
    except InvalidInput:
        # No repository can have such a name, so saying so reveals nothing.
        raise NotFound("repository not found") from None
    return owner, name


async def _authorize(request: Request, service: str) -> RepoAccess:
    """The repository, if the caller may fetch from it (upload-pack) or push to it (receive-pack)."""
    if request.url.path.startswith("/internal/cluster/"):
        return await run_in_threadpool(_authorize_cluster_peer, request, service)
    if "storage_id" in request.path_params:
        return await run_in_threadpool(_authorize_replica, request, service)
    owner, name = _repo_names(request)
    # One trip to a worker thread for every look-up (node state, credentials, repository):
    # each trip costs about as much as the look-up itself.
    return await run_in_threadpool(_authorize_user, request, service, owner, name)


def _authorize_user(request: Request, service: str, owner: str, name: str) -> RepoAccess:
    node = _node(request)
    restore = request.headers.get(RESTORE_HEADER) == "1"
    holder = _ssh_holder(node, request)
    if holder is not None:
        # A cluster node's SSH listener relays its session here: the key it authenticated speaks.
        principal, access = authorize(node, service, owner, name, who=lambda: holder.principal,
                                      credential=f"ssh-key {holder.key.id}")
    else:
        principal, access = authorize(node, service, owner, name, who=lambda: principal_of(request),
                                      credential=request.headers.get("authorization"), restore=restore)
    request.state.principal = principal
    return access


def _ssh_holder(node: Node, request: Request) -> Holder | None:
    """Who an SSH session relayed by a node of this cluster speaks for (see ssh/relay.py); None for
    any other request. The relay vouches with the cluster secret, which clients never have."""
    fingerprint = request.headers.get(SSH_KEY_HEADER)
    if fingerprint is None:
        return None
    rt = node.cluster
    if rt is None or not rt.forwarder.is_relayed(request):
        raise Unauthenticated("only the nodes of this cluster relay SSH sessions")
    holder = node.keys.holder(fingerprint)
    if holder is None:
        raise Unauthenticated("this SSH key is no longer registered")
    if holder.user is not None and holder.user.suspended:
        raise Forbidden(f"the account {holder.user.login!r} is suspended")
    return holder


def _authorize_replica(request: Request, service: str) -> RepoAccess:
    """A replica fetching a repository by storage id with its replication credential."""
    node = _node(request)
    replication.authenticated_replica(request)
    if service != UPLOAD_PACK:
        raise NotFound("replicas only fetch")
    storage_id = request.path_params["storage_id"].removesuffix(".git")
    repo = node.store.get_repo_by_storage_id(storage_id) if storage_id.isalnum() else None
    owner = node.store.get_account_by_id(repo.owner_id) if repo else None
    if repo is None or owner is None or not node.git.exists(storage_id):
        raise NotFound(f"no repository with storage id {storage_id!r} on this node")
    return RepoAccess(repo, owner, Permission.ADMIN)


def _authorize_cluster_peer(request: Request, service: str) -> RepoAccess:
    """Another node of the cluster fetching objects from this node's replica."""
    node = _node(request)
    internal.authenticated(request)
    if service != UPLOAD_PACK:
        raise NotFound("nodes only fetch from each other here")
    storage_id = request.path_params["storage_id"].removesuffix(".git")
    if not storage_id.isalnum() or not node.git.exists(storage_id):
        raise NotFound(f"no replica with storage id {storage_id!r} on this node")
    placeholder = Repository(id=0, owner_id=0, name=storage_id, storage_id=storage_id)
    owner = Account(id=0, login="cluster", type=AccountType.USER)
    return RepoAccess(placeholder, owner, Permission.ADMIN)
