"""Turning errors into responses: GitHub-style JSON for the API, text for git clients."""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from bulwark.errors import BulwarkError, InvalidInput, Overloaded, TooManyAttempts, ValidationFailed

log = logging.getLogger("bulwark.http")

DOCS_URL = "https://bulwark.invalid/docs/rest"
REALM = 'Basic realm="Bulwark"'

# Renders an error as a page for a browser: (request, status, message) -> response.
ErrorPage = Callable[[Request, int, str], Response]


def is_api(request: Request) -> bool:
    return request.url.path.startswith(("/api/", "/manage/"))


_GIT_PATHS = ("/info/refs", "/git-upload-pack", "/git-receive-pack")


def wants_page(request: Request) -> bool:
    """A browser asking for a page (not the API, not a git client): errors are shown as pages."""
    return (not is_api(request) and not request.url.path.startswith("/internal/")
            and not request.url.path.endswith(_GIT_PATHS) and "text/html" in request.headers.get("accept", ""))


def error_response(
    request: Request,
    status: int,
    message: str,
    *,
    field: str | None = None,
    errors: list[dict[str, str]] | None = None,
    retry_after: int | None = None,
) -> Response:
    headers = {"WWW-Authenticate": REALM} if status == 401 else {}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    elif status == 503:
        headers["Retry-After"] = "30"
    if is_api(request):
        body: dict[str, object] = {"message": message, "documentation_url": DOCS_URL}
        if errors is not None:
            body["errors"] = errors
        elif field is not None:
            body["errors"] = [{"resource": "Request", "field": field, "code": "invalid", "message": message}]
        return JSONResponse(body, status_code=status, headers=headers)
    error_page = _error_page(request) if wants_page(request) else None
    if error_page is not None:
        response = error_page(request, status, message)
        # No WWW-Authenticate: a browser would answer it with a password prompt.
        response.headers.update({k: v for k, v in headers.items() if k != "WWW-Authenticate"})
        return response
    return PlainTextResponse(message + "\n", status_code=status, headers=headers)


def _error_page(request: Request) -> ErrorPage | None:
    """The pages' renderer of errors, which the app that mounts the pages sets (assembly/app.py)."""
    state = getattr(request.scope.get("app"), "state", None)
    return getattr(state, "error_page", None)


async def on_bulwark_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BulwarkError)
    if exc.status_code >= 500 and exc.status_code != 503:
        log.error("server error on %s %s: %s", request.method, request.url.path, exc.message)
    if isinstance(exc, ValidationFailed) and is_api(request):
        # GitHub's shape: a fixed message, the details per field.
        error = {"resource": exc.resource, "field": exc.field or "", "code": exc.code, "message": exc.message}
        return error_response(request, exc.status_code, "Validation Failed", errors=[error])
    field = exc.field if isinstance(exc, InvalidInput) else None
    retry_after = exc.retry_after if isinstance(exc, TooManyAttempts | Overloaded) else None
    return error_response(request, exc.status_code, exc.message, field=field, retry_after=retry_after)


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
