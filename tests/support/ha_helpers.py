"""Helpers for HA tests: a primary/replica pair of real processes, HAProxy, pushes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from bulwark.errors import Unavailable
from tests.support.helpers import Server, bulwark, free_port, git

ROOT = Path(__file__).resolve().parents[2]


class Predicate(Protocol):
    """What :func:`wait_for` polls: called with no arguments (a lambda's defaults bind its loop variables)."""

    def __call__(self) -> Any: ...


def wait_for(predicate: Predicate, timeout: float = 30, interval: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (AssertionError, httpx.HTTPError, OSError, Unavailable) as exc:
            last = exc  # e.g. a git command refused because a token has not replicated yet, or etcd electing a leader
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def repl(server: Server, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return bulwark("repl", *args, env=server.env(), timeout=timeout)


def repl_status(server: Server) -> dict[str, Any]:
    r = repl(server, "status", "--json")
    return dict(json.loads(r.stdout))


def setup_replica(replica: Server, primary: Server, *extra: str) -> subprocess.CompletedProcess[str]:
    r = repl(replica, "setup", "--primary", primary.url, "--token", primary.token,
             "--advertise-url", replica.url, *extra)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


@contextlib.contextmanager
def ha_pair(root: Path, extra_env: dict[str, str] | None = None) -> Iterator[tuple[Server, Server]]:
    """A primary and its replica, set up and running; both stopped afterwards."""
    primary = Server(data_dir=root / "primary", extra_env=extra_env or {}).start()
    replica = Server(data_dir=root / "replica", extra_env=extra_env or {}).start()
    try:
        setup_replica(replica, primary)
        yield primary, replica
    finally:
        replica.stop()
        primary.stop()


def refs_of(url: str, env: dict[str, str]) -> dict[str, str]:
    out = git("ls-remote", url, env=env).stdout
    return {line.split("\t")[1]: line.split("\t")[0] for line in out.splitlines() if "\t" in line}


@dataclass
class Pusher:
    """A working clone that pushes one new commit per call, each to its own branch."""

    workdir: Path
    remote: str
    env: dict[str, str]
    count: int = 0

    @classmethod
    def clone(cls, remote: str, workdir: Path, env: dict[str, str]) -> Pusher:
        git("clone", "--quiet", remote, str(workdir), env=env)
        return cls(workdir, remote, env)

    def commit(self, name: str, content: str) -> str:
        (self.workdir / name).write_text(content)
        git("add", name, cwd=self.workdir, env=self.env)
        git("commit", "--quiet", "-m", f"add {name}", cwd=self.workdir, env=self.env)
        return git("rev-parse", "HEAD", cwd=self.workdir, env=self.env).stdout.strip()

    def push_new_branch(self, remote: str | None = None, timeout: float = 30) -> tuple[str, str] | None:
        """Commit and push to ``branch-N``; (branch, sha) if the server acknowledged it."""
        self.count += 1
        branch = f"branch-{self.count}"
        git("checkout", "--quiet", "-B", branch, cwd=self.workdir, env=self.env)
        sha = self.commit(f"file-{self.count}.txt", f"change {self.count}\n")
        proc = git("push", "--quiet", remote or self.remote, f"HEAD:refs/heads/{branch}",
                   cwd=self.workdir, env=self.env, check=False, timeout=timeout)
        return (branch, sha) if proc.returncode == 0 else None


class HAProxy:
    """A real HAProxy with the shipped HA config, in front of two nodes."""

    def __init__(self, workdir: Path, node1: Server, node2: Server) -> None:
        self.port = free_port()
        self.ssh_port = free_port()
        self.workdir = workdir
        env = dict(os.environ)
        env.update(
            BULWARK_LB_BIND=f"127.0.0.1:{self.port}",
            BULWARK_NODE1=f"{node1.host}:{node1.port}",
            BULWARK_NODE2=f"{node2.host}:{node2.port}",
            BULWARK_LB_SSH_BIND=f"127.0.0.1:{self.ssh_port}",
            # A node without SSH: a port nothing listens on (sessions there are refused).
            BULWARK_NODE1_SSH=f"{node1.host}:{node1.ssh_port or 1}",
            BULWARK_NODE2_SSH=f"{node2.host}:{node2.ssh_port or 1}",
        )
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        self.log = open(workdir / "haproxy.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [haproxy, "-db", "-f", str(ROOT / "deploy" / "haproxy" / "ha.cfg")],
            env=env, stdout=self.log, stderr=self.log, start_new_session=True,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
