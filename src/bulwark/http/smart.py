"""Git smart HTTP: ``info/refs``, ``git-upload-pack`` and ``git-receive-pack``.

The real ``git upload-pack|receive-pack --stateless-rpc`` does the protocol work;
this module decides who may talk to it, checks the request's framing before git
starts, and streams bytes both ways with bounded memory whatever the pack size.
Clients see what ``git http-backend`` would answer.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import Message, Receive, Scope, Send

from bulwark.cluster.coordinator import Push
from bulwark.cluster.proxy import SSH_KEY_HEADER
from bulwark.errors import (
    BadRequest,
    BulwarkError,
    Forbidden,
    GitError,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    Unauthenticated,
    Unavailable,
)
from bulwark.git import pktline, report
from bulwark.gitservice import slots as gitslots
from bulwark.gitservice.access import authorize, git_config
from bulwark.gitservice.push import Kept, lead_push, recorder
from bulwark.gitservice.session import (
    RECEIVE_PACK,
    SECTION_LIMITS,
    SECTION_PACKETS,
    UPLOAD_PACK,
    GitSession,
    closed_on_error,
)
from bulwark.http import clients, gitbody, internal, manage
from bulwark.http.auth import principal_of
from bulwark.http.backup import RESTORE_HEADER
from bulwark.models import Account, AccountType, Permission, Repository
from bulwark.monitoring.metrics import Refusal, Transport, count_refusal
from bulwark.names import check_login, check_repo_name
from bulwark.node import Node
from bulwark.roles import Traffic
from bulwark.services.permissions import Principal
from bulwark.services.repositories import RepoAccess
from bulwark.services.ssh_keys import Holder

log = logging.getLogger("bulwark.git")

# Bodies of fetch requests are wants and haves only; a generous cap still stops abuse.
UPLOAD_BODY_LIMIT = 256 * 1024**2
# An ``ls-refs`` request up to this size may be answered from kept answers (git/adverts.py).
LS_REFS_KEPT_LIMIT = 64 * 1024
# A fetch's body up to this size is read whole before it gets a git process: wants and haves are
# made in memory and sent at once, and git answers nothing before their end anyway, so a client
# that trickles them holds a connection (given up by the rate floor) but no git process.
FETCH_READ_WHOLE = 1024**2
# A client that stops reading the response for this long is given up on, so it cannot
# hold a git process forever.
SEND_STALL_TIMEOUT = 300.0
# A push refused part-way through its body is read to the end (up to this much more), so that
# git gets to read the refusal and show it, instead of a broken connection.
REFUSAL_DRAIN_LIMIT = 64 * 1024**2
# In a cluster, a fetch's wants are looked up in this node's copy (at most this many of them),
# and a copy that another node chose may take this long to receive a push still committing.
WANTS_CHECKED = 10_000
CATCH_UP_WAIT = 1.0

NO_CACHE = {
    "Expires": "Fri, 01 Jan 1980 00:00:00 GMT",
    "Pragma": "no-cache",
    "Cache-Control": "no-cache, max-age=0, must-revalidate",
}
_PROTOCOL_HEADER = re.compile(r"[A-Za-z0-9=:._-]{1,256}")


class UnsupportedMediaType(BulwarkError):
    status_code = 415


# -- routes --------------------------------------------------------------------------


async def info_refs(request: Request) -> Response:
    service = _advertised_service(request)
    access = await _authorize(request, service)
    node = _node(request)
    forwarded = await _route_in_cluster(request, access, service)
    if forwarded is not None:
        return forwarded
    protocol = _git_protocol(request)
    # http-backend announces the service, except in protocol v2 whose first line says "version 2".
    prefix = b"" if _speaks_v2(protocol) else pktline.encode(f"# service=git-{service}\n") + pktline.flush()
    media_type = f"application/x-git-{service}-advertisement"
    # Fetches are kept (most find nothing new); pushes are rare and change the refs anyway.
    kept = Kept(node.git, access, ("info/refs", protocol)) if service == UPLOAD_PACK else None
    if kept is not None and kept.answer is not None:
        return Response(prefix + kept.answer, media_type=media_type, headers=NO_CACHE)
    try:
        slot = await _slot(request)
    except gitslots.Busy:
        count_refusal(request.app, service, Refusal.BUSY)
        raise  # a 503 whose text git shows as "remote:" lines
    try:
        proc = await node.git.spawn(
            access.repo.storage_id, service, advertise=True, protocol=protocol,
            extra_config=git_config(access, service),
        )
    except BaseException:
        _release(slot)
        raise
    session = _session(proc, request, access, service, slot)
    async with closed_on_error(session):
        session.no_input()
        first = await session.first_output()
        if not first and proc.returncode != 0:
            raise GitError(f"git-{service} could not list the refs of {access.full_name}: {session.last_error()}")
        if kept is not None:
            return await _kept_response(kept, session, first, prefix, media_type)
    return GitResponse(session, prefix + first, media_type)


async def upload_pack(request: Request) -> Response:
    return await _rpc(request, UPLOAD_PACK)


async def receive_pack(request: Request) -> Response:
    return await _rpc(request, RECEIVE_PACK)


routes: list[BaseRoute] = [
    # Cluster nodes fetch each other's objects by storage id, with the cluster secret.
    Route("/internal/cluster/git/{storage_id}/info/refs", info_refs, methods=["GET"]),
    Route("/internal/cluster/git/{storage_id}/git-upload-pack", upload_pack, methods=["POST"]),
    # Replicas fetch by storage id (names may change under them), with their credential.
    Route("/manage/v1/replication/git/{storage_id}/info/refs", info_refs, methods=["GET"]),
    Route("/manage/v1/replication/git/{storage_id}/git-upload-pack", upload_pack, methods=["POST"]),
    Route("/{owner}/{repo}/info/refs", info_refs, methods=["GET"]),
    Route("/{owner}/{repo}/git-upload-pack", upload_pack, methods=["POST"]),
    Route("/{owner}/{repo}/git-receive-pack", receive_pack, methods=["POST"]),
]


async def _rpc(request: Request, service: str) -> Response:
    try:
        access = await _authorize(request, service)
    except Unavailable as exc:
        # Maintenance, a fenced or cut-off node, an HA replica: git shows no text of a POST's 503.
        return await _unavailable(request, service, exc.message)
    node = _node(request)
    _check_content_type(request, service)
    forwarded = await _route_in_cluster(request, access, service)
    if forwarded is not None:
        return forwarded
    limit = node.settings.max_push_bytes if service == RECEIVE_PACK else UPLOAD_BODY_LIMIT
    oversized = _oversized_push(request, limit) if service == RECEIVE_PACK else None
    if oversized is None:
        gitbody.check_declared_length(request, limit)
    framing = gitbody.FetchFraming() if service == UPLOAD_PACK else None
    grace = gitbody.FETCH_RATE_GRACE if service == UPLOAD_PACK else gitbody.PUSH_RATE_GRACE
    body = gitbody.decoded_body(request, limit=oversized or limit, idle_timeout=node.settings.body_idle_timeout,
                                framing=framing, rate_grace=grace)
    protocol = _git_protocol(request)
    try:
        # Of a fetch's first section only its first packet matters here (is it ls-refs?).
        prelude, section = await gitbody.first_section(
            body, SECTION_LIMITS[service], max_packets=SECTION_PACKETS[service],
            keep=1 if service == UPLOAD_PACK else None,
        )
        # The ref updates of a push: replication will replicate and vote on exactly these.
        request_ = pktline.parse_receive_request(section) if service == RECEIVE_PACK else None
        commands = request_.commands if request_ is not None else ()
        capabilities = request_.capabilities if request_ is not None else ()
        if service == UPLOAD_PACK and _speaks_v2(protocol) and section and section[0].payload == b"command=ls-refs\n":
            prelude, whole = await gitbody.read_small(prelude, body, LS_REFS_KEPT_LIMIT)
            if whole:
                return await _ls_refs(request, access, protocol, prelude)
        if service == UPLOAD_PACK and node.cluster is not None:
            elsewhere = await _fetch_elsewhere(request, access, prelude, body)
            if elsewhere is not None:
                return elsewhere
        if service == UPLOAD_PACK:
            prelude, whole = await gitbody.read_small(prelude, body, FETCH_READ_WHOLE)
            if whole:
                body = _no_more()
    except BaseException:
        await body.aclose()
        raise
    if oversized is not None:
        return await _refused(request, body, commands, capabilities, _too_large(limit), Refusal.TOO_LARGE)
    try:
        # Before the repository's lock: a push waiting for a slot holds up no other push.
        slot = await _slot(request)
    except gitslots.Busy as exc:
        if commands:
            return await _refused(request, body, commands, capabilities, exc.message, Refusal.BUSY)
        return await _fetch_refused(request, body, exc.message)
    except BaseException:
        await body.aclose()
        raise
    extra_config, extra_env = git_config(access, service), dict[str, str]()
    push: Push | None = None
    if commands and node.cluster is not None:
        try:
            push = await node.cluster.coordinator.begin(access.repo.storage_id)
        except (Unavailable, NotFound) as exc:
            # No majority, a busy lock, a stale copy: refused in git's words, not with a bare 503.
            _release(slot)
            return await _refused(request, body, commands, capabilities, exc.message, Refusal.REPLICAS)
        except BaseException:
            _release(slot)
            await body.aclose()
            raise
        hook_config, extra_env = node.cluster.hook_setup(push.txn)
        extra_config.update(hook_config)
    try:
        proc = await node.git.spawn(
            access.repo.storage_id, service, advertise=False, protocol=protocol, extra_config=extra_config,
            extra_env=extra_env,
        )
    except BaseException:
        _release(slot)
        if push is not None:
            await node.cluster.coordinator.cancel(push)  # type: ignore[union-attr]
        raise
    session = _session(proc, request, access, service, slot)
    if commands:
        principal = getattr(request.state, "principal", None)
        session.on_success = recorder(node, access, commands, principal.account if principal else None)
    if push is not None:
        lead_push(session, node, push, capabilities)
    try:
        async with closed_on_error(session):
            session.send_input(prelude, body)
            first = await session.first_output()
            # Without report-status, receive-pack says nothing and exits 0 even when it fails;
            # its stderr is then the only account of a truncated or refused push.
            if not first and (proc.returncode != 0 or session.complained()):
                if push is not None and push.refusal:
                    # git dies ("ref updates aborted by hook") when the replicas vote an update down.
                    await session.close()  # which finishes the push: its lock is released
                    count_refusal(request.app, service, Refusal.REPLICAS)
                    return _report(report.refusal([c.ref for c in commands], push.refusal, capabilities))
                raise BadRequest(f"git-{service} rejected the request: {session.last_error()}")
    except PayloadTooLarge:
        if not commands:
            raise
        # git stopped at the end of its input and changed nothing; the client is still sending.
        if not await _discard_rest(request, REFUSAL_DRAIN_LIMIT, node.settings.body_idle_timeout):
            raise
        count_refusal(request.app, service, Refusal.TOO_LARGE)
        return _report(report.refusal([c.ref for c in commands], _too_large(limit), capabilities))
    return GitResponse(session, first, f"application/x-git-{service}-result")


async def _refused(
    request: Request, body: AsyncGenerator[bytes, None], commands: Sequence[pktline.RefUpdate],
    capabilities: Sequence[str], reason: str, kind: Refusal,
) -> Response:
    """Refuse a push whose commands were read: every ref ``ng`` with ``reason``, after the rest of
    the body (git reads no answer before it has sent it all)."""
    node = _node(request)
    try:
        async for _ in body:
            pass
    except PayloadTooLarge:
        if not await _discard_rest(request, REFUSAL_DRAIN_LIMIT, node.settings.body_idle_timeout):
            raise
    finally:
        await body.aclose()
    log.warning("push to %s refused: %s", request.url.path, reason)
    count_refusal(request.app, RECEIVE_PACK, kind)
    return _report(report.refusal([c.ref for c in commands], reason, capabilities))


async def _discard_rest(request: Request, limit: int, idle_timeout: float) -> bool:
    """Read and drop what is left of the request body, up to ``limit`` bytes; whether it ended."""
    seen = 0
    while seen <= limit:
        try:
            message = await asyncio.wait_for(request.receive(), idle_timeout)
        except TimeoutError:
            return False
        if message["type"] == "http.disconnect":
            return False
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return True
    return False


def _oversized_push(request: Request, limit: int) -> int | None:
    """A push whose declared length exceeds ``limit`` but is small enough to read and refuse
    in git's words: that length (its commands are read, the rest dropped). None otherwise."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and limit < int(declared) <= limit + REFUSAL_DRAIN_LIMIT:
        return int(declared)
    return None


