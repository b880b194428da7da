"""The load that runs during the faults: real ``git`` pushes and reads through the front door.

- single writers: each the only writer of its own branch; every commit sits on the writer's
  previous one, acknowledged or not, so the branch's history is one line the checker can follow;
- racers: several writers of one branch, each fetching it, committing on top and pushing
  (the losers get git's non-fast-forward refusal);
- readers: ``ls-remote`` and full clones of every repository.

Commits are made with ``git commit-tree`` in bare local repositories (no working tree to
update), some with a small random file so that pushes carry a pack worth writing.
Every operation goes into the history with its start, its end and its result.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from chaos.graph import Graph
from chaos.history import History, Kind, Result, Role
from tests.support.helpers import git_env

EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
RACE_BRANCH = "race"


@dataclass(frozen=True)
class LoadSpec:
    repos: int = 2
    writers: int = 3  # single writers, spread over the repositories
    racers: int = 2  # writers of one branch of the first repository
    readers: int = 1
    payload_every: int = 4  # every n-th commit of a writer carries a random file
    payload_bytes: int = 16 * 1024
    timeout: float = 60.0  # a git command still running after this is killed and recorded as timed out
    pause: tuple[float, float] = (0.02, 0.15)  # seconds between two operations of one client


@dataclass(frozen=True)
class Outcome:
    code: int
    out: str
    err: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.code == 0 and not self.timed_out

    @property
    def result(self) -> Result:
        return Result.TIMEOUT if self.timed_out else Result.OK if self.code == 0 else Result.FAIL

    def last_words(self) -> str:
        """git's account of a failure, less its hints (the lines that say what it is come before them)."""
        lines = [line for line in (self.err or self.out).strip().splitlines()
                 if line.strip() and not line.startswith("hint:")]
        return "\n".join(lines[-8:])


