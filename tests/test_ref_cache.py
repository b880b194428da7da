"""Kept ref advertisements: fetches that find nothing new start no git process, and no fetch
ever sees refs older than the last acknowledged change, whoever made it."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest

from bulwark.git.adverts import AdvertisementCache, fingerprint
from bulwark.git.model import checksum_of
from bulwark.git.runner import GitRunner
from tests.support.helpers import Server, git

pytestmark = pytest.mark.timeout(120)


# -- the cache on real repositories ------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path, genv: dict[str, str]) -> Path:
    """A bare repository with one commit on main, made by the git client."""
    work = tmp_path / "work"
    git("init", "-q", "-b", "main", str(work), env=genv)
    (work / "a.txt").write_text("a\n")
    git("add", "a.txt", cwd=work, env=genv)
    git("commit", "-q", "-m", "one", cwd=work, env=genv)
    bare = tmp_path / "repo.git"
    git("clone", "-q", "--bare", str(work), str(bare), env=genv)
    return bare


def head_of(repo: Path, genv: dict[str, str]) -> str:
    return git("--git-dir", str(repo), "rev-parse", "main", env=genv).stdout.strip()


def new_commit(repo: Path, genv: dict[str, str], message: str) -> str:
    tree = git("--git-dir", str(repo), "rev-parse", "main^{tree}", env=genv).stdout.strip()
    return git("--git-dir", str(repo), "commit-tree", tree, "-p", "main", "-m", message, env=genv).stdout.strip()


def test_kept_answer_is_served_until_a_ref_changes_on_disk(repo: Path, genv: dict[str, str]) -> None:
    cache = AdvertisementCache()
    path = str(repo)
    answer, before = cache.get(path, "k")
    assert answer is None and before is not None
    assert cache.put(path, "k", before, b"refs v1")
    assert cache.get(path, "k")[0] == b"refs v1"
    # Another process (an administrator's git, say) moves a branch: the kept answer is stale.
    git("--git-dir", path, "update-ref", "refs/heads/main", new_commit(repo, genv, "two"), env=genv)
    answer, before = cache.get(path, "k")
    assert answer is None
    assert cache.put(path, "k", before, b"refs v2")
    assert cache.get(path, "k")[0] == b"refs v2"
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries, stats.bytes) == (2, 2, 1, len(b"refs v2"))


@pytest.mark.parametrize(
    "change",
    [
        ["update-ref", "refs/heads/topic", "main"],
        ["update-ref", "refs/tags/deep/nested/v1", "main"],
        ["symbolic-ref", "HEAD", "refs/heads/other"],
        ["pack-refs", "--all"],
        ["config", "uploadpack.hideRefs", "refs/tags"],
    ],
    ids=["new-branch", "nested-tag", "head", "pack-refs", "config"],
)
def test_every_kind_of_change_makes_the_answer_stale(repo: Path, genv: dict[str, str], change: list[str]) -> None:
    cache = AdvertisementCache()
    _, before = cache.get(str(repo), "k")
    assert cache.put(str(repo), "k", before, b"old")
    git("--git-dir", str(repo), *change, env=genv)
    assert cache.get(str(repo), "k")[0] is None


def test_two_updates_of_one_ref_in_a_row_are_each_seen(repo: Path, genv: dict[str, str]) -> None:
    # The same ref moved twice faster than the file system's clock ticks: inodes still differ.
    cache = AdvertisementCache()
    path = str(repo)
    for i in range(20):
        _, before = cache.get(path, "k")
        assert cache.put(path, "k", before, f"state {i}".encode())
        git("--git-dir", path, "update-ref", "refs/heads/main", new_commit(repo, genv, f"c{i}"), env=genv)
        assert cache.get(path, "k")[0] is None, f"stale answer after update {i}"


def test_an_answer_read_during_a_change_is_not_kept(repo: Path, genv: dict[str, str]) -> None:
    cache = AdvertisementCache()
    _, before = cache.get(str(repo), "k")
    git("--git-dir", str(repo), "update-ref", "refs/heads/topic", "main", env=genv)  # while git "ran"
    assert not cache.put(str(repo), "k", before, b"maybe stale")
    assert cache.get(str(repo), "k")[0] is None


def test_invalidate_from_this_process(repo: Path) -> None:
    cache = AdvertisementCache()
    _, before = cache.get(str(repo), "k")
    cache.put(str(repo), "k", before, b"old")
    cache.invalidate(str(repo))
    assert cache.get(str(repo), "k")[0] is None


def test_size_bounds(repo: Path) -> None:
    cache = AdvertisementCache(max_bytes=100, max_entry=60)
    _, before = cache.get(str(repo), "a")
    assert not cache.put(str(repo), "big", before, b"x" * 61)  # one answer larger than an entry may be
    assert cache.put(str(repo), "a", before, b"a" * 50)
    assert cache.put(str(repo), "b", before, b"b" * 50)
    assert cache.put(str(repo), "c", before, b"c" * 50)  # pushes out the least recently used
    assert cache.get(str(repo), "a")[0] is None
    assert cache.get(str(repo), "c")[0] == b"c" * 50
    assert cache.stats().bytes <= 100
    off = AdvertisementCache(max_bytes=0)
    assert off.get(str(repo), "a") == (None, None)
    assert not off.put(str(repo), "a", None, b"x")


def test_too_many_loose_refs_are_not_fingerprinted(repo: Path, genv: dict[str, str]) -> None:
    lines = "".join(f"create refs/heads/b{i} main\n" for i in range(40))
    subprocess.run(["git", "--git-dir", str(repo), "update-ref", "--stdin"], input=lines.encode(), env=genv,
                   check=True)
    assert fingerprint(str(repo), max_entries=30) is None
    cache = AdvertisementCache(max_loose=30)
    answer, before = cache.get(str(repo), "k")
    assert (answer, before) == (None, None)
    git("--git-dir", str(repo), "pack-refs", "--all", env=genv)
    assert fingerprint(str(repo), max_entries=30) is not None


class CountingRunner(GitRunner):
    """A runner that counts the ref listings it asks git for."""

    listings = 0

    def _in(self, storage_id: str, args: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        if args and args[0] == "for-each-ref":
            self.listings += 1
        return super()._in(storage_id, args, **kwargs)


def test_ref_checksums_are_kept_until_the_refs_change(repo: Path, genv: dict[str, str], tmp_path: Path) -> None:
    runner = CountingRunner(tmp_path / "repositories")
    storage_id = "ab12"
    runner.path(storage_id).parent.mkdir(parents=True)
    repo = repo.rename(runner.path(storage_id))
    first = runner.ref_checksum(storage_id)
    assert first == checksum_of(runner.refs(storage_id))
    listings = runner.listings
    assert runner.ref_checksum(storage_id) == first
    assert runner.listings == listings  # kept: no git process
    # A ref moved by another process (a fetch, git run by hand): computed afresh.
    git("--git-dir", str(repo), "update-ref", "refs/heads/main", new_commit(repo, genv, "two"), env=genv)
    second = runner.ref_checksum(storage_id)
    assert second != first and runner.listings == listings + 1
    assert second == checksum_of(runner.refs(storage_id))
    runner.refs_changed(storage_id)  # this process's own write
    assert runner.ref_checksum(storage_id) == second and runner.listings == listings + 3
    off = CountingRunner(tmp_path / "repositories", advert_cache_bytes=0)  # no fingerprints: always asks git
    off.ref_checksum(storage_id)
    off.ref_checksum(storage_id)
    assert off.listings == 2


# -- through a running server with the git client ----------------------------------------------


def cache_counts(server: Server) -> tuple[int, int]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    hits = re.search(r"^bulwark_ref_cache_hits_total (\S+)$", text, re.M)
    misses = re.search(r"^bulwark_ref_cache_misses_total (\S+)$", text, re.M)
    assert hits and misses, text[:2000]
    return int(float(hits.group(1))), int(float(misses.group(1)))


def git_runs(server: Server) -> int:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    pattern = r'^bulwark_git_operations_total\{[^}]*service="upload-pack"[^}]*\} (\S+)$'
    return sum(int(float(v)) for v in re.findall(pattern, text, re.M))


@pytest.fixture
def pushed(server: Server, genv: dict[str, str], tmp_path: Path) -> tuple[str, Path, str]:
    """alice/proj with one commit; its URL with alice's token, the work tree and the token."""
    token = server.create_user("alice")
    server.create_repo(token, "proj")
    url = server.remote("alice", "proj", token=token)
    work = tmp_path / "work"
    git("init", "-q", "-b", "main", str(work), env=genv)
    (work / "f").write_text("0\n")
    git("add", "f", cwd=work, env=genv)
    git("commit", "-q", "-m", "0", cwd=work, env=genv)
    git("push", "-q", url, "main", cwd=work, env=genv)
    return url, work, token