def _too_large(limit: int) -> str:
    return f"this push is larger than the limit of {limit} bytes"


def _report(answer: bytes) -> Response:
    return Response(answer, media_type=f"application/x-git-{RECEIVE_PACK}-result", headers=NO_CACHE)


async def _slot(request: Request) -> gitslots.Slot | None:
    """A git process slot for this request (None: node-to-node traffic, which is not capped)."""
    slots: gitslots.GitSlots | None = getattr(request.app.state, "git_slots", None)
    path = request.url.path
    node = _node(request)
    internal = path.startswith(("/internal/cluster/", "/manage/v1/replication/")) or (
        node.cluster is not None and node.cluster.forwarder.is_routed(request)
    )
    if slots is None or internal:
        return None
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is not None and principal.account is not None:
        client = f"account {principal.account.id}"
    else:
        client = f"address {clients.client_address(request, node.settings.trusted_proxies)}"
    return await slots.acquire(client)


async def _unavailable(request: Request, service: str, message: str) -> Response:
    """Refuse a fetch or push this node cannot serve now, once its request is read, in git's words."""
    node = _node(request)
    limit = node.settings.max_push_bytes if service == RECEIVE_PACK else UPLOAD_BODY_LIMIT
    body = gitbody.decoded_body(request, limit=limit, idle_timeout=node.settings.body_idle_timeout)
    try:
        _, section = await gitbody.first_section(body, SECTION_LIMITS[service], max_packets=SECTION_PACKETS[service],
                                                 keep=1 if service == UPLOAD_PACK else None)
        request_ = pktline.parse_receive_request(section) if service == RECEIVE_PACK else None
    except BaseException:
        await body.aclose()
        raise
    if request_ is not None and request_.commands:
        return await _refused(request, body, request_.commands, request_.capabilities, message, Refusal.UNAVAILABLE)
    count_refusal(request.app, service, Refusal.UNAVAILABLE)
    return await _fetch_refused(request, body, message, count=False)


