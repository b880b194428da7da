"""What every part of the dev cluster uses: its error, the programs it runs, ports and waiting."""

from __future__ import annotations

import enum
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

START_TIMEOUT = 30.0  # seconds one component may take to come up
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL


class DevClusterError(Exception):
    """A component of the dev cluster could not be started, reached or set up."""


class Tool(enum.Enum):
    """A program the dev cluster runs, and the Debian package that has it."""

    ETCD = ("etcd", "etcd-server")
    HAPROXY = ("haproxy", "haproxy")
    IP = ("ip", "iproute2")

    @property
    def command(self) -> str:
        return self.value[0]

    @property
    def package(self) -> str:
        return self.value[1]


def find_tool(tool: Tool, search_path: str | None = None) -> str:
    """The path of ``tool``; ``DevClusterError`` naming its Debian package when it is missing."""
    found = shutil.which(tool.command, path=search_path)
    if found is None and search_path is None:
        # /usr/sbin is often missing from an ordinary user's PATH, and haproxy and ip live there.
        found = next((str(p) for d in ("/usr/sbin", "/usr/bin", "/sbin") if (p := Path(d) / tool.command).is_file()),
                     None)
    if found is None:
        raise DevClusterError(
            f"{tool.command} is not installed: install the Debian package {tool.package} "
            f"(apt-get install {tool.package})"
        )
    return found


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def component_error(component: str, problem: str, log: Path | None) -> DevClusterError:
    message = f"{component}: {problem}"
    if log is not None:
        message += f"\n--- last lines of {log} ---\n{log_tail(log)}"
    return DevClusterError(message)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def tcp_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class PortPicker:
    """Free TCP ports, none handed out twice in one launch (the kernel may offer a closed one again)."""

    def __init__(self) -> None:
        self._taken: set[int] = set()

    def pick(self, host: str) -> int:
        for _ in range(100):
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family) as s:
                s.bind((host, 0))
                port = int(s.getsockname()[1])
            if port not in self._taken:
                self._taken.add(port)
                return port
        raise DevClusterError(f"no free port on {host}")
