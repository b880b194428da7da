"""The request's headers and body: protocol version, content type, size checks, discarding the rest."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator

from starlette.requests import Request

from bulwark.errors import UnsupportedMediaType

# A push refused part-way through its body is read to the end (up to this much more), so that
# git gets to read the refusal and show it, instead of a broken connection.
REFUSAL_DRAIN_LIMIT = 64 * 1024**2

_PROTOCOL_HEADER = re.compile(r"[A-Za-z0-9=:._-]{1,256}")


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


def _oversized_push(request: Request, limit: int) -> int | None:
    """A push whose declared length exceeds ``limit`` but is small enough to read and refuse
    in git's words: that length (its commands are read, the rest dropped). None otherwise."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and limit < int(declared) <= limit + REFUSAL_DRAIN_LIMIT:
        return int(declared)
    return None


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


async def _no_more() -> AsyncGenerator[bytes, None]:
    return
    yield
