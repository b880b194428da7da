"""What killed git processes leave in a bare repository: which files count, and clearing them
from a real repository with real git afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulwark.git import leftovers
from bulwark.git.leftovers import Entry, Kind, kind_of, owned, stale
from bulwark.git.runner import GitRunner

pytestmark = pytest.mark.timeout(60)

PLANTED = ["objects/ab/tmp_obj_q9", "objects/incoming-xyz", "objects/pack/tmp_idx_k2", "objects/pack/tmp_pack_x",
           "objects/tmp_objdir-incoming-a1b2c3", "packed-refs.lock", "refs/heads/b1.lock", "refs/tags/v1/rc.lock"]


def bare(path: Path) -> Path:
    subprocess.run(["git", "init", "-q", "--bare", "--initial-branch=main", str(path)], check=True)
    return path


def with_commit(repo: Path) -> str:
    tree = subprocess.run(["git", "--git-dir", str(repo), "mktree"], input=b"", capture_output=True, check=True)
    env = {**os.environ, "GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@example.com", "GIT_COMMITTER_NAME": "a",
           "GIT_COMMITTER_EMAIL": "a@example.com"}
    commit = subprocess.run(["git", "--git-dir", str(repo), "commit-tree", "-m", "one", tree.stdout.decode().strip()],
                            capture_output=True, check=True, env=env).stdout.decode().strip()
    subprocess.run(["git", "--git-dir", str(repo), "update-ref", "refs/heads/main", commit], check=True)
    return commit


def plant(repo: Path, age: float = 0.0) -> None:
    for rel in PLANTED:
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if "objdir" in rel or "incoming-" in rel:
            (path / "pack").mkdir(parents=True)
            (path / "pack" / "tmp_pack_inner").write_bytes(b"PACK")
        else:
            path.write_text("0" * 40 + "\n")
    if age:
        old = time.time() - age
        for dirpath, dirs, files in os.walk(repo):
            for name in [*dirs, *files]:
                os.utime(os.path.join(dirpath, name), (old, old))


def on_disk(repo: Path) -> list[str]:
    found = [e.path for e in leftovers.listing(repo) if kind_of(e.path, e.is_dir) is not None]
    return sorted(found)


# -- the decision ------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "is_dir", "kind"), [
    ("refs/heads/b1.lock", False, Kind.LOCK),
    ("refs/heads/feature/x.lock", False, Kind.LOCK),
    ("packed-refs.lock", False, Kind.LOCK),
    ("HEAD.lock", False, Kind.LOCK),
    ("config.lock", False, Kind.LOCK),
    ("shallow.lock", False, Kind.LOCK),
    ("index.lock", False, Kind.LOCK),
    ("objects/info/commit-graph.lock", False, Kind.LOCK),
    ("objects/pack/tmp_pack_a1", False, Kind.TEMP_PACK),
    ("objects/pack/tmp_idx_a1", False, Kind.TEMP_PACK),
    ("objects/ab/tmp_obj_a1", False, Kind.TEMP_OBJECT),
    ("objects/tmp_objdir-incoming-a1", True, Kind.QUARANTINE),
    ("objects/incoming-xyz", True, Kind.QUARANTINE),
    # What a repository needs, never touched:
    ("refs/heads/main", False, None),
    ("packed-refs", False, None),
    ("config", False, None),
    ("objects/pack/pack-1234.pack", False, None),
    ("objects/pack/pack-1234.keep", False, None),
    ("objects/ab/cdef0123", False, None),
    ("objects/pack", True, None),
    ("hooks/pre-receive.lock", False, None),
    ("objects/tmp_objdir-incoming-a1", False, None),
    ("objects/ab/tmp_pack_x", False, None),
])
def test_what_counts_as_a_leftover(path: str, is_dir: bool, kind: Kind | None) -> None:
    assert kind_of(path, is_dir) is kind


def test_young_files_wait_for_the_grace() -> None:
    entries = [Entry("refs/heads/a.lock", False, 100.0), Entry("refs/heads/b.lock", False, 98.0),
               Entry("refs/heads/main", False, 1.0)]
    assert [e.path for e, _ in stale(entries, now=100.0, grace=5.0)] == []
    assert [e.path for e, _ in stale(entries, now=103.0, grace=5.0)] == ["refs/heads/b.lock"]
    assert [e.path for e, _ in stale(entries, now=100.0, grace=0.0)] == ["refs/heads/a.lock", "refs/heads/b.lock"]


def test_a_process_working_inside_owns_the_repository() -> None:
    repo = Path("/srv/repos/ab/abc.git")
    assert owned(repo, [Path("/"), repo])
    assert owned(repo, [repo / "objects"])
    assert not owned(repo, [Path("/srv/repos/ab/abcd.git"), Path("/srv/repos/ab")])


# -- clearing a real repository ------------------------------------------------------------------


def test_planted_leftovers_are_cleared_and_the_branch_is_writable(tmp_path: Path) -> None:
    repo = bare(tmp_path / "r.git")
    commit = with_commit(repo)
    plant(repo)
    update = ["git", "--git-dir", str(repo), "update-ref", "refs/heads/b1", commit]
    blocked = subprocess.run(update, capture_output=True, text=True)
    assert blocked.returncode != 0 and "File exists" in blocked.stderr
    assert on_disk(repo) == PLANTED

    assert leftovers.clear(repo, label="acme/site").removed == ()  # younger than the grace
    cleared = leftovers.clear(repo, label="acme/site", git=GitRunner(tmp_path), just_started=True)
    assert [p for p, _ in cleared.removed] == PLANTED
    assert cleared.config_error is None
    sentence = cleared.sentence()
    assert sentence is not None
    assert sentence == (
        "cleared 3 stale lock files, 2 temporary pack files, 1 temporary object file and 2 quarantine "
        f"directories in acme/site: {', '.join(PLANTED)}"
    )
    assert on_disk(repo) == []
    subprocess.run(update, check=True)
    subprocess.run(["git", "--git-dir", str(repo), "fsck", "--strict", "--no-progress"], check=True)
    assert leftovers.clear(repo, label="acme/site", just_started=True).sentence() is None


def test_old_leftovers_are_cleared_without_the_start_flag(tmp_path: Path) -> None:
    repo = bare(tmp_path / "r.git")
    plant(repo, age=60)
    assert [p for p, _ in leftovers.clear(repo, label="r").removed] == PLANTED


def test_the_cheap_pass_before_a_push_takes_only_lock_files(tmp_path: Path) -> None:
    repo = bare(tmp_path / "r.git")
    plant(repo, age=60)
    cleared = leftovers.clear(repo, label="r", locks_only=True)
    assert [p for p, _ in cleared.removed] == ["packed-refs.lock", "refs/heads/b1.lock", "refs/tags/v1/rc.lock"]
    assert on_disk(repo) == [p for p in PLANTED if not p.endswith(".lock")]


def test_nothing_is_cleared_while_a_live_process_works_inside(tmp_path: Path) -> None:
    repo = bare(tmp_path / "r.git")
    plant(repo, age=60)
    worker = subprocess.Popen(["sleep", "60"], cwd=repo / "objects")
    try:
        deadline = time.monotonic() + 10
        while not owned(repo.resolve(), leftovers.live_cwds()):  # /proc shows the child once it has started
            assert time.monotonic() < deadline
            time.sleep(0.02)
        cleared = leftovers.clear(repo, label="r", just_started=True)
        assert cleared.removed == () and cleared.skipped and cleared.sentence() is None
        assert on_disk(repo) == PLANTED
    finally:
        worker.kill()
        worker.wait()
    assert [p for p, _ in leftovers.clear(repo, label="r", just_started=True).removed] == PLANTED


def test_a_busy_repository_is_tried_again_until_its_process_has_gone(tmp_path: Path) -> None:
    repo = bare(tmp_path / "r.git")
    idle = bare(tmp_path / "idle.git")
    plant(repo, age=60)
    passes: list[float] = []
    busy_for = 3

    def cwds() -> list[Path]:
        passes.append(0.0)
        return [repo.resolve() / "objects"] if len(passes) <= busy_for else []

    done = list(leftovers.clear_later({repo.resolve(): "acme/site", idle.resolve(): "acme/idle"}, cwds=cwds,
                                      sleep=lambda _s: None))
    assert [c.label for c in done] == ["acme/idle", "acme/site"]
    assert done[0].removed == ()
    assert [p for p, _ in done[1].removed] == PLANTED
    assert len(passes) == busy_for + 1 and on_disk(repo) == []


def test_a_repository_busy_for_longer_than_the_patience_is_left(tmp_path: Path) -> None:
    repo = bare(tmp_path / "r.git")
    plant(repo, age=60)
    ticks = iter(range(100))
    done = list(leftovers.clear_later({repo.resolve(): "r"}, cwds=lambda: [repo.resolve()], every=1.0,
                                      patience=5.0, sleep=lambda _s: None, clock=lambda: float(next(ticks))))
    assert done == [] and on_disk(repo) == PLANTED


def test_a_listed_leftover_that_its_git_took_away_is_not_present(tmp_path: Path) -> None:
    repo = bare(tmp_path / "r.git")
    plant(repo, age=60)
    listed = {entry.path: entry for entry in leftovers.listing(repo)}
    assert all(leftovers.present(repo, entry) for entry in listed.values())
    quarantine = next(p for p in listed if p.startswith("objects/tmp_objdir-"))
    shutil.rmtree(repo / quarantine)  # the push that owned it ended after the listing
    assert not leftovers.present(repo, listed[quarantine])
    (repo / "packed-refs.lock").unlink()
    assert not leftovers.present(repo, listed["packed-refs.lock"])


def test_a_config_that_does_not_parse_is_reported(tmp_path: Path) -> None:
    repo = bare(tmp_path / "r.git")
    (repo / "config.lock").write_text("[core]\n")
    with (repo / "config").open("a") as config:
        config.write("[core\n\tbare = tr")  # cut off mid-write
    cleared = leftovers.clear(repo, label="acme/site", git=GitRunner(tmp_path), just_started=True)
    assert [p for p, _ in cleared.removed] == ["config.lock"]
    assert cleared.config_error and "config" in cleared.config_error
    sentence = cleared.sentence()
    assert sentence is not None and "the config of acme/site does not parse" in sentence


CONFIGS = [
    b"",
    b"[core]\n\tbare = true\n",
    b"[core]\n\tbare = true",  # no newline at the end
    b"# a comment\n; another\n[core]\n  bare=true\n\tlogAllRefUpdates\n\n",
    b'[remote "origin"]\n\turl = https://example.com/a.git\n[branch "main"]\n\tremote = origin\n',
    b'[a ""]\n\tx = 1\n',
    b"[core.sub]\n\tx = 1\n",
    b"bare = true\n",  # a variable before any section
    b"[core\n\tbare = tr",  # cut off mid-write
    b"[core]\n\tbare = \"true\n",  # an unterminated quote
    b"[core]\n\tbare = true\\\n",  # a continuation into nothing
    b"[core]\n\t9bare = true\n",
    b"[core]\n\tba_re = true\n",
    b"[core]\n\tbare = true # a comment\n",
    b'[core]\n\tpath = "a b" ; quoted\n',
    b"[co re]\n",
    b"[core]\x00\n",
    b"[core]\r\n\tbare = true\r\n",
]


@pytest.mark.parametrize("text", CONFIGS)
def test_a_config_called_plainly_fine_is_one_git_parses(tmp_path: Path, text: bytes) -> None:
    (tmp_path / "config").write_bytes(text)
    parses = subprocess.run(["git", "config", "--file", str(tmp_path / "config"), "--list"],
                            capture_output=True).returncode == 0
    if leftovers.plainly_parses(text):
        assert parses
    if not parses:  # and what git refuses reaches the caller as git's own complaint
        error = leftovers.check_config(tmp_path, GitRunner(tmp_path))
        assert error and "config" in error


def _chars(pieces: str, max_size: int) -> st.SearchStrategy[str]:
    """Strings drawn evenly from ``pieces`` (``st.text`` favours its first characters)."""
    return st.lists(st.sampled_from(pieces), max_size=max_size).map("".join)


_NAME = st.from_regex(r"[A-Za-z0-9.-]{1,5}", fullmatch=True)
_LINE = st.one_of(
    st.builds(lambda n: f"[{n}]", _NAME),
    st.builds(lambda n, sub: f'[{n} "{sub}"]', _NAME, _chars('a .x"\\]=#;', 4)),
    st.builds(lambda k, eq, v: f"\t{k}{eq}{v}", st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,4}", fullmatch=True),
              st.sampled_from([" = ", "=", " =", ""]), _chars('a /:=.é"\\#;', 4)),
    st.builds(lambda c: f"  {c}", _chars('#;a "\\', 4)),
    _chars('[]"\\a=#; \t', 6),  # anything at all, mostly not plain
)


@pytest.mark.system
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.booleans(), st.lists(_LINE, max_size=6))
def test_any_config_called_plainly_fine_parses_in_git(tmp_path: Path, headed: bool, lines: list[str]) -> None:
    text = "\n".join(["[core]"] * headed + lines).encode()
    if leftovers.plainly_parses(text):
        (tmp_path / "config").write_bytes(text)
        parsed = subprocess.run(["git", "config", "--file", str(tmp_path / "config"), "--list"],
                                capture_output=True)
        assert parsed.returncode == 0, (text, parsed.stderr)


class NoGit:
    """A runner that must not be asked."""

    def run(self, *args: object, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        raise AssertionError(f"git was run: {args}")


def test_the_config_a_new_repository_gets_is_checked_without_a_git_process(tmp_path: Path) -> None:
    runner = GitRunner(tmp_path / "repos")
    made = runner.init_bare("aa1", "main")
    assert leftovers.check_config(made, NoGit()) is None  # type: ignore[arg-type]


def test_every_repository_of_a_runner_is_visited(tmp_path: Path) -> None:
    runner = GitRunner(tmp_path / "repos")
    runner.init_bare("aa1", "main")
    runner.init_bare("bb2", "main")
    (runner.path("aa1") / "HEAD.lock").write_text("")
    (runner.path("bb2") / "refs" / "heads" / "x.lock").write_text("")
    doomed = runner.path("cc3").with_name("cc3.git.deleting")  # a removal cut short: not a repository
    doomed.mkdir(parents=True)
    (doomed / "HEAD.lock").write_text("")
    half = runner.path("dd4").with_name("dd4.git.creating-17-42")  # a create cut short
    half.mkdir(parents=True)
    (half / "config").write_text("")
    stranger = runner.path("dd4").with_name("notes.txt")  # not ours to remove
    stranger.write_text("")
    results = list(leftovers.clear_all(runner, {"aa1": "acme/one"}, just_started=True))
    assert [r.sentence() for r in results] == [
        "cleared 1 stale lock file in acme/one: HEAD.lock",
        "cleared 1 stale lock file in bb2: refs/heads/x.lock",
        "cleared 1 stale unfinished repository in cc/: cc3.git.deleting",
        "cleared 1 stale unfinished repository in dd/: dd4.git.creating-17-42",
    ]
    assert not doomed.exists() and not half.exists() and stranger.exists()
    # A later pass, with a create of this process possibly under way, leaves them alone.
    half.mkdir()
    assert [r.sentence() for r in leftovers.clear_all(runner, {}, just_started=False)] == [None, None]
    assert half.exists()


def test_a_new_repository_is_what_git_init_and_the_settings_make(tmp_path: Path) -> None:
    runner = GitRunner(tmp_path / "repos")
    made = runner.init_bare("ab1", "trunk")
    reference = runner._init_with_git(tmp_path / "reference.git", "trunk")
    def files(root: Path) -> dict[str, tuple[bytes | None, int]]:
        return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes(), p.stat().st_mode & 0o777)
                for p in sorted(root.rglob("*"))}
    # git's files, less the hook examples and gitweb's description, which nothing on a server reads
    wanted = {k: v for k, v in files(reference).items() if not k.endswith(".sample") and k != "description"}
    assert files(made) == wanted
    assert "config" in wanted and "hooks" in wanted and "objects/pack" in wanted
    assert runner.run(["fsck", "--strict"], cwd=made).returncode == 0
    assert (made / "HEAD").read_text() == "ref: refs/heads/trunk\n"
    got = runner.run(["config", "--get", "receive.fsckObjects"], cwd=made).stdout.decode().strip()
    assert got == "true"
    with_commit_on = runner.run(["symbolic-ref", "HEAD"], cwd=made).stdout.decode().strip()
    assert with_commit_on == "refs/heads/trunk"
    assert runner.init_bare("ab1", "trunk") == made  # again: the repository is kept as it is
    assert [p.name for p in made.parent.iterdir()] == ["ab1.git"]


@pytest.mark.system
def test_a_create_killed_at_any_moment_leaves_a_whole_repository_or_nothing(tmp_path: Path) -> None:
    """A process making repositories is killed with SIGKILL at random moments; after the start-up
    sweep every repository there is whole, and nothing half-made is left."""
    import random
    import sys

    root = tmp_path / "repos"
    script = (
        "import sys, itertools\n"
        "from pathlib import Path\n"
        "from bulwark.git.runner import GitRunner\n"
        "runner = GitRunner(Path(sys.argv[1]))\n"
        "for n in itertools.count():\n"
        "    runner.init_bare(f'{sys.argv[2]}{n:05d}', 'main')\n"
    )
    rng = random.Random(7)
    for round_ in range(12):
        proc = subprocess.Popen([sys.executable, "-c", script, str(root), f"r{round_:02d}x"])
        time.sleep(0.3 + rng.random() * 0.4)
        proc.kill()
        proc.wait()
    list(leftovers.clear_all(GitRunner(root), {}, just_started=True))
    made = sorted(p for p in root.glob("*/*") if p.is_dir())
    assert made, "no repository was made at all"
    runner = GitRunner(root)
    for repo in made:
        assert repo.name.endswith(".git") and ".git." not in repo.name, repo
        assert runner.run(["config", "--get", "core.logAllRefUpdates"], cwd=repo).stdout.strip() == b"true"
        assert (repo / "HEAD").read_text() == "ref: refs/heads/main\n"


def test_the_runner_runs_git_inside_the_repository_it_works_on(tmp_path: Path) -> None:
    runner = GitRunner(tmp_path)
    repo = runner.init_bare("ab1", "main")
    here = runner.run(["--git-dir", str(repo), "-c", "alias.here=!pwd", "here"]).stdout.decode().strip()
    assert Path(here) == repo.resolve()


def test_the_runner_stops_an_overrunning_git_with_sigterm_first(tmp_path: Path) -> None:
    runner = GitRunner(tmp_path)
    repo = runner.init_bare("ab1", "main")
    # SIGTERM lets git remove its lock files; the shell under git notes that it got one.
    nap = "!trap 'kill $!; echo term > stopped; exit 1' TERM; sleep 30 & wait"
    with pytest.raises(subprocess.TimeoutExpired):
        runner.run(["--git-dir", str(repo), "-c", f"alias.nap={nap}", "nap"], timeout=0.5)
    deadline = time.monotonic() + 10
    while not (repo / "stopped").exists():
        assert time.monotonic() < deadline, "git's child never saw a SIGTERM"
        time.sleep(0.05)


def test_a_failing_fsck_is_checked_again_from_the_new_tips_only_when_the_refs_moved() -> None:
    from bulwark.git.model import FsckResult, steady_fsck

    raced = FsckResult("r", False, "missing commit 7240933")
    tips = iter([("a1",), ("a1", "b2")])  # a push landed during the check
    again: list[tuple[str, ...]] = []

    def check_from(heads: tuple[str, ...]) -> FsckResult:
        again.append(heads)
        return FsckResult("r", True, "")

    assert steady_fsck(lambda: raced, lambda: next(tips), check_from).ok
    assert again == [("a1", "b2")]

    damaged = FsckResult("r", False, "missing blob 1234")
    assert steady_fsck(lambda: damaged, lambda: ("a1",), check_from) is damaged  # refs still: the damage is real
    assert len(again) == 1
    ok = FsckResult("r", True, "")
    assert steady_fsck(lambda: ok, lambda: next(iter([("x",), ("y",)])), check_from) is ok
