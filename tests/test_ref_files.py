"""Reading refs from a repository's files must give what git gives, or decline."""

from __future__ import annotations

from pathlib import Path

import pytest

from bulwark.git.model import read_ref_files
from tests.support.helpers import git

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def repo(tmp_path: Path, genv: dict[str, str]) -> Path:
    work = tmp_path / "work"
    git("init", "-q", "-b", "main", str(work), env=genv)
    for i in range(3):
        (work / "f").write_text(f"{i}\n")
        git("add", "f", cwd=work, env=genv)
        git("commit", "-qm", f"c{i}", cwd=work, env=genv)
        git("branch", f"topic/deep/b{i}", cwd=work, env=genv)
        git("tag", "-a", f"v{i}", "-m", f"release {i}", cwd=work, env=genv)
    git("tag", "light", "HEAD~1", cwd=work, env=genv)
    bare = tmp_path / "repo.git"
    git("clone", "-q", "--bare", str(work), str(bare), env=genv)
    return bare


def by_git(repo: Path, genv: dict[str, str]) -> tuple[str, dict[str, str]]:
    head = git("--git-dir", str(repo), "symbolic-ref", "HEAD", env=genv).stdout.strip()
    out = git("--git-dir", str(repo), "for-each-ref", "--format=%(objectname) %(refname)", env=genv).stdout
    return head, dict(reversed(line.split(" ", 1)) for line in out.splitlines())  # type: ignore[misc]


def test_packed_loose_and_mixed_refs_read_as_git_reads_them(repo: Path, genv: dict[str, str]) -> None:
    assert read_ref_files(repo) == by_git(repo, genv)  # as cloned: all packed, with peeled lines
    # Loose refs over packed ones, new nested ones, a deletion of a packed one.
    git("--git-dir", str(repo), "update-ref", "refs/heads/main", "main~1", env=genv)
    git("--git-dir", str(repo), "update-ref", "refs/heads/new/one", "main", env=genv)
    git("--git-dir", str(repo), "update-ref", "-d", "refs/tags/light", env=genv)
    assert read_ref_files(repo) == by_git(repo, genv)
    # A lock file left by a git that died is not a ref.
    (repo / "refs" / "heads" / "main.lock").write_text("0" * 40 + "\n")
    assert read_ref_files(repo) == by_git(repo, genv)
    git("--git-dir", str(repo), "symbolic-ref", "HEAD", "refs/heads/new/one", env=genv)
    assert read_ref_files(repo) == by_git(repo, genv)


def test_what_is_not_plain_is_left_to_git(repo: Path, genv: dict[str, str]) -> None:
    git("--git-dir", str(repo), "symbolic-ref", "refs/heads/alias", "refs/heads/main", env=genv)
    assert read_ref_files(repo) is None  # a symbolic ref
    git("--git-dir", str(repo), "symbolic-ref", "-d", "refs/heads/alias", env=genv)
    assert read_ref_files(repo) is not None
    oid = git("--git-dir", str(repo), "rev-parse", "main", env=genv).stdout.strip()
    (repo / "HEAD").write_text(oid + "\n")
    assert read_ref_files(repo) is None  # a detached HEAD
    assert read_ref_files(repo.parent / "missing.git") is None


def test_missing_objects_names_what_the_copy_lacks(repo: Path, genv: dict[str, str]) -> None:
    from bulwark.git.runner import GitRunner

    runner = GitRunner(repo.parent / "root")
    runner.path("ab12").parent.mkdir(parents=True)
    repo.rename(runner.path("ab12"))
    repo = runner.path("ab12")
    tips = list(by_git(repo, genv)[1].values())
    inner = git("--git-dir", str(repo), "rev-parse", "main~2", env=genv).stdout.strip()
    absent = "0123456789abcdef0123456789abcdef01234567"
    assert runner.missing_objects("ab12", []) == []
    assert runner.missing_objects("ab12", tips) == []  # known from the ref files alone
    assert runner.missing_objects("ab12", [*tips, inner, absent, absent]) == [absent]
