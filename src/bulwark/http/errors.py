"""Turning errors into responses: GitHub-style JSON for the API, text for git clients."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from bulwark.errors import BulwarkError, InvalidInput

log = logging.getLogger("bulwark.http")

DOCS_URL = "https://bulwark.invalid/docs/rest"
REALM = 'Basic realm="Bulwark"'


def is_api(request: Request) -> bool:
    return request.url.path.startswith(("/api/", "/manage/"))


def error_response(request: Request, status: int, message: str, *, field: str | None = None) -> Response:
    headers = {"WWW-Authenticate": REALM} if status == 401 else {}
    if status == 503:
        headers["Retry-After"] = "30"
    if is_api(request):
        body: dict[str, object] = {"message": message, "documentation_url": DOCS_URL}
        if field is not None:
            body["errors"] = [{"resource": "Request", "field": field, "code": "invalid", "message": message}]
        return JSONResponse(body, status_code=status, headers=headers)
    return PlainTextResponse(message + "\n", status_code=status, headers=headers)


async def on_bulwark_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BulwarkError)
    if exc.status_code >= 500 and exc.status_code != 503:
        log.error("server error on %s %s: %s", request.method, request.url.path, exc.message)
    field = exc.field if isinstance(exc, InvalidInput) else None
    return error_response(request, exc.status_code, exc.message, field=field)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = exc.detail if exc.detail else "error"
    if exc.status_code == 404:
        message = "Not Found"
    return error_response(request, exc.status_code, message)


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(request, 500, "internal server error")


HANDLERS = {
    BulwarkError: on_bulwark_error,
    HTTPException: on_http_exception,
    Exception: on_unexpected,
}
