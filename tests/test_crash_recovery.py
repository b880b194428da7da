"""A standalone node killed with SIGKILL in the middle of pushes comes back with every branch
writable at once: what its dead git processes left behind is cleared, nobody deletes a file."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from bulwark.backup import barrier
from tests.support.helpers import Server, bulwark, git

pytestmark = [pytest.mark.timeout(300), pytest.mark.system]

BRANCHES = ("b1", "b2", "b3")


def repo_dir(server: Server) -> Path:
    [path] = (server.data_dir / "repositories").glob("*/*.git")
    return path


def commit(work: Path, genv: dict[str, str], name: str, size: int = 0) -> None:
    (work / name).write_bytes(os.urandom(size) if size else name.encode())
    git("add", name, cwd=work, env=genv)
    git("commit", "-q", "-m", name, cwd=work, env=genv)


def fsck_clean(server: Server) -> None:
    out = bulwark("fsck", "--data-dir", str(server.data_dir), env=server.env())
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 repository checked, 0 failed" in out.stdout


def push_every_branch(server: Server, work: Path, genv: dict[str, str], url: str, tag: str) -> None:
    """A new commit on each branch, pushed at once: any stale lock would make one fail."""
    git("fetch", "-q", "origin", cwd=work, env=genv)
    for branch in BRANCHES:
        git("checkout", "-q", "-B", branch, f"origin/{branch}", cwd=work, env=genv)
        commit(work, genv, f"{tag}-{branch}")
        out = git("push", "--porcelain", url, f"HEAD:refs/heads/{branch}", cwd=work, env=genv, check=False)
        assert out.returncode == 0, f"push to {branch} failed:\n{out.stdout}{out.stderr}\n{server.log()}"
    git("fetch", "-q", "origin", cwd=work, env=genv)
    for branch in BRANCHES:
        assert git("rev-parse", f"origin/{branch}", cwd=work, env=genv).stdout.strip() == \
            git("rev-parse", branch, cwd=work, env=genv).stdout.strip()


def kill_all(server: Server) -> None:
    """SIGKILL the server and every git process it started (one session): a crash of the whole
    service, the case where git gets no chance to remove its own files."""
    assert server.proc is not None
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait(10)


@pytest.fixture
def setup(tmp_path: Path, genv: dict[str, str]) -> tuple[Server, Path, str]:
    server = Server(data_dir=tmp_path / "node").start()
    token = server.create_user("alice")
    server.create_repo(token, "site")
    url = server.remote("alice", "site", token=token)
    work = tmp_path / "work"
    git("init", "-q", "-b", "main", str(work), env=genv)
    commit(work, genv, "first")
    for branch in ("main", *BRANCHES):
        git("push", "-q", url, f"HEAD:refs/heads/{branch}", cwd=work, env=genv)
    git("remote", "add", "origin", url, cwd=work, env=genv)
    git("fetch", "-q", "origin", cwd=work, env=genv)
    return server, work, url


def test_leftovers_of_a_stopped_node_are_cleared_when_it_starts(
    setup: tuple[Server, Path, str], genv: dict[str, str]
) -> None:
    server, work, url = setup
    server.stop()
    repo = repo_dir(server)
    (repo / "refs" / "heads" / "b1.lock").write_text("0" * 40 + "\n")
    (repo / "packed-refs.lock").write_text("")
    (repo / "objects" / "pack" / "tmp_pack_x").write_bytes(b"PACK")
    (repo / "objects" / "incoming-xyz" / "pack").mkdir(parents=True)
    old = time.time() - 60  # fsck reports only what is older than the grace
    for rel in ("refs/heads/b1.lock", "packed-refs.lock", "objects/pack/tmp_pack_x", "objects/incoming-xyz/pack",
                "objects/incoming-xyz"):
        os.utime(repo / rel, (old, old))
    failed = bulwark("fsck", "--data-dir", str(server.data_dir), env=server.env())
    assert failed.returncode == 1 and "left by a git process that died" in failed.stdout, failed.stdout

    server.start()
    push_every_branch(server, work, genv, url, "after-start")
    assert not (repo / "refs" / "heads" / "b1.lock").exists()
    assert not (repo / "objects" / "incoming-xyz").exists()
    assert "cleared 2 stale lock files, 1 temporary pack file and 1 quarantine directory in alice/site" in server.log()
    fsck_clean(server)
    server.stop()


def test_leftovers_a_lingering_process_held_at_the_start_are_cleared_once_it_has_gone(
    setup: tuple[Server, Path, str], genv: dict[str, str]
) -> None:
    """A git of the killed run can outlive its node for seconds (SIGKILL waits for a disk write);
    the start-up pass leaves that repository alone, and clears it once the process has gone."""
    server, work, url = setup
    server.stop()
    repo = repo_dir(server)
    pack = repo / "objects" / "pack" / "tmp_pack_lingering"
    pack.write_bytes(b"PACK")
    old = time.time() - 60
    os.utime(pack, (old, old))
    lingering = subprocess.Popen(["sleep", "60"], cwd=repo / "objects")
    try:
        server.start()
        assert pack.exists(), "a repository a live process works in must be left alone"
    finally:
        lingering.kill()
        lingering.wait()
    deadline = time.monotonic() + 30
    while pack.exists():
        assert time.monotonic() < deadline, "the leftover was never cleared"
        time.sleep(0.2)
    assert "cleared 1 stale temporary pack file in alice/site: objects/pack/tmp_pack_lingering" in server.log()
    push_every_branch(server, work, genv, url, "after-lingering")
    fsck_clean(server)
    server.stop()


def test_a_stale_lock_on_a_running_node_is_cleared_before_the_next_push(
    setup: tuple[Server, Path, str], genv: dict[str, str]
) -> None:
    server, work, url = setup
    lock = repo_dir(server) / "refs" / "heads" / "b2.lock"
    lock.write_text("0" * 40 + "\n")
    old = time.time() - 60  # older than the grace: no git of the node is writing it
    os.utime(lock, (old, old))
    push_every_branch(server, work, genv, url, "running")
    assert "cleared 1 stale lock file in" in server.log()
    fsck_clean(server)
    server.stop()


def test_kill_9_during_pushes_leaves_every_branch_writable(
    setup: tuple[Server, Path, str], genv: dict[str, str], tmp_path: Path
) -> None:
    server, work, url = setup
    repo = repo_dir(server)
    rng = random.Random(20240611)  # the kill moments of a failing run can be replayed
    for round_ in range(5):
        clones = []
        for branch in BRANCHES:
            clone = tmp_path / f"push-{round_}-{branch}"
            git("clone", "-q", "-b", branch, url, str(clone), env=genv)
            commit(clone, genv, f"big-{round_}-{branch}", size=2_000_000)
            clones.append((branch, clone))
        pushes = [
            subprocess.Popen(["git", "push", "-q", "origin", f"HEAD:refs/heads/{branch}"], cwd=clone, env=genv,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for branch, clone in clones
        ]
        if round_ % 2 == 0:
            # The worst moment, every time: each push holds its ref's lock, waiting in the
            # reference-transaction hook (a held backup barrier keeps it there).
            with barrier.held(server.data_dir):
                locks = [repo / "refs" / "heads" / f"{b}.lock" for b in BRANCHES]
                deadline = time.monotonic() + 60
                while not all(p.exists() for p in locks):
                    assert time.monotonic() < deadline, server.log()
                    time.sleep(0.02)
                kill_all(server)
            assert all(p.exists() for p in locks)  # the premise: the crash left them
        else:
            threading.Event().wait(rng.uniform(0.05, 1.0))  # somewhere in the transfer or the update
            kill_all(server)
        for push in pushes:
            push.wait(60)
        server.start()
        push_every_branch(server, work, genv, url, f"round-{round_}")
        fsck_clean(server)
    server.stop()


def test_fsck_on_a_node_taking_pushes_reports_no_leftovers_of_live_pushes(
    setup: tuple[Server, Path, str], genv: dict[str, str], tmp_path: Path
) -> None:
    """A push waiting its turn (here at a held backup barrier) holds its ref's lock for as long
    as it waits; fsck must not call it a dead git's, however old it is."""
    server, _work, url = setup
    repo = repo_dir(server)
    clone = tmp_path / "waiting"
    git("clone", "-q", "-b", "b1", url, str(clone), env=genv)
    commit(clone, genv, "waiting", size=200_000)
    with barrier.held(server.data_dir):
        push = subprocess.Popen(["git", "push", "-q", "origin", "HEAD:refs/heads/b1"], cwd=clone, env=genv,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        lock = repo / "refs" / "heads" / "b1.lock"
        deadline = time.monotonic() + 60
        while not lock.exists():
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.02)
        old = time.time() - 60  # as if it had waited a minute
        os.utime(lock, (old, old))
        fsck_clean(server)
    assert push.wait(60) == 0
    fsck_clean(server)
    server.stop()


