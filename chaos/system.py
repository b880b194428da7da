"""What the nemesis needs of a system under test, whatever its mode.

A system starts its real processes, says where clients reach each repository, injects one
planned fault at a time (injecting, holding, healing, then measuring how long its replicas
take to be up to date again), tells whether its replicas have converged, and describes its
final state for the checker. ``stop`` ends every process it started and removes every
namespace and mount it made, whatever happened before.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import signal
import subprocess
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.checker import FinalState
from chaos.faults import FaultKind, Mode, Planned
from chaos.history import Clock
from chaos.load import Load

HEAL_BOUND = 60.0  # seconds a node back from a fault may take to have every replica up to date again


@dataclass
class Injected:
    """One round of the nemesis: when it began and ended, and what it saw (campaign clock)."""

    start: float
    end: float = 0.0
    ok: bool = True
    error: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


class System(abc.ABC):
    mode: Mode

    def __init__(self, workdir: Path, clock: Clock, repos: int) -> None:
        self.workdir = workdir
        self.clock = clock
        self.repo_names = [f"r{i}" for i in range(repos)]
        self.load: Load | None = None  # set by the campaign before the first fault (for probes)

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    @abc.abstractmethod
    def url(self, repo: str) -> str: ...

    @abc.abstractmethod
    def targets(self) -> dict[FaultKind, list[str]]: ...

    @abc.abstractmethod
    def _inject(self, planned: Planned, got: Injected) -> None:
        """Inject, hold and heal the fault, filling ``got.detail`` (disruptions, back_at, ...)."""

    @abc.abstractmethod
    def converged(self) -> bool: ...

    @abc.abstractmethod
    def final_state(self, tips: dict[str, dict[str, str]], converged_after: float | None,
                    bound: float) -> FinalState: ...

    def logs(self) -> list[Path]:
        """The log files of the processes under test, copied into the report."""
        return []

    @abc.abstractmethod
    def restore(self) -> None:
        """After a round that failed half-way: bring back every process and link, as far as it goes."""

    def inject(self, planned: Planned) -> Injected:
        got = Injected(start=self.clock.now(), detail={"hold": planned.hold, "with_etcd": planned.with_etcd})
        try:
            self._inject(planned, got)
        except Exception as exc:
            got.ok = False
            got.error = f"{type(exc).__name__}: {exc}"
            got.detail["traceback"] = traceback.format_exc(limit=4)
        got.end = self.clock.now()
        return got

    def measure_heal(self, got: Injected, current: Callable[[], bool], node: str, bound: float = HEAL_BOUND) -> None:
        """Record when the node came back and when ``current`` first held after that."""
        back = got.detail["back_at"] = self.clock.now()
        got.detail["node"] = node
        got.detail["heal_bound"] = bound
        got.detail["current_at"] = None
        while self.clock.now() - back < bound:
            if safely(current):
                got.detail["current_at"] = self.clock.now()
                return
            time.sleep(0.2)

    @contextlib.contextmanager
    def disrupting(self, got: Injected) -> Iterator[None]:
        """Around a kill, stop or cut: from just before the signal until it took effect (the process reaped),
        the time in which a request may have reached the process and lost it."""
        begun = self.clock.now()
        try:
            yield
        finally:
            got.detail.setdefault("disruptions", []).append([begun, self.clock.now()])

    def hold(self, planned: Planned) -> None:
        time.sleep(planned.hold)


def safely(predicate: Callable[[], bool]) -> bool:
    """A check against a system under faults: an error (etcd electing a leader, a node starting) is a no."""
    try:
        return bool(predicate())
    except Exception:
        return False


def attempt(action: Callable[[], object]) -> None:
    """Do ``action`` if it can be done (a best-effort repair step); its failure is no news."""
    with contextlib.suppress(Exception):
        action()


def signal_group(pid: int | None, sig: signal.Signals) -> None:
    """Send ``sig`` to the process group a child of ours leads (it and the git processes it started)."""
    if pid is None:
        raise RuntimeError("the process is not running")
    os.killpg(pid, sig)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if safely(predicate):
            return True
        time.sleep(interval)
    return False


def fsck_report(done: subprocess.CompletedProcess[str], limit: int = 3000) -> str | None:
    """None when ``bulwark fsck --json`` found nothing, else each failed repository with what git said,
    less the dangling objects (any aborted push leaves some, and they are no failure)."""
    if done.returncode == 0:
        return None
    try:
        report = json.loads(done.stdout)
    except ValueError:
        return (done.stdout + done.stderr).strip()[-limit:] or f"fsck exited {done.returncode}"
    parts = []
    for repo in report.get("repositories", []):
        if not repo.get("ok", True):
            lines = [ln for ln in str(repo.get("output", "")).splitlines() if "dangling " not in ln]
            parts.append(f"{repo.get('full_name')}: " + (" / ".join(lines) or "(only dangling objects)"))
    return "; ".join(parts)[-limit:] or f"fsck exited {done.returncode}"


def run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
