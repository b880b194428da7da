"""Deterministic synthetic repositories, built once with ``git fast-import`` and cached.

The large repository holds ``commits`` commits on ``main`` (a tag every 50), each rewriting one of
120 binary files with bytes from a seeded PRNG (incompressible, so the pack is about ``large_bytes``)
and a line of a text file. The small repositories are independent three-commit histories, kept as
branches ``s0000``, ``s0001``... of one source repository and pushed one per target repository.
Every author and committer date is fixed, so the same spec gives the same object ids on any machine.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.common import client_env, run_git

FORMAT = 1  # bump when the generated content changes
EPOCH = 1_700_000_000  # the first commit's date
BINARY_FILES = 120


@dataclass(frozen=True)
class Spec:
    large_bytes: int
    commits: int
    small_repos: int
    seed: int = 20240601
    format: int = FORMAT

    @property
    def name(self) -> str:
        return f"large{self.large_bytes // 2**20}m-{self.commits}c-small{self.small_repos}"


FULL = Spec(large_bytes=150 * 2**20, commits=300, small_repos=1000)
SMALL = Spec(large_bytes=20 * 2**20, commits=60, small_repos=50)
TINY = Spec(large_bytes=2 * 2**20, commits=20, small_repos=10)  # for checking the benchmark itself


@dataclass(frozen=True)
class Sources:
    """The generated bare repositories."""

    spec: Spec
    large: Path
    small: Path  # one branch per small repository

    def small_branches(self) -> list[str]:
        return [small_branch(i) for i in range(self.spec.small_repos)]

    def large_tip(self) -> str:
        return run_git(["rev-parse", "refs/heads/main"], client_env(self.large.parent), cwd=self.large).strip()

    def pack_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.large / "objects" / "pack").glob("*.pack"))


def small_branch(i: int) -> str:
    return f"s{i:04d}"


def _person(kind: str, when: int) -> bytes:
    return f"{kind} Bench {kind.title()} <{kind}@example.com> {when} +0000\n".encode()


def _data(payload: bytes) -> bytes:
    return b"data %d\n" % len(payload) + payload + b"\n"


def _large_stream(spec: Spec) -> Iterator[bytes]:
    rng = random.Random(spec.seed)
    mean = spec.large_bytes // spec.commits
    notes = b""
    for c in range(spec.commits):
        size = rng.randint(mean // 2, mean + mean // 2)
        yield b"blob\nmark :%d\n" % (2 * c + 1) + _data(rng.randbytes(size))
        notes += f"commit {c}: data/{c % BINARY_FILES:03d}.bin is {size} bytes\n".encode()
        when = EPOCH + 3600 * c
        commit = b"commit refs/heads/main\nmark :%d\n" % (2 * c + 2)
        commit += _person("author", when) + _person("committer", when)
        commit += _data(f"Update data/{c % BINARY_FILES:03d}.bin ({c})".encode())
        if c:
            commit += b"from :%d\n" % (2 * c)
        commit += b"M 100644 :%d data/%03d.bin\n" % (2 * c + 1, c % BINARY_FILES)
        commit += b"M 100644 inline NOTES.md\n" + _data(notes)
        yield commit + b"\n"
        if (c + 1) % 50 == 0:
            yield b"reset refs/tags/v%d\nfrom :%d\n\n" % ((c + 1) // 50, 2 * c + 2)


def _small_stream(spec: Spec) -> Iterator[bytes]:
    rng = random.Random(spec.seed + 1)
    mark = 0
    for i in range(spec.small_repos):
        branch = small_branch(i).encode()
        previous = 0
        for c in range(3):
            mark += 1
            when = EPOCH + 86400 * i + 600 * c
            lines = "".join(f"{i}.{c}.{n} {rng.getrandbits(64):016x}\n" for n in range(rng.randint(40, 160)))
            commit = b"commit refs/heads/" + branch + b"\nmark :%d\n" % mark
            commit += _person("author", when) + _person("committer", when)
            commit += _data(f"{small_branch(i)}: change {c}".encode())
            if previous:
                commit += b"from :%d\n" % previous
            commit += b"M 100644 inline README.md\n" + _data(f"# {small_branch(i)}\n".encode())
            commit += f"M 100644 inline src/file{c}.txt\n".encode() + _data(lines.encode())
            previous = mark
            yield commit + b"\n"


def _fast_import(repo: Path, stream: Iterator[bytes]) -> None:
    env = client_env(repo.parent)
    run_git(["init", "-q", "--bare", "-b", "main", str(repo)], env)
    proc = subprocess.Popen(["git", "fast-import", "--quiet", "--done"], cwd=repo, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stderr is not None
    try:
        for chunk in stream:
            proc.stdin.write(chunk)
        proc.stdin.write(b"done\n")
        proc.stdin.close()
    except BrokenPipeError:
        pass
    err = proc.stderr.read().decode(errors="replace")
    if proc.wait() != 0:
        raise RuntimeError(f"git fast-import failed in {repo}: {err.strip()[-2000:]}")
    # One pack, as a server would keep after a gc; deltas are searched once here and then reused.
    run_git(["repack", "-a", "-d", "-q"], env, cwd=repo)


def build(spec: Spec, data_dir: Path, log: bool = True) -> Sources:
    """The source repositories for ``spec`` under ``data_dir``, generated unless cached."""
    base = data_dir / spec.name / "source"
    sources = Sources(spec, base / "large.git", base / "small.git")
    marker = base / "spec.json"
    wanted = json.dumps(asdict(spec), sort_keys=True)
    if marker.is_file() and marker.read_text() == wanted:
        return sources
    if base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True)
    if log:
        print(f"generating {spec.large_bytes / 2**20:.0f} MiB in {spec.commits} commits and "
              f"{spec.small_repos} small repositories under {base} (once; later runs reuse it)", flush=True)
    _fast_import(sources.large, _large_stream(spec))
    _fast_import(sources.small, _small_stream(spec))
    marker.write_text(wanted)
    return sources