def test_fsck_while_pushes_land_does_not_report_them_as_damage(
    setup: tuple[Server, Path, str], genv: dict[str, str], tmp_path: Path
) -> None:
    """git fsck lists objects before it reads refs, so a push landing in between looks like a
    missing commit; bulwark fsck checks such a repository again."""
    server, _work, url = setup
    clone = tmp_path / "busy"
    git("clone", "-q", "-b", "b2", url, str(clone), env=genv)
    for n in range(4):  # objects enough that each check takes a while: a wider window
        commit(clone, genv, f"bulk-{n}", size=4_000_000)
    git("push", "-q", "origin", "HEAD:refs/heads/b2", cwd=clone, env=genv)
    stop = threading.Event()
    pushed: list[int] = []

    def writer() -> None:
        while not stop.is_set():
            commit(clone, genv, f"busy-{len(pushed)}", size=20_000)
            out = git("push", "-q", "origin", "HEAD:refs/heads/b2", cwd=clone, env=genv, check=False)
            pushed.append(out.returncode)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(10):
            fsck_clean(server)
    finally:
        stop.set()
        thread.join(60)
    assert pushed and all(code == 0 for code in pushed), pushed
    server.stop()


def test_a_config_that_does_not_parse_is_reported_at_every_start_until_it_is_fixed(
    setup: tuple[Server, Path, str], genv: dict[str, str]
) -> None:
    server, work, url = setup
    server.stop()
    config = repo_dir(server) / "config"
    good = config.read_text()
    config.write_text(good + "[core\n")  # as a crash in the middle of a hand edit leaves it
    said = "the config of alice/site does not parse"
    for starts in (1, 2):
        server.start()
        server.stop()
        assert server.log_path.read_text().count(said) == starts, server.log()
    config.write_text(good)
    for n in range(2):  # fixed: not reported again
        server.start()
        push_every_branch(server, work, genv, url, f"fixed-{n}")
        server.stop()
        assert server.log_path.read_text().count(said) == 2, server.log()
