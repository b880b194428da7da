"""Calls from one cluster node to another, authenticated with the cluster's shared secret.

Every node-to-node endpoint lives under ``/internal/cluster/`` and refuses callers
without the secret. :class:`PeerClient` is the blocking client (the reconciler, the
CLI, services running in worker threads); :class:`AsyncPeers` the one the push path
uses from the event loop while git waits on a hook.
"""

from __future__ import annotations

import base64
import socket
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

from bulwark.errors import BulwarkError, Conflict, GitError, NotFound, PeerUnreachable

SECRET_HEADER = "authorization"
INTERNAL = "/internal/cluster"


def auth_headers(secret: str, node: str) -> dict[str, str]:
    return {SECRET_HEADER: f"Bearer {secret}", "x-bulwark-node": node}


def refuses_connections(node_url: str, timeout: float = 0.5) -> bool:
    """Whether the node at ``node_url`` certainly does not run: its host answers, and refuses the
    connection. A host that does not answer (a partition, a hung machine) is not known to be down."""
    parts = urlsplit(node_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def git_url(node_url: str, storage_id: str) -> str:
    """Where other nodes fetch a replica's objects from."""
    return f"{node_url}{INTERNAL}/git/{storage_id}"


def git_auth_config(secret: str) -> dict[str, str]:
    """Git config (passed through the environment) that lets git fetch from another node."""
    return {"http.extraHeader": f"Authorization: Bearer {secret}"}


def _raise_for(response: httpx.Response, what: str) -> None:
    if response.status_code < 400:
        return
    try:
        message = str(response.json().get("message", response.text))
    except ValueError:
        message = response.text.strip()[:300]
    error: type[BulwarkError] = {404: NotFound, 409: Conflict}.get(response.status_code, GitError)
    raise error(f"{what}: {message}")


class PeerClient:
    """Blocking calls to other nodes."""

    def __init__(self, secret: str, node: str, *, timeout: float = 10.0, sync_timeout: float = 600.0) -> None:
        self._client = httpx.Client(headers=auth_headers(secret, node), timeout=timeout)
        self.sync_timeout = sync_timeout

    def close(self) -> None:
        self._client.close()

    def _call(self, method: str, url: str, what: str, **kwargs: Any) -> Any:
        try:
            response = self._client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise PeerUnreachable(f"{what}: {url} did not answer ({exc.__class__.__name__})") from None
        _raise_for(response, what)
        return response.json() if response.content else None

    def init(self, node_url: str, storage_id: str, default_branch: str) -> None:
        self._call("PUT", f"{node_url}{INTERNAL}/repos/{storage_id}", "creating a replica",
                   json={"default_branch": default_branch})

    def remove(self, node_url: str, storage_id: str) -> None:
        self._call("DELETE", f"{node_url}{INTERNAL}/repos/{storage_id}", "removing a replica")

    def checksum(self, node_url: str, storage_id: str) -> str | None:
        body = self._call("GET", f"{node_url}{INTERNAL}/repos/{storage_id}/checksum", "reading a checksum")
        value = body.get("checksum") if body else None
        return str(value) if value else None

    def sync(self, node_url: str, storage_id: str, source_url: str, *, rebuild: bool = False) -> str:
        body = self._call(
            "POST", f"{node_url}{INTERNAL}/repos/{storage_id}/sync", "repairing a replica",
            json={"source": source_url, "rebuild": rebuild}, timeout=self.sync_timeout,
        )
        return str(body["checksum"])

    def set_head(self, node_url: str, storage_id: str, branch: str) -> None:
        self._call("PUT", f"{node_url}{INTERNAL}/repos/{storage_id}/head", "setting HEAD", json={"branch": branch})

    def head(self, node_url: str, storage_id: str) -> str | None:
        body = self._call("GET", f"{node_url}{INTERNAL}/repos/{storage_id}/head", "reading HEAD")
        return str(body["branch"]) if body and body.get("branch") else None

    def refs(self, node_url: str, storage_id: str, patterns: Sequence[str]) -> list[dict[str, str]]:
        body = self._call("GET", f"{node_url}{INTERNAL}/repos/{storage_id}/refs", "listing refs",
                          params=[("pattern", p) for p in patterns])
        return list(body["refs"])


class AsyncPeers:
    """The push path's calls: prepare, commit and abort a ref update on other replicas."""

    def __init__(self, secret: str, node: str, *, timeout: float = 60.0) -> None:
        self._client = httpx.AsyncClient(headers=auth_headers(secret, node), timeout=timeout)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _post(self, url: str, what: str, body: dict[str, Any]) -> Any:
        try:
            response = await self._client.post(url, json=body)
        except httpx.HTTPError as exc:
            raise PeerUnreachable(f"{what}: {url} did not answer ({exc.__class__.__name__})") from None
        _raise_for(response, what)
        return response.json() if response.content else None

    async def prepare(
        self, node_url: str, storage_id: str, txn: str, lines: Sequence[tuple[str, str, str]], source_url: str,
        pack: bytes | None = None, token: str | None = None,
    ) -> str:
        request: dict[str, Any] = {"txn": txn, "lines": [list(line) for line in lines], "source": source_url}
        if token is not None:
            request["token"] = token
        if pack is not None:
            request["pack"] = base64.b64encode(pack).decode()
        body = await self._post(f"{node_url}{INTERNAL}/repos/{storage_id}/prepare", "preparing a ref update", request)
        return str(body["vote"])

    async def commit(self, node_url: str, storage_id: str, txn: str, token: str | None = None) -> None:
        body: dict[str, Any] = {"txn": txn} if token is None else {"txn": txn, "token": token}
        await self._post(f"{node_url}{INTERNAL}/repos/{storage_id}/commit", "committing a ref update", body)

    async def abort(self, node_url: str, storage_id: str, txn: str) -> None:
        await self._post(f"{node_url}{INTERNAL}/repos/{storage_id}/abort", "aborting a ref update", {"txn": txn})