def _release(slot: gitslots.Slot | None) -> None:
    if slot is not None:
        slot.release()


def _fetch_error(message: str) -> Response:
    """A fetch refused after its request was read: git prints "fatal: remote error: <message>"."""
    return Response(pktline.encode(f"ERR {message}\n"), media_type=f"application/x-git-{UPLOAD_PACK}-result",
                    headers=NO_CACHE)


async def _fetch_refused(request: Request, body: AsyncGenerator[bytes, None], message: str, *,
                         count: bool = True) -> Response:
    try:
        async for _ in body:
            pass
    finally:
        await body.aclose()
    log.warning("fetch from %s refused: %s", request.url.path, message)
    if count:
        count_refusal(request.app, UPLOAD_PACK, Refusal.BUSY)
    return _fetch_error(message)


async def _ls_refs(request: Request, access: RepoAccess, protocol: str | None, whole: bytes) -> Response:
    """Protocol v2's ``ls-refs``, whose whole request is ``whole``: from the kept answers if
    the refs are unchanged since git last gave this answer."""
    node = _node(request)
    media_type = f"application/x-git-{UPLOAD_PACK}-result"
    kept = Kept(node.git, access, ("ls-refs", protocol, whole))
    if kept.answer is not None:
        return Response(kept.answer, media_type=media_type, headers=NO_CACHE)
    try:
        slot = await _slot(request)
    except gitslots.Busy as exc:
        count_refusal(request.app, UPLOAD_PACK, Refusal.BUSY)
        return _fetch_error(exc.message)
    try:
        proc = await node.git.spawn(
            access.repo.storage_id, UPLOAD_PACK, advertise=False, protocol=protocol,
            extra_config=git_config(access, UPLOAD_PACK),
        )
    except BaseException:
        _release(slot)
        raise
    session = _session(proc, request, access, UPLOAD_PACK, slot)
    async with closed_on_error(session):
        session.send_input(whole, _no_more())
        first = await session.first_output()
        if not first and (proc.returncode != 0 or session.complained()):
            raise BadRequest(f"git-{UPLOAD_PACK} rejected the request: {session.last_error()}")
        return await _kept_response(kept, session, first, b"", media_type)