@pytest.mark.system
@pytest.mark.parametrize("protocol", ["2", "0"])
def test_noop_fetches_start_no_git(server: Server, pushed: tuple[str, Path, str], genv: dict[str, str],
                                   tmp_path: Path, protocol: str) -> None:
    url, _, _ = pushed
    clone = tmp_path / "clone"
    git("-c", f"protocol.version={protocol}", "clone", "-q", url, str(clone), env=genv)
    git("-c", f"protocol.version={protocol}", "fetch", "-q", "origin", cwd=clone, env=genv)  # fills the cache
    runs, (hits, _) = git_runs(server), cache_counts(server)
    for _ in range(5):
        out = git("-c", f"protocol.version={protocol}", "fetch", "origin", cwd=clone, env=genv)
        assert out.returncode == 0
    assert git_runs(server) == runs, "a fetch that found nothing new started git"
    assert cache_counts(server)[0] >= hits + 5


@pytest.mark.system
@pytest.mark.parametrize("protocol", ["2", "0"])
def test_every_push_is_seen_by_the_next_fetch(server: Server, pushed: tuple[str, Path, str], genv: dict[str, str],
                                              tmp_path: Path, protocol: str) -> None:
    url, work, _ = pushed
    clone = tmp_path / "clone"
    git("clone", "-q", url, str(clone), env=genv)
    for i in range(1, 16):
        (work / "f").write_text(f"{i}\n")
        git("commit", "-q", "-am", str(i), cwd=work, env=genv)
        git("push", "-q", url, "main", cwd=work, env=genv)
        pushed_oid = git("rev-parse", "HEAD", cwd=work, env=genv).stdout.strip()
        listed = git("-c", f"protocol.version={protocol}", "ls-remote", url, "refs/heads/main", env=genv).stdout
        assert listed.split()[0] == pushed_oid, f"push {i} not listed"
        git("-c", f"protocol.version={protocol}", "fetch", "-q", "origin", cwd=clone, env=genv)
        assert git("rev-parse", "origin/main", cwd=clone, env=genv).stdout.strip() == pushed_oid


