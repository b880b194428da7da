"""Git smart HTTP against a real `bulwark serve` with the real git client."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import os
import socket
import subprocess
import threading
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from bulwark.errors import BadRequest
from bulwark.git import pktline
from bulwark.git.pktline import PktLineError
from bulwark.http.gitbody import CHUNK, INFLATE_FREE, FetchFraming, Gunzip, first_section
from tests.support.helpers import BULWARK, Server, git

pytestmark = [pytest.mark.timeout(120), pytest.mark.system]

ZERO = "0" * 40


# -- helpers -------------------------------------------------------------------------------


def commit(work: Path, env: dict[str, str], name: str, content: str | bytes, message: str = "") -> str:
    path = work / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    git("add", name, cwd=work, env=env)
    git("commit", "-q", "-m", message or f"change {name}", cwd=work, env=env)
    return rev(work, env, "HEAD")


def rev(work: Path, env: dict[str, str], spec: str) -> str:
    return git("rev-parse", spec, cwd=work, env=env).stdout.strip()


def remote_refs(url: str, env: dict[str, str]) -> dict[str, str]:
    out = git("ls-remote", url, env=env).stdout
    return {ref: oid for oid, ref in (line.split("\t") for line in out.splitlines())}


def new_work(tmp_path: Path, env: dict[str, str], name: str = "work") -> Path:
    work = tmp_path / name
    git("init", "-q", "-b", "main", str(work), env=env)
    return work


def repo_dirs(server: Server) -> list[Path]:
    return sorted((server.data_dir / "repositories").glob("*/*.git"))


def server_git(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    (path,) = repo_dirs(server)
    env = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "PATH": os.environ["PATH"]}
    return subprocess.run(["git", "--git-dir", str(path), *args], capture_output=True, text=True, env=env, timeout=60)


def git_processes(server: Server) -> list[str]:
    """Commands of the git processes the server started, their children included."""
    assert server.proc is not None
    data_dir = str(server.data_dir.resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == server.proc.pid:
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            # Children of git (pack-objects, index-pack) run inside the repository.
            if ppid == server.proc.pid or os.readlink(entry / "cwd").startswith(data_dir):
                found.append(cmd)
        except (OSError, IndexError, ValueError):
            continue
    return [cmd for cmd in found if "git" in cmd]


def open_fds(server: Server) -> int:
    assert server.proc is not None
    return len(os.listdir(f"/proc/{server.proc.pid}/fd"))


def wait_until_no_git(server: Server, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while git_processes(server):
        if time.monotonic() > deadline:
            raise AssertionError(f"git processes left behind: {git_processes(server)}")
        time.sleep(0.1)


def basic(token: str) -> tuple[str, str]:
    return ("x", token)


def receive_body(
    work: Path, env: dict[str, str], old: str, new: str, ref: str, caps: str = "report-status"
) -> bytes:
    """A receive-pack request as git send-pack would build it: commands, flush, packfile."""
    revs = f"{new}\n" + (f"^{old}\n" if old != ZERO else "")
    pack = subprocess.run(
        ["git", "pack-objects", "--stdout", "--revs", "-q"], cwd=work, env=env, input=revs.encode(),
        capture_output=True, check=True,
    ).stdout
    return pktline.encode(f"{old} {new} {ref}\0{caps}") + pktline.flush() + pack


RP_TYPE = {"Content-Type": "application/x-git-receive-pack-request"}
UP_TYPE = {"Content-Type": "application/x-git-upload-pack-request"}


@pytest.fixture
def alice(server: Server) -> str:
    return server.create_user("alice")


@pytest.fixture
def project(server: Server, alice: str, genv: dict[str, str], tmp_path: Path) -> tuple[str, Path]:
    """alice/proj with one commit on main, and the work tree it was pushed from."""
    server.create_repo(alice, "proj")
    url = server.remote("alice", "proj", token=alice)
    work = new_work(tmp_path, genv)
    commit(work, genv, "README.md", "hello\n")
    git("push", "-q", url, "main", cwd=work, env=genv)
    return url, work


# -- the basics ----------------------------------------------------------------------------


def test_clone_empty_push_clone_fetch(server: Server, alice: str, genv: dict[str, str], tmp_path: Path) -> None:
    server.create_repo(alice, "proj")
    url = server.remote("alice", "proj", token=alice)
    first = tmp_path / "first"
    out = git("clone", url, str(first), env=genv)
    assert "empty repository" in out.stderr
    assert server.api("GET", "/repos/alice/proj", token=alice).json()["pushed_at"] is None

    one = commit(first, genv, "a.txt", "one\n")
    git("push", "-q", "origin", "HEAD:main", cwd=first, env=genv)
    assert server.api("GET", "/repos/alice/proj", token=alice).json()["pushed_at"] is not None

    second = tmp_path / "second"
    git("clone", "-q", url, str(second), env=genv)
    assert (second / "a.txt").read_text() == "one\n"
    assert rev(second, genv, "HEAD") == one

    two = commit(first, genv, "b/c.txt", "two\n")
    git("push", "-q", "origin", "main", cwd=first, env=genv)
    git("pull", "-q", "--ff-only", cwd=second, env=genv)
    assert rev(second, genv, "HEAD") == two
    assert (second / "b" / "c.txt").read_text() == "two\n"
    assert remote_refs(url, genv) == {"HEAD": two, "refs/heads/main": two}
    assert server_git(server, "fsck", "--strict").returncode == 0


def test_advertisement_responses_match_http_backend(
    server: Server, project: tuple[str, Path], genv: dict[str, str]
) -> None:
    url, work = project
    assert remote_refs(url.removesuffix(".git"), genv)["refs/heads/main"] == rev(work, genv, "HEAD")
    base = f"{server.url}/alice/proj"
    r = httpx.head(f"{base}/info/refs", params={"service": "git-upload-pack"})
    assert r.status_code == 200 and r.content == b""
    for path in (f"{base}/info/refs", f"{base}.git/info/refs"):
        r = httpx.get(path, params={"service": "git-upload-pack"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/x-git-upload-pack-advertisement"
        assert "no-cache" in r.headers["cache-control"]
        assert r.content.startswith(b"001e# service=git-upload-pack\n0000")
    r = httpx.get(f"{base}/info/refs", params={"service": "git-upload-pack"}, headers={"Git-Protocol": "version=2"})
    assert r.status_code == 200 and r.content.startswith(b"000eversion 2\n")
    r = httpx.get(f"{base}/info/refs", params={"service": "git-receive-pack"}, auth=basic(server.token))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/x-git-receive-pack-advertisement"
    assert r.content.startswith(b"001f# service=git-receive-pack\n0000")


def test_dumb_http_is_refused_clearly(server: Server, project: tuple[str, Path]) -> None:
    for params in ({}, {"service": "git-upload-archive"}, {"service": "upload-pack"}):
        r = httpx.get(f"{server.url}/alice/proj/info/refs", params=params)
        assert r.status_code == 400 and "dumb HTTP" in r.text
    assert httpx.get(f"{server.url}/alice/proj.git/HEAD").status_code == 404
    assert httpx.post(f"{server.url}/alice/proj/info/refs").status_code == 405
    assert httpx.get(f"{server.url}/alice/proj/git-upload-pack").status_code == 405


def test_tags_annotated_and_lightweight(
    server: Server, project: tuple[str, Path], genv: dict[str, str], tmp_path: Path
) -> None:
    url, work = project
    head = rev(work, genv, "HEAD")
    git("tag", "-a", "v1.0", "-m", "release 1.0", cwd=work, env=genv)
    git("tag", "light", cwd=work, env=genv)
    git("push", "-q", url, "--tags", cwd=work, env=genv)
    refs = remote_refs(url, genv)
    assert refs["refs/tags/light"] == head
    assert refs["refs/tags/v1.0"] == rev(work, genv, "v1.0") != head
    assert refs["refs/tags/v1.0^{}"] == head

    clone = tmp_path / "clone"
    git("clone", "-q", url, str(clone), env=genv)
    assert git("cat-file", "-t", "v1.0", cwd=clone, env=genv).stdout.strip() == "tag"
    assert git("cat-file", "-t", "light", cwd=clone, env=genv).stdout.strip() == "commit"
    assert "release 1.0" in git("cat-file", "-p", "v1.0", cwd=clone, env=genv).stdout

    git("push", "-q", url, ":refs/tags/light", cwd=work, env=genv)
    assert "refs/tags/light" not in remote_refs(url, genv)


def test_force_push_rules(
    server: Server, alice: str, project: tuple[str, Path], genv: dict[str, str], tmp_path: Path
) -> None:
    url, work = project
    base = rev(work, genv, "HEAD")
    commit(work, genv, "a.txt", "a\n")
    git("push", "-q", url, "main", cwd=work, env=genv)
    # Rewrite history: a non-fast-forward.
    git("reset", "-q", "--hard", base, cwd=work, env=genv)
    rewritten = commit(work, genv, "b.txt", "b\n")
    out = git("push", url, "main", cwd=work, env=genv, check=False)
    assert out.returncode != 0 and "rejected" in out.stderr
    out = git("push", "--force", url, "main", cwd=work, env=genv)
    assert remote_refs(url, genv)["refs/heads/main"] == rewritten

    r = server.api("PATCH", "/repos/alice/proj", token=alice, json={"allow_force_pushes": False})
    assert r.status_code == 200 and r.json()["allow_force_pushes"] is False
    git("reset", "-q", "--hard", base, cwd=work, env=genv)
    commit(work, genv, "c.txt", "c\n")
    out = git("push", "--force", url, "main", cwd=work, env=genv, check=False)
    assert out.returncode != 0 and "non-fast-forward" in out.stderr
    assert remote_refs(url, genv)["refs/heads/main"] == rewritten
    # Fast-forwards still go through, and other branches may be deleted...
    git("push", "-q", url, f"{rewritten}:refs/heads/topic", cwd=work, env=genv)
    git("pull", "-q", "--rebase", url, "main", cwd=work, env=genv)
    git("push", "-q", url, "main", cwd=work, env=genv)
    git("push", "-q", url, ":topic", cwd=work, env=genv)
    assert "refs/heads/topic" not in remote_refs(url, genv)
    # ...but never the default branch.
    out = git("push", url, ":main", cwd=work, env=genv, check=False)
    assert out.returncode != 0 and "current branch" in out.stderr
    assert "refs/heads/main" in remote_refs(url, genv)


# -- protocols and clone shapes ----------------------------------------------------------------


def test_protocol_v2(server: Server, project: tuple[str, Path], genv: dict[str, str], tmp_path: Path) -> None:
    url, work = project
    env = {**genv, "GIT_TRACE_PACKET": str(tmp_path / "trace")}
    out = git("-c", "protocol.version=2", "ls-remote", url, env=env).stdout
    assert f"{rev(work, genv, 'HEAD')}\trefs/heads/main" in out
    trace = (tmp_path / "trace").read_text()
    assert "git< version 2" in trace and "ls-remote> command=ls-refs" in trace
    (tmp_path / "trace").unlink()
    git("-c", "protocol.version=2", "clone", "-q", url, str(tmp_path / "clone"), env=env)
    trace = (tmp_path / "trace").read_text()
    assert "clone> command=fetch" in trace and "# service=" not in trace
    assert (tmp_path / "clone" / "README.md").read_text() == "hello\n"


def test_protocol_v0(server: Server, project: tuple[str, Path], genv: dict[str, str], tmp_path: Path) -> None:
    url, work = project
    env = {**genv, "GIT_TRACE_PACKET": str(tmp_path / "trace")}
    git("-c", "protocol.version=0", "clone", "-q", url, str(tmp_path / "clone"), env=env)
    trace = (tmp_path / "trace").read_text()
    assert "# service=git-upload-pack" in trace and "version 2" not in trace
    assert (tmp_path / "clone" / "README.md").read_text() == "hello\n"
    clone = tmp_path / "clone"
    new = commit(clone, genv, "v0.txt", "v0\n")
    git("-c", "protocol.version=0", "push", "-q", "origin", "main", cwd=clone, env=genv)
    git("-c", "protocol.version=0", "fetch", "-q", url, cwd=work, env=genv)
    assert rev(work, genv, "FETCH_HEAD") == new
    # Version 1 is v0 with a version line; git still understands it.
    out = git("-c", "protocol.version=1", "ls-remote", url, env=genv).stdout
    assert f"{new}\trefs/heads/main" in out


def test_shallow_clone_fetch_and_push(
    server: Server, project: tuple[str, Path], genv: dict[str, str], tmp_path: Path
) -> None:
    url, work = project
    for i in range(3):
        commit(work, genv, f"f{i}.txt", f"{i}\n")
    git("push", "-q", url, "main", cwd=work, env=genv)
    for version in ("0", "2"):
        clone = tmp_path / f"shallow{version}"
        git("-c", f"protocol.version={version}", "clone", "-q", "--depth", "1", url, str(clone), env=genv)
        assert git("rev-list", "--count", "HEAD", cwd=clone, env=genv).stdout.strip() == "1"
        assert (clone / ".git" / "shallow").is_file()
    clone = tmp_path / "shallow0"
    # A push from a shallow clone sends "shallow" lines before its commands.
    new = commit(clone, genv, "from-shallow.txt", "x\n")
    trace = tmp_path / "trace"
    env = {**genv, "GIT_TRACE_PACKET": str(trace)}
    git("-c", "protocol.version=0", "push", "-q", "origin", "main", cwd=clone, env=env)
    assert "git> shallow " in trace.read_text()
    assert remote_refs(url, genv)["refs/heads/main"] == new
    git("fetch", "-q", "--unshallow", cwd=clone, env=genv)
    assert git("rev-list", "--count", "HEAD", cwd=clone, env=genv).stdout.strip() == "5"
    assert server_git(server, "fsck", "--strict").returncode == 0


def test_partial_clone(server: Server, project: tuple[str, Path], genv: dict[str, str], tmp_path: Path) -> None:
    url, work = project
    commit(work, genv, "big.txt", "old version\n" * 1000)
    commit(work, genv, "big.txt", "new version\n" * 1000)
    git("push", "-q", url, "main", cwd=work, env=genv)
    for version in ("2", "0"):
        clone = tmp_path / f"partial{version}"
        git("-c", f"protocol.version={version}", "clone", "-q", "--filter=blob:none", url, str(clone), env=genv)
        missing = git("rev-list", "--objects", "--all", "--missing=print", cwd=clone, env=genv).stdout
        assert any(line.startswith("?") for line in missing.splitlines()), missing
        assert (clone / "big.txt").read_text().startswith("new version")
        # The old blob is fetched on demand.
        assert git("show", "HEAD~1:big.txt", cwd=clone, env=genv).stdout.startswith("old version")


# -- size and concurrency ------------------------------------------------------------------------


def test_large_push_and_clone_round_trip(
    server: Server, project: tuple[str, Path], genv: dict[str, str], tmp_path: Path
) -> None:
    url, work = project
    blob = os.urandom(30 * 1024 * 1024)
    commit(work, genv, "random.bin", blob)
    git("push", "-q", url, "main", cwd=work, env=genv)
    clone = tmp_path / "clone"
    git("clone", "-q", url, str(clone), env=genv)
    assert hashlib.sha256((clone / "random.bin").read_bytes()).digest() == hashlib.sha256(blob).digest()
    assert server_git(server, "fsck", "--strict").returncode == 0
    wait_until_no_git(server)


def test_client_leaving_mid_clone_ends_git(
    server: Server, project: tuple[str, Path], genv: dict[str, str], tmp_path: Path
) -> None:
    url, work = project
    commit(work, genv, "random.bin", os.urandom(20 * 1024 * 1024))
    git("push", "-q", url, "main", cwd=work, env=genv)
    fds = open_fds(server)
    want = rev(work, genv, "HEAD")
    body = (
        pktline.encode("command=fetch\n") + b"0001" + pktline.encode(f"want {want}\n")
        + pktline.encode("done\n") + pktline.flush()
    )
    headers = {**UP_TYPE, "Git-Protocol": "version=2"}
    # A small receive buffer, so the pack cannot all sit in the kernel while nobody reads it.
    transport = httpx.HTTPTransport(socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)])
    with httpx.Client(timeout=30, transport=transport) as client, client.stream(
        "POST", f"{server.url}/alice/proj/git-upload-pack", content=body, headers=headers
    ) as r:
        assert r.status_code == 200
        chunks = r.iter_raw(65536)
        next(chunks)
        time.sleep(0.5)
        assert git_processes(server), "git should still be sending the pack"
        started = time.monotonic()
    wait_until_no_git(server, timeout=10)
    assert time.monotonic() - started < 5
    assert open_fds(server) <= fds + 2


def test_client_leaving_mid_push_ends_git_and_changes_nothing(
    server: Server, alice: str, project: tuple[str, Path], genv: dict[str, str]
) -> None:
    url, work = project
    head = rev(work, genv, "HEAD")
    fds = open_fds(server)
    for size in (20 * 1024 * 1024, 50_000):  # index-pack, and unpack-objects for few objects
        new = commit(work, genv, f"random-{size}.bin", os.urandom(size))
        body = receive_body(work, genv, head, new, "refs/heads/main")

        def half_then_vanish(body: bytes = body) -> Iterator[bytes]:
            yield body[: len(body) // 2]
            time.sleep(0.5)
            raise ConnectionAbortedError("client gone")

        with pytest.raises((ConnectionAbortedError, httpx.HTTPError)):
            httpx.post(f"{server.url}/alice/proj/git-receive-pack", content=half_then_vanish(), headers=RP_TYPE,
                       auth=basic(alice), timeout=30)
        wait_until_no_git(server, timeout=15)
        assert remote_refs(url, genv)["refs/heads/main"] == head
    # git cleaned up after itself: no quarantine directory or lock file is left behind.
    (path,) = repo_dirs(server)
    leftovers = [*path.glob("objects/incoming-*"), *path.rglob("*.lock"), *path.rglob("tmp_*")]
    assert not leftovers
    assert open_fds(server) <= fds + 2
    git("push", "-q", url, "main", cwd=work, env=genv)
    assert remote_refs(url, genv)["refs/heads/main"] == rev(work, genv, "HEAD")
    assert server_git(server, "fsck", "--strict").returncode == 0


def test_concurrent_pushes_to_one_branch(
    server: Server, project: tuple[str, Path], genv: dict[str, str], tmp_path: Path
) -> None:
    url, _ = project
    clones = []
    for name in ("one", "two"):
        clone = tmp_path / name
        git("clone", "-q", url, str(clone), env=genv)
        commit(clone, genv, f"{name}.txt", os.urandom(2 * 1024 * 1024), f"from {name}")
        clones.append(clone)
    barrier = threading.Barrier(2)
    results: dict[str, subprocess.CompletedProcess[str]] = {}

    def push(clone: Path) -> None:
        barrier.wait()
        results[clone.name] = git("push", "origin", "main", cwd=clone, env=genv, check=False)

    threads = [threading.Thread(target=push, args=(c,)) for c in clones]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    winners = [name for name, proc in results.items() if proc.returncode == 0]
    assert len(results) == 2 and len(winners) == 1, {k: v.stderr for k, v in results.items()}
    (winner,) = winners
    assert remote_refs(url, genv)["refs/heads/main"] == rev(tmp_path / winner, genv, "HEAD")
    fsck = server_git(server, "fsck", "--strict")
    assert fsck.returncode == 0, fsck.stderr
    wait_until_no_git(server)


# -- who may do what -----------------------------------------------------------------------------


def test_auth_failures(
    server: Server, alice: str, project: tuple[str, Path], genv: dict[str, str], tmp_path: Path
) -> None:
    _, work = project
    wrong = "bwk_" + "f" * 40
    server.create_repo(alice, "private", private=True)
    out = git("clone", server.remote("alice", "private", token=wrong), str(tmp_path / "bad"), env=genv, check=False)
    assert out.returncode != 0 and "Authentication failed" in out.stderr
    out = git("push", server.remote("alice", "proj", token=wrong), "main", cwd=work, env=genv, check=False)
    assert out.returncode != 0 and "Authentication failed" in out.stderr
    # Anyone may clone a public repository, nobody anonymous may push to it.
    anon = server.remote("alice", "proj")
    clone = tmp_path / "anon"
    git("clone", "-q", anon, str(clone), env=genv)
    commit(clone, genv, "x.txt", "x\n")
    out = git("push", "origin", "main", cwd=clone, env=genv, check=False)
    assert out.returncode != 0
    r = httpx.get(f"{server.url}/alice/proj/info/refs", params={"service": "git-receive-pack"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == 'Basic realm="Bulwark"'
    r = httpx.post(f"{server.url}/alice/proj/git-receive-pack", content=b"0000", headers=RP_TYPE)
    assert r.status_code == 401 and r.headers["www-authenticate"] == 'Basic realm="Bulwark"'
    r = httpx.get(f"{server.url}/alice/proj/info/refs", params={"service": "git-upload-pack"},
                  auth=("x", "bwk_" + "f" * 40))
    assert r.status_code == 401


def test_private_repo_is_invisible(
    server: Server, alice: str, genv: dict[str, str], tmp_path: Path
) -> None:
    bob = server.create_user("bob")
    server.create_repo(alice, "secret", private=True)
    work = new_work(tmp_path, genv)
    commit(work, genv, "s.txt", "secret\n")
    git("push", "-q", server.remote("alice", "secret", token=alice), "main", cwd=work, env=genv)
    for service in ("git-upload-pack", "git-receive-pack"):
        url = f"{server.url}/alice/secret.git/info/refs"
        r = httpx.get(url, params={"service": service})
        assert r.status_code == 401 and r.headers["www-authenticate"] == 'Basic realm="Bulwark"'
        assert httpx.get(url, params={"service": service}, auth=basic(bob)).status_code == 404
        # A missing repository answers exactly the same.
        missing = f"{server.url}/alice/nothing.git/info/refs"
        assert httpx.get(missing, params={"service": service}).status_code == 401
        assert httpx.get(missing, params={"service": service}, auth=basic(bob)).status_code == 404
    body = pktline.encode(f"want {rev(work, genv, 'HEAD')}\n") + pktline.flush() + pktline.encode("done\n")
    r = httpx.post(f"{server.url}/alice/secret/git-upload-pack", content=body, headers=UP_TYPE, auth=basic(bob))
    assert r.status_code == 404
    out = git("clone", server.remote("alice", "secret", token=bob), str(tmp_path / "b"), env=genv, check=False)
    assert out.returncode != 0 and "not found" in out.stderr.lower()
    out = git("clone", server.remote("alice", "secret"), str(tmp_path / "anon"), env=genv, check=False)
    assert out.returncode != 0
    assert not (tmp_path / "b" / "s.txt").exists() and not (tmp_path / "anon" / "s.txt").exists()
    git("clone", "-q", server.remote("alice", "secret", token=alice), str(tmp_path / "a"), env=genv)
    assert (tmp_path / "a" / "s.txt").read_text() == "secret\n"


def test_pull_collaborator_cannot_push(
    server: Server, alice: str, genv: dict[str, str], tmp_path: Path
) -> None:
    bob = server.create_user("bob")
    server.create_repo(alice, "shared", private=True)
    work = new_work(tmp_path, genv)
    commit(work, genv, "a.txt", "a\n")
    git("push", "-q", server.remote("alice", "shared", token=alice), "main", cwd=work, env=genv)
    r = server.api("PUT", "/repos/alice/shared/collaborators/bob", token=alice, json={"permission": "pull"})
    assert r.status_code in (201, 204), r.text
    clone = tmp_path / "bob"
    git("clone", "-q", server.remote("alice", "shared", token=bob), str(clone), env=genv)
    before = rev(clone, genv, "HEAD")
    commit(clone, genv, "b.txt", "b\n")
    out = git("push", "origin", "main", cwd=clone, env=genv, check=False)
    assert out.returncode != 0 and "403" in out.stderr
    r = httpx.get(f"{server.url}/alice/shared/info/refs", params={"service": "git-receive-pack"}, auth=basic(bob))
    assert r.status_code == 403 and "write access" in r.text
    assert remote_refs(server.remote("alice", "shared", token=alice), genv)["refs/heads/main"] == before
    # On a public repository a stranger may read, not write.
    server.create_repo(alice, "open")
    url = server.remote("alice", "open", token=bob)
    out = git("push", url, "main", cwd=clone, env=genv, check=False)
    assert out.returncode != 0 and "403" in out.stderr


def test_maintenance_mode_answers_503(server: Server, project: tuple[str, Path], genv: dict[str, str]) -> None:
    url, _ = project
    env = server.env()
    on = subprocess.run([*BULWARK, "maintenance", "on", "-m", "disk upgrade"], env=env, capture_output=True)
    assert on.returncode == 0, on.stderr
    try:
        r = httpx.get(f"{server.url}/alice/proj/info/refs", params={"service": "git-upload-pack"})
        assert r.status_code == 503 and "disk upgrade" in r.text
        out = git("ls-remote", url, env=genv, check=False)
        assert out.returncode != 0 and "503" in out.stderr
    finally:
        subprocess.run([*BULWARK, "maintenance", "off"], env=env, capture_output=True, check=True)
    assert "refs/heads/main" in remote_refs(url, genv)


# -- bad input -----------------------------------------------------------------------------------


def test_bad_input_is_rejected_and_harmless(
    server: Server, alice: str, project: tuple[str, Path], genv: dict[str, str], tmp_path: Path
) -> None:
    url, work = project
    head = rev(work, genv, "HEAD")
    fds = open_fds(server)
    auth = basic(alice)
    rp = f"{server.url}/alice/proj/git-receive-pack"
    up = f"{server.url}/alice/proj/git-upload-pack"

    def post(target: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.post(target, content=body, headers=headers or (RP_TYPE if target == rp else UP_TYPE),
                          auth=auth, timeout=30)

    # Malformed pkt-lines: refused before git starts, with a message saying what is wrong.
    for body, message in [
        (b"zzzz", "bad length header"),
        (b"0003", "0003"),
        (b"ffff" + b"x" * 100, "exceeds 65520"),
        (b"", "empty"),
        (pktline.encode("want " + head + "\n"), "truncated"),
        (pktline.encode("want " + head)[:-3], "truncated"),
    ]:
        for target in (rp, up):
            r = post(target, body)
            assert r.status_code == 400 and message in r.text, (target, body[:20], r.text)
    # Commands that are well framed but not valid ref updates.
    for line, message in [
        (f"{ZERO} {head} refs/heads/../../config", "invalid ref name"),
        (f"{ZERO} {head} HEAD", "refs/"),
        (f"{ZERO} {head[:-1]}x refs/heads/x", "object id"),
        (f"{ZERO} {head}", "expected"),
    ]:
        r = post(rp, pktline.encode(line + "\0report-status") + pktline.flush())
        assert r.status_code == 400 and message in r.text, r.text
    # A push whose packfile is cut short.
    new = commit(work, genv, "more.bin", os.urandom(200_000))
    full = receive_body(work, genv, head, new, "refs/heads/main")
    for caps in ("report-status", "report-status side-band-64k", ""):
        body = receive_body(work, genv, head, new, "refs/heads/main", caps)
        r = post(rp, body[: len(body) // 2])
        if caps:  # git reports the failure itself, in its own protocol
            assert r.status_code == 200 and b"unpack" in r.content and b"ng refs/heads/main" in r.content
        else:
            assert r.status_code == 400 and "early EOF" in r.text, r.text
    # A fetch whose negotiation is cut short.
    wants = pktline.encode(f"want {head}\n") + pktline.flush()
    r = post(up, wants + pktline.encode(f"have {head}\n")[:20])
    assert r.status_code == 400 and "ends inside a pkt-line" in r.text, r.text
    r = post(up, wants + pktline.encode(f"have {head}\n"))
    assert r.status_code == 400 and "does not end with a flush or 'done'" in r.text, r.text
    r = post(up, wants + pktline.encode(f"have {head}\n") + pktline.encode("done\n"))
    assert r.status_code == 200 and b"PACK" in r.content
    # Corrupt and truncated gzip.
    gz = {**RP_TYPE, "Content-Encoding": "gzip"}
    r = post(rp, b"\x1f\x8b\x08\x00garbage-garbage", gz)
    assert r.status_code == 400 and "gzip" in r.text
    r = post(rp, gzip.compress(full)[:-10], gz)
    assert r.status_code == 400 and "gzip" in r.text
    r = post(rp, gzip.compress(full) + b"trailing", gz)
    assert r.status_code == 400 and "gzip" in r.text
    r = post(rp, full, {**RP_TYPE, "Content-Encoding": "br"})
    assert r.status_code == 400 and "Content-Encoding" in r.text
    r = post(rp, full, {"Content-Type": "text/plain"})
    assert r.status_code == 415
    # Names that are not repositories, and attempts to walk out of the repositories directory.
    targets = [
        "/../x/info/refs", "/%2e%2e/x/info/refs", "/alice/..%2f..%2fetc/info/refs", "/alice/%2e%2e/info/refs",
        "/alice/proj%00/info/refs", "/alice/pr%0Aoj/info/refs", "/alice/%C3%A9/info/refs", "/al%20ice/proj/info/refs",
        "/alice/proj.git.git/info/refs", "/-alice/proj/info/refs", "/alice/proj/info/refs/../../../x",
        "/alice/" + "a" * 300 + "/info/refs", "/alice/.git/info/refs", "/alice/./info/refs",
    ]
    with httpx.Client(base_url=server.url, auth=auth, timeout=30) as client:
        for target in targets:
            request = client.build_request("GET", "/", params={"service": "git-upload-pack"})
            request.extensions["target"] = target.encode() + b"?service=git-upload-pack"
            r = client.send(request)
            assert 400 <= r.status_code < 500, (target, r.status_code, r.text)
    # None of it changed anything, left a process behind or broke the server.
    assert remote_refs(url, genv)["refs/heads/main"] == head
    wait_until_no_git(server)
    assert open_fds(server) <= fds + 2
    clone = tmp_path / "after"
    git("clone", "-q", url, str(clone), env=genv)
    assert (clone / "README.md").read_text() == "hello\n"
    git("push", "-q", url, "main", cwd=work, env=genv)
    assert remote_refs(url, genv)["refs/heads/main"] == new
    fsck = server_git(server, "fsck", "--strict")
    assert fsck.returncode == 0, fsck.stderr
    assert "Traceback" not in server.log() and '"level": "error"' not in server.log()


def test_gzip_requests_are_decoded(server: Server, project: tuple[str, Path], genv: dict[str, str]) -> None:
    url, work = project
    body = pktline.encode("command=ls-refs\n") + b"0001" + pktline.encode("peel\n") + pktline.flush()
    headers = {**UP_TYPE, "Git-Protocol": "version=2", "Content-Encoding": "gzip"}
    r = httpx.post(f"{server.url}/alice/proj/git-upload-pack", content=gzip.compress(body), headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-git-upload-pack-result"
    assert f"{rev(work, genv, 'HEAD')} refs/heads/main".encode() in r.content
    # git compresses fetch requests over 1 KiB: many refs make the client do it.
    for i in range(60):
        git("branch", f"branch-with-a-long-name-{i:03}", cwd=work, env=genv)
    git("push", "-q", url, "--all", cwd=work, env=genv)
    out = git("-c", "protocol.version=0", "clone", "--mirror", url, str(work.parent / "mirror"), env={
        **genv, "GIT_TRACE_CURL": str(work.parent / "curl"), "GIT_TRACE_CURL_NO_DATA": "1"})
    assert out.returncode == 0
    assert "Content-Encoding: gzip" in (work.parent / "curl").read_text()
    assert len(git("branch", cwd=work.parent / "mirror", env=genv).stdout.splitlines()) == 61


def test_gzip_decoding_is_bounded() -> None:
    bomb = gzip.compress(b"0004" * (12 * 1024 * 1024))
    decoder = Gunzip()
    total = 0
    with pytest.raises(BadRequest, match="inflates more than 100 times"):
        for i in range(0, len(bomb), 1000):
            for piece in decoder.feed(bomb[i : i + 1000]):
                assert len(piece) <= CHUNK
                total += len(piece)
    assert total <= INFLATE_FREE  # refused early, not after inflating it all
    # What git really sends compresses a few times at most, and is inflated whole.
    haves = b"".join(pktline.encode(f"have {hashlib.sha1(str(i).encode()).hexdigest()}\n")
                     for i in range(200_000)) + pktline.flush()
    decoder = Gunzip()
    assert b"".join(decoder.feed(gzip.compress(haves))) == haves
    decoder.finish()
    decoder = Gunzip()
    list(decoder.feed(gzip.compress(haves)[:100]))
    with pytest.raises(BadRequest, match="truncated"):
        decoder.finish()
    for corrupt in (bomb[:10] + b"\xff" * 20, b"not gzip at all", gzip.compress(b"x")[:-8] + b"\0" * 8):
        with pytest.raises(BadRequest, match="corrupt"):
            decoder = Gunzip()
            list(decoder.feed(corrupt))
            decoder.finish()


def test_size_limit_and_idle_timeout(tmp_path: Path, genv: dict[str, str]) -> None:
    srv = Server(
        data_dir=tmp_path / "small",
        extra_env={"BULWARK_MAX_PUSH_BYTES": "300000", "BULWARK_BODY_IDLE_TIMEOUT": "1"},
    ).start()
    try:
        token = srv.create_user("alice")
        srv.create_repo(token, "proj")
        url = srv.remote("alice", "proj", token=token)
        work = new_work(tmp_path, genv)
        head = commit(work, genv, "small.txt", "small\n")
        git("push", "-q", url, "main", cwd=work, env=genv)
        rp = f"{srv.url}/alice/proj/git-receive-pack"
        auth = basic(token)
        fds = open_fds(srv)

        # A declared length over the limit is refused before git starts, as receive-pack refuses a
        # ref, so that git shows why (a bare 413 reaches the user as "the remote end hung up").
        big = commit(work, genv, "big.bin", os.urandom(600_000))
        body = receive_body(work, genv, head, big, "refs/heads/main")
        r = httpx.post(rp, content=body, headers=RP_TYPE, auth=auth, timeout=30)
        assert r.status_code == 200 and b"ng refs/heads/main this push is larger than the limit" in r.content
        # One far over the limit is not even read.
        with socket.create_connection((srv.host, srv.port), timeout=30) as conn:
            credentials = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            conn.sendall(f"POST /alice/proj/git-receive-pack HTTP/1.1\r\nHost: x\r\n"
                         f"Content-Type: {RP_TYPE['Content-Type']}\r\nAuthorization: Basic {credentials}\r\n"
                         f"Content-Length: {200 * 1024**2}\r\n\r\n".encode())
            assert conn.recv(4096).startswith(b"HTTP/1.1 413")

        # So is a chunked body once it passes the limit.
        def chunks() -> Iterator[bytes]:
            for i in range(0, len(body), 50_000):
                yield body[i : i + 50_000]

        # So is a chunked body once it passes the limit.
        r = httpx.post(rp, content=chunks(), headers=RP_TYPE, auth=auth, timeout=30)
        assert r.status_code == 200 and b"ng refs/heads/main this push is larger than the limit" in r.content
        out = git("push", url, "main", cwd=work, env=genv, check=False)
        assert out.returncode != 0
        assert "! [remote rejected] main -> main (this push is larger than the limit of 300000 bytes)" in out.stderr
        assert "hung up" not in out.stderr
        assert remote_refs(url, genv)["refs/heads/main"] == head

        # A client that stops sending.
        def stalls() -> Iterator[bytes]:
            yield body[:1000]
            time.sleep(3)
            yield body[1000:2000]

        started = time.monotonic()
        r = httpx.post(rp, content=stalls(), headers=RP_TYPE, auth=auth, timeout=30)
        assert r.status_code == 408 and time.monotonic() - started < 10

        def stalls_after_commands() -> Iterator[bytes]:
            yield body[:300]
            yield body[300:5000]
            time.sleep(3)
            yield body[5000:6000]

        r = httpx.post(rp, content=stalls_after_commands(), headers=RP_TYPE, auth=auth, timeout=30)
        assert r.status_code == 408
        # A push under the limit still works.
        git("reset", "-q", "--hard", head, cwd=work, env=genv)
        new = commit(work, genv, "ok.txt", "fine\n")
        git("push", "-q", url, "main", cwd=work, env=genv)
        assert remote_refs(url, genv)["refs/heads/main"] == new
        wait_until_no_git(srv)
        assert open_fds(srv) <= fds + 2
    finally:
        srv.stop()



def test_maintenance_reaches_git_users_as_a_remote_line(
    server: Server, project: tuple[str, Path], genv: dict[str, str], tmp_path: Path
) -> None:
    url, work = project
    on = subprocess.run([*BULWARK, "maintenance", "on", "--message", "kernel upgrade until 10:00",
                         "--data-dir", str(server.data_dir)], capture_output=True, text=True, env=server.env())
    assert on.returncode == 0, on.stderr
    commit(work, genv, "README.md", "during maintenance\n")
    pushed = git("push", url, "main", cwd=work, env=genv, check=False)
    fetched = git("fetch", url, cwd=work, env=genv, check=False)
    for result in (pushed, fetched):
        assert result.returncode != 0
        assert "remote: kernel upgrade until 10:00" in result.stderr, result.stderr
        assert "hung up" not in result.stderr, result.stderr
    off = subprocess.run([*BULWARK, "maintenance", "off", "--data-dir", str(server.data_dir)],
                         capture_output=True, text=True, env=server.env())
    assert off.returncode == 0, off.stderr
    assert git("push", "-q", url, "main", cwd=work, env=genv, check=False).returncode == 0


def test_packets_are_counted_not_kept() -> None:
    empty = b"0004" * 500_000 + b"0000"

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(empty), CHUNK):
            yield empty[i : i + CHUNK]

    with pytest.raises(PktLineError, match="more than 400000 pkt-lines"):
        asyncio.run(first_section(body(), 16 * 1024**2, max_packets=400_000, keep=1))
    prelude, kept = asyncio.run(first_section(body(), 16 * 1024**2, max_packets=600_000, keep=1))
    assert kept == [pktline.Packet(pktline.Kind.DATA, b"")] and prelude.endswith(b"0000")
    framing = FetchFraming(max_packets=1000)
    framing.feed(b"0004" * 1000)
    with pytest.raises(PktLineError, match="more than 1000 pkt-lines"):
        framing.feed(b"0004")


def test_a_gzip_bomb_of_empty_packets_is_refused_at_once(server: Server, project: tuple[str, Path]) -> None:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = b"".join([compressor.compress(b"0004" * 1024) for _ in range(4095)]
                    + [compressor.compress(b"0000"), compressor.flush()])
    answer = httpx.post(f"{server.url}/alice/proj.git/git-upload-pack", content=bomb, timeout=60, headers={
        "Content-Type": "application/x-git-upload-pack-request", "Content-Encoding": "gzip"})
    assert answer.status_code == 400
    assert "inflates more than 100 times" in answer.text
    assert httpx.get(f"{server.url}/status", timeout=10).status_code == 200


def test_a_push_that_reaches_a_node_taking_no_writes_is_refused_in_git_s_words(
    server: Server, alice: str, project: tuple[str, Path], genv: dict[str, str]
) -> None:
    # git asked info/refs before the node stopped taking writes; its POST then meets the refusal.
    _, work = project
    old = rev(work, genv, "main")
    new = commit(work, genv, "README.md", "after the advertisement\n")
    on = subprocess.run([*BULWARK, "maintenance", "on", "--message", "moving to new disks",
                         "--data-dir", str(server.data_dir)], capture_output=True, text=True, env=server.env())
    assert on.returncode == 0, on.stderr
    answer = httpx.post(f"{server.url}/alice/proj.git/git-receive-pack", auth=basic(alice), headers=RP_TYPE,
                        content=receive_body(work, genv, old, new, "refs/heads/main"), timeout=30)
    assert answer.status_code == 200
    packets = pktline.parse_all(answer.content)
    assert b"ng refs/heads/main moving to new disks\n" in [p.payload for p in packets], packets
    fetch = httpx.post(f"{server.url}/alice/proj.git/git-upload-pack", auth=basic(alice), headers=UP_TYPE,
                       content=pktline.encode(f"want {old}\n") + pktline.flush() + pktline.encode("done\n"),
                       timeout=30)
    assert fetch.status_code == 200 and fetch.content == pktline.encode("ERR moving to new disks\n")
