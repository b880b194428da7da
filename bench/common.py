"""Small shared pieces: the git client's environment, running git, timing and summary statistics."""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.helpers import git_env


def client_env(home: Path) -> dict[str, str]:
    """The test suite's git client environment, with the authors the generated data was made with."""
    return {**git_env(home), "GIT_AUTHOR_NAME": "Bench Author", "GIT_COMMITTER_NAME": "Bench Committer"}


class GitFailed(Exception):
    """A git command exited non-zero."""


def run_git(args: Sequence[str], env: Mapping[str, str], cwd: Path | None = None, timeout: float = 600,
            stdin: bytes | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, env=dict(env), input=stdin, capture_output=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise GitFailed(f"git {' '.join(args[:3])} failed ({proc.returncode}): "
                        f"{proc.stderr.decode(errors='replace').strip()[-2000:]}")
    return proc.stdout.decode(errors="replace")


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


@dataclass(frozen=True)
class Summary:
    """Median and spread of one series of measurements."""

    median: float
    q1: float
    q3: float
    low: float
    high: float
    count: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            raise ValueError("no measurement")
        ordered = sorted(values)
        if len(ordered) >= 4:
            quartiles = statistics.quantiles(ordered, n=4, method="inclusive")
            q1, q3 = quartiles[0], quartiles[2]
        else:
            q1, q3 = ordered[0], ordered[-1]
        return cls(statistics.median(ordered), q1, q3, ordered[0], ordered[-1], len(ordered))

    @property
    def spread(self) -> float:
        """The interquartile range relative to the median (the whole range below four values)."""
        return (self.q3 - self.q1) / self.median if self.median else 0.0

    def to_json(self) -> dict[str, float]:
        return {"median": self.median, "q1": self.q1, "q3": self.q3, "min": self.low, "max": self.high,
                "n": self.count, "spread": self.spread}


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def alternate(rounds: int, actions: Mapping[str, Callable[[], float]],
              between: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Run each action once per round, the order reversed every other round, so that drifts of the
    machine (caches, other load) fall on both sides alike."""
    names = list(actions)
    results: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        for name in names if i % 2 == 0 else reversed(names):
            results[name].append(actions[name]())
            if between is not None:
                between()
    return results