async def _no_more() -> AsyncGenerator[bytes, None]:
    return
    yield


async def _kept_response(kept: Kept, session: GitSession, first: bytes, prefix: bytes, media_type: str) -> Response:
    answer, whole = await kept.read(session, first)
    if not whole:
        return GitResponse(session, prefix + answer, media_type)
    return Response(prefix + answer, media_type=media_type, headers=NO_CACHE)


# -- access ----------------------------------------------------------------------------


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
    manage.authenticated_replica(request)
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


# -- request headers and body ------------------------------------------------------------


def _git_protocol(request: Request) -> str | None:
    """The ``Git-Protocol`` header, passed to git as GIT_PROTOCOL when it is well-formed."""
    value = request.headers.get("git-protocol")
    return value if value and _PROTOCOL_HEADER.fullmatch(value) else None


def _speaks_v2(protocol: str | None) -> bool:
    # git takes the highest ``version=N`` among the colon-separated parameters, and 2 is the highest.
    return "version=2" in (protocol or "").split(":")


def _check_content_type(request: Request, service: str) -> None:
    expected = f"application/x-git-{service}-request"
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != expected:
        raise UnsupportedMediaType(f"the request body must be of type {expected}")


# -- the git process ---------------------------------------------------------------------


def _session(proc: asyncio.subprocess.Process, request: Request, access: RepoAccess, service: str,
             slot: gitslots.Slot | None) -> GitSession:
    async def gone() -> bool:
        # Once the body is read, the next message a server sends is the disconnect. The
        # bound keeps a server that answers receive() at once from making this spin.
        for _ in range(100):
            if (await request.receive())["type"] == "http.disconnect":
                return True
        return False

    metrics = getattr(request.app.state, "metrics", None)
    # A request a cluster node's SSH listener relayed counts as SSH (it was vouched for, or refused).
    transport = Transport.SSH if SSH_KEY_HEADER in request.headers else Transport.HTTP
    return GitSession(proc, _node(request).git, access, service, metrics=metrics, client_gone=gone, slot=slot,
                      transport=transport)


