"""The replica's side of the node-to-node protocol: calls to the primary.

Every call carries the replica's credential (``Authorization: Bearer``), its node
id and its epoch, so the primary can refuse strangers and stale peers.
"""

from __future__ import annotations

from typing import Any

import httpx

from bulwark.errors import BulwarkError, Forbidden, PeerUnreachable, StaleEpoch, Unauthenticated
from bulwark.store.changes import Change, Snapshot

BASE = "/manage/v1/replication"
EPOCH_HEADER = "X-Bulwark-Epoch"
NODE_HEADER = "X-Bulwark-Node"


def register(primary_url: str, token: str, *, node_id: str, url: str, timeout: float = 10) -> dict[str, Any]:
    """Ask the primary (with a site admin's token) to accept this node as a replica.

    Returns ``{"credential", "primary_id", "epoch"}``; the credential is shown only here.
    """
    try:
        r = httpx.post(
            f"{primary_url.rstrip('/')}{BASE}/replicas",
            json={"node_id": node_id, "url": url},
            headers={"Authorization": f"token {token}"},
            timeout=timeout,
        )
    except httpx.HTTPError as exc:
        raise PeerUnreachable(f"cannot reach the primary at {primary_url}: {exc}") from None
    return _json(r, primary_url)


def peer_status(url: str, timeout: float = 3) -> dict[str, Any]:
    """A node's public ``/status`` (role, epoch, node id), for fencing and liveness checks.

    Any answer with a status body counts, 503 included (maintenance, a replica): the node is there.
    The error says why there was none, without repeating the URL, which its callers name.
    """
    try:
        r = httpx.get(f"{url.rstrip('/')}/status", timeout=timeout, follow_redirects=False)
    except httpx.TimeoutException:
        raise PeerUnreachable(f"no answer within {timeout:g}s") from None
    except httpx.HTTPError as exc:
        raise PeerUnreachable(f"{type(exc).__name__}: {exc}") from None
    try:
        data = r.json()
    except ValueError:
        data = None
    if not isinstance(data, dict) or "role" not in data:
        raise PeerUnreachable(f"HTTP {r.status_code} without a Bulwark status: not a Bulwark node")
    return data


# A batch of changes is a small read on a live primary: one that says nothing for this long past
# the long poll is taken as hung, so a promotion never waits long for the cycle asking it.
CHANGES_TIMEOUT = 10.0


class PrimaryClient:
    def __init__(self, primary_url: str, credential: str, *, node_id: str, epoch: int, timeout: float = 30) -> None:
        self.url = primary_url.rstrip("/")
        self.credential = credential
        self.node_id = node_id
        self.epoch = epoch
        self.timeout = timeout
        self._http = httpx.Client(base_url=self.url + BASE, headers=self.headers, timeout=timeout)

    @property
    def headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.credential}",
            EPOCH_HEADER: str(self.epoch),
            NODE_HEADER: self.node_id,
        }

    def close(self) -> None:
        self._http.close()

    def _get(self, path: str, *, timeout: float | None = None, **params: Any) -> dict[str, Any]:
        try:
            # A long poll may legitimately stay silent for `wait` seconds.
            seconds = (self.timeout if timeout is None else timeout) + float(params.get("wait", 0))
            r = self._http.get(path, params=params, timeout=seconds)
        except httpx.HTTPError as exc:
            raise PeerUnreachable(f"cannot reach the primary at {self.url}: {exc}") from None
        return _json(r, self.url)

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            r = self._http.post(path, json=body, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise PeerUnreachable(f"cannot reach the primary at {self.url}: {exc}") from None
        return _json(r, self.url)

    def snapshot(self) -> Snapshot:
        data = self._get("/snapshot")
        return Snapshot(seq=int(data["seq"]), tables=data["tables"], sequences=data.get("sequences") or {})

    def changes(self, after: int, *, limit: int = 500, wait: float = 0) -> tuple[int, list[Change]]:
        """(the primary's newest seq, the changes after ``after``)."""
        data = self._get("/changes", timeout=min(self.timeout, CHANGES_TIMEOUT), after=after, limit=limit, wait=wait)
        return int(data["last_seq"]), [Change.from_json(c) for c in data["changes"]]

    def checksums(self) -> dict[str, str]:
        return dict(self._get("/checksums")["checksums"])

    def fence(self, new_epoch: int, by: str) -> dict[str, Any]:
        return self._post("/fence", {"epoch": new_epoch, "by": by})

    def git_url(self, storage_id: str) -> str:
        return f"{self.url}{BASE}/git/{storage_id}.git"

    def git_config(self) -> dict[str, str]:
        """Settings for `git fetch` against :meth:`git_url`.

        A primary whose machine hung mid-fetch sends nothing more, and TCP may wait many minutes
        to say so; git gives up after 30 s below 1 byte/s instead (a live upload-pack sends
        keep-alives every few seconds while it prepares a pack), and the next cycle tries again.
        """
        return {"http.extraHeader": f"Authorization: Bearer {self.credential}",
                "http.lowSpeedLimit": "1", "http.lowSpeedTime": "30"}


def _json(r: httpx.Response, url: str) -> dict[str, Any]:
    try:
        data = r.json()
    except ValueError:
        data = {"message": r.text[:200]}
    if not isinstance(data, dict):
        data = {"message": str(data)[:200]}
    if r.is_success:
        return data
    message = f"{url} refused: {data.get('message', r.reason_phrase)}"
    if r.status_code == 401:
        raise Unauthenticated(message)
    if r.status_code == 403:
        raise Forbidden(message)
    if r.status_code == 409:
        raise StaleEpoch(message)
    if r.status_code >= 500 or r.status_code == 404:
        raise PeerUnreachable(message)
    raise BulwarkError(message)
