"""The repository browser's reads (bulwark.git.browse) against real git repositories."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import tarfile
import zipfile
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import cast

import pytest

from bulwark.errors import InvalidInput, NotFound
from bulwark.git import browse
from bulwark.git.model import TreeEntry
from bulwark.git.runner import GitRunner

SID = "ab12"


class Repo:
    """A bare repository of a runner, filled from a work tree by commits and pushes."""

    def __init__(self, tmp_path: Path) -> None:
        self.runner = GitRunner(tmp_path / "repos")
        self.bare = self.runner.init_bare(SID, "main")
        self.work = tmp_path / "work"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        self.env.update(HOME=str(tmp_path), GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull)
        self.clock = 1_700_000_000
        self.git("init", "--quiet", "--initial-branch=main", str(self.work), cwd=tmp_path)

    def git(self, *args: str, cwd: Path | None = None) -> str:
        proc = subprocess.run(["git", *args], cwd=cwd or self.work, env=self.env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    def commit(self, files: dict[str, bytes | None], message: str, author: str = "Ada") -> str:
        for name, content in files.items():
            target = self.work / name
            if content is None:
                target.unlink()
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
        self.clock += 60
        date = f"@{self.clock} +0200"
        self.env.update(GIT_AUTHOR_NAME=author, GIT_AUTHOR_EMAIL=f"{author.lower()}@example.com",
                        GIT_COMMITTER_NAME="C", GIT_COMMITTER_EMAIL="c@example.com",
                        GIT_AUTHOR_DATE=date, GIT_COMMITTER_DATE=date)
        self.git("add", "-A")
        self.git("commit", "--quiet", "--allow-empty", "-m", message)
        self.git("push", "--quiet", "--force", str(self.bare), "HEAD")
        return self.git("rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path)


def blob_sha(repo: Repo, rev: str, path: str) -> str:
    entry = repo.runner.tree_entry(SID, rev, path)
    assert entry is not None
    return entry.sha


def test_a_blob_head_is_the_start_of_the_blob_and_says_whether_it_is_binary(repo: Repo) -> None:
    big = os.urandom(3 * 1024 * 1024).replace(b"\0", b"x")
    head = repo.commit({"small.txt": b"hello\n", "pic.bin": b"PNG\0\x01\x02", "big.txt": big}, "files")
    small = browse.read_blob_head(repo.runner, SID, blob_sha(repo, head, "small.txt"))
    assert (small.data, small.size, small.truncated, small.binary) == (b"hello\n", 6, False, False)
    assert browse.read_blob_head(repo.runner, SID, blob_sha(repo, head, "pic.bin")).binary
    cut = browse.read_blob_head(repo.runner, SID, blob_sha(repo, head, "big.txt"), limit=64 * 1024)
    assert (cut.size, len(cut.data), cut.truncated, cut.binary) == (len(big), 64 * 1024, True, False)
    assert cut.data == big[: 64 * 1024]
    # A NUL past git's 8000-byte probe does not make text binary.
    late = repo.commit({"late.txt": b"a" * 9000 + b"\0"}, "late NUL")
    assert not browse.read_blob_head(repo.runner, SID, blob_sha(repo, late, "late.txt")).binary
    tree = repo.runner.tree_entry(SID, head, "")
    assert tree is not None
    for missing in (tree.sha, "0" * 40, "--batch-all-objects"):
        with pytest.raises(NotFound):
            browse.read_blob_head(repo.runner, SID, missing)


def test_a_commit_diff_shows_every_kind_of_change(repo: Repo) -> None:
    text = b"".join(b"line %d\n" % i for i in range(1, 21))
    root = repo.commit({"a.txt": b"one\ntwo\nthree\n", "old name.txt": text, "gone.txt": b"bye\n",
                        "data.bin": b"\0\1\2", "empty": b"", "run.sh": b"echo\n"}, "root")
    os.symlink("a.txt", repo.work / "link")
    repo.commit({}, "a link")
    (repo.work / "dir ü").mkdir()
    (repo.work / "old name.txt").rename(repo.work / "dir ü" / "new näme.txt")
    (repo.work / "run.sh").chmod(0o755)
    (repo.work / "link").unlink()
    head = repo.commit({"a.txt": b"one\n2\nthree\n", "gone.txt": None, "data.bin": b"\0\3",
                        "sp ace ü.txt": b"new\n", "link": b"now a file\n"}, "everything")

    first = browse.commit_diff(repo.runner, SID, root)
    assert not first.truncated
    assert {f.path: (f.status, f.additions, f.binary) for f in first.files} == {
        "a.txt": ("added", 3, False), "old name.txt": ("added", 20, False), "gone.txt": ("added", 1, False),
        "data.bin": ("added", 0, True), "empty": ("added", 0, False), "run.sh": ("added", 1, False)}

    diff = browse.commit_diff(repo.runner, SID, head)
    files = {f.path: f for f in diff.files}
    assert not diff.truncated and not any(f.truncated for f in diff.files)
    assert {p: f.status for p, f in files.items()} == {
        "a.txt": "modified", "data.bin": "modified", "dir ü/new näme.txt": "renamed", "gone.txt": "deleted",
        "link": "type-changed", "run.sh": "modified", "sp ace ü.txt": "added"}
    modified = files["a.txt"]
    assert (modified.additions, modified.deletions) == (1, 1)
    assert [(d.kind, d.old, d.new, d.text) for d in modified.lines] == [
        ("hunk", None, None, "@@ -1,3 +1,3 @@"), ("context", 1, 1, "one"), ("del", 2, None, "two"),
        ("add", None, 2, "2"), ("context", 3, 3, "three")]
    assert files["dir ü/new näme.txt"].old_path == "old name.txt" and files["dir ü/new näme.txt"].lines == ()
    assert files["data.bin"].binary and files["data.bin"].lines == ()
    assert [d.text for d in files["gone.txt"].lines] == ["@@ -1 +0,0 @@", "bye"]
    assert [d.text for d in files["sp ace ü.txt"].lines if d.kind == "add"] == ["new"]
    assert files["run.sh"].lines == () and (files["run.sh"].additions, files["run.sh"].deletions) == (0, 0)
    # A symlink that became a file: git shows its removal and the new file, both under one entry.
    assert [d.text for d in files["link"].lines if d.kind != "hunk"] == ["a.txt", "now a file"]


def test_a_big_diff_is_cut_at_the_limits(repo: Repo) -> None:
    repo.commit({"seed": b"x\n"}, "seed")
    many = repo.commit({f"f{i:02}.txt": b"".join(b"%d\n" % j for j in range(100)) for i in range(20)}, "many")
    by_files = browse.commit_diff(repo.runner, SID, many, max_files=5)
    assert by_files.truncated and [f.path for f in by_files.files] == [f"f{i:02}.txt" for i in range(5)]
    assert all(not f.truncated and len(f.lines) == 101 for f in by_files.files)

    by_lines = browse.commit_diff(repo.runner, SID, many, max_lines=150)
    assert by_lines.truncated and len(by_lines.files) == 20
    assert sum(len(f.lines) for f in by_lines.files) == 150
    assert [f.truncated for f in by_lines.files[:3]] == [False, True, True]
    assert all(f.additions == 100 and f.lines == () for f in by_lines.files[2:])

    by_bytes = browse.commit_diff(repo.runner, SID, many, max_bytes=1000)
    assert by_bytes.truncated and sum(len(d.text) + 1 for f in by_bytes.files for d in f.lines) < 1000

    huge_line = repo.commit({"min.js": b"x" * (3 * 1024 * 1024)}, "one long line")
    cut = browse.commit_diff(repo.runner, SID, huge_line)
    assert cut.truncated and cut.files[0].truncated and [d.kind for d in cut.files[0].lines] == ["hunk"]


def test_compare_is_three_dot_and_needs_a_common_history(repo: Repo) -> None:
    repo.commit({"base.txt": b"base\n"}, "base")
    repo.git("checkout", "--quiet", "-b", "feature")
    feature = repo.commit({"feature.txt": b"feature\n"}, "feature work")
    repo.git("push", "--quiet", str(repo.bare), "feature")
    repo.git("checkout", "--quiet", "main")
    repo.commit({"base.txt": b"moved on\n"}, "main moves on")

    diff = browse.compare_diff(repo.runner, SID, "main", "feature")
    assert [(f.path, f.status) for f in diff.files] == [("feature.txt", "added")]
    commits, total = browse.compare_commits(repo.runner, SID, "main", "feature")
    assert ([c.sha for c in commits], total) == ([feature], 1)
    assert browse.compare_commits(repo.runner, SID, "feature", "main", limit=0) == ([], 1)

    repo.git("checkout", "--quiet", "--orphan", "other")
    repo.commit({"base.txt": b"unrelated\n"}, "unrelated")
    repo.git("push", "--quiet", str(repo.bare), "other")
    with pytest.raises(NotFound):
        browse.compare_diff(repo.runner, SID, "main", "other")
    with pytest.raises(NotFound):
        browse.compare_diff(repo.runner, SID, "main", "no-such-branch")


def test_blame_names_who_wrote_each_line(repo: Repo) -> None:
    first = repo.commit({"poem.txt": b"roses\nviolets\nsugar\n"}, "first draft", author="Ada")
    second = repo.commit({"poem.txt": b"roses\nare red\nviolets\nsugar\n"}, "colour", author="Grace")
    lines = browse.blame(repo.runner, SID, "main", "poem.txt")
    assert [(b.number, b.sha, b.author, b.summary, b.text, b.first_of_group) for b in lines] == [
        (1, first, "Ada", "first draft", "roses", True), (2, second, "Grace", "colour", "are red", True),
        (3, first, "Ada", "first draft", "violets", True), (4, first, "Ada", "first draft", "sugar", False)]
    assert lines[1].when.utcoffset() == timedelta(hours=2)
    assert lines[1].when.timestamp() == repo.clock
    assert [b.number for b in browse.blame(repo.runner, SID, "main", "poem.txt", max_lines=2)] == [1, 2]
    for rev, path in (("main", "nope.txt"), ("main", ""), ("nope", "poem.txt")):
        with pytest.raises(NotFound):
            browse.blame(repo.runner, SID, rev, path)


def test_user_revisions_are_never_options(repo: Repo, tmp_path: Path) -> None:
    repo.commit({"a.txt": b"a\n"}, "a")
    target = tmp_path / "x"
    rev = f"--output={target}"
    with pytest.raises(NotFound):
        browse.commit_diff(repo.runner, SID, rev)
    with pytest.raises(NotFound):
        browse.compare_diff(repo.runner, SID, rev, "main")
    with pytest.raises(NotFound):
        browse.compare_commits(repo.runner, SID, "main", rev)
    with pytest.raises(NotFound):
        browse.blame(repo.runner, SID, rev, "a.txt")
    with pytest.raises(NotFound):
        asyncio.run(collect(browse.stream_archive(repo.runner, SID, rev, "zip", "p")))
    assert not target.exists()


def entry(name: str, type_: str = "blob", mode: str = "100644") -> TreeEntry:
    return TreeEntry(name=name, path=name, type=type_, mode=mode, sha="0" * 40, size=1)


def test_the_readme_prefers_markdown_then_plain_text() -> None:
    def pick(*entries: TreeEntry) -> str | None:
        found = browse.find_readme(entries)
        return found.name if found else None

    assert pick(entry("README.txt"), entry("README"), entry("readme.md"), entry("main.py")) == "readme.md"
    assert pick(entry("README.txt"), entry("README")) == "README"
    assert pick(entry("README.rst"), entry("Readme.TXT")) == "Readme.TXT"
    assert pick(entry("README.markdown"), entry("README.md")) == "README.markdown"
    assert pick(entry("README.md", "tree", "040000"), entry("README.md", mode="120000"), entry("READMEFIRST")) is None
    assert browse.is_markdown("Guide.MD") and browse.is_markdown("x.markdown") and not browse.is_markdown("md")


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


def test_archives_stream_in_both_formats_under_the_prefix(repo: Repo) -> None:
    repo.commit({"a.txt": b"alpha\n", "dir/b.txt": b"beta\n"}, "files")
    tgz = asyncio.run(collect(browse.stream_archive(repo.runner, SID, "main", "tar.gz", "site-main")))
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        assert {m.name for m in tar.getmembers() if m.isfile()} == {"site-main/a.txt", "site-main/dir/b.txt"}
        member = tar.extractfile("site-main/dir/b.txt")
        assert member is not None and member.read() == b"beta\n"
    zipped = asyncio.run(collect(browse.stream_archive(repo.runner, SID, "main", "zip", "site-main/")))
    with zipfile.ZipFile(io.BytesIO(zipped)) as archive:
        assert {n for n in archive.namelist() if not n.endswith("/")} == {"site-main/a.txt", "site-main/dir/b.txt"}
        assert archive.read("site-main/a.txt") == b"alpha\n"
    for fmt, prefix in (("tar", "p"), ("zip; rm", "p"), ("zip", "../up"), ("zip", "a/./b")):
        with pytest.raises(InvalidInput):
            asyncio.run(collect(browse.stream_archive(repo.runner, SID, "main", fmt, prefix)))


def children() -> list[int]:
    """Our child processes, zombies included (a zombie is a child not yet reaped)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
            found.append(int(pid))
    return found