class GitResponse(StreamingResponse):
    """Streams git's output, and ends the git process however the response ends."""

    def __init__(self, session: GitSession, first: bytes, media_type: str) -> None:
        super().__init__(session.stream(first), media_type=media_type, headers=NO_CACHE)
        self.session = session

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def receive_after_input() -> Message:
            # The body is git's stdin until all of it is read; only then may others receive.
            await self.session.input_done()
            return await receive()

        async def send_or_give_up(message: Message) -> None:
            with anyio.fail_after(SEND_STALL_TIMEOUT):
                await send(message)

        try:
            await self.session.stop_watching()
            await super().__call__(scope, receive_after_input, send_or_give_up)
        except ClientDisconnect:
            pass  # the client left mid-response: nobody is left to tell
        except TimeoutError:
            log.warning("gave up on a client that read nothing for %gs", SEND_STALL_TIMEOUT)
        finally:
            with anyio.CancelScope(shield=True):
                await self.session.close()


# -- cluster ------------------------------------------------------------------------------


async def _route_in_cluster(request: Request, access: RepoAccess, service: str) -> Response | None:
    """In a cluster: the response of the node that should serve this request, or None to serve it here."""
    node = _node(request)
    rt = node.cluster
    if rt is None or request.url.path.startswith("/internal/cluster/"):
        return None
    storage_id = access.repo.storage_id
    if rt.forwarder.is_routed(request):
        # Another node chose us; serve locally or say why not (never bounce it on).
        if not await run_in_threadpool(node.git.exists, storage_id):
            raise Unavailable(f"the data of {access.full_name} is not on this node")
        return None
    want = Traffic.WRITE if service == RECEIVE_PACK else Traffic.READ
    route = await run_in_threadpool(rt.route, storage_id, want)
    if route is None:
        raise Unavailable(f"no up-to-date copy of {access.full_name} is reachable right now; try again shortly")
    if route.local:
        return None
    return await rt.forwarder.forward(request, route.url)


async def _fetch_elsewhere(
    request: Request, access: RepoAccess, prelude: bytes, body: AsyncGenerator[bytes, None]
) -> Response | None:
    """A fetch that wants objects this node's copy lacks, answered by another up-to-date copy.

    The client's advertisement may have come from a replica a push reached first, or this
    copy may have failed a push and not be marked behind yet; git here would answer "not
    our ref". A fetch another node sent here is given a moment for a commit under way."""
    node = _node(request)
    rt = node.cluster
    if rt is None or request.url.path.startswith("/internal/cluster/"):
        return None
    storage_id = access.repo.storage_id
    # Parsing the wants is CPU work (up to SECTION_PACKETS packets): in the worker thread too.
    missing = await run_in_threadpool(
        lambda: node.git.missing_objects(storage_id, pktline.wanted(prelude, limit=WANTS_CHECKED))
    )
    if not missing:
        return None
    if rt.forwarder.is_routed(request):
        deadline = asyncio.get_running_loop().time() + CATCH_UP_WAIT
        while missing and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            missing = await run_in_threadpool(node.git.missing_objects, storage_id, missing)
        return None
    route = await run_in_threadpool(rt.route, storage_id, Traffic.READ, {rt.name})
    if route is None:
        return None
    log.info("fetch of %s wants %s, which this node's copy lacks: sent to %s", access.full_name, missing[0], route.node)
    return await rt.forwarder.forward(request, route.url, body=_replay(prelude, body))


async def _replay(prelude: bytes, body: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
    try:
        yield prelude
        async for chunk in body:
            yield chunk
    finally:
        await body.aclose()
