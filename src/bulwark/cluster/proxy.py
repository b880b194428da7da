"""Forwarding a client's request to the node that holds the repository, streamed both ways.

The forwarded request keeps the client's credentials (the target checks them again
against the same etcd) and its request id, and carries the cluster secret in its own
header so the target serves it itself instead of routing it again.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator

import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import StreamingResponse

from bulwark.errors import PeerUnreachable

ROUTED_HEADER = "x-bulwark-routed"
# A git request a node's SSH listener relays to smart HTTP: the key it authenticated (its
# fingerprint), vouched for with the cluster secret. Forwarded on with the rest of the headers.
SSH_KEY_HEADER = "x-bulwark-ssh-key"
SSH_VIA_HEADER = "x-bulwark-ssh-via"
REQUEST_ID_HEADER = "x-request-id"
# Hop-by-hop headers (RFC 9110 section 7.6.1) and ones httpx sets itself.
_DROP = {"host", "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
         "proxy-authorization", "proxy-authenticate", "content-length", ROUTED_HEADER}


class Forwarder:
    def __init__(self, secret: str, node: str) -> None:
        self.secret = secret
        self.node = node
        # No read timeout: a large clone streams for as long as it takes; connecting is bounded.
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5.0), follow_redirects=False)

    async def aclose(self) -> None:
        await self._client.aclose()

    def is_routed(self, request: Request) -> bool:
        """Whether another node of this cluster sent this request here to be served locally."""
        return request.headers.get(ROUTED_HEADER) == f"{self.secret}"

    def is_relayed(self, request: Request) -> bool:
        """Whether a node's SSH listener relayed this request (vouched for with the cluster secret)."""
        return hmac.compare_digest(request.headers.get(SSH_VIA_HEADER, "").encode(), self.secret.encode())

    async def forward(
        self, request: Request, base_url: str, body: AsyncIterator[bytes] | None = None
    ) -> StreamingResponse:
        """``request`` answered by the node at ``base_url``; ``body``, if given, is sent in place of
        the client's (decoded already, so without its Content-Encoding)."""
        drop = _DROP | {"content-encoding"} if body is not None else _DROP
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in drop]
        headers.append((ROUTED_HEADER, self.secret))
        # The id this node logged (the client's, or the one made here), so the target logs the same.
        request_id = request.scope.get("state", {}).get("request_id")
        if request_id:
            headers = [(k, v) for k, v in headers if k.lower() != REQUEST_ID_HEADER]
            headers.append((REQUEST_ID_HEADER, request_id))
        url = base_url + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if body is None and request.method not in ("GET", "HEAD"):
            body = _body(request)
        outgoing = self._client.build_request(request.method, url, headers=headers, content=body)
        try:
            response = await self._client.send(outgoing, stream=True)
        except httpx.HTTPError as exc:
            raise PeerUnreachable(f"the node holding this repository did not answer ({exc.__class__.__name__})") \
                from None
        # The id goes back to the client once, from this node's access log middleware.
        out_headers = {k: v for k, v in response.headers.items() if k.lower() not in _DROP | {REQUEST_ID_HEADER}}
        return StreamingResponse(
            response.aiter_raw(),
            status_code=response.status_code,
            headers=out_headers,
            background=BackgroundTask(response.aclose),
        )


async def _body(request: Request) -> AsyncIterator[bytes]:
    async for chunk in request.stream():
        if chunk:
            yield chunk
