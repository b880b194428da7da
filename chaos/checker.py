"""The checker: pure functions from a history and the final state to a verdict.

Invariants (each violation names the history lines that show it):

- no acknowledged push is lost: its commit is in the final tip of its branch;
- every single-writer branch ends at its last acknowledged push (or at a later push of the
  same writer that was not acknowledged and took effect anyway, which a client cannot rule out);
- no read returns a tip older than a push acknowledged before the read began;
- the replicas converge within the bound: identical refs, nothing outdated or under-replicated;
- a failure reads as git's own refusal, unless the operation was in flight when a process was
  killed, stopped or cut off (nothing can answer then), or the mode documents an outage;
- after the faults a mode promises it for, every branch is writable at once; fsck is clean.

The commit graph comes from the history itself (chaos/graph.py).
"""

from __future__ import annotations

import bisect
import enum
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from chaos.failures import Failure, classify
from chaos.faults import FaultKind, Mode
from chaos.graph import Graph
from chaos.history import Kind, Op, Result, Role

WRITES = (Role.SEED, Role.SINGLE, Role.RACE, Role.PROBE)
FULL_READS = ("ls-remote", "clone")  # reads that see every branch (a fetch sees only the one it asked for)


class Problem(enum.StrEnum):
    LOST = "lost acknowledged push"
    WRONG_TIP = "single-writer tip is not its last acknowledged push"
    STALE_READ = "stale read"
    DIVERGED = "replicas diverge"
    NOT_CONVERGED = "not converged"
    UNHEALED = "node not healed within the bound"
    BAD_FAILURE = "failure not in git's words"
    STALLED = "operation stalled outside any fault"
    NOT_WRITABLE = "branch not writable"
    FSCK = "fsck not clean"
    FAULT_FAILED = "fault could not be injected or healed"


@dataclass(frozen=True)
class Violation:
    problem: Problem
    message: str
    ops: tuple[int, ...] = ()  # indexes of the history lines that show it


@dataclass(frozen=True)
class Verdict:
    violations: tuple[Violation, ...]

    @property
    def valid(self) -> bool:
        return not self.violations

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {p.value: 0 for p in Problem}
        for v in self.violations:
            out[v.problem.value] += 1
        return out


@dataclass(frozen=True)
class Rules:
    """What a mode promises under faults."""

    # Faults during which the service may be down by design: from the fault until it is back, plus the grace.
    outage_faults: frozenset[FaultKind] = frozenset()
    outage_grace: float = 0.0
    # Faults after which the first push on every single-writer branch must be acknowledged.
    writable_at_once: frozenset[FaultKind] = frozenset()
    # HA replicates asynchronously: pushes the replica had not taken when the primary died may be lost.
    async_losses: bool = False


RULES = {
    Mode.CLUSTER: Rules(),
    # HAProxy checks every second and one success brings the promoted node in: 3 s covers it.
    Mode.HA: Rules(outage_faults=frozenset({FaultKind.KILL_PRIMARY}), outage_grace=3.0, async_losses=True),
    Mode.STANDALONE: Rules(outage_faults=frozenset({FaultKind.KILL}), outage_grace=0.5,
                           writable_at_once=frozenset({FaultKind.KILL})),
}


@dataclass(frozen=True)
class RepoFinal:
    """One repository at the end, once every fault was healed and the load stopped."""

    tips: dict[str, str]  # branch -> commit, as a client reads it through the front door
    replicas: dict[str, dict[str, str]] = field(default_factory=dict)  # node -> branch -> commit on that node
    outdated: tuple[str, ...] = ()  # cluster: replicas etcd does not count as up to date
    under_replicated: bool = False  # cluster: fewer live up-to-date replicas than the replication factor


@dataclass(frozen=True)
class FinalState:
    repos: dict[str, RepoFinal]
    converged_after: float | None  # seconds from the end of the load until convergence; None: not within bound
    bound: float
    fsck: dict[str, str] = field(default_factory=dict)  # node -> what fsck reported, for each unclean node


