"""The running server's record in its data dir: where it really listens, and which process it is.

``bulwark serve`` writes ``server.json`` once its socket is bound (so ``--listen HOST:0`` records the
port it got), atomically, readable by its own user only (it holds the secret that lets ``bulwark
status`` on the same machine ask the server for its facts). A clean shutdown removes it and leaves
``server-stopped.json`` saying when; a killed or crashed server leaves ``server.json`` behind, which
its process id and start time then show to be stale. The next start simply replaces it.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import secrets
import socket
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bulwark import __version__
from bulwark.config import Settings
from bulwark.processes import pid_exists, process_start

RECORD = "server.json"
STOPPED = "server-stopped.json"
MONITOR_HEADER = "X-Bulwark-Monitor"

@dataclass(frozen=True)
class ServerRecord:
    pid: int
    listen: str  # HOST:PORT of the bound socket, as bound (0.0.0.0 for every address)
    url: str  # where a client on this machine reaches it
    started_at: str  # ISO time
    hostname: str
    process_start: str | None  # the process's start as the kernel counts it, to tell a reused pid
    secret: str
    version: str = __version__
    stopped_at: str | None = None  # in server-stopped.json only

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> ServerRecord | None:
        if not isinstance(data, dict):
            return None
        try:
            return cls(**{k: data[k] for k in data if k in cls.__dataclass_fields__})
        except TypeError:
            return None

    def same_process(self, other: ServerRecord | None) -> bool:
        return other is not None and (other.pid, other.started_at) == (self.pid, self.started_at)


def new_record(host: str, port: int, *, pid: int | None = None) -> ServerRecord:
    """This process's record, for a socket bound to ``host``:``port``."""
    pid = os.getpid() if pid is None else pid
    return ServerRecord(
        pid=pid,
        listen=_hostport(host, port),
        url=f"http://{_hostport(local_host(host), port)}",
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        hostname=socket.gethostname(),
        process_start=process_start(pid),
        secret=secrets.token_urlsafe(24),
    )


def local_host(host: str) -> str:
    """Where a client on this machine reaches a socket bound to ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def is_wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- the files -------------------------------------------------------------------------------------


def write(data_dir: Path, record: ServerRecord, name: str = RECORD) -> None:
    """Replace ``name`` in ``data_dir`` in one step: a reader sees the old record or the new one."""
    data_dir = Path(data_dir)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=data_dir)
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            json.dump(record.to_json(), f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, data_dir / name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _sync_dir(data_dir)


def read(data_dir: Path, name: str = RECORD) -> ServerRecord | None:
    try:
        text = (Path(data_dir) / name).read_text()
    except OSError:
        return None
    try:
        return ServerRecord.from_json(json.loads(text))
    except ValueError:
        return None


def remove(data_dir: Path, record: ServerRecord) -> None:
    """After a clean shutdown: drop the record (if it is still this server's) and note the stop."""
    if record.same_process(read(data_dir)):
        with contextlib.suppress(FileNotFoundError):
            (Path(data_dir) / RECORD).unlink()
    stopped = replace(record, secret="", stopped_at=datetime.now(UTC).isoformat(timespec="seconds"))
    write(data_dir, stopped, STOPPED)


def _sync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- is it still there? ----------------------------------------------------------------------------


class Liveness(enum.StrEnum):
    RUNNING = "running"  # the recorded process exists and is the one that wrote the record
    GONE = "gone"  # it does not exist any more (or its pid now belongs to another process)
    ELSEWHERE = "elsewhere"  # recorded on another machine (a shared data dir): only asking it can tell


def node_url(settings: Settings, record: ServerRecord | None) -> str:
    """The node's URL for others: its public URL, else the address its server bound (the configured
    listen address may say port 0, or differ from the flags the server was started with)."""
    if settings.public_url or record is None:
        return settings.base_url
    return f"http://{record.listen}"


def liveness(record: ServerRecord, *, exists: Callable[[int], bool] = pid_exists,
             started: Callable[[int], str | None] = process_start,
             hostname: str | None = None) -> Liveness:
    """Whether the recorded process is still there (pure, given the two look-ups)."""
    if record.hostname != (hostname if hostname is not None else socket.gethostname()):
        return Liveness.ELSEWHERE
    if not exists(record.pid):
        return Liveness.GONE
    now = started(record.pid)
    if record.process_start is not None and now is not None and now != record.process_start:
        return Liveness.GONE  # the pid was reused after the server died
    return Liveness.RUNNING
