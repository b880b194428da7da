"""One campaign: a system under the load, the planned faults one round at a time, the final state, the verdict.

After the last round every fault is healed; the load stops; every single writer pushes until
one push is acknowledged; the replicas get the convergence bound to agree; then the final reads
and the final state go to the checker with the history.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from chaos import checker, metrics
from chaos.checker import FinalState, Verdict
from chaos.faults import MODE_FAULTS, FaultKind, Mode, Planned, plan_each, plan_random
from chaos.history import Clock, History, Kind, Op, Result
from chaos.load import Load, LoadSpec
from chaos.system import System, safely

CONVERGENCE_BOUND = 60.0  # seconds the replicas may take to agree once the load stopped (an invariant)


@dataclass(frozen=True)
class CampaignSpec:
    mode: Mode
    rounds: int = 50
    seed: int = 1
    each: int = 0  # above 0: every fault of the mode in turn, this many times (a fixed plan), instead of a random one
    load: LoadSpec = field(default_factory=LoadSpec)
    warmup: float = 2.0  # seconds of load before the first round
    settle: float = 1.0  # seconds of load after a round's heal, before the next round's delay
    bound: float = CONVERGENCE_BOUND
    final_within: float = 60.0  # seconds each single writer has to get its final push acknowledged
    nodes: int = 3  # cluster nodes
    faults: tuple[FaultKind, ...] = ()  # only these kinds (default: every fault of the mode)

    def command(self) -> str:
        plan = f"--each {self.each}" if self.each else f"--rounds {self.rounds}"
        only = f" --faults {','.join(self.faults)}" if self.faults else ""
        return f"python -m chaos --mode {self.mode} {plan} --seed {self.seed}{only}"


@dataclass
class CampaignResult:
    spec: CampaignSpec
    plan: list[Planned]
    skipped: list[str]  # fault kinds left out (they need root)
    halted: str  # why the rounds stopped before the plan's end ("": they did not)
    ops: list[Op]
    final: FinalState
    verdict: Verdict
    figures: metrics.Figures
    load_errors: list[str]
    seconds: float
    wall_zero: float  # the UNIX time of the campaign's second 0


def make_system(spec: CampaignSpec, workdir: Path, clock: Clock) -> System:
    # Imported here: each mode pulls in its own part of the test helpers.
    if spec.mode is Mode.CLUSTER:
        from chaos.cluster import ClusterSystem
        return ClusterSystem(workdir, clock, spec.load.repos, nodes=spec.nodes)
    if spec.mode is Mode.HA:
        from chaos.ha import HASystem
        return HASystem(workdir, clock, spec.load.repos)
    from chaos.standalone import StandaloneSystem
    return StandaloneSystem(workdir, clock, spec.load.repos)


def run(spec: CampaignSpec, workdir: Path, out: Path, say: Callable[[str], None] = print) -> CampaignResult:
    """Run the campaign with its processes under ``workdir``; the history and the logs go to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    clock = Clock()
    history = History(clock, out / "history.jsonl")
    system = make_system(spec, workdir, clock)
    load: Load | None = None
    halted = ""
    try:
        say(f"[{clock.now():6.1f}s] starting {spec.mode}")
        system.start()
        targets = system.targets()
        wanted = [k for k in MODE_FAULTS[spec.mode] if not spec.faults or k in spec.faults]
        kinds = [k for k in wanted if targets.get(k)]
        skipped = [str(k) for k in wanted if k not in kinds]
        machines = spec.mode is Mode.CLUSTER
        plan = plan_each(kinds, targets, spec.each, machines=machines) if spec.each else \
            plan_random(kinds, targets, spec.rounds, spec.seed, machines=machines)
        load = Load(spec.load, history, system.url, workdir / "load", seed=spec.seed)
        system.load = load
        load.plant()
        load.start()
        time.sleep(spec.warmup)
        for planned in plan:
            history.round = planned.round
            time.sleep(planned.delay)
            got = system.inject(planned)
            history.record(process="nemesis", kind=Kind.FAULT, start=got.start, end=got.end,
                           result=Result.OK if got.ok else Result.FAIL, fault=planned.kind.value,
                           target=planned.target, detail=got.detail, error=got.error)
            heal = got.detail.get("current_at")
            healed = f"up to date {heal - got.detail['back_at']:.1f}s after" if heal is not None else "not healed"
            say(f"[{clock.now():6.1f}s] {planned.describe()}: {'ok' if got.ok else got.error}; {healed}")
            if not got.ok:
                system.restore()
            if got.detail.get("heal_bound") is not None and heal is None:
                # More faults on a system that did not heal would only pile up; the final checks still run.
                halted = f"round {planned.round} did not heal within {got.detail['heal_bound']:.0f}s"
                say(f"[{clock.now():6.1f}s] {halted}: no more rounds")
                break
            time.sleep(spec.settle)
        history.round = len(plan)
        load.stop()
        say(f"[{clock.now():6.1f}s] load stopped; final writes")
        load.final_writes(spec.final_within)
        began = clock.now()
        converged_after = None
        while clock.now() - began < spec.bound:
            if safely(system.converged):
                converged_after = clock.now() - began
                break
            time.sleep(0.5)
        say(f"[{clock.now():6.1f}s] converged: {converged_after}")
        tips = {repo: refs or {} for repo, refs in load.final_reads().items()}
        final = system.final_state(tips, converged_after, spec.bound)
    finally:
        if load is not None:
            load.stop()
        system.stop()
        history.close()
        logs = out / "logs"
        logs.mkdir(exist_ok=True)
        for path in system.logs():
            if path.exists():
                shutil.copy(path, logs / path.name)
    ops = history.ops
    verdict = checker.check(ops, final, checker.RULES[spec.mode])
    return CampaignResult(spec=spec, plan=plan, skipped=skipped, halted=halted, ops=ops, final=final, verdict=verdict,
                          figures=metrics.figures(ops), load_errors=list(load.errors), seconds=clock.now(),
                          wall_zero=clock.wall_zero)