# -- the checks ----------------------------------------------------------------------------------


def check(ops: Sequence[Op], final: FinalState, rules: Rules) -> Verdict:
    graph = Graph(ops)
    allowed = allowed_losses(ops) if rules.async_losses else set()
    found = [
        *lost_pushes(ops, final, graph, allowed),
        *wrong_tips(ops, final, graph),
        *stale_reads(ops, graph, allowed),
        *convergence(final),
        *bad_failures(ops, rules),
        *not_writable(ops, rules),
        *fault_problems(ops),
        *(Violation(Problem.FSCK, f"{node}: {text}") for node, text in sorted(final.fsck.items())),
    ]
    return Verdict(tuple(found))


def allowed_losses(ops: Iterable[Op]) -> set[tuple[str, str, str]]:
    """(repo, branch, commit) of the pushes an HA primary acknowledged before it died that the promoted
    replica did not have, less those the replica's position claimed it had (recorded at the promotion)."""
    out: set[tuple[str, str, str]] = set()
    for op in ops:
        if op.kind is Kind.FAULT:
            claimed = {(r, b, c) for r, b, c in op.detail.get("claimed", ())}
            out.update((r, b, c) for r, b, c in op.detail.get("unreplicated", ()) if (r, b, c) not in claimed)
    return out


def _acked_writes(ops: Iterable[Op]) -> list[Op]:
    return [op for op in ops if op.kind is Kind.PUSH and op.ok and op.role in WRITES]


def lost_pushes(ops: Sequence[Op], final: FinalState, graph: Graph,
                allowed: set[tuple[str, str, str]]) -> list[Violation]:
    found = []
    ancestry: dict[tuple[str, str], set[str]] = {}
    for op in _acked_writes(ops):
        key = (op.repo, op.branch)
        if key not in ancestry:
            tip = final.repos[op.repo].tips.get(op.branch) if op.repo in final.repos else None
            ancestry[key] = graph.ancestry(tip) if tip else set()
        if op.sha not in ancestry[key] and (op.repo, op.branch, op.sha) not in allowed:
            tip = final.repos.get(op.repo, RepoFinal({})).tips.get(op.branch)
            found.append(Violation(Problem.LOST, f"{op.repo} {op.branch}: {op.sha[:12]} acknowledged at "
                                   f"{op.end:.2f}s is not in the final tip {(tip or 'none')[:12]}", (op.index,)))
    return found


def wrong_tips(ops: Sequence[Op], final: FinalState, graph: Graph) -> list[Violation]:
    pushes: dict[tuple[str, str], list[Op]] = defaultdict(list)
    for op in ops:
        if op.kind is Kind.PUSH and op.role in (Role.SINGLE, Role.PROBE):
            pushes[(op.repo, op.branch)].append(op)
    found = []
    for (repo, branch), mine in sorted(pushes.items()):
        acked = sorted((op for op in mine if op.ok), key=lambda op: op.end)
        if not acked:
            continue
        last = acked[-1]
        tip = final.repos[repo].tips.get(branch) if repo in final.repos else None
        if tip == last.sha:
            continue
        # A later push of the same writer that was not acknowledged may still have taken effect.
        later = next((op for op in mine if op.sha == tip and not op.ok and op.start > last.start), None)
        if later is not None and tip is not None and graph.contains(tip, last.sha):
            continue
        shown = (last.index,) + ((later.index,) if later is not None else ())
        found.append(Violation(Problem.WRONG_TIP, f"{repo} {branch}: ends at {(tip or 'nothing')[:12]}, its last "
                               f"acknowledged push was {last.sha[:12]} at {last.end:.2f}s", shown))
    return found