def test_an_archive_read_only_in_part_leaves_no_git_behind(repo: Repo) -> None:
    repo.commit({"noise.bin": os.urandom(4 * 1024 * 1024)}, "incompressible")

    async def first_chunk() -> tuple[int, list[int]]:
        # An async generator, though annotated as the AsyncIterator it is to its callers.
        stream = cast(AsyncGenerator[bytes, None], browse.stream_archive(repo.runner, SID, "main", "zip", "p"))
        chunk = await stream.__anext__()
        running = children()
        await stream.aclose()
        return len(chunk), running

    size, running = asyncio.run(first_chunk())
    assert 0 < size <= browse.ARCHIVE_CHUNK and running  # git was still writing when the reader stopped
    assert children() == []


def test_refs_are_listed_newest_first_with_tags_peeled(repo: Repo) -> None:
    old = repo.commit({"a": b"1\n"}, "old work")
    repo.git("tag", "-a", "-m", "release", "v1", old)
    repo.git("tag", "light", old)
    repo.git("checkout", "--quiet", "-b", "topic")
    new = repo.commit({"a": b"2\n"}, "new work")
    repo.git("push", "--quiet", str(repo.bare), "main", "--tags")
    branches = browse.ref_commit_dates(repo.runner, SID, "refs/heads/")
    assert [(name, oid, subject) for name, oid, _, subject in branches] == [
        ("topic", new, "new work"), ("main", old, "old work")]
    assert branches[0][2].timestamp() == repo.clock
    tags = browse.ref_commit_dates(repo.runner, SID, "refs/tags")
    assert sorted((name, oid, subject) for name, oid, _, subject in tags) == [
        ("light", old, "old work"), ("v1", old, "old work")]
    with pytest.raises(InvalidInput):
        browse.ref_commit_dates(repo.runner, SID, "--contains=HEAD")


def test_a_tree_is_counted_in_full_but_listed_only_up_to_the_limit(repo: Repo) -> None:
    head = repo.commit({f"f{i:03}.txt": b"x\n" for i in range(40)}, "wide")
    tree = repo.runner.tree_entry(SID, head, "")
    assert tree is not None
    entries, total = browse.list_tree_head(repo.runner, SID, tree.sha, "", 10)
    assert total == 40 and len(entries) == 10
    every, _ = browse.list_tree_head(repo.runner, SID, tree.sha, "sub", 100)
    assert sorted(e.path for e in every) == [f"sub/f{i:03}.txt" for i in range(40)]
    with pytest.raises(NotFound):
        browse.list_tree_head(repo.runner, SID, "--output=x", "", 10)
