"""The campaign's numbers, pure functions of its history: these go in the report, never in asserts.

- the longest write outage per repository (the longest time without an acknowledged push);
- after each kill, the time until a push begun after it was acknowledged, on every repository;
- the longest push while a node hangs;
- the time from a node back to all its replicas up to date.
"""

from __future__ import annotations

import itertools
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from chaos.checker import WRITES, faults_of
from chaos.failures import Failure, classify, reason
from chaos.faults import FaultKind
from chaos.history import Kind, Op, Result

KILLS = (FaultKind.KILL, FaultKind.KILL_PRIMARY)


@dataclass(frozen=True)
class Outage:
    repo: str
    seconds: float
    began: float  # the last acknowledgement before the gap


@dataclass(frozen=True)
class Round:
    round: int
    fault: str
    target: str
    start: float
    hold: float
    heal: float | None  # node back -> all its replicas up to date (None: not within the bound, or not measured)
    kill_to_ack: dict[str, float | None]  # kills: repo -> seconds until a push begun after the kill was acknowledged
    longest_push: float | None  # pauses: the longest push that overlapped the pause (acknowledged or not)
    longest_acked_push: float | None
    # pauses: of the pushes acknowledged while the node was still hung (so not entering through it),
    # the longest time from the hang (or the push's start, if later) to the acknowledgement
    longest_while_hung: float | None
    error: str

    @property
    def every_repo(self) -> float | None:
        values = list(self.kill_to_ack.values())
        return None if not values or None in values else max(v for v in values if v is not None)


@dataclass(frozen=True)
class Figures:
    pushes: int
    acknowledged: int
    reads: int
    reads_ok: int
    failures: dict[str, int]  # failure kind -> count
    refusals: dict[str, int]  # reason -> count
    push_latency: dict[str, float]  # median, p95, max of acknowledged pushes
    outages: list[Outage]
    rounds: list[Round]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for r, obj in zip(data["rounds"], self.rounds, strict=True):
            r["every_repo"] = obj.every_repo
        return data


def figures(ops: Sequence[Op]) -> Figures:
    pushes = [op for op in ops if op.kind is Kind.PUSH and op.role in WRITES]
    reads = [op for op in ops if op.kind is Kind.READ]
    failed = [op for op in (*pushes, *reads) if not op.ok]
    kinds = Counter(classify(op.error, op.result is Result.TIMEOUT).value for op in failed)
    refusals = Counter(reason(op.error) for op in failed if classify(op.error) is Failure.REFUSED)
    latencies = sorted(op.duration for op in pushes if op.ok)
    return Figures(
        pushes=len(pushes),
        acknowledged=sum(op.ok for op in pushes),
        reads=len(reads),
        reads_ok=sum(op.ok for op in reads),
        failures=dict(kinds.most_common()),
        refusals=dict(refusals.most_common(12)),
        push_latency=_summary(latencies),
        outages=write_outages(ops),
        rounds=rounds(ops),
    )


def _summary(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {"median": statistics.median(ordered), "p95": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))],
            "max": ordered[-1], "n": float(len(ordered))}


def write_outages(ops: Sequence[Op]) -> list[Outage]:
    """Per repository, the longest time between two acknowledged pushes while the load ran."""
    acks: dict[str, list[float]] = defaultdict(list)
    for op in ops:
        if op.kind is Kind.PUSH and op.ok and op.role in WRITES and op.phase != "final":
            acks[op.repo].append(op.end)
    out = []
    for repo, ends in sorted(acks.items()):
        ends.sort()
        gaps = [(b - a, a) for a, b in itertools.pairwise(ends)]
        seconds, began = max(gaps, default=(0.0, ends[0]))
        out.append(Outage(repo, seconds, began))
    return out


def rounds(ops: Sequence[Op]) -> list[Round]:
    faults = sorted(faults_of(ops), key=lambda f: f.start)
    pushes = [op for op in ops if op.kind is Kind.PUSH and op.role in WRITES and op.phase != "final"]
    repos = sorted({op.repo for op in pushes})
    out = []
    for fault in faults:
        detail = fault.detail
        back, current = detail.get("back_at"), detail.get("current_at")
        kill_to_ack: dict[str, float | None] = {}
        if FaultKind(fault.fault) in KILLS:
            for repo in repos:
                ends = [op.end for op in pushes if op.repo == repo and op.ok and op.start >= fault.start]
                kill_to_ack[repo] = min(ends) - fault.start if ends else None
        longest = longest_acked = while_hung = None
        if FaultKind(fault.fault) is FaultKind.PAUSE:
            resumed = back if back is not None else fault.end
            overlapping = [op for op in pushes if op.start <= resumed and op.end >= fault.start]
            longest = max((op.duration for op in overlapping), default=None)
            longest_acked = max((op.duration for op in overlapping if op.ok), default=None)
            while_hung = max((op.end - max(op.start, fault.start) for op in overlapping if op.ok and op.end < resumed),
                             default=None)
        out.append(Round(
            round=fault.round,
            fault=fault.fault,
            target=fault.target + (" +etcd" if detail.get("with_etcd") else ""),
            start=fault.start,
            hold=float(detail.get("hold", 0.0)),
            heal=current - back if current is not None and back is not None else None,
            kill_to_ack=kill_to_ack,
            longest_push=longest,
            longest_acked_push=longest_acked,
            longest_while_hung=while_hung,
            error=fault.error,
        ))
    return out
