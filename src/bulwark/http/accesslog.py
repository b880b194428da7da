"""A structured access log line per request, with a request id that crosses nodes."""

from __future__ import annotations

import json
import logging
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("bulwark.access")

REQUEST_ID_HEADER = b"x-request-id"


class AccessLog:
    """Pure ASGI middleware, so streamed bodies pass through untouched."""

    def __init__(self, app: ASGIApp, *, enabled: bool = True) -> None:
        self.app = app
        self.enabled = enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        incoming = headers.get(REQUEST_ID_HEADER, b"").decode("latin-1")
        # Keep a caller's id (a proxying node's) so one request reads as one across nodes.
        request_id = incoming if incoming and len(incoming) <= 64 and incoming.isprintable() else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 0
        sent = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER, request_id.encode())]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if self.enabled:
                state = scope.get("state", {})
                principal = state.get("principal")
                account = getattr(principal, "account", None)
                client = scope.get("client") or ("", 0)
                log.info(
                    json.dumps(
                        {
                            "request_id": request_id,
                            "remote": client[0],
                            "method": scope["method"],
                            "path": scope["path"],
                            "status": status,
                            "bytes_out": sent,
                            "ms": round((time.perf_counter() - started) * 1000, 1),
                            "user": account.login if account is not None else None,
                        }
                    )
                )