@pytest.mark.system
def test_changes_made_outside_pushes_are_seen(server: Server, pushed: tuple[str, Path, str],
                                              genv: dict[str, str]) -> None:
    url, work, token = pushed
    first = git("rev-parse", "HEAD", cwd=work, env=genv).stdout.strip()
    assert "refs/heads/api" not in git("ls-remote", url, env=genv).stdout
    # Through the API.
    r = server.api("POST", "/repos/alice/proj/git/refs", token=token, json={"ref": "refs/heads/api", "sha": first})
    assert r.status_code == 201, r.text
    assert f"{first}\trefs/heads/api" in git("ls-remote", url, env=genv).stdout
    # By an administrator's git on the server's disk, behind Bulwark's back.
    (repo_dir,) = (server.data_dir / "repositories").glob("*/*.git")
    git("--git-dir", str(repo_dir), "update-ref", "refs/heads/by-hand", first, env=genv)
    assert f"{first}\trefs/heads/by-hand" in git("ls-remote", url, env=genv).stdout
    git("--git-dir", str(repo_dir), "update-ref", "-d", "refs/heads/by-hand", env=genv)
    assert "refs/heads/by-hand" not in git("ls-remote", url, env=genv).stdout


@pytest.mark.system
def test_kept_answers_do_not_skip_permissions(server: Server, genv: dict[str, str], tmp_path: Path) -> None:
    token = server.create_user("carol")
    server.create_repo(token, "secret", private=True)
    url = server.remote("carol", "secret", token=token)
    for _ in range(2):  # the second is answered from what the first kept
        assert git("ls-remote", url, env=genv).returncode == 0
    anonymous = server.remote("carol", "secret")
    out = git("ls-remote", anonymous, env=genv, check=False)
    assert out.returncode != 0
    r = httpx.get(f"{anonymous}/info/refs?service=git-upload-pack", headers={"Git-Protocol": "version=2"})
    assert r.status_code == 401
    stranger = server.create_user("mallory")
    r = httpx.get(f"{server.remote('carol', 'secret')}/info/refs?service=git-upload-pack", auth=("x", stranger))
    assert r.status_code == 404


@pytest.mark.system
def test_cache_can_be_turned_off(tmp_path: Path, genv: dict[str, str]) -> None:
    server = Server(data_dir=tmp_path / "node", extra_env={"BULWARK_REF_CACHE_MB": "0"}).start()
    try:
        token = server.create_user("dave")
        server.create_repo(token, "p")
        url = server.remote("dave", "p", token=token)
        for _ in range(3):
            git("ls-remote", url, env=genv)
        assert cache_counts(server) == (0, 0)
    finally:
        server.stop()
