"""Asking this machine's running server how it is, for ``bulwark status``.

The data dir says where the server listens (:mod:`bulwark.monitoring.running`); the server itself
says whether it serves (``/status``) and what it knows of itself (``/status/node``). What cannot be
asked is told apart: a server that stopped cleanly, one whose process is gone (killed or crashed),
one whose process is there but does not answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bulwark.monitoring import running
from bulwark.monitoring.facts import ServerFacts, ServerState
from bulwark.monitoring.running import Liveness, ServerRecord

STATUS_TIMEOUT = 3.0
NODE_TIMEOUT = 5.0


@dataclass(frozen=True)
class Answer:
    """What the server's ``/status`` said: an HTTP status and body, or why there was none."""

    http_status: int | None = None
    body: dict[str, Any] | None = None
    error: str | None = None

    @property
    def answered(self) -> bool:
        return self.body is not None


def server_state(record: ServerRecord | None, stopped: ServerRecord | None, liveness: Liveness | None,
                 answer: Answer | None) -> ServerState:
    """Pure: the server's state from its record, its last clean stop, its process and its answer."""
    if record is None:
        return ServerState.STOPPED if stopped is not None else ServerState.NOT_STARTED
    if liveness is Liveness.GONE:
        return ServerState.CRASHED
    if answer is not None and answer.answered:
        return ServerState.ANSWERING
    return ServerState.NOT_ANSWERING


def ask(url: str, client: httpx.Client) -> Answer:
    try:
        response = client.get(f"{url}/status", timeout=STATUS_TIMEOUT)
    except httpx.TimeoutException:
        return Answer(error=f"no answer within {STATUS_TIMEOUT:g}s")
    except httpx.HTTPError as exc:
        return Answer(error=f"{type(exc).__name__}: {exc}")
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or "role" not in body:
        return Answer(response.status_code, error=f"HTTP {response.status_code} without a Bulwark status")
    return Answer(response.status_code, body)


def ask_node(record: ServerRecord, client: httpx.Client) -> tuple[dict[str, Any] | None, str | None]:
    """The server's /status/node document, or why it could not be had."""
    try:
        response = client.get(f"{record.url}/status/node", headers={running.MONITOR_HEADER: record.secret},
                              timeout=NODE_TIMEOUT)
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"
    if response.status_code != 200:
        return None, f"HTTP {response.status_code}"
    try:
        doc = response.json()
    except ValueError:
        return None, "not JSON"
    return (doc, None) if isinstance(doc, dict) else (None, "not a node document")


def ask_server(data_dir: Path, client: httpx.Client | None = None) -> ServerFacts:
    """Read the record in ``data_dir`` and ask the server it names (blocking)."""
    record = running.read(data_dir)
    stopped = running.read(data_dir, running.STOPPED) if record is None else None
    liveness = running.liveness(record) if record is not None else None
    answer = node = node_error = None
    if record is not None and liveness is not Liveness.GONE:
        # A gone process's port may be anyone's now: only a live (or remote) one is asked.
        http = client or httpx.Client(follow_redirects=False)
        try:
            answer = ask(record.url, http)
            if answer.answered:
                node, node_error = ask_node(record, http)
        finally:
            if client is None:
                http.close()
    state = server_state(record, stopped, liveness, answer)
    known = record or stopped
    return ServerFacts(
        state=state,
        data_dir=str(data_dir),
        url=known.url if known else None,
        pid=known.pid if known else None,
        hostname=known.hostname if known else None,
        elsewhere=liveness is Liveness.ELSEWHERE,
        started_at=known.started_at if known else None,
        stopped_at=stopped.stopped_at if stopped else None,
        error=answer.error if answer is not None else None,
        http_status=answer.http_status if answer is not None else None,
        status=answer.body if answer is not None else None,
        node=node,
        node_error=node_error,
    )
