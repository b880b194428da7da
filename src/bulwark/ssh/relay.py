"""Git over SSH on a cluster node: each request of the session relayed to the node's own smart HTTP.

An SSH session is a push or a protocol v2 fetch made of stateless requests (an advertisement, then
the client's requests), which are exactly smart HTTP's. Sending each to this node's HTTP listener,
vouched for with the cluster secret and naming the key that logged in, gives SSH everything HTTP
does in a cluster with no second implementation: routing to a node with an up-to-date replica
(forwarded over the internal channel), pushes voted by a majority, fetches of tips this copy lacks
served elsewhere, kept advertisements, and the same refusals in git's words.

A protocol v0 fetch or an archive keeps state between rounds, which HTTP cannot carry; it is served
by this node's own replica when that is up to date, and otherwise refused with a sentence saying
how to go on (protocol v2 is git's default since 2.26).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from bulwark.cluster.proxy import SSH_KEY_HEADER, SSH_VIA_HEADER
from bulwark.errors import BulwarkError, PeerUnreachable
from bulwark.git import pktline
from bulwark.gitservice.session import RECEIVE_PACK, UPLOAD_PACK
from bulwark.node import Node
from bulwark.roles import Traffic
from bulwark.services.repositories import RepoAccess
from bulwark.services.ssh_keys import Holder


class RelayRefused(BulwarkError):
    """The relayed request was refused; the message is for the session's stderr."""


class Relay:
    """The smart HTTP requests of one SSH session, sent to this node's own listener."""

    def __init__(self, node: Node, client: httpx.AsyncClient, holder: Holder, access: RepoAccess,
                 protocol: str | None) -> None:
        rt = node.cluster
        assert rt is not None
        self.node = node
        self.client = client
        self.base = f"{rt.url}/{access.owner.login}/{access.repo.name}.git"
        self.full_name = access.full_name
        self.headers = {SSH_KEY_HEADER: holder.key.fingerprint, SSH_VIA_HEADER: rt.forwarder.secret,
                        "User-Agent": "bulwark-ssh-relay"}
        if protocol:
            self.headers["Git-Protocol"] = protocol

    async def advertisement(self, service: str) -> AsyncIterator[bytes]:
        """The refs advertisement as SSH sends it: HTTP's "# service=..." preamble left out."""
        request = self.client.build_request("GET", f"{self.base}/info/refs", params={"service": f"git-{service}"},
                                            headers=self.headers)
        async for chunk in self._stream(request, strip_preamble=True):
            yield chunk

    async def rpc(self, service: str, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """git's answer to one request (a push's commands and pack, a v2 command)."""
        headers = {**self.headers, "Content-Type": f"application/x-git-{service}-request"}
        request = self.client.build_request("POST", f"{self.base}/git-{service}", headers=headers, content=body)
        async for chunk in self._stream(request, strip_preamble=False):
            yield chunk

    async def _stream(self, request: httpx.Request, *, strip_preamble: bool) -> AsyncIterator[bytes]:
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise PeerUnreachable(f"this node's git service did not answer ({type(exc).__name__})") from None
        try:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace").strip()
                raise RelayRefused(_refusal(response.status_code, text, self.full_name))
            pending = b""
            async for chunk in response.aiter_bytes():
                if strip_preamble:
                    pending += chunk
                    stripped = _without_preamble(pending)
                    if stripped is None:
                        continue  # the preamble is not all here yet
                    strip_preamble, chunk = False, stripped
                if chunk:
                    yield chunk
            if strip_preamble and pending:
                yield pending
        finally:
            await response.aclose()


def _without_preamble(data: bytes) -> bytes | None:
    """``data`` without a leading "# service=..." packet and its flush; None if more is needed."""
    if len(data) < 4:
        return None
    try:
        size = int(data[:4], 16)
    except ValueError:
        return data
    if size < 4 or not data[4:size].startswith(b"# service="):
        return data
    if len(data) < size + 4:
        return None
    return data[size + 4:] if data[size:size + 4] == pktline.flush() else data[size:]


def _refusal(status: int, text: str, full_name: str) -> str:
    if status in (401, 404):
        # The same words whether it is missing or hidden, as on a standalone node.
        return f"Repository not found: {full_name}"
    return text or f"the git service answered HTTP {status}"


def stateful_here(node: Node, access: RepoAccess) -> None:
    """A v0 fetch or an archive may run on this node only with its replica up to date."""
    rt = node.cluster
    assert rt is not None
    route = rt.route(access.repo.storage_id, Traffic.READ)
    if route is None or not route.local:
        raise RelayRefused(
            f"this node's copy of {access.full_name} is not up to date, and this request keeps state that only "
            "protocol v2 lets another node serve; fetch with protocol v2 (git -c protocol.version=2 ...), "
            "or try again shortly")


async def relay_push(relay: Relay, first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async def body() -> AsyncIterator[bytes]:
        yield first
        async for chunk in rest:
            yield chunk

    async for chunk in relay.rpc(RECEIVE_PACK, body()):
        yield chunk


async def relay_fetch(relay: Relay, request: bytes) -> AsyncIterator[bytes]:
    async def body() -> AsyncIterator[bytes]:
        yield request

    async for chunk in relay.rpc(UPLOAD_PACK, body()):
        yield chunk
