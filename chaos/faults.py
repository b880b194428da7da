"""The faults a campaign injects, per mode, and the seeded plans that order them.

A plan is a pure function of the mode, the number of rounds, the seed and the targets: the
same arguments give the same faults, on the same targets, held as long, at the same moments
of their rounds. (The processes under test keep their own timing; that part does not replay.)
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


class Mode(enum.StrEnum):
    CLUSTER = "cluster"
    HA = "ha"
    STANDALONE = "standalone"


class FaultKind(enum.StrEnum):
    KILL = "kill"  # kill -9 of a node and the git processes it started; started again after the hold
    PAUSE = "pause"  # SIGSTOP of the same processes, SIGCONT after the hold: a hung machine
    PARTITION = "partition"  # the node's network link down (it and its etcd member), up after the hold
    RESTART = "restart"  # SIGTERM, wait for the exit, start again
    ETCD_RESTART = "etcd-restart"  # kill -9 of an etcd member, started again after the hold
    DISK_FULL = "disk-full"  # the node's file system filled to the last block, freed after the hold
    KILL_PRIMARY = "kill-primary"  # HA: kill -9 of the primary, promotion, the old one back fenced, then a replica
    KILL_REPLICA = "kill-replica"  # HA: kill -9 of the replica, started again after the hold


MODE_FAULTS: dict[Mode, tuple[FaultKind, ...]] = {
    Mode.CLUSTER: (FaultKind.KILL, FaultKind.PAUSE, FaultKind.PARTITION, FaultKind.RESTART,
                   FaultKind.ETCD_RESTART, FaultKind.DISK_FULL),
    Mode.HA: (FaultKind.KILL_PRIMARY, FaultKind.KILL_REPLICA),
    Mode.STANDALONE: (FaultKind.KILL,),
}

# Network namespaces and loop mounts need root; without it these faults are left out of a plan.
NEEDS_ROOT = frozenset({FaultKind.PARTITION, FaultKind.DISK_FULL})


@dataclass(frozen=True)
class Planned:
    round: int
    kind: FaultKind
    target: str
    hold: float  # seconds the fault lasts before it is healed
    delay: float  # seconds of plain load before the fault, so it lands somewhere in the middle of pushes
    with_etcd: bool = False  # a cluster KILL: the node's etcd member goes down with it (a whole machine)

    def describe(self) -> str:
        extra = " with its etcd member" if self.with_etcd else ""
        return f"round {self.round}: {self.kind} {self.target}{extra}, held {self.hold:.1f}s after {self.delay:.1f}s"


def plan_random(kinds: Sequence[FaultKind], targets: Mapping[FaultKind, Sequence[str]], rounds: int, seed: int,
                hold: tuple[float, float] = (1.0, 6.0), delay: tuple[float, float] = (0.5, 3.0),
                machines: bool = False) -> list[Planned]:
    """``rounds`` faults drawn from ``kinds`` with a generator seeded by ``seed``.

    ``machines``: a kill takes the node's etcd member down with it half the time (a cluster)."""
    if not kinds:
        raise ValueError("no fault to plan")
    rng = random.Random(seed)
    plan = []
    for i in range(rounds):
        kind = rng.choice(list(kinds))
        plan.append(Planned(
            round=i,
            kind=kind,
            target=rng.choice(list(targets[kind])),
            hold=round(rng.uniform(*hold), 1),
            delay=round(rng.uniform(*delay), 1),
            with_etcd=machines and kind is FaultKind.KILL and rng.random() < 0.5,
        ))
    return plan


def plan_each(kinds: Sequence[FaultKind], targets: Mapping[FaultKind, Sequence[str]], repeats: int,
              hold: float = 2.0, delay: float = 1.0, machines: bool = False) -> list[Planned]:
    """Every kind in turn, ``repeats`` times, the targets taken in order: the same plan every time."""
    plan: list[Planned] = []
    for r in range(repeats):
        for kind in kinds:
            names = list(targets[kind])
            plan.append(Planned(round=len(plan), kind=kind, target=names[r % len(names)], hold=hold, delay=delay,
                                with_etcd=machines and kind is FaultKind.KILL and r % 2 == 1))
    return plan