class Git:
    """The real git client, with the test suite's environment and a deadline per command."""

    def __init__(self, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.env = git_env(home)

    def run(self, *args: str, cwd: Path | None = None, timeout: float = 60.0, stdin: bytes | None = None) -> Outcome:
        # A session of its own, so that a timed-out push is killed with its remote helper.
        proc = subprocess.Popen(["git", *args], cwd=cwd, env=self.env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            return Outcome(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"), True)
        return Outcome(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))

    def checked(self, *args: str, cwd: Path | None = None, stdin: bytes | None = None) -> str:
        """A local command that must work (making commits): its output, or RuntimeError."""
        done = self.run(*args, cwd=cwd, stdin=stdin)
        if not done.ok:
            raise RuntimeError(f"git {' '.join(args[:2])} failed: {done.last_words()}")
        return done.out.strip()


def parse_refs(text: str) -> dict[str, str]:
    """``sha<TAB or space>refs/heads/x`` lines -> {x: sha} for branches only."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].startswith("refs/heads/"):
            out[parts[1].removeprefix("refs/heads/")] = parts[0]
    return out


class Store:
    """A bare local repository where one client makes its commits."""

    def __init__(self, git: Git, path: Path) -> None:
        self.git = git
        self.path = path
        git.checked("init", "-q", "--bare", str(path))
        git.checked("hash-object", "-w", "-t", "tree", "--stdin", cwd=path, stdin=b"")

    def commit(self, parent: str | None, message: str, payload: bytes | None = None) -> str:
        tree = EMPTY_TREE
        if payload is not None:
            blob = self.git.checked("hash-object", "-w", "--stdin", cwd=self.path, stdin=payload)
            tree = self.git.checked("mktree", cwd=self.path, stdin=f"100644 blob {blob}\tpayload\n".encode())
        parents = ["-p", parent] if parent else []
        return self.git.checked("commit-tree", tree, *parents, "-m", message, cwd=self.path)


@dataclass
class Client:
    """One thread of the load: a name, its own generator and commit store, its loop."""

    name: str
    load: Load
    rng: random.Random
    store: Store
    repo: str = ""
    branch: str = ""
    head: str = ""  # the commit the next one goes on
    count: int = 0
    thread: threading.Thread | None = None

    def next_commit(self) -> str:
        self.count += 1
        spec = self.load.spec
        carries = spec.payload_every and self.count % spec.payload_every == 0
        payload = self.rng.randbytes(spec.payload_bytes) if carries else None
        sha = self.store.commit(self.head or None, f"{self.name} {self.count}", payload)
        self.load.made[sha] = (self.head,) if self.head else ()
        return sha


@dataclass
class Load:
    spec: LoadSpec
    history: History
    url: Callable[[str], str]  # repository name -> its URL through the front door
    workdir: Path
    seed: int = 0
    errors: list[str] = field(default_factory=list)  # exceptions in the load itself (not git's failures)
    # Every commit made, with its parents, as soon as it is made: a push still in flight is not in the
    # history yet, but its commit may already be on a node.
    made: dict[str, tuple[str, ...]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _clients: list[Client] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.git = Git(self.workdir / "home")
        self.repos = [f"r{i}" for i in range(self.spec.repos)]
        rng = random.Random(self.seed)
        for i in range(self.spec.writers):
            self._add(f"w{i}", rng, self.repos[i % len(self.repos)], f"w{i}")
        for i in range(self.spec.racers):
            self._add(f"race{i}", rng, self.repos[0], RACE_BRANCH)
        for i in range(self.spec.readers):
            self._add(f"read{i}", rng)
        self._prober = Client("probe", self, random.Random(rng.random()), Store(self.git, self.workdir / "probe"))

    def _add(self, name: str, rng: random.Random, repo: str = "", branch: str = "") -> None:
        store = Store(self.git, self.workdir / name)
        self._clients.append(Client(name, self, random.Random(rng.random()), store, repo=repo, branch=branch))

    @property
    def writers(self) -> list[Client]:
        return [c for c in self._clients if c.name.startswith("w")]

    def branches(self) -> dict[str, list[str]]:
        """Repository -> the branches the load writes (main is pushed at the seed and never again)."""
        out: dict[str, list[str]] = {repo: ["main"] for repo in self.repos}
        for c in self._clients:
            if c.branch and c.branch not in out[c.repo]:
                out[c.repo].append(c.branch)
        return out

    def graph(self) -> Graph:
        return Graph(self.history.ops, dict(self.made))

    # -- the seed, before any fault ---------------------------------------------------------

    def plant(self, attempts: int = 20) -> None:
        """The first commit on every branch of every repository; every client starts from it."""
        store = Store(self.git, self.workdir / "seed")
        root = store.commit(None, "seed")
        for repo, branches in self.branches().items():
            refspecs = [f"{root}:refs/heads/{b}" for b in branches]
            for _ in range(attempts):
                start = self.history.clock.now()
                done = self.git.run("push", "-q", self.url(repo), *refspecs, cwd=store.path, timeout=self.spec.timeout)
                end = self.history.clock.now()
                for branch in branches:
                    self.history.record(process="seed", kind=Kind.PUSH, start=start, end=end, result=done.result,
                                        repo=repo, branch=branch, role=Role.SEED, sha=root, error=done.last_words())
                if done.ok:
                    break
                self._stop.wait(0.5)
            else:
                raise RuntimeError(f"could not seed {repo}: {done.last_words()}")
        for c in [*self._clients, self._prober]:
            c.head = root
            c.store.git.checked("fetch", "-q", str(store.path), f"{root}:refs/seed", cwd=c.store.path)

    # -- running -------------------------------------------------------------------------------

    def start(self) -> Load:
        for c in self._clients:
            step = self._write if c.name.startswith("w") else self._race if c.name.startswith("race") else self._read
            c.thread = threading.Thread(target=self._loop, args=(c, step), name=f"chaos-{c.name}", daemon=True)
            c.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for c in self._clients:
            if c.thread is not None:
                c.thread.join(self.spec.timeout + 30)

    def _loop(self, client: Client, step: Callable[[Client], None]) -> None:
        while not self._stop.is_set():
            try:
                step(client)
            except Exception:
                self.errors.append(f"{client.name}: {traceback.format_exc(limit=3)}")
                self._stop.wait(1.0)
            self._stop.wait(client.rng.uniform(*self.spec.pause))

    def push(self, client: Client, role: Role, phase: str = "", url: str | None = None, how: str = "") -> bool:
        """One new commit on ``client.head``, pushed to its branch; whether it was acknowledged.

        A single writer's next commit goes on this one, acknowledged or not, so that its branch
        stays one line; a racer's goes on what it fetches next."""
        sha = client.next_commit()
        start = self.history.clock.now()
        done = self.git.run("push", "-q", url or self.url(client.repo), f"{sha}:refs/heads/{client.branch}",
                            cwd=client.store.path, timeout=self.spec.timeout)
        end = self.history.clock.now()
        self.history.record(process=client.name, kind=Kind.PUSH, start=start, end=end, result=done.result,
                            repo=client.repo, branch=client.branch, role=role, sha=sha, parents=(client.head,),
                            error="" if done.ok else done.last_words(), phase=phase, how=how)
        if done.ok or role is Role.SINGLE:
            client.head = sha
        return done.ok

    def _write(self, client: Client) -> None:
        self.push(client, Role.SINGLE)

    def _race(self, client: Client) -> None:
        tip = self.fetch(client)
        if tip:
            client.head = tip
        self.push(client, Role.RACE)

    def fetch(self, client: Client) -> str | None:
        """Fetch the racers' branch into the client's store; the commit it is at (None: failed)."""
        start = self.history.clock.now()
        done = self.git.run("fetch", "-q", self.url(client.repo), f"+refs/heads/{client.branch}:refs/fetched",
                            cwd=client.store.path, timeout=self.spec.timeout)
        end = self.history.clock.now()
        tip = self.git.run("rev-parse", "--verify", "-q", "refs/fetched", cwd=client.store.path).out.strip() \
            if done.ok else ""
        self.history.record(process=client.name, kind=Kind.READ, start=start, end=end, result=done.result,
                            repo=client.repo, refs={client.branch: tip} if tip else {}, how="fetch",
                            error="" if done.ok else done.last_words())
        return tip or None

    def _read(self, client: Client) -> None:
        client.count += 1
        repo = self.repos[client.count % len(self.repos)]
        self.read(client, repo, "clone" if client.count % 4 == 0 else "ls-remote")

    def read(self, client: Client, repo: str, how: str, phase: str = "") -> dict[str, str] | None:
        """The branches of ``repo`` as ``ls-remote`` or a full clone sees them (None: failed)."""
        target = client.store.path.parent / f"{client.name}-clone"
        shutil.rmtree(target, ignore_errors=True)
        start = self.history.clock.now()
        if how == "clone":
            done = self.git.run("clone", "-q", "--bare", self.url(repo), str(target), timeout=self.spec.timeout)
        else:
            done = self.git.run("ls-remote", self.url(repo), timeout=self.spec.timeout)
        end = self.history.clock.now()
        refs: dict[str, str] = {}
        if done.ok:
            listed = done.out if how != "clone" else self.git.checked(
                "for-each-ref", "--format=%(objectname) %(refname)", "refs/heads", cwd=target)
            refs = parse_refs(listed)
        shutil.rmtree(target, ignore_errors=True)
        self.history.record(process=client.name, kind=Kind.READ, start=start, end=end, result=done.result, repo=repo,
                            refs=refs, how=how, error="" if done.ok else done.last_words(), phase=phase)
        return refs if done.ok else None

    def probe(self, url: str, repo: str, branch: str, node: str) -> bool:
        """A push straight to a node that must refuse it (recorded as a probe); whether it was taken."""
        self._prober.repo, self._prober.branch = repo, branch
        return self.push(self._prober, Role.PROBE, url=url, how=node)

    # -- after the faults ----------------------------------------------------------------------

    def final_writes(self, within: float) -> None:
        """Each single writer pushes until one push is acknowledged, for up to ``within`` seconds."""
        def until_acked(client: Client) -> None:
            deadline = self.history.clock.now() + within
            while self.history.clock.now() < deadline:
                if self.push(client, Role.SINGLE, phase="final"):
                    return
                threading.Event().wait(0.5)

        threads = [threading.Thread(target=until_acked, args=(c,)) for c in self.writers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def final_reads(self, attempts: int = 5) -> dict[str, dict[str, str] | None]:
        """Every repository's branches through the front door: one clone each (retried a few times)."""
        reader = next(c for c in self._clients if c.name.startswith("read")) if self.spec.readers else self.writers[0]
        out: dict[str, dict[str, str] | None] = {}
        for repo in self.repos:
            for _ in range(attempts):
                out[repo] = self.read(reader, repo, "clone", phase="final")
                if out[repo] is not None:
                    break
                threading.Event().wait(1.0)
        return out
