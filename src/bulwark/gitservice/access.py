"""Who may fetch from or push to a repository, decided the same way for every transport."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from bulwark.errors import Forbidden, NotFound, Unauthenticated, Unavailable
from bulwark.gitservice.session import RECEIVE_PACK, UPLOAD_PACK
from bulwark.models import Permission
from bulwark.node import Node, Traffic
from bulwark.services.access_cache import cache_key
from bulwark.services.permissions import Principal
from bulwark.services.repositories import RepoAccess


def authorize(
    node: Node, service: str, owner: str, name: str, *, who: Callable[[], Principal], credential: str | None,
    restore: bool = False,
) -> tuple[Principal, RepoAccess]:
    """The caller and the repository, if the caller may fetch from it (upload-pack, upload-archive)
    or push to it (receive-pack). ``who`` finds the caller; ``credential`` names what it presented,
    for the kept decisions of a cluster node. Blocking: call it from a worker thread."""
    cache = node.access_cache
    if cache is None:
        return decide(node, service, owner, name, who=who, restore=restore)
    # A cluster node: the same decision as last time if etcd confirms nothing it read has changed.
    node.check_fenced(Traffic.WRITE if service == RECEIVE_PACK else Traffic.READ)
    key = cache_key(["git", credential, str(restore), owner.lower(), name.lower(), service])

    def fresh() -> tuple[tuple[Principal, RepoAccess], datetime | None]:
        principal, access = decide(node, service, owner, name, who=who, restore=restore)
        return (principal, access), principal.recheck_at

    decision: tuple[Principal, RepoAccess] = cache.get(key, fresh)[0]
    return decision


def decide(
    node: Node, service: str, owner: str, name: str, *, who: Callable[[], Principal], restore: bool = False
) -> tuple[Principal, RepoAccess]:
    push = service == RECEIVE_PACK
    if restore:
        # A restore pushes while the instance is in maintenance mode: site admins only.
        principal = who()
        if not principal.site_admin:
            raise Forbidden("only site administrators may push a restore")
        node.check_serving(Traffic.ADMIN, site_admin=True)
    else:
        node.check_serving(Traffic.WRITE if push else Traffic.READ)
        principal = who()
    if push and principal.anonymous:
        # Over HTTP, a 401 with WWW-Authenticate makes git ask its credential helper, then retry.
        raise Unauthenticated("authentication is required to push")
    try:
        access = node.repos.find(principal, owner, name)
    except NotFound:
        if principal.anonymous:
            # Anonymous callers cannot tell a private repository from a missing one, and get to log in.
            raise Unauthenticated("authentication is required to access this repository") from None
        raise
    node.repos.require(access, Permission.PUSH if push else Permission.PULL)
    if node.cluster is None and not node.git.exists(access.repo.storage_id):
        raise Unavailable(f"the data of {access.full_name} is not available on this node")
    return principal, access


def git_config(access: RepoAccess, service: str) -> dict[str, str]:
    """Settings enforced on every run, whatever the repository's own config says."""
    if service == UPLOAD_PACK:
        return {"uploadpack.allowFilter": "true"}
    if service != RECEIVE_PACK:
        return {}
    return {
        "receive.fsckObjects": "true",
        "receive.denyNonFastForwards": "false" if access.repo.allow_force_push else "true",
        "receive.denyDeletes": "false",
        "receive.denyDeleteCurrent": "true",
    }
