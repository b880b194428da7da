"""Test helpers: real `bulwark serve` processes and the real `git` client."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

BULWARK = [sys.executable, "-m", "bulwark"]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def admin_token(seed: int = 0) -> str:
    return "bwk_" + f"{seed:040x}"[-40:].replace("0", "a", 1)


def git_env(home: Path) -> dict[str, str]:
    """An environment for the git client that ignores the host's config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "BULWARK_"))}
    env.update(
        HOME=str(home),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_TERMINAL_PROMPT="0",
        GIT_AUTHOR_NAME="Test Author",
        GIT_AUTHOR_EMAIL="author@example.com",
        GIT_COMMITTER_NAME="Test Committer",
        GIT_COMMITTER_EMAIL="committer@example.com",
    )
    return env


def git(
    *args: str, cwd: Path | None = None, env: Mapping[str, str], check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["git", *args], cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def bulwark(*args: str, env: Mapping[str, str] | None = None, timeout: float = 60, input: str | None = None
            ) -> subprocess.CompletedProcess[str]:
    """Run the `bulwark` command line as a user would."""
    return subprocess.run(
        [*BULWARK, *args], env=dict(env) if env is not None else None, capture_output=True, text=True,
        timeout=timeout, input=input,
    )


@dataclass
class Server:
    """A `bulwark serve` process on loopback with its own data dir."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    token: str = field(default_factory=admin_token)
    extra_env: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    # Git over SSH is off unless asked for: parallel servers would contend for its default port.
    ssh: bool = False
    ssh_port: int = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BULWARK_")}
        env.update(BULWARK_ADMIN_TOKEN=self.token, BULWARK_DATA_DIR=str(self.data_dir),
                   BULWARK_SSH_LISTEN=f"{self.host}:{self.ssh_port}" if self.ssh else "", **self.extra_env)
        return env

    def start(self, timeout: float = 30) -> Server:
        if not self.port:
            self.port = free_port(self.host)
        if self.ssh and not self.ssh_port:
            self.ssh_port = free_port(self.host)
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [*BULWARK, "serve", "--data-dir", str(self.data_dir), "--listen", f"{self.host}:{self.port}",
                 *self.extra_args],
                env=self.env(), stdout=log, stderr=log, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bulwark serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                httpx.get(f"{self.url}/status", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"bulwark serve did not answer within {timeout}s:\n{self.log()}")

    def wait_for_ssh(self, timeout: float = 30) -> Server:
        """Until the SSH listener (started beside the HTTP server) takes connections."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.ssh_port), timeout=1) as conn:
                    if conn.recv(8).startswith(b"SSH-"):
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"no SSH listener on {self.host}:{self.ssh_port} within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except FileNotFoundError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    # -- conveniences --------------------------------------------------------------------

    def api(self, method: str, path: str, *, token: str | None = None, json: Any = None,
            **kwargs: Any) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        tok = self.token if token is None else token
        if tok:
            headers["Authorization"] = f"token {tok}"
        return httpx.request(method, f"{self.url}/api/v3{path}", json=json, headers=headers, timeout=30, **kwargs)

    def create_user(
        self, login: str, *, site_admin: bool = False,
        scopes: Sequence[str] = ("repo", "user", "admin:org", "delete_repo"),
    ) -> str:
        """Create a user through the admin API and return a token for it."""
        r = self.api("POST", "/admin/users", json={"login": login, "email": f"{login}@example.com"})
        assert r.status_code == 201, r.text
        if site_admin:
            subprocess.run([*BULWARK, "user", "promote", login], env=self.env(), check=True, capture_output=True)
        r = self.api("POST", f"/admin/users/{login}/authorizations", json={"scopes": list(scopes)})
        assert r.status_code == 201, r.text
        return str(r.json()["token"])

    def create_repo(self, token: str, name: str, *, private: bool = False, org: str | None = None) -> dict[str, Any]:
        path = f"/orgs/{org}/repos" if org else "/user/repos"
        r = self.api("POST", path, token=token, json={"name": name, "private": private})
        assert r.status_code == 201, r.text
        return dict(r.json())

    def remote(self, owner: str, repo: str, *, user: str | None = None, token: str | None = None) -> str:
        cred = f"{user or 'x'}:{token}@" if token else ""
        return f"http://{cred}{self.host}:{self.port}/{owner}/{repo}.git"


def run_in_threads(
    count: int, work: Callable[[int], Any], *, timeout: float = 25
) -> tuple[list[Any], list[BaseException]]:
    """Run ``work(i)`` in ``count`` threads started together; results and errors.

    A thread still running ``timeout`` seconds after it is waited for fails the test as hung.
    """
    barrier = threading.Barrier(count)
    results: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        barrier.wait()
        try:
            result = work(i)
        except BaseException as exc:
            with lock:
                errors.append(exc)
        else:
            with lock:
                results.append(result)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
        assert not t.is_alive(), "a store call hung"
    return results, errors


class FakeClock:
    """A clock for stores: ``now()`` is ``current``, which the test sets."""

    def __init__(self, now: datetime) -> None:
        self.current = now

    def now(self) -> datetime:
        return self.current


def server_record(data_dir: Path) -> dict[str, Any] | None:
    """The record a running `bulwark serve` keeps in its data dir (server.json), if any."""
    try:
        return dict(json.loads((data_dir / "server.json").read_text()))
    except (OSError, ValueError):
        return None


def start_on_any_port(server: Server, timeout: float = 30) -> Server:
    """Start ``server`` with ``--listen HOST:0`` and learn its port from the record it writes once bound."""
    with open(server.log_path, "ab") as log:
        server.proc = subprocess.Popen(
            [*BULWARK, "serve", "--data-dir", str(server.data_dir), "--listen", f"{server.host}:0",
             *server.extra_args],
            env=server.env(), stdout=log, stderr=log, start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"bulwark serve exited with {server.proc.returncode}:\n{server.log()}")
        record = server_record(server.data_dir)
        if record is not None and record.get("pid") == server.proc.pid:
            server.port = int(str(record["listen"]).rpartition(":")[2])
            return server
        time.sleep(0.1)
    raise RuntimeError(f"bulwark serve recorded no address within {timeout}s:\n{server.log()}")