@dataclass
class _Acks:
    """The acknowledged pushes to one branch, by end, with the latest start among each prefix."""

    ops: list[Op] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    max_start: list[float] = field(default_factory=list)

    def latest_before(self, moment: float) -> list[Op]:
        """The pushes acknowledged before ``moment`` that no other such push followed in real time.

        If each of them is in a tip, all the earlier ones are too (the lost-push check makes sure
        that a push which began after another one was acknowledged contains it)."""
        n = bisect.bisect_left(self.ends, moment)
        if n == 0:
            return []
        latest_start = self.max_start[n - 1]
        out = []
        i = n - 1
        while i >= 0 and self.ends[i] >= latest_start:
            out.append(self.ops[i])
            i -= 1
        return out


def stale_reads(ops: Sequence[Op], graph: Graph, allowed: set[tuple[str, str, str]]) -> list[Violation]:
    acks: dict[tuple[str, str], _Acks] = defaultdict(_Acks)
    for op in sorted(_acked_writes(ops), key=lambda op: op.end):
        if (op.repo, op.branch, op.sha) in allowed:
            continue
        a = acks[(op.repo, op.branch)]
        a.ops.append(op)
        a.ends.append(op.end)
        a.max_start.append(max(op.start, a.max_start[-1] if a.max_start else op.start))
    branches: dict[str, list[str]] = defaultdict(list)
    for repo, branch in acks:
        branches[repo].append(branch)
    found = []
    for read in ops:
        if read.kind is not Kind.READ or not read.ok:
            continue
        wanted = branches[read.repo] if read.how in FULL_READS else list(read.refs)
        for branch in wanted:
            seen = read.refs.get(branch)
            for push in acks[(read.repo, branch)].latest_before(read.start) if (read.repo, branch) in acks else []:
                if seen is None or not graph.contains(seen, push.sha):
                    what = "no such branch" if seen is None else seen[:12]
                    found.append(Violation(Problem.STALE_READ, f"{read.repo} {branch}: read at {read.start:.2f}s "
                                           f"({read.how}) saw {what}, but {push.sha[:12]} was acknowledged at "
                                           f"{push.end:.2f}s", (read.index, push.index)))
                    break
    return found


def convergence(final: FinalState) -> list[Violation]:
    found = []
    if final.converged_after is None:
        found.append(Violation(Problem.NOT_CONVERGED, f"replicas not converged within {final.bound:.0f}s"))
    for repo, state in sorted(final.repos.items()):
        views = {node: refs for node, refs in state.replicas.items()}
        distinct = {tuple(sorted(refs.items())) for refs in views.values()}
        if len(distinct) > 1:
            differ = "; ".join(f"{node}: {_short(refs)}" for node, refs in sorted(views.items()))
            found.append(Violation(Problem.DIVERGED, f"{repo}: {differ}"))
        elif distinct and dict(next(iter(distinct))) != state.tips:
            found.append(Violation(Problem.DIVERGED, f"{repo}: clients read {_short(state.tips)}, the replicas "
                                   f"hold {_short(dict(next(iter(distinct))))}"))
        if state.outdated:
            found.append(Violation(Problem.NOT_CONVERGED, f"{repo}: outdated replicas {', '.join(state.outdated)}"))
        if state.under_replicated:
            found.append(Violation(Problem.NOT_CONVERGED, f"{repo}: under-replicated"))
    return found


def _short(refs: dict[str, str]) -> str:
    return ", ".join(f"{b}={c[:8]}" for b, c in sorted(refs.items())) or "no branch"


def faults_of(ops: Iterable[Op]) -> list[Op]:
    return [op for op in ops if op.kind is Kind.FAULT]


def _in_flight(op: Op, faults: Sequence[Op]) -> bool:
    """Whether a process was being killed, stopped or cut off while ``op`` ran.

    A disruption is an instant or a [from, to] interval: from the signal until it took effect."""
    for fault in faults:
        for d in fault.detail.get("disruptions", ()):
            begun, ended = (d, d) if isinstance(d, (int, float)) else d
            if op.start <= ended and op.end >= begun:
                return True
    return False


