"""Helpers for backup tests: seeding an instance, running backup commands, looking at disks."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bulwark.backup.client import InstanceClient
from bulwark.backup.create import InstanceSource, create_backup
from tests.support.helpers import Server, bulwark, git


@dataclass
class Seeded:
    tokens: dict[str, str]  # login -> token
    repos: list[tuple[str, str]]  # (owner, name)


def seed(
    server: Server, genv: dict[str, str], workdir: Path, *, repos: int = 3, blob_kib: int = 0, password: bool = True
) -> Seeded:
    """alice and bob (with a password), organization acme (bob a member), alice/r0.. (r0 private, bob
    may push), acme/site, and alice/empty without a single ref; every other repository has a first commit."""
    tokens = {"alice": server.create_user("alice"), "bob": server.create_user("bob")}
    r = server.api("POST", "/admin/organizations", json={"login": "acme", "admin": "alice"})
    assert r.status_code == 201, r.text
    r = server.api("PUT", "/orgs/acme/memberships/bob", token=tokens["alice"], json={"role": "member"})
    assert r.status_code == 200, r.text
    names = [("alice", f"r{i}") for i in range(repos)]
    for i, (_, name) in enumerate(names):
        server.create_repo(tokens["alice"], name, private=i == 0)
    server.create_repo(tokens["alice"], "site", org="acme")
    server.create_repo(tokens["alice"], "empty")
    r = server.api("PUT", "/repos/alice/r0/collaborators/bob", token=tokens["alice"], json={"permission": "push"})
    assert r.status_code in (201, 204), r.text
    if password:
        out = bulwark("user", "passwd", "bob", env=server.env(), input="bob-password-1\n")
        assert out.returncode == 0, out.stderr
    filled = [*names, ("acme", "site")]
    for owner, name in filled:
        work = workdir / f"seed-{owner}-{name}"
        git("init", "-q", "-b", "main", str(work), env=genv)
        (work / "README").write_text(f"{owner}/{name}\n")
        if blob_kib:
            # Incompressible, so sizes on disk follow what the test writes.
            (work / "data.bin").write_bytes(os.urandom(blob_kib * 1024))
        git("add", ".", cwd=work, env=genv)
        git("commit", "-qm", "first", cwd=work, env=genv)
        git("tag", "-a", "v1", "-m", "first release", cwd=work, env=genv)
        git("push", "-q", server.remote(owner, name, token=tokens["alice"]), "main", "v1", cwd=work, env=genv)
    return Seeded(tokens, [*filled, ("alice", "empty")])


def backup(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return bulwark("backup", *args, env=env, timeout=timeout)


def create(server: Server, to: Path, *extra: str) -> dict[str, Any]:
    r = backup("create", "--from", server.url, "--to", str(to), "--token", server.token, "--json", *extra)
    assert r.returncode == 0, r.stdout + r.stderr
    return dict(json.loads(r.stdout))


def take(server: Server, to: Path) -> str:
    """A snapshot for a test's setup, taken in this process (the command line is slow to start)."""
    with InstanceClient(server.url, server.token) as client:
        return create_backup(InstanceSource(client), to).snapshot_id


def manifest(backup_dir: Path, snapshot: str = "current") -> dict[str, Any]:
    return dict(json.loads((backup_dir / "snapshots" / _resolve(backup_dir, snapshot) / "manifest.json").read_text()))


def _resolve(backup_dir: Path, snapshot: str) -> str:
    return Path(os.readlink(backup_dir / "current")).name if snapshot == "current" else snapshot


def refs_of(url: str, env: dict[str, str]) -> dict[str, str]:
    out = git("ls-remote", "--refs", url, env=env).stdout
    return {line.split("\t")[1]: line.split("\t")[0] for line in out.splitlines() if "\t" in line}


def listing(root: Path) -> list[tuple[str, int, str]]:
    """Every path under ``root`` with its size and content hash: equal listings, nothing changed."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames) + [d + "/" for d in dirnames]:
            path = Path(dirpath) / name.rstrip("/")
            rel = str(path.relative_to(root)) + ("/" if name.endswith("/") else "")
            if path.is_symlink():
                found.append((rel, 0, "-> " + os.readlink(path)))
            elif path.is_file():
                found.append((rel, path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest()))
            else:
                found.append((rel, 0, "dir"))
    return sorted(found)


def disk_bytes(root: Path) -> int:
    """Bytes of every file under ``root``, each hard-linked file counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


@dataclass
class Alternator:
    """One client pushing to several repositories in strict turn (a1, b1, a2, b2, ...), each push
    a new branch, so any consistent point holds a prefix of that sequence: counts that differ by
    at most one, the earlier repositories ahead."""

    server: Server
    token: str
    repos: list[tuple[str, str]]
    workdir: Path
    env: dict[str, str]
    acked: list[tuple[float, str, str]] = field(default_factory=list)  # (time, "owner/name", branch)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Alternator:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)

    def _run(self) -> None:
        work = self.workdir / "alternator"
        git("init", "-q", "-b", "work", str(work), env=self.env)
        n = 0
        while not self._stop.is_set():
            n += 1
            (work / "n").write_text(f"{n}\n")
            git("add", "n", cwd=work, env=self.env)
            git("commit", "-qm", f"push {n}", cwd=work, env=self.env)
            for owner, name in self.repos:
                url = self.server.remote(owner, name, token=self.token)
                proc = git("push", "-q", url, f"HEAD:refs/heads/b{n}", cwd=work, env=self.env, check=False)
                if proc.returncode != 0:
                    self.errors.append(proc.stderr)
                    return  # the sequence must stay strict: stop at the first refusal
                self.acked.append((time.monotonic(), f"{owner}/{name}", f"b{n}"))
