"""The backup host's calls to a Bulwark instance: the consistent point, maintenance, restore.

Every call carries a site administrator's token. Git traffic uses the same token, sent as
an HTTP header through git's environment, so it never shows on a command line.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from bulwark.errors import BulwarkError, Conflict, Forbidden, InvalidInput, NotFound, PeerUnreachable, Unauthenticated

RESTORE_HEADER = "X-Bulwark-Restore"


class ServerError(BulwarkError):
    """The instance answered something other than what the backup protocol expects."""

    status_code = 502


def plain_url(url: str) -> str:
    """``url`` without credentials or a trailing slash: what is safe to store and print."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"{url!r} is not an http(s) URL of a Bulwark instance")
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


class InstanceClient:
    """A Bulwark instance (a node, or a cluster's load balancer) seen by a site administrator."""

    def __init__(self, url: str, token: str, *, timeout: float = 60) -> None:
        if not token:
            raise Unauthenticated("no token: pass --token or set BULWARK_BACKUP_TOKEN to a site admin's token")
        self.url = plain_url(url)
        self.token = token
        self._http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"token {token}"}, timeout=timeout
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> InstanceClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- git -------------------------------------------------------------------------

    def repo_url(self, owner: str, name: str) -> str:
        return f"{self.url}/{owner}/{name}.git"

    def git_auth(self) -> dict[str, str]:
        """Git settings that authenticate as the token's user (for ``GitRunner.run(secret_config=)``)."""
        basic = base64.b64encode(f"x:{self.token}".encode()).decode()
        return {"http.extraHeader": f"Authorization: Basic {basic}"}

    # -- calls -----------------------------------------------------------------------

    def point(self, *, allow_replica: bool = False, timeout: float = 600) -> dict[str, Any]:
        """A consistent point: metadata and every repository's refs at one moment."""
        params = {"allow_replica": "1"} if allow_replica else {}
        return self._call("POST", "/manage/v1/backup/point", params=params, timeout=timeout)

    def in_maintenance(self) -> bool:
        return bool(self._call("GET", "/manage/v1/maintenance").get("enabled"))

    def set_maintenance(self, on: bool, message: str = "") -> None:
        if on:
            self._call("POST", "/manage/v1/maintenance", json={"message": message})
        else:
            self._call("DELETE", "/manage/v1/maintenance")

    def restore_metadata(self, document: dict[str, Any], *, timeout: float = 600) -> dict[str, Any]:
        return self._call("POST", "/manage/v1/backup/restore", json=document, timeout=timeout)

    def _call(self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any) -> dict[str, Any]:
        try:
            r = self._http.request(method, path, timeout=timeout or self._http.timeout, **kwargs)
        except httpx.HTTPError as exc:
            raise PeerUnreachable(f"cannot reach {self.url}: {_reason(exc)}") from None
        message = _message(r)
        if r.status_code == 401:
            raise Unauthenticated(f"{self.url} refused the token (401 {message}); pass a site admin's token")
        if r.status_code == 403:
            raise Forbidden(f"{self.url} refused: {message} (403); the token must be a site admin's")
        if r.status_code == 404:
            raise NotFound(f"{self.url} has no {path} (404): is it a Bulwark instance of this version?")
        if r.status_code == 409:
            raise Conflict(f"{self.url} refused: {message}")
        if r.status_code == 204:
            return {}
        if r.status_code >= 300:
            raise ServerError(f"{self.url} answered {r.status_code} to {method} {path}: {message}")
        try:
            data = r.json()
        except ValueError:
            raise ServerError(f"{self.url} answered {method} {path} with something that is not JSON") from None
        if not isinstance(data, dict):
            raise ServerError(f"{self.url} answered {method} {path} with JSON that is not an object")
        return data


def _message(r: httpx.Response) -> str:
    try:
        data = r.json()
    except ValueError:
        return r.text.strip()[:200] or r.reason_phrase
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return str(data["message"])
    return r.reason_phrase


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
