"""A structured access log line per request, with a request id that crosses nodes."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from bulwark.monitoring.metrics import Metrics

log = logging.getLogger("bulwark.access")

REQUEST_ID_HEADER = b"x-request-id"
# What a caller's id may look like to be kept: short, and nothing that could forge a log field.
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+=/-]{0,63}")


def accepted_request_id(raw: bytes) -> str | None:
    """A caller's ``X-Request-Id`` if it is well-formed, else None (a new id is made)."""
    text = raw.decode("latin-1")
    return text if _REQUEST_ID.fullmatch(text) else None


class AccessLog:
    """Pure ASGI middleware, so streamed bodies pass through untouched."""

    def __init__(self, app: ASGIApp, *, enabled: bool = True, metrics: Metrics | None = None) -> None:
        self.app = app
        self.enabled = enabled
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        # Keep a caller's id (a proxying node's) so one request reads as one across nodes.
        request_id = accepted_request_id(headers.get(REQUEST_ID_HEADER, b"")) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 0
        sent = 0
        received = 0

        async def receive_counting() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER, request_id.encode())]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive_counting, send_wrapper)
        finally:
            if self.metrics is not None:
                self.metrics.observe_request(scope["path"], status, time.perf_counter() - started, received, sent)
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
                            "bytes_in": received,
                            "bytes_out": sent,
                            "ms": round((time.perf_counter() - started) * 1000, 1),
                            "user": account.login if account is not None else None,
                        }
                    )
                )