def _in_outage(op: Op, faults: Sequence[Op], rules: Rules) -> bool:
    return any(FaultKind(f.fault) in rules.outage_faults
               and op.start <= f.detail.get("back_at", f.end) + rules.outage_grace and op.end >= f.start
               for f in faults)


def _during_fault(op: Op, faults: Sequence[Op]) -> bool:
    return any(op.start <= f.end and op.end >= f.start for f in faults)


def bad_failures(ops: Sequence[Op], rules: Rules) -> list[Violation]:
    faults = faults_of(ops)
    found = []
    for op in ops:
        if op.kind not in (Kind.PUSH, Kind.READ) or op.ok:
            continue
        kind = classify(op.error, timed_out=op.result is Result.TIMEOUT)
        if kind in (Failure.REFUSED, Failure.REJECTED):
            continue
        if kind is Failure.TIMEOUT:
            if not _during_fault(op, faults):
                found.append(Violation(Problem.STALLED, f"{op.process} {op.kind} {op.repo}: still running after "
                                       f"{op.duration:.1f}s with no fault under way", (op.index,)))
            continue
        if _in_flight(op, faults):
            continue
        if kind in (Failure.UNREACHABLE, Failure.BARE_5XX) and _in_outage(op, faults, rules):
            continue
        last = " / ".join(line.strip() for line in op.error.strip().splitlines()[-2:])
        found.append(Violation(Problem.BAD_FAILURE, f"{op.process} {op.kind} {op.repo} at {op.start:.2f}s: "
                               f"{kind}: {last}", (op.index,)))
    return found


def not_writable(ops: Sequence[Op], rules: Rules) -> list[Violation]:
    singles: dict[tuple[str, str], list[Op]] = defaultdict(list)
    for op in ops:
        if op.kind is Kind.PUSH and op.role is Role.SINGLE:
            singles[(op.repo, op.branch)].append(op)
    found = []
    for fault in faults_of(ops):
        if FaultKind(fault.fault) not in rules.writable_at_once or "back_at" not in fault.detail:
            continue
        back = fault.detail["back_at"]
        for (repo, branch), pushes in sorted(singles.items()):
            first = min((op for op in pushes if op.start >= back), key=lambda op: op.start, default=None)
            if first is not None and not first.ok:
                found.append(Violation(Problem.NOT_WRITABLE, f"{repo} {branch}: the first push after the node came "
                                       f"back (round {fault.round}) failed: {first.error.strip()[-200:]}",
                                       (fault.index, first.index)))
    for (repo, branch), pushes in sorted(singles.items()):
        final = [op for op in pushes if op.phase == "final"]
        if final and not any(op.ok for op in final):
            found.append(Violation(Problem.NOT_WRITABLE, f"{repo} {branch}: no push acknowledged after every "
                                   f"fault was healed ({len(final)} attempts)", tuple(op.index for op in final)))
    return found


def fault_problems(ops: Sequence[Op]) -> list[Violation]:
    found = []
    for fault in faults_of(ops):
        if not fault.ok:
            found.append(Violation(Problem.FAULT_FAILED, f"round {fault.round} {fault.fault} {fault.target}: "
                                   f"{fault.error}", (fault.index,)))
        bound = fault.detail.get("heal_bound")
        if bound is not None and fault.detail.get("current_at") is None:
            found.append(Violation(Problem.UNHEALED, f"round {fault.round} {fault.fault} {fault.target}: "
                                   f"{fault.detail.get('node') or fault.target} not up to date {bound:.0f}s after "
                                   "it came back", (fault.index,)))
        if fault.detail.get("fsck_ok") is False:
            found.append(Violation(Problem.FSCK, f"round {fault.round}: fsck after the restart: "
                                   f"{fault.detail.get('fsck', '')[-600:]}", (fault.index,)))
    return found
