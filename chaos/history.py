"""The history of a campaign: every operation with its start, its end and its result.

One JSON object per line, written when the operation ends. Times are seconds since the
campaign began, on one monotonic clock shared by the load and the nemesis, so "acknowledged
before the read began" compares two numbers from the same clock.
"""

from __future__ import annotations

import enum
import json
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any


class Kind(enum.StrEnum):
    PUSH = "push"
    READ = "read"
    FAULT = "fault"


class Result(enum.StrEnum):
    OK = "ok"  # a push acknowledged (git exited 0), a read answered, a fault injected and healed
    FAIL = "fail"  # git exited non-zero; the fault could not be injected or healed
    TIMEOUT = "timeout"  # git was still running at the client's deadline and was killed


class Role(enum.StrEnum):
    """Who wrote a push, which decides what the checker expects of its branch."""

    SEED = "seed"  # the first commit of every branch, before any fault
    SINGLE = "single"  # the only writer of its branch
    RACE = "race"  # one of several writers of one branch (fetch, commit on top, push)
    PROBE = "probe"  # a push sent straight to a node that must refuse it (a fenced old primary)
    NONE = ""  # reads and faults


@dataclass(frozen=True)
class Op:
    index: int
    process: str  # "w0", "race1", "read0", "nemesis", ...
    kind: Kind
    start: float
    end: float
    result: Result
    round: int = -1  # the nemesis round during which the operation ended (-1: before the first)
    repo: str = ""
    branch: str = ""
    role: Role = Role.NONE
    sha: str = ""  # push: the commit pushed
    parents: tuple[str, ...] = ()  # push: that commit's parents
    refs: dict[str, str] = field(default_factory=dict)  # read: branch -> commit seen
    how: str = ""  # read: ls-remote, clone or fetch; push: the node it went to when not the front door
    phase: str = ""  # "final": the writes and reads after every fault was healed
    error: str = ""  # a failure: git's last lines, or what went wrong with a fault
    fault: str = ""  # fault: its kind
    target: str = ""  # fault: the node, member or role it hit
    detail: dict[str, Any] = field(default_factory=dict)  # fault: instants and measurements

    @property
    def ok(self) -> bool:
        return self.result is Result.OK

    @property
    def duration(self) -> float:
        return self.end - self.start

    def to_json(self) -> str:
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if key in ("index", "process", "kind", "start", "end", "result") or value not in ("", (), [], {}, -1):
                out[key] = round(value, 4) if isinstance(value, float) else value
        return json.dumps(out, sort_keys=False)

    @classmethod
    def from_json(cls, line: str) -> Op:
        raw = json.loads(line)
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in raw.items() if k in known}
        data["kind"] = Kind(data["kind"])
        data["result"] = Result(data["result"])
        data["role"] = Role(data.get("role", ""))
        data["parents"] = tuple(data.get("parents", ()))
        return cls(**data)


def load(path: Path) -> list[Op]:
    with open(path) as f:
        return [Op.from_json(line) for line in f if line.strip()]


def dump(ops: Iterable[Op], path: Path) -> None:
    with open(path, "w") as f:
        for op in ops:
            f.write(op.to_json() + "\n")


class Clock:
    """Seconds since the campaign began."""

    def __init__(self) -> None:
        self._zero = time.monotonic()
        self.wall_zero = time.time()  # to find an operation in the processes' logs (UTC times there)

    def now(self) -> float:
        return time.monotonic() - self._zero


class History:
    """Records operations from many threads, in memory and as JSON lines on disk as they end."""

    def __init__(self, clock: Clock, path: Path | None = None) -> None:
        self.clock = clock
        self.round = -1
        self._ops: list[Op] = []
        self._lock = threading.Lock()
        self._file: IO[str] | None = open(path, "w") if path is not None else None  # noqa: SIM115 - the run's life

    def record(self, **values: Any) -> Op:
        with self._lock:
            values.setdefault("round", self.round)
            op = Op(index=len(self._ops), **values)
            self._ops.append(op)
            if self._file is not None:
                self._file.write(op.to_json() + "\n")
                self._file.flush()
        return op

    @property
    def ops(self) -> list[Op]:
        with self._lock:
            return list(self._ops)

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
