"""The git process of a request: its slot, its session, and ``GitResponse``, which streams its output."""

from __future__ import annotations

import asyncio
import logging

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from bulwark.cluster.proxy import SSH_KEY_HEADER
from bulwark.gitservice import slots as gitslots
from bulwark.gitservice.push import Kept
from bulwark.gitservice.session import GitSession
from bulwark.http import clients
from bulwark.http.smart.access import _node
from bulwark.monitoring.metrics import Transport
from bulwark.services.permissions import Principal
from bulwark.services.repositories import RepoAccess

log = logging.getLogger("bulwark.git")

# A client that stops reading the response for this long is given up on, so it cannot
# hold a git process forever.
SEND_STALL_TIMEOUT = 300.0

NO_CACHE = {
    "Expires": "Fri, 01 Jan 1980 00:00:00 GMT",
    "Pragma": "no-cache",
    "Cache-Control": "no-cache, max-age=0, must-revalidate",
}


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


def _release(slot: gitslots.Slot | None) -> None:
    if slot is not None:
        slot.release()


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


async def _kept_response(kept: Kept, session: GitSession, first: bytes, prefix: bytes, media_type: str) -> Response:
    answer, whole = await kept.read(session, first)
    if not whole:
        return GitResponse(session, prefix + answer, media_type)
    return Response(prefix + answer, media_type=media_type, headers=NO_CACHE)
